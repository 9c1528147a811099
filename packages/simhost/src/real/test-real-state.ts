import { createHostFs } from '@berth/host';
import { fuseMountsUnder, loopInfo } from '@berth/qemu';

/** The real machine's filesystem, for the real-backed tests' checks. */
export const hostFs = createHostFs('/');

/** The file a loop device is attached to, or undefined when it is free. */
export async function loopBackingFile(device: string): Promise<string | undefined> {
  return (await loopInfo(hostFs, device))?.backingFile;
}

/** Whether a FUSE export is mounted on `file`. */
export async function isMounted(file: string): Promise<boolean> {
  return (await fuseMountsUnder(hostFs, file)).length > 0;
}
