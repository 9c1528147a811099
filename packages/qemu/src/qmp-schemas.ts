import { z } from '@berth/core/zod';
import { lazySchema } from '@berth/core';

/** QEMU's version triple as QMP reports it (greeting and `query-version`). */
export const zQemuVersion = lazySchema(() => z.looseObject({
  qemu: z.looseObject({ major: z.number().int(), minor: z.number().int(), micro: z.number().int() }),
  package: z.string(),
}));
/** QEMU's version. */
export type QemuVersion = z.output<typeof zQemuVersion>;

/** The line a QMP server sends first: `{"QMP": {"version": ..., "capabilities": [...]}}`. */
export const zQmpGreeting = lazySchema(() => z.object({
  QMP: z.looseObject({ version: zQemuVersion, capabilities: z.array(z.string()) }),
}));
/** A parsed QMP greeting. */
export type QmpGreeting = z.output<typeof zQmpGreeting>;

/** An asynchronous event: `{"event": "BLOCK_EXPORT_DELETED", "data": {...}, "timestamp": {...}}`. */
export const zQmpEvent = lazySchema(() => z.object({
  event: z.string().min(1),
  data: z.record(z.string(), z.unknown()).optional(),
  timestamp: z.object({ seconds: z.number(), microseconds: z.number() }).optional(),
}));
/** One QMP event. */
export type QmpEvent = z.output<typeof zQmpEvent>;

/** A successful reply (`return` may be any JSON value) with the request's id. */
export const zQmpReturn = lazySchema(() => z.object({ return: z.unknown(), id: z.unknown().optional() }));

/** An error reply: QMP's error class (`GenericError`, `CommandNotFound`, ...) and description. */
export const zQmpErrorReply = lazySchema(() => z.object({
  error: z.looseObject({ class: z.string(), desc: z.string() }),
  id: z.unknown().optional(),
}));

/** One entry of `query-block-exports`. */
export const zBlockExportInfo = lazySchema(() => z.looseObject({
  id: z.string(),
  type: z.string(),
  'node-name': z.string(),
  'shutting-down': z.boolean(),
}));
/** An export as `query-block-exports` lists it. */
export type BlockExportInfo = z.output<typeof zBlockExportInfo>;

/** What `query-block-exports` returns. */
export const zBlockExportList = lazySchema(() => z.array(zBlockExportInfo));

/** The part of a `query-named-block-nodes` entry berth reads (the rest is kept, unchecked). */
export const zNamedBlockNode = lazySchema(() => z.looseObject({
  'node-name': z.string(),
  drv: z.string(),
  ro: z.boolean(),
  image: z.looseObject({ 'virtual-size': z.number() }).optional(),
}));
/** A block node as `query-named-block-nodes` lists it. */
export type NamedBlockNode = z.output<typeof zNamedBlockNode>;

/** What `query-named-block-nodes` returns. */
export const zNamedBlockNodeList = lazySchema(() => z.array(zNamedBlockNode));

/** A command that answers `{}`: `blockdev-add`, `block-export-add`, `object-add`, `quit`, ... */
export const zEmptyReturn = lazySchema(() => z.looseObject({}));

/**
 * A QMP object or node name as berth makes them: a letter, then letters, digits, `-`, `_` or `.`,
 * at most 31 characters (QEMU keeps node names in a 32-byte buffer).
 */
export const zQmpName = lazySchema(() => z
  .string()
  .regex(/^[A-Za-z][A-Za-z0-9_.-]{0,30}$/, 'a QMP name is a letter, then letters, digits, "-", "_" or ".", at most 31 characters'));
