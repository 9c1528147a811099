import type { Device } from '../connection.js';
import type { Attachment, Server } from '../model.js';
import type { CheckResult } from './check.js';

/** Where a consumer made the device available. */
export interface Publication {
  /** The path users should use (`/dev/berth/<volume-id>`). */
  path: string;
}

/**
 * A consumer: makes a connected device available to the server (libvirt's attach in the seed).
 * The default `host` consumer publishes a stable symlink. Both methods are idempotent.
 */
export interface Consumer {
  readonly name: string;
  /** Make the device available; resolves with where. */
  publish(server: Server, device: Device, attachment: Attachment): Promise<Publication>;
  /** Undo `publish`; succeeds when it is already gone. */
  unpublish(server: Server, attachment: Attachment): Promise<void>;
  check?(): Promise<CheckResult>;
}
