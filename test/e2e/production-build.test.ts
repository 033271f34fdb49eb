/**
 * The production build discovers what the sources discover. The handlers load their protocol
 * libraries lazily (import() on first use), and a bundled CommonJS package behaves differently
 * there than under tsx: this runs `spindle agent` from a fresh esbuild bundle against the sandbox,
 * a real Mosquitto and a fake ONVIF camera over multicast on loopback.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type * as k8s from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { MqttDeviceSimulator } from "../../discovery-handlers/mqtt/mock.js";
import { type MosquittoBroker, startMosquitto } from "../../discovery-handlers/mqtt/mosquitto.js";
import { FakeCamera, fakeUuid } from "../../discovery-handlers/onvif/fake-camera.js";
import { build } from "../../scripts/build.js";
import type { Device } from "../../src/api/device.js";
import { DEVICE_CONFIGURATIONS, DEVICES, ResourceClient } from "../../src/k8s/resources.js";
import { eventually, kubeConfig } from "./cluster.js";

type Obj = k8s.KubernetesObject & Record<string, unknown>;

describe("the production build (dist/) discovers with lazily loaded handler libraries", () => {
  const kc = kubeConfig();
  const configs = new ResourceClient<Obj>(kc, DEVICE_CONFIGURATIONS, "spindle-test");
  const devices = new ResourceClient<Device & Obj>(kc, DEVICES, "spindle-test");
  let dir: string;
  let agent: ChildProcess;
  let logFile: string;
  let broker: MosquittoBroker;
  let sim: MqttDeviceSimulator;
  let camera: FakeCamera;

  const devicesOf = async (config: string) =>
    (await devices.list()).items.filter((d) => d.spec.configurationName === config);

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "spindle-dist-"));
    await build(join(dir, "dist"));
    broker = await startMosquitto();
    sim = new MqttDeviceSimulator({ url: broker.url });
    camera = await FakeCamera.start({ uuid: fakeUuid(), interface: "127.0.0.1" });
    logFile = join(dir, "agent.log");
    const fd = openSync(logFile, "w");
    agent = spawn(
      process.execPath,
      [join(dir, "dist", "cli.js"), "agent", "--node", "edge-1", "--handlers", "mqtt,onvif"],
      {
        env: {
          ...process.env,
          KUBECONFIG: inject("kubeconfig"),
          LOG_LEVEL: "info",
          NODE_ENV: "production",
          SPINDLE_PLACEMENT: "node-resources",
        },
        stdio: ["ignore", fd, fd],
      },
    );
    closeSync(fd);
    for (const [name, handler, details] of [
      ["dist-mqtt", "mqtt", { brokerUri: broker.url, conventions: { homie: false, sparkplug: false } }],
      ["dist-onvif", "onvif", { interface: "127.0.0.1", discoveryTimeoutSeconds: 0.5, requestTimeoutSeconds: 3 }],
    ] as const)
      await configs.apply({
        apiVersion: "spindle.dev/v1alpha1",
        kind: "DeviceConfiguration",
        metadata: { name },
        spec: { discoveryHandler: { name: handler, discoveryDetails: details }, offlineGraceSeconds: 0 },
      });
  }, 300_000);

  afterAll(async () => {
    agent?.kill("SIGTERM");
    for (const name of ["dist-mqtt", "dist-onvif"]) await configs.delete(name).catch(() => undefined);
    await sim?.close();
    await broker?.stop();
    await camera?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("publishes an MQTT device and an ONVIF camera, with no failed discovery in its log", async () => {
    await sim.homeAssistant({ id: "dist_sensor", component: "sensor", manufacturer: "Dist" });
    const [mqtt] = await eventually("the MQTT Device", async () => {
      const list = await devicesOf("dist-mqtt");
      return list.length === 1 ? list : undefined;
    });
    expect(mqtt!.spec.properties.MQTT_DEVICE_ID).toBe("dist_sensor");
    const [cam] = await eventually("the ONVIF Device", async () => {
      const list = await devicesOf("dist-onvif");
      return list.length === 1 ? list : undefined;
    });
    expect(cam!.spec.properties.ONVIF_DEVICE_UUID).toBeDefined();
    const failures = readFileSync(logFile, "utf8")
      .split("\n")
      .filter((l) => l.includes('"level":50'));
    expect(failures).toEqual([]);
  });
});
