/**
 * External handlers that misbehave, against the sandbox and a real agent process: handlers
 * written with grpc-js straight from discovery.proto (not the SDK) register on the agent's
 * socket and send what a buggy or hostile handler would. What reaches Devices is what this
 * checks: nothing corrupt, nothing deleted by a refused list, nobody blocked.
 * (discovery-handlers/external/bad-input.test.ts has the adapter's side: memory, hung streams.)
 */
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import * as k8s from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  encodeResponse,
  NotGrpcServer,
  RawHandler,
  registerWith,
  StallingHandler,
} from "../../discovery-handlers/external/testing/raw-handler.js";
import type { Device } from "../../src/api/device.js";
import { DEVICE_CONFIGURATIONS, DEVICES, ResourceClient } from "../../src/k8s/resources.js";
import { eventually, kubeConfig } from "./cluster.js";
import { SpindleProcess } from "./spindle-process.js";

type Obj = k8s.KubernetesObject & Record<string, unknown>;
const GRACE_SECONDS = 3;

describe("external handlers that misbehave (Akri v0)", () => {
  const kc = kubeConfig();
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const configs = new ResourceClient<Obj>(kc, DEVICE_CONFIGURATIONS, "spindle-test");
  const devices = new ResourceClient<Device & Obj>(kc, DEVICES, "spindle-test");
  const closers: (() => Promise<void>)[] = [];
  const names = ["xb-raw", "xb-quiet", "xb-junk", "xb-stall"];
  let dir: string;
  let registration: string;
  let agent: SpindleProcess;
  let raw: RawHandler;

  const devicesOf = async (config: string) =>
    (await devices.list()).items
      .filter((d) => d.spec.configurationName === config)
      .sort((a, b) => a.spec.id.localeCompare(b.spec.id));
  const idsOf = async (config: string) => (await devicesOf(config)).map((d) => d.spec.id).join(",");
  const eventsOf = async (config: string, reason: string) =>
    (await core.listNamespacedEvent({ namespace: "default", fieldSelector: `involvedObject.name=${config}` })).items
      .filter((e) => e.reason === reason)
      .map((e) => e.message ?? "");
  const configuration = (name: string, handler: string) => ({
    apiVersion: "spindle.dev/v1alpha1",
    kind: "DeviceConfiguration",
    metadata: { name },
    spec: { discoveryHandler: { name: handler, discoveryDetails: {} }, offlineGraceSeconds: GRACE_SECONDS },
  });

  beforeAll(async () => {
    dir = await mkdtemp("/tmp/spindle-xb-");
    registration = join(dir, "agent-registration.sock");
    agent = await SpindleProcess.agent("edge-1", ["--handlers", "usb", "--registration-socket", registration]);
    await eventually("the registration socket", async () => existsSync(registration));
    raw = await RawHandler.start(join(dir, "rawbad.sock"));
    closers.push(() => raw.close());
    await registerWith(registration, { name: "rawbad", endpoint: raw.socket, shared: true });
  }, 900_000);

  afterAll(async () => {
    await agent?.stop();
    for (const c of closers.reverse()) await c().catch(() => undefined);
    for (const name of names) await configs.delete(name).catch(() => undefined);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("untrusted contents are dropped, never published corrupt; a list over the bounds leaves the last one in place", async () => {
    raw.list([
      {
        id: "ok-1",
        properties: { GOOD: "1", "bad name": "x", lower: "x", HUGE: "x".repeat(100_000), BIDI: "a\u202eb" },
      },
      { id: "ok-1", properties: { GOOD: "the second ok-1" } },
      { id: "", properties: {} },
      { id: "x".repeat(2000), properties: {} },
      { id: "bad\u0000id", properties: {} },
      { id: "ok-2", properties: { URL: "http://10.0.0.2" } },
    ]);
    await configs.apply(configuration("xb-raw", "rawbad"));
    const first = await eventually("the two valid devices", async () => {
      const list = await devicesOf("xb-raw");
      return list.length === 2 ? list : undefined;
    });
    expect(first.map((d) => [d.spec.id, d.spec.properties])).toEqual([
      ["ok-1", { GOOD: "1" }], // the first of the duplicates; bad names and bad values dropped
      ["ok-2", { URL: "http://10.0.0.2" }],
    ]);
    expect(first.every((d) => d.spec.handler === "rawbad" && d.spec.shared)).toBe(true);
    const warning = agent
      .entries()
      .find((e) => e.msg === "external handler sent devices that cannot be published as sent");
    expect((warning?.problems as string[] | undefined)?.join("\n")).toMatch(/duplicate device id: the first one kept/);
    const versions = first.map((d) => d.metadata?.resourceVersion);

    // 100,000 devices: refused as a whole, with an Event saying why; what was published stays,
    // unchanged, past its grace period (a refused list is not "no devices").
    raw.list(Array.from({ length: 100_000 }, (_, i) => ({ id: `flood-${i}`, properties: { N: String(i) } })));
    const failed = await eventually("a DiscoveryFailed Event", async () => {
      const messages = await eventsOf("xb-raw", "DiscoveryFailed");
      return messages.length > 0 ? messages : undefined;
    });
    expect(failed[0]).toMatch(
      /external handler rawbad \(.*rawbad\.sock\) sent a device list Spindle refuses: 100000 devices in one list \(at most 10000\); the last list stays published/,
    );
    await new Promise((r) => setTimeout(r, (GRACE_SECONDS + 3) * 1000));
    const after = await devicesOf("xb-raw");
    expect(after.map((d) => d.spec.id)).toEqual(["ok-1", "ok-2"]);
    expect(after.map((d) => d.metadata?.resourceVersion)).toEqual(versions);
    expect(agent.entries().some((e) => e.msg === "external handler list refused; the last list stays published")).toBe(
      true,
    );

    // Bytes that are not a DiscoverResponse: refused the same way.
    raw.list(Buffer.concat([encodeResponse([{ id: "half" }]), Buffer.from([0x0a, 0x7f])]));
    await eventually("the garbled list refused", async () =>
      (await eventsOf("xb-raw", "DiscoveryFailed")).some((m) => /not a valid DiscoverResponse/.test(m)),
    );
    expect(await idsOf("xb-raw")).toBe("ok-1,ok-2");

    // A good list again: Devices follow it (ok-1 leaves after its grace period).
    raw.list([
      { id: "ok-2", properties: { URL: "http://10.0.0.2" } },
      { id: "ok-3", properties: {} },
    ]);
    await eventually("the next good list published", async () => (await idsOf("xb-raw")) === "ok-2,ok-3");
  });

  it("a quiet handler, one hung mid-message and a socket that is not gRPC block nobody", async () => {
    const quiet = await RawHandler.start(join(dir, "rawquiet.sock"));
    quiet.silent = true;
    closers.push(() => quiet.close());
    const stall = await StallingHandler.start(join(dir, "rawstall.sock"), encodeResponse([{ id: "s1" }]));
    closers.push(() => stall.close());
    const junk = await NotGrpcServer.start(join(dir, "rawjunk.sock"), "http1");
    closers.push(() => junk.close());
    await registerWith(registration, { name: "rawquiet", endpoint: quiet.socket });
    await registerWith(registration, { name: "rawstall", endpoint: stall.socket });
    await configs.apply(configuration("xb-quiet", "rawquiet"));
    await configs.apply(configuration("xb-stall", "rawstall"));
    await configs.apply(configuration("xb-junk", "rawjunk"));
    await registerWith(registration, { name: "rawjunk", endpoint: junk.socket });

    await eventually(
      "the stalled handler's whole first list published",
      async () => (await idsOf("xb-stall")) === "s1",
    );
    await eventually("Discover called on the quiet handler", async () => quiet.streams > 0);
    const removed = await eventually("the non-gRPC endpoint removed, with the reason", async () =>
      agent.entries().find((e) => e.msg === "external discovery handler endpoint removed" && e.handler === "rawjunk"),
    );
    expect(String(removed.reason)).toMatch(/^cannot call Discover: /);
    await eventually("the configuration naming it reported as waiting for its handler", async () =>
      (await eventsOf("xb-junk", "UnknownHandler")).some((m) => /no discovery handler "rawjunk"/.test(m)),
    );

    // Meanwhile the good handler's changes are published as usual.
    raw.list([{ id: "ok-4", properties: {} }]);
    await eventually("the good handler's change", async () => (await idsOf("xb-raw")) === "ok-4");
    expect(await idsOf("xb-stall")).toBe("s1");
    expect(await idsOf("xb-quiet")).toBe("");
    expect(await idsOf("xb-junk")).toBe("");
    expect(agent.running).toBe(true);
    expect(agent.entries().filter((e) => e.level === 60 || /uncaught|crash/i.test(String(e.msg)))).toEqual([]);
  });
});
