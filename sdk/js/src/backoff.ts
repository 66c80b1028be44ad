/**
 * Reconnection delays: "full jitter" (a uniformly random wait between the
 * floor and an exponentially growing ceiling, 0.5 s to 20 s), so that
 * thousands of clients cut off together do not come back together.
 */
export class Backoff {
  private attempt = 0;

  constructor(
    private readonly floorMs = 500,
    private readonly ceilingMs = 20_000,
    private readonly random: () => number = Math.random,
  ) {}

  /** The wait before the next attempt. */
  next(): number {
    const cap = Math.min(this.ceilingMs, this.floorMs * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30);
    return this.floorMs + this.random() * (cap - this.floorMs);
  }

  /** After a success: the next failure waits little again. */
  reset(): void {
    this.attempt = 0;
  }
}
