// The store's errors are core's (`store-errors.ts` there), shared with core's in-memory store.
export { agentReplaced, alreadyExists, corruptRow, hostInUse, notFound, notOwner, stateConflict, type ResourceKind } from '@berth/core';
