import type * as k8s from "@kubernetes/client-node";
import type { DiscoveryProperty } from "../api/device-configuration.js";
import { Api } from "../k8s/api.js";
import { statusCode } from "../k8s/client.js";
import type { ClusterAccess } from "../k8s/kubeconfig.js";

/**
 * Resolves a configuration's discoveryProperties: inline values as they are, valueFrom from the
 * named Secret or ConfigMap key. A missing non-optional reference is an error naming it (never
 * its value).
 */
export async function resolveDiscoveryProperties(
  kc: ClusterAccess,
  properties: DiscoveryProperty[],
): Promise<Record<string, string>> {
  const api = Api.for(kc);
  const read = <T>(kind: string, ref: { namespace: string; name: string }) =>
    api.request<T>(
      "GET",
      `/api/v1/namespaces/${encodeURIComponent(ref.namespace)}/${kind}/${encodeURIComponent(ref.name)}`,
    );
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
        const secret = await read<k8s.V1Secret>("secrets", ref);
        const data = secret.data?.[ref.key];
        value = data === undefined ? secret.stringData?.[ref.key] : Buffer.from(data, "base64").toString("utf8");
      } else {
        const map = await read<k8s.V1ConfigMap>("configmaps", ref);
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
