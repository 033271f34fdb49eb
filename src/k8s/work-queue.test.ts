import { describe, expect, it } from "vitest";
import { WorkQueue } from "./work-queue.js";

describe("WorkQueue", () => {
  it("collapses a burst and reruns a key queued while in flight", async () => {
    const runs: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const q = new WorkQueue(async (k) => {
      runs.push(k);
      if (runs.length === 1) await gate;
    });
    q.add("a");
    q.add("a"); // in flight: marks dirty
    q.add("a");
    release();
    await q.idle();
    expect(runs).toEqual(["a", "a"]);
  });

  it("retries failures with backoff until they succeed", async () => {
    let attempts = 0;
    const errors: unknown[] = [];
    const q = new WorkQueue(
      async () => {
        attempts++;
        if (attempts < 3) throw new Error("transient");
      },
      4,
      (_k, e) => errors.push(e),
    );
    q.add("x");
    await q.idle();
    expect(attempts).toBe(3);
    expect(errors).toHaveLength(2);
  });
});
