import type * as k8s from "@kubernetes/client-node";
import { Api, ApiError } from "./api.js";
import { sleep } from "./cache.js";
import type { ClusterAccess } from "./kubeconfig.js";
import type { ResourceType } from "./resources.js";

/** The DRA driver name under which Spindle publishes every device. */
export const DRIVER = "spindle.dev";

export const RESOURCE_SLICES: ResourceType = {
  group: "resource.k8s.io",
  version: "v1",
  plural: "resourceslices",
  kind: "ResourceSlice",
  namespaced: false,
};
export const DEVICE_CLASSES: ResourceType = {
  group: "resource.k8s.io",
  version: "v1",
  plural: "deviceclasses",
  kind: "DeviceClass",
  namespaced: false,
};

/** On every DeviceClass and ResourceSlice Spindle manages, so it watches (and deletes) only its own. */
export const MANAGED_LABEL = "resource.spindle.dev/managed";

/**
 * How a SpinApp reaches its device's node. Both ask for the same `spindle.dev/<device>` limit:
 * `node-resources` has the agent advertise it in Node.status; `dra` has a DeviceClass map it
 * (`extendedResourceName`) to the device's ResourceSlice entries, so the scheduler allocates.
 */
export type Placement = "dra" | "node-resources";
export type PlacementOption = Placement | "auto";

export function parsePlacement(value: string | undefined): PlacementOption {
  const v = value ?? "auto";
  if (v === "auto" || v === "dra" || v === "node-resources") return v;
  throw new Error(`--placement must be auto, dra or node-resources, not ${JSON.stringify(value)}`);
}

export interface DeviceClassObj extends k8s.KubernetesObject {
  spec?: { selectors?: { cel?: { expression?: string } }[]; extendedResourceName?: string };
}

/**
 * The placement the cluster is using, read from Spindle's DeviceClasses: the apiserver drops
 * `extendedResourceName` when the DRA extended-resource mapping is off, so a class that kept it
 * is the proof the mapping works. Agents, `spindle status` and the controller read it the same way.
 */
export function placementFromClasses(classes: readonly DeviceClassObj[]): Placement {
  return classes.some((c) => c.spec?.extendedResourceName) ? "dra" : "node-resources";
}

/**
 * Whether the apiserver serves resource.k8s.io/v1 ResourceSlices and DeviceClasses (Kubernetes
 * >= 1.34). A failed request is retried (a 404 is the answer "no"), never taken as "no DRA";
 * undefined when `signal` aborted first.
 */
export async function draServed(kc: ClusterAccess, signal?: AbortSignal): Promise<boolean | undefined> {
  for (let attempt = 0; !signal?.aborted; attempt++) {
    try {
      const list = await Api.for(kc).request<{ resources?: { name: string }[] }>("GET", "/apis/resource.k8s.io/v1", {
        signal,
      });
      const names = new Set((list.resources ?? []).map((r) => r.name));
      return names.has("resourceslices") && names.has("deviceclasses");
    } catch (err) {
      if (err instanceof ApiError && err.code === 404) return false;
      await sleep(Math.min(5000, 200 * 2 ** attempt) * (0.5 + Math.random()), signal);
    }
  }
  return undefined;
}
