export * from './driver-test-env.js';
