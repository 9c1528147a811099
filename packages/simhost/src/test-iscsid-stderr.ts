/**
 * The stderr a run of a recorded iscsiadm command gives on a host where iscsid runs: the recording
 * machine had none, so the lines about reaching it are dropped.
 */
export function stderrWithIscsid(stderr: string): string {
  return stderr
    .split('\n')
    .filter(
      (l) =>
        !l.startsWith('System has not been booted with systemd') &&
        !l.startsWith('Failed to connect to bus') &&
        !l.startsWith('iscsiadm: can not connect to iSCSI daemon'),
    )
    .join('\n');
}
