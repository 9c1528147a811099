export * from './errors.js';
export * from './connection.js';
export * from './model.js';
export * from './transitions.js';
export type * from './contracts/index.js';
export type * from './store.js';
export * from './logger.js';
export * from './plugin.js';
export type * from './service.js';
