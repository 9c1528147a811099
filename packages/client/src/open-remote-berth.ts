import { RemoteBerthService, type RemoteBerthOptions } from './remote-berth-service.js';

/** Environment variable with the API's URL (`berth --api` wins over it). */
export const API_URL_ENV = 'BERTH_API_URL';
/** Environment variable with the bearer token the client sends. */
export const TOKEN_ENV = 'BERTH_TOKEN';

/**
 * A RemoteBerthService that has reached the server once (its plugin report fetched, which is what
 * `plugins()` returns): an unreachable server or a bad token fails here, before any command runs.
 */
export async function openRemoteBerth(options: RemoteBerthOptions): Promise<RemoteBerthService> {
  const service = new RemoteBerthService(options);
  await service.refreshPlugins();
  return service;
}
