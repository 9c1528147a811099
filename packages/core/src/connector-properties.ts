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
 * `connectorProperties()` (asked concurrently) in catalog order, then `wish`. A transport whose properties fail is
 * skipped with a warning, as os-brick's connectors leave out what they cannot read: a broken
 * iSCSI initiator must not stop a loop attach, and the transport that needs the missing property
 * (or the backend exporting to it) refuses the connection itself. `berth doctor` names the failure.
 */
export async function mergeConnector(base: Connector, transports: readonly TransportDriver[], wish: MultipathWish, logger: Logger): Promise<Connector> {
  // Asked all at once (each is a read of the host: the iSCSI transports each read the initiator
  // name), merged in catalog order, so a later transport's answer still wins as before.
  const answers = await Promise.all(
    transports.map((transport) =>
      // Through a promise, so one that throws instead of rejecting is skipped the same way.
      Promise.resolve().then(() => transport.connectorProperties()).catch((error: unknown) => {
        logger.warn({ transport: transport.name, err: toBerthError(error).message }, 'connector properties failed; left out of the connector');
        return {};
      }),
    ),
  );
  const merged: Record<string, unknown> = { ...base };
  for (const answer of answers) Object.assign(merged, answer);
  merged.multipath = wish.multipath;
  merged.enforce_multipath = wish.enforce_multipath;
  return zConnector.parse(merged);
}
