import { spawnSync } from "node:child_process";
import { resolve } from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { noteWork, SettledGc, startSettledGc, stopSettledGc } from "./settled-gc.js";

describe("SettledGc: one full collection once a burst of work has settled", () => {
  afterEach(() => {
    stopSettledGc();
    vi.useRealTimers();
  });

  it("collects once after a burst, only when it is quiet, and not after a trickle", () => {
    vi.useFakeTimers();
    const gc = vi.fn();
    const s = new SettledGc({ quietMs: 1000, minWork: 100, gc });
    // Start-up counts as a burst: the first quiet period collects.
    s.note();
    vi.advanceTimersByTime(1000);
    expect(gc).toHaveBeenCalledTimes(1);
    gc.mockClear();
    for (let i = 0; i < 150; i++) {
      s.note();
      vi.advanceTimersByTime(50); // busy: never 1 s quiet
    }
    expect(gc).not.toHaveBeenCalled();
    vi.advanceTimersByTime(1000);
    expect(gc).toHaveBeenCalledTimes(1);
    // A trickle below the threshold does not collect again.
    for (let i = 0; i < 10; i++) s.note();
    vi.advanceTimersByTime(5000);
    expect(gc).toHaveBeenCalledTimes(1);
    // The trickle counts towards the next burst.
    for (let i = 0; i < 95; i++) s.note();
    vi.advanceTimersByTime(1000);
    expect(gc).toHaveBeenCalledTimes(2);
  });

  it("noteWork reaches the process's instance, and is a no-op when none runs", () => {
    vi.useFakeTimers();
    noteWork(1000); // nothing started: nothing happens
    const gc = vi.fn();
    startSettledGc({ quietMs: 10, minWork: 2, gc });
    noteWork();
    vi.advanceTimersByTime(10);
    expect(gc).toHaveBeenCalledTimes(1); // start-up
    noteWork(2);
    vi.advanceTimersByTime(10);
    expect(gc).toHaveBeenCalledTimes(2);
  });

  it("finds V8's own collector at run time", () => {
    expect(startSettledGc()).toBeInstanceOf(SettledGc);
  });
});

describe("compactingGc", () => {
  it("gives back the pages a burst's survivors were scattered over, where a plain full GC keeps them", () => {
    // In a process of its own with the chart's V8 flags: the young generation's size decides
    // how much garbage is promoted next to the survivors.
    const script = `
      import { runInNewContext } from "node:vm";
      import { compactingGc } from ${JSON.stringify(resolve(import.meta.dirname, "settled-gc.ts"))};
      const collect = compactingGc();
      const plainGc = runInNewContext("gc");
      // Every fifth object survives, interleaved with garbage that lives long enough to be
      // promoted too (as a plan's intermediate maps do): once it dies, pages are mostly empty.
      const kept = [];
      for (let round = 0; round < 20; round++) {
        const garbage = [];
        for (let i = 0; i < 50000; i++) {
          const o = { name: "device-" + round + "-" + i, nodes: [i], spec: { i } };
          if (i % 5 === 0) kept.push(o); else garbage.push(o);
        }
      }
      plainGc();
      const plain = process.memoryUsage().heapTotal;
      collect();
      console.log(JSON.stringify({ plain, compacted: process.memoryUsage().heapTotal, kept: kept.length }));
    `;
    const run = spawnSync(
      process.execPath,
      ["--max-semi-space-size=1", "--import", "tsx", "--input-type=module", "-e", script],
      { encoding: "utf8" },
    );
    expect(run.status, run.stderr).toBe(0);
    const { plain, compacted, kept } = JSON.parse(run.stdout) as { plain: number; compacted: number; kept: number };
    expect(kept).toBe(200_000);
    expect(compacted).toBeLessThan(plain * 0.7);
  });
});

describe("startSettledGc", () => {
  it("bounds how far the old generation grows past what is live", () => {
    // A live set, and a plan's worth of intermediate objects at a time that outlive a few
    // scavenges (so they are promoted) and then die: V8 alone lets the heap grow to ~8x the live set.
    const peak = (bounded: boolean) => {
      const script = `
        import { startSettledGc } from ${JSON.stringify(resolve(import.meta.dirname, "settled-gc.ts"))};
        if (${bounded}) startSettledGc({ gc: () => {} });
        const live = [];
        for (let i = 0; i < 300000; i++) live.push({ name: "device-" + i, nodes: [i], spec: { i } });
        let peak = 0;
        const window = [];
        for (let round = 0; round < 300; round++) {
          window.push(Array.from({ length: 10000 }, (_, i) => ({ name: "x-" + round + "-" + i, v: [i] })));
          if (window.length > 5) window.shift();
          peak = Math.max(peak, process.memoryUsage().heapTotal);
        }
        console.log(JSON.stringify({ peak, live: live.length }));
      `;
      const run = spawnSync(
        process.execPath,
        ["--max-semi-space-size=1", "--import", "tsx", "--input-type=module", "-e", script],
        { encoding: "utf8" },
      );
      expect(run.status, run.stderr).toBe(0);
      const out = JSON.parse(run.stdout) as { peak: number; live: number };
      expect(out.live).toBe(300_000);
      return out.peak;
    };
    const unbounded = peak(false);
    const bounded = peak(true);
    expect(bounded).toBeLessThan(unbounded * 0.6);
  });
});
