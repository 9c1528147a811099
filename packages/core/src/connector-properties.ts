import { zConnector, type Connector } from './connection.js';
import type { TransportDriver } from './contracts/transport-driver.js';
import { toBerthError } from './errors.js';
import type { Logger } from './logger.js';

/** The multipath wishes that override whatever a transport says (they are the user's, not the host's). */
export interface MultipathWish {
  multipath: boolean;
  enforce_multipath: boolean;
}

/**
 * This host's connector: `base` (host, ip, platform) merged with every transport's
 * `connectorProperties()` in catalog order, then `wish`. A transport whose properties fail is
 * skipped with a warning, as os-brick's connectors leave out what they cannot read: a broken
 * iSCSI initiator must not stop a loop attach, and the transport that needs the missing property
 * (or the backend exporting to it) refuses the connection itself. `berth doctor` names the failure.
 */
export async function mergeConnector(base: Connector, transports: readonly TransportDriver[], wish: MultipathWish, logger: Logger): Promise<Connector> {
  const merged: Record<string, unknown> = { ...base };
  for (const transport of transports) {
    try {
      Object.assign(merged, await transport.connectorProperties());
    } catch (error) {
      logger.warn({ transport: transport.name, err: toBerthError(error).message }, 'connector properties failed; left out of the connector');
    }
  }
  merged.multipath = wish.multipath;
  merged.enforce_multipath = wish.enforce_multipath;
  return zConnector.parse(merged);
}
