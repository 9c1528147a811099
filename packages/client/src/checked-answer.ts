import type { z } from '@berth/core/zod';
import { BerthError } from '@berth/core';

/**
 * Check an answer's shape with a @berth/core schema and return it as sent (parsing would rebuild
 * objects in schema order; the CLI prints what the server sent, as embedded mode prints what the
 * service returned).
 */
export function checked<S extends z.ZodType>(schema: S, body: unknown, what: string): z.output<S> {
  const result = schema.safeParse(body);
  if (!result.success) {
    throw new BerthError('INTERNAL', `the berth API answered with an unexpected ${what}`, {
      hint: 'are the CLI and the server the same berth version?',
      details: { issues: result.error.issues.slice(0, 5).map((i) => ({ path: i.path.map(String), message: i.message })) },
    });
  }
  return body as z.output<S>;
}
