import type * as k8s from "@kubernetes/client-node";
import { Api } from "./api.js";
import type { ClusterAccess } from "./kubeconfig.js";

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

export const NODES: ResourceType = { group: "", version: "v1", plural: "nodes", kind: "Node", namespaced: false };

/** The collection path, across all namespaces unless one is given. */
export function collectionPath(type: ResourceType, namespace?: string): string {
  const base = type.group ? `/apis/${type.group}/${type.version}` : `/api/${type.version}`;
  return type.namespaced && namespace ? `${base}/namespaces/${namespace}/${type.plural}` : `${base}/${type.plural}`;
}

export function objectPath(type: ResourceType, name: string, namespace?: string): string {
  return `${collectionPath(type, type.namespaced ? (namespace ?? "default") : undefined)}/${encodeURIComponent(name)}`;
}

const APPLY = "application/apply-patch+yaml";

type Obj = k8s.KubernetesObject & Record<string, unknown>;

export interface WriteOptions {
  /** Aborts the request (a controller that lost its Lease stops writing at once). */
  signal?: AbortSignal;
}

/**
 * Calls for one kind, over the process's one HTTP/2 connection (api.ts): every write is a
 * server-side apply under a named field manager, lists are paginated, deletes can carry
 * preconditions.
 */
export class ResourceClient<T extends Obj = Obj> {
  private api: Api;

  constructor(
    kc: ClusterAccess,
    readonly type: ResourceType,
    readonly fieldManager: string,
  ) {
    this.api = Api.for(kc);
  }

  /** Every object (all pages), in one namespace or all of them. */
  async list(
    namespace?: string,
    labelSelector?: string,
  ): Promise<{ items: T[]; metadata: { resourceVersion?: string } }> {
    const items: T[] = [];
    let continueToken: string | undefined;
    let resourceVersion: string | undefined;
    do {
      const page = await this.api.request<{ items: T[]; metadata: { resourceVersion?: string; continue?: string } }>(
        "GET",
        collectionPath(this.type, namespace),
        { query: { labelSelector, limit: 500, continue: continueToken } },
      );
      for (const item of page.items) items.push(item);
      continueToken = page.metadata.continue || undefined;
      resourceVersion = page.metadata.resourceVersion;
    } while (continueToken);
    return { items, metadata: { resourceVersion } };
  }

  get(name: string, namespace?: string): Promise<T> {
    return this.api.request<T>("GET", objectPath(this.type, name, namespace));
  }

  /** Server-side apply of the object's spec (and metadata); `force` takes fields from other managers. */
  apply(body: T, force = true, options: WriteOptions = {}): Promise<T> {
    return this.patch("", body, force, options);
  }

  /** Server-side apply of the status subresource. */
  applyStatus(body: T, force = true, options: WriteOptions = {}): Promise<T> {
    return this.patch("/status", body, force, options);
  }

  private patch(subresource: string, body: T, force: boolean, options: WriteOptions): Promise<T> {
    const path = objectPath(this.type, body.metadata!.name!, body.metadata?.namespace) + subresource;
    return this.api.request<T>("PATCH", path, {
      query: { fieldManager: this.fieldManager, force: force ? "true" : undefined },
      body,
      contentType: APPLY,
      signal: options.signal,
    });
  }

  /**
   * Deletes, optionally only if the object is still the given uid and resourceVersion. Answers
   * the object (still there, with a deletionTimestamp, while finalizers run) or a Status (gone).
   */
  async delete(
    name: string,
    namespace?: string,
    preconditions?: { uid?: string; resourceVersion?: string },
    options: WriteOptions = {},
  ): Promise<T | { kind: "Status" }> {
    return this.api.request("DELETE", objectPath(this.type, name, namespace), {
      body: {
        kind: "DeleteOptions",
        apiVersion: "v1",
        propagationPolicy: "Background",
        ...(preconditions ? { preconditions } : {}),
      },
      signal: options.signal,
    });
  }
}
