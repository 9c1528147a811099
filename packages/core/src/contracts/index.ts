export type * from './check.js';
export type * from './transport-driver.js';
export type * from './volume-backend.js';
export type * from './consumer.js';
