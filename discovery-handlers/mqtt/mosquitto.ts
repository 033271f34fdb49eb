import { type ChildProcess, execFile, spawn } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer, Socket } from "node:net";
import { tmpdir, userInfo } from "node:os";
import { delimiter, dirname, join } from "node:path";
import { promisify } from "node:util";

/**
 * A real Mosquitto broker for tests: on a free 127.0.0.1 port, with a temporary config (and
 * optionally a password file), stopped by its own PID. Retained messages persist in its temporary
 * directory, so it can be stopped and started again on the same port like a restarting broker.
 */

export class MosquittoNotInstalledError extends Error {
  constructor(tried: string[]) {
    super(
      `Mosquitto is not installed (looked for ${tried.join(", ")} and on PATH): install the Debian package mosquitto (apt-get install mosquitto)`,
    );
    this.name = "MosquittoNotInstalledError";
  }
}

export interface MosquittoOptions {
  /** A fixed port; a free one when absent. */
  port?: number;
  /** Users for a password file; when given, anonymous clients are refused. */
  users?: Record<string, string>;
  /** The mosquitto binary; found at /usr/sbin/mosquitto or on PATH when absent. */
  executable?: string;
  /** How long to wait for the listener. */
  startTimeoutMs?: number;
  /** More mosquitto.conf lines (e.g. `max_queued_messages 0`). */
  config?: string[];
}

export interface MosquittoBroker {
  readonly port: number;
  /** `mqtt://127.0.0.1:<port>` */
  readonly url: string;
  /** The running process's PID, undefined while stopped. */
  readonly pid: number | undefined;
  /**
   * Stops the process, keeping the port, config and data. Normally with SIGTERM: Mosquitto then
   * sends the clients' wills before it exits. `crash` kills it (SIGKILL): no wills, like a broker
   * that dies or a network that drops; retained messages survive (saved on every change).
   */
  stopProcess(options?: { crash?: boolean }): Promise<void>;
  /** Starts the process again on the same port with the same config and data. */
  startProcess(): Promise<void>;
  /** Stops the process and removes the temporary directory. */
  stop(): Promise<void>;
}

/** Brokers still running when this process exits are killed by their PID, never left behind. */
const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Finds a Mosquitto program (`mosquitto`, `mosquitto_passwd`); throws MosquittoNotInstalledError. */
export function findMosquittoProgram(name = "mosquitto", preferred?: string): string {
  const candidates = [
    ...(preferred ? [preferred] : []),
    `/usr/sbin/${name}`,
    `/usr/bin/${name}`,
    `/usr/local/sbin/${name}`,
    `/usr/local/bin/${name}`,
    ...(process.env.PATH ?? "").split(delimiter).map((dir) => join(dir, name)),
  ];
  const found = candidates.find(isExecutable);
  if (!found) throw new MosquittoNotInstalledError([`/usr/sbin/${name}`]);
  return found;
}

/** A port nothing listens on right now. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = new Socket();
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
    socket.connect(port, "127.0.0.1");
  });
}

/** Starts Mosquitto and resolves once it accepts connections. */
export async function startMosquitto(options: MosquittoOptions = {}): Promise<MosquittoBroker> {
  const executable = findMosquittoProgram("mosquitto", options.executable);
  const port = options.port ?? (await freePort());
  const dir = await mkdtemp(join(tmpdir(), "spindle-mosquitto-"));
  const users = options.users ?? {};
  const lines = [
    `listener ${port} 127.0.0.1`,
    `allow_anonymous ${Object.keys(users).length === 0}`,
    "persistence true",
    `persistence_location ${dir}/`,
    // Save after every change, so retained messages survive even a crash.
    "autosave_on_changes true",
    "autosave_interval 1",
    "log_dest stderr",
    "log_type error",
    "log_type warning",
    ...(options.config ?? []),
  ];
  // Started as root, Mosquitto switches to the `mosquitto` user, which cannot read our files.
  if (process.getuid?.() === 0) lines.push(`user ${userInfo().username}`);
  try {
    if (Object.keys(users).length > 0) {
      const passwd = findMosquittoProgram("mosquitto_passwd", join(dirname(executable), "mosquitto_passwd"));
      const file = join(dir, "passwd");
      let create = true;
      for (const [username, password] of Object.entries(users)) {
        await promisify(execFile)(passwd, ["-b", ...(create ? ["-c"] : []), file, username, password]);
        create = false;
      }
      lines.push(`password_file ${file}`);
    }
    await writeFile(join(dir, "mosquitto.conf"), `${lines.join("\n")}\n`, { mode: 0o600 });
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }

  let child: ChildProcess | undefined;
  let stderr = "";

  const startProcess = async (): Promise<void> => {
    if (child) return;
    stderr = "";
    const proc = spawn(executable, ["-c", join(dir, "mosquitto.conf")], { stdio: ["ignore", "ignore", "pipe"] });
    child = proc;
    running.add(proc);
    proc.stderr?.on("data", (chunk: Buffer) => {
      if (stderr.length < 8192) stderr += chunk.toString();
    });
    const exited = new Promise<number | null>((resolve) => proc.once("exit", (code) => resolve(code)));
    proc.once("exit", () => {
      running.delete(proc);
      if (child === proc) child = undefined;
    });
    const deadline = Date.now() + (options.startTimeoutMs ?? 10_000);
    for (;;) {
      const early = await Promise.race([exited, new Promise<"running">((r) => setTimeout(() => r("running"), 20))]);
      if (early !== "running") {
        throw new Error(`mosquitto exited with code ${early} before listening on ${port}: ${stderr.trim()}`);
      }
      if (await canConnect(port)) return;
      if (Date.now() > deadline) {
        proc.kill("SIGKILL");
        throw new Error(`mosquitto did not listen on 127.0.0.1:${port} in time: ${stderr.trim()}`);
      }
    }
  };

  const stopProcess = async (stopOptions: { crash?: boolean } = {}): Promise<void> => {
    const proc = child;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) {
      child = undefined;
      return;
    }
    const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
    proc.kill(stopOptions.crash ? "SIGKILL" : "SIGTERM");
    const killer = setTimeout(() => proc.kill("SIGKILL"), 5_000);
    await exited;
    clearTimeout(killer);
    child = undefined;
  };

  try {
    await startProcess();
  } catch (error) {
    await stopProcess();
    await rm(dir, { recursive: true, force: true });
    throw error;
  }

  return {
    port,
    url: `mqtt://127.0.0.1:${port}`,
    get pid() {
      return child?.pid;
    },
    stopProcess,
    startProcess,
    async stop() {
      await stopProcess();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
