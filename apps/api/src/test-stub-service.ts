import { BerthError, type BerthService } from '@berth/core';

/**
 * A BerthService whose listed methods are `methods` and every other one fails with INTERNAL: for
 * tests of the HTTP layer's own rules (what a role may see) without a machine behind it.
 */
export function stubService(methods: Partial<BerthService>): BerthService {
  return new Proxy(methods, {
    get(target, name) {
      const own = (target as Record<string | symbol, unknown>)[name];
      if (own !== undefined) return own;
      if (name === 'then') return undefined;
      return () => {
        throw new BerthError('INTERNAL', `the stub service has no ${String(name)}`);
      };
    },
  }) as BerthService;
}
