import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { BerthError } from '@berth/core';
import { writeFileAtomically } from '@berth/host';
import { isQmpFailure, qmpFailureOf, type QmpCallOptions, type QmpClient } from './qmp-client.js';
import { zEmptyReturn } from './qmp-schemas.js';

/** One iSCSI LUN as a QEMU block node (`blockdev-add` driver `iscsi`). */
export interface IscsiNodeSpec {
  /** The node's name (see `zQmpName`). */
  nodeName: string;
  /** `host:port` (IPv6 in brackets). */
  portal: string;
  iqn: string;
  /** The LUN as it goes on the wire (see `wireLun`). */
  lun: number;
  initiator: string;
  /**
   * Initiator CHAP: the user name, and the id of a `secret` object to make from `secretFile` (a
   * 0600 file holding the password: written by `writeSecretFile`, never a QMP argument).
   */
  chap?: { username: string; secretId: string; secretFile: string; /** The secret object exists (a second node of the LUN uses it too): neither made nor removed here. */ shared?: boolean };
  readOnly: boolean;
  /** libiscsi's request timeout in seconds: a request on a dead path fails after it (0: waits for ever). */
  timeoutS?: number;
}

/**
 * The LUN number libiscsi puts on the wire: LUNs up to 255 as they are, higher ones in SAM
 * flat-space addressing (0x4000 | lun), which is how tgtd numbers them.
 */
export function wireLun(lun: number): number {
  if (!Number.isInteger(lun) || lun < 0 || lun > 0x3fff) throw new BerthError('VALIDATION', `LUN ${lun} is out of range (0-16383)`);
  return lun < 256 ? lun : 0x4000 | lun;
}

/**
 * Write `secret` to `file` with mode 0600 (its directory 0700), atomically: qemu reads the file
 * when the `secret` object is made, so the password never is a QMP argument, a command line or
 * a log line.
 */
export async function writeSecretFile(file: string, secret: string): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  await writeFileAtomically(file, secret, 0o600);
}

/**
 * Log in to the LUN: `object-add` secret (from the file) when there is CHAP, then `blockdev-add`
 * driver `iscsi`. A failed login leaves nothing (the secret object is removed again). Throws the
 * QMP error as QEMU words it (`Failed to log in to target. Status: Authentication failure(513)`).
 */
export async function addIscsiNode(qmp: QmpClient, spec: IscsiNodeSpec, options: QmpCallOptions = {}): Promise<void> {
  if (spec.chap && !spec.chap.shared) {
    await qmp.request('object-add', { 'qom-type': 'secret', id: spec.chap.secretId, file: spec.chap.secretFile, format: 'raw' }, zEmptyReturn, options);
  }
  try {
    await qmp.request(
      'blockdev-add',
      {
        driver: 'iscsi',
        'node-name': spec.nodeName,
        transport: 'tcp',
        portal: spec.portal,
        target: spec.iqn,
        lun: spec.lun,
        'initiator-name': spec.initiator,
        ...(spec.chap ? { user: spec.chap.username, 'password-secret': spec.chap.secretId } : {}),
        ...(spec.timeoutS === undefined ? {} : { timeout: spec.timeoutS }),
        'read-only': spec.readOnly,
        cache: { direct: true },
      },
      zEmptyReturn,
      options,
    );
  } catch (error) {
    if (spec.chap && !spec.chap.shared) await removeSecret(qmp, spec.chap.secretId, options).catch(() => undefined);
    throw error;
  }
}

/**
 * Remove a block node (`blockdev-del`: ends its iSCSI session, after a flush) and its secret
 * object. An export lets go of its node a moment after it is deleted ("Node ... is in use" until
 * then), so that answer is asked again until the deadline. Parts already gone are skipped.
 */
export async function removeIscsiNode(qmp: QmpClient, nodeName: string, secretId: string | undefined, options: QmpCallOptions = {}): Promise<void> {
  const deadline = Date.now() + (options.timeoutMs ?? 10_000);
  for (let pause = 1; ; pause = Math.min(pause * 2, 50)) {
    try {
      await qmp.request('blockdev-del', { 'node-name': nodeName }, zEmptyReturn, options);
      break;
    } catch (error) {
      if (isQmpFailure(error, /Failed to find node/)) break;
      if (!isQmpFailure(error, /is in use/) || Date.now() + pause > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, pause));
    }
  }
  if (secretId !== undefined) await removeSecret(qmp, secretId, options);
}

/** `object-del` of a secret object; one that does not exist is success. */
export async function removeSecret(qmp: QmpClient, secretId: string, options: QmpCallOptions = {}): Promise<void> {
  try {
    await qmp.request('object-del', { id: secretId }, zEmptyReturn, options);
  } catch (error) {
    const failure = qmpFailureOf(error);
    if (failure === undefined || !/not found|does not exist/i.test(failure.desc)) throw error;
  }
}
