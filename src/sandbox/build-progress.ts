import ora, { type Ora } from "ora";

/** Where one Go module's build is. */
export type BuildPhase = "queued" | "waiting" | "downloading" | "compiling" | "linking" | "done";

export interface ModuleProgress {
  module: string;
  phase: BuildPhase;
  /** Packages `go build -v` reported compiled so far, of `total` in the binaries' import graph. */
  compiled: number;
  total: number;
}

/** "45 s", "3m 07s". */
export function formatDuration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
}

function describe(m: ModuleProgress): string {
  switch (m.phase) {
    case "queued":
      return `${m.module} queued`;
    case "waiting":
      return `${m.module} built by another process`;
    case "downloading":
      return `${m.module} downloading modules`;
    case "compiling":
      return `${m.module} ${m.compiled}/${m.total} packages`;
    case "linking":
      return `${m.module} linking`;
    case "done":
      return `${m.module} done`;
  }
}

/** The one status line: every module still building, then the time since the build started. */
export function progressLine(modules: readonly ModuleProgress[], elapsedMs: number): string {
  const active = modules.filter((m) => m.phase !== "done");
  return `building ${active.map(describe).join(" · ")} · ${formatDuration(elapsedMs)}`;
}

export interface BuildProgressOptions {
  /** A live, redrawn line (ora) when stderr is an interactive terminal; else plain lines through `log`. */
  live: boolean;
  log: (line: string) => void;
  /** How often plain mode says it is still building. */
  heartbeatMs?: number;
  now?: () => number;
}

/**
 * Shows what a build of several Go modules is doing. On a terminal: one spinner line redrawn
 * every second. Elsewhere (CI, test runners, pipes): a line per phase change and one every
 * `heartbeatMs`, so a log never goes quiet for minutes.
 */
export class BuildProgress {
  private readonly modules = new Map<string, ModuleProgress>();
  private readonly started: number;
  private readonly now: () => number;
  private readonly spinner: Ora | undefined;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly options: BuildProgressOptions) {
    this.now = options.now ?? Date.now;
    this.started = this.now();
    if (options.live) {
      // discardStdin off: `spindle dev` reads keys from stdin right after the build.
      this.spinner = ora({ stream: process.stderr, discardStdin: false, text: "building" }).start();
      this.timer = setInterval(() => this.redraw(), 1000);
    } else {
      this.timer = setInterval(() => this.heartbeat(), options.heartbeatMs ?? 30_000);
    }
    this.timer.unref();
  }

  /** The spinner is drawn only when ora found an interactive terminal. */
  static isTerminal(stream: NodeJS.WriteStream = process.stderr): boolean {
    return ora({ stream, isEnabled: undefined }).isEnabled;
  }

  add(module: string): void {
    this.modules.set(module, { module, phase: "queued", compiled: 0, total: 0 });
    this.redraw();
  }

  phase(module: string, phase: BuildPhase, total?: number): void {
    const m = this.get(module);
    m.phase = phase;
    if (total !== undefined) m.total = total;
    if (this.spinner) this.redraw();
    else if (phase === "downloading") this.options.log(`tools/${module}: downloading modules`);
    else if (phase === "compiling") this.options.log(`tools/${module}: compiling ${m.total} packages`);
    else if (phase === "linking") this.options.log(`tools/${module}: linking`);
  }

  compiled(module: string): void {
    this.get(module).compiled++;
  }

  /** A line that stays (a module finished, a warning), above the spinner when there is one. */
  print(line: string): void {
    this.spinner?.clear();
    this.options.log(line);
    this.redraw();
  }

  snapshot(): ModuleProgress[] {
    return [...this.modules.values()].map((m) => ({ ...m }));
  }

  stop(): void {
    clearInterval(this.timer);
    this.spinner?.stop();
  }

  private get(module: string): ModuleProgress {
    const m = this.modules.get(module);
    if (!m) throw new Error(`no build of ${module} is tracked`);
    return m;
  }

  private redraw(): void {
    if (this.spinner) this.spinner.text = progressLine(this.snapshot(), this.now() - this.started);
  }

  private heartbeat(): void {
    if (this.snapshot().some((m) => m.phase !== "done")) {
      this.options.log(`still ${progressLine(this.snapshot(), this.now() - this.started)}`);
    }
  }
}
