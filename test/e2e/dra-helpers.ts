/** What the DRA tests (test/e2e/dra.test.ts, test/scale/dra-10k.test.ts) share: clients and reads of the sandbox. */
import * as k8s from "@kubernetes/client-node";
import type { Slice } from "../../src/agent/resource-slices.js";
import type { Device } from "../../src/api/device.js";
import { Api } from "../../src/k8s/api.js";
import { DEVICE_CLASSES, type DeviceClassObj, RESOURCE_SLICES } from "../../src/k8s/dra.js";
import {
  DEVICE_CONFIGURATIONS,
  DEVICE_SPIN_APPS,
  DEVICES,
  ResourceClient,
  SPIN_APPS,
} from "../../src/k8s/resources.js";
import { kubeConfig } from "./cluster.js";

type Obj = k8s.KubernetesObject & Record<string, unknown>;

export type Claim = {
  metadata: { name: string };
  status?: {
    allocation?: { devices?: { results?: { driver: string; pool: string; device: string }[] } };
    reservedFor?: { resource: string; name: string; uid: string }[];
  };
};

/**
 * Clients of Spindle's and DRA's resources on the sandbox, and reads of them. `namespace` is the
 * test's namespace, read when a read runs (the test creates it in beforeAll).
 */
export function draClients(namespace: () => string) {
  const kc = kubeConfig();
  const api = Api.for(kc);
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const configs = new ResourceClient<Obj>(kc, DEVICE_CONFIGURATIONS, "spindle-test");
  const devices = new ResourceClient<Device & Obj>(kc, DEVICES, "spindle-test");
  const dsas = new ResourceClient<Obj>(kc, DEVICE_SPIN_APPS, "spindle-test");
  const spinApps = new ResourceClient<Obj>(kc, SPIN_APPS, "spindle-test");
  const slices = new ResourceClient<Slice & Obj>(kc, RESOURCE_SLICES, "spindle-test");
  const classes = new ResourceClient<DeviceClassObj & Obj>(kc, DEVICE_CLASSES, "spindle-test");
  return {
    kc,
    api,
    core,
    configs,
    devices,
    dsas,
    spinApps,
    slices,
    classes,
    devicesOf: async (configuration: string) =>
      (await devices.list()).items.filter((d) => d.spec.configurationName === configuration),
    podsOf: async (spinApp: string) =>
      (
        await core.listNamespacedPod({
          namespace: namespace(),
          labelSelector: `core.spinkube.dev/app-name=${spinApp}`,
        })
      ).items,
    /** The ResourceClaim the scheduler made for a pod's extended resources; undefined before it has one. */
    claimOf: async (pod: k8s.V1Pod) => {
      const name = (pod.status as { extendedResourceClaimStatus?: { resourceClaimName?: string } })
        .extendedResourceClaimStatus?.resourceClaimName;
      if (!name) return undefined;
      return api.request<Claim>("GET", `/apis/resource.k8s.io/v1/namespaces/${namespace()}/resourceclaims/${name}`);
    },
  };
}
