// Secret stripping is core's (`connection.ts`), shared with core's in-memory store.
export { connectorWithoutSecrets } from '@berth/core';
