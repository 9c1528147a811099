import { randomBytes } from 'node:crypto';
import { existsSync, linkSync, mkdirSync, promises as fsp, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Mutex } from '@berth/core';
import { majorMinor, type CommandRunner } from '@berth/host';
import type { FaultSet } from './faults.js';
import type { GroupView, MapView, PathView } from './multipath-format.js';
import type { DiskEvents, SimDisk, SimKernel } from './sim-kernel.js';
import { idSerialOf } from './tgt-identity.js';

/** The device-mapper major on Debian 12's kernel (dynamic; 254 there, unverified). */
export const DM_MAJOR = 254;

/** Where multipath keeps the wwids it may make maps of. */
export const WWIDS_FILE = '/etc/multipath/wwids';
/** multipath.conf (Debian ships none: every default applies). */
export const MULTIPATH_CONF = '/etc/multipath.conf';

/** libmultipath's `WWIDS_FILE_HEADER`. */
export const WWIDS_FILE_HEADER =
  '# Multipath wwids, Version : 1.0\n' +
  '# NOTE: This file is automatically maintained by multipath and multipathd.\n' +
  '# You should not need to edit this file in normal circumstances.\n' +
  '#\n' +
  '# Valid WWIDs:\n';

/** `find_multipaths` values (0.9.4 default: `strict`). */
export type FindMultipaths = 'strict' | 'on' | 'yes' | 'smart' | 'greedy' | 'off' | 'no';

/** A path of a multipath map, for assertions. */
export interface SimMapPathState {
  /** `sdb` */
  device: string;
  hctl: string;
  /** dm's path state: `active` or `failed`. */
  dmState: 'active' | 'failed';
  /** The checker's: `ready` or `faulty`. */
  checkerState: 'ready' | 'faulty';
  /** `running` or `offline`. */
  deviceState: 'running' | 'offline';
  /** Whether this path's group is the one dm sends I/O to. */
  active: boolean;
}

/** A multipath map, for assertions. */
export interface SimMapState {
  /** The map name (the wwid: `user_friendly_names no`). */
  name: string;
  /** `dm-0` */
  dm: string;
  /** udev ID_SERIAL (`36…`), as in `dm/uuid` after `mpath-`. */
  wwid: string;
  sizeBytes: number;
  /** Whether udev made `/dev/dm-N`, `/dev/mapper/<name>` and the by-id links yet. */
  devicePresent: boolean;
  /** Held open by a test (`mapsHeldOpen`): it cannot be flushed. */
  open: boolean;
  /** The path whose disk the `/dev/dm-N` node gives access to now. */
  ioPath: string | undefined;
  paths: SimMapPathState[];
}

/** multipathd as the state shows it. */
export interface SimMultipathdState {
  running: boolean;
  /** The paths it monitors (`show paths`), maps' and orphans, in its order. */
  paths: string[];
}

/** A block device of a map as `blockdev` needs it. */
export interface DmBlockDevice {
  sizeBytes: number;
  /** What the node gives access to now (the I/O path's backing). */
  backingPath: string | undefined;
  isBlockDevice: boolean;
}

interface MapPath {
  name: string;
  dmState: 'active' | 'failed';
  failures: number;
}

interface DmMap {
  name: string;
  /** udev ID_SERIAL of its paths. */
  wwid: string;
  minor: number;
  sizeBytes: number;
  /** Path groups in table order (failover: one path per group). */
  paths: MapPath[];
  activeGroup: number;
  /** The disk the node is made from. */
  nodeSource: string | undefined;
  devicePresent: boolean;
  claimed: string[];
  timer: NodeJS.Timeout | undefined;
  removed: boolean;
}

/** Who changes the maps: multipathd (no udev sync: links come later) or the multipath command (waits for udev). */
export type MultipathActor = 'daemon' | 'command';

/** What `flush` did. */
export type FlushResult = 'ok' | 'in-use';

/** Options of the device-mapper multipath model. */
export interface DmMultipathOptions {
  root: string;
  kernel: SimKernel;
  faults: FaultSet;
  runner: CommandRunner;
  /** Delay between the kernel making a map and udev making its /dev node and links (ms). */
  deviceDelayMs: number;
}

/**
 * device-mapper multipath and multipathd (multipath-tools 0.9.4 defaults: `find_multipaths
 * strict`, `user_friendly_names no`, failover groups, prio const, manual failback) over the
 * simulated kernel's disks: maps named after the wwid with every present path of it,
 * `/sys/block/dm-N` with `dm/`, `slaves/` and the paths' `holders/`, `/dev/dm-N`,
 * `/dev/mapper/<name>` and the by-id links (the paths' `scsi-`/`wwn-` links move to the map while
 * it exists). The `multipath` and `multipathd` tools work on it; multipathd may be stopped.
 */
export class DmMultipath implements DiskEvents {
  private readonly root: string;
  private readonly kernel: SimKernel;
  private readonly faults: FaultSet;
  private readonly runner: CommandRunner;
  private readonly deviceDelayMs: number;
  private readonly maps: DmMap[] = [];
  private pathvec: string[] = [];
  private running: boolean;
  private readonly mutex = new Mutex();
  private readonly background = new Set<Promise<unknown>>();
  private closed = false;
  private readonly unsubscribe: () => void;

  constructor(options: DmMultipathOptions) {
    this.root = path.resolve(options.root);
    this.kernel = options.kernel;
    this.faults = options.faults;
    this.runner = options.runner;
    this.deviceDelayMs = options.deviceDelayMs;
    this.running = this.faults.multipathdRunning();
    this.unsubscribe = this.faults.onChange(() => this.onFaultsChanged());
  }

  /** A booted host: no maps (stale dm nodes from a previous run go), multipathd started. */
  async init(): Promise<void> {
    rmSync(this.real('/dev/mapper'), { recursive: true, force: true });
    for (const entry of await fsp.readdir(this.real('/dev')).catch(() => [] as string[])) {
      if (/^dm-\d+$/.test(entry)) rmSync(this.real(`/dev/${entry}`), { force: true });
    }
    mkdirSync(this.real('/dev/mapper'), { recursive: true });
    mkdirSync(this.real('/sys/devices/virtual/block'), { recursive: true });
    writeFileSync(this.real('/dev/mapper/control'), '');
    this.kernel.setDiskEvents(this);
  }

  /** Stop reacting: timers cleared, pending work awaited. */
  async close(): Promise<void> {
    this.closed = true;
    this.unsubscribe();
    this.kernel.setDiskEvents(undefined);
    for (const m of this.maps) if (m.timer) clearTimeout(m.timer);
    await Promise.allSettled([...this.background]);
    await this.mutex.run(async () => undefined);
  }

  /** Resolves once everything queued so far (uevents, a multipathd start) is done. */
  async idle(): Promise<void> {
    await this.mutex.run(async () => undefined);
    await Promise.allSettled([...this.background]);
  }

  /** Run `fn` alone against the model (the tools do). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return this.mutex.run(fn);
  }

  /** Whether multipathd runs. */
  daemonRunning(): boolean {
    return this.running;
  }

  /** Maps and multipathd, for assertions. */
  state(): { maps: SimMapState[]; multipathd: SimMultipathdState } {
    const maps = this.sortedMaps().map((m) => {
      const io = this.ioPath(m);
      return {
        name: m.name,
        dm: `dm-${m.minor}`,
        wwid: m.wwid,
        sizeBytes: m.sizeBytes,
        devicePresent: m.devicePresent,
        open: this.isOpen(m),
        ioPath: m.nodeSource ?? io,
        paths: m.paths.map((p, i) => {
          const disk = this.kernel.disk(p.name);
          const sdev = disk?.state ?? 'offline';
          return {
            device: p.name,
            hctl: disk?.hctl ?? '#:#:#:#',
            dmState: p.dmState,
            checkerState: sdev === 'running' ? ('ready' as const) : ('faulty' as const),
            deviceState: sdev.startsWith('offline') ? ('offline' as const) : ('running' as const),
            active: i === m.activeGroup,
          };
        }),
      };
    });
    return { maps, multipathd: { running: this.running, paths: this.running ? [...this.pathvec] : [] } };
  }

  // ---- kernel events (uevents) ----

  /**
   * A new disk: multipathd (when running and listening) adds it, and a map forms per policy.
   * uev_add_path: a path already in multipathd's pathvec (`multipathd add path` ran before udev
   * was done with the disk, or a map that held it was flushed since: its paths stay as orphans,
   * wwid kept) makes a "spurious uevent": nothing is done; no map is made or remade from it.
   */
  diskAdded(name: string): void {
    if (this.closed || !this.running || this.faults.multipathdMissesNewPaths()) return;
    this.track(
      this.mutex.run(async () => {
        if (!this.running) return;
        const disk = this.kernel.disk(name);
        if (!disk || this.pathvec.includes(name)) return;
        this.pathvec.push(name);
        await this.evAddPath(disk, 'daemon');
      }),
    );
  }

  /** A disk goes: its map is reloaded without it; multipathd flushes a map that lost its last path. */
  diskRemoving(name: string): Promise<void> {
    return this.mutex.run(async () => {
      this.pathvec = this.pathvec.filter((n) => n !== name);
      const map = this.mapOfPath(name);
      if (!map) return;
      await this.dropPath(map, name);
      // flush_map_nopaths: refused while the map is open (it then stays, without paths).
      if (map.paths.length === 0 && this.running) await this.flush(map);
    });
  }

  /** Paths' sdev state changed: dm fails paths that went down; multipathd reinstates those back up. */
  diskStateChanged(names: string[]): void {
    if (this.closed) return;
    this.track(
      this.mutex.run(async () => {
        for (const name of names) {
          const map = this.mapOfPath(name);
          const p = map?.paths.find((x) => x.name === name);
          if (!map || !p) continue;
          const up = this.kernel.disk(name)?.state === 'running';
          if (!up && p.dmState === 'active') {
            p.dmState = 'failed';
            p.failures += 1;
          } else if (up && p.dmState === 'failed' && this.running) {
            p.dmState = 'active';
          }
          this.switchGroupIfDown(map);
          await this.updateNode(map);
        }
      }),
    );
  }

  // ---- what multipathd and multipath do (call inside `exclusive`) ----

  /** multipathd `add path`: `ok`, or undefined when the disk does not exist (`fail`). */
  async addPath(name: string): Promise<'ok' | undefined> {
    const disk = this.kernel.disk(name);
    if (!disk || !existsSync(this.real(`/sys/block/${name}`))) return undefined;
    if (!this.pathvec.includes(name)) this.pathvec.push(name);
    if (this.mapOfPath(name)) return 'ok';
    await this.evAddPath(disk, 'daemon');
    return 'ok';
  }

  /** multipathd `del path`: false when it does not know the path. */
  async delPath(name: string): Promise<boolean> {
    if (!this.pathvec.includes(name)) return false;
    this.pathvec = this.pathvec.filter((n) => n !== name);
    const map = this.mapOfPath(name);
    if (map) {
      await this.dropPath(map, name);
      if (map.paths.length === 0) await this.flush(map);
    }
    return true;
  }

  /** multipathd `fail path` / `reinstate path`: false when the path is in no map. */
  async setPathState(name: string, state: 'active' | 'failed'): Promise<boolean> {
    const map = this.mapOfPath(name);
    const p = map?.paths.find((x) => x.name === name);
    if (!map || !p || !this.pathvec.includes(name)) return false;
    if (state === 'failed' && p.dmState === 'active') p.failures += 1;
    p.dmState = state;
    this.switchGroupIfDown(map);
    await this.updateNode(map);
    return true;
  }

  /** Remove a map (multipathd `del map`, `multipath -f`): refused while it is open. */
  async flushMap(name: string): Promise<FlushResult | undefined> {
    const map = this.maps.find((m) => m.name === name);
    if (!map) return undefined;
    return this.flush(map);
  }

  /** multipathd `resize map`: the map takes its paths' size. */
  resizeMap(name: string): boolean {
    const map = this.maps.find((m) => m.name === name);
    const disk = map?.paths.map((p) => this.kernel.disk(p.name)).find((d) => d !== undefined);
    if (!map || !disk) return false;
    map.sizeBytes = disk.sizeBytes;
    this.writeAttr(`/sys/devices/virtual/block/dm-${map.minor}/size`, String(Math.floor(map.sizeBytes / 512)));
    return true;
  }

  /**
   * multipathd's start-up and `reconfigure`, or `multipath` creating/reloading maps: every present
   * disk is (re)considered, maps of wwids the policy allows are made or completed, failed paths
   * that are up again reinstated, maps without paths flushed. Returns what changed, for
   * `multipath`'s `create:`/`reload:` lines.
   */
  async configure(actor: MultipathActor, options: { forceReload?: boolean; wwid?: string } = {}): Promise<Array<{ map: string; action: 'create' | 'reload' }>> {
    const present = this.kernel.disks().filter((d) => d.devicePresent);
    if (actor === 'daemon') this.pathvec = present.map((d) => d.name);
    const changed: Array<{ map: string; action: 'create' | 'reload' }> = [];
    const groups = new Map<string, SimDisk[]>();
    for (const d of present) {
      const serial = serialOf(d);
      if (serial === undefined || (options.wwid !== undefined && serial !== options.wwid)) continue;
      groups.set(serial, [...(groups.get(serial) ?? []), d]);
    }
    for (const [serial, disks] of groups) {
      const map = this.maps.find((m) => m.wwid === serial);
      if (map) {
        const added = disks.filter((d) => !map.paths.some((p) => p.name === d.name));
        const reinstated = map.paths.filter((p) => p.dmState === 'failed' && this.kernel.disk(p.name)?.state === 'running');
        if (added.length > 0 || reinstated.length > 0 || options.forceReload) {
          await this.reload(map, added);
          changed.push({ map: map.name, action: 'reload' });
        }
      } else if (this.shouldMultipath(serial, disks.length)) {
        const map = await this.createMap(serial, disks, actor);
        changed.push({ map: map.name, action: 'create' });
      }
    }
    for (const map of [...this.maps]) {
      if (map.paths.length === 0 && (options.wwid === undefined || map.wwid === options.wwid)) await this.flush(map);
    }
    return changed;
  }

  /** `multipath -a`: add a wwid to the wwids file (false when it cannot be written). */
  rememberWwid(wwid: string): boolean {
    try {
      const file = this.real(WWIDS_FILE);
      mkdirSync(path.dirname(file), { recursive: true });
      const text = existsSync(file) ? readFileSync(file, 'utf8') : '';
      if (text.split('\n').includes(`/${wwid}/`)) return true;
      const head = text === '' ? WWIDS_FILE_HEADER : text.endsWith('\n') ? text : `${text}\n`;
      writeFileSync(file, `${head}/${wwid}/\n`, { mode: 0o644 });
      return true;
    } catch {
      return false;
    }
  }

  /** `multipath -w`: remove a wwid (undefined when it cannot be written, false when absent). */
  forgetWwid(wwid: string): boolean | undefined {
    try {
      const file = this.real(WWIDS_FILE);
      const lines = (existsSync(file) ? readFileSync(file, 'utf8') : '').split('\n');
      if (!lines.includes(`/${wwid}/`)) return false;
      writeFileSync(file, lines.filter((l) => l !== `/${wwid}/`).join('\n'));
      return true;
    } catch {
      return undefined;
    }
  }

  /** Whether the wwids file lists `wwid`. */
  wwidListed(wwid: string): boolean {
    try {
      return readFileSync(this.real(WWIDS_FILE), 'utf8').split('\n').includes(`/${wwid}/`);
    } catch {
      return false;
    }
  }

  /** `find_multipaths` from `/etc/multipath.conf` (default `strict`). */
  findMultipaths(): FindMultipaths {
    try {
      const conf = readFileSync(this.real(MULTIPATH_CONF), 'utf8');
      const value = /^\s*find_multipaths\s+"?([a-z]+)"?/m.exec(conf)?.[1];
      if (value && ['strict', 'on', 'yes', 'smart', 'greedy', 'off', 'no'].includes(value)) return value as FindMultipaths;
    } catch {
      // No multipath.conf: the built-in default.
    }
    return 'strict';
  }

  // ---- lookups and views for the tools ----

  /** A map by name, `/dev/mapper/<name>`, or `/dev/dm-N` (`dm-N` alone too when `bareDm`). */
  findMap(arg: string, bareDm = false): string | undefined {
    const byName = (n: string): DmMap | undefined => this.maps.find((m) => m.name === n);
    const dm = /^(?:\/dev\/)?dm-(\d+)$/.exec(arg);
    if (dm && (bareDm || arg.startsWith('/dev/'))) return this.maps.find((m) => m.minor === Number(dm[1]))?.name;
    if (arg.startsWith('/dev/mapper/')) return byName(arg.slice('/dev/mapper/'.length))?.name;
    return byName(arg)?.name;
  }

  /** The map holding disk `name`. */
  mapNameOfPath(name: string): string | undefined {
    return this.mapOfPath(name)?.name;
  }

  /** A map's wwid. */
  wwidOfMap(name: string): string | undefined {
    return this.maps.find((m) => m.name === name)?.wwid;
  }

  /** Names of every map, in minor order. */
  mapNames(): string[] {
    return this.sortedMaps().map((m) => m.name);
  }

  /** A map's `blockdev` view (`dm-N`). */
  blockDevice(dm: string): DmBlockDevice | undefined {
    const m = this.maps.find((x) => `dm-${x.minor}` === dm);
    if (!m) return undefined;
    const source = m.nodeSource === undefined ? undefined : this.kernel.disk(m.nodeSource);
    return { sizeBytes: m.sizeBytes, backingPath: source?.backingPath, isBlockDevice: source?.isBlockDevice ?? false };
  }

  /** Whether some path of the map is checker-up and dm-active (`multipath -C`). */
  hasUsablePath(name: string): boolean {
    const m = this.maps.find((x) => x.name === name);
    return m !== undefined && m.paths.some((p) => p.dmState === 'active' && this.kernel.disk(p.name)?.state === 'running');
  }

  /**
   * A map as multipath prints it. `long` (`-ll`, multipathd): checker states and group
   * priorities; short (`-l`): `undef` checkers and priority 0. `action` marks what the multipath
   * command just did (its view has no kernel state yet).
   */
  mapView(name: string, long: boolean, action?: 'create' | 'reload'): MapView | undefined {
    const m = this.maps.find((x) => x.name === name);
    if (!m) return undefined;
    const groups: GroupView[] = m.paths.map((p, i) => {
      const view = this.pathView(p.name, m, long, action === undefined ? p.dmState : 'undef');
      const up = view.checkerState === 'ready';
      return {
        status: action !== undefined ? 'undef' : i === m.activeGroup ? 'active' : 'enabled',
        priority: long ? (up ? 1 : 0) : 0,
        paths: [view],
      };
    });
    return {
      name: m.name,
      wwid: m.wwid,
      sysfs: action !== undefined ? undefined : `dm-${m.minor}`,
      sizeSectors: Math.floor(m.sizeBytes / 512),
      ...(action ? { action } : {}),
      groups,
    };
  }

  /** Every map's view, in minor order. */
  mapViews(long: boolean): MapView[] {
    return this.sortedMaps().map((m) => this.mapView(m.name, long)!);
  }

  /** multipathd's paths (`show paths`), maps' and orphans. */
  pathViews(): PathView[] {
    return this.pathvec.filter((n) => this.kernel.disk(n)).map((n) => {
      const map = this.mapOfPath(n);
      return this.pathView(n, map, true, map?.paths.find((p) => p.name === n)?.dmState ?? 'undef');
    });
  }

  /** The checker state names of multipathd's paths (`show status`). */
  checkerStates(): string[] {
    return this.pathvec.filter((n) => this.kernel.disk(n)).map((n) => (this.kernel.disk(n)?.state === 'running' ? 'up' : 'down'));
  }

  // ---- internals ----

  private pathView(name: string, map: DmMap | undefined, long: boolean, dmState: string): PathView {
    const disk = this.kernel.disk(name);
    const sdev = disk?.state ?? 'offline';
    return {
      wwid: disk ? (serialOf(disk) ?? '') : '',
      hcil: disk?.hctl ?? '#:#:#:#',
      dev: name,
      devT: disk?.devT ?? '#:#',
      dmState: map ? dmState : 'undef',
      checkerState: !map || !long ? 'undef' : sdev === 'running' ? 'ready' : 'faulty',
      devState: !map ? 'unknown' : sdev.startsWith('offline') ? 'offline' : 'running',
      vendor: disk?.vendor.trim() ?? '',
      product: disk?.model.trim() ?? '',
      rev: disk?.rev.trim() ?? '',
      priority: 1,
      sizeSectors: Math.floor((disk?.sizeBytes ?? 0) / 512),
      serial: disk?.serial ?? '',
      map: map?.name,
      failures: map?.paths.find((p) => p.name === name)?.failures ?? 0,
    };
  }

  private onFaultsChanged(): void {
    const now = this.faults.multipathdRunning();
    if (now === this.running || this.closed) return;
    this.running = now;
    if (!now) {
      this.pathvec = [];
      return;
    }
    // multipathd starting: it looks at every disk and map, as on `reconfigure`.
    this.track(
      this.mutex.run(async () => {
        if (this.running) await this.configure('daemon');
      }),
    );
  }

  private async evAddPath(disk: SimDisk, actor: MultipathActor): Promise<void> {
    const serial = serialOf(disk);
    if (serial === undefined) return;
    const existing = this.maps.find((m) => m.wwid === serial);
    // adopt_paths: every path multipathd knows with this wwid joins.
    const members = this.pathvec
      .map((n) => this.kernel.disk(n))
      .filter((d): d is SimDisk => d !== undefined && serialOf(d) === serial);
    if (!members.some((d) => d.name === disk.name)) members.push(disk);
    if (existing) {
      const added = members.filter((d) => !existing.paths.some((p) => p.name === d.name));
      if (added.length > 0) await this.reload(existing, added);
      return;
    }
    if (!this.shouldMultipath(serial, members.length)) return;
    await this.createMap(serial, members, actor);
  }

  private shouldMultipath(serial: string, paths: number): boolean {
    switch (this.findMultipaths()) {
      case 'strict':
        return this.wwidListed(serial);
      case 'greedy':
      case 'off':
      case 'no':
        return true;
      default:
        return this.wwidListed(serial) || paths >= 2;
    }
  }

  private async createMap(serial: string, disks: SimDisk[], actor: MultipathActor): Promise<DmMap> {
    let minor = 0;
    while (this.maps.some((m) => m.minor === minor)) minor++;
    const first = disks[0];
    const map: DmMap = {
      name: serial,
      wwid: serial,
      minor,
      sizeBytes: first?.sizeBytes ?? 0,
      paths: [],
      activeGroup: 0,
      nodeSource: undefined,
      devicePresent: false,
      claimed: [],
      timer: undefined,
      removed: false,
    };
    this.maps.push(map);
    const dm = `dm-${minor}`;
    const dir = `/sys/devices/virtual/block/${dm}`;
    const sectors = Math.floor(map.sizeBytes / 512);
    for (const [name, value] of Object.entries({
      dev: `${DM_MAJOR}:${minor}`,
      size: String(sectors),
      ro: '0',
      removable: '0',
      ext_range: '1',
      uevent: `MAJOR=${DM_MAJOR}\nMINOR=${minor}\nDEVNAME=${dm}\nDEVTYPE=disk\nDISKSEQ=${minor + 100}`,
      'dm/name': map.name,
      'dm/uuid': `mpath-${map.wwid}`,
      'dm/suspended': '0',
      'dm/use_blk_mq': '1',
      'queue/logical_block_size': '512',
      'queue/physical_block_size': '512',
      'queue/rotational': '1',
    })) {
      this.writeAttr(`${dir}/${name}`, value);
    }
    mkdirSync(this.real(`${dir}/slaves`), { recursive: true });
    mkdirSync(this.real(`${dir}/holders`), { recursive: true });
    this.link(`../devices/virtual/block/${dm}`, `/sys/block/${dm}`);
    this.link(`../../devices/virtual/block/${dm}`, `/sys/class/block/${dm}`);
    this.link(`../../devices/virtual/block/${dm}`, `/sys/dev/block/${DM_MAJOR}:${minor}`);
    // Making a map remembers its wwid (in strict mode it is listed already).
    this.rememberWwid(serial);
    await this.reload(map, disks);
    if (actor === 'command') {
      await this.udevAddMap(map);
    } else {
      map.timer = setTimeout(() => {
        map.timer = undefined;
        this.track(this.mutex.run(() => this.udevAddMap(map)));
      }, this.deviceDelayMs);
    }
    return map;
  }

  /** A table reload with `added` paths: groups re-sorted (up paths first), dm states synced, the first group active. */
  private async reload(map: DmMap, added: SimDisk[]): Promise<void> {
    const dm = `dm-${map.minor}`;
    for (const d of added) {
      if (map.paths.some((p) => p.name === d.name)) continue;
      map.paths.push({ name: d.name, dmState: 'active', failures: 0 });
      // A running multipathd sees the map's uevent and monitors its paths.
      if (this.running && !this.pathvec.includes(d.name)) this.pathvec.push(d.name);
      this.link(path.relative(`/sys/devices/virtual/block/${dm}/slaves`, d.sysfsDir), `/sys/devices/virtual/block/${dm}/slaves/${d.name}`);
      this.link(path.relative(`${d.sysfsDir}/holders`, `/sys/devices/virtual/block/${dm}`), `${d.sysfsDir}/holders/${dm}`);
    }
    const up = (p: MapPath): boolean => this.kernel.disk(p.name)?.state === 'running';
    // sort_pathgroups: higher priority first (a down path's group has priority 0); stable otherwise.
    map.paths = [...map.paths.filter(up), ...map.paths.filter((p) => !up(p))];
    for (const p of map.paths) {
      const isUp = up(p);
      if (!isUp && p.dmState === 'active') p.failures += 1;
      p.dmState = isUp ? 'active' : 'failed';
    }
    map.activeGroup = 0;
    await this.updateNode(map);
  }

  /**
   * A path leaves the table. multipathd reloads the map (groups re-sorted, states synced);
   * without it the model still drops the path (a real table would keep a dead reference until
   * something reloads it).
   */
  private async dropPath(map: DmMap, name: string): Promise<void> {
    const dm = `dm-${map.minor}`;
    const index = map.paths.findIndex((p) => p.name === name);
    if (index < 0) return;
    map.paths.splice(index, 1);
    rmSync(this.real(`/sys/devices/virtual/block/${dm}/slaves/${name}`), { force: true });
    const sysfsDir = this.kernel.diskSysfsDir(name);
    if (sysfsDir !== undefined) rmSync(this.real(`${sysfsDir}/holders/${dm}`), { force: true });
    if (map.paths.length === 0) return;
    if (this.running) {
      await this.reload(map, []);
      return;
    }
    if (index < map.activeGroup) map.activeGroup -= 1;
    else if (index === map.activeGroup) {
      map.activeGroup = Math.min(map.activeGroup, map.paths.length - 1);
      this.switchGroupIfDown(map);
    }
    await this.updateNode(map);
  }

  /** The kernel moves I/O to the next group with an active path when the current one has none. */
  private switchGroupIfDown(map: DmMap): void {
    if (map.paths[map.activeGroup]?.dmState === 'active') return;
    for (let k = 1; k <= map.paths.length; k++) {
      const i = (map.activeGroup + k) % map.paths.length;
      if (map.paths[i]?.dmState === 'active') {
        map.activeGroup = i;
        return;
      }
    }
  }

  private ioPath(map: DmMap): string | undefined {
    const current = map.paths[map.activeGroup];
    if (current?.dmState === 'active') return current.name;
    return map.paths.find((p) => p.dmState === 'active')?.name ?? current?.name;
  }

  /**
   * The node is the I/O path's device (a block special of its backing device, or a hard link to
   * its file): dm's failover is modelled by remaking the node when the I/O path changes.
   */
  private async updateNode(map: DmMap): Promise<void> {
    if (!map.devicePresent || map.removed) return;
    const io = this.ioPath(map);
    if (io === undefined || io === map.nodeSource) return;
    const disk = this.kernel.disk(io);
    if (!disk) return;
    await this.makeNode(map, disk);
  }

  private async makeNode(map: DmMap, disk: SimDisk): Promise<void> {
    const node = this.real(`/dev/dm-${map.minor}`);
    const temp = `${node}.tmp-${randomBytes(4).toString('hex')}`;
    if (disk.isBlockDevice) {
      const [major, minor] = disk.devT.split(':') as [string, string];
      await this.runner.run('mknod', ['-m', '0660', temp, 'b', major, minor], { timeoutMs: 10_000 });
    } else {
      try {
        linkSync(disk.backingPath, temp);
      } catch {
        symlinkSync(disk.backingPath, temp);
      }
    }
    if (map.removed) {
      rmSync(temp, { force: true });
      return;
    }
    renameSync(temp, node);
    map.nodeSource = disk.name;
  }

  /** udev's work for a new map: the node, `/dev/mapper/<name>`, by-id links (the paths' move here). */
  private async udevAddMap(map: DmMap): Promise<void> {
    if (map.removed || map.devicePresent) return;
    const dm = `dm-${map.minor}`;
    const io = this.ioPath(map);
    const disk = io === undefined ? undefined : this.kernel.disk(io);
    if (disk) await this.makeNode(map, disk);
    else writeFileSync(this.real(`/dev/${dm}`), '');
    if (map.removed) return;
    this.atomicLink(`../${dm}`, `/dev/mapper/${map.name}`);
    this.atomicLink(`../../${dm}`, `/dev/disk/by-id/dm-name-${map.name}`);
    this.atomicLink(`../../${dm}`, `/dev/disk/by-id/dm-uuid-mpath-${map.wwid}`);
    map.claimed = [`scsi-${map.wwid}`, ...(/^[23]/.test(map.wwid) ? [`wwn-0x${map.wwid.slice(1)}`] : [])];
    this.kernel.claimLinks(map.claimed, dm);
    map.devicePresent = true;
  }

  private async flush(map: DmMap): Promise<FlushResult> {
    if (this.isOpen(map) || (await this.openForReal(map))) return 'in-use';
    map.removed = true;
    if (map.timer) clearTimeout(map.timer);
    map.timer = undefined;
    const dm = `dm-${map.minor}`;
    // The dm device goes, and udev (synchronised with dm) removes its node and links.
    this.kernel.releaseLinks(map.claimed, dm);
    for (const link of [`/dev/disk/by-id/dm-name-${map.name}`, `/dev/disk/by-id/dm-uuid-mpath-${map.wwid}`, `/dev/mapper/${map.name}`, `/dev/${dm}`]) {
      rmSync(this.real(link), { force: true });
    }
    for (const p of map.paths) {
      const sysfsDir = this.kernel.diskSysfsDir(p.name);
      if (sysfsDir !== undefined) rmSync(this.real(`${sysfsDir}/holders/${dm}`), { force: true });
    }
    for (const link of [`/sys/block/${dm}`, `/sys/class/block/${dm}`, `/sys/dev/block/${DM_MAJOR}:${map.minor}`]) rmSync(this.real(link), { force: true });
    rmSync(this.real(`/sys/devices/virtual/block/${dm}`), { recursive: true, force: true });
    this.maps.splice(this.maps.indexOf(map), 1);
    map.devicePresent = false;
    return 'ok';
  }

  private isOpen(map: DmMap): boolean {
    return this.faults.mapHeldOpen(map.name, `dm-${map.minor}`);
  }

  /**
   * The map's open count as the kernel keeps it, in real-backed mode: its `/dev/dm-N` is a node of
   * the real backing device, so a mount of it (that major:minor in this machine's mountinfo) or a
   * process with it open (`fuser` on the node) holds the map, and `multipath -f` refuses it as a
   * real one does. A model map's node is a link to the LUN file (no device to open): the switch only.
   */
  private async openForReal(map: DmMap): Promise<boolean> {
    const node = this.real(`/dev/dm-${map.minor}`);
    const st = await fsp.stat(node).catch(() => undefined);
    if (st === undefined || !st.isBlockDevice()) return false;
    const devT = majorMinor(st.rdev);
    const mountinfo = await fsp.readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
    if (mountinfo.split('\n').some((line) => line.split(' ')[2] === devT)) return true;
    const fuser = await this.runner.run('fuser', [node], { timeoutMs: 10_000, reject: false }).catch(() => undefined);
    return fuser !== undefined && !fuser.notFound && fuser.exitCode === 0 && /\d/.test(fuser.stdout);
  }

  private mapOfPath(name: string): DmMap | undefined {
    return this.maps.find((m) => m.paths.some((p) => p.name === name));
  }

  private sortedMaps(): DmMap[] {
    return [...this.maps].sort((a, b) => a.minor - b.minor);
  }

  private track(work: Promise<unknown>): void {
    const p = work.catch(() => undefined);
    this.background.add(p);
    void p.finally(() => this.background.delete(p));
  }

  private real(hostPath: string): string {
    return path.join(this.root, hostPath);
  }

  private writeAttr(hostPath: string, value: string): void {
    mkdirSync(path.dirname(this.real(hostPath)), { recursive: true });
    writeFileSync(this.real(hostPath), `${value}\n`);
  }

  private link(target: string, link: string): void {
    const real = this.real(link);
    mkdirSync(path.dirname(real), { recursive: true });
    rmSync(real, { force: true });
    symlinkSync(target, real);
  }

  private atomicLink(target: string, link: string): void {
    const real = this.real(link);
    mkdirSync(path.dirname(real), { recursive: true });
    const temp = `${real}.tmp-${randomBytes(4).toString('hex')}`;
    symlinkSync(target, temp);
    renameSync(temp, real);
  }
}

/** udev's ID_SERIAL of a disk (the multipath wwid), or undefined without a kernel wwid. */
export function serialOf(disk: SimDisk): string | undefined {
  return disk.wwid === undefined ? undefined : idSerialOf(disk.wwid);
}
