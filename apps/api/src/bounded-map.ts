/** A Map that forgets its oldest entries past `capacity` (insertion order). */
export class BoundedMap<K, V> {
  private readonly map = new Map<K, V>();

  constructor(private readonly capacity: number) {}

  /** The value of `key`, if still held. */
  get(key: K): V | undefined {
    return this.map.get(key);
  }

  /** Whether `key` is held. */
  has(key: K): boolean {
    return this.map.has(key);
  }

  /** Hold `value` under `key` (as the newest entry), forgetting the oldest past capacity. */
  set(key: K, value: V): void {
    this.map.delete(key);
    this.map.set(key, value);
    while (this.map.size > this.capacity) {
      const oldest = this.map.keys().next();
      if (oldest.done === true) break;
      this.map.delete(oldest.value);
    }
  }

  /** Forget `key`. */
  delete(key: K): void {
    this.map.delete(key);
  }

  /** How many entries are held. */
  get size(): number {
    return this.map.size;
  }
}
