// `node apps/api` (or the `berth-api` bin): start the API from the environment, stop on a signal.
import { BerthError } from '@berth/core';
import { closeOnSignal, startApiServer } from './server.js';

try {
  const server = await startApiServer();
  process.stderr.write(`berth API listening on ${server.url} (docs: ${server.url}/docs)\n`);
  await closeOnSignal(server, (signal) => process.stderr.write(`${signal}: finishing requests and operations in flight, then stopping\n`));
} catch (error) {
  const message = BerthError.is(error) ? `${error.message}${error.hint ? `\nHint: ${error.hint}` : ''}` : String(error);
  process.stderr.write(`Error: ${message}\n`);
  process.exitCode = BerthError.is(error) ? error.exitCode : 1;
}
