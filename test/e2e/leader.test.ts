import { mkdtemp, readFile, writeFile } from "node:fs/promises";
import { connect, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as k8s from "@kubernetes/client-node";
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from "vitest";
import { EXECUTOR } from "../../src/sandbox/control-plane.js";
import { eventually, kubeConfig, testNamespace } from "./cluster.js";
import { SpindleProcess } from "./spindle-process.js";

type Entry = Record<string, unknown> & { msg?: string; time?: number };
const HOUR = 3_600_000;

/**
 * A TCP relay to the apiserver that can go silent: once frozen it forwards nothing more, in
 * either direction, and new connections hang (a stalled apiserver or a network partition).
 */
class FreezableRelay {
  frozen = false;
  private sockets = new Set<Socket>();
  private constructor(
    private server: Server,
    readonly port: number,
  ) {}

  static async start(target: URL): Promise<FreezableRelay> {
    let relay: FreezableRelay | undefined;
    const server = createServer((client) => {
      relay!.sockets.add(client);
      client.on("error", () => undefined);
      client.on("close", () => relay!.sockets.delete(client));
      if (relay!.frozen) return;
      const upstream = connect(Number(target.port), target.hostname);
      relay!.sockets.add(upstream);
      upstream.on("error", () => client.destroy());
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
      client.on("data", (d) => {
        if (!relay!.frozen) upstream.write(d);
      });
      upstream.on("data", (d) => {
        if (!relay!.frozen) client.write(d);
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const address = server.address();
    relay = new FreezableRelay(server, typeof address === "object" && address ? address.port : 0);
    return relay;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((r) => this.server.close(r));
  }
}

describe("controller leader election: client-go semantics on the sandbox", () => {
  const kc = kubeConfig();
  const coordination = kc.makeApiClient(k8s.CoordinationV1Api);
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  const running: SpindleProcess[] = [];
  let ns: Awaited<ReturnType<typeof testNamespace>>;

  const controller = async (identity: string, leaseName: string, leaseSeconds: number, extra: string[] = []) => {
    const p = await SpindleProcess.start(`controller-${identity}`, [
      "controller",
      "--lease-namespace",
      ns.name,
      "--lease-name",
      leaseName,
      "--lease-seconds",
      String(leaseSeconds),
      "--identity",
      identity,
      ...extra,
    ]);
    running.push(p);
    return p;
  };
  const readLease = (name: string) => coordination.readNamespacedLease({ name, namespace: ns.name });
  /** Writes the Lease as another holder would (creating it if needed). */
  const writeLease = async (name: string, spec: k8s.V1LeaseSpec) => {
    const current = await readLease(name).catch(() => undefined);
    if (!current) {
      return coordination.createNamespacedLease({ namespace: ns.name, body: { metadata: { name }, spec } });
    }
    return coordination.replaceNamespacedLease({
      name,
      namespace: ns.name,
      body: { metadata: { name, resourceVersion: current.metadata?.resourceVersion }, spec },
    });
  };
  const logged = (p: SpindleProcess, msg: string, where: (e: Entry) => boolean = () => true) =>
    (p.entries() as Entry[]).find((e) => e.msg === msg && where(e));
  const waitLogged = (p: SpindleProcess, msg: string, timeoutMs = 30_000, where?: (e: Entry) => boolean) =>
    eventually(`${p.name} to log "${msg}"`, async () => logged(p, msg, where), timeoutMs).catch((err: Error) => {
      throw new Error(`${err.message}\n${p.name} log:\n${p.log().split("\n").slice(-20).join("\n")}`);
    });
  /** A DeviceSpinApp whose configuration does not exist: a leading controller writes its status. */
  const probe = (name: string) =>
    custom.createNamespacedCustomObject({
      group: "spindle.dev",
      version: "v1alpha1",
      namespace: ns.name,
      plural: "devicespinapps",
      body: {
        apiVersion: "spindle.dev/v1alpha1",
        kind: "DeviceSpinApp",
        metadata: { name, namespace: ns.name },
        spec: {
          deviceConfiguration: `missing-${ns.name}`,
          template: { spec: { image: "ghcr.io/acme/probe:v1", executor: EXECUTOR, replicas: 1 } },
        },
      },
    });
  const probeStatus = async (name: string) =>
    (
      (await custom.getNamespacedCustomObject({
        group: "spindle.dev",
        version: "v1alpha1",
        namespace: ns.name,
        plural: "devicespinapps",
        name,
      })) as { status?: { conditions?: { type: string; reason: string }[] } }
    ).status;

  beforeAll(async () => {
    ns = await testNamespace("leader");
  });

  afterEach(async () => {
    for (const p of running.splice(0)) await p.stop("SIGKILL");
  });

  afterAll(async () => {
    await ns?.remove();
  });

  it.each([
    ["in the future", HOUR],
    ["in the past", -HOUR],
  ])(
    "takes over a Lease whose holder's renewTime is an hour %s exactly a lease duration after observing it",
    async (_, skew) => {
      const name = `skew-${skew > 0 ? "future" : "past"}`;
      const renewTime = new k8s.V1MicroTime(Date.now() + skew);
      await writeLease(name, {
        holderIdentity: "ghost",
        leaseDurationSeconds: 4,
        acquireTime: renewTime,
        renewTime,
        leaseTransitions: 7,
      });
      const p = await controller(`skew-${skew > 0 ? "f" : "p"}`, name, 4);
      const observed = await waitLogged(p, "observed a new Lease holder", 30_000, (e) => e.holder === "ghost");
      const became = await waitLogged(p, "became leader", 15_000);
      const waited = became.time! - observed.time!;
      // Taken once 4 s have passed on the candidate's clock since it saw the record (within one
      // retry period of 1 s, jittered by up to 20 %, plus the request), whatever renewTime says.
      expect(waited).toBeGreaterThanOrEqual(4000);
      expect(waited).toBeLessThan(4000 + 1200 + 800);
      const lease = await readLease(name);
      expect(lease.spec?.holderIdentity).toBe(p.name.replace("controller-", ""));
      expect(lease.spec?.leaseTransitions).toBe(8);
      // What the holder writes is its wall clock, for humans.
      expect(Math.abs(new Date(lease.spec!.renewTime!).getTime() - Date.now())).toBeLessThan(10_000);
    },
  );

  it("exits 0 on its own on SIGTERM, clears its Lease after draining, and the standby takes over at once", async () => {
    const name = "sigterm";
    const a = await controller("term-a", name, 10);
    await waitLogged(a, "controller started");
    const b = await controller("term-b", name, 10);
    await waitLogged(b, "observed a new Lease holder", 30_000, (e) => e.holder === "term-a");
    expect((await readLease(name)).spec?.holderIdentity).toBe("term-a");
    const signalled = Date.now();
    process.kill(a.pid!, "SIGTERM");
    const exit = await Promise.race([
      a.exitStatus(),
      new Promise<"still running">((r) => setTimeout(() => r("still running"), 8000)),
    ]);
    const exitedAfter = Date.now() - signalled;
    if (exit === "still running") {
      throw new Error(`term-a still runs 8 s after SIGTERM; log:\n${a.log().split("\n").slice(-20).join("\n")}`);
    }
    expect(exit, "exit code 0, not killed").toEqual({ code: 0, signal: null });
    expect(exitedAfter).toBeLessThan(5000);
    // It gave the Lease up (the standby may already hold it), after it stopped, and never lost it.
    expect((await readLease(name)).spec?.holderIdentity ?? "").not.toBe("term-a");
    const entries = a.entries() as Entry[];
    const order = (msg: string) => entries.findIndex((e) => e.msg === msg);
    expect(order("stopping")).toBeGreaterThan(-1);
    expect(order("released leadership")).toBeGreaterThan(order("stopping"));
    expect(order("stopped")).toBeGreaterThan(order("released leadership"));
    expect(logged(a, "lost leadership")).toBeUndefined();
    // The standby takes over within one retry period (2 s for a 10 s Lease), not after the lease.
    const became = await waitLogged(b, "became leader", 10_000);
    expect(became.time! - (entries[order("released leadership")]!.time as number)).toBeLessThan(2400 + 1000);
    expect((await readLease(name)).spec?.holderIdentity).toBe("term-b");
  });

  it("stops leading and writing at once when another holder has written the Lease", async () => {
    const name = "usurped";
    const a = await controller("usurped-a", name, 4);
    await waitLogged(a, "controller started");
    await probe("before");
    await eventually("the leader to write the probe's status", async () => (await probeStatus("before"))?.conditions);
    const usurped = await writeLease(name, {
      holderIdentity: "usurper",
      leaseDurationSeconds: 3600,
      renewTime: new k8s.V1MicroTime(),
    });
    const at = Date.now();
    const lost = await waitLogged(a, "lost leadership", 5000);
    expect(lost.time! - at).toBeLessThan(2500); // the next renewal, 1 s later, sees the usurper
    expect(String(lost.reason)).toMatch(/usurper/);
    await waitLogged(a, "stopped acting after losing the Lease; campaigning again", 10_000);
    await probe("after");
    await new Promise((r) => setTimeout(r, 5000));
    expect(await probeStatus("after"), "no status written after the Lease was lost").toBeUndefined();
    const lease = await readLease(name);
    expect(lease.spec?.holderIdentity).toBe("usurper");
    expect(lease.metadata?.resourceVersion, "the Lease not written again").toBe(usurped.metadata?.resourceVersion);
  });

  it("loses leadership at the renew deadline when the apiserver stops answering, before a standby takes over", async () => {
    const name = "partition";
    const config = JSON.parse(await readFile(inject("kubeconfig"), "utf8")) as {
      clusters: { cluster: { server: string } }[];
    };
    const relay = await FreezableRelay.start(new URL(config.clusters[0]!.cluster.server));
    try {
      config.clusters[0]!.cluster.server = `https://127.0.0.1:${relay.port}`;
      const relayed = join(await mkdtemp(join(tmpdir(), "spindle-relay-")), "kubeconfig");
      await writeFile(relayed, JSON.stringify(config), { mode: 0o600 });
      // Lease 3 s: renew deadline 2 s, retry 1 s, each attempt times out after 1 s.
      const a = await controller("part-a", name, 3, ["--kubeconfig", relayed]);
      await waitLogged(a, "controller started");
      const b = await controller("part-b", name, 3);
      await waitLogged(b, "observed a new Lease holder", 30_000, (e) => e.holder === "part-a");
      relay.frozen = true;
      const frozenAt = Date.now();
      const lost = await waitLogged(a, "lost leadership", 6000);
      const after = lost.time! - frozenAt;
      // The last renewal that got through was sent at most ~1 s (retry + a request) before the freeze.
      expect(after).toBeLessThanOrEqual(2000 + 300);
      expect(after).toBeGreaterThan(2000 - 1500);
      expect(String(lost.reason)).toMatch(/renew deadline/);
      // The standby takes over only after a full lease without change, so after the leader gave up.
      const became = await waitLogged(b, "became leader", 10_000);
      expect(became.time!).toBeGreaterThan(lost.time!);
      expect(became.time! - frozenAt).toBeGreaterThanOrEqual(1800);
      expect((await readLease(name)).spec?.holderIdentity).toBe("part-b");
    } finally {
      await relay.close();
    }
  });
});
