import { z } from '@berth/core/zod';
import { lazySchema } from '@berth/core';
import { formatPortal, parsePortal } from '@berth/iscsi';

/** The default tgtd control port of berth's own tgtd (`tgtd -C 7`); a system tgtd uses 0. */
export const DEFAULT_CONTROL_PORT = 7;

/** The default IQN prefix: targets are `<prefix>:volume-<id>`. */
export const DEFAULT_IQN_PREFIX = 'iqn.2026-11.io.berth';

/**
 * A portal as tgtd takes it, `address:port` (`[v6]:port`). Host names are refused: tgtd binds
 * addresses, and an initiator must reach exactly what is advertised.
 */
const zTgtPortal = lazySchema(() => z
  .string()
  .min(3)
  .max(100)
  .transform((text, ctx) => {
    try {
      const portal = parsePortal(text);
      if (!/^[0-9.]+$/.test(portal.host) && !portal.host.includes(':')) {
        ctx.addIssue({ code: 'custom', message: `${JSON.stringify(text)} is not an IP address and port` });
        return z.NEVER;
      }
      return formatPortal(portal);
    } catch (error) {
      ctx.addIssue({ code: 'custom', message: error instanceof Error ? error.message : String(error) });
      return z.NEVER;
    }
  }));

/**
 * An IQN prefix: `iqn.YYYY-MM.reversed.domain[:more]`. Only the characters tgtadm can carry: it
 * joins its arguments into one comma-separated request, so a comma would inject a parameter.
 */
const zIqnPrefix = lazySchema(() => z
  .string()
  .max(160)
  .regex(/^iqn\.\d{4}-\d{2}\.[a-z0-9][a-z0-9.-]*(:[A-Za-z0-9._:-]+)?$/, 'must look like iqn.2026-11.io.example or iqn.2026-11.io.example:pool'));

/**
 * The iSCSI parameters tgtd offers every target's sessions. tgtd's own defaults (8 KiB data
 * segments, 64 KiB first burst, 256 KiB bursts, an R2T before every write) cost a round trip per
 * 8 KiB of a write; these let a 1 MiB write go in one burst, its first 256 KiB unsolicited.
 * The initiator may negotiate lower. Measured in bench `attach-iscsi-user`.
 */
export const zTgtSessionParams = lazySchema(() => z
  .object({
    /** Largest data segment tgtd receives (`MaxRecvDataSegmentLength`), bytes. */
    maxRecvDataSegmentLength: z.number().int().min(512).max(16_777_215).default(262_144),
    /** Largest data segment tgtd sends (`MaxXmitDataSegmentLength`), bytes. */
    maxXmitDataSegmentLength: z.number().int().min(512).max(16_777_215).default(262_144),
    /** Unsolicited data of one write (`FirstBurstLength`), bytes; at most `maxBurstLength`. */
    firstBurstLength: z.number().int().min(512).max(16_777_215).default(262_144),
    /** Data of one R2T sequence (`MaxBurstLength`), bytes. */
    maxBurstLength: z.number().int().min(512).max(16_777_215).default(1_048_576),
    /** Wait for an R2T before the first data of a write (`InitialR2T`); tgtd's default is true. */
    initialR2T: z.boolean().default(false),
  })
  .refine((p) => p.firstBurstLength <= p.maxBurstLength, { message: 'firstBurstLength must not exceed maxBurstLength', path: ['firstBurstLength'] }));
/** Parsed session parameters. */
export type TgtSessionParams = z.output<typeof zTgtSessionParams>;

/** The session parameters as tgtadm names them (`--name X --value Y`). */
export function tgtadmTargetParams(params: TgtSessionParams): Record<string, string> {
  return {
    MaxRecvDataSegmentLength: String(params.maxRecvDataSegmentLength),
    MaxXmitDataSegmentLength: String(params.maxXmitDataSegmentLength),
    FirstBurstLength: String(params.firstBurstLength),
    MaxBurstLength: String(params.maxBurstLength),
    InitialR2T: params.initialR2T ? 'Yes' : 'No',
  };
}

/** Options of the `tgt` backend (from the config's plugin options). */
export const zTgtBackendOptions = lazySchema(() => z
  .object({
    /** Portals tgtd listens on and connection_info advertises, `address:port`; the first is the main one. */
    portals: z.array(zTgtPortal).min(1).max(16).default(['127.0.0.1:3260']),
    /** Targets are named `<iqnPrefix>:volume-<volume id>`. */
    iqnPrefix: zIqnPrefix.default(DEFAULT_IQN_PREFIX),
    /** Start and supervise berth's own tgtd (true), or drive one that is already running (false). */
    manageDaemon: z.boolean().default(true),
    /**
     * tgtd's management channel (`tgtd -C N`, `tgtadm -C N`): a private number keeps berth's tgtd
     * apart from a system tgtd (which uses 0). With `manageDaemon: false`, the port of the tgtd to drive.
     */
    controlPort: z.number().int().min(0).max(65535).default(DEFAULT_CONTROL_PORT),
    /** Protect every target with per-volume CHAP credentials. */
    chap: z.boolean().default(true),
    /** Also authenticate the target to the initiator (an outgoing account per volume). */
    mutualChap: z.boolean().default(false),
    /** Where LUN backing files live; relative to the data dir (default `<dataDir>/backend-tgt/luns`). */
    lunDirectory: z.string().min(1).optional(),
    /**
     * `all`: connection_info lists every portal (`target_portals[]`, for multipath); `first`: only
     * the first, so a multipath transport has to find the others itself.
     */
    advertise: z.enum(['all', 'first']).default('all'),
    /** How long a tgtd start may take until tgtadm answers, in ms. */
    startTimeoutMs: z.number().int().min(100).max(120_000).default(10_000),
    /** The iSCSI parameters new targets offer (set when a target is made, also on restore). */
    sessionParams: zTgtSessionParams.prefault({}),
  })
  .superRefine((options, ctx) => {
    if (options.mutualChap && !options.chap) {
      ctx.addIssue({ code: 'custom', path: ['mutualChap'], message: 'mutual CHAP needs chap: true' });
    }
    if (new Set(options.portals).size !== options.portals.length) {
      ctx.addIssue({ code: 'custom', path: ['portals'], message: 'lists the same portal twice' });
    }
  }));

/** Parsed options of the `tgt` backend. */
export type TgtBackendOptions = z.output<typeof zTgtBackendOptions>;
