export { createApiApp, DEFAULT_BODY_LIMIT, DEFAULT_MAX_WAIT_MS, type ApiApp, type ApiAppOptions, type ApiLogOptions } from './app.js';
export { API_REDACT_PATHS, redactDeep, redactUrl } from './log-redaction.js';
export { startApiServer, closeOnSignal, API_LISTEN_ENV, type ApiServer, type StartApiServerOptions } from './server.js';
export { TokenTable, hashToken, API_TOKEN_ENV, MIN_ENV_TOKEN_LENGTH, type Principal, type Role, type TokenEntry } from './auth.js';
export { parseListenAddress, type ListenAddress } from './listen-address.js';
export { buildOpenApi, type OpenApiDocument } from './openapi.js';
export { ApiMetrics } from './metrics.js';
export { zProblem, toProblem, problemType, PROBLEM_CONTENT_TYPE, type Problem } from './problem.js';
export { API_VERSION } from './version.js';
