import { createMemoryStore } from '@berth/core';
import { describeStoreConformance } from './conformance.js';
import { describeManyHostsStoreConformance } from './conformance-many-hosts.js';

// Core's in-memory store (the one its unit tests run the pipelines on) keeps every rule SQLite and
// PostgreSQL keep, the many-hosts members (leases, work items, in-process notifications) included.
describeStoreConformance('memory', async () => createMemoryStore());
describeManyHostsStoreConformance('memory', async () => createMemoryStore());
