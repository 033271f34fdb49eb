import { readdir, readFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as k8s from "@kubernetes/client-node";
import { parseAllDocuments } from "yaml";
import { SimulatedDevices } from "../dev/simulated-devices.js";
import { statusCode } from "../k8s/client.js";
import { applyObject } from "../sandbox/client-node.js";
import { ControlPlane } from "../sandbox/control-plane.js";
import { type Collector, startCollector } from "../sandbox/otel-collector.js";
import { ManagedProcess } from "../sandbox/processes.js";
import { readSnapshot, renderSnapshot } from "../status/snapshot.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const EXAMPLES_DIR = join(ROOT, "examples");
export const DEMO_NAMESPACE = "spindle-demo";

/** Keys of the live view, and the device of examples/scenarios/dev.yaml each plugs and unplugs. */
const KEYS: [string, string, string][] = [
  ["1", "camera 1", "cam-1"],
  ["2", "camera 2", "cam-2"],
  ["m", "MQTT sensor", "greenhouse-temp"],
  ["n", "MQTT door", "door-sensor"],
  ["u", "USB 1-1", "usb-1"],
  ["v", "USB 1-2", "usb-2"],
  ["d", "mDNS", "lab-printer"],
];

/** The example objects, with the sandbox's addresses filled in where a real cluster has its own. */
export async function exampleObjects(devices: { mqttUri: string; usbRoot: string }): Promise<k8s.KubernetesObject[]> {
  const objects: k8s.KubernetesObject[] = [];
  for (const file of (await readdir(EXAMPLES_DIR)).filter((f) => f.endsWith(".yaml")).sort()) {
    for (const doc of parseAllDocuments(await readFile(join(EXAMPLES_DIR, file), "utf8"))) {
      const obj = doc.toJS() as
        | (k8s.KubernetesObject & {
            spec?: { discoveryHandler?: { name: string; discoveryDetails: Record<string, unknown> } };
          })
        | null;
      if (!obj) continue;
      const handler = obj.spec?.discoveryHandler;
      if (obj.kind === "DeviceConfiguration" && handler) {
        const details = handler.discoveryDetails;
        if (handler.name === "usb") details.sysfsRoot = devices.usbRoot;
        if (handler.name === "mqtt") details.brokerUri = devices.mqttUri;
        if (handler.name === "onvif" || handler.name === "mdns") details.interface = "127.0.0.1";
      }
      objects.push(obj);
    }
  }
  return objects;
}

/** `spindle dev`: the sandbox, simulated devices, agents, the controller, the examples, and a live view. */
export async function devCommand(options: { otel?: boolean } = {}): Promise<void> {
  const cp = await ControlPlane.start();
  const processes: ManagedProcess[] = [];
  let devices: SimulatedDevices | undefined;
  let collector: Collector | undefined;
  const stop = async () => {
    for (const p of processes.reverse()) await p.stop();
    await collector?.stop(); // after the agents and controller flushed their spans into it
    await devices?.stop().catch(() => undefined);
    await cp.stop();
  };
  try {
    devices = await SimulatedDevices.start();
    const kc = cp.kubeConfig();
    const core = kc.makeApiClient(k8s.CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: DEMO_NAMESPACE } } }).catch((e) => {
      if (statusCode(e) !== 409) throw e;
    });
    await cp.installSpinRuntime(DEMO_NAMESPACE);
    await applyObject(
      kc,
      {
        apiVersion: "v1",
        kind: "Secret",
        metadata: { name: "onvif-credentials", namespace: DEMO_NAMESPACE },
        stringData: devices.credentials,
      } as k8s.KubernetesObject,
      "spindle-dev",
    );
    for (const obj of await exampleObjects({ mqttUri: devices.mqttUri, usbRoot: devices.usbRoot }))
      await applyObject(kc, obj, "spindle-dev");

    // --otel: a real OpenTelemetry Collector on 127.0.0.1 that the agents and the controller export to.
    if (options.otel) collector = await startCollector(join(cp.logDir, "otel"));
    const env = {
      ...process.env,
      KUBECONFIG: cp.kubeconfigPath,
      LOG_LEVEL: process.env.LOG_LEVEL ?? "info",
      ...(collector ? { OTEL_EXPORTER_OTLP_ENDPOINT: collector.endpoint, OTEL_BSP_SCHEDULE_DELAY: "500" } : {}),
    };
    const bin = join(ROOT, "bin", "spindle.js");
    // The USB tree is "plugged into" edge-1 only, so its SpinApps must run there.
    processes.push(
      new ManagedProcess(
        "agent-edge-1",
        process.execPath,
        [bin, "agent", "--node", "edge-1", "--placement", "auto"],
        cp.logDir,
        env,
      ),
    );
    processes.push(
      new ManagedProcess(
        "agent-edge-2",
        process.execPath,
        [bin, "agent", "--node", "edge-2", "--handlers", "onvif,mqtt,mdns", "--placement", "auto"],
        cp.logDir,
        env,
      ),
    );
    processes.push(
      new ManagedProcess(
        "controller",
        process.execPath,
        [bin, "controller", "--lease-namespace", DEMO_NAMESPACE, "--placement", "auto"],
        cp.logDir,
        env,
      ),
    );

    const intro = [
      `KUBECONFIG=${cp.kubeconfigPath}`,
      `KUBECTL=${cp.kubectlPath}`,
      `kubectl: ${cp.kubectlPath} --kubeconfig ${cp.kubeconfigPath} get devices,devicespinapps -A`,
      `logs:    ${cp.logDir}`,
      ...(collector ? [`traces:  ${collector.tracesFile} (OTLP/JSON lines; collector at ${collector.endpoint})`] : []),
    ].join("\n");
    process.stdout.write(`${intro}\n`);
    await liveView(kc, devices, intro);
  } finally {
    process.stdout.write("\nstopping: agents, controller, simulated devices, control plane...\n");
    await stop();
  }
}

async function liveView(kc: k8s.KubeConfig, devices: SimulatedDevices, intro: string): Promise<void> {
  const tty = process.stdin.isTTY && process.stdout.isTTY;
  let message = "";
  let done!: () => void;
  const finished = new Promise<void>((r) => {
    done = r;
  });
  process.once("SIGINT", () => done());
  process.once("SIGTERM", () => done());
  if (tty) {
    process.stdin.setRawMode(true);
    process.stdin.resume();
    process.stdin.on("data", async (data: Buffer) => {
      const key = data.toString();
      if (key === "q" || key === "\u0003") return done();
      const action = KEYS.find(([k]) => k === key);
      if (action) message = await devices.toggle(action[2]).catch((e: Error) => `failed: ${e.message}`);
    });
  }
  const keys = KEYS.map(([k, what]) => `${k}=${what}`).join("  ");
  let stopped = false;
  void finished.then(() => {
    stopped = true;
  });
  while (!stopped) {
    let body: string;
    try {
      body = renderSnapshot(await readSnapshot(kc), process.stdout.columns ?? 120);
    } catch (err) {
      body = `(cannot read the cluster: ${(err as Error).message})`;
    }
    const header = `spindle dev — ${new Date().toLocaleTimeString()}   plug/unplug: ${keys}   q=quit`;
    if (tty)
      process.stdout.write(`\u001b[2J\u001b[H${intro}\n\n${header}\n${message ? `> ${message}\n` : ""}\n${body}\n`);
    else process.stdout.write(`\n${header}\n${body}\n`);
    await Promise.race([new Promise((r) => setTimeout(r, tty ? 1000 : 5000)), finished]);
  }
  if (tty) process.stdin.setRawMode(false);
  process.stdin.pause();
}
