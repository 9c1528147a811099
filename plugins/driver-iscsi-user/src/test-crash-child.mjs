/* global AbortSignal */
// A process that connects or disconnects one LUN through the iscsi-user transport and may be
// SIGKILLed at an armed fault point (FAULT=<point>). Used by crash.e2e.test.ts and
// failover.e2e.test.ts; prints "done" when it was not killed. Usage:
// test-crash-child.mjs <dataDir> connect|disconnect|failover <connection json> [<device json> | <portal>]
import { FaultInjector, silentLogger } from '@berth/core';
import { createHostServices } from '@berth/host';
import { createIscsiUserDriver } from '../dist/index.js';

const [dataDir, command, connectionJson, extra] = process.argv.slice(2);
const faults = new FaultInjector(process.env.FAULT ? { [process.env.FAULT]: 'crash' } : {});
const driver = createIscsiUserDriver({ host: createHostServices(), dataDir, options: {}, logger: silentLogger, faults });
const connection = JSON.parse(connectionJson);
const signal = AbortSignal.timeout(60_000);
try {
  if (command === 'connect') console.log(JSON.stringify(await driver.connect(connection, { signal })));
  else if (command === 'failover') console.log(JSON.stringify(await driver.failover(connection, { signal, ...(extra ? { portal: extra } : {}) })));
  else await driver.disconnect(connection, extra ? JSON.parse(extra) : undefined, { force: false, signal });
  console.log('done');
} catch (error) {
  console.log(`failed: ${error.message}`);
}
