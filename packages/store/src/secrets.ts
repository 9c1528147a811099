import { SECRET_KEYS } from '@berth/core';
import type { Connector } from '@berth/core';

/**
 * A connector without secret-named keys. Callers strip secrets before storing; the store does it
 * again so that no code path can persist one.
 */
export function connectorWithoutSecrets(connector: Connector): Connector {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(connector)) {
    if (!SECRET_KEYS.includes(key)) out[key] = value;
  }
  return out as Connector;
}
