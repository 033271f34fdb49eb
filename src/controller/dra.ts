import type * as k8s from "@kubernetes/client-node";
import { extendedResourceName } from "../agent/device-name.js";
import { ResourceSlicePublisher } from "../agent/resource-slices.js";
import type { Device } from "../api/device.js";
import { Cache } from "../k8s/cache.js";
import { statusCode } from "../k8s/client.js";
import {
  DEVICE_CLASSES,
  type DeviceClassObj,
  DRIVER,
  draServed,
  MANAGED_LABEL,
  type Placement,
  type PlacementOption,
  placementFromClasses,
} from "../k8s/dra.js";
import { intern, internDeep } from "../k8s/intern.js";
import type { ClusterAccess } from "../k8s/kubeconfig.js";
import { apiVersionOf, DEVICE_CONFIGURATIONS, DEVICES, ResourceClient } from "../k8s/resources.js";
import type { Logger } from "../log/logger.js";
import { apiWrites } from "../observability/metrics.js";

type Obj = k8s.KubernetesObject & Record<string, unknown>;
type ClassObj = DeviceClassObj & Record<string, unknown>;

const QUALIFIED_NAME_PART = /^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;

/** The DeviceClass of one Device: it selects exactly that Device's slots. */
export function deviceClassName(device: string): string {
  return `${device}.spindle.dev`;
}

/** The DeviceClass of a whole DeviceConfiguration (undefined when the name would be too long). */
export function configurationClassName(configuration: string): string | undefined {
  const name = `${configuration}.configuration.spindle.dev`;
  return name.length <= 253 ? name : undefined;
}

/**
 * The DeviceClasses Spindle wants: one per DeviceConfiguration (any of its devices; extended
 * resource `configuration.spindle.dev/<configuration>` where that is a valid name) and one per
 * Device, mapped to the extended resource `spindle.dev/<device>` every SpinApp of that device
 * already asks for. So a SpinApp is the same under both placements; only who answers differs.
 * Each class is owned by its Device or configuration, so the garbage collector removes it with them.
 */
export function desiredDeviceClasses(
  configurations: readonly Obj[],
  devices: readonly (Device & k8s.KubernetesObject)[],
  withMapping: boolean,
): ClassObj[] {
  const out: ClassObj[] = [];
  for (const c of configurations) {
    const config = c.metadata!.name!;
    const name = configurationClassName(config);
    if (!name) continue;
    out.push({
      apiVersion: "resource.k8s.io/v1",
      kind: "DeviceClass",
      metadata: {
        name,
        labels: { [MANAGED_LABEL]: "true" },
        ...(c.metadata?.uid
          ? {
              ownerReferences: [
                {
                  apiVersion: apiVersionOf(DEVICE_CONFIGURATIONS),
                  kind: "DeviceConfiguration",
                  name: config,
                  uid: c.metadata.uid,
                },
              ],
            }
          : {}),
      },
      spec: {
        selectors: [
          {
            cel: {
              expression: `device.driver == "${DRIVER}" && "configuration" in device.attributes["${DRIVER}"] && device.attributes["${DRIVER}"].configuration == "${config}"`,
            },
          },
        ],
        ...(withMapping && QUALIFIED_NAME_PART.test(config)
          ? { extendedResourceName: `configuration.spindle.dev/${config}` }
          : {}),
      },
    });
  }
  for (const d of devices) {
    const device = d.metadata!.name!;
    out.push({
      apiVersion: "resource.k8s.io/v1",
      kind: "DeviceClass",
      metadata: {
        name: deviceClassName(device),
        labels: { [MANAGED_LABEL]: "true" },
        ...(d.metadata?.uid
          ? {
              ownerReferences: [
                { apiVersion: apiVersionOf(DEVICES), kind: "Device", name: device, uid: d.metadata.uid },
              ],
            }
          : {}),
      },
      spec: {
        selectors: [
          {
            cel: { expression: `device.driver == "${DRIVER}" && device.attributes["${DRIVER}"].device == "${device}"` },
          },
        ],
        ...(withMapping ? { extendedResourceName: extendedResourceName(device) } : {}),
      },
    });
  }
  return out;
}

function sameClass(a: ClassObj, b: ClassObj): boolean {
  return (
    JSON.stringify(a.spec?.selectors ?? []) === JSON.stringify(b.spec?.selectors ?? []) &&
    (a.spec?.extendedResourceName ?? "") === (b.spec?.extendedResourceName ?? "") &&
    JSON.stringify((a.metadata?.ownerReferences ?? []).map((o) => o.uid)) ===
      JSON.stringify((b.metadata?.ownerReferences ?? []).map((o) => o.uid))
  );
}

function projectClass(c: ClassObj): ClassObj {
  return {
    apiVersion: intern(c.apiVersion),
    kind: intern(c.kind),
    metadata: {
      name: c.metadata?.name,
      uid: c.metadata?.uid,
      resourceVersion: c.metadata?.resourceVersion,
      labels: internDeep(c.metadata?.labels),
      ownerReferences: internDeep(c.metadata?.ownerReferences),
    },
    spec: c.spec,
  };
}

export interface ControllerDraOptions {
  placement: PlacementOption;
  devices: Cache<Obj>;
  configurations: Cache<Obj>;
  fieldManager: string;
  /** Fences the writes (the Lease). */
  signal: AbortSignal;
  onChange: () => void;
}

/**
 * The controller's DRA side: Spindle's DeviceClasses, the ResourceSlices of shared devices (one
 * publisher for a device many agents see, so no two agents ever write one pool), and the
 * placement in use. `auto` asks for the extended-resource mapping and keeps it only if the
 * apiserver kept `extendedResourceName` (it drops the field when DRAExtendedResource is off).
 */
export class ControllerDra {
  private classes: Cache<ClassObj> | undefined;
  private client: ResourceClient<ClassObj>;
  private shared: ResourceSlicePublisher | undefined;
  /** The apiserver dropped extendedResourceName: the mapping is off in this cluster. */
  private mappingOff = false;
  served = false;

  constructor(
    private kc: ClusterAccess,
    private options: ControllerDraOptions,
    private log: Logger,
  ) {
    this.client = new ResourceClient<ClassObj>(kc, DEVICE_CLASSES, options.fieldManager);
  }

  /** The placement SpinApps get now. */
  mode(): Placement {
    return this.classes ? placementFromClasses(this.classes.list()) : "node-resources";
  }

  async start(signal: AbortSignal): Promise<boolean> {
    const served = await draServed(this.kc, signal);
    if (served === undefined) return false;
    this.served = served;
    if (!served) {
      if (this.options.placement === "dra")
        throw new Error("--placement dra: this cluster does not serve resource.k8s.io/v1 (Kubernetes >= 1.34)");
      this.log.info("resource.k8s.io/v1 not served: placing SpinApps through node extended resources");
      return true;
    }
    this.classes = new Cache<ClassObj>(
      this.kc,
      {
        type: DEVICE_CLASSES,
        labelSelector: `${MANAGED_LABEL}=true`,
        project: projectClass,
        onChange: this.options.onChange,
      },
      this.log,
    );
    this.shared = new ResourceSlicePublisher(
      this.kc,
      {
        scope: { kind: "shared" },
        fieldManager: this.options.fieldManager,
        devices: () => this.options.devices.list() as unknown as (Device & k8s.KubernetesObject)[],
        enabled: () => this.mode() === "dra",
        signal: this.options.signal,
      },
      this.log,
    );
    this.classes.start();
    const [classes, slices] = await Promise.all([this.classes.whenSynced(signal), this.shared.start(signal)]);
    return classes && slices;
  }

  /** Brings DeviceClasses and shared slices to what the Devices and configurations want. */
  async reconcile(): Promise<number> {
    const classes = this.classes;
    if (!classes?.synced) return 0;
    const wantMapping = this.options.placement !== "node-resources" && !this.mappingOff;
    const desired =
      this.options.placement === "node-resources"
        ? []
        : desiredDeviceClasses(
            this.options.configurations.list(),
            this.options.devices.list() as unknown as (Device & k8s.KubernetesObject)[],
            wantMapping,
          );
    let writes = 0;
    const wanted = new Set<string>();
    const applies: typeof desired = [];
    for (const c of desired) {
      wanted.add(c.metadata!.name!);
      const have = classes.get(c.metadata!.name!);
      if (!have || !sameClass(have, c)) applies.push(c);
    }
    // A few writes in flight (streams of the one connection): 10,000 Devices mean 10,000
    // classes, which one at a time take a round trip each.
    await inParallel(applies, CLASS_WRITES_IN_FLIGHT, async (c) => {
      const applied = await this.client.apply(c, true, { signal: this.options.signal });
      apiWrites.inc({ resource: "deviceclasses", verb: "apply" });
      writes++;
      classes.observeWrite(projectClass(applied));
      if (c.spec?.extendedResourceName && !applied.spec?.extendedResourceName && !this.mappingOff) {
        this.mappingOff = true;
        const message =
          "the apiserver dropped DeviceClass.spec.extendedResourceName (DRAExtendedResource is off): placing SpinApps through node extended resources";
        if (this.options.placement === "dra") this.log.error(`--placement dra: ${message}`);
        else this.log.warn(message);
        this.options.onChange();
      }
    });
    const gone = classes.list().filter((c) => !wanted.has(c.metadata!.name!));
    await inParallel(gone, CLASS_WRITES_IN_FLIGHT, async (c) => {
      try {
        await this.client.delete(
          c.metadata!.name!,
          undefined,
          { uid: c.metadata?.uid },
          { signal: this.options.signal },
        );
      } catch (err) {
        if (statusCode(err) !== 404) throw err;
      }
      apiWrites.inc({ resource: "deviceclasses", verb: "delete" });
      writes++;
      classes.observeDelete(c.metadata!.name!);
    });
    this.shared?.sync();
    return writes;
  }

  idle(): Promise<void> {
    return this.shared?.idle() ?? Promise.resolve();
  }

  async stop(): Promise<void> {
    await Promise.all([this.classes?.stop(), this.shared?.stop()]);
  }
}

const CLASS_WRITES_IN_FLIGHT = 8;

/** Runs `work` over `items`, at most `limit` at a time; the first failure is thrown after the rest settle. */
async function inParallel<T>(items: readonly T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: unknown;
  const worker = async () => {
    while (next < items.length && failure === undefined) {
      const item = items[next++]!;
      try {
        await work(item);
      } catch (err) {
        failure ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure !== undefined) throw failure;
}
