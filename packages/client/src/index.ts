export { RemoteBerthService, type RemoteBerthOptions } from './remote-berth-service.js';
export { openRemoteBerth, API_URL_ENV, TOKEN_ENV } from './open-remote-berth.js';
export { HttpClient, apiPath, problemToError, type HttpClientOptions, type HttpRequest, type HttpAnswer } from './http-client.js';
export {
  zProblem,
  zVolumeList,
  zServerList,
  zHostList,
  zAttachmentList,
  zVolumeAttachmentList,
  zOperationList,
  zAttachmentConnectionBody,
  zOperationOutcomeBody,
  zVolumeEnvelope,
  zCredentials,
  zHealth,
  zDoctorReport,
  zPluginReport,
  zReconcileOptions,
  zReconcileDifference,
  zReconcileReport,
  type Problem,
} from './wire.js';
// What a caller passes and gets back: @berth/core's models and requests, so that a program using
// the client needs no other import to type its code or catch its errors.
export { BerthError, ERROR_CODES, type BerthErrorCode } from '@berth/core';
export type {
  Attachment,
  AttachmentConnection,
  AttachRequest,
  BerthService,
  Connector,
  ConnectionInfo,
  CreateServerRequest,
  CreateVolumeRequest,
  DetachRequest,
  DoctorEntry,
  Host,
  Operation,
  OperationOutcome,
  OperationState,
  PluginReport,
  ProjectScope,
  ReconcileOptions,
  ReconcileReport,
  Ref,
  ReserveAttachmentRequest,
  Server,
  StartedOperation,
  Volume,
  VolumeStatus,
} from '@berth/core';
