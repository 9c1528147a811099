/**
 * What multipath-tools 0.9.4 prints (libmultipath/print.c): the `multipath -ll` topology, the
 * `multipathd show paths|maps|status` tables with their `%x` wildcards and padding, sizes, and
 * condlog's stderr prefix. Pure functions over plain views of paths and maps.
 */

/** A path (sd) as multipath prints it. */
export interface PathView {
  /** The path's wwid (udev ID_SERIAL, `36…`). */
  wwid: string;
  /** `H:C:T:L` */
  hcil: string;
  /** `sdb` */
  dev: string;
  /** `8:16` */
  devT: string;
  /** dm path state: `active`, `failed`, or `undef` for a path in no map. */
  dmState: string;
  /** Checker state: `ready`, `faulty`, `i/o pending`, or `undef`. */
  checkerState: string;
  /** Device state: `running`, `offline`, or `unknown` for a path in no map. */
  devState: string;
  /** INQUIRY vendor and product without their padding. */
  vendor: string;
  product: string;
  rev: string;
  /** Priority (prio const: 1). */
  priority: number;
  sizeSectors: number;
  serial: string;
  /** The map holding the path, or undefined for an orphan. */
  map: string | undefined;
  /** Faults seen on the path. */
  failures: number;
}

/** A path group of a map (failover: one path each). */
export interface GroupView {
  /** `active`, `enabled`, `disabled` or `undef`. */
  status: string;
  /** Group priority: the mean of its up paths' priorities, 0 when none is up (or not computed). */
  priority: number;
  paths: PathView[];
}

/** A multipath map as multipath prints it. */
export interface MapView {
  name: string;
  wwid: string;
  /** `dm-N`, or undefined before the kernel device exists (prints `undef`). */
  sysfs: string | undefined;
  sizeSectors: number;
  /** What the multipath command did to it: `create`, `reload` (prefixes the topology), or nothing. */
  action?: string;
  groups: GroupView[];
}

const SELECTOR = 'service-time 0';
const PROGRESS_LEN = 10;

/** `snprint_size`: sectors in K/M/G/T/P units of 1024, one decimal below 10, computed in C floats. */
export function formatSize(sectors: number): string {
  let s = Math.fround(Math.floor(sectors / 2));
  const units = ['K', 'M', 'G', 'T', 'P'];
  let u = 0;
  while (s >= 1024 && u < units.length - 1) {
    s = Math.fround(s / 1024);
    u++;
  }
  return `${printfFixed(s, s < 10 ? 1 : 0)}${units[u]}`;
}

/** printf `%.Nf` (glibc: exact value, ties to even), which `toFixed` rounds half up. */
export function printfFixed(value: number, digits: number): string {
  const scaled = value * 10 ** digits;
  const floor = Math.floor(scaled);
  if (scaled - floor === 0.5 && floor % 2 === 0) return (floor / 10 ** digits).toFixed(digits);
  return value.toFixed(digits);
}

/** condlog's prefix on stderr (`logsink` with time): CLOCK_MONOTONIC as `secs.usecs | `. */
export function condlogPrefix(): string {
  const ns = process.hrtime.bigint();
  const secs = ns / 1_000_000_000n;
  const usecs = (ns % 1_000_000_000n) / 1000n;
  return `${secs}.${usecs.toString().padStart(6, '0')} | `;
}

/** One condlog line as multipath and multipathd clients print it. */
export function condlog(text: string): string {
  return `${condlogPrefix()}${text}\n`;
}

type Field<T> = { wildcard: string; header: string; value: (x: T) => string };

const PATH_FIELDS: Array<Field<PathView>> = [
  { wildcard: 'w', header: 'uuid', value: (p) => p.wwid },
  { wildcard: 'i', header: 'hcil', value: (p) => p.hcil },
  { wildcard: 'd', header: 'dev', value: (p) => p.dev || '-' },
  { wildcard: 'D', header: 'dev_t', value: (p) => p.devT },
  { wildcard: 't', header: 'dm_st', value: (p) => p.dmState },
  { wildcard: 'o', header: 'dev_st', value: (p) => p.devState },
  { wildcard: 'T', header: 'chk_st', value: (p) => p.checkerState },
  // snprint_vpr prints vendor and product only, whatever the header says.
  { wildcard: 's', header: 'vend/prod/rev', value: (p) => `${p.vendor},${p.product}` },
  { wildcard: 'c', header: 'checker', value: () => 'tur' },
  { wildcard: 'C', header: 'next_check', value: (p) => (p.map === undefined ? 'orphan' : progress(1, 5)) },
  { wildcard: 'p', header: 'pri', value: (p) => String(p.priority) },
  { wildcard: 'S', header: 'size', value: (p) => formatSize(p.sizeSectors) },
  { wildcard: 'z', header: 'serial', value: (p) => p.serial },
  { wildcard: 'M', header: 'marginal_st', value: () => 'normal' },
  { wildcard: 'm', header: 'multipath', value: (p) => p.map ?? '[orphan]' },
  { wildcard: 'N', header: 'host WWNN', value: () => '[undef]' },
  { wildcard: 'n', header: 'target WWNN', value: () => '[undef]' },
  { wildcard: 'R', header: 'host WWPN', value: () => '[undef]' },
  { wildcard: 'r', header: 'target WWPN', value: () => '[undef]' },
  { wildcard: 'a', header: 'host adapter', value: () => '[undef]' },
  { wildcard: 'G', header: 'foreign', value: () => '--' },
  { wildcard: 'g', header: 'vpd page data', value: () => '[undef]' },
  { wildcard: '0', header: 'failures', value: (p) => String(p.failures) },
  { wildcard: 'P', header: 'protocol', value: () => 'scsi:iscsi' },
  { wildcard: 'I', header: 'init_st', value: () => 'ok' },
  { wildcard: 'L', header: 'LUN hex', value: (p) => lunHex(p.hcil) },
];

const MAP_FIELDS: Array<Field<MapView>> = [
  { wildcard: 'n', header: 'name', value: (m) => m.name },
  { wildcard: 'w', header: 'uuid', value: (m) => m.wwid },
  { wildcard: 'd', header: 'sysfs', value: (m) => m.sysfs ?? 'undef' },
  { wildcard: 'F', header: 'failback', value: () => '-' },
  { wildcard: 'Q', header: 'queueing', value: () => '-' },
  { wildcard: 'N', header: 'paths', value: (m) => String(activePaths(m)) },
  { wildcard: 'r', header: 'write_prot', value: (m) => (m.sysfs === undefined ? 'undef' : 'rw') },
  { wildcard: 't', header: 'dm-st', value: (m) => (m.sysfs === undefined ? 'undef' : 'active') },
  { wildcard: 'S', header: 'size', value: (m) => formatSize(m.sizeSectors) },
  { wildcard: 'f', header: 'features', value: () => '0' },
  { wildcard: 'x', header: 'failures', value: () => '0' },
  { wildcard: 'h', header: 'hwhandler', value: () => '0' },
  { wildcard: 'A', header: 'action', value: (m) => m.action ?? '' },
  { wildcard: '0', header: 'path_faults', value: (m) => String(m.groups.reduce((n, g) => n + g.paths.reduce((k, p) => k + p.failures, 0), 0)) },
  { wildcard: '1', header: 'switch_grp', value: () => '0' },
  { wildcard: '2', header: 'map_loads', value: () => '1' },
  { wildcard: '3', header: 'total_q_time', value: () => '0' },
  { wildcard: '4', header: 'q_timeouts', value: () => '0' },
  { wildcard: 's', header: 'vend/prod/rev', value: (m) => firstPathValue(m, (p) => (p.vendor && p.product ? `${p.vendor},${p.product}` : ''), '##,##') },
  { wildcard: 'v', header: 'vend', value: (m) => firstPathValue(m, (p) => p.vendor, '##') },
  { wildcard: 'p', header: 'prod', value: (m) => firstPathValue(m, (p) => p.product, '##') },
  { wildcard: 'e', header: 'rev', value: (m) => firstPathValue(m, (p) => p.rev, '##') },
  { wildcard: 'G', header: 'foreign', value: () => '--' },
  { wildcard: 'g', header: 'vpd page data', value: () => '[undef]' },
];

/** Column widths of a format over some items: the widest value (and header, when `header`). */
function widths<T>(fields: Array<Field<T>>, items: readonly T[], header: boolean): Map<string, number> {
  const out = new Map<string, number>();
  for (const f of fields) {
    let w = header ? f.header.length : 0;
    for (const item of items) w = Math.max(w, Math.min(f.value(item).length, 255));
    out.set(f.wildcard, w);
  }
  return out;
}

/** `_snprint_path`/`_snprint_multipath`: each known `%x` replaced, padded to its width; a newline at the end. */
function render<T>(fields: Array<Field<T>>, format: string, item: T | undefined, width: Map<string, number> | undefined): string {
  let out = '';
  for (let i = 0; i < format.length; i++) {
    const c = format[i]!;
    if (c !== '%') {
      out += c;
      continue;
    }
    const wc = format[i + 1];
    i++;
    const field = fields.find((f) => f.wildcard === wc);
    // An unknown wildcard prints nothing (print.c skips it).
    if (!field) continue;
    const text = item === undefined ? field.header : field.value(item);
    out += text;
    const w = width?.get(field.wildcard) ?? 0;
    if (text.length < w) out += ' '.repeat(w - text.length);
  }
  return `${out}\n`;
}

/** `show paths [format F]` (pretty: header, padded) and `show paths raw format F`. */
export function formatPathTable(paths: readonly PathView[], format: string, pretty: boolean): string {
  if (!pretty) return paths.map((p) => render(PATH_FIELDS, format, p, undefined)).join('');
  if (paths.length === 0) return '';
  const width = widths(PATH_FIELDS, paths, true);
  return render(PATH_FIELDS, format, undefined, width) + paths.map((p) => render(PATH_FIELDS, format, p, width)).join('');
}

/** `show maps [format F]` (pretty: header, padded) and `show maps raw format F`. */
export function formatMapTable(maps: readonly MapView[], format: string, pretty: boolean): string {
  if (!pretty) return maps.map((m) => render(MAP_FIELDS, format, m, undefined)).join('');
  if (maps.length === 0) return '';
  const width = widths(MAP_FIELDS, maps, true);
  return render(MAP_FIELDS, format, undefined, width) + maps.map((m) => render(MAP_FIELDS, format, m, width)).join('');
}

/** Path field widths for topologies (no header): over `paths`. */
export function pathWidths(paths: readonly PathView[]): Map<string, number> {
  return widths(PATH_FIELDS, paths, false);
}

/**
 * `_snprint_multipath_topology` at verbosity 2: the name line (`%A: ` for an action, ` (%w)` when
 * the name is not the wwid), the properties line, then each group and its paths as a tree.
 * Path fields are padded to `pathWidth` (default: over this map's paths, as `multipath -ll` does).
 */
export function formatTopology(map: MapView, pathWidth?: Map<string, number>): string {
  const style = `${map.action ? '%A: ' : ''}%n${map.name !== map.wwid ? ' (%w)' : ''} %d %s`;
  let out = render(MAP_FIELDS, style, map, undefined);
  out += render(MAP_FIELDS, "size=%S features='%f' hwhandler='%h' wp=%r", map, undefined);
  const width = pathWidth ?? pathWidths(map.groups.flatMap((g) => g.paths));
  map.groups.forEach((g, j) => {
    const lastGroup = j + 1 === map.groups.length;
    out += `${lastGroup ? '`' : '|'}-+- policy='${SELECTOR}' prio=${g.priority} status=${g.status}\n`;
    g.paths.forEach((p, i) => {
      out += `${lastGroup ? ' ' : '|'} ${i + 1 === g.paths.length ? '`' : '|'}- `;
      out += render(PATH_FIELDS, '%i %d %D %t %T %o', p, width);
    });
  });
  return out;
}

/** Verbosity 1 (`multipath -v1 -ll`): the map names only. */
export function formatTopologyNames(map: MapView): string {
  return `${map.name}\n`;
}

/**
 * `show status`: the checker states present (`up`, `down`, `pending`, … in the checker's enum
 * order) with their counts, then the monitored path count.
 */
export function formatStatus(states: readonly string[]): string {
  const order = ['wild', 'unchecked', 'down', 'up', 'shaky', 'ghost', 'pending', 'timeout', 'removed', 'delayed'];
  const counts = new Map<string, number>();
  for (const state of states) counts.set(state, (counts.get(state) ?? 0) + 1);
  let out = 'path checker states:\n';
  for (const state of order) {
    const n = counts.get(state);
    if (n) out += `${state.padEnd(20, ' ')}${n}\n`;
  }
  return `${out}\npaths: ${states.length}\nbusy: False\n`;
}

function activePaths(m: MapView): number {
  return m.groups.reduce((n, g) => n + g.paths.filter((p) => p.checkerState === 'ready' || p.checkerState === 'ghost').length, 0);
}

function firstPathValue(m: MapView, pick: (p: PathView) => string, none: string): string {
  for (const g of m.groups) {
    for (const p of g.paths) {
      const v = pick(p);
      if (v) return v;
    }
  }
  return none;
}

function progress(cur: number, total: number): string {
  const i = Math.floor((PROGRESS_LEN * cur) / total);
  return `${'X'.repeat(i)}${'.'.repeat(PROGRESS_LEN - i)} ${cur}/${total}`;
}

function lunHex(hcil: string): string {
  const lun = BigInt(hcil.split(':')[3] ?? '0');
  // int_to_scsilun(): the 16-bit levels swapped.
  const m = 0xffffn;
  const hex = ((lun & m) << 48n) | (((lun >> 16n) & m) << 32n) | (((lun >> 32n) & m) << 16n) | ((lun >> 48n) & m);
  return `0x${hex.toString(16).padStart(16, '0')}`;
}
