/**
 * open-iscsi 2.1.8's exit codes and their texts (include/iscsi_err.h, usr/iscsi_err.c): what
 * `iscsiadm: initiator reported error (N - text)` and `... : text` messages print.
 */
export const ISCSI_ERR_TEXT: Readonly<Record<number, string>> = {
  0: 'no error',
  1: 'unknown error',
  2: 'session not found',
  3: 'no available memory',
  4: 'encountered connection failure',
  5: 'encountered iSCSI login failure',
  6: 'encountered iSCSI database failure',
  7: 'invalid parameter',
  8: 'connection timed out',
  9: 'internal error',
  10: 'encountered iSCSI logout failure',
  11: 'iSCSI PDU timed out',
  12: 'iSCSI driver not found. Please make sure it is loaded, and retry the operation',
  13: 'daemon access denied',
  14: 'iSCSI driver does not support requested capability.',
  15: 'session exists',
  16: 'Unknown request',
  17: 'iSNS service not supported',
  18: 'could not communicate to iscsid',
  19: 'encountered non-retryable iSCSI login failure',
  20: 'could not connect to iscsid',
  21: 'no objects found',
  22: 'sysfs lookup failure',
  23: 'host not found',
  24: 'iSCSI login failed due to authorization failure',
  25: 'iSNS query failed',
  26: 'iSNS registration failed',
  27: 'operation not supported',
  28: 'device or resource in use',
  29: 'operation failed but retry may succeed',
  30: 'unknown discovery type',
  31: 'child process terminated',
  32: 'target likely not connected',
  33: 'iscsid request timed out',
};

/** The text of exit code `code` (`unknown error` for codes open-iscsi does not have). */
export function iscsiErrText(code: number): string {
  return ISCSI_ERR_TEXT[code] ?? 'unknown error';
}
