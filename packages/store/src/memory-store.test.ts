import { createMemoryStore } from '@berth/core';
import { describeStoreConformance } from './conformance.js';

// Core's in-memory store (the one its unit tests run the pipelines on) keeps every rule SQLite and
// PostgreSQL keep. The many-hosts suite is not run: it keeps no work items, notifications or leases.
describeStoreConformance('memory', async () => createMemoryStore());
