import type * as k8s from "@kubernetes/client-node";
import type { Device } from "../api/device.js";
import { ApiError } from "../k8s/api.js";
import { Cache } from "../k8s/cache.js";
import {
  DEVICE_CLASSES,
  type DeviceClassObj,
  draServed,
  MANAGED_LABEL,
  type Placement,
  type PlacementOption,
  placementFromClasses,
} from "../k8s/dra.js";
import type { ClusterAccess } from "../k8s/kubeconfig.js";
import { ResourceClient } from "../k8s/resources.js";
import type { Logger } from "../log/logger.js";
import { ResourceSlicePublisher } from "./resource-slices.js";

export interface AgentDraOptions {
  kc: ClusterAccess;
  nodeName: string;
  fieldManager: string;
  placement: PlacementOption;
  /** This node's published Devices (the DevicePublisher's cache). */
  devices: () => readonly (Device & k8s.KubernetesObject)[];
  /** false until the publisher has adopted what it published before a restart. */
  ready: () => boolean;
  /** A Device no longer reported, within its grace period. */
  unreachable: (device: string) => boolean;
  /** The placement in use changed (the node extended resources must follow). */
  onPlacementChange: () => void;
  log: Logger;
}

/**
 * What an agent keeps of a DeviceClass: only whether it maps an extended resource (the placement
 * in use). There is one class per Device in the cluster; whole, they made an agent with no
 * devices of its own grow with the cluster.
 */
function placementOnly(c: DeviceClassObj): DeviceClassObj {
  const mapped = c.spec?.extendedResourceName;
  return {
    metadata: { name: c.metadata?.name, resourceVersion: c.metadata?.resourceVersion },
    ...(mapped ? { spec: { extendedResourceName: mapped } } : {}),
  } as DeviceClassObj;
}

/**
 * The agent's DRA side: its node-local devices as ResourceSlices, and which placement is in use.
 * `auto` follows the controller's DeviceClasses (see placementFromClasses): while none maps an
 * extended resource, the node extended resources stay the way SpinApps reach their devices.
 */
export class AgentDra {
  private classes: Cache<DeviceClassObj> | undefined;
  private slices: ResourceSlicePublisher | undefined;
  private last: Placement | undefined;

  constructor(private options: AgentDraOptions) {}

  /** The placement in use now. */
  mode(): Placement {
    if (!this.slices) return "node-resources";
    if (this.options.placement === "dra") return "dra";
    return this.classes ? placementFromClasses(this.classes.list()) : "node-resources";
  }

  /** Resolves once what it needs has listed; on a cluster without resource.k8s.io/v1 it does nothing. */
  async start(signal?: AbortSignal): Promise<boolean> {
    const { kc, log, placement } = this.options;
    if (placement === "node-resources") return true;
    const served = await draServed(kc, signal);
    if (served === undefined) return false;
    if (!served) {
      if (placement === "dra")
        throw new Error("--placement dra: this cluster does not serve resource.k8s.io/v1 (Kubernetes >= 1.34)");
      log.info("resource.k8s.io/v1 not served: placing SpinApps through node extended resources");
      return true;
    }
    if (placement === "auto") {
      // An agent without RBAC for DeviceClasses (an older chart) keeps the node resources.
      try {
        await new ResourceClient(kc, DEVICE_CLASSES, this.options.fieldManager).list(
          undefined,
          `${MANAGED_LABEL}=true`,
        );
      } catch (err) {
        if (err instanceof ApiError && err.code === 403) {
          log.warn("no permission to read DeviceClasses: placing SpinApps through node extended resources");
          return true;
        }
        // Anything else: the cache below retries its list until it succeeds.
      }
      this.classes = new Cache<DeviceClassObj>(
        kc,
        {
          type: DEVICE_CLASSES,
          labelSelector: `${MANAGED_LABEL}=true`,
          project: placementOnly,
          onChange: () => this.changed(),
        },
        log,
      );
      this.classes.start();
      if (!(await this.classes.whenSynced(signal))) return false;
    }
    this.slices = new ResourceSlicePublisher(
      kc,
      {
        scope: { kind: "node", nodeName: this.options.nodeName },
        fieldManager: this.options.fieldManager,
        devices: this.options.devices,
        enabled: () => this.mode() === "dra",
        ready: this.options.ready,
        unreachable: this.options.unreachable,
      },
      log,
    );
    const synced = await this.slices.start(signal);
    this.last = this.mode();
    log.info({ placement: this.last }, "placement");
    return synced;
  }

  private changed(): void {
    const now = this.mode();
    if (now !== this.last) {
      this.options.log.info({ placement: now, was: this.last }, "placement changed");
      this.last = now;
      this.options.onPlacementChange();
    }
    this.slices?.sync();
  }

  /** Pool and name of every DRA device this node publishes (for the kubelet plugin's health). */
  publishedDevices(): { pool: string; device: string }[] {
    return (this.slices?.list() ?? []).flatMap((s) =>
      s.spec.devices.map((d) => ({ pool: s.spec.pool.name, device: d.name })),
    );
  }

  /** The published Devices may have changed. */
  sync(): void {
    this.slices?.sync();
  }

  idle(): Promise<void> {
    return this.slices?.idle() ?? Promise.resolve();
  }

  async stop(): Promise<void> {
    await Promise.all([this.classes?.stop(), this.slices?.stop()]);
  }
}
