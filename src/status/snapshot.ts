import type * as k8s from "@kubernetes/client-node";
import type { Device } from "../api/device.js";
import type { DeviceConfiguration } from "../api/device-configuration.js";
import type { DeviceSpinApp } from "../api/device-spin-app.js";
import { DSA_LABEL } from "../controller/spin-app-builder.js";
import {
  DEVICE_CLASSES,
  type DeviceClassObj,
  MANAGED_LABEL,
  type Placement,
  placementFromClasses,
} from "../k8s/dra.js";
import type { ClusterAccess } from "../k8s/kubeconfig.js";
import {
  DEVICE_CONFIGURATIONS,
  DEVICE_SPIN_APPS,
  DEVICES,
  ResourceClient,
  type ResourceType,
  SPIN_APPS,
} from "../k8s/resources.js";

type Obj = k8s.KubernetesObject & Record<string, unknown>;

/** What `spindle status` and the `spindle dev` view show: one consistent read of the cluster. */
export interface Snapshot {
  /** How SpinApps reach their devices' nodes: DRA (DeviceClasses map the extended resources) or node extended resources. */
  placement: Placement;
  configurations: {
    name: string;
    handler: string;
    accepted: string;
    devices: { name: string; nodes: string[]; capacity: number; used: number; summary: string }[];
  }[];
  deviceSpinApps: {
    namespace: string;
    name: string;
    configuration: string;
    status: string;
    spinApps: { name: string; device: string; ready: boolean; pods: string[] }[];
  }[];
  events: { time: string; type: string; reason: string; object: string; message: string }[];
}

const SUMMARY_KEYS = [
  "ONVIF_MODEL",
  "ONVIF_DEVICE_IP_ADDRESS",
  "MQTT_DEVICE_ID",
  "MQTT_MODEL",
  "USB_PRODUCT",
  "USB_SERIAL",
  "MDNS_NAME",
];

const replicas = (spec: unknown): number => (spec as { replicas?: number } | undefined)?.replicas ?? 1;

const PODS: ResourceType = { group: "", version: "v1", plural: "pods", kind: "Pod", namespaced: true };
const EVENTS: ResourceType = { group: "", version: "v1", plural: "events", kind: "Event", namespaced: true };

export async function readSnapshot(kc: ClusterAccess, eventLimit = 8): Promise<Snapshot> {
  const client = <T>(type: typeof DEVICES) => new ResourceClient<T & Obj>(kc, type, "spindle-status");
  const [configs, devices, dsas, spinApps, pods, events] = await Promise.all([
    client<DeviceConfiguration>(DEVICE_CONFIGURATIONS).list(),
    client<Device>(DEVICES).list(),
    client<DeviceSpinApp>(DEVICE_SPIN_APPS).list(),
    client<{ spec: unknown; status?: unknown }>(SPIN_APPS).list(),
    new ResourceClient<k8s.V1Pod & Obj>(kc, PODS, "spindle-status").list(undefined, "core.spinkube.dev/app-name"),
    new ResourceClient<k8s.CoreV1Event & Obj>(kc, EVENTS, "spindle-status").list(),
  ]);
  // A cluster without resource.k8s.io/v1 (or a reader without access to it) has node resources only.
  const classes = await new ResourceClient<DeviceClassObj & Obj>(kc, DEVICE_CLASSES, "spindle-status")
    .list(undefined, `${MANAGED_LABEL}=true`)
    .catch(() => ({ items: [] }));
  const managed = spinApps.items.filter((s) => s.metadata?.labels?.[DSA_LABEL]);
  return {
    placement: placementFromClasses(classes.items),
    configurations: configs.items
      .map((c) => ({
        name: c.metadata.name!,
        handler: c.spec.discoveryHandler.name,
        accepted: c.status?.conditions?.find((x) => x.type === "Accepted")?.status ?? "?",
        devices: devices.items
          .filter((d) => d.spec.configurationName === c.metadata.name)
          .map((d) => ({
            name: d.metadata.name!,
            nodes: [...d.spec.nodes].sort(),
            capacity: d.spec.capacity,
            used: d.status?.used ?? 0,
            summary: SUMMARY_KEYS.filter((k) => d.spec.properties[k])
              .map((k) => d.spec.properties[k])
              .slice(0, 2)
              .join(" "),
          }))
          .sort((a, b) => a.name.localeCompare(b.name)),
      }))
      .sort((a, b) => a.name.localeCompare(b.name)),
    deviceSpinApps: dsas.items
      .map((d) => ({
        namespace: d.metadata.namespace!,
        name: d.metadata.name!,
        configuration: d.spec.deviceConfiguration,
        status: d.status?.conditions?.find((c) => c.type === "DevicesAvailable")?.reason ?? "Pending",
        spinApps: managed
          .filter(
            (s) =>
              s.metadata?.namespace === d.metadata.namespace && s.metadata?.labels?.[DSA_LABEL] === d.metadata.name,
          )
          .map((s) => ({
            name: s.metadata!.name!,
            device: s.metadata!.labels!["spindle.dev/device"] ?? "",
            // The SpinApp's own status: the DeviceSpinApp's lists only some of them.
            ready: ((s.status as { readyReplicas?: number } | undefined)?.readyReplicas ?? 0) >= replicas(s.spec),
            pods: pods.items
              .filter(
                (p) =>
                  p.metadata?.namespace === s.metadata!.namespace &&
                  p.metadata?.labels?.["core.spinkube.dev/app-name"] === s.metadata!.name,
              )
              .map(
                (p) =>
                  `${p.spec?.nodeName ?? "-"}:${p.metadata?.deletionTimestamp ? "Terminating" : (p.status?.phase ?? "Pending")}`,
              ),
          }))
          .sort((a, b) => a.name.localeCompare(b.name)),
      }))
      .sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`)),
    events: events.items
      .filter((e) => e.source?.component?.startsWith("spindle") || e.reportingComponent?.startsWith("spindle"))
      .map((e) => ({
        time: new Date(e.lastTimestamp ?? e.eventTime ?? e.metadata?.creationTimestamp ?? 0).toISOString(),
        type: e.type ?? "",
        reason: e.reason ?? "",
        object: `${e.involvedObject.kind}/${e.involvedObject.name}`,
        message: e.message ?? "",
      }))
      .sort((a, b) => b.time.localeCompare(a.time))
      .slice(0, eventLimit),
  };
}

/** The snapshot as plain-text tables. */
export function renderSnapshot(s: Snapshot, width = 120): string {
  const out: string[] = [];
  const cut = (text: string, n: number) => (text.length > n ? `${text.slice(0, n - 1)}…` : text);
  out.push(
    s.placement === "dra"
      ? "PLACEMENT  dra: DeviceClasses map spindle.dev/<device> to the devices' ResourceSlices; the scheduler allocates"
      : "PLACEMENT  node-resources: agents advertise spindle.dev/<device> as node extended resources",
  );
  out.push("");
  out.push("DEVICES");
  out.push(
    table(
      ["CONFIGURATION", "HANDLER", "ACCEPTED", "DEVICE", "NODES", "USED/CAP", "DETAILS"],
      s.configurations.flatMap((c) =>
        c.devices.length === 0
          ? [[c.name, c.handler, c.accepted, "-", "-", "-", ""]]
          : c.devices.map((d) => [
              c.name,
              c.handler,
              c.accepted,
              d.name,
              d.nodes.join(","),
              `${d.used}/${d.capacity}`,
              cut(d.summary, 40),
            ]),
      ),
    ),
  );
  out.push("");
  out.push("DEVICE SPIN APPS");
  out.push(
    table(
      ["NAMESPACE", "DEVICESPINAPP", "STATUS", "SPINAPP", "DEVICE", "READY", "PODS"],
      s.deviceSpinApps.flatMap((d) =>
        d.spinApps.length === 0
          ? [[d.namespace, d.name, d.status, "-", "-", "-", "-"]]
          : d.spinApps.map((a) => [
              d.namespace,
              d.name,
              d.status,
              a.name,
              a.device,
              a.ready ? "yes" : "no",
              a.pods.join(" ") || "-",
            ]),
      ),
    ),
  );
  out.push("");
  out.push("RECENT EVENTS");
  out.push(
    table(
      ["TIME", "TYPE", "REASON", "OBJECT", "MESSAGE"],
      s.events.map((e) => [
        e.time.slice(11, 19),
        e.type,
        e.reason,
        cut(e.object, 40),
        cut(e.message, Math.max(20, width - 80)),
      ]),
    ),
  );
  return out.join("\n");
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (c ?? "").padEnd(widths[i]!))
      .join("  ")
      .trimEnd();
  return [line(header), ...rows.map(line)].join("\n");
}
