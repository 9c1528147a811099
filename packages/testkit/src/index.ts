/**
 * @berth/testkit: what berth's own tests and third-party plugin authors test against.
 * Each part lives in its own folder and has its own subpath export, so a part that needs no
 * vitest (the recorded fixtures) can be imported without it. The simulated host is its own
 * package, `@berth/simhost`.
 */

// Conformance suites for transports and backends (need vitest): `@berth/testkit/conformance`.
export * from './conformance/index.js';
// The recorded real tool outputs and their reader (no vitest): `@berth/testkit/fixtures`.
export * from './fixtures/index.js';
