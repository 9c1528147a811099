import { BerthError } from '@berth/core';
import { ADMINS } from '../access.js';
import { zNoParams, zNoQuery, zReconcileBody, zReconcileReport } from '../http-schemas.js';
import type { RouteDeps } from '../route-deps.js';
import { route, type AnyRoute } from '../route.js';

/** `berth reconcile` over HTTP: compare the store with the backends and the API host, and fix what differs. */
export function reconcileRoutes(deps: RouteDeps): AnyRoute[] {
  const { service } = deps;
  return [
    route({
      method: 'POST',
      path: '/v1/reconcile',
      operationId: 'reconcile',
      summary: 'Find (and unless dryRun, fix) differences between the store, the backends\' exports and a host\'s devices',
      description:
        'Runs on the API host, across every project (hence admin only), for the API host\'s devices or, with `host`, for that host\'s: its `berth agent` lists them (a `host_facts` work item) and runs the fixes that touch it. With `dryRun: true` it lists each difference and its fix and changes nothing; ' +
        'otherwise it applies the fixes, each journalled as a step of one `reconcile` operation (`operationId`), and answers when they are done. ' +
        'A fix that failed is reported in its difference (`state: failed`, `errorCode`), not as an error answer.',
      tag: 'host',
      access: ADMINS,
      params: zNoParams,
      query: zNoQuery,
      body: zReconcileBody,
      responses: { 200: { description: 'The report: every difference, its fix and what became of it', schema: zReconcileReport } },
      async handler({ body }) {
        if (service.reconcile === undefined) {
          throw new BerthError('UNPROCESSABLE', 'this server\'s berth cannot reconcile', {
            hint: 'run `berth reconcile` on the host itself',
          });
        }
        const report = await service.reconcile({ dryRun: body.dryRun ?? false, ...(body.host === undefined ? {} : { host: body.host }) });
        return { status: 200, body: report, headers: { 'cache-control': 'no-store' } };
      },
    }),
  ];
}
