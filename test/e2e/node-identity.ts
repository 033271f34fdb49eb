import { randomBytes } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { request } from "node:https";
import { join } from "node:path";
import * as k8s from "@kubernetes/client-node";
import { parse } from "yaml";

/** Where the apiserver puts the node of a pod-bound (or node-bound) ServiceAccount token. */
export const NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name";

/** What the apiserver answered: status code and parsed body (a Status on errors). */
export interface Answer<T = Record<string, unknown>> {
  status: number;
  body: T & { message?: string; reason?: string };
}

/**
 * Raw API calls as `user`, impersonated by the sandbox admin (or as the admin itself when
 * `user` is undefined), optionally with the node extra
 * that a pod-bound token of an agent on `node` carries (the headers `Impersonate-User` and
 * `Impersonate-Extra-authentication.kubernetes.io%2fnode-name`, what `--as` and
 * `--as-user-extra` send). Never throws on an HTTP error: tests look at the answer.
 */
export class Impersonated {
  constructor(
    private kc: k8s.KubeConfig,
    readonly user: string | undefined,
    readonly node?: string,
  ) {}

  async call<T = Record<string, unknown>>(
    method: string,
    path: string,
    body?: unknown,
    options: { contentType?: string; query?: Record<string, string> } = {},
  ): Promise<Answer<T>> {
    const server = new URL(this.kc.getCurrentCluster()!.server);
    const query = new URLSearchParams(options.query ?? {}).toString();
    const headers: Record<string, string> = { Accept: "application/json" };
    if (this.user !== undefined) headers["Impersonate-User"] = this.user;
    if (this.node !== undefined) headers[`Impersonate-Extra-${encodeURIComponent(NODE_NAME_EXTRA)}`] = this.node;
    const payload = body === undefined ? undefined : JSON.stringify(body);
    if (payload !== undefined) headers["Content-Type"] = options.contentType ?? "application/json";
    const opts: import("node:https").RequestOptions = {
      method,
      host: server.hostname,
      port: server.port || 443,
      path: `${path}${query ? `?${query}` : ""}`,
      headers,
    };
    await this.kc.applyToHTTPSOptions(opts);
    // applyToHTTPSOptions sets the admin's own headers; the impersonation ones must survive it.
    Object.assign(opts.headers as Record<string, string>, headers);
    return new Promise((resolve, reject) => {
      const req = request(opts, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let parsed: unknown = {};
          try {
            parsed = text ? JSON.parse(text) : {};
          } catch {
            parsed = { message: text };
          }
          resolve({ status: res.statusCode ?? 0, body: parsed as Answer<T>["body"] });
        });
      });
      req.on("error", reject);
      req.end(payload);
    });
  }

  /** Server-side apply under `fieldManager`, forced, as Spindle's ResourceClient sends it. */
  apply<T = Record<string, unknown>>(path: string, body: unknown, fieldManager: string, force = true) {
    return this.call<T>("PATCH", path, body, {
      contentType: "application/apply-patch+yaml",
      query: { fieldManager, ...(force ? { force: "true" } : {}) },
    });
  }
}

interface KubeconfigFile {
  clusters: { name: string; cluster: Record<string, unknown> }[];
  users?: { name: string; user: Record<string, unknown> }[];
  contexts: { name: string; context: { cluster: string; user: string } }[];
  "current-context": string;
}

/**
 * Writes `<dir>/<name>.kubeconfig`: the admin kubeconfig's cluster with `user` as the only
 * credentials, for kubectl and for processes that read KUBECONFIG.
 */
export async function kubeconfigWithUser(
  adminKubeconfig: string,
  user: Record<string, unknown>,
  name: string,
  dir: string,
): Promise<string> {
  const config = parse(await readFile(adminKubeconfig, "utf8")) as KubeconfigFile;
  const context = config.contexts.find((c) => c.name === config["current-context"]) ?? config.contexts[0]!;
  const cluster = config.clusters.find((c) => c.name === context.context.cluster)!;
  const out = {
    apiVersion: "v1",
    kind: "Config",
    clusters: [cluster],
    users: [{ name, user }],
    contexts: [{ name, context: { cluster: cluster.name, user: name } }],
    "current-context": name,
  };
  const path = join(dir, `${name}.kubeconfig`);
  await writeFile(path, JSON.stringify(out, null, 2), { mode: 0o600 });
  return path;
}

/** The admin's credentials acting as `user` with node extra info (kubectl's `as` and `as-user-extra`). */
export async function impersonatingNodeKubeconfig(
  adminKubeconfig: string,
  user: string,
  node: string,
  dir: string,
): Promise<string> {
  const config = parse(await readFile(adminKubeconfig, "utf8")) as KubeconfigFile;
  const admin = config.users?.[0]?.user;
  if (!admin) throw new Error(`${adminKubeconfig} has no users`);
  return kubeconfigWithUser(
    adminKubeconfig,
    { ...admin, as: user, "as-user-extra": { [NODE_NAME_EXTRA]: [node] } },
    `as-${node}-${user.replaceAll(":", "-")}`,
    dir,
  );
}

/**
 * What the kubelet gives an agent pod on `node`: a Pod of the ServiceAccount bound to the node
 * (KWOK runs it), and a token from the TokenRequest API bound to that Pod, so the apiserver
 * adds the pod's node to the token's user (`authentication.kubernetes.io/node-name`). Returns
 * a kubeconfig with that token and the Pod's name (deleting the Pod revokes the token).
 */
export async function podBoundKubeconfig(
  kc: k8s.KubeConfig,
  adminKubeconfig: string,
  namespace: string,
  serviceAccount: string,
  node: string,
  dir: string,
): Promise<{ kubeconfig: string; pod: string }> {
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const pod = `${`${serviceAccount}-${node}`.slice(0, 56)}-${randomBytes(3).toString("hex")}`;
  const created = await core.createNamespacedPod({
    namespace,
    body: {
      metadata: { name: pod },
      spec: {
        nodeName: node,
        serviceAccountName: serviceAccount,
        containers: [{ name: "agent", image: "ghcr.io/spindle-dev/spindle:test" }],
      },
    },
  });
  const review = await core.createNamespacedServiceAccountToken({
    name: serviceAccount,
    namespace,
    body: {
      spec: {
        audiences: [],
        expirationSeconds: 3600,
        boundObjectRef: { apiVersion: "v1", kind: "Pod", name: pod, uid: created.metadata!.uid },
      },
    },
  });
  const token = review.status?.token;
  if (!token) throw new Error(`no token for ${namespace}/${serviceAccount} bound to pod ${pod}`);
  const kubeconfig = await kubeconfigWithUser(adminKubeconfig, { token }, `${namespace}-${pod}`, dir);
  return { kubeconfig, pod };
}
