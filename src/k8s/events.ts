import { randomBytes } from "node:crypto";
import type { Logger } from "../log/logger.js";
import { Api } from "./api.js";
import type { ClusterAccess } from "./kubeconfig.js";

export interface EventTarget {
  apiVersion: string;
  kind: string;
  name: string;
  namespace?: string;
  uid?: string;
}

/**
 * Records Kubernetes Events. The same (object, reason, message) is recorded once per process
 * per 10 minutes, so a reconcile loop cannot flood the apiserver.
 */
export class EventRecorder {
  private api: Api;
  private recent = new Map<string, number>();

  constructor(
    kc: ClusterAccess,
    private component: string,
    private log: Logger,
    private host?: string,
  ) {
    this.api = Api.for(kc);
  }

  async record(target: EventTarget, type: "Normal" | "Warning", reason: string, message: string): Promise<void> {
    const key = `${target.uid ?? target.name}|${reason}|${message}`;
    const now = Date.now();
    if ((this.recent.get(key) ?? 0) > now - 600_000) return;
    this.recent.delete(key);
    this.recent.set(key, now);
    // Oldest first: forget the least recent key once the map is full.
    if (this.recent.size > 10_000) this.recent.delete(this.recent.keys().next().value as string);
    // Events about cluster-scoped objects live in "default", as kubectl expects.
    const namespace = target.namespace ?? "default";
    const time = new Date();
    try {
      await this.api.request("POST", `/api/v1/namespaces/${namespace}/events`, {
        body: {
          apiVersion: "v1",
          kind: "Event",
          metadata: { name: `${target.name}.${randomBytes(8).toString("hex")}`, namespace },
          involvedObject: {
            apiVersion: target.apiVersion,
            kind: target.kind,
            name: target.name,
            ...(target.namespace ? { namespace: target.namespace } : {}),
            ...(target.uid ? { uid: target.uid } : {}),
          },
          type,
          reason,
          message: message.slice(0, 1024),
          source: { component: this.component, ...(this.host ? { host: this.host } : {}) },
          reportingComponent: this.component,
          reportingInstance: this.host ?? this.component,
          firstTimestamp: time.toISOString(),
          lastTimestamp: time.toISOString(),
          count: 1,
        },
      });
    } catch (err) {
      this.log.warn({ err: String(err), reason }, "could not record event");
    }
  }
}
