import * as k8s from "@kubernetes/client-node";
import type { Logger } from "../log/logger.js";
import { collectionPath, type ResourceClient, type ResourceType } from "./resources.js";

type Obj = k8s.KubernetesObject;

export interface CacheKey {
  name: string;
  namespace?: string;
}

export function keyOf(obj: Obj): string {
  return obj.metadata?.namespace ? `${obj.metadata.namespace}/${obj.metadata.name}` : (obj.metadata?.name ?? "");
}

/**
 * A list-watch cache (client-node's informer) that restarts its watch after errors, including
 * 410 Gone, with a relist. `onChange` gets every added, updated or deleted object; reconcilers
 * use it only to know what to look at again, then read the cache.
 */
export class Cache<T extends Obj> {
  private informer: k8s.Informer<T> & k8s.ObjectCache<T>;
  private stopped = false;
  private synced: Promise<void>;
  private markSynced!: () => void;
  private restartTimer: NodeJS.Timeout | undefined;

  constructor(
    kc: k8s.KubeConfig,
    client: ResourceClient | { type: ResourceType; list: () => Promise<k8s.KubernetesListObject<T>> },
    private log: Logger,
    onChange: (obj: T, verb: "add" | "update" | "delete") => void,
    path?: string,
    labelSelector?: string,
  ) {
    this.synced = new Promise((r) => {
      this.markSynced = r;
    });
    const list = () => client.list() as unknown as Promise<k8s.KubernetesListObject<T>>;
    this.informer = k8s.makeInformer<T>(kc, path ?? collectionPath(client.type), list, labelSelector);
    this.informer.on("add", (o) => onChange(o, "add"));
    this.informer.on("update", (o) => onChange(o, "update"));
    this.informer.on("delete", (o) => onChange(o, "delete"));
    this.informer.on("connect", () => this.markSynced());
    this.informer.on("error", (err) => {
      if (this.stopped) return;
      this.log.warn({ err: String(err), resource: client.type.plural }, "watch failed; relisting");
      clearTimeout(this.restartTimer);
      this.restartTimer = setTimeout(() => {
        if (!this.stopped) this.informer.start().catch(() => undefined);
      }, 1000);
    });
  }

  async start(): Promise<void> {
    await this.informer.start();
    await this.synced;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.restartTimer);
    await this.informer.stop().catch(() => undefined);
  }

  get(name: string, namespace?: string): T | undefined {
    return this.informer.get(name, namespace);
  }

  list(namespace?: string): readonly T[] {
    return this.informer.list(namespace);
  }
}
