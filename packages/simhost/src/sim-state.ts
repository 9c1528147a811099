import type { SimMapState, SimMultipathdState } from './dm-multipath.js';
import type { SimKernelState } from './sim-kernel.js';

/**
 * Everything a simulated host holds, for assertions: the kernel's sessions, disks and login
 * counters, device-mapper's multipath maps, and multipathd.
 */
export interface SimState extends SimKernelState {
  /** Multipath maps in dm minor order. */
  maps: SimMapState[];
  multipathd: SimMultipathdState;
}
