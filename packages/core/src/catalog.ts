import type { HostServices } from '@berth/host';
import { zConnectionInfo, zDevice, type ConnectionInfo, type Connector, type Device } from './connection.js';
import type { Consumer } from './contracts/consumer.js';
import type { TransportDriver } from './contracts/transport-driver.js';
import type { VolumeBackend } from './contracts/volume-backend.js';
import { BerthError, type BerthErrorCode } from './errors.js';
import type { Logger } from './logger.js';
import type { AgentTransportInfo } from './model.js';
import type { BackendFactory, BerthPlugin, ConsumerFactory, FaultPoints, PluginContext, TransportFactory } from './plugin.js';
import type { LoadedPluginModule, PluginFailure } from './plugin-loader.js';
import type { PluginReport } from './reports.js';

interface Registered<F> {
  factory: F;
  plugin: string;
  /** The plugin's parsed options (parsed once, when first asked for if `add` was told it may wait). */
  options: () => Record<string, unknown>;
}

/** How `DriverCatalog.add` may treat a plugin. */
export interface AddPluginHints {
  /**
   * The plugin's options schema accepts no options (berth's built-ins: their tests parse `{}`). When
   * none are given, parsing them (building its schema) waits for the plugin's first use: a command
   * that uses no driver (`volume list`) builds no plugin's schema.
   */
  acceptsNoOptions?: boolean;
}

/** The host services plugin `pluginName` acts on (the machine's, or another root's such as the simulated host). */
export type HostFor = (pluginName: string) => HostServices;

/** The transports a host's `berth agent` registered (`hosts.agent_transports`). */
export interface AgentTransports {
  hostName: string;
  transports: readonly string[];
  /** What each connects, as the agent registered it (`HostAgent.transportInfo`; absent from an older agent). */
  transportInfo?: readonly AgentTransportInfo[];
}

/**
 * Every transport, backend and consumer the loaded plugins registered. Instances are built on first
 * use and wrapped so a plugin's mistakes surface as BerthErrors naming the plugin, and what a plugin
 * returns is validated before core trusts it.
 */
export class DriverCatalog {
  private readonly transportFactories = new Map<string, Registered<TransportFactory>>();
  private readonly backendFactories = new Map<string, Registered<BackendFactory>>();
  private readonly consumerFactories = new Map<string, Registered<ConsumerFactory>>();
  private readonly transportInstances = new Map<string, TransportDriver>();
  private readonly backendInstances = new Map<string, VolumeBackend>();
  private readonly consumerInstances = new Map<string, Consumer>();
  /** Transports whose plugin's factory threw: the PLUGIN_ERROR, given again on every ask. */
  private readonly transportFailures = new Map<string, BerthError>();
  private readonly report: PluginReport = { loaded: [], failed: [] };
  private faults: FaultPoints | undefined;

  constructor(
    private readonly host: HostServices,
    private readonly dataDir: string,
    private readonly logger: Logger,
    private readonly pluginOptions: Record<string, Record<string, unknown>> = {},
    /**
     * The host services a plugin acts on, by plugin name (default: `host` for every plugin). The
     * caller decides — runtime gives `--simulate`'s plugins the simulated host —; the catalog only
     * hands each plugin its host and never asks which kind it is.
     */
    private readonly hostFor: HostFor = () => host,
  ) {}

  /** Register a loaded plugin; a plugin whose options or `register` fail is reported, not thrown. */
  add(module: LoadedPluginModule, hints: AddPluginHints = {}): void {
    const { plugin, packageName } = module;
    const raw = { ...(this.pluginOptions[plugin.name] ?? {}), ...(module.options ?? {}) };
    const entry = { name: plugin.name, packageName, version: module.version, transports: [] as string[], backends: [] as string[], consumers: [] as string[] };
    try {
      const options = hints.acceptsNoOptions === true && Object.keys(raw).length === 0 ? parsedWhenAsked(plugin, raw) : constant(parsePluginOptions(plugin, raw));
      const staged: Array<() => void> = [];
      plugin.register({
        transport: (name, factory) => {
          this.assertFree(this.transportFactories, 'transport', name, plugin.name);
          entry.transports.push(name);
          staged.push(() => this.transportFactories.set(name, { factory: factory as TransportFactory, plugin: plugin.name, options }));
        },
        backend: (name, factory) => {
          this.assertFree(this.backendFactories, 'backend', name, plugin.name);
          entry.backends.push(name);
          staged.push(() => this.backendFactories.set(name, { factory: factory as BackendFactory, plugin: plugin.name, options }));
        },
        consumer: (name, factory) => {
          this.assertFree(this.consumerFactories, 'consumer', name, plugin.name);
          entry.consumers.push(name);
          staged.push(() => this.consumerFactories.set(name, { factory: factory as ConsumerFactory, plugin: plugin.name, options }));
        },
      });
      for (const commit of staged) commit();
      this.report.loaded.push(entry);
    } catch (error) {
      this.report.failed.push({ packageName, error: error instanceof Error ? error.message : String(error) });
    }
  }

  /**
   * Give plugins built from now on these fault points (the service's injector), so that a driver
   * can be stopped between its commands by the same config that arms the pipeline's points.
   */
  useFaults(faults: FaultPoints): void {
    this.faults = faults;
  }

  /** Record plugins the loader could not import. */
  addFailures(failures: readonly PluginFailure[]): void {
    this.report.failed.push(...failures);
  }

  /** What loaded and what did not. */
  plugins(): PluginReport {
    return structuredClone(this.report);
  }

  transportNames(): string[] {
    return [...this.transportFactories.keys()];
  }

  backendNames(): string[] {
    return [...this.backendFactories.keys()];
  }

  consumerNames(): string[] {
    return [...this.consumerFactories.keys()];
  }

  /** The transport registered under `name`; NOT_FOUND when none is. */
  transport(name: string): TransportDriver {
    const cached = this.transportInstances.get(name);
    if (cached) return cached;
    const registered = this.transportFactories.get(name);
    if (!registered) {
      throw new BerthError('UNPROCESSABLE', `no transport named ${name} is installed`, {
        hint: `installed transports: ${this.transportNames().join(', ') || 'none'}; add one with \`berth plugins install <package>\` (a volume attached through ${name} needs it back to detach: reinstall the plugin that provided it)${this.failedToLoad()}`,
      });
    }
    const failed = this.transportFailures.get(name);
    if (failed) throw failed;
    const host = this.hostFor(registered.plugin);
    let driver: TransportDriver;
    try {
      // Its context too: options refused at the first use (`acceptsNoOptions`) fail that transport only.
      driver = registered.factory(this.context(registered));
      // Attachments record `driver.name` and detach looks the transport up by it: the two must agree.
      assertNamed('transport', name, driver.name, registered.plugin);
    } catch (error) {
      // A plugin whose factory throws makes its own transport unavailable, not every attach on the
      // host (`transports()` builds them all): PLUGIN_ERROR naming it, kept, and reported as failed.
      const failure = BerthError.is(error) && error.code === 'PLUGIN_ERROR' ? error : new BerthError('PLUGIN_ERROR', `plugin ${registered.plugin} could not build transport ${name}: ${error instanceof Error ? error.message : String(error)}`, {
        hint: `fix the plugin's options (pluginOptions.${registered.plugin} in the config) or reinstall or remove it (\`berth plugins\`); the other transports still work`,
        details: { plugin: registered.plugin, transport: name },
        cause: error,
      });
      this.transportFailures.set(name, failure);
      this.report.failed.push({ packageName: this.packageOf(registered.plugin), error: failure.message });
      throw failure;
    }
    const instance = guardTransport(driver, registered.plugin, host);
    this.transportInstances.set(name, instance);
    return instance;
  }

  /** The package that provided plugin `plugin` (its name when none is recorded). */
  private packageOf(plugin: string): string {
    return this.report.loaded.find((l) => l.name === plugin)?.packageName ?? plugin;
  }

  /**
   * The root of the host services transport `name` runs on (`/` for the machine, another root
   * for a plugin given other host services, like `--simulate`'s); undefined when no such
   * transport is installed or its host says none.
   */
  transportHostRoot(name: string): string | undefined {
    const registered = this.transportFactories.get(name);
    if (!registered) return undefined;
    return this.hostFor(registered.plugin).fs.root;
  }

  /**
   * `device` as this machine sees it: its path (a path on the host services `transport` runs on)
   * resolved under that host's root — unchanged for a transport on the machine itself, `<root>/dev/sda`
   * for one on another root (the simulated host's). What consumers are given: they publish on the
   * machine. Unchanged when no such transport is installed here.
   */
  machineDevice(transport: string | null, device: Device): Device {
    const registered = transport === null ? undefined : this.transportFactories.get(transport);
    if (!registered) return device;
    const path = this.hostFor(registered.plugin).fs.resolve(device.path);
    return path === device.path ? device : { ...device, path };
  }

  /**
   * For a "not installed" hint: the plugins that failed to load, with why — the one the caller
   * wanted may be among them (bad options in the config), which "installed: file" alone hid.
   */
  private failedToLoad(): string {
    const failed = this.report.failed;
    if (failed.length === 0) return '';
    return `; ${failed.length === 1 ? 'a plugin' : `${failed.length} plugins`} failed to load (\`berth plugins\`): ${failed.map((f) => `${f.packageName}: ${f.error}`).join('; ')}`;
  }

  /**
   * Every transport that could be built. One whose plugin's factory throws is left out (logged; a
   * PLUGIN_ERROR when asked for by name, and failed in `plugins()`): the others keep working.
   */
  transports(): TransportDriver[] {
    return this.transportNames().flatMap((n) => {
      try {
        return [this.transport(n)];
      } catch (error) {
        if (!this.transportFailures.has(n)) throw error;
        this.logger.warn({ transport: n, err: (error as Error).message }, 'transport unavailable: its plugin could not build it');
        return [];
      }
    });
  }

  /** The backend registered under `name`. */
  backend(name: string): VolumeBackend {
    const cached = this.backendInstances.get(name);
    if (cached) return cached;
    const registered = this.backendFactories.get(name);
    if (!registered) {
      throw new BerthError('UNPROCESSABLE', `no volume backend named ${name} is installed`, {
        hint: `installed backends: ${this.backendNames().join(', ') || 'none'}${this.failedToLoad()}`,
      });
    }
    const made = registered.factory(this.context(registered));
    assertNamed('backend', name, made.name, registered.plugin);
    const instance = guardBackend(made, registered.plugin);
    this.backendInstances.set(name, instance);
    return instance;
  }

  /** Every backend already instantiated (for shutdown). */
  instantiatedBackends(): VolumeBackend[] {
    return [...this.backendInstances.values()];
  }

  /** The consumer registered under `name`. */
  consumer(name: string): Consumer {
    const cached = this.consumerInstances.get(name);
    if (cached) return cached;
    const registered = this.consumerFactories.get(name);
    if (!registered) {
      throw new BerthError('CONFIG', `no consumer named ${name} is installed`, {
        hint: `installed consumers: ${this.consumerNames().join(', ') || 'none'}${this.failedToLoad()}`,
      });
    }
    const instance = registered.factory(this.context(registered));
    this.consumerInstances.set(name, instance);
    return instance;
  }

  /**
   * The transport that connects `connection` for `connector`: among those whose `protocols` include
   * its `driver_volume_type` and that `accept` it, the highest `priority` wins (so multipath, which
   * only accepts when the connector asks for it, takes `iscsi` over the single-path driver).
   * A `forced` transport is used as it is (no `accepts`), when it connects that protocol.
   */
  selectTransport(connection: ConnectionInfo, connector: Connector, forced?: string): TransportDriver {
    if (forced !== undefined) {
      const transport = this.transport(forced);
      if (!transport.protocols.includes(connection.driver_volume_type)) {
        throw new BerthError('UNPROCESSABLE', `transport ${forced} does not connect ${connection.driver_volume_type} volumes (it connects ${transport.protocols.join(', ')})`, {
          hint: `choose one of: ${this.transports().filter((t) => t.protocols.includes(connection.driver_volume_type)).map((t) => t.name).join(', ') || 'none installed'}`,
          details: { transport: forced, driverVolumeType: connection.driver_volume_type },
        });
      }
      return transport;
    }
    const candidates = this.transports()
      .filter((t) => t.protocols.includes(connection.driver_volume_type))
      .filter((t) => (t.accepts ? t.accepts(connection, connector) : true))
      .sort((a, b) => (b.priority ?? 0) - (a.priority ?? 0));
    const chosen = candidates[0];
    if (!chosen) {
      throw new BerthError('UNPROCESSABLE', `no installed transport connects ${connection.driver_volume_type} volumes`, {
        hint: 'install a transport plugin for it (`berth plugins install <package>`) and check `berth doctor`',
        details: { driverVolumeType: connection.driver_volume_type },
      });
    }
    return chosen;
  }

  /**
   * The transport for a host whose `berth agent` runs its steps: chosen among the transports that
   * agent registered, not this process's. A `forced` one (the attach's, or `transports.<type>` in
   * the config) is taken when the agent has it, even if this process has not installed it; when
   * this process has it too, it must connect the protocol. Otherwise the highest priority among
   * the agent's transports this process knows to connect the protocol and accept it wins (their
   * protocols and `accepts` are known here only: the registration names transports). CONFIG,
   * naming the host, when the agent has none that fits.
   */
  selectAgentTransport(connection: ConnectionInfo, connector: Connector, agent: AgentTransports, forced?: string): string {
    const type = connection.driver_volume_type;
    const has = agent.transports.join(', ') || 'none';
    if (forced !== undefined) {
      if (!agent.transports.includes(forced)) {
        throw new BerthError('CONFIG', `host ${agent.hostName}'s agent has no transport ${forced} (it has ${has})`, {
          hint: `install the plugin with transport ${forced} on ${agent.hostName} and restart its \`berth agent\`, or choose one it has (--transport, or transports.${type} in the config)`,
          details: { host: agent.hostName, transport: forced, agentTransports: [...agent.transports], driverVolumeType: type },
        });
      }
      // Known here too: it must connect the protocol (the check selectTransport makes).
      if (this.transportFactories.has(forced)) this.selectTransport(connection, connector, forced);
      return forced;
    }
    // Installed here too: its protocols and `accepts` decide; installed on the host only: what
    // the agent registered of it (protocols, priority) decides, and it accepts what it connects.
    const candidates = agent.transports.flatMap((name): Array<{ name: string; priority: number }> => {
      if (this.transportFactories.has(name)) {
        const t = this.transport(name);
        const fits = t.protocols.includes(type) && (t.accepts ? t.accepts(connection, connector) : true);
        return fits ? [{ name, priority: t.priority ?? 0 }] : [];
      }
      const info = agent.transportInfo?.find((i) => i.name === name);
      return info?.protocols.includes(type) ? [{ name, priority: info.priority }] : [];
    });
    const chosen = candidates.sort((a, b) => b.priority - a.priority)[0];
    if (chosen) return chosen.name;
    const unknown = agent.transports.filter((name) => !this.transportFactories.has(name) && !agent.transportInfo?.some((i) => i.name === name));
    throw new BerthError('CONFIG', `host ${agent.hostName}'s agent has no transport known to connect ${type} volumes (it has ${has})`, {
      hint:
        unknown.length > 0
          ? `if one of ${unknown.join(', ')} (installed on ${agent.hostName} only) connects ${type} volumes, name it: transports.${type} in this server's config, or --transport`
          : `install a transport plugin for ${type} on ${agent.hostName} and restart its \`berth agent\``,
      details: { host: agent.hostName, agentTransports: [...agent.transports], driverVolumeType: type },
    });
  }

  private context(registered: Registered<unknown>): PluginContext {
    return {
      host: this.hostFor(registered.plugin),
      dataDir: this.dataDir,
      options: registered.options(),
      logger: this.logger.child({ plugin: registered.plugin }),
      ...(this.faults ? { faults: this.faults } : {}),
    };
  }

  private assertFree(map: Map<string, unknown>, kind: string, name: string, plugin: string): void {
    if (map.has(name)) throw new Error(`${plugin} registers ${kind} ${name}, which another plugin already registered`);
  }
}

function assertNamed(kind: 'transport' | 'backend', registeredAs: string, named: string, plugin: string): void {
  if (named === registeredAs) return;
  throw new BerthError('PLUGIN_ERROR', `plugin ${plugin} registered ${kind} "${registeredAs}", but the ${kind} it builds is named "${named}"`, {
    hint: `the name given to registry.${kind}() must equal the ${kind}'s \`name\`; fix the plugin, or ask its author to`,
    details: { plugin, registeredAs, named },
  });
}

function parsePluginOptions(plugin: BerthPlugin, raw: Record<string, unknown>): Record<string, unknown> {
  if (!plugin.optionsSchema) return raw;
  const parsed = plugin.optionsSchema.safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new Error(`invalid options for ${plugin.name}: ${issues}`);
  }
  return parsed.data as Record<string, unknown>;
}

function constant<T>(value: T): () => T {
  return () => value;
}

/** `plugin`'s options parsed at the first call; PLUGIN_ERROR if its schema refuses them after all. */
function parsedWhenAsked(plugin: BerthPlugin, raw: Record<string, unknown>): () => Record<string, unknown> {
  let parsed: Record<string, unknown> | undefined;
  return () => {
    try {
      parsed ??= parsePluginOptions(plugin, raw);
    } catch (error) {
      throw new BerthError('PLUGIN_ERROR', (error as Error).message, {
        hint: `give plugin ${plugin.name} its options under pluginOptions.${plugin.name} in the config (see \`berth doctor\`)`,
        cause: error,
      });
    }
    return parsed;
  };
}

/** Re-throw anything that is not a BerthError as `code`, naming the plugin. */
function rethrow(error: unknown, code: BerthErrorCode, who: string): never {
  if (BerthError.is(error)) throw error;
  if (error instanceof Error && (error.name === 'AbortError' || error.name === 'TimeoutError')) throw error;
  const message = error instanceof Error ? error.message : String(error);
  throw new BerthError(code, `${who}: ${message}`, { cause: error });
}

/**
 * How long a plugin call may go on after its AbortSignal fired before core stops waiting for it and
 * answers TIMEOUT or CANCELLED itself: a call that honours the signal returns well within it.
 */
export const PLUGIN_ABORT_GRACE_MS = 2_000;

/**
 * `call()` (plugin `who`'s `what`), raced against `signal`: when the signal fires and the call has
 * not returned `PLUGIN_ABORT_GRACE_MS` later, TIMEOUT (the deadline passed) or CANCELLED naming the
 * plugin and the call — a plugin that ignores the cancel no longer holds the operation past its
 * deadline. While the call is pending a timer keeps the process alive (`keepAlive`), so a promise
 * that never settles is answered by the deadline instead of node exiting on an empty event loop.
 */
function raced<T>(who: string, what: string, signal: AbortSignal, call: () => Promise<T>, keepAlive = true): Promise<T> {
  const pending = Promise.resolve().then(call);
  return new Promise<T>((resolve, reject) => {
    let grace: NodeJS.Timeout | undefined;
    // Ref'd on purpose: the operation's deadline timer is unref'd.
    const alive = keepAlive ? setInterval(() => undefined, 2 ** 30) : undefined;
    const done = (): void => {
      if (alive) clearInterval(alive);
      if (grace) clearTimeout(grace);
      signal.removeEventListener('abort', onAbort);
    };
    const onAbort = (): void => {
      grace ??= setTimeout(() => {
        done();
        const timedOut = isTimeout(signal.reason);
        reject(
          new BerthError(timedOut ? 'TIMEOUT' : 'CANCELLED', `${who}'s ${what} did not return within ${timedOut ? 'its deadline' : `${PLUGIN_ABORT_GRACE_MS} ms of its cancel`} (it ignored the cancel)`, {
            hint: `the plugin must honour the AbortSignal it is given (stop and return or throw when it fires); fix it or ask its author to, or remove it (\`berth plugins\`)`,
            details: { call: what, graceMs: PLUGIN_ABORT_GRACE_MS },
            cause: signal.reason,
          }),
        );
      }, PLUGIN_ABORT_GRACE_MS);
    };
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
    pending.then(
      (value) => {
        done();
        resolve(value);
      },
      (error: unknown) => {
        done();
        reject(error);
      },
    );
  });
}

function isTimeout(reason: unknown): boolean {
  if (BerthError.is(reason)) return reason.code === 'TIMEOUT';
  return reason instanceof Error && reason.name === 'TimeoutError';
}

/**
 * The device a transport's `connect` returned, checked on its host: its path (followed through
 * links, under the host's root) must exist and be a block device — or a regular file in the
 * host's `/dev` (not `/dev/shm`): a kernel model's disk (`@berth/simhost` makes `/dev/sdX` so) —
 * or the very file the connection named as its `device_path` (the volume's own storage, handed
 * back as it is). The same rule on every host, whatever its root; any other regular file (perhaps
 * another volume's image) is refused, as are character devices (`/dev/null`) and directories.
 */
async function assertBlockDevice(host: HostServices, device: Device, who: string, named: unknown): Promise<void> {
  const refuse = (what: string): never => {
    throw new BerthError('DRIVER_ERROR', `${who} returned device ${device.path}, which ${what}`, {
      hint: 'a transport must return the block device it connected (type "block"); fix the plugin or ask its author to',
      details: { path: device.path, type: device.type },
    });
  };
  let real: string;
  try {
    real = await host.fs.realpath(device.path);
  } catch {
    return refuse('does not exist on the host');
  }
  const stat = await host.fs.stat(real);
  if (!stat) return refuse('does not exist on the host');
  if (stat.isBlockDevice) return;
  // `realpath` answers a host path (under the host's root) on every host.
  if (stat.isFile && real.startsWith('/dev/') && !real.startsWith('/dev/shm/')) return;
  // The very file the connection named (`device_path`: the volume's own backend exported it so —
  // a file-backed transport that hands it back as it is); any other regular file may be another
  // volume's storage.
  if (stat.isFile && typeof named === 'string' && named === device.path) return;
  return refuse(stat.isFile ? 'is a regular file, not a block device' : stat.isDirectory ? 'is a directory, not a block device' : 'is not a block device');
}

function guardTransport(driver: TransportDriver, plugin: string, host: HostServices): TransportDriver {
  const who = `transport ${driver.name} (${plugin})`;
  const wrap = async <T>(fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (error) {
      rethrow(error, 'DRIVER_ERROR', who);
    }
  };
  return {
    name: driver.name,
    protocols: driver.protocols,
    ...(driver.priority === undefined ? {} : { priority: driver.priority }),
    ...(driver.sourceKeys === undefined ? {} : { sourceKeys: [...driver.sourceKeys] }),
    ...(driver.accepts ? { accepts: driver.accepts.bind(driver) } : {}),
    connectorProperties: () => wrap(() => driver.connectorProperties()),
    connect: (connection, context) =>
      wrap(async () => {
        context.signal.throwIfAborted();
        const device = zDevice.safeParse(await raced(who, 'connect', context.signal, () => driver.connect(connection, context)));
        if (!device.success) throw new BerthError('DRIVER_ERROR', `${who} returned an invalid device`);
        await assertBlockDevice(host, device.data, who, connection.data.device_path);
        return device.data;
      }),
    disconnect: (connection, device, options) => wrap(() => raced(who, 'disconnect', options.signal, () => driver.disconnect(connection, device, options))),
    ...(driver.extend ? { extend: (c, d, x) => wrap(() => raced(who, 'extend', x.signal, () => driver.extend!(c, d, x))) } : {}),
    ...(driver.paths ? { paths: (c, d) => wrap(() => driver.paths!(c, d)) } : {}),
    ...(driver.repairPaths ? { repairPaths: (listed, context) => wrap(() => raced(who, 'repairPaths', context.signal, () => driver.repairPaths!(listed, context))) } : {}),
    ...(driver.connected ? { connected: (list) => wrap(() => driver.connected!(list)) } : {}),
    // Upkeep runs as long as its process: raced (a stop is answered), but it keeps nothing alive.
    ...(driver.upkeep ? { upkeep: (signal) => wrap(() => raced(who, 'upkeep', signal, () => driver.upkeep!(signal), false)) } : {}),
    check: () => wrap(() => driver.check()),
  } satisfies TransportDriver;
}

function guardBackend(backend: VolumeBackend, plugin: string): VolumeBackend {
  const who = `backend ${backend.name} (${plugin})`;
  const wrap = async <T>(fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (error) {
      rethrow(error, 'BACKEND_ERROR', who);
    }
  };
  return {
    name: backend.name,
    create: (v, s) => wrap(() => raced(who, 'create', s, () => backend.create(v, s))),
    delete: (v, s) => wrap(() => raced(who, 'delete', s, () => backend.delete(v, s))),
    ...(backend.extend ? { extend: (v, n, s) => wrap(() => raced(who, 'extend', s, () => backend.extend!(v, n, s))) } : {}),
    initializeConnection: (v, c, s) =>
      wrap(async () => {
        const info = zConnectionInfo.safeParse(await raced(who, 'initializeConnection', s, () => backend.initializeConnection(v, c, s)));
        if (!info.success) throw new BerthError('BACKEND_ERROR', `${who} returned an invalid connection_info`);
        return info.data;
      }),
    terminateConnection: (v, c, s) => wrap(() => raced(who, 'terminateConnection', s, () => backend.terminateConnection(v, c, s))),
    ...(backend.credentials ? { credentials: (v) => wrap(() => backend.credentials!(v)) } : {}),
    ...(backend.exports ? { exports: () => wrap(() => backend.exports!()) } : {}),
    ...(backend.missingStorage ? { missingStorage: (v, s) => wrap(() => raced(who, 'missingStorage', s, () => backend.missingStorage!(v, s))) } : {}),
    ...(backend.shortStorage ? { shortStorage: (v, s) => wrap(() => raced(who, 'shortStorage', s, () => backend.shortStorage!(v, s))) } : {}),
    ...(backend.upkeep ? { upkeep: (s) => wrap(() => raced(who, 'upkeep', s, () => backend.upkeep!(s), false)) } : {}),
    ...(backend.close ? { close: () => wrap(() => backend.close!()) } : {}),
    check: () => wrap(() => backend.check()),
  } satisfies VolumeBackend;
}

export type { PluginContext };
