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
