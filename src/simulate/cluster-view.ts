import type * as k8s from "@kubernetes/client-node";
import type { Device } from "../api/device.js";
import { ApiError } from "../k8s/api.js";
import { DEVICE_CONFIGURATIONS, DEVICE_SPIN_APPS, DEVICES, ResourceClient, SPIN_APPS } from "../k8s/resources.js";
import { loadClientNodeConfig } from "../sandbox/client-node.js";

/**
 * What an app team's test asserts on: the Devices Spindle publishes and the SpinApps it makes for
 * a DeviceSpinApp, read from any cluster with Spindle installed, plus polling with a deadline.
 */

type Obj = k8s.KubernetesObject & Record<string, unknown>;
export type DeviceObject = Device & Obj;
export interface SpinAppObject extends Obj {
  spec: { variables?: { name: string; value?: string }[]; [key: string]: unknown };
}

/** The label that links a SpinApp to its DeviceSpinApp. */
export const DEVICE_SPIN_APP_LABEL = "spindle.dev/device-spin-app";
/** The label that names a SpinApp's Device. */
export const DEVICE_LABEL = "spindle.dev/device";

export class SpindleCluster {
  private readonly devicesClient: ResourceClient<DeviceObject>;
  private readonly spinAppsClient: ResourceClient<SpinAppObject>;
  private readonly configurationsClient: ResourceClient<Obj>;
  private readonly deviceSpinAppsClient: ResourceClient<Obj>;

  constructor(
    readonly kubeConfig: k8s.KubeConfig,
    fieldManager = "spindle-testing",
  ) {
    this.devicesClient = new ResourceClient(kubeConfig, DEVICES, fieldManager);
    this.spinAppsClient = new ResourceClient(kubeConfig, SPIN_APPS, fieldManager);
    this.configurationsClient = new ResourceClient(kubeConfig, DEVICE_CONFIGURATIONS, fieldManager);
    this.deviceSpinAppsClient = new ResourceClient(kubeConfig, DEVICE_SPIN_APPS, fieldManager);
  }

  /** From a kubeconfig file, or $KUBECONFIG / ~/.kube/config / in-cluster. */
  static connect(kubeconfig?: string): SpindleCluster {
    return new SpindleCluster(loadClientNodeConfig(kubeconfig));
  }

  /** Devices, all or those of one DeviceConfiguration. */
  async devices(configuration?: string): Promise<DeviceObject[]> {
    const { items } = await this.devicesClient.list();
    return configuration ? items.filter((d) => d.spec.configurationName === configuration) : items;
  }

  /** The SpinApps Spindle made for one DeviceSpinApp. */
  async spinApps(namespace: string, deviceSpinApp: string): Promise<SpinAppObject[]> {
    const { items } = await this.spinAppsClient.list(namespace, `${DEVICE_SPIN_APP_LABEL}=${deviceSpinApp}`);
    return items;
  }

  /** Server-side applies a DeviceConfiguration or DeviceSpinApp (e.g. one pointed at a simulation's broker). */
  apply(object: Obj): Promise<Obj> {
    if (object.kind === "DeviceConfiguration") return this.configurationsClient.apply(object);
    if (object.kind === "DeviceSpinApp") return this.deviceSpinAppsClient.apply(object);
    throw new Error(`apply: expected a DeviceConfiguration or a DeviceSpinApp, got ${object.kind}`);
  }

  /** Deletes a DeviceConfiguration (no namespace) or a DeviceSpinApp; a missing one is fine. */
  async delete(kind: "DeviceConfiguration" | "DeviceSpinApp", name: string, namespace?: string): Promise<void> {
    const client = kind === "DeviceConfiguration" ? this.configurationsClient : this.deviceSpinAppsClient;
    await client.delete(name, namespace).catch((err: unknown) => {
      if (!(err instanceof ApiError && err.code === 404)) throw err;
    });
  }
}

/** A SpinApp's Spin variables as name -> value (values from Secrets are left out). */
export function spinVariables(app: SpinAppObject): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of app.spec.variables ?? []) if (v.value !== undefined) out[v.name] = v.value;
  return out;
}

/**
 * Polls `check` until it returns something other than undefined or false, and returns that;
 * after `timeoutMs` fails with `what` and what it saw last.
 */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined | false> | T | undefined | false,
  options: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 60_000);
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value as T;
      last = value;
    } catch (err) {
      last = err;
    }
    if (Date.now() >= deadline) break;
    await new Promise((r) => setTimeout(r, options.intervalMs ?? 250));
  }
  const seen = last instanceof Error ? last.message : JSON.stringify(last);
  throw new Error(`timed out after ${(options.timeoutMs ?? 60_000) / 1000} s waiting for ${what} (last: ${seen})`);
}
