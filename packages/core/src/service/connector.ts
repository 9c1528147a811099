import type { Connector } from '../connection.js';
import { mergeConnector } from '../connector-properties.js';
import type { ServiceParts } from './parts.js';

/** This host's connector properties, merged from every transport (`berth connector`). */
export function hostConnector(parts: ServiceParts): Promise<Connector> {
  const { config } = parts;
  return mergeConnector(parts.localHost.baseConnector(), parts.catalog.transports(), {
    multipath: config.connector.multipath,
    enforce_multipath: config.connector.enforce_multipath,
  }, parts.logger);
}
