/**
 * client-node for what runs from the sources (sandbox, dev, simulate, tests): its typed clients
 * and object API. The agent, controller and status commands never load it (docs/decisions.md).
 */
import { request } from "node:https";
import * as k8s from "@kubernetes/client-node";

/** A client-node KubeConfig (for its typed API clients) from a path, $KUBECONFIG, ~/.kube/config or the service account. */
export function loadClientNodeConfig(path?: string): k8s.KubeConfig {
  const kc = new k8s.KubeConfig();
  if (path) kc.loadFromFile(path);
  else kc.loadFromDefault();
  return kc;
}

/** Server-side apply of any object (the object API looks up its resource path once per kind). */
export async function applyObject<T extends k8s.KubernetesObject>(
  kc: k8s.KubeConfig,
  object: T,
  fieldManager: string,
): Promise<T> {
  const api = k8s.KubernetesObjectApi.makeApiClient(kc);
  return api.patch(object, undefined, undefined, fieldManager, true, k8s.PatchStrategy.ServerSideApply);
}

/**
 * Server-side apply of a raw JSON object to `path` (e.g. /apis/apiextensions.k8s.io/v1/
 * customresourcedefinitions/<name>). Unlike client-node's typed calls it sends the object
 * byte for byte, so schema keys such as `default` and `x-kubernetes-validations` survive.
 */
export async function applyRaw(
  kc: k8s.KubeConfig,
  path: string,
  body: unknown,
  fieldManager: string,
): Promise<unknown> {
  const server = new URL(kc.getCurrentCluster()!.server);
  const options: import("node:https").RequestOptions = {
    method: "PATCH",
    host: server.hostname,
    port: server.port || 443,
    path: `${path}?fieldManager=${encodeURIComponent(fieldManager)}&force=true`,
    headers: { "Content-Type": k8s.PatchStrategy.ServerSideApply, Accept: "application/json" },
  };
  await kc.applyToHTTPSOptions(options);
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(options, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        if ((res.statusCode ?? 500) >= 300) {
          reject(
            Object.assign(new Error(`apply ${path}: HTTP ${res.statusCode}`), { code: res.statusCode, body: text }),
          );
        } else resolve(JSON.parse(text));
      });
    });
    req.on("error", reject);
    req.end(payload);
  });
}
