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

/**
 * A JSON object without secret-named keys at any depth (work item payloads and results may
 * carry a connection's data; CHAP passwords must still never reach the database).
 */
export function recordWithoutSecrets(record: Record<string, unknown>): Record<string, unknown> {
  const strip = (value: unknown): unknown => {
    if (Array.isArray(value)) return value.map(strip);
    if (value === null || typeof value !== 'object') return value;
    const out: Record<string, unknown> = {};
    for (const [key, inner] of Object.entries(value)) {
      if (!SECRET_KEYS.includes(key)) out[key] = strip(inner);
    }
    return out;
  };
  return strip(record) as Record<string, unknown>;
}
