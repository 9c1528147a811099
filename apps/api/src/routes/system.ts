import { zConnector } from '@berth/core';
import { ADMINS } from '../access.js';
import { zDoctorReport, zHealth, zNoParams, zNoQuery, zPluginReport } from '../http-schemas.js';
import type { RouteDeps } from '../route-deps.js';
import { publicRoute, route, type AnyRoute } from '../route.js';

/** Health, readiness, metrics, the API description, and the host's connector, doctor and plugins. */
export function systemRoutes(deps: RouteDeps): AnyRoute[] {
  const { service, metrics } = deps;
  return [
    publicRoute({
      method: 'GET',
      path: '/healthz',
      operationId: 'health',
      summary: 'Liveness: the process answers',
      tag: 'system',
      access: 'public',
      params: zNoParams,
      query: zNoQuery,
      responses: { 200: { description: 'Alive', schema: zHealth } },
      async handler() {
        return { status: 200, body: { status: 'ok' } };
      },
    }),
    publicRoute({
      method: 'GET',
      path: '/readyz',
      operationId: 'ready',
      summary: 'Readiness: the store answers a read and takes a write, and the server is not shutting down',
      tag: 'system',
      access: 'public',
      params: zNoParams,
      query: zNoQuery,
      responses: { 200: { description: 'Ready', schema: zHealth }, 503: { description: 'Not ready', schema: zHealth } },
      async handler() {
        if (deps.shutdown.aborted) return { status: 503, body: { status: 'shutting down' } };
        try {
          if (service.checkStore) await service.checkStore();
          else await service.listOperations({ state: 'running', limit: 1 });
        } catch {
          // What the store said may name its files or its host: not for this public, unauthenticated answer.
          return { status: 503, body: { status: 'store unavailable' } };
        }
        return { status: 200, body: { status: 'ready' } };
      },
    }),
    route({
      method: 'GET',
      path: '/metrics',
      operationId: 'metrics',
      summary: 'Prometheus metrics',
      description: 'Operation and step durations per transport, operations by result and code, in-flight operations, HTTP latencies.',
      tag: 'system',
      access: ADMINS,
      params: zNoParams,
      query: zNoQuery,
      responses: { 200: { description: 'The Prometheus text format', contentType: 'text/plain' } },
      async handler() {
        const rendered = await metrics.render();
        return { status: 200, body: rendered.body, contentType: rendered.contentType };
      },
    }),
    publicRoute({
      method: 'GET',
      path: '/openapi.json',
      operationId: 'openapi',
      summary: 'This API\'s OpenAPI 3.1 document',
      tag: 'system',
      access: 'public',
      params: zNoParams,
      query: zNoQuery,
      responses: { 200: { description: 'The document' } },
      async handler() {
        return { status: 200, body: deps.openapi() };
      },
    }),
    route({
      method: 'GET',
      path: '/v1/connector',
      operationId: 'getConnector',
      summary: 'The API host\'s connector (what a backend receives)',
      tag: 'host',
      access: ADMINS,
      params: zNoParams,
      query: zNoQuery,
      responses: { 200: { description: 'The connector (os-brick key names)', schema: zConnector } },
      async handler() {
        return { status: 200, body: await service.connector() };
      },
    }),
    route({
      method: 'GET',
      path: '/v1/doctor',
      operationId: 'doctor',
      summary: 'Which transports, backends, consumers, store and plugins work on the API host',
      tag: 'host',
      access: ADMINS,
      params: zNoParams,
      query: zNoQuery,
      responses: { 200: { description: 'Every check', schema: zDoctorReport } },
      async handler() {
        return { status: 200, body: { entries: await service.doctor() } };
      },
    }),
    route({
      method: 'GET',
      path: '/v1/plugins',
      operationId: 'plugins',
      summary: 'The plugins the API loaded, and those that failed',
      tag: 'host',
      access: ADMINS,
      params: zNoParams,
      query: zNoQuery,
      responses: { 200: { description: 'The plugin report', schema: zPluginReport } },
      async handler() {
        return { status: 200, body: service.plugins() };
      },
    }),
  ];
}
