/**
 * External discovery handlers over Akri's v0 protocol, against the sandbox:
 *  - a handler written in Python from discovery.proto alone (grpcio), so the protocol is Akri's
 *    and not our SDK's dialect: register, stream, change, die, come back;
 *  - a built-in handler run out of process with the TypeScript SDK (`spindle handler usb`):
 *    Devices -> DeviceSpinApp -> SpinApps with its properties as variables -> torn down.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { homedir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { promisify } from "node:util";
import type * as k8s from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { UsbFixture } from "../../discovery-handlers/usb/mock.js";
import type { Device } from "../../src/api/device.js";
import { EXTERNAL_HANDLERS_ANNOTATION } from "../../src/api/device-configuration.js";
import {
  DEVICE_CONFIGURATIONS,
  DEVICE_SPIN_APPS,
  DEVICES,
  NODES,
  ResourceClient,
  SPIN_APPS,
} from "../../src/k8s/resources.js";
import { EXECUTOR } from "../../src/sandbox/control-plane.js";
import { eventually, kubeConfig, testNamespace } from "./cluster.js";
import { SpindleProcess } from "./spindle-process.js";

type Obj = k8s.KubernetesObject & Record<string, unknown>;
type Condition = { type: string; status: string; reason: string; message: string };
const run = promisify(execFile);
const PROTO_DIR = resolve(import.meta.dirname, "../../discovery-handlers/external");
/** grpcio for the Python handler, installed once per machine (PyPI). */
const VENV = join(homedir(), ".cache/spindle/python-grpc-1.85.1");
const PYTHON = join(VENV, "bin/python");

async function pythonWithGrpc(): Promise<string> {
  if (!existsSync(join(VENV, ".ready"))) {
    await run("python3", ["-m", "venv", VENV]);
    await run(join(VENV, "bin/pip"), ["install", "-q", "grpcio==1.85.1", "grpcio-tools==1.85.1"], {
      timeout: 600_000,
    });
    await run("touch", [join(VENV, ".ready")]);
  }
  return PYTHON;
}

/** The Python handler process: commands on stdin, "registered"/"discover ..." lines on stdout. */
class PythonHandler {
  lines: string[] = [];
  private child: ChildProcess;
  constructor(stubs: string, registration: string, socket: string, name: string) {
    this.child = spawn(
      PYTHON,
      [join(import.meta.dirname, "akri-handler/handler.py"), stubs, registration, socket, name],
      {
        stdio: ["pipe", "pipe", "pipe"],
      },
    );
    createInterface({ input: this.child.stdout! }).on("line", (l) => this.lines.push(l));
    this.child.stderr!.on("data", (d: Buffer) => this.lines.push(`stderr: ${d.toString("utf8")}`));
  }
  send(line: string): void {
    this.child.stdin!.write(`${line}\n`);
  }
  devices(list: { id: string; properties?: Record<string, string> }[]): void {
    this.send(`devices ${JSON.stringify(list)}`);
  }
  async kill(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((r) => this.child.once("exit", r));
    this.child.kill("SIGKILL");
    await exited;
  }
}

describe("external discovery handlers (Akri v0)", () => {
  const kc = kubeConfig();
  const configs = new ResourceClient<Obj>(kc, DEVICE_CONFIGURATIONS, "spindle-test");
  const devices = new ResourceClient<Device & Obj>(kc, DEVICES, "spindle-test");
  const nodes = new ResourceClient<Obj>(kc, NODES, "spindle-test");
  const dsas = new ResourceClient<Obj>(kc, DEVICE_SPIN_APPS, "spindle-test");
  const spinApps = new ResourceClient<Obj>(kc, SPIN_APPS, "spindle-test");
  const processes: SpindleProcess[] = [];
  const pythons: PythonHandler[] = [];
  let dir: string;
  let stubs: string;
  let registration: string;
  let agent: SpindleProcess;
  let ns: Awaited<ReturnType<typeof testNamespace>>;
  let usb: UsbFixture | undefined;

  const devicesOf = async (config: string) =>
    (await devices.list()).items.filter((d) => d.spec.configurationName === config);
  const accepted = async (config: string) =>
    ((await configs.get(config)).status as { conditions?: Condition[] } | undefined)?.conditions?.find(
      (c) => c.type === "Accepted",
    );

  beforeAll(async () => {
    dir = await mkdtemp("/tmp/spindle-xh-");
    registration = join(dir, "agent-registration.sock");
    stubs = join(dir, "stubs");
    await run("mkdir", ["-p", stubs]);
    const python = await pythonWithGrpc();
    await run(python, [
      "-m",
      "grpc_tools.protoc",
      `-I${PROTO_DIR}`,
      `--python_out=${stubs}`,
      `--grpc_python_out=${stubs}`,
      "discovery.proto",
    ]);
    ns = await testNamespace("xh");
    agent = await SpindleProcess.agent("edge-1", ["--handlers", "usb", "--registration-socket", registration]);
    processes.push(
      agent,
      await SpindleProcess.start("controller-xh", ["controller", "--lease-namespace", ns.name, "--lease-seconds", "4"]),
    );
    await eventually("the registration socket", async () => existsSync(registration));
  }, 900_000);

  afterAll(async () => {
    for (const p of pythons) await p.kill();
    for (const p of processes) await p.stop();
    await usb?.dispose();
    for (const name of ["xh-python", "xh-sdk"]) await configs.delete(name).catch(() => undefined);
    await ns?.remove();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("a Python handler from discovery.proto alone: register, stream, change, die (grace), come back", async () => {
    await configs.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: "xh-python" },
      spec: {
        discoveryHandler: { name: "pyecho", discoveryDetails: { descriptions: ["foo", "bar"] } },
        offlineGraceSeconds: 4,
      },
    });
    const unknown = await eventually("Accepted=False before any handler registers", async () => {
      const c = await accepted("xh-python");
      return c?.status === "False" ? c : undefined;
    });
    expect(unknown.reason).toBe("UnknownHandler");

    const socket = join(dir, "pyecho.sock");
    const py = new PythonHandler(stubs, registration, socket, "pyecho");
    pythons.push(py);
    await eventually("the Python handler registered", async () => py.lines.includes("registered") || undefined);
    await eventually(`Discover called (${py.lines.join(" | ")})`, async () =>
      py.lines.some((l) => l.startsWith("discover ")),
    );
    // discoveryDetails travel as YAML text, as Akri sends them.
    expect(py.lines.find((l) => l.startsWith("discover "))).toContain("descriptions:\\n  - foo\\n  - bar");
    const edge1 = await nodes.get("edge-1");
    expect(edge1.metadata?.annotations?.[EXTERNAL_HANDLERS_ANNOTATION]).toBe("pyecho");
    const ok = await eventually("Accepted=True once registered", async () => {
      const c = await accepted("xh-python");
      return c?.status === "True" ? c : undefined;
    });
    expect(ok.message).toMatch(/external handler pyecho is registered on 1 node\(s\) \(edge-1\)/);

    py.devices([
      { id: "foo", properties: { DEBUG_ECHO_DESCRIPTION: "foo" } },
      { id: "bar", properties: { DEBUG_ECHO_DESCRIPTION: "bar" } },
    ]);
    const two = await eventually("two Devices", async () => {
      const list = await devicesOf("xh-python");
      return list.length === 2 ? list : undefined;
    });
    for (const d of two) {
      expect(d.spec.handler).toBe("pyecho");
      expect(d.spec.shared).toBe(true); // from the registration
      expect(d.spec.nodes).toEqual(["edge-1"]);
      expect(d.spec.properties.DEBUG_ECHO_DESCRIPTION).toBe(d.spec.id);
    }

    // The next list replaces the last: foo is no longer reported, kept for its grace period.
    py.devices([{ id: "bar", properties: { DEBUG_ECHO_DESCRIPTION: "bar" } }]);
    const dropped = Date.now();
    await eventually("foo gone after its grace", async () => {
      const ids = (await devicesOf("xh-python")).map((d) => d.spec.id);
      return ids.length === 1 && ids[0] === "bar";
    });
    expect(Date.now() - dropped).toBeGreaterThanOrEqual(3500);

    // The handler dies: bar stays for the grace period, then goes.
    await py.kill();
    const died = Date.now();
    await new Promise((r) => setTimeout(r, 1500));
    expect((await devicesOf("xh-python")).map((d) => d.spec.id)).toEqual(["bar"]);
    await eventually("bar gone after the grace period", async () => (await devicesOf("xh-python")).length === 0);
    expect(Date.now() - died).toBeGreaterThanOrEqual(3500);

    // It comes back and registers again: the running discovery reconnects.
    const again = new PythonHandler(stubs, registration, socket, "pyecho");
    pythons.push(again);
    await eventually("registered again", async () => again.lines.includes("registered") || undefined);
    again.devices([{ id: "bar", properties: { DEBUG_ECHO_DESCRIPTION: "bar" } }]);
    await eventually("bar back", async () => (await devicesOf("xh-python")).length === 1);
    expect(agent.entries().filter((e) => e.level === 50 && /uncaught|crash/i.test(String(e.msg)))).toEqual([]);
  });

  it("the SDK runs a built-in handler out of process: Devices -> SpinApps with its properties -> torn down", async () => {
    usb = await UsbFixture.create();
    const handler = await SpindleProcess.start("handler-usb", [
      "handler",
      "usb",
      "--registration-socket",
      registration,
      "--name",
      "usb-remote",
    ]);
    processes.push(handler);
    await configs.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: "xh-sdk" },
      spec: {
        discoveryHandler: { name: "usb-remote", discoveryDetails: { sysfsRoot: usb.sysfsRoot, pollSeconds: 1 } },
        offlineGraceSeconds: 2,
      },
    });
    await dsas.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceSpinApp",
      metadata: { name: "remote-reader", namespace: ns.name },
      spec: {
        deviceConfiguration: "xh-sdk",
        template: { spec: { image: "ghcr.io/acme/reader:v1", executor: EXECUTOR, replicas: 1 } },
      },
    });
    await usb.plug({ port: "1-1", vendorId: "0403", productId: "6001", serial: "REMOTE1" });
    const device = await eventually("the Device from the out-of-process handler", async () => {
      const list = await devicesOf("xh-sdk");
      return list.length === 1 ? list[0] : undefined;
    });
    expect(device.spec.handler).toBe("usb-remote");
    expect(device.spec.shared).toBe(false); // the usb handler registers as not shared
    expect(device.spec.properties.USB_SERIAL).toBe("REMOTE1");
    const app = await eventually("a SpinApp with the handler's properties as variables", async () => {
      const list = (await spinApps.list(ns.name)).items;
      return list.length === 1 ? list[0] : undefined;
    });
    const variables = (app.spec as { variables: { name: string; value: string }[] }).variables;
    expect(variables).toContainEqual({ name: "usb_serial", value: "REMOTE1" });
    expect(variables).toContainEqual({ name: "usb_vendor_id", value: "0403" });

    await usb.unplug("1-1");
    await eventually("Device gone after the grace period", async () => (await devicesOf("xh-sdk")).length === 0);
    await eventually("SpinApp torn down", async () => (await spinApps.list(ns.name)).items.length === 0);
  });
});
