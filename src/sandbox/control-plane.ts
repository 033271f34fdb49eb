import { generateKeyPairSync, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { type RequestOptions, request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as k8s from "@kubernetes/client-node";
import { parseAllDocuments } from "yaml";
import { customResourceDefinition, KINDS } from "../api/crds.js";
import { statusCode } from "../k8s/client.js";
import { type Binaries, CONTROL_PLANE_MODULES, ensureBinaries } from "./build.js";
import { applyObject, applyRaw, loadClientNodeConfig } from "./client-node.js";
import { freePort, ManagedProcess, waitFor } from "./processes.js";

export const SANDBOX_NODES = ["edge-1", "edge-2"];
export const RUNTIME_CLASS = "wasmtime-spin-v2";
export const EXECUTOR = "containerd-shim-spin";
const FIELD_MANAGER = "spindle-sandbox";
/**
 * DRA as Spindle uses it: the extended-resource mapping (SpinApps ask for their device through
 * plain `resources.limits`) and device taints. GA and on by default in 1.37; named so the
 * sandbox says what it relies on, on every component that reads them.
 */
const DRA_FEATURE_GATES = "--feature-gates=DRAExtendedResource=true,DRADeviceTaints=true,DRADeviceTaintRules=true";

export interface ControlPlaneOptions {
  nodes?: string[];
  log?: (line: string) => void;
  /** A live build progress line on a terminal; default: on when `log` is not given (the commands). */
  progress?: boolean;
}

type Component = "etcd" | "kube-apiserver" | "kube-controller-manager" | "kube-scheduler" | "kwok" | "spin-operator";

/**
 * A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager,
 * kube-scheduler, KWOK (simulated nodes whose pods run), spin-operator with SpinKube's CRDs, and
 * Spindle's CRDs. Everything lives in one temp directory that `stop()` removes.
 */
export class ControlPlane {
  readonly kubeconfigPath: string;
  readonly kubectlPath: string;
  private processes = new Map<Component, ManagedProcess>();
  private ports!: Record<"etcd" | "etcdPeer" | "apiserver" | "kcm" | "scheduler" | "kwok" | "spinOperator", number>;
  private token = randomBytes(24).toString("hex");
  private kwokStageFiles: string[] = [];

  private constructor(
    readonly dir: string,
    readonly bin: Binaries,
    readonly nodes: string[],
    private log: (line: string) => void,
  ) {
    this.kubeconfigPath = join(dir, "kubeconfig");
    this.kubectlPath = bin.kubectl!;
  }

  static async start(options: ControlPlaneOptions = {}): Promise<ControlPlane> {
    const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
    const bin = await ensureBinaries(log, {
      modules: CONTROL_PLANE_MODULES,
      progress: options.progress ?? options.log === undefined,
    });
    const dir = await mkdtemp(join(tmpdir(), "spindle-sandbox-"));
    const cp = new ControlPlane(dir, bin, options.nodes ?? SANDBOX_NODES, log);
    try {
      await cp.boot();
    } catch (err) {
      await cp.stop();
      throw err;
    }
    return cp;
  }

  kubeConfig(): k8s.KubeConfig {
    return loadClientNodeConfig(this.kubeconfigPath);
  }

  get logDir(): string {
    return join(this.dir, "logs");
  }

  private async boot(): Promise<void> {
    const started = Date.now();
    await mkdir(this.logDir, { recursive: true });
    await mkdir(join(this.dir, "pki"), { recursive: true });
    this.ports = {
      etcd: await freePort(),
      etcdPeer: await freePort(),
      apiserver: await freePort(),
      kcm: await freePort(),
      scheduler: await freePort(),
      kwok: await freePort(),
      spinOperator: await freePort(),
    };
    const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    await writeFile(join(this.dir, "pki", "sa.key"), privateKey.export({ type: "pkcs1", format: "pem" }), {
      mode: 0o600,
    });
    await writeFile(join(this.dir, "tokens.csv"), `${this.token},admin,admin,"system:masters"\n`, { mode: 0o600 });

    await this.startEtcd();
    await this.startApiServer();
    await this.writeKubeconfig();
    const stages = this.bin.kwokStages!;
    this.kwokStageFiles = (await readdir(stages)).filter((f) => f.endsWith(".yaml")).map((f) => join(stages, f));
    this.startComponent("kube-controller-manager");
    this.startComponent("kube-scheduler");
    this.startComponent("kwok");
    await this.installCrds();
    this.startComponent("spin-operator");
    await this.createNodes();
    await this.installSpinRuntime("default");
    await this.waitForComponents();
    this.log(`control plane ready in ${((Date.now() - started) / 1000).toFixed(1)} s (${this.dir})`);
  }

  private spawn(name: Component, args: string[]): ManagedProcess {
    const p = new ManagedProcess(name, this.bin[name]!, args, this.logDir);
    this.processes.set(name, p);
    return p;
  }

  /** Fails fast with the component's log tail when it exits during start-up. */
  private describe(name: Component): () => string {
    return () => {
      const p = this.processes.get(name);
      if (!p) return "";
      const tail = p.tail(20);
      const hint = /address already in use|bind: /.test(tail)
        ? "\nA port it needs is in use: stop the other process or retry (ports are picked at random)."
        : "";
      return `${name} ${p.alive ? "is running" : `exited (${p.exitCode})`}; last lines of ${p.logFile}:\n${tail}${hint}`;
    };
  }

  private async waitAlive(name: Component, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
    await waitFor(
      name,
      async () => {
        const p = this.processes.get(name);
        if (p && !p.alive) throw new Error(`${name} exited with code ${p.exitCode}`);
        return check();
      },
      timeoutMs,
      this.describe(name),
      150,
    );
  }

  async startEtcd(): Promise<void> {
    const client = `http://127.0.0.1:${this.ports.etcd}`;
    const peer = `http://127.0.0.1:${this.ports.etcdPeer}`;
    this.spawn("etcd", [
      "--name=sandbox",
      `--data-dir=${join(this.dir, "etcd")}`,
      `--listen-client-urls=${client}`,
      `--advertise-client-urls=${client}`,
      `--listen-peer-urls=${peer}`,
      `--initial-advertise-peer-urls=${peer}`,
      `--initial-cluster=sandbox=${peer}`,
      "--unsafe-no-fsync",
      "--log-level=warn",
    ]);
    await this.waitAlive(
      "etcd",
      async () => {
        const res = await fetch(`${client}/health`);
        return res.ok;
      },
      30_000,
    );
  }

  async startApiServer(): Promise<void> {
    const pki = join(this.dir, "pki");
    this.spawn("kube-apiserver", [
      `--etcd-servers=http://127.0.0.1:${this.ports.etcd}`,
      "--bind-address=127.0.0.1",
      "--advertise-address=127.0.0.1",
      `--secure-port=${this.ports.apiserver}`,
      `--cert-dir=${pki}`,
      `--token-auth-file=${join(this.dir, "tokens.csv")}`,
      "--authorization-mode=Node,RBAC",
      "--service-cluster-ip-range=10.0.0.0/24",
      "--allow-privileged=true",
      "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
      `--service-account-key-file=${join(pki, "sa.key")}`,
      `--service-account-signing-key-file=${join(pki, "sa.key")}`,
      "--endpoint-reconciler-type=none",
      "--profiling=false",
      "--runtime-config=resource.k8s.io/v1=true",
      DRA_FEATURE_GATES,
    ]);
    await this.waitAlive("kube-apiserver", () => this.apiserverReady(), 120_000);
  }

  private async apiserverReady(): Promise<boolean> {
    const caFile = join(this.dir, "pki", "apiserver.crt");
    if (!existsSync(caFile)) return false;
    return httpsOk({
      port: this.ports.apiserver,
      path: "/readyz",
      ca: await readFile(caFile),
      headers: { Authorization: `Bearer ${this.token}` },
    });
  }

  private async writeKubeconfig(): Promise<void> {
    const kubeconfig = {
      apiVersion: "v1",
      kind: "Config",
      clusters: [
        {
          name: "sandbox",
          cluster: {
            server: `https://127.0.0.1:${this.ports.apiserver}`,
            "certificate-authority": join(this.dir, "pki", "apiserver.crt"),
          },
        },
      ],
      users: [{ name: "admin", user: { token: this.token } }],
      contexts: [{ name: "sandbox", context: { cluster: "sandbox", user: "admin" } }],
      "current-context": "sandbox",
    };
    await writeFile(this.kubeconfigPath, JSON.stringify(kubeconfig, null, 2), { mode: 0o600 });
  }

  private componentArgs(name: Component): string[] {
    const kc = this.kubeconfigPath;
    const delegated = [`--kubeconfig=${kc}`, `--authentication-kubeconfig=${kc}`, `--authorization-kubeconfig=${kc}`];
    switch (name) {
      case "kube-controller-manager":
        return [
          ...delegated,
          "--leader-elect=false",
          "--bind-address=127.0.0.1",
          `--secure-port=${this.ports.kcm}`,
          `--service-account-private-key-file=${join(this.dir, "pki", "sa.key")}`,
          `--root-ca-file=${join(this.dir, "pki", "apiserver.crt")}`,
          "--controllers=*",
          DRA_FEATURE_GATES,
        ];
      case "kube-scheduler":
        return [
          ...delegated,
          "--leader-elect=false",
          "--bind-address=127.0.0.1",
          `--secure-port=${this.ports.scheduler}`,
          DRA_FEATURE_GATES,
        ];
      case "kwok":
        return [
          `--kubeconfig=${kc}`,
          // Node and pod stages (KWOK 0.8 has none built in): nodes Ready, pods Running, deletes done.
          ...this.kwokStageFiles.map((f) => `--config=${f}`),
          "--manage-all-nodes=true",
          "--cidr=10.244.0.1/16",
          "--node-ip=127.0.0.1",
          `--server-address=127.0.0.1:${this.ports.kwok}`,
          // Node leases renewed every 10 s, as a kubelet does: without them the node lifecycle
          // controller marks every node NotReady after its grace period, and pods flip with them.
          "--node-lease-duration-seconds=40",
        ];
      case "spin-operator":
        return [
          `--kubeconfig=${kc}`,
          "--metrics-bind-address=0",
          `--health-probe-bind-address=127.0.0.1:${this.ports.spinOperator}`,
          "--leader-elect=false",
          "--enable-webhooks=false",
        ];
      default:
        throw new Error(`${name} has no generic start`);
    }
  }

  private startComponent(name: Component): void {
    this.spawn(name, this.componentArgs(name));
  }

  private async installCrds(): Promise<void> {
    const kc = this.kubeConfig();
    const crds: k8s.KubernetesObject[] = KINDS.map((k) => customResourceDefinition(k) as k8s.KubernetesObject);
    const crdDir = this.bin.spinOperatorCrds!;
    for (const file of (await readdir(crdDir)).filter((f) => f.endsWith(".yaml"))) {
      for (const doc of parseAllDocuments(await readFile(join(crdDir, file), "utf8"))) {
        const obj = doc.toJS() as k8s.KubernetesObject | null;
        if (obj?.kind === "CustomResourceDefinition") crds.push(obj);
      }
    }
    for (const crd of crds) {
      await applyRaw(
        kc,
        `/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${crd.metadata!.name}`,
        crd,
        FIELD_MANAGER,
      );
    }
    const ext = kc.makeApiClient(k8s.ApiextensionsV1Api);
    for (const crd of crds) {
      await waitFor(
        `CRD ${crd.metadata?.name}`,
        async () => {
          const got = await ext.readCustomResourceDefinition({ name: crd.metadata!.name! });
          return got.status?.conditions?.some((c) => c.type === "Established" && c.status === "True") ?? false;
        },
        60_000,
      );
    }
  }

  private async createNodes(): Promise<void> {
    const core = this.kubeConfig().makeApiClient(k8s.CoreV1Api);
    for (const name of this.nodes) {
      const node = sandboxNode(name);
      try {
        await core.createNode({ body: node });
      } catch (err) {
        if (statusCode(err) !== 409) throw err;
      }
    }
  }

  /** The RuntimeClass and the SpinAppExecutor SpinApps in `namespace` need (executors are namespaced). */
  async installSpinRuntime(namespace: string): Promise<void> {
    const kc = this.kubeConfig();
    await applyObject(
      kc,
      {
        apiVersion: "node.k8s.io/v1",
        kind: "RuntimeClass",
        metadata: { name: RUNTIME_CLASS },
        handler: "spin",
      } as k8s.KubernetesObject,
      FIELD_MANAGER,
    );
    await applyObject(kc, spinAppExecutor(namespace), FIELD_MANAGER);
  }

  private async waitForComponents(): Promise<void> {
    const core = this.kubeConfig().makeApiClient(k8s.CoreV1Api);
    // KWOK marks the nodes Ready.
    await this.waitAlive(
      "kwok",
      async () => {
        const nodes = await core.listNode();
        const ready = nodes.items.filter((n) =>
          n.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True"),
        );
        return this.nodes.every((name) => ready.some((n) => n.metadata?.name === name));
      },
      60_000,
    );
    // The controller manager's service account controller creates `default` in every namespace.
    await this.waitAlive(
      "kube-controller-manager",
      async () => {
        await core.readNamespacedServiceAccount({ name: "default", namespace: "default" });
        return true;
      },
      60_000,
    );
    await this.waitAlive("kube-scheduler", () => this.healthz(this.ports.scheduler, true), 60_000);
    await this.waitAlive("spin-operator", () => this.healthz(this.ports.spinOperator, false), 60_000);
  }

  private healthz(port: number, tls: boolean): Promise<boolean> {
    if (!tls) return fetch(`http://127.0.0.1:${port}/healthz`).then((r) => r.ok);
    // The scheduler serves a self-signed certificate of its own; this only reads its health.
    return httpsOk({ port, path: "/healthz", rejectUnauthorized: false });
  }

  /** Stops one component (for fault tests); `restart` brings it back with the same ports and data. */
  async stopComponent(name: Component): Promise<void> {
    await this.processes.get(name)?.stop();
  }

  async restartComponent(name: Component): Promise<void> {
    await this.stopComponent(name);
    if (name === "etcd") await this.startEtcd();
    else if (name === "kube-apiserver") await this.startApiServer();
    else this.startComponent(name);
  }

  /**
   * Compacts etcd's history up to now (for fault tests): a watch that resumes from an older
   * resourceVersion then gets 410 Gone and must relist.
   */
  async compactEtcd(): Promise<number> {
    const base = `http://127.0.0.1:${this.ports.etcd}/v3/kv`;
    const range = await fetch(`${base}/range`, { method: "POST", body: JSON.stringify({ key: "AA==" }) });
    const revision = Number(((await range.json()) as { header: { revision: string } }).header.revision);
    const res = await fetch(`${base}/compaction`, {
      method: "POST",
      body: JSON.stringify({ revision, physical: true }),
    });
    if (!res.ok) throw new Error(`etcd compaction failed: HTTP ${res.status}`);
    return revision;
  }

  processIds(): number[] {
    return [...this.processes.values()].filter((p) => p.alive && p.pid).map((p) => p.pid!);
  }

  /** Stops every process it started (newest first) and removes the temp directory. */
  async stop(): Promise<void> {
    for (const p of [...this.processes.values()].reverse()) await p.stop();
    this.processes.clear();
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** GET https://127.0.0.1:<port><path>: true on 200. */
function httpsOk(options: RequestOptions): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", timeout: 2000, ...options }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
    req.end();
  });
}

export function spinAppExecutor(namespace: string): k8s.KubernetesObject {
  return {
    apiVersion: "core.spinkube.dev/v1alpha1",
    kind: "SpinAppExecutor",
    metadata: { name: EXECUTOR, namespace },
    spec: { createDeployment: true, deploymentConfig: { runtimeClassName: RUNTIME_CLASS } },
  } as k8s.KubernetesObject;
}

/** A KWOK-managed Node as the sandbox registers it (tests re-create one the same way). */
export function sandboxNode(name: string): k8s.V1Node {
  return {
    apiVersion: "v1",
    kind: "Node",
    metadata: {
      name,
      labels: { "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", type: "kwok" },
      annotations: { "kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0" },
    },
    status: {
      allocatable: { cpu: "32", memory: "256Gi", pods: "110" },
      capacity: { cpu: "32", memory: "256Gi", pods: "110" },
      nodeInfo: {
        architecture: "amd64",
        bootID: "",
        containerRuntimeVersion: "kwok",
        kernelVersion: "",
        kubeProxyVersion: "",
        kubeletVersion: "kwok",
        machineID: "",
        operatingSystem: "linux",
        osImage: "",
        systemUUID: "",
      },
    },
  };
}
