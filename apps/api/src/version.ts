/** The API's version, as its OpenAPI document states it. */
export const API_VERSION = '0.1.0';

/**
 * The license the OpenAPI document states (SPDX): OpenStack's, whose volume-attach flow berth
 * rebuilds. The repository states none yet; keep this in step with the packages' `license` field.
 */
export const API_LICENSE = { name: 'Apache License 2.0', identifier: 'Apache-2.0' };
