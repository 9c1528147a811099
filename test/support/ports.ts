// Free ports for private tgtd portals and control ports: the simulated host's tgtd harness owns the
// probing (it is what its own tests use), so every suite here takes them from there.
export { freePort, freeControlPort } from '@berth/simhost/real';
