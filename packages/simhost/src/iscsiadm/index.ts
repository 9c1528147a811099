/** The fake iscsiadm (open-iscsi 2.1.8), one file per mode. */
export { runIscsiadm } from './run-iscsiadm.js';
export type { IscsiadmContext } from './cli.js';
