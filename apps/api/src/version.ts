/** The API's version, as its OpenAPI document states it. */
export const API_VERSION = '0.1.0';
