/**
 * A keyed work queue: a key is never processed twice at once, a key queued while in flight runs
 * again afterwards (level-triggered: the worker reads the latest state), failures retry with
 * backoff. Bursts of the same key collapse into one run.
 */
export class WorkQueue {
  private pending = new Set<string>();
  private inFlight = new Set<string>();
  private dirty = new Set<string>();
  private failures = new Map<string, number>();
  private retryTimers = new Map<string, NodeJS.Timeout>();
  private idleWaiters: (() => void)[] = [];
  private stopped = false;

  constructor(
    private worker: (key: string) => Promise<void>,
    private concurrency = 16,
    private onError: (key: string, err: unknown) => void = () => undefined,
  ) {}

  add(key: string): void {
    if (this.stopped) return;
    if (this.inFlight.has(key)) {
      this.dirty.add(key);
      return;
    }
    this.pending.add(key);
    this.pump();
  }

  private pump(): void {
    while (this.inFlight.size < this.concurrency && this.pending.size > 0) {
      const key = this.pending.values().next().value as string;
      this.pending.delete(key);
      this.inFlight.add(key);
      void this.run(key);
    }
    if (this.inFlight.size === 0 && this.pending.size === 0 && this.retryTimers.size === 0) {
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  private async run(key: string): Promise<void> {
    try {
      await this.worker(key);
      this.failures.delete(key);
    } catch (err) {
      const n = (this.failures.get(key) ?? 0) + 1;
      this.failures.set(key, n);
      this.onError(key, err);
      if (!this.stopped) {
        const delay = Math.min(100 * 2 ** (n - 1), 30_000);
        clearTimeout(this.retryTimers.get(key));
        this.retryTimers.set(
          key,
          setTimeout(() => {
            this.retryTimers.delete(key);
            this.add(key);
          }, delay),
        );
      }
    } finally {
      this.inFlight.delete(key);
      if (this.dirty.delete(key)) this.pending.add(key);
      this.pump();
    }
  }

  /** Resolves when nothing is queued, running or waiting to retry. */
  idle(): Promise<void> {
    if (this.inFlight.size === 0 && this.pending.size === 0 && this.retryTimers.size === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  stop(): void {
    this.stopped = true;
    for (const t of this.retryTimers.values()) clearTimeout(t);
    this.retryTimers.clear();
    this.pending.clear();
  }
}
