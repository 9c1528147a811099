import { zConnector, type Connector } from '../connection.js';
import { toBerthError } from '../errors.js';
import type { ServiceParts } from './parts.js';

/** This host's connector properties, merged from every transport (`berth connector`). */
export async function hostConnector(parts: ServiceParts): Promise<Connector> {
  const merged: Record<string, unknown> = { ...parts.localHost.baseConnector() };
  for (const transport of parts.catalog.transports()) {
    try {
      Object.assign(merged, await transport.connectorProperties());
    } catch (error) {
      parts.logger.warn({ transport: transport.name, err: toBerthError(error).message }, 'connector properties failed');
    }
  }
  merged.multipath = parts.config.connector.multipath;
  merged.enforce_multipath = parts.config.connector.enforce_multipath;
  return zConnector.parse(merged);
}
