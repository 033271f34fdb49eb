import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, writeFile } from "node:fs/promises";
import { Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type * as k8s from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import type { Device } from "../../src/api/device.js";
import {
  DEVICE_CONFIGURATIONS,
  DEVICE_SPIN_APPS,
  DEVICES,
  ResourceClient,
  SPIN_APPS,
} from "../../src/k8s/resources.js";
import { applyObject } from "../../src/sandbox/client-node.js";
import { EXECUTOR } from "../../src/sandbox/control-plane.js";
import { freePort } from "../../src/sandbox/processes.js";
import { stableUuid } from "../../src/simulate/scenario.js";
import type { SimulationEvent } from "../../src/simulate/simulation.js";
import { eventually, kubeConfig, testNamespace } from "./cluster.js";
import { SpindleProcess } from "./spindle-process.js";

/*
 * `spindle simulate` as an app team runs it: a scenario file with a timeline, the real CLI
 * process, a real agent and controller on the sandbox. After each timeline step (read from the
 * simulator's own event output) the Devices and SpinApps must follow within the configuration's
 * offlineGraceSeconds (plus SLACK_MS for the controller and the garbage collector).
 */

type Obj = k8s.KubernetesObject & Record<string, unknown>;
type SpinApp = Obj & { spec: { variables?: { name: string; value?: string }[] } };

const SLACK_MS = 15_000;
const GRACE = { onvif: 3, mqtt: 3, usb: 4 };

const kc = kubeConfig();
const configs = new ResourceClient<Obj>(kc, DEVICE_CONFIGURATIONS, "spindle-test");
const devices = new ResourceClient<Device & Obj>(kc, DEVICES, "spindle-test");
const dsas = new ResourceClient<Obj>(kc, DEVICE_SPIN_APPS, "spindle-test");
const spinApps = new ResourceClient<SpinApp>(kc, SPIN_APPS, "spindle-test");

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = new Socket();
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
    socket.connect(port, "127.0.0.1");
  });
}

describe("spindle simulate: a scenario's timeline against real agents and the controller", () => {
  const run = randomBytes(3).toString("hex");
  const name = `e2e-${run}`;
  const conf = { onvif: `sim-cams-${run}`, mqtt: `sim-mqtt-${run}`, usb: `sim-usb-${run}` };
  const uuids = [stableUuid(`${name}/cam-1`), stableUuid(`${name}/cam-2`)];
  const processes: SpindleProcess[] = [];
  let simulate: SpindleProcess;
  let ns: Awaited<ReturnType<typeof testNamespace>>;
  let brokerPort: number;
  let usbDirectory: string;

  const events = (): SimulationEvent[] =>
    simulate
      .log()
      .split("\n")
      .filter((l) => l.startsWith('{"t":'))
      .map((l) => JSON.parse(l) as SimulationEvent);
  /** Waits for the simulator to report `action` on `device` and returns when it did (ms since the epoch). */
  const step = async (action: string, device?: string, detail?: RegExp) => {
    const event = await eventually(
      `the simulator's "${action} ${device ?? ""}" event`,
      async () =>
        events().find((e) => e.action === action && e.device === device && (!detail || detail.test(e.detail))),
      90_000,
    );
    return { event, seenAt: Date.now() };
  };
  const devicesOf = async (configuration: string) =>
    (await devices.list()).items.filter((d) => d.spec.configurationName === configuration);
  const appsOf = async (dsa: string) =>
    (await spinApps.list(ns.name)).items.filter((s) => s.metadata?.labels?.["spindle.dev/device-spin-app"] === dsa);
  const variable = (app: SpinApp, variableName: string) =>
    app.spec.variables?.find((v) => v.name === variableName)?.value;
  const cameraApp = async (uuid: string) =>
    (await appsOf("viewer")).find((a) => variable(a, "onvif_device_uuid") === uuid);

  beforeAll(async () => {
    ns = await testNamespace("sim");
    brokerPort = await freePort();
    usbDirectory = join(await mkdtemp(join(tmpdir(), "sim-e2e-")), "usb");
    await applyObject(
      kc,
      {
        apiVersion: "v1",
        kind: "Secret",
        metadata: { name: "camera-credentials", namespace: ns.name },
        stringData: { username: "viewer", password: `pw-${run}` },
      } as k8s.KubernetesObject,
      "spindle-test",
    );
    const configuration = (configName: string, handler: string, details: unknown, grace: number, extra = {}) =>
      configs.apply({
        apiVersion: "spindle.dev/v1alpha1",
        kind: "DeviceConfiguration",
        metadata: { name: configName },
        spec: { discoveryHandler: { name: handler, discoveryDetails: details, ...extra }, offlineGraceSeconds: grace },
      });
    const fromSecret = (key: string) => ({
      name: key,
      valueFrom: { secretKeyRef: { name: "camera-credentials", namespace: ns.name, key } },
    });
    await configuration(
      conf.onvif,
      "onvif",
      // Probes rarely: a camera that goes must be noticed by its Bye, not by the next probe round.
      {
        interface: "127.0.0.1",
        uuids: { action: "Include", items: uuids },
        discoveryTimeoutSeconds: 0.5,
        probeIntervalSeconds: 600,
      },
      GRACE.onvif,
      { discoveryProperties: [fromSecret("username"), fromSecret("password")] },
    );
    await configuration(
      conf.mqtt,
      "mqtt",
      {
        brokerUri: `mqtt://127.0.0.1:${brokerPort}`,
        conventions: { homeAssistant: false, homie: true, sparkplug: false },
      },
      GRACE.mqtt,
    );
    await configuration(
      conf.usb,
      "usb",
      { sysfsRoot: join(usbDirectory, "bus/usb/devices"), pollSeconds: 1 },
      GRACE.usb,
    );
    const app = (dsaName: string, configuration: string, variables?: unknown[]) =>
      dsas.apply({
        apiVersion: "spindle.dev/v1alpha1",
        kind: "DeviceSpinApp",
        metadata: { name: dsaName, namespace: ns.name },
        spec: {
          deviceConfiguration: configuration,
          ...(variables ? { variables } : {}),
          template: { spec: { image: "ghcr.io/acme/app:v1", executor: EXECUTOR, replicas: 1 } },
        },
      });
    await app("viewer", conf.onvif, [
      { name: "camera_url", fromProperty: "ONVIF_DEVICE_SERVICE_URL" },
      { name: "onvif_device_uuid", fromProperty: "ONVIF_DEVICE_UUID" },
    ]);
    await app("sensor-app", conf.mqtt);
    await app("serial-app", conf.usb);

    const credentials = { username: "viewer", passwordFromEnv: "CAMERA_PASSWORD" };
    const scenarioFile = join(await mkdtemp(join(tmpdir(), "sim-e2e-")), "scenario.yaml");
    await writeFile(
      scenarioFile,
      stringify({
        name,
        onvif: { interface: "127.0.0.1" },
        mqtt: { broker: { embedded: { host: "127.0.0.1", port: brokerPort } } },
        usb: { directory: usbDirectory },
        devices: [
          { kind: "onvif-camera", name: "cam-1", credentials },
          { kind: "onvif-camera", name: "cam-2", credentials, plugged: false },
          { kind: "homie", name: "sensor", id: `sensor-${run}` },
          { kind: "usb", name: "serial", vendorId: "0403", productId: "6001", serial: `FT${run}` },
        ],
        timeline: [
          { at: "25s", action: "plug", device: "cam-2" },
          { at: "35s", action: "kill", device: "sensor" },
          { at: "45s", action: "flap", device: "serial", every: "1s", for: "6s" },
          { at: "62s", action: "unplug", device: "cam-1" },
          { at: "75s", action: "unplug", device: "serial" },
        ],
      }),
    );
    // The simulator first, so the agent finds the broker on its first try; then the agent and controller.
    simulate = await SpindleProcess.start("simulate", ["simulate", scenarioFile, "-o", "json"], {
      CAMERA_PASSWORD: `pw-${run}`,
    });
    processes.push(simulate);
    await step("plug", "serial");
    processes.push(await SpindleProcess.agent("edge-1", ["--handlers", "onvif,mqtt,usb"]));
    processes.push(await SpindleProcess.start(`controller-${run}`, ["controller", "--lease-namespace", ns.name]));
  });

  afterAll(async () => {
    for (const p of processes) await p.stop();
    for (const c of Object.values(conf)) await configs.delete(c).catch(() => undefined);
    await ns?.remove();
  });

  it("devices plugged at the start get their Devices and SpinApps, with the camera's address as a variable", async () => {
    const cam1 = (await step("plug", "cam-1")).event;
    const xaddr = /at (http:[^\s,]+)/.exec(cam1.detail)?.[1];
    expect(xaddr).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/onvif\/device_service$/);
    const app = await eventually("cam-1's SpinApp", () => cameraApp(uuids[0]!), 25_000);
    expect(variable(app, "camera_url")).toBe(xaddr);
    await eventually("the sensor's SpinApp", async () => (await appsOf("sensor-app")).length === 1, 25_000);
    await eventually("the serial adapter's SpinApp", async () => (await appsOf("serial-app")).length === 1, 25_000);
    const [sensor] = await devicesOf(conf.mqtt);
    expect(sensor?.spec.properties.MQTT_DEVICE_ID).toBe(`sensor-${run}`);
    const [serial] = await devicesOf(conf.usb);
    expect(serial?.spec.properties.USB_SERIAL).toBe(`FT${run}`);
    expect(serial?.spec.nodes).toEqual(["edge-1"]);
  });

  it("plug cam-2: its SpinApp appears", async () => {
    const { seenAt } = await step("plug", "cam-2", /Hello/);
    await eventually("cam-2's SpinApp", () => cameraApp(uuids[1]!), SLACK_MS);
    expect(Date.now() - seenAt).toBeLessThan(SLACK_MS);
  });

  it("kill the sensor (the broker sends its will): Device and SpinApp go within the grace period", async () => {
    const { seenAt } = await step("kill", "sensor");
    await eventually(
      "the sensor's Device and SpinApp to go",
      async () => (await devicesOf(conf.mqtt)).length === 0 && (await appsOf("sensor-app")).length === 0,
      GRACE.mqtt * 1000 + SLACK_MS,
    );
    expect(Date.now() - seenAt).toBeLessThan(GRACE.mqtt * 1000 + SLACK_MS);
  });

  it("flap the serial adapter faster than its grace period: the same SpinApp stays throughout", async () => {
    const [before] = await appsOf("serial-app");
    expect(before, "the serial adapter's SpinApp before the flap").toBeDefined();
    await step("flap", "serial", /^every/);
    const unplugs = () => events().filter((e) => e.device === "serial" && e.action === "unplug").length;
    // Watch through the flap and one grace period after it: the SpinApp is never replaced.
    const until = Date.now() + 6_000 + GRACE.usb * 1000 + 2_000;
    while (Date.now() < until) {
      const apps = await appsOf("serial-app");
      expect(apps.map((a) => a.metadata?.uid)).toEqual([before!.metadata!.uid]);
      await new Promise((r) => setTimeout(r, 300));
    }
    expect(unplugs(), "the adapter really was unplugged several times").toBeGreaterThanOrEqual(3);
    await step("flap", "serial", /^done/);
  });

  it("unplug cam-1 (Bye): its SpinApp goes within the grace period, cam-2's stays", async () => {
    const { seenAt } = await step("unplug", "cam-1", /Bye/);
    await eventually(
      "cam-1's SpinApp to go",
      async () => (await cameraApp(uuids[0]!)) === undefined,
      GRACE.onvif * 1000 + SLACK_MS,
    );
    expect(Date.now() - seenAt).toBeLessThan(GRACE.onvif * 1000 + SLACK_MS);
    expect(await cameraApp(uuids[1]!)).toBeDefined();
  });

  it("the end of the timeline stops everything: the simulator exits 0, nothing of it left, its devices' SpinApps go", async () => {
    await step("unplug", "serial");
    await step("stop");
    expect(await simulate.exitStatus()).toEqual({ code: 0, signal: null });
    expect(await accepts(brokerPort), "the embedded broker is closed").toBe(false);
    expect(existsSync(usbDirectory), "the sysfs tree is removed").toBe(false);
    await eventually(
      "every Device and SpinApp of the scenario to go",
      async () => {
        for (const c of Object.values(conf)) if ((await devicesOf(c)).length > 0) return false;
        return (await spinApps.list(ns.name)).items.length === 0;
      },
      Math.max(...Object.values(GRACE)) * 1000 + SLACK_MS,
    );
  });
});
