import { type ChildProcess, spawn } from "node:child_process";
import { createWriteStream, readFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { inject } from "vitest";

const BIN = resolve(import.meta.dirname, "../../bin/spindle.js");

/** A real `spindle <command>` process, as users and the chart run it; its JSON log kept for assertions. */
export class SpindleProcess {
  private child: ChildProcess;
  private exited: Promise<void>;

  private constructor(
    readonly name: string,
    readonly args: string[],
    readonly logFile: string,
    env: NodeJS.ProcessEnv,
  ) {
    const out = createWriteStream(logFile, { flags: "a" });
    this.child = spawn(process.execPath, [BIN, ...args], {
      // The fallback placement unless a test asks for another (test/e2e/dra.test.ts runs auto):
      // the suites written for node extended resources keep testing exactly that path.
      env: {
        ...process.env,
        KUBECONFIG: inject("kubeconfig"),
        LOG_LEVEL: "debug",
        SPINDLE_PLACEMENT: "node-resources",
        ...env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child.stdout?.pipe(out);
    this.child.stderr?.pipe(out);
    this.exited = new Promise((r) => this.child.once("exit", () => r()));
  }

  static async start(name: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<SpindleProcess> {
    const dir = await mkdtemp(join(tmpdir(), `spindle-${name}-`));
    return new SpindleProcess(name, args, join(dir, `${name}.log`), env);
  }

  static agent(node: string, extraArgs: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<SpindleProcess> {
    return SpindleProcess.start(`agent-${node}`, ["agent", "--node", node, ...extraArgs], env);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  log(): string {
    return readFileSync(this.logFile, "utf8");
  }

  /** Parsed JSON log lines. */
  entries(): Record<string, unknown>[] {
    return this.log()
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  }

  /** Still running: neither exited nor killed by a signal. */
  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Resolves once the process has exited, with its exit code, or the signal that ended it. */
  async exitStatus(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    await this.exited;
    return { code: this.child.exitCode, signal: this.child.signalCode };
  }

  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill(signal);
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 10_000);
    await this.exited;
    clearTimeout(timer);
  }
}
