/**
 * A bounded ring: keeps the newest `capacity` items, drops the oldest. Memory stays fixed however many
 * items pass through.
 */
export class Ring<T> {
  private readonly buf: T[] = [];
  private next = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`Ring capacity must be a whole number above 0, not ${capacity}`);
  }

  push(item: T): void {
    if (this.buf.length < this.capacity) this.buf.push(item);
    else this.buf[this.next] = item;
    this.next = (this.next + 1) % this.capacity;
  }

  get size(): number {
    return this.buf.length;
  }

  /** The items, newest first. */
  newestFirst(): T[] {
    const out: T[] = [];
    for (let i = 1; i <= this.buf.length; i++) out.push(this.buf[(this.next - i + this.capacity) % this.capacity]!);
    return out;
  }
}
