import type * as k8s from "@kubernetes/client-node";
import type { DiscoveryProperty } from "../api/device-configuration.js";
import { Cache } from "../k8s/cache.js";
import type { ClusterAccess } from "../k8s/kubeconfig.js";
import type { ResourceType } from "../k8s/resources.js";
import type { Logger } from "../log/logger.js";

const SECRETS: ResourceType = { group: "", version: "v1", plural: "secrets", kind: "Secret", namespaced: true };
const CONFIG_MAPS: ResourceType = {
  group: "",
  version: "v1",
  plural: "configmaps",
  kind: "ConfigMap",
  namespaced: true,
};

/** Keeps nothing of a Secret or ConfigMap but which version it is: its values stay out of memory. */
function versionOnly(obj: k8s.KubernetesObject): k8s.KubernetesObject {
  const m = obj.metadata ?? {};
  return { metadata: { name: m.name, namespace: m.namespace, resourceVersion: m.resourceVersion, uid: m.uid } };
}

/**
 * Watches the Secrets and ConfigMaps a configuration's discoveryProperties reference, each by
 * name (a field-selected watch, which RBAC with resourceNames allows), and calls `onChange`
 * after any of them is created, changed or deleted once all have listed. The caller re-reads
 * and compares the values; this only says "look again".
 */
export class ReferenceWatch {
  private caches: Cache<k8s.KubernetesObject>[] = [];
  private synced = false;

  constructor(kc: ClusterAccess, properties: DiscoveryProperty[], log: Logger, onChange: () => void) {
    const seen = new Set<string>();
    for (const p of properties) {
      const secret = p.valueFrom?.secretKeyRef;
      const ref = secret ?? p.valueFrom?.configMapKeyRef;
      if (!ref) continue;
      const type = secret ? SECRETS : CONFIG_MAPS;
      const key = `${type.plural}/${ref.namespace}/${ref.name}`;
      if (seen.has(key)) continue;
      seen.add(key);
      this.caches.push(
        new Cache(
          kc,
          {
            type,
            namespace: ref.namespace,
            fieldSelector: `metadata.name=${ref.name}`,
            project: versionOnly,
            onChange: () => {
              if (this.synced) onChange();
            },
          },
          log,
        ),
      );
    }
  }

  get empty(): boolean {
    return this.caches.length === 0;
  }

  /** Starts every watch; resolves once all have listed (false if the signal aborted first). */
  async start(signal: AbortSignal): Promise<boolean> {
    for (const c of this.caches) c.start();
    const all = await Promise.all(this.caches.map((c) => c.whenSynced(signal)));
    this.synced = all.every(Boolean);
    return this.synced;
  }

  async stop(): Promise<void> {
    await Promise.all(this.caches.map((c) => c.stop()));
  }
}
