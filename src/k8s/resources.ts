import * as k8s from "@kubernetes/client-node";
import { applyOptions } from "./client.js";

/** Where a kind lives in the API: enough to list, watch, apply and delete it. */
export interface ResourceType {
  group: string;
  version: string;
  plural: string;
  kind: string;
  namespaced: boolean;
}

export const DEVICE_CONFIGURATIONS: ResourceType = {
  group: "spindle.dev",
  version: "v1alpha1",
  plural: "deviceconfigurations",
  kind: "DeviceConfiguration",
  namespaced: false,
};
export const DEVICES: ResourceType = {
  group: "spindle.dev",
  version: "v1alpha1",
  plural: "devices",
  kind: "Device",
  namespaced: false,
};
export const DEVICE_SPIN_APPS: ResourceType = {
  group: "spindle.dev",
  version: "v1alpha1",
  plural: "devicespinapps",
  kind: "DeviceSpinApp",
  namespaced: true,
};
export const SPIN_APPS: ResourceType = {
  group: "core.spinkube.dev",
  version: "v1alpha1",
  plural: "spinapps",
  kind: "SpinApp",
  namespaced: true,
};

export function apiVersionOf(type: ResourceType): string {
  return `${type.group}/${type.version}`;
}

export function collectionPath(type: ResourceType): string {
  return `/apis/${type.group}/${type.version}/${type.plural}`;
}

type Obj = k8s.KubernetesObject & Record<string, unknown>;

/**
 * Custom-object calls with the content types Spindle needs: every write is a server-side apply
 * under a named field manager, deletes can carry preconditions.
 */
export class ResourceClient<T extends Obj = Obj> {
  private api: k8s.CustomObjectsApi;

  constructor(
    kc: k8s.KubeConfig,
    readonly type: ResourceType,
    readonly fieldManager: string,
  ) {
    this.api = kc.makeApiClient(k8s.CustomObjectsApi);
  }

  private base(namespace?: string) {
    const { group, version, plural } = this.type;
    return { group, version, plural, ...(this.type.namespaced ? { namespace: namespace ?? "default" } : {}) };
  }

  async list(
    namespace?: string,
    labelSelector?: string,
  ): Promise<{ items: T[]; metadata: { resourceVersion?: string } }> {
    const b = { ...this.base(namespace), ...(labelSelector ? { labelSelector } : {}) };
    const res =
      this.type.namespaced && namespace
        ? await this.api.listNamespacedCustomObject({ ...b, namespace })
        : this.type.namespaced
          ? await this.api.listCustomObjectForAllNamespaces(b)
          : await this.api.listClusterCustomObject(b);
    return res as { items: T[]; metadata: { resourceVersion?: string } };
  }

  async get(name: string, namespace?: string): Promise<T> {
    const b = this.base(namespace);
    return (
      this.type.namespaced
        ? await this.api.getNamespacedCustomObject({ ...b, namespace: b.namespace!, name })
        : await this.api.getClusterCustomObject({ ...b, name })
    ) as T;
  }

  /** Server-side apply of the object's spec (and metadata); `force` takes fields from other managers. */
  async apply(body: T, force = true): Promise<T> {
    const name = body.metadata!.name!;
    const b = this.base(body.metadata?.namespace);
    const args = { ...b, name, body, fieldManager: this.fieldManager, force };
    return (
      this.type.namespaced
        ? await this.api.patchNamespacedCustomObject({ ...args, namespace: b.namespace! }, applyOptions)
        : await this.api.patchClusterCustomObject(args, applyOptions)
    ) as T;
  }

  /** Server-side apply of the status subresource. */
  async applyStatus(body: T, force = true): Promise<T> {
    const name = body.metadata!.name!;
    const b = this.base(body.metadata?.namespace);
    const args = { ...b, name, body, fieldManager: this.fieldManager, force };
    return (
      this.type.namespaced
        ? await this.api.patchNamespacedCustomObjectStatus({ ...args, namespace: b.namespace! }, applyOptions)
        : await this.api.patchClusterCustomObjectStatus(args, applyOptions)
    ) as T;
  }

  /** Deletes, optionally only if the object is still the given uid and resourceVersion. */
  async delete(
    name: string,
    namespace?: string,
    preconditions?: { uid?: string; resourceVersion?: string },
  ): Promise<void> {
    const b = this.base(namespace);
    const body: k8s.V1DeleteOptions = { propagationPolicy: "Background", ...(preconditions ? { preconditions } : {}) };
    if (this.type.namespaced)
      await this.api.deleteNamespacedCustomObject({ ...b, namespace: b.namespace!, name, body });
    else await this.api.deleteClusterCustomObject({ ...b, name, body });
  }
}
