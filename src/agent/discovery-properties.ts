import * as k8s from "@kubernetes/client-node";
import type { DiscoveryProperty } from "../api/device-configuration.js";
import { statusCode } from "../k8s/client.js";

/**
 * Resolves a configuration's discoveryProperties: inline values as they are, valueFrom from the
 * named Secret or ConfigMap key. A missing non-optional reference is an error naming it (never
 * its value).
 */
export async function resolveDiscoveryProperties(
  kc: k8s.KubeConfig,
  properties: DiscoveryProperty[],
): Promise<Record<string, string>> {
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const out: Record<string, string> = {};
  for (const p of properties) {
    if (p.value !== undefined) {
      out[p.name] = p.value;
      continue;
    }
    const secretRef = p.valueFrom?.secretKeyRef;
    const mapRef = p.valueFrom?.configMapKeyRef;
    const ref = secretRef ?? mapRef;
    if (!ref) continue;
    const what = `${secretRef ? "Secret" : "ConfigMap"} ${ref.namespace}/${ref.name} key ${ref.key}`;
    let value: string | undefined;
    try {
      if (secretRef) {
        const secret = await core.readNamespacedSecret({ name: ref.name, namespace: ref.namespace });
        const data = secret.data?.[ref.key];
        value = data === undefined ? secret.stringData?.[ref.key] : Buffer.from(data, "base64").toString("utf8");
      } else {
        const map = await core.readNamespacedConfigMap({ name: ref.name, namespace: ref.namespace });
        value = map.data?.[ref.key];
      }
    } catch (err) {
      if (statusCode(err) !== 404)
        throw new Error(`discovery property ${p.name}: cannot read ${what}: ${statusCode(err) ?? err}`);
    }
    if (value === undefined) {
      if (ref.optional) continue;
      throw new Error(`discovery property ${p.name}: ${what} not found`);
    }
    out[p.name] = value;
  }
  return out;
}
