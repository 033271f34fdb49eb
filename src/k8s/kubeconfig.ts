import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import type { RequestOptions } from "node:https";
import { homedir } from "node:os";
import { delimiter, dirname, isAbsolute, join } from "node:path";
import { z } from "zod";

/**
 * What Spindle's request layer needs from a kubeconfig: the server, and the TLS and auth options
 * for a request. Spindle's own KubeConfig (below) has it, and so does client-node's, which the
 * sandbox and the tests use.
 */
export interface ClusterAccess {
  getCurrentCluster(): { server: string; proxyUrl?: string } | null;
  applyToHTTPSOptions(opts: RequestOptions): Promise<void>;
}

const ExecConfig = z.object({
  command: z.string(),
  args: z.array(z.string()).nullish(),
  env: z.array(z.object({ name: z.string(), value: z.string() })).nullish(),
  apiVersion: z.string().nullish(),
});

const File = z.object({
  "current-context": z.string().nullish(),
  clusters: z
    .array(
      z.object({
        name: z.string(),
        cluster: z.object({
          server: z.string(),
          "certificate-authority": z.string().nullish(),
          "certificate-authority-data": z.string().nullish(),
          "insecure-skip-tls-verify": z.boolean().nullish(),
          "tls-server-name": z.string().nullish(),
          "proxy-url": z.string().nullish(),
        }),
      }),
    )
    .nullish(),
  users: z
    .array(
      z.object({
        name: z.string(),
        user: z.object({
          token: z.string().nullish(),
          tokenFile: z.string().nullish(),
          "client-certificate": z.string().nullish(),
          "client-certificate-data": z.string().nullish(),
          "client-key": z.string().nullish(),
          "client-key-data": z.string().nullish(),
          username: z.string().nullish(),
          password: z.string().nullish(),
          as: z.string().nullish(),
          exec: ExecConfig.nullish(),
          "auth-provider": z.object({ name: z.string() }).passthrough().nullish(),
        }),
      }),
    )
    .nullish(),
  contexts: z
    .array(z.object({ name: z.string(), context: z.object({ cluster: z.string(), user: z.string().nullish() }) }))
    .nullish(),
});

export interface Cluster {
  server: string;
  ca?: Buffer;
  skipTlsVerify?: boolean;
  tlsServerName?: string;
  proxyUrl?: string;
}

export interface User {
  token?: string;
  tokenFile?: string;
  cert?: Buffer;
  key?: Buffer;
  username?: string;
  password?: string;
  impersonate?: string;
  exec?: z.infer<typeof ExecConfig>;
}

/** Where a pod's service account credentials are mounted. */
export const SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

/** A projected token rotates (the kubelet rewrites it); re-read at most this often. */
const TOKEN_FILE_TTL_MS = 60_000;

/** An exec plugin that has not answered in this long has failed. */
const EXEC_TIMEOUT_MS = 30_000;

interface ExecCredential {
  token?: string;
  cert?: Buffer;
  key?: Buffer;
  /** Epoch ms; undefined: valid for the process. */
  expires?: number;
}

/**
 * A kubeconfig without client-node (which costs ~25 MiB of heap to import): a file, $KUBECONFIG
 * (several files merged, the first to set a value wins, as kubectl does), ~/.kube/config, or the
 * pod's service account. Auth: bearer tokens (inline, tokenFile, rotated service-account token),
 * client certificates, basic auth, impersonation and exec credential plugins; auth-provider
 * plugins are refused with a clear error.
 */
export class KubeConfig implements ClusterAccess {
  private tokenRead: { token: string; at: number } | undefined;
  private execCredential: ExecCredential | undefined;
  private execRunning: Promise<ExecCredential> | undefined;
  /** Times the exec plugin ran, for tests. */
  execRuns = 0;

  constructor(
    readonly cluster: Cluster,
    readonly user: User,
    /** Where the config came from, for error messages. */
    readonly source: string,
  ) {}

  /** From `path`, else $KUBECONFIG, else ~/.kube/config, else the in-cluster service account. */
  static async load(
    path?: string,
    env: NodeJS.ProcessEnv = process.env,
    serviceAccountDir = SERVICE_ACCOUNT_DIR,
  ): Promise<KubeConfig> {
    if (path) return KubeConfig.fromFiles([path]);
    const listed = (env.KUBECONFIG ?? "").split(delimiter).filter(Boolean);
    if (listed.length)
      return KubeConfig.fromFiles(
        listed.filter((p) => existsSync(p)),
        listed.join(delimiter),
      );
    const home = join(env.HOME ?? homedir(), ".kube", "config");
    if (existsSync(home)) return KubeConfig.fromFiles([home]);
    if (env.KUBERNETES_SERVICE_HOST) return KubeConfig.inCluster(env, serviceAccountDir);
    throw new Error("no kubeconfig: pass --kubeconfig, set KUBECONFIG, create ~/.kube/config or run in a pod");
  }

  /** The service account of the pod this runs in. */
  static inCluster(env: NodeJS.ProcessEnv = process.env, dir = SERVICE_ACCOUNT_DIR): KubeConfig {
    const host = env.KUBERNETES_SERVICE_HOST;
    if (!host) throw new Error("not in a pod: KUBERNETES_SERVICE_HOST is not set");
    const hostPart = host.includes(":") ? `[${host}]` : host;
    return new KubeConfig(
      { server: `https://${hostPart}:${env.KUBERNETES_SERVICE_PORT ?? "443"}`, ca: readFileSync(join(dir, "ca.crt")) },
      { tokenFile: join(dir, "token") },
      "in-cluster service account",
    );
  }

  /** Merges kubeconfig files the way kubectl does: for every name and field, the first file wins. */
  static async fromFiles(paths: string[], label = paths.join(delimiter)): Promise<KubeConfig> {
    if (!paths.length) throw new Error(`no kubeconfig file exists among ${label}`);
    let currentContext: string | undefined;
    const clusters = new Map<string, Cluster>();
    const users = new Map<string, User>();
    const contexts = new Map<string, { cluster: string; user?: string }>();
    for (const path of paths) {
      const parsed = File.safeParse((await parseYamlOrJson(readFileSync(path, "utf8"))) ?? {});
      if (!parsed.success) throw new Error(`kubeconfig ${path}: ${z.prettifyError(parsed.error)}`);
      const file = parsed.data;
      const dir = dirname(path);
      const local = (p: string | null | undefined) => (p ? (isAbsolute(p) ? p : join(dir, p)) : undefined);
      currentContext ||= file["current-context"] ?? undefined;
      for (const { name, cluster: c } of file.clusters ?? []) {
        if (clusters.has(name)) continue;
        clusters.set(name, {
          server: c.server,
          ca: bytes(c["certificate-authority-data"], local(c["certificate-authority"])),
          skipTlsVerify: c["insecure-skip-tls-verify"] ?? undefined,
          tlsServerName: c["tls-server-name"] ?? undefined,
          proxyUrl: c["proxy-url"] ?? undefined,
        });
      }
      for (const { name, user: u } of file.users ?? []) {
        if (users.has(name)) continue;
        if (u["auth-provider"])
          throw new Error(
            `kubeconfig ${path}: user ${name}: auth-provider ${u["auth-provider"].name} is not supported; use an exec credential plugin`,
          );
        users.set(name, {
          token: u.token ?? undefined,
          tokenFile: local(u.tokenFile),
          cert: bytes(u["client-certificate-data"], local(u["client-certificate"])),
          key: bytes(u["client-key-data"], local(u["client-key"])),
          username: u.username ?? undefined,
          password: u.password ?? undefined,
          impersonate: u.as ?? undefined,
          // A relative command path in a kubeconfig is relative to the file (kubectl does the same).
          exec: u.exec
            ? { ...u.exec, command: u.exec.command.includes("/") ? local(u.exec.command)! : u.exec.command }
            : undefined,
        });
      }
      for (const { name, context } of file.contexts ?? []) {
        if (!contexts.has(name)) contexts.set(name, { cluster: context.cluster, user: context.user ?? undefined });
      }
    }
    if (!currentContext) throw new Error(`kubeconfig ${label}: no current-context`);
    const context = contexts.get(currentContext);
    if (!context) throw new Error(`kubeconfig ${label}: context ${currentContext} is not defined`);
    const cluster = clusters.get(context.cluster);
    if (!cluster) throw new Error(`kubeconfig ${label}: cluster ${context.cluster} is not defined`);
    const user = context.user ? users.get(context.user) : {};
    if (!user) throw new Error(`kubeconfig ${label}: user ${context.user} is not defined`);
    return new KubeConfig(cluster, user, label);
  }

  getCurrentCluster(): { server: string; proxyUrl?: string } {
    return this.cluster;
  }

  async applyToHTTPSOptions(opts: RequestOptions): Promise<void> {
    const { cluster, user } = this;
    if (cluster.ca) opts.ca = cluster.ca;
    if (cluster.skipTlsVerify) opts.rejectUnauthorized = false;
    if (cluster.tlsServerName) opts.servername = cluster.tlsServerName;
    if (user.cert) opts.cert = user.cert;
    if (user.key) opts.key = user.key;
    opts.headers ??= {};
    const headers = opts.headers as Record<string, string>;
    if (user.impersonate) headers["Impersonate-User"] = user.impersonate;
    if (user.username !== undefined && user.password !== undefined) opts.auth = `${user.username}:${user.password}`;
    const token = user.token ?? (user.tokenFile ? this.fileToken(user.tokenFile) : undefined);
    if (token) headers.Authorization = `Bearer ${token}`;
    if (user.exec) {
      const credential = await this.execCredentials(user.exec);
      if (credential.token) headers.Authorization = `Bearer ${credential.token}`;
      if (credential.cert) opts.cert = credential.cert;
      if (credential.key) opts.key = credential.key;
    }
  }

  private fileToken(path: string): string {
    const now = Date.now();
    if (!this.tokenRead || now - this.tokenRead.at > TOKEN_FILE_TTL_MS)
      this.tokenRead = { token: readFileSync(path, "utf8").trim(), at: now };
    return this.tokenRead.token;
  }

  /** The exec plugin's credential, run again only once it has expired; concurrent callers share a run. */
  private async execCredentials(exec: z.infer<typeof ExecConfig>): Promise<ExecCredential> {
    const cached = this.execCredential;
    if (cached && (cached.expires === undefined || cached.expires > Date.now() + 10_000)) return cached;
    this.execRunning ??= this.runExec(exec).finally(() => {
      this.execRunning = undefined;
    });
    this.execCredential = await this.execRunning;
    return this.execCredential;
  }

  private runExec(exec: z.infer<typeof ExecConfig>): Promise<ExecCredential> {
    this.execRuns++;
    const apiVersion = exec.apiVersion ?? "client.authentication.k8s.io/v1";
    const env = {
      ...process.env,
      ...Object.fromEntries((exec.env ?? []).map((e) => [e.name, e.value])),
      KUBERNETES_EXEC_INFO: JSON.stringify({ apiVersion, kind: "ExecCredential", spec: { interactive: false } }),
    };
    return new Promise((resolve, reject) => {
      execFile(exec.command, exec.args ?? [], { env, timeout: EXEC_TIMEOUT_MS }, (err, stdout, stderr) => {
        const what = `kubeconfig ${this.source}: exec credential plugin ${exec.command}`;
        // The plugin's output may hold the credential: never put it in an error.
        if (err)
          return reject(new Error(`${what} failed: ${err.message.split("\n")[0]} ${stderr.slice(0, 300)}`.trim()));
        let status: {
          token?: string;
          clientCertificateData?: string;
          clientKeyData?: string;
          expirationTimestamp?: string;
        };
        try {
          status = (JSON.parse(stdout) as { status?: typeof status }).status ?? {};
        } catch {
          return reject(new Error(`${what} printed no ExecCredential JSON`));
        }
        if (!status.token && !status.clientCertificateData)
          return reject(new Error(`${what} returned neither a token nor a client certificate`));
        const expires = status.expirationTimestamp ? Date.parse(status.expirationTimestamp) : undefined;
        resolve({
          token: status.token,
          cert: status.clientCertificateData ? Buffer.from(status.clientCertificateData) : undefined,
          key: status.clientKeyData ? Buffer.from(status.clientKeyData) : undefined,
          expires: Number.isNaN(expires) ? undefined : expires,
        });
      });
    });
  }
}

/** JSON (what the sandbox writes) without loading a YAML parser; YAML otherwise. */
async function parseYamlOrJson(text: string): Promise<unknown> {
  if (text.trimStart().startsWith("{")) return JSON.parse(text);
  const { parse } = await import("yaml");
  return parse(text);
}

/** Inline base64 data, else the file's bytes. */
function bytes(data: string | null | undefined, file: string | undefined): Buffer | undefined {
  if (data) return Buffer.from(data, "base64");
  return file ? readFileSync(file) : undefined;
}

/** Kubeconfig from a path, $KUBECONFIG, ~/.kube/config or the in-cluster service account. */
export function loadKubeConfig(path?: string): Promise<KubeConfig> {
  return KubeConfig.load(path);
}
