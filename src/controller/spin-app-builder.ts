import { createHash } from "node:crypto";
import { extendedResourceName } from "../agent/device-name.js";
import type { Device } from "../api/device.js";
import type { DeviceSpinApp } from "../api/device-spin-app.js";
import { SPIN_VARIABLE_NAME, SPINAPP_NAME_MAX, type SpinApp, type SpinVariable, spinApp } from "../api/spin-app.js";

export const DSA_LABEL = "spindle.dev/device-spin-app";
export const DEVICE_LABEL = "spindle.dev/device";
export const SPEC_HASH_ANNOTATION = "spindle.dev/spec-hash";

/** A label value (at most 63 characters, alphanumeric at both ends) that names a DeviceSpinApp. */
export function dsaLabelValue(name: string): string {
  if (name.length <= 63) return name; // a DNS subdomain of <= 63 characters is a valid label value
  const hash = createHash("sha256").update(name).digest("hex").slice(0, 10);
  return `${name.slice(0, 63 - hash.length - 1).replace(/[^a-z0-9]+$/, "")}-${hash}`;
}

/** `<deviceSpinApp>-<hash>`: a DNS label of at most 52 characters, the same for the same pair. */
export function spinAppName(dsa: { metadata: { namespace?: string; name?: string } }, deviceName: string): string {
  const key = `${dsa.metadata.namespace}/${dsa.metadata.name}\0${deviceName}`;
  let name = names.get(key);
  if (name === undefined) {
    const hash = createHash("sha256").update(key).digest("hex").slice(0, 10);
    const prefix = dsa.metadata
      .name!.slice(0, SPINAPP_NAME_MAX - hash.length - 1)
      .replace(/\./g, "-")
      .replace(/[^a-z0-9]+$/, "");
    name = `${prefix}-${hash}`;
    names.set(key, name);
  }
  return name;
}

/** Property name -> Spin variable name: lowercase; undefined when Spin cannot use it. */
export function variableName(property: string): string | undefined {
  const name = property.toLowerCase();
  return SPIN_VARIABLE_NAME.test(name) ? name : undefined;
}

export type BuildResult = { ok: true; spinApp: SpinApp } | { ok: false; reason: string };

/**
 * The SpinApp for one DeviceSpinApp bound to one device: the template, the device's properties as
 * Spin variables (the template's own variables win), the extended resource that pins its pods to
 * a node that sees the device, labels and owner references. Pure: the same inputs give the same
 * object, so applying it again changes nothing.
 */
export function buildSpinApp(dsa: DeviceSpinApp, device: Device): BuildResult {
  const deviceName = device.metadata.name!;
  const template = dsa.spec.template;
  const own = (template.spec.variables as SpinVariable[] | undefined) ?? [];
  const taken = new Set(own.map((v) => v.name));
  const fromDevice: SpinVariable[] = [];
  const mappings =
    dsa.spec.variables ??
    Object.keys(device.spec.properties)
      .sort()
      .flatMap((p) => {
        const name = variableName(p);
        return name ? [{ name, fromProperty: p }] : [];
      });
  for (const m of mappings) {
    const value = device.spec.properties[m.fromProperty];
    if (value === undefined || taken.has(m.name)) continue;
    taken.add(m.name);
    fromDevice.push({ name: m.name, value });
  }
  // Opt-in telemetry: the executor that gives Spin its OTLP endpoints, and pod labels a
  // Collector's k8sattributes processor turns into the device of each of the app's spans.
  const telemetry = dsa.spec.telemetry;
  const podLabels = telemetry
    ? {
        podLabels: {
          ...((template.spec.podLabels as Record<string, string> | undefined) ?? {}),
          [DSA_LABEL]: dsaLabelValue(dsa.metadata.name!),
          [DEVICE_LABEL]: deviceName,
        },
      }
    : {};
  const resources =
    (template.spec.resources as { limits?: Record<string, string>; requests?: Record<string, string> } | undefined) ??
    {};
  const candidate = {
    apiVersion: "core.spinkube.dev/v1alpha1",
    kind: "SpinApp",
    metadata: {
      name: spinAppName(dsa, deviceName),
      namespace: dsa.metadata.namespace!,
      labels: {
        ...(template.metadata?.labels ?? {}),
        [DSA_LABEL]: dsaLabelValue(dsa.metadata.name!),
        [DEVICE_LABEL]: deviceName,
      },
      annotations: { ...(template.metadata?.annotations ?? {}) },
      // The Device is the only owner: Kubernetes' garbage collector deletes a dependent only when
      // all of its owners are gone, so a second reference to the (still existing) DeviceSpinApp
      // would keep the SpinApp alive after its Device went while the controller is down. The
      // DeviceSpinApp is linked by label; the controller deletes SpinApps of a deleted one.
      ownerReferences: [
        { apiVersion: "spindle.dev/v1alpha1", kind: "Device", name: deviceName, uid: device.metadata.uid! },
      ],
    },
    spec: {
      ...template.spec,
      ...(telemetry ? { executor: telemetry.executor } : {}),
      ...podLabels,
      variables: [...own, ...fromDevice],
      resources: { ...resources, limits: { ...(resources.limits ?? {}), [extendedResourceName(deviceName)]: "1" } },
    },
  };
  const parsed = spinApp.safeParse(candidate);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    return { ok: false, reason: `template: ${issue.path.join(".")}: ${issue.message}` };
  }
  const hash = createHash("sha256").update(JSON.stringify(parsed.data)).digest("hex").slice(0, 16);
  parsed.data.metadata.annotations = { ...parsed.data.metadata.annotations, [SPEC_HASH_ANNOTATION]: hash };
  return { ok: true, spinApp: parsed.data };
}

/** A bounded map that forgets the least recently used entry first. */
export class LruMap<K, V> {
  private map = new Map<K, V>();
  constructor(private max: number) {}
  get(key: K): V | undefined {
    const v = this.map.get(key);
    if (v !== undefined) {
      this.map.delete(key);
      this.map.set(key, v);
    }
    return v;
  }
  set(key: K, value: V): void {
    this.map.delete(key);
    this.map.set(key, value);
    if (this.map.size > this.max) this.map.delete(this.map.keys().next().value as K);
  }
  get size(): number {
    return this.map.size;
  }
}

const built = new LruMap<string, BuildResult>(20_000);
/** Every plan names every observed SpinApp again: sha256 per app per plan showed in profiles. */
const names = new LruMap<string, string>(20_000);

/**
 * buildSpinApp, remembered per DeviceSpinApp and Device spec (uid + generation; status writes do
 * not change a generation). The controller plans the whole desired state on every change, so
 * this keeps a plan over 10,000 devices from re-validating 10,000 SpinApps each time.
 */
export function buildSpinAppCached(dsa: DeviceSpinApp, device: Device): BuildResult {
  const { uid: du, generation: dg } = dsa.metadata;
  const { uid: vu, generation: vg } = device.metadata;
  if (!du || dg === undefined || !vu || vg === undefined) return buildSpinApp(dsa, device);
  const key = `${du}/${dg}/${vu}/${vg}`;
  let result = built.get(key);
  if (!result) {
    result = buildSpinApp(dsa, device);
    built.set(key, result);
  }
  return result;
}
