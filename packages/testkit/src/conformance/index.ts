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
