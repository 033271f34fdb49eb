import { execFile } from "node:child_process";
import { resolve } from "node:path";
import { promisify } from "node:util";
import type * as k8s from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { UsbFixture } from "../../discovery-handlers/usb/mock.js";
import type { Device } from "../../src/api/device.js";
import { DEVICE_CONFIGURATIONS, DEVICES, NODES, ResourceClient } from "../../src/k8s/resources.js";
import { freePort } from "../../src/sandbox/processes.js";
import type { Snapshot } from "../../src/status/snapshot.js";
import { eventually, kubeConfig } from "./cluster.js";
import { SpindleProcess } from "./spindle-process.js";

const run = promisify(execFile);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const BIN = resolve(import.meta.dirname, "../../bin/spindle.js");

describe("operations: status, metrics, health, graceful shutdown", () => {
  const kc = kubeConfig();
  const configs = new ResourceClient(kc, DEVICE_CONFIGURATIONS, "spindle-test");
  const devices = new ResourceClient<Device & k8s.KubernetesObject & Record<string, unknown>>(
    kc,
    DEVICES,
    "spindle-test",
  );
  let usb: UsbFixture;
  let agent: SpindleProcess;
  let controller: SpindleProcess;
  let agentPort: number;
  let controllerPort: number;

  beforeAll(async () => {
    usb = await UsbFixture.create();
    agentPort = await freePort();
    controllerPort = await freePort();
    agent = await SpindleProcess.agent("edge-1", ["--http-address", `127.0.0.1:${agentPort}`]);
    controller = await SpindleProcess.start("controller-ops", ["controller", "--lease-name", "ops-test"], {
      SPINDLE_HTTP_ADDRESS: `127.0.0.1:${controllerPort}`,
    });
    await configs.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: "ops-usb" },
      spec: {
        discoveryHandler: { name: "usb", discoveryDetails: { sysfsRoot: usb.sysfsRoot } },
        offlineGraceSeconds: 30,
      },
    } as never);
    await usb.plug({ port: "1-1", vendorId: "10c4", productId: "ea60", serial: "OPS1", product: "CP2102" });
  });

  afterAll(async () => {
    await agent?.stop();
    await controller?.stop();
    await configs.delete("ops-usb").catch(() => undefined);
    await usb?.dispose();
  });

  it("serves /healthz, /readyz and Prometheus /metrics from agent and controller", async () => {
    await eventually("agent ready", async () => (await fetch(`http://127.0.0.1:${agentPort}/readyz`)).ok);
    expect((await fetch(`http://127.0.0.1:${agentPort}/healthz`)).status).toBe(200);
    const metrics = await eventually("the device in the agent's metrics", async () => {
      const text = await (await fetch(`http://127.0.0.1:${agentPort}/metrics`)).text();
      return /spindle_devices\{configuration="ops-usb"\} 1/.test(text) ? text : undefined;
    });
    expect(metrics).toMatch(/spindle_api_writes_total\{resource="devices",verb="apply"\} \d+/);
    expect(metrics).toMatch(/spindle_discovery_latency_seconds_count [1-9]/);
    await eventually("controller ready", async () => (await fetch(`http://127.0.0.1:${controllerPort}/readyz`)).ok);
    const controllerMetrics = await (await fetch(`http://127.0.0.1:${controllerPort}/metrics`)).text();
    expect(controllerMetrics).toMatch(/spindle_reconcile_duration_seconds_count \d+/);
  });

  it("does not plan again when a Node changes in what the controller ignores (heartbeats, labels)", async () => {
    await eventually("controller ready", async () => (await fetch(`http://127.0.0.1:${controllerPort}/readyz`)).ok);
    const reconciles = async () => {
      const text = await (await fetch(`http://127.0.0.1:${controllerPort}/metrics`)).text();
      return Number(/^spindle_reconcile_duration_seconds_count (\d+)/m.exec(text)?.[1]);
    };
    const nodes = new ResourceClient(kc, NODES, "spindle-test-heartbeat");
    const before = await reconciles();
    for (let i = 0; i < 8; i++) {
      await nodes.apply({
        apiVersion: "v1",
        kind: "Node",
        metadata: { name: "edge-1", labels: { "spindle-test/beat": String(i) } },
      } as never);
      await sleep(150);
    }
    await sleep(500);
    // At most one: the controller's periodic resync may fall in the window.
    expect((await reconciles()) - before).toBeLessThanOrEqual(1);
    await nodes.apply({ apiVersion: "v1", kind: "Node", metadata: { name: "edge-1" } } as never);
  });

  it("prints the picture with `spindle status`, as tables and as JSON", async () => {
    await eventually("the Device", async () =>
      (await devices.list()).items.some((d) => d.spec.configurationName === "ops-usb"),
    );
    const env = { ...process.env, KUBECONFIG: inject("kubeconfig") };
    const json = JSON.parse((await run(process.execPath, [BIN, "status", "-o", "json"], { env })).stdout) as Snapshot;
    const config = json.configurations.find((c) => c.name === "ops-usb");
    expect(config?.handler).toBe("usb");
    expect(config?.devices[0]?.nodes).toEqual(["edge-1"]);
    const table = (await run(process.execPath, [BIN, "status"], { env })).stdout;
    expect(table).toMatch(/CONFIGURATION\s+HANDLER\s+ACCEPTED\s+DEVICE\s+NODES/);
    expect(table).toMatch(/ops-usb\s+usb\s+\S+\s+ops-usb-[0-9a-f]{12}\s+edge-1/);
  });

  it("shuts down on SIGTERM without tearing down what it published", async () => {
    const before = (await devices.list()).items.find((d) => d.spec.configurationName === "ops-usb")!;
    await agent.stop("SIGTERM");
    expect(agent.log()).toMatch(/"msg":"stopping"/);
    const after = await devices.get(before.metadata!.name!);
    expect(after.metadata?.uid).toBe(before.metadata?.uid);
    expect(after.spec.nodes).toEqual(["edge-1"]);
  });
});
