import fc from "fast-check";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { goExecName } from "./build.js";
import { BuildProgress, formatDuration, progressLine } from "./build-progress.js";

describe("formatDuration", () => {
  it("reads like a clock past a minute", () => {
    expect(formatDuration(0)).toBe("0 s");
    expect(formatDuration(59_999)).toBe("59 s");
    expect(formatDuration(60_000)).toBe("1m 00s");
    expect(formatDuration(187_400)).toBe("3m 07s");
    expect(formatDuration(-5)).toBe("0 s");
  });

  it("round-trips whole seconds", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 10 * 3600 }), (s) => {
        const text = formatDuration(s * 1000 + 999);
        const m = /^(?:(\d+)m (\d\d)s|(\d+) s)$/.exec(text);
        expect(m).not.toBeNull();
        const back = m![3] !== undefined ? Number(m![3]) : Number(m![1]) * 60 + Number(m![2]);
        expect(back).toBe(s);
      }),
    );
  });
});

describe("progressLine", () => {
  it("names every module still building, what it is doing, and the elapsed time", () => {
    const line = progressLine(
      [
        { module: "kubernetes", phase: "compiling", compiled: 812, total: 1931 },
        { module: "kwok", phase: "downloading", compiled: 0, total: 0 },
        { module: "spin-operator", phase: "queued", compiled: 0, total: 0 },
        { module: "helm", phase: "done", compiled: 500, total: 500 },
      ],
      192_000,
    );
    expect(line).toBe(
      "building kubernetes 812/1931 packages · kwok downloading modules · spin-operator queued · 3m 12s",
    );
  });
});

describe("BuildProgress without a terminal", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("prints a plain line per phase and a heartbeat while something builds", () => {
    const lines: string[] = [];
    const progress = new BuildProgress({ live: false, log: (l) => lines.push(l), heartbeatMs: 30_000 });
    progress.add("kwok");
    progress.phase("kwok", "downloading");
    vi.advanceTimersByTime(30_000);
    progress.phase("kwok", "compiling", 640);
    for (let i = 0; i < 200; i++) progress.compiled("kwok");
    vi.advanceTimersByTime(30_000);
    progress.phase("kwok", "linking");
    progress.phase("kwok", "done");
    progress.print("built tools/kwok in 1m 00s");
    vi.advanceTimersByTime(60_000);
    progress.stop();
    expect(lines).toEqual([
      "tools/kwok: downloading modules",
      "still building kwok downloading modules · 30 s",
      "tools/kwok: compiling 640 packages",
      "still building kwok 200/640 packages · 1m 00s",
      "tools/kwok: linking",
      "built tools/kwok in 1m 00s",
    ]);
  });

  it("is not a terminal for a stream that is not a TTY", () => {
    const stream = Object.assign(Object.create(process.stderr), { isTTY: false }) as NodeJS.WriteStream;
    expect(BuildProgress.isTerminal(stream)).toBe(false);
  });
});

describe("goExecName", () => {
  it("is the name `go build -o dir/` gives a main package", () => {
    expect(goExecName("k8s.io/kubernetes/cmd/kube-apiserver")).toBe("kube-apiserver");
    expect(goExecName("go.etcd.io/etcd/server/v3")).toBe("server");
    expect(goExecName("helm.sh/helm/v3/cmd/helm")).toBe("helm");
    expect(goExecName("github.com/spinkube/spin-operator/cmd")).toBe("cmd");
    expect(goExecName("example.com/tool/v1")).toBe("v1");
    expect(goExecName("example.com/tool/v10")).toBe("tool");
  });
});
