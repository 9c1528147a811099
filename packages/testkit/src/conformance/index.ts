export {
  describeTransportConformance,
  type TransportConformanceSetup,
  type TransportConformanceOptions,
} from './transport-conformance.js';
export {
  describeBackendConformance,
  type BackendConformanceSetup,
  type BackendConformanceOptions,
} from './backend-conformance.js';
export {
  describeConsumerConformance,
  type ConsumerConformanceSetup,
  type ConsumerConformanceOptions,
  type ConsumerConformanceVolume,
} from './consumer-conformance.js';
