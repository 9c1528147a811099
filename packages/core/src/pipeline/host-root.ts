import type { DriverCatalog } from '../catalog.js';
import { BerthError } from '../errors.js';
import type { Attachment } from '../model.js';
import type { HostSteps } from '../host-steps/host-steps.js';

// Which host an attachment's device is on: the root of the host services its transport ran on
// (`/` for the machine, berth's simulated host's root when `--simulate` gave the transport that
// host). A berth whose catalog runs that transport on another root would act on the wrong kernel
// (a no-op "success" that leaves the real session up, a reconnect of a device that is there), so
// it refuses. Roots are compared, nothing else: core never asks whether it is simulated.

/**
 * The host root an attach run by `steps` with `transport` connects on, journalled with `initialize`
 * so that recovery can tell whose operation it is before the attachment records it (undefined:
 * another host's agent connects, on its own roots).
 */
export function initializeHostRoot(catalog: DriverCatalog, steps: HostSteps | undefined, transport: string): string | undefined {
  return steps?.kind === 'local' ? catalog.transportHostRoot(transport) : undefined;
}

/** What is wrong when this berth must not act on an attachment's device, and what to do. */
export interface HostRootMismatch {
  message: string;
  hint: string;
  recorded: string;
  here: string;
}

/**
 * Whether this berth must not act on `attachment`'s device: its transport runs on another host root
 * here than the one recorded at connect (`transportRoot` says where, undefined: not installed).
 */
export function hostRootMismatch(
  attachment: Pick<Attachment, 'id' | 'transport' | 'hostRoot'>,
  transportRoot: (transport: string) => string | undefined,
  subject = `attachment ${attachment.id}`,
): HostRootMismatch | undefined {
  const recorded = attachment.hostRoot;
  if (recorded === null || recorded === undefined || attachment.transport === null) return undefined;
  const here = transportRoot(attachment.transport);
  if (here === undefined || here === recorded) return undefined;
  return {
    message: `${subject} was made on host root ${recorded} (berth's simulated host when it is not /), but transport ${attachment.transport} runs on ${here} in this berth`,
    hint: 'run the command as the attachment was made: with --simulate (and the same simulate.root / BERTH_HOST_ROOT) if it was made with it, without it otherwise',
    recorded,
    here,
  };
}

/** The reason reconcile gives for leaving such an attachment alone. */
export function hostRootSkip(mismatch: HostRootMismatch): string {
  return `${mismatch.message}: not touched; ${mismatch.hint}`;
}

/** Refuse (CONFIG, nothing touched) to act on an attachment whose transport runs on another host root in this berth. */
export function assertSameHostRoot(catalog: DriverCatalog, attachment: Attachment): void {
  const mismatch = hostRootMismatch(attachment, (t) => catalog.transportHostRoot(t));
  if (mismatch === undefined) return;
  throw new BerthError('CONFIG', mismatch.message, {
    hint: mismatch.hint,
    details: { reason: 'host-root-mismatch', attachmentId: attachment.id, transport: attachment.transport, recordedRoot: mismatch.recorded, hostRoot: mismatch.here, untouched: true },
  });
}
