/**
 * Network namespaces for e2e tests with real multicast between "hosts", and the small programs
 * the tests run inside them.
 *
 * Topology (everything lives in namespaces this module creates; the root namespace's interfaces,
 * addresses and routes are never touched):
 *
 *   <prefix>-c (the hub: cameras, advertisers)   br0 10.233.0.1/24, bridge ports p-<host>
 *        │ veth            │ veth
 *   <prefix>-a eth0 10.233.0.2/24    <prefix>-b eth0 10.233.0.3/24    ...
 *
 * Every veth is created with both ends already inside test namespaces (`ip -n <ns> link add ...
 * peer ... netns <hub>`), so deleting the namespaces removes everything.
 *
 * The apiserver listens on 127.0.0.1 of the root namespace only. A unix socket is reachable from
 * every network namespace through the file system, so the test process serves one that pipes
 * each connection to the apiserver, and a forwarder inside each host namespace listens on
 * 127.0.0.1:<apiserver port> and pipes to that socket. The kubeconfig (https://127.0.0.1:<port>,
 * certificate for 127.0.0.1) then works unchanged inside the namespace.
 *
 * Run as a program (`node --import tsx test/e2e/netns.ts <role> ...`) this file is what runs in
 * a namespace: `forward <port> <socket>`, `camera <json FakeCameraOptions>`, `advertise <json
 * AdvertiseOptions>`. The camera and the advertiser print one JSON line when ready and obey
 * `stop`/`crash` lines on stdin.
 */
import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createWriteStream, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const REPO = resolve(import.meta.dirname, "../..");
const SELF = fileURLToPath(import.meta.url);
const SUBNET = "10.233.0";

/** One host of the test network: a namespace and its address on the shared segment. */
export interface NetnsHost {
  name: string;
  ns: string;
  iface: string;
  address: string;
}

async function ip(...args: string[]): Promise<string> {
  try {
    const { stdout } = await run("ip", args);
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string; code?: unknown };
    const why = e.code === "ENOENT" ? "the `ip` command is missing (install iproute2)" : (e.stderr || e.message).trim();
    throw new Error(`ip ${args.join(" ")}: ${why}`);
  }
}

/** A process started inside a namespace (`ip netns exec` execs it, so the pid is the program's own). */
export class NetnsProcess {
  private readonly child: ChildProcess;
  private readonly exited: Promise<void>;
  private readonly lines: string[] = [];
  private readonly waiters = new Set<() => void>();

  constructor(
    readonly name: string,
    readonly host: NetnsHost,
    command: string[],
    readonly logFile: string,
    env: NodeJS.ProcessEnv,
  ) {
    const out = createWriteStream(logFile, { flags: "a" });
    const [program, ...args] = command;
    this.child = spawn("ip", ["netns", "exec", host.ns, program!, ...args], {
      cwd: REPO,
      env: { ...process.env, ...env },
      stdio: ["pipe", "pipe", "pipe"],
    });
    this.child.stdin?.on("error", () => undefined);
    this.child.stderr?.pipe(out);
    const stdout = this.child.stdout;
    if (stdout) {
      createInterface({ input: stdout }).on("line", (line) => {
        out.write(`${line}\n`);
        this.lines.push(line);
        for (const wake of this.waiters) wake();
      });
    }
    this.exited = new Promise((r) =>
      this.child.once("exit", () => {
        for (const wake of this.waiters) wake();
        r();
      }),
    );
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  log(): string {
    return readFileSync(this.logFile, "utf8");
  }

  /** Parsed JSON lines of stdout and stderr. */
  entries(): Record<string, unknown>[] {
    return this.log()
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => {
        try {
          return JSON.parse(l) as Record<string, unknown>;
        } catch {
          return {};
        }
      });
  }

  /** Writes one command line to the program's stdin. */
  send(line: string): void {
    this.child.stdin?.write(`${line}\n`);
  }

  /** The first stdout line matching, waiting up to `timeoutMs`; fails with the log if the program exits. */
  async line(match: RegExp, timeoutMs = 20_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.lines.find((l) => match.test(l));
      if (found !== undefined) return found;
      if (!this.running)
        throw new Error(`${this.name} exited (${this.child.exitCode}) before ${match}:\n${this.log()}`);
      if (Date.now() > deadline)
        throw new Error(`${this.name}: no line matching ${match} in ${timeoutMs} ms:\n${this.log()}`);
      await new Promise<void>((r) => {
        const wake = () => {
          this.waiters.delete(wake);
          clearTimeout(timer);
          r();
        };
        const timer = setTimeout(wake, 200);
        this.waiters.add(wake);
      });
    }
  }

  /** Signals the process by its pid; SIGKILL after 10 s. */
  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    if (!this.running) return;
    this.child.kill(signal);
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 10_000);
    await this.exited;
    clearTimeout(timer);
  }

  /** Waits for the program to exit on its own (after `stop` on stdin, say). */
  async exit(timeoutMs = 10_000): Promise<void> {
    const timer = setTimeout(() => this.child.kill("SIGKILL"), timeoutMs);
    await this.exited;
    clearTimeout(timer);
  }

  killNow(): void {
    if (this.running) this.child.kill("SIGKILL");
  }
}

/**
 * A hub namespace with a bridge and host namespaces attached to it by veth pairs. Create with
 * `TestNetwork.create`, always `dispose()` (in afterAll): it kills every process started here
 * (by pid), closes the apiserver bridge and deletes the namespaces.
 */
export class TestNetwork {
  readonly hosts = new Map<string, NetnsHost>();
  private readonly processes: NetnsProcess[] = [];
  private readonly namespaces: string[] = [];
  private apiServer: net.Server | undefined;
  private readonly apiSockets = new Set<net.Socket>();
  private apiSocketPath: string | undefined;
  private apiPort: number | undefined;
  private disposed = false;
  private readonly onExit = () => this.disposeSync();

  private constructor(
    /** Unique prefix of every namespace of this network, `spx-<hex>`. */
    readonly prefix: string,
    readonly dir: string,
  ) {
    process.once("exit", this.onExit);
  }

  /**
   * Creates the hub `c` (10.233.0.1 on br0) and one namespace per member (10.233.0.2, .3, ...
   * on eth0). Throws, saying why, when namespaces cannot be created.
   */
  static async create(members: string[]): Promise<TestNetwork> {
    const network = new TestNetwork(
      `spx-${randomBytes(3).toString("hex")}`,
      await mkdtemp(join(tmpdir(), "spindle-netns-")),
    );
    try {
      await network.build(members);
    } catch (err) {
      await network.dispose();
      throw new Error(
        `cannot create the test network namespaces (needs root or CAP_NET_ADMIN+CAP_SYS_ADMIN and iproute2): ${(err as Error).message}`,
      );
    }
    return network;
  }

  private async addNamespace(name: string): Promise<string> {
    const ns = `${this.prefix}-${name}`;
    await ip("netns", "add", ns);
    this.namespaces.push(ns);
    await ip("-n", ns, "link", "set", "lo", "up");
    return ns;
  }

  private async build(members: string[]): Promise<void> {
    const hub = await this.addNamespace("c");
    await ip("-n", hub, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0");
    await ip("-n", hub, "addr", "add", `${SUBNET}.1/24`, "dev", "br0");
    await ip("-n", hub, "link", "set", "br0", "up");
    await ip("-n", hub, "route", "add", "224.0.0.0/4", "dev", "br0");
    this.hosts.set("c", { name: "c", ns: hub, iface: "br0", address: `${SUBNET}.1` });
    for (const [i, name] of members.entries()) {
      const ns = await this.addNamespace(name);
      const port = `p-${name}`.slice(0, 15);
      // Both ends are born inside test namespaces: nothing appears in the root namespace.
      await ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", hub);
      await ip("-n", hub, "link", "set", port, "master", "br0");
      await ip("-n", hub, "link", "set", port, "up");
      const address = `${SUBNET}.${i + 2}`;
      await ip("-n", ns, "addr", "add", `${address}/24`, "dev", "eth0");
      await ip("-n", ns, "link", "set", "eth0", "up");
      // No default route in here: multicast sent without an explicit interface goes out eth0.
      await ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0");
      this.hosts.set(name, { name, ns, iface: "eth0", address });
    }
  }

  host(name: string): NetnsHost {
    const host = this.hosts.get(name);
    if (!host) throw new Error(`no host ${name} in the test network`);
    return host;
  }

  /** Starts `command` inside the host's namespace, stdout+stderr kept in a log file. */
  spawn(hostName: string, name: string, command: string[], env: NodeJS.ProcessEnv = {}): NetnsProcess {
    if (this.disposed) throw new Error("test network already disposed");
    const proc = new NetnsProcess(name, this.host(hostName), command, join(this.dir, `${name}.log`), env);
    this.processes.push(proc);
    return proc;
  }

  /** Runs one role of this file (forward, camera, advertise) in the host's namespace, through tsx. */
  spawnRole(hostName: string, name: string, role: string, args: string[]): NetnsProcess {
    return this.spawn(hostName, name, [process.execPath, "--import", "tsx", SELF, role, ...args]);
  }

  /**
   * Makes the apiserver of `kubeconfigServer` (https://127.0.0.1:<port>) reachable at the same
   * address inside the host's namespace. Resolves when the forwarder listens.
   */
  async forwardApiserver(hostName: string, kubeconfigServer: string): Promise<NetnsProcess> {
    const url = new URL(kubeconfigServer);
    if (url.hostname !== "127.0.0.1") throw new Error(`apiserver ${kubeconfigServer} is not on 127.0.0.1`);
    const port = Number(url.port);
    await this.serveApiSocket(port);
    const forwarder = this.spawnRole(hostName, `forward-${hostName}`, "forward", [String(port), this.apiSocketPath!]);
    await forwarder.line(/^listening/);
    return forwarder;
  }

  private async serveApiSocket(port: number): Promise<void> {
    if (this.apiServer) {
      if (this.apiPort !== port) throw new Error("one apiserver per test network");
      return;
    }
    this.apiPort = port;
    this.apiSocketPath = join(this.dir, "apiserver.sock");
    const server = net.createServer((downstream) => {
      const upstream = net.connect(port, "127.0.0.1");
      pipeBoth(downstream, upstream, this.apiSockets);
    });
    this.apiServer = server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.apiSocketPath, () => {
        server.off("error", reject);
        resolve();
      });
    });
  }

  /** Kills every process (by pid), closes the apiserver bridge, deletes the namespaces and temp files. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    process.off("exit", this.onExit);
    await Promise.all(this.processes.map((p) => p.stop().catch(() => p.killNow())));
    for (const s of this.apiSockets) s.destroy();
    await new Promise<void>((r) => (this.apiServer ? this.apiServer.close(() => r()) : r()));
    const failures: string[] = [];
    for (const ns of await this.ownNamespaces()) {
      await ip("netns", "del", ns).catch((err: Error) => failures.push(err.message));
    }
    await rm(this.dir, { recursive: true, force: true });
    const left = await this.ownNamespaces();
    if (failures.length > 0 || left.length > 0)
      throw new Error(`test network cleanup: ${failures.join("; ")} left: ${left.join(", ")}`);
  }

  /** The namespaces carrying this network's unique prefix (also any a failed create left behind). */
  private async ownNamespaces(): Promise<string[]> {
    const listed = await ip("netns", "list");
    return listed
      .split("\n")
      .map((l) => l.split(" ")[0] ?? "")
      .filter((n) => n.startsWith(`${this.prefix}-`));
  }

  /** Last resort when the test process exits without afterAll: kill by pid, delete our namespaces. */
  private disposeSync(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const p of this.processes) p.killNow();
    for (const ns of this.namespaces) {
      try {
        execFileSync("ip", ["netns", "del", ns], { stdio: "ignore" });
      } catch {
        // already gone
      }
    }
  }
}

function pipeBoth(a: net.Socket, b: net.Socket, track?: Set<net.Socket>): void {
  const close = () => {
    a.destroy();
    b.destroy();
    track?.delete(a);
    track?.delete(b);
  };
  track?.add(a);
  track?.add(b);
  a.on("error", close).on("close", close);
  b.on("error", close).on("close", close);
  a.pipe(b);
  b.pipe(a);
}

// ---- the programs run inside the namespaces ---------------------------------------------------

/** `forward <port> <socket>`: 127.0.0.1:<port> in this namespace → the unix socket. */
async function forward(port: number, socketPath: string): Promise<void> {
  const server = net.createServer((downstream) => pipeBoth(downstream, net.connect(socketPath)));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve());
  });
  process.stdout.write(`listening on 127.0.0.1:${port}\n`);
}

/** Resolves on the first stdin line that is one of `commands` (or when stdin closes: "stop"). */
function nextCommand(commands: string[]): Promise<string> {
  return new Promise((resolve) => {
    const rl = createInterface({ input: process.stdin });
    rl.on("line", (line) => {
      const command = line.trim();
      if (commands.includes(command)) {
        rl.close();
        resolve(command);
      }
    });
    rl.once("close", () => resolve("stop"));
  });
}

/** `camera <json>`: a FakeCamera; `stop` on stdin says Bye, `crash` vanishes silently. */
async function camera(json: string): Promise<void> {
  const { FakeCamera } = await import("../../discovery-handlers/onvif/fake-camera.js");
  const cam = await FakeCamera.start(JSON.parse(json));
  process.stdout.write(
    `${JSON.stringify({ ready: true, id: cam.id, xaddr: cam.xaddr, stream: cam.streamUri("profile_1") })}\n`,
  );
  const command = await nextCommand(["stop", "crash"]);
  await cam.stop({ bye: command === "stop" });
  process.stdout.write(`${JSON.stringify({ stopped: command })}\n`);
  process.exit(0);
}

/** `advertise <json>`: one mDNS service; `stop` on stdin withdraws it with a goodbye, `crash` silently. */
async function advertise(json: string): Promise<void> {
  const { advertiseService } = await import("../../discovery-handlers/mdns/mock.js");
  const ad = await advertiseService(JSON.parse(json));
  process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
  const command = await nextCommand(["stop", "crash"]);
  if (command === "stop") await ad.stop();
  else await ad.crash();
  process.stdout.write(`${JSON.stringify({ stopped: command })}\n`);
  process.exit(0);
}

if (process.argv[1] === SELF) {
  const [role, ...args] = process.argv.slice(2);
  const main =
    role === "forward"
      ? forward(Number(args[0]), String(args[1]))
      : role === "camera"
        ? camera(String(args[0]))
        : role === "advertise"
          ? advertise(String(args[0]))
          : Promise.reject(new Error(`unknown role ${role}`));
  main.catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  });
}
