// The bin's entry into oclif. scripts/bundle.mjs bundles it with the commands, so that bin/run.js and
// every berth command share one bundled copy of @oclif/core instead of loading its ~170 CommonJS files.
export { flush, run } from '@oclif/core';
