import { createHostFs } from '@berth/host';
import { serialOf, type DmMultipath } from './dm-multipath.js';
import { condlog, formatTopology, formatTopologyNames } from './multipath-format.js';
import { formatConfig } from './multipath-config.js';
import { shortGetopt } from './short-getopt.js';
import type { SimKernel } from './sim-kernel.js';
import type { ToolResult } from './tool-protocol.js';

/** multipath-tools' `VERSION_STRING`. */
export const MULTIPATH_VERSION = 'multipath-tools v0.9.4 (12/19, 2022)\n';

const OPTSTRING = ':adDcChl::eFfM:v:p:b:BrR:itTquUwW';

type Cmd = 'create' | 'dry-run' | 'list-short' | 'list-long' | 'flush-one' | 'flush-all' | 'valid-path' | 'usable-paths' | 'add-wwid' | 'remove-wwid' | 'reset-wwids' | 'dump-config';

/** What a command-line device argument is (multipath's `get_dev_type`). */
type DevType = { type: 'devnode'; disk?: string; map?: string } | { type: 'devt'; disk?: string } | { type: 'devmap' } | { type: 'none' };

/** What the fake `multipath` works on. */
export interface MultipathContext {
  dm: DmMultipath;
  kernel: SimKernel;
  root: string;
}

/**
 * multipath 0.9.4 (multipath/main.c) over the simulated device-mapper: `-a`/`-w` (wwids file),
 * `-l`/`-ll` (topology), `-f`/`-F` (flush, through multipathd first), `-C` (usable paths),
 * `-c`, `-r` and plain runs (create/reload maps), `-t`/`-T`. Exit codes are 0 or 1; messages go
 * to stderr with condlog's time prefix.
 */
export async function runMultipath(argv: readonly string[], ctx: MultipathContext): Promise<ToolResult> {
  return ctx.dm.exclusive(() => multipath(argv, ctx));
}

async function multipath(argv: readonly string[], ctx: MultipathContext): Promise<ToolResult> {
  const { dm } = ctx;
  let stdout = '';
  let stderr = '';
  let verbosity = 2;
  const log = (level: number, text: string): void => {
    if (level <= verbosity) stderr += condlog(text);
  };
  const done = (exitCode: 0 | 1): ToolResult => ({ stdout, stderr, exitCode });
  let cmd: Cmd = 'create';
  let forceReload = false;
  const { options, operands } = shortGetopt(argv, OPTSTRING);
  for (const o of options) {
    switch (o.ch) {
      case 'v':
        if (!/^\d/.test(o.arg ?? '')) {
          stderr += usage();
          return done(1);
        }
        verbosity = Number.parseInt(o.arg ?? '2', 10);
        break;
      case 'c':
        cmd = 'valid-path';
        break;
      case 'C':
        cmd = 'usable-paths';
        break;
      case 'd':
        if (cmd === 'create') cmd = 'dry-run';
        break;
      case 'f':
        cmd = 'flush-one';
        break;
      case 'F':
        cmd = 'flush-all';
        break;
      case 'l':
        cmd = o.arg?.startsWith('l') ? 'list-long' : 'list-short';
        break;
      case 'r':
        forceReload = true;
        break;
      case 't':
        stdout += formatConfig(dm.findMultipaths());
        return done(0);
      case 'T':
        cmd = 'dump-config';
        break;
      case 'h':
        stderr += usage();
        return done(0);
      case 'a':
        cmd = 'add-wwid';
        break;
      case 'w':
        cmd = 'remove-wwid';
        break;
      case 'W':
        cmd = 'reset-wwids';
        break;
      case 'p':
        if (!['failover', 'multibus', 'group_by_serial', 'group_by_prio', 'group_by_node_name'].includes(o.arg ?? '')) {
          stdout += `'${o.arg ?? ''}' is not a valid policy\n`;
          stderr += usage();
          return done(1);
        }
        break;
      case ':':
        stderr += `Missing option argument\n${usage()}`;
        return done(1);
      case '?':
        // glibc prints a NULL optarg as "(null)".
        stderr += `Unknown switch: (null)\n${usage()}`;
        return done(1);
      default:
        // -D -e -i -q -B -b -M -R -u -U: accepted, no effect on the model.
        break;
    }
  }
  const dev = operands[0];
  const devType: DevType = dev === undefined ? { type: 'none' } : await getDevType(dev, ctx);
  if (dev !== undefined && devType.type === 'none') {
    log(0, `'${dev}' is not a valid argument\n`);
    return done(1);
  }

  if (cmd === 'usable-paths') return usablePaths(dev, ctx, log, done);
  if (cmd === 'valid-path') {
    if (dev === undefined || devType.type === 'devmap') {
      log(0, 'the -c option requires a path to check');
      return done(1);
    }
    const disk = devType.type === 'devnode' || devType.type === 'devt' ? devType.disk : undefined;
    const serial = disk === undefined ? undefined : diskSerial(disk, ctx);
    const valid = serial !== undefined && (dm.wwidListed(serial) || dm.mapNameOfPath(disk!) !== undefined);
    stdout += `${dev} ${valid ? 'is' : 'is not'} a valid multipath device path\n`;
    return done(valid ? 0 : 1);
  }
  if (cmd === 'remove-wwid' && dev === undefined) {
    log(0, 'the -w option requires a device');
    return done(1);
  }
  if (cmd === 'flush-one' && devType.type !== 'devmap' && !(devType.type === 'devnode' && devType.map !== undefined)) {
    log(0, 'the -f option requires a map name to remove');
    return done(1);
  }

  // delegate_to_multipathd: -r (reconfigure all), -f (del map), -F (del maps).
  if (dm.daemonRunning()) {
    if (cmd === 'create' && forceReload) {
      await dm.configure('daemon', { forceReload: true });
      return done(0);
    }
    if (cmd === 'flush-one' && dev !== undefined) {
      // multipathd strips /dev/ (convert_dev) and looks the rest up as a map name.
      const name = dm.findMap(dev.startsWith('/dev/') ? dev.slice(5).replace(/^mapper\//, '/dev/mapper/') : dev);
      if (name !== undefined && (await dm.flushMap(name)) === 'ok') return done(0);
    }
    if (cmd === 'flush-all') {
      let failed = false;
      for (const name of dm.mapNames()) if ((await dm.flushMap(name)) !== 'ok') failed = true;
      if (!failed) return done(0);
    }
  }

  if (cmd === 'reset-wwids') {
    for (const name of dm.mapNames()) {
      const w = dm.wwidOfMap(name);
      if (w !== undefined) dm.rememberWwid(w);
    }
    stdout += 'successfully reset wwids\n';
    return done(0);
  }
  if (cmd === 'flush-one' && dev !== undefined) {
    const name = devType.type === 'devnode' ? devType.map : dm.findMap(dev);
    if (name === undefined) {
      log(0, `${dev} is not a multipath device`);
      return done(1);
    }
    if ((await dm.flushMap(name)) === 'in-use') {
      // _dm_flush_map names the map as it was given.
      log(2, `${dev}: map in use`);
      return done(1);
    }
    return done(0);
  }
  if (cmd === 'flush-all') {
    let failed = false;
    for (const name of dm.mapNames()) {
      if ((await dm.flushMap(name)) === 'in-use') {
        log(2, `${name}: map in use`);
        failed = true;
      }
    }
    return done(failed ? 1 : 0);
  }
  if (cmd === 'dump-config') {
    stdout += formatConfig(dm.findMultipaths());
    return done(0);
  }

  // configure(): a device limits the scope to its wwid.
  let refwwid: string | undefined;
  if (dev !== undefined) {
    refwwid = refWwid(dev, devType, ctx);
    if (refwwid === undefined) return done(1);
  }
  if (cmd === 'remove-wwid') {
    const removed = dm.forgetWwid(refwwid!);
    if (removed === true) stdout += `wwid '${refwwid!}' removed\n`;
    else if (removed === false) stdout += `wwid '${refwwid!}' not in wwids file\n`;
    return done(removed === undefined ? 1 : 0);
  }
  if (cmd === 'add-wwid') {
    if (refwwid === undefined) return done(0);
    // printf, not condlog: os-brick compares this stdout line exactly.
    if (dm.rememberWwid(refwwid)) {
      stdout += `wwid '${refwwid}' added\n`;
      return done(0);
    }
    stdout += `failed adding '${refwwid}' to wwids file\n`;
    return done(1);
  }
  const warnNoDaemon = (): void => {
    if (dm.mapNames().length > 0 && !dm.daemonRunning()) log(2, 'Warning: multipath devices exist, but multipathd service is not running');
  };
  if (cmd === 'list-short' || cmd === 'list-long') {
    for (const name of dm.mapNames()) {
      if (refwwid !== undefined && dm.wwidOfMap(name) !== refwwid) continue;
      const view = dm.mapView(name, cmd === 'list-long')!;
      if (verbosity === 1) stdout += formatTopologyNames(view);
      else if (verbosity >= 2) stdout += formatTopology(view);
    }
    warnNoDaemon();
    return done(0);
  }
  if (cmd === 'dry-run') return done(0);
  const changed = await dm.configure('command', { forceReload, ...(refwwid !== undefined ? { wwid: refwwid } : {}) });
  for (const { map, action } of changed) {
    const view = dm.mapView(map, true, action);
    if (!view) continue;
    if (verbosity === 1) stdout += formatTopologyNames(view);
    else if (verbosity >= 2) stdout += formatTopology(view);
  }
  warnNoDaemon();
  return done(0);
}

/** `multipath -C`: rc 0 when the dm device has a path that is up and active. */
function usablePaths(dev: string | undefined, ctx: MultipathContext, log: (level: number, text: string) => void, done: (rc: 0 | 1) => ToolResult): ToolResult {
  if (dev === undefined) return done(1);
  // get_udev_device by sysname: `dm-N` or `/dev/dm-N`; a map name has no such device (silently 1).
  const sysname = dev.startsWith('/dev/') ? dev.slice(5) : dev;
  const disk = ctx.kernel.disk(sysname);
  if (disk) {
    log(1, `${dev} is not a dm device`);
    return done(1);
  }
  const name = /^dm-\d+$/.test(sysname) ? ctx.dm.findMap(sysname, true) : undefined;
  if (name === undefined) return done(1);
  if (ctx.dm.hasUsablePath(name)) return done(0);
  log(2, `${dev}: no usable paths found`);
  return done(1);
}

/** `get_dev_type`: a block device node (dm or not), `major:minor`, a map alias (no `/`), or nothing. */
async function getDevType(dev: string, ctx: MultipathContext): Promise<DevType> {
  if (dev.startsWith('/')) {
    // The simulated nodes are files: tell sd and dm nodes by their resolved names.
    const real = await createHostFs(ctx.root)
      .realpath(dev)
      .catch(() => undefined);
    const name = real?.startsWith('/dev/') ? real.slice(5) : undefined;
    if (name !== undefined && ctx.kernel.disk(name)) return { type: 'devnode', disk: name };
    if (name !== undefined && /^dm-\d+$/.test(name)) {
      const map = ctx.dm.findMap(name, true);
      if (map !== undefined) return { type: 'devnode', map };
    }
    return { type: 'none' };
  }
  if (/^\d+:\d+/.test(dev)) {
    const disk = ctx.kernel.disks().find((d) => d.devT === dev);
    return disk ? { type: 'devt', disk: disk.name } : { type: 'devt' };
  }
  return { type: 'devmap' };
}

/** `get_refwwid`: the wwid a device argument stands for (undefined: none, "scope is null"). */
function refWwid(dev: string, devType: DevType, ctx: MultipathContext): string | undefined {
  if (devType.type === 'devnode' || devType.type === 'devt') {
    if (devType.type === 'devnode' && devType.map !== undefined) return ctx.dm.wwidOfMap(devType.map);
    return devType.disk === undefined ? undefined : diskSerial(devType.disk, ctx);
  }
  // A map name, or else the argument is taken as a wwid.
  const map = ctx.dm.findMap(dev);
  return map === undefined ? dev : ctx.dm.wwidOfMap(map);
}

function diskSerial(name: string, ctx: MultipathContext): string | undefined {
  const disk = ctx.kernel.disk(name);
  return disk === undefined ? undefined : serialOf(disk);
}

function usage(): string {
  const p = 'multipath';
  return (
    MULTIPATH_VERSION +
    'Usage:\n' +
    `  ${p} [-v level] [-B|-d|-i|-q|-r] [-b file] [-p policy] [device]\n` +
    `  ${p} [-v level] [-R retries] -f device\n` +
    `  ${p} [-v level] [-R retries] -F\n` +
    `  ${p} [-v level] [-l|-ll] [device]\n` +
    `  ${p} [-v level] [-a|-w] device\n` +
    `  ${p} [-v level] -W\n` +
    `  ${p} [-v level] [-i] [-c|-C] device\n` +
    `  ${p} [-v level] [-i] [-u|-U]\n` +
    `  ${p} [-h|-t|-T]\n` +
    '\n' +
    'Where:\n' +
    '  -h      print this usage text\n' +
    '  -l      show multipath topology (sysfs and DM info)\n' +
    '  -ll     show multipath topology (maximum info)\n' +
    '  -e      enable foreign libraries with -l/-ll\n' +
    '  -f      flush a multipath device map\n' +
    '  -F      flush all multipath device maps\n' +
    '  -a      add a device wwid to the wwids file\n' +
    '  -c      check if a device should be a path in a multipath device\n' +
    '  -C      check if a multipath device has usable paths\n' +
    '  -q      allow queue_if_no_path when multipathd is not running\n' +
    '  -d      dry run, do not create or update devmaps\n' +
    '  -t      display the currently used multipathd configuration\n' +
    '  -T      display the multipathd configuration without builtin defaults\n' +
    '  -r      force devmap reload\n' +
    '  -i      ignore wwids file\n' +
    '  -B      treat the bindings file as read only\n' +
    '  -b fil  bindings file location\n' +
    '  -w      remove a device from the wwids file\n' +
    '  -W      reset the wwids file include only the current devices\n' +
    '  -R num  number of times to retry removes of in-use devices\n' +
    '  -u      check if the device specified in the program environment should be a\n' +
    '          path in a multipath device\n' +
    '  -U      check if the device specified in the program environment is a\n' +
    '          multipath device with usable paths, see -C flag\n' +
    '  -p pol  force all maps to specified path grouping policy:\n' +
    '          . failover            one path per priority group\n' +
    '          . multibus            all paths in one priority group\n' +
    '          . group_by_serial     one priority group per serial\n' +
    '          . group_by_prio       one priority group per priority lvl\n' +
    '          . group_by_node_name  one priority group per target node\n' +
    '  -v lvl  verbosity level:\n' +
    '          . 0 no output\n' +
    '          . 1 print created devmap names only\n' +
    '          . 2 default verbosity\n' +
    '          . 3 print debug information\n' +
    '  device  action limited to:\n' +
    "          . multipath named 'device' (ex: mpath0)\n" +
    "          . multipath whose wwid is 'device' (ex: 60051...)\n" +
    "          . multipath including the path named 'device' (ex: /dev/sda or\n" +
    '            /dev/dm-0)\n' +
    "          . multipath including the path with maj:min 'device' (ex: 8:0)\n"
  );
}
