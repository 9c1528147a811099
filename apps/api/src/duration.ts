import { z } from '@berth/core/zod';

/** `?wait=` values: `30s`, `500ms`, `2m` or a bare number of seconds. */
export const zWaitDuration = z
  .string()
  .regex(/^\d{1,7}(ms|s|m)?$/, 'use a duration like 30s, 500ms or 2m')
  .transform((text) => {
    const match = /^(\d+)(ms|s|m)?$/.exec(text);
    const value = Number(match?.[1] ?? '0');
    const unit = match?.[2] ?? 's';
    return unit === 'ms' ? value : unit === 'm' ? value * 60_000 : value * 1000;
  });
