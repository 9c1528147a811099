import type { z } from 'zod';
import type { HostServices } from '@berth/host';
import type { Consumer } from './contracts/consumer.js';
import type { TransportDriver } from './contracts/transport-driver.js';
import type { VolumeBackend } from './contracts/volume-backend.js';
import type { Logger } from './logger.js';

/** The plugin API version this core implements. */
export const PLUGIN_API_VERSION = 1;

/** What a factory receives: the host, where to keep state, a logger and its parsed options. */
export interface PluginContext<Options = Record<string, unknown>> {
  /** Commands, the rooted filesystem and the device waiter. */
  host: HostServices;
  /** berth's data directory; a plugin keeps its own state under `<dataDir>/<plugin name>/`. */
  dataDir: string;
  /** The plugin's options from the config, parsed by its `optionsSchema`. */
  options: Options;
  logger: Logger;
  /**
   * Named fault points a plugin passes between its commands (`loop.connect.after-losetup`), armed
   * by the same config as the pipeline's (`faults`, `BERTH_FAULTS`). Absent, or nothing armed: no cost.
   */
  faults?: FaultPoints;
}

/** What a plugin sees of fault injection: pass a named point (throws, crashes or waits only when armed). */
export interface FaultPoints {
  /** Pass the point `name`; resolves at once unless it is armed. */
  hit(name: string): Promise<void>;
}

/** Builds a transport for a context. */
export type TransportFactory<O = Record<string, unknown>> = (context: PluginContext<O>) => TransportDriver;
/** Builds a backend for a context. */
export type BackendFactory<O = Record<string, unknown>> = (context: PluginContext<O>) => VolumeBackend;
/** Builds a consumer for a context. */
export type ConsumerFactory<O = Record<string, unknown>> = (context: PluginContext<O>) => Consumer;

/** The narrow API a plugin registers through (it never sees the DI container). */
export interface PluginRegistry<O = Record<string, unknown>> {
  /** Register a transport under its name. */
  transport(name: string, factory: TransportFactory<O>): void;
  /** Register a volume backend under its name. */
  backend(name: string, factory: BackendFactory<O>): void;
  /** Register a consumer under its name. */
  consumer(name: string, factory: ConsumerFactory<O>): void;
}

/**
 * A plugin package's default export. The package's package.json has a `"berth"` field naming the
 * module that exports it (`{"berth": {"entry": "./dist/index.js"}}` or `{"berth": "./dist/index.js"}`).
 */
export interface BerthPlugin<S extends z.ZodType = z.ZodType> {
  /** The plugin's name (usually its package name). */
  name: string;
  /** The plugin API version it was written for (`PLUGIN_API_VERSION`). */
  apiVersion: number;
  /** Validates the plugin's options from the config. */
  optionsSchema?: S;
  /** Register factories. */
  register(registry: PluginRegistry<z.output<S>>): void;
}

/** Identity helper that types a plugin descriptor. */
export function definePlugin<S extends z.ZodType>(plugin: BerthPlugin<S>): BerthPlugin<S> {
  return plugin;
}
