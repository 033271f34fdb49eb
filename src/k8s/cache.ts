import type * as k8s from "@kubernetes/client-node";
import type { Logger } from "../log/logger.js";
import { noteWork } from "../runtime/settled-gc.js";
import { Api, ApiError, type WatchEvent } from "./api.js";
import type { ClusterAccess } from "./kubeconfig.js";
import { collectionPath, type ResourceType } from "./resources.js";

type Obj = k8s.KubernetesObject;

export type ChangeVerb = "add" | "update" | "delete";

export interface CacheOptions<T extends Obj> {
  type: ResourceType;
  /** Only this namespace's objects (a namespaced type); all namespaces when omitted. */
  namespace?: string;
  labelSelector?: string;
  fieldSelector?: string;
  /** What the cache keeps of each object; by default everything but `managedFields`. */
  project?: (obj: T) => T;
  /** Told of every change, after the store holds it (`before`: what it held); reconcilers only queue work here. */
  onChange?: (obj: T, verb: ChangeVerb, before?: T) => void;
  pageSize?: number;
}

export function keyOf(obj: Obj): string {
  return obj.metadata?.namespace ? `${obj.metadata.namespace}/${obj.metadata.name}` : (obj.metadata?.name ?? "");
}

/** Drops what no reconciler reads and is most of an object's size. */
export function withoutManagedFields<T extends Obj>(obj: T): T {
  if (!obj.metadata?.managedFields) return obj;
  const { managedFields: _, ...metadata } = obj.metadata;
  return { ...obj, metadata };
}

/** Numeric resourceVersions (etcd revisions) compare; anything else counts as newer. */
function newer(a: string | undefined, b: string | undefined): boolean {
  const x = Number(a);
  const y = Number(b);
  return !Number.isFinite(x) || !Number.isFinite(y) || x >= y;
}

const jitter = (ms: number) => ms * (0.5 + Math.random());

/**
 * A list-watch cache (a reflector and its store). It lists with pagination and only then counts
 * as synced; a failed list is retried with jittered backoff and never replaces what the store
 * holds. Watches resume from the last resourceVersion they saw (bookmarks included), end after a
 * server-side timeout and start again, and a 410 Gone relists. A relist tells `onChange` about
 * everything that changed meanwhile, deletions included.
 */
export class Cache<T extends Obj> {
  private store = new Map<string, T>();
  private resourceVersion: string | undefined;
  private abort = new AbortController();
  private syncedOnce = false;
  private syncWaiters: (() => void)[] = [];
  private loop: Promise<void> | undefined;
  private api: Api;
  private project: (obj: T) => T;
  /** Lists and watches that failed, for tests and metrics. */
  failures = 0;

  constructor(
    kc: ClusterAccess,
    private options: CacheOptions<T>,
    private log: Logger,
  ) {
    this.api = Api.for(kc);
    this.project = options.project ?? withoutManagedFields;
  }

  get synced(): boolean {
    return this.syncedOnce;
  }

  /** Starts listing and watching in the background. */
  start(): void {
    this.loop ??= this.run();
  }

  /** Resolves after the first successful list (or when the signal aborts, with false). */
  whenSynced(signal?: AbortSignal): Promise<boolean> {
    if (this.syncedOnce) return Promise.resolve(true);
    if (signal?.aborted) return Promise.resolve(false);
    return new Promise((resolve) => {
      const done = () => resolve(true);
      this.syncWaiters.push(done);
      signal?.addEventListener(
        "abort",
        () => {
          this.syncWaiters = this.syncWaiters.filter((w) => w !== done);
          resolve(false);
        },
        { once: true },
      );
    });
  }

  get(name: string, namespace?: string): T | undefined {
    return this.store.get(namespace ? `${namespace}/${name}` : name);
  }

  list(): T[] {
    return [...this.store.values()];
  }

  get size(): number {
    return this.store.size;
  }

  /**
   * What the apiserver answered to our own write is the object as it now is: keep it, unless
   * the watch already brought something newer, so the next reconcile does not act on the copy
   * from before the write.
   */
  observeWrite(obj: T): void {
    const key = keyOf(obj);
    const cached = this.store.get(key);
    if (cached && !newer(obj.metadata?.resourceVersion, cached.metadata?.resourceVersion)) return;
    this.store.set(key, this.project(obj));
  }

  /** Our own delete succeeded: the object is gone (or going) now. */
  observeDelete(name: string, namespace?: string): void {
    this.store.delete(namespace ? `${namespace}/${name}` : name);
  }

  async stop(): Promise<void> {
    this.abort.abort();
    await this.loop;
  }

  private async run(): Promise<void> {
    const signal = this.abort.signal;
    let failures = 0;
    while (!signal.aborted) {
      try {
        await this.relist(signal);
        failures = 0;
        await this.watchUntilGone(signal);
      } catch (err) {
        if (signal.aborted) return;
        failures++;
        this.failures++;
        const delay = jitter(Math.min(200 * 2 ** (failures - 1), 30_000));
        this.log.warn(
          { resource: this.options.type.plural, err: errorText(err), retryMs: Math.round(delay) },
          this.syncedOnce ? "relist failed; keeping the cache as it is" : "first list failed; retrying",
        );
        await sleep(delay, signal);
      }
    }
  }

  private async relist(signal: AbortSignal): Promise<void> {
    const path = collectionPath(this.options.type, this.options.namespace);
    const fresh = new Map<string, T>();
    let continueToken: string | undefined;
    let resourceVersion: string | undefined;
    do {
      const page = await this.api.request<{ items: T[]; metadata: { resourceVersion?: string; continue?: string } }>(
        "GET",
        path,
        {
          query: {
            labelSelector: this.options.labelSelector,
            fieldSelector: this.options.fieldSelector,
            limit: this.options.pageSize ?? 500,
            continue: continueToken,
          },
          signal,
        },
      );
      const kind = this.options.type.kind;
      const apiVersion = this.options.type.group
        ? `${this.options.type.group}/${this.options.type.version}`
        : this.options.type.version;
      for (const item of page.items) {
        // List items come without kind and apiVersion; watch events carry them.
        const obj = this.project({ apiVersion, kind, ...item } as T);
        fresh.set(keyOf(obj), obj);
      }
      continueToken = page.metadata.continue || undefined;
      resourceVersion = page.metadata.resourceVersion;
    } while (continueToken);
    if (signal.aborted) return;
    const old = this.store;
    this.store = fresh;
    this.resourceVersion = resourceVersion;
    const onChange = this.options.onChange;
    if (onChange) {
      for (const [key, obj] of fresh) {
        const before = old.get(key);
        if (!before) onChange(obj, "add");
        else if (before.metadata?.resourceVersion !== obj.metadata?.resourceVersion) onChange(obj, "update", before);
      }
      for (const [key, obj] of old) if (!fresh.has(key)) onChange(obj, "delete");
    }
    if (!this.syncedOnce) {
      this.syncedOnce = true;
      for (const w of this.syncWaiters.splice(0)) w();
    }
  }

  /** Watches from the last resourceVersion until the history it needs is gone (410). */
  private async watchUntilGone(signal: AbortSignal): Promise<void> {
    let failures = 0;
    while (!signal.aborted) {
      let gone = false;
      const timeoutSeconds = Math.round(240 + Math.random() * 240);
      // The server ends the watch after timeoutSeconds; this guards against a stream that hangs.
      const guard = new AbortController();
      const timer = setTimeout(() => guard.abort(), (timeoutSeconds + 30) * 1000);
      const onAbort = () => guard.abort();
      signal.addEventListener("abort", onAbort, { once: true });
      try {
        await this.api.watch<T>(
          collectionPath(this.options.type, this.options.namespace),
          {
            labelSelector: this.options.labelSelector,
            fieldSelector: this.options.fieldSelector,
            resourceVersion: this.resourceVersion,
            allowWatchBookmarks: true,
            timeoutSeconds,
          },
          (event) => {
            if (this.apply(event) === "gone") {
              gone = true;
              guard.abort();
            }
          },
          guard.signal,
        );
        failures = 0;
      } catch (err) {
        if (err instanceof ApiError && err.code === 410) gone = true;
        else if (!signal.aborted) {
          failures++;
          this.failures++;
          const delay = jitter(Math.min(200 * 2 ** (failures - 1), 30_000));
          this.log.warn(
            { resource: this.options.type.plural, err: errorText(err), retryMs: Math.round(delay) },
            "watch failed; resuming",
          );
          await sleep(delay, signal);
        }
      } finally {
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
      }
      if (gone) {
        this.log.info({ resource: this.options.type.plural }, "watch history gone (410); relisting");
        return;
      }
    }
  }

  private apply(event: WatchEvent<T>): "gone" | undefined {
    noteWork();
    if (event.type === "ERROR") {
      const status = event.object as unknown as { code?: number; message?: string };
      if (status.code === 410) return "gone";
      throw new Error(`watch error: ${status.message ?? JSON.stringify(status)}`);
    }
    const rv = event.object.metadata?.resourceVersion;
    if (rv) this.resourceVersion = rv;
    if (event.type === "BOOKMARK") return undefined;
    const obj = this.project(event.object);
    const key = keyOf(obj);
    const cached = this.store.get(key);
    if (event.type === "DELETED") {
      this.store.delete(key);
      this.options.onChange?.(obj, "delete");
      return undefined;
    }
    // An event older than our own write's answer (observeWrite) changes nothing.
    if (cached && !newer(rv, cached.metadata?.resourceVersion)) return undefined;
    this.store.set(key, obj);
    this.options.onChange?.(obj, cached ? "update" : "add", cached);
    return undefined;
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
