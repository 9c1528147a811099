/**
 * open-iscsi's record formats (usr/idbm.c, libopeniscsiusr/idbm.c, 2.1.8): node records and
 * sendtargets discovery records, their keys in print order, their defaults (as recorded on
 * Debian 12, which do NOT come from iscsid.conf), and how they are shown and stored.
 */

/** How a key's value is checked on update. */
type KeyKind = { kind: 'str' } | { kind: 'int' } | { kind: 'opts'; opts: readonly string[] } | { kind: 'list'; opts: readonly string[] };

/** One key of a record. */
export interface RecordKey {
  name: string;
  kind: KeyKind;
  default: string;
  /** Used to look the record up: cannot be modified (`node.name`, `node.tpgt`, address, port). */
  lookup?: boolean;
  /** Never printed (`*_length`). */
  hidden?: boolean;
  /** A password: `********` in a show unless `--show`. */
  secret?: boolean;
}

/** A record: key → value text (empty string for unset). */
export type RecordValues = Map<string, string>;

/** The version string records start with. */
export const RECORD_VERSION = '2.1.8';

const STR: KeyKind = { kind: 'str' };
const INT: KeyKind = { kind: 'int' };
const YES_NO: KeyKind = { kind: 'opts', opts: ['No', 'Yes'] };
const STARTUP: KeyKind = { kind: 'opts', opts: ['manual', 'automatic', 'onboot'] };
const DIGEST: KeyKind = { kind: 'opts', opts: ['None', 'CRC32C', 'CRC32C,None', 'None,CRC32C'] };
const AUTH: KeyKind = { kind: 'opts', opts: ['None', 'CHAP'] };
const CHAP_ALGS: KeyKind = { kind: 'list', opts: ['MD5', 'SHA1', 'SHA256', 'SHA3-256'] };

function s(name: string, def = '', extra: Partial<RecordKey> = {}): RecordKey {
  return { name, kind: STR, default: def, ...extra };
}
function i(name: string, def: number, extra: Partial<RecordKey> = {}): RecordKey {
  return { name, kind: INT, default: String(def), ...extra };
}
function o(name: string, kind: KeyKind, def: string): RecordKey {
  return { name, kind, default: def };
}

const IFACE_KEYS: RecordKey[] = [
  s('iface.iscsi_ifacename', 'default'),
  s('iface.net_ifacename'),
  s('iface.ipaddress'),
  i('iface.prefix_len', 0),
  s('iface.hwaddress'),
  s('iface.transport_name', 'tcp'),
  s('iface.initiatorname'),
  s('iface.state'),
  i('iface.vlan_id', 0),
  i('iface.vlan_priority', 0),
  s('iface.vlan_state'),
  i('iface.iface_num', 0),
  i('iface.mtu', 0),
  i('iface.port', 0),
  s('iface.bootproto'),
  s('iface.subnet_mask'),
  s('iface.gateway'),
  s('iface.dhcp_alt_client_id_state'),
  s('iface.dhcp_alt_client_id'),
  s('iface.dhcp_dns'),
  s('iface.dhcp_learn_iqn'),
  s('iface.dhcp_req_vendor_id_state'),
  s('iface.dhcp_vendor_id_state'),
  s('iface.dhcp_vendor_id'),
  s('iface.dhcp_slp_da'),
  s('iface.fragmentation'),
  s('iface.gratuitous_arp'),
  s('iface.incoming_forwarding'),
  s('iface.tos_state'),
  i('iface.tos', 0),
  i('iface.ttl', 0),
  s('iface.delayed_ack'),
  s('iface.tcp_nagle'),
  s('iface.tcp_wsf_state'),
  i('iface.tcp_wsf', 0),
  i('iface.tcp_timer_scale', 0),
  s('iface.tcp_timestamp'),
  s('iface.redirect'),
  i('iface.def_task_mgmt_timeout', 0),
  s('iface.header_digest'),
  s('iface.data_digest'),
  s('iface.immediate_data'),
  s('iface.initial_r2t'),
  s('iface.data_seq_inorder'),
  s('iface.data_pdu_inorder'),
  i('iface.erl', 0),
  i('iface.max_receive_data_len', 0),
  i('iface.first_burst_len', 0),
  i('iface.max_outstanding_r2t', 0),
  i('iface.max_burst_len', 0),
  s('iface.chap_auth'),
  s('iface.bidi_chap'),
  s('iface.strict_login_compliance'),
  s('iface.discovery_auth'),
  s('iface.discovery_logout'),
];

/** The keys of a node record, in the order iscsiadm prints and stores them. */
export const NODE_KEYS: readonly RecordKey[] = [
  s('node.name', '', { lookup: true }),
  i('node.tpgt', -1, { lookup: true }),
  o('node.startup', STARTUP, 'manual'),
  o('node.leading_login', YES_NO, 'No'),
  ...IFACE_KEYS,
  s('node.discovery_address'),
  i('node.discovery_port', 0),
  o('node.discovery_type', { kind: 'opts', opts: ['send_targets', 'isns', 'offload_send_targets', 'slp', 'static', 'fw'] }, 'static'),
  i('node.session.initial_cmdsn', 0),
  i('node.session.initial_login_retry_max', 4),
  i('node.session.xmit_thread_priority', -20),
  i('node.session.cmds_max', 128),
  i('node.session.queue_depth', 32),
  i('node.session.nr_sessions', 1),
  o('node.session.auth.authmethod', AUTH, 'None'),
  s('node.session.auth.username'),
  s('node.session.auth.password', '', { secret: true }),
  i('node.session.auth.password_length', 0, { hidden: true }),
  s('node.session.auth.username_in'),
  s('node.session.auth.password_in', '', { secret: true }),
  i('node.session.auth.password_in_length', 0, { hidden: true }),
  o('node.session.auth.chap_algs', CHAP_ALGS, 'MD5'),
  i('node.session.timeo.replacement_timeout', 120),
  i('node.session.err_timeo.abort_timeout', 15),
  i('node.session.err_timeo.lu_reset_timeout', 30),
  i('node.session.err_timeo.tgt_reset_timeout', 30),
  i('node.session.err_timeo.host_reset_timeout', 60),
  o('node.session.iscsi.FastAbort', YES_NO, 'Yes'),
  o('node.session.iscsi.InitialR2T', YES_NO, 'No'),
  o('node.session.iscsi.ImmediateData', YES_NO, 'Yes'),
  i('node.session.iscsi.FirstBurstLength', 262144),
  i('node.session.iscsi.MaxBurstLength', 16776192),
  i('node.session.iscsi.DefaultTime2Retain', 0),
  i('node.session.iscsi.DefaultTime2Wait', 2),
  i('node.session.iscsi.MaxConnections', 1),
  i('node.session.iscsi.MaxOutstandingR2T', 1),
  i('node.session.iscsi.ERL', 0),
  o('node.session.scan', { kind: 'opts', opts: ['manual', 'auto'] }, 'auto'),
  i('node.session.reopen_max', 0),
  s('node.conn[0].address', '', { lookup: true }),
  i('node.conn[0].port', 3260, { lookup: true }),
  o('node.conn[0].startup', STARTUP, 'manual'),
  i('node.conn[0].tcp.window_size', 524288),
  i('node.conn[0].tcp.type_of_service', 0),
  i('node.conn[0].timeo.logout_timeout', 15),
  i('node.conn[0].timeo.login_timeout', 30),
  i('node.conn[0].timeo.auth_timeout', 45),
  i('node.conn[0].timeo.noop_out_interval', 5),
  i('node.conn[0].timeo.noop_out_timeout', 5),
  i('node.conn[0].iscsi.MaxXmitDataSegmentLength', 0),
  i('node.conn[0].iscsi.MaxRecvDataSegmentLength', 262144),
  o('node.conn[0].iscsi.HeaderDigest', DIGEST, 'None'),
  o('node.conn[0].iscsi.DataDigest', DIGEST, 'None'),
  o('node.conn[0].iscsi.IFMarker', YES_NO, 'No'),
  o('node.conn[0].iscsi.OFMarker', YES_NO, 'No'),
];

/** The keys of a sendtargets discovery record (`send_targets/ADDR,PORT/st_config`). */
export const DISCOVERY_KEYS: readonly RecordKey[] = [
  o('discovery.startup', { kind: 'opts', opts: ['manual', 'automatic'] }, 'manual'),
  o('discovery.type', { kind: 'opts', opts: ['sendtargets', 'isns', 'offload_send_targets', 'slp', 'static', 'fw'] }, 'sendtargets'),
  s('discovery.sendtargets.address', '', { lookup: true }),
  i('discovery.sendtargets.port', 3260, { lookup: true }),
  o('discovery.sendtargets.auth.authmethod', AUTH, 'None'),
  s('discovery.sendtargets.auth.username'),
  s('discovery.sendtargets.auth.password', '', { secret: true }),
  i('discovery.sendtargets.auth.password_length', 0, { hidden: true }),
  s('discovery.sendtargets.auth.username_in'),
  s('discovery.sendtargets.auth.password_in', '', { secret: true }),
  i('discovery.sendtargets.auth.password_in_length', 0, { hidden: true }),
  o('node.session.auth.chap_algs', CHAP_ALGS, 'MD5'),
  i('discovery.sendtargets.timeo.login_timeout', 15),
  o('discovery.sendtargets.use_discoveryd', YES_NO, 'No'),
  i('discovery.sendtargets.discoveryd_poll_inval', 30),
  i('discovery.sendtargets.reopen_max', 5),
  i('discovery.sendtargets.timeo.auth_timeout', 45),
  i('discovery.sendtargets.timeo.active_timeout', 30),
  i('discovery.sendtargets.iscsi.MaxRecvDataSegmentLength', 32768),
];

/** A record with every key at its default. */
export function defaultRecord(keys: readonly RecordKey[]): RecordValues {
  return new Map(keys.map((k) => [k.name, k.default]));
}

/**
 * The record as iscsiadm shows it (`# BEGIN RECORD` … `# END RECORD`): hidden keys left out,
 * empty values as `<empty>`, set passwords as `********` unless `showSecrets`.
 */
export function formatRecordShow(keys: readonly RecordKey[], values: RecordValues, showSecrets: boolean): string {
  const lines = [`# BEGIN RECORD ${RECORD_VERSION}`];
  for (const key of keys) {
    if (key.hidden) continue;
    const value = values.get(key.name) ?? '';
    const shown = value === '' ? '<empty>' : key.secret && !showSecrets ? '********' : value;
    lines.push(`${key.name} = ${shown}`);
  }
  lines.push('# END RECORD');
  return lines.join('\n') + '\n';
}

/** The record as iscsiadm stores it on disk: empty string values left out, passwords in plain text. */
export function formatRecordFile(keys: readonly RecordKey[], values: RecordValues): string {
  const lines = [`# BEGIN RECORD ${RECORD_VERSION}`];
  for (const key of keys) {
    if (key.hidden) continue;
    const value = values.get(key.name) ?? '';
    if (value === '' && key.kind.kind === 'str') continue;
    lines.push(`${key.name} = ${value}`);
  }
  lines.push('# END RECORD');
  return lines.join('\n') + '\n';
}

/** Read a stored record as idbm does: the defaults, then every `key = value` line of the file over them. */
export function parseRecordFile(keys: readonly RecordKey[], text: string): RecordValues {
  const values = defaultRecord(keys);
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const at = line.indexOf(' = ');
    if (at <= 0) continue;
    const name = line.slice(0, at).trim();
    if (values.has(name)) values.set(name, line.slice(at + 3));
  }
  return values;
}

/** Why an update of `name` is refused: the two messages of idbm_verify_param, or undefined. */
export function verifyParam(keys: readonly RecordKey[], name: string): string | undefined {
  const key = keys.find((k) => k.name === name);
  if (!key) return `Cannot modify ${name}. Invalid param name.`;
  if (key.lookup) return `Cannot modify ${name}. It is used to look up the record and cannot be changed.`;
  return undefined;
}

/**
 * Set `name` to `value` as idbm_rec_update_param does: ints through strtoul, options checked
 * (`unknown value format …` when not one of them), a password also sets its hidden length.
 * Returns the error lines, or [] when set.
 */
export function updateParam(keys: readonly RecordKey[], values: RecordValues, name: string, value: string): string[] {
  const key = keys.find((k) => k.name === name);
  if (!key) return [`Cannot modify ${name}. Invalid param name.`];
  switch (key.kind.kind) {
    case 'str':
      values.set(name, value);
      break;
    case 'int':
      values.set(name, String(strtoul(value)));
      break;
    case 'opts':
      if (!key.kind.opts.includes(value)) return [`unknown value format '${value}' for parameter name '${name}'`];
      values.set(name, value);
      break;
    case 'list': {
      const opts = key.kind.opts;
      const tokens = value.split(/[, \n]/).filter((t) => t !== '');
      const picked = [...new Set(tokens.filter((t) => opts.includes(t)))];
      values.set(name, picked.join(','));
      break;
    }
  }
  if (key.secret) values.set(`${name}_length`, String(value.length & 0xffff));
  return [];
}

/** C's strtoul(value, NULL, 10) read back as an int: leading digits, 0 when none. */
function strtoul(value: string): number {
  const match = /^\s*([+-]?)(\d+)/.exec(value);
  if (!match) return 0;
  const n = Number(match[2]);
  // strtoul negates unsigned; the record's int field then reads it back as a signed int.
  return match[1] === '-' ? -n | 0 : n | 0;
}
