export { RemoteBerthService, type RemoteBerthOptions } from './remote-berth-service.js';
export { openRemoteBerth, API_URL_ENV, TOKEN_ENV } from './open-remote-berth.js';
export { HttpClient, apiPath, problemToError, type HttpClientOptions, type HttpRequest, type HttpAnswer } from './http-client.js';
