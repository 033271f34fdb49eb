import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import * as k8s from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { parse, parseAllDocuments } from "yaml";
import { UsbFixture } from "../../discovery-handlers/usb/mock.js";
import type { Device } from "../../src/api/device.js";
import {
  DEVICE_CONFIGURATIONS,
  DEVICE_SPIN_APPS,
  DEVICES,
  ResourceClient,
  SPIN_APPS,
} from "../../src/k8s/resources.js";
import { ensureBinaries } from "../../src/sandbox/build.js";
import { EXECUTOR } from "../../src/sandbox/control-plane.js";
import { eventually, kubeConfig, kubectl, testNamespace } from "./cluster.js";
import {
  type AccessCheck,
  canI,
  describeCheck,
  impersonatingKubeconfig,
  serviceAccountUser,
  whoAmI,
} from "./impersonation.js";
import { Impersonated, podBoundKubeconfig } from "./node-identity.js";
import { SpindleProcess } from "./spindle-process.js";

const run = promisify(execFile);
const REPO = resolve(import.meta.dirname, "../..");
const CHART = join(REPO, "charts/spindle");

type Obj = k8s.KubernetesObject & Record<string, unknown>;
interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  [key: string]: unknown;
}
interface Rule {
  apiGroups?: string[];
  resources?: string[];
  resourceNames?: string[];
  verbs: string[];
}
interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { fieldRef?: { fieldPath: string } };
}
interface Container {
  name: string;
  image: string;
  imagePullPolicy?: string;
  command?: string[];
  args?: string[];
  env?: EnvVar[];
  ports?: { name: string; containerPort: number }[];
  livenessProbe?: { httpGet?: { path: string; port: string | number } };
  readinessProbe?: { httpGet?: { path: string; port: string | number } };
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  securityContext?: Record<string, unknown>;
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
}
interface PodSpec {
  serviceAccountName: string;
  hostNetwork?: boolean;
  dnsPolicy?: string;
  nodeSelector?: Record<string, string>;
  tolerations?: Record<string, unknown>[];
  securityContext?: Record<string, unknown>;
  containers: Container[];
  volumes?: { name: string; hostPath?: { path: string; type?: string }; emptyDir?: unknown }[];
}
type Workload = Manifest & { spec: { replicas?: number; template: { spec: PodSpec } } };

// The agent's access is its RBAC narrowed by the chart's node restriction policy: both go in for real.
const RBAC_KINDS = new Set([
  "ServiceAccount",
  "ClusterRole",
  "ClusterRoleBinding",
  "Role",
  "RoleBinding",
  "ValidatingAdmissionPolicy",
  "ValidatingAdmissionPolicyBinding",
]);

let helmBin: string;
let workDir: string;

/** `helm template` of the chart; `values` go in as a file, like a user's values.yaml. */
async function helmTemplate(
  release: string,
  namespace: string,
  values?: Record<string, unknown>,
  extraArgs: string[] = [],
): Promise<{ text: string; objects: Manifest[] }> {
  const args = ["template", release, CHART, "--namespace", namespace, ...extraArgs];
  if (values) {
    const file = join(workDir, `${release}-${randomBytes(3).toString("hex")}-values.yaml`);
    await writeFile(file, JSON.stringify(values, null, 2));
    args.push("--values", file);
  }
  const text = await helm(...args);
  const objects = parseAllDocuments(text)
    .map((d) => d.toJS() as Manifest | null)
    .filter((o): o is Manifest => o !== null);
  return { text, objects };
}

async function helm(...args: string[]): Promise<string> {
  // Helm's own state (cache, config, plugins) stays in the test's temp dir.
  const env = {
    ...process.env,
    HELM_CACHE_HOME: join(workDir, "helm/cache"),
    HELM_CONFIG_HOME: join(workDir, "helm/config"),
    HELM_DATA_HOME: join(workDir, "helm/data"),
  };
  try {
    return (await run(helmBin, args, { env, maxBuffer: 32 * 1024 * 1024 })).stdout;
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`helm ${args.join(" ")} failed: ${e.stderr || e.stdout || e.message}`);
  }
}

/** `kubectl apply --server-side` of manifests (written to a file), for real or as a server-side dry run. */
async function applyManifests(objects: Manifest[] | string, dryRun: boolean): Promise<string> {
  const text = typeof objects === "string" ? objects : objects.map((o) => JSON.stringify(o)).join("\n---\n");
  const file = join(workDir, `apply-${randomBytes(4).toString("hex")}.yaml`);
  await writeFile(file, text);
  const args = ["apply", "--server-side", "--field-manager", "spindle-chart-test", "--validate=strict", "-f", file];
  if (dryRun) args.push("--dry-run=server");
  try {
    return await kubectl(...args);
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`kubectl ${args.join(" ")} failed: ${e.stderr || e.message}`);
  }
}

function only<T extends Manifest = Manifest>(objects: Manifest[], kind: string, name?: string): T {
  const found = objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
  if (found.length !== 1)
    throw new Error(
      `expected one ${kind}${name ? ` ${name}` : ""}, found ${found.length}: ${found.map((o) => o.metadata.name)}`,
    );
  return found[0] as T;
}

function rulesOf(objects: Manifest[]): { owner: string; rules: Rule[] }[] {
  return objects
    .filter((o) => o.kind === "ClusterRole" || o.kind === "Role")
    .map((o) => ({
      owner: `${o.kind} ${o.metadata.namespace ? `${o.metadata.namespace}/` : ""}${o.metadata.name}`,
      rules: (o.rules as Rule[] | undefined) ?? [],
    }));
}

/** The Roles/ClusterRoles bound to a ServiceAccount in the rendered objects. */
function rulesBoundTo(objects: Manifest[], serviceAccount: string, namespace: string): Rule[] {
  const bindings = objects.filter(
    (o) =>
      (o.kind === "ClusterRoleBinding" || o.kind === "RoleBinding") &&
      (o.subjects as { kind: string; name: string; namespace: string }[]).some(
        (s) => s.kind === "ServiceAccount" && s.name === serviceAccount && s.namespace === namespace,
      ),
  );
  return bindings.flatMap((b) => {
    const ref = b.roleRef as { kind: string; name: string };
    const role = objects.find(
      (o) =>
        o.kind === ref.kind &&
        o.metadata.name === ref.name &&
        (ref.kind === "ClusterRole" || o.metadata.namespace === b.metadata.namespace),
    );
    if (!role) throw new Error(`${b.kind} ${b.metadata.name} refers to a missing ${ref.kind} ${ref.name}`);
    return role.rules as Rule[];
  });
}

/**
 * A container's command line and environment as the kubelet would run it: env values and
 * downward-API fields resolved, `$(VAR)` in args expanded.
 */
function processOf(
  container: Container,
  fields: Record<string, string>,
): { args: string[]; env: Record<string, string> } {
  const env: Record<string, string> = {};
  // The pod's own identity, as the kubelet fills it in (used only for OTel resource attributes).
  fields = {
    "metadata.uid": "7d4c9a2e-1b3f-4e5a-9c8d-0f1e2d3c4b5a",
    "metadata.name": "spindle-pod",
    "metadata.namespace": "spindle",
    "spec.nodeName": "control-plane",
    ...fields,
  };
  for (const e of container.env ?? []) {
    if (e.value !== undefined) env[e.name] = e.value;
    else if (e.valueFrom?.fieldRef) {
      const value = fields[e.valueFrom.fieldRef.fieldPath];
      if (value === undefined) throw new Error(`env ${e.name}: no test value for ${e.valueFrom.fieldRef.fieldPath}`);
      env[e.name] = value;
    } else throw new Error(`env ${e.name}: unsupported source ${JSON.stringify(e.valueFrom)}`);
  }
  const args = (container.args ?? []).map((a) =>
    a.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (whole, name: string) => env[name] ?? whole),
  );
  return { args, env };
}

const chartMeta = async () =>
  parse(await readFile(join(CHART, "Chart.yaml"), "utf8")) as { version: string; appVersion: string; name: string };

beforeAll(async () => {
  workDir = await mkdtemp(join(tmpdir(), "spindle-chart-"));
  const binaries = await ensureBinaries((line) => process.stderr.write(`[helm] ${line}\n`));
  if (!binaries.helm) throw new Error("ensureBinaries() returned no helm");
  helmBin = binaries.helm;
});

afterAll(async () => {
  await rm(workDir, { recursive: true, force: true });
});

describe("Helm chart charts/spindle: lint, render, server-side dry run", () => {
  let ns: Awaited<ReturnType<typeof testNamespace>>;

  beforeAll(async () => {
    ns = await testNamespace("chart");
  });

  afterAll(async () => {
    await ns?.remove();
  });

  /** Non-default values touching every knob the chart documents for placement, image and access. */
  const nonDefaultValues = () => ({
    image: { repository: "registry.example.com/edge/spindle", tag: "0.2.0-rc.1", pullPolicy: "Always" },
    imagePullSecrets: [{ name: "regcred" }],
    logLevel: "debug",
    commonLabels: { team: "edge" },
    agent: {
      handlers: ["usb", "mqtt"],
      httpPort: 9190,
      usb: { mountDevBusUsb: false },
      nodeSelector: { "spindle.dev/edge": "true" },
      tolerations: [{ key: "node-role.kubernetes.io/edge", operator: "Exists", effect: "NoSchedule" }],
      secretRefs: [
        { namespace: ns.name, name: "onvif-credentials" },
        { namespace: ns.name, name: "mqtt-credentials" },
        { namespace: "default", name: "shared-credentials" },
      ],
      configMapRefs: [{ namespace: ns.name, name: "mqtt-settings" }],
      resources: { requests: { cpu: "10m", memory: "64Mi" }, limits: { memory: "256Mi" } },
      priorityClassName: "system-node-critical",
      kubeletPlugin: { enabled: false },
    },
    otel: {
      endpoint: "http://otel-collector.observability:4318",
      env: { OTEL_TRACES_SAMPLER: "parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG: "0.1" },
    },
    controller: {
      replicas: 3,
      leaseName: "spindle-leader",
      leaseSeconds: 30,
      tolerations: [{ key: "dedicated", operator: "Equal", value: "control", effect: "NoSchedule" }],
      nodeSelector: { "node-role.kubernetes.io/control-plane": "" },
    },
    metrics: { service: { annotations: { "prometheus.io/scrape": "true" } } },
  });

  it("passes helm lint --strict with default and non-default values", async () => {
    const valuesFile = join(workDir, "lint-values.yaml");
    await writeFile(valuesFile, JSON.stringify(nonDefaultValues()));
    for (const args of [[], ["--values", valuesFile]]) {
      const out = await helm("lint", CHART, "--strict", ...args);
      expect(out).toMatch(/1 chart\(s\) linted, 0 chart\(s\) failed/);
    }
  });

  it("ships exactly the generated CRDs of crds/, byte for byte", async () => {
    const generated = (await readdir(join(REPO, "crds"))).sort();
    const shipped = (await readdir(join(CHART, "crds"))).sort();
    expect(shipped).toEqual(generated);
    expect(generated.length).toBeGreaterThan(0);
    for (const file of generated) {
      const [a, b] = await Promise.all([readFile(join(REPO, "crds", file)), readFile(join(CHART, "crds", file))]);
      expect(b.equals(a), `charts/spindle/crds/${file} differs from crds/${file}: copy it again`).toBe(true);
    }
  });

  it("renders the default values into agent, controller, RBAC and metrics Services the apiserver accepts", async () => {
    const { version, appVersion } = await chartMeta();
    const { objects, text } = await helmTemplate("spindle", ns.name, undefined, ["--include-crds"]);
    const kinds = objects.map((o) => o.kind).sort();
    expect(kinds.filter((k) => k === "CustomResourceDefinition")).toHaveLength(3);
    for (const kind of ["DaemonSet", "Deployment", "ClusterRole", "ClusterRoleBinding", "PodDisruptionBudget"])
      expect(kinds, kind).toContain(kind);
    expect(kinds.filter((k) => k === "ServiceAccount")).toHaveLength(2);
    expect(kinds.filter((k) => k === "Service")).toHaveLength(2);

    const agent = only<Workload>(objects, "DaemonSet");
    const pod = agent.spec.template.spec;
    const container = pod.containers[0]!;
    expect(container.image).toBe(`ghcr.io/spindle-dev/spindle:${appVersion}`);
    expect(container.command, "the image's ENTRYPOINT (node bin/spindle.js) runs").toBeUndefined();
    expect(container.args).toEqual(["agent"]);
    expect(pod.hostNetwork).toBe(true);
    expect(pod.dnsPolicy).toBe("ClusterFirstWithHostNet");
    expect(pod.serviceAccountName).toBe("spindle-agent");
    const env = processOf(container, { "spec.nodeName": "edge-1" }).env;
    expect(env).toMatchObject({
      NODE_NAME: "edge-1",
      SPINDLE_HANDLERS: "usb,onvif,mqtt,mdns,opcua",
      SPINDLE_HTTP_ADDRESS: "0.0.0.0:9090",
      LOG_LEVEL: "info",
      NODE_OPTIONS: "--max-semi-space-size=1",
    });
    expect(container.env?.find((e) => e.name === "NODE_NAME")?.valueFrom?.fieldRef?.fieldPath).toBe("spec.nodeName");
    expect(pod.volumes?.find((v) => v.name === "sys")?.hostPath).toEqual({ path: "/sys", type: "Directory" });
    expect(container.volumeMounts).toContainEqual({ name: "sys", mountPath: "/sys", readOnly: true });
    expect(container.volumeMounts).toContainEqual({ name: "dev-bus-usb", mountPath: "/dev/bus/usb", readOnly: true });
    // Writable: the scratch dir, and the kubelet plugin's two socket directories (nothing else of the kubelet's).
    const writable = ["tmp", "kubelet-plugins-registry", "kubelet-plugin"];
    expect(container.volumeMounts?.filter((m) => !writable.includes(m.name)).every((m) => m.readOnly)).toBe(true);
    expect(pod.volumes?.find((v) => v.name === "kubelet-plugins-registry")?.hostPath?.path).toBe(
      "/var/lib/kubelet/plugins_registry",
    );
    expect(pod.volumes?.find((v) => v.name === "kubelet-plugin")?.hostPath?.path).toBe(
      "/var/lib/kubelet/plugins/spindle.dev",
    );
    expect(env.SPINDLE_KUBELET_DIR).toBe("/var/lib/kubelet");
    // The kubelet's directories belong to root: uid 0 there, with every capability still dropped.
    expect(container.securityContext).toMatchObject({
      runAsUser: 0,
      runAsNonRoot: false,
      capabilities: { drop: ["ALL"] },
    });
    // No exporter configured: no OTEL_* variable at all.
    expect(Object.keys(env).filter((k) => k.startsWith("OTEL_"))).toEqual([]);
    expect(container.livenessProbe?.httpGet).toEqual({ path: "/healthz", port: "http" });
    expect(container.readinessProbe?.httpGet).toEqual({ path: "/readyz", port: "http" });
    expect(container.ports).toEqual([{ name: "http", containerPort: 9090, protocol: "TCP" }]);

    const controller = only<Workload>(objects, "Deployment");
    expect(controller.spec.replicas).toBe(2);
    const cpod = controller.spec.template.spec;
    const ccontainer = cpod.containers[0]!;
    expect(ccontainer.image).toBe(`ghcr.io/spindle-dev/spindle:${appVersion}`);
    const cproc = processOf(ccontainer, { "metadata.namespace": ns.name, "metadata.name": "spindle-controller-abc" });
    expect(cproc.args.slice(0, 3)).toEqual(["controller", "--lease-namespace", ns.name]);
    expect(cproc.env).toMatchObject({ POD_NAMESPACE: ns.name, SPINDLE_HTTP_ADDRESS: "0.0.0.0:9091" });
    expect(ccontainer.livenessProbe?.httpGet).toEqual({ path: "/healthz", port: "http" });
    expect(ccontainer.readinessProbe?.httpGet).toEqual({ path: "/readyz", port: "http" });

    for (const p of [pod, cpod]) {
      const c = p.containers[0]!;
      expect(p.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 65532 });
      expect(c.securityContext).toMatchObject({
        readOnlyRootFilesystem: true,
        allowPrivilegeEscalation: false,
        capabilities: { drop: ["ALL"] },
      });
      expect(c.resources?.requests).toBeDefined();
      expect(c.resources?.limits?.memory).toBeDefined();
    }

    for (const component of ["agent", "controller"]) {
      const svc = only(objects, "Service", `spindle-${component}-metrics`) as Manifest & {
        spec: { selector: Record<string, string>; ports: { name: string; targetPort: string }[] };
      };
      expect(svc.spec.ports).toMatchObject([{ name: "metrics", targetPort: "http" }]);
      expect(svc.spec.selector["app.kubernetes.io/component"]).toBe(component);
    }
    // Every object carries the chart's labels.
    for (const o of objects.filter((x) => x.kind !== "CustomResourceDefinition"))
      expect(o.metadata.labels?.["helm.sh/chart"], `${o.kind} ${o.metadata.name}`).toBe(`spindle-${version}`);

    const out = await applyManifests(text, true);
    expect(out).toMatch(/daemonset\.apps\/spindle-agent serverside-applied \(server dry run\)/);
    expect(out).toMatch(/customresourcedefinition\.apiextensions\.k8s\.io\/devices\.spindle\.dev serverside-applied/);
  });

  it("renders non-default values (handlers, placement, image, Secret access) into what they say, and the apiserver accepts them", async () => {
    const values = nonDefaultValues();
    const { objects, text } = await helmTemplate("edge", ns.name, values);
    const pod = only<Workload>(objects, "DaemonSet").spec.template.spec;
    const container = pod.containers[0]!;
    expect(container.image).toBe("registry.example.com/edge/spindle:0.2.0-rc.1");
    expect(container.imagePullPolicy).toBe("Always");
    expect(processOf(container, { "spec.nodeName": "n" }).env).toMatchObject({
      SPINDLE_HANDLERS: "usb,mqtt",
      LOG_LEVEL: "debug",
      SPINDLE_HTTP_ADDRESS: "0.0.0.0:9190",
    });
    // Helm merges maps with the defaults (kubernetes.io/os: linux); null removes a default key.
    expect(pod.nodeSelector).toEqual({ "kubernetes.io/os": "linux", "spindle.dev/edge": "true" });
    expect(pod.tolerations).toEqual(values.agent.tolerations);
    expect(container.resources).toEqual({
      requests: { cpu: "10m", memory: "64Mi" },
      limits: { cpu: "500m", memory: "256Mi" }, // the default cpu limit stays, as Helm merges maps
    });
    expect(pod.volumes?.map((v) => v.name)).not.toContain("dev-bus-usb");
    // Without the kubelet plugin: no kubelet directory, and the agent stays uid 65532.
    expect(pod.volumes?.map((v) => v.name)).not.toContain("kubelet-plugins-registry");
    expect(container.securityContext?.runAsUser).toBeUndefined();
    expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 65532 });
    const otelEnv = {
      OTEL_EXPORTER_OTLP_ENDPOINT: "http://otel-collector.observability:4318",
      OTEL_TRACES_SAMPLER: "parentbased_traceidratio",
      OTEL_TRACES_SAMPLER_ARG: "0.1",
    };
    expect(processOf(container, { "spec.nodeName": "n" }).env).toMatchObject(otelEnv);

    const deployment = only<Workload>(objects, "Deployment");
    expect(deployment.spec.replicas).toBe(3);
    const cpod = deployment.spec.template.spec;
    expect(cpod.tolerations).toEqual(values.controller.tolerations);
    expect(processOf(cpod.containers[0]!, { "metadata.namespace": ns.name, "metadata.name": "c" }).env).toMatchObject(
      otelEnv,
    );
    expect(cpod.nodeSelector).toEqual({ "kubernetes.io/os": "linux", ...values.controller.nodeSelector });
    expect(cpod.containers[0]!.args).toEqual(
      expect.arrayContaining(["--lease-name", "spindle-leader", "--lease-seconds", "30"]),
    );
    for (const o of objects) expect(o.metadata.labels?.team, `${o.kind} ${o.metadata.name}`).toBe("edge");

    // One Role per namespace of the references, naming exactly the listed objects.
    const refRoles = objects.filter((o) => o.kind === "Role" && o.metadata.name === "edge-spindle-agent-references");
    expect(refRoles.map((r) => r.metadata.namespace).sort()).toEqual(["default", ns.name].sort());
    expect(refRoles.find((r) => r.metadata.namespace === ns.name)!.rules).toEqual([
      {
        apiGroups: [""],
        resources: ["secrets"],
        resourceNames: ["onvif-credentials", "mqtt-credentials"],
        verbs: ["get", "list", "watch"],
      },
      {
        apiGroups: [""],
        resources: ["configmaps"],
        resourceNames: ["mqtt-settings"],
        verbs: ["get", "list", "watch"],
      },
    ]);
    expect(refRoles.find((r) => r.metadata.namespace === "default")!.rules).toEqual([
      {
        apiGroups: [""],
        resources: ["secrets"],
        resourceNames: ["shared-credentials"],
        verbs: ["get", "list", "watch"],
      },
    ]);
    const leaseRole = only(objects, "Role", "edge-spindle-controller-leader-election");
    expect(leaseRole.rules).toContainEqual({
      apiGroups: ["coordination.k8s.io"],
      resources: ["leases"],
      resourceNames: ["spindle-leader"],
      verbs: ["get", "update"],
    });

    // NOTES.txt (rendered by install, not by template) names what the agent may read.
    const notesValues = join(workDir, "notes-values.yaml");
    await writeFile(notesValues, JSON.stringify(values));
    const installed = await helm(
      "install",
      "edge",
      CHART,
      "--namespace",
      ns.name,
      "--dry-run=client",
      "--values",
      notesValues,
      "--kubeconfig",
      inject("kubeconfig"),
    );
    const notes = installed.slice(installed.indexOf("NOTES:"));
    expect(notes).toMatch(/DaemonSet\s+edge-spindle-agent\s+\(handlers: usb, mqtt\)/);
    expect(notes).toContain(`Secret    ${ns.name}/onvif-credentials`);
    expect(notes).toContain(`ConfigMap ${ns.name}/mqtt-settings`);

    // Without references there is no Role for them at all.
    const plain = await helmTemplate("plain", ns.name);
    expect(plain.objects.filter((o) => o.metadata.name.endsWith("-references"))).toEqual([]);

    await applyManifests(text, true);
  });

  it("rejects values the schema forbids, naming the value", async () => {
    await expect(helmTemplate("bad", ns.name, { agent: { handlers: ["usb", "bluetooth"] } })).rejects.toThrow(
      /agent\/handlers\/1.*usb', 'onvif', 'mqtt', 'mdns'/,
    );
    await expect(helmTemplate("bad", ns.name, { agent: { secretRefs: [{ name: "creds" }] } })).rejects.toThrow(
      /agent\/secretRefs\/0.*namespace/,
    );
    await expect(helmTemplate("bad", ns.name, { controller: { replicas: 0 } })).rejects.toThrow(/controller\/replicas/);
  });

  it("grants no wildcard, no Secret or ConfigMap beyond the named ones, and nothing secret to the controller", async () => {
    for (const { objects } of [
      await helmTemplate("a", ns.name),
      await helmTemplate("b", ns.name, nonDefaultValues()),
    ]) {
      for (const { owner, rules } of rulesOf(objects)) {
        for (const r of rules) {
          const all = [...(r.apiGroups ?? []), ...(r.resources ?? []), ...r.verbs, ...(r.resourceNames ?? [])];
          expect(
            all.filter((x) => x.includes("*")),
            owner,
          ).toEqual([]);
          if (r.resources?.some((x) => x === "secrets" || x === "configmaps")) {
            // list and watch only field-selected to a listed name: resourceNames restricts them.
            expect(r.verbs, owner).toEqual(["get", "list", "watch"]);
            expect(r.resourceNames?.length, `${owner}: secrets only by name`).toBeGreaterThan(0);
          }
        }
      }
      const controllerSa = only<Workload>(objects, "Deployment").spec.template.spec.serviceAccountName;
      const controllerRules = rulesBoundTo(objects, controllerSa, ns.name);
      expect(controllerRules.length).toBeGreaterThan(0);
      expect(controllerRules.flatMap((r) => r.resources ?? [])).not.toContain("secrets");
      expect(controllerRules.flatMap((r) => r.resources ?? [])).not.toContain("configmaps");
    }
  });
});

describe("Dockerfile: the image the chart points to", () => {
  const dockerfile = () => readFile(join(REPO, "Dockerfile"), "utf8");
  /** Instructions with their continuation lines joined, comments dropped. */
  const instructions = async () =>
    (await dockerfile())
      .replace(/\\\n/g, " ")
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith("#"));
  /** Sources of `COPY` from the build context (not `--from` another stage). */
  const contextSources = async () =>
    (await instructions())
      .filter((l) => /^COPY\s/i.test(l) && !/--from=/.test(l))
      .flatMap((l) => {
        const parts = l
          .split(/\s+/)
          .slice(1)
          .filter((p) => !p.startsWith("--"));
        return parts.slice(0, -1);
      });
  const ignorePatterns = async () =>
    (await readFile(join(REPO, ".dockerignore"), "utf8"))
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith("#"));
  /** .dockerignore matching for the pattern forms the file uses; the last matching line wins (`!` re-includes). */
  const ignored = (patterns: string[], path: string) => {
    let out = false;
    for (const line of patterns) {
      const negated = line.startsWith("!");
      const p = negated ? line.slice(1) : line;
      const re = new RegExp(
        `^${p
          .replace(/[.+^${}()|[\]\\]/g, "\\$&")
          .replace(/\*\*\//g, "\u0000")
          .replace(/\*/g, "[^/]*")
          .replace(/\?/g, "[^/]")
          .replace(/\u0000/g, "(?:.*/)?")}$`,
      );
      const parts = path.split("/");
      if (parts.some((_, i) => re.test(parts.slice(0, i + 1).join("/")))) out = !negated;
    }
    return out;
  };

  it("is multi-stage on node:24-bookworm-slim, builds, keeps production dependencies only, and runs node bin/spindle.js as uid 65532", async () => {
    const lines = await instructions();
    const text = await dockerfile();
    expect(text).toMatch(/ARG NODE_IMAGE=node:24-bookworm-slim/);
    const stages = lines.filter((l) => /^FROM\s/.test(l));
    expect(stages).toHaveLength(2);
    expect(stages[0]).toMatch(/^FROM \$\{NODE_IMAGE\} AS build$/);
    expect(stages[1]).toMatch(/^FROM \$\{NODE_IMAGE\}$/);
    expect(lines.find((l) => l.startsWith("RUN npm run build"))).toMatch(/npm prune --omit=dev/);
    expect(lines).toContain("COPY --from=build /app/node_modules ./node_modules");
    expect(lines).toContain("COPY --from=build /app/dist ./dist");
    expect(lines).toContain("ENV NODE_ENV=production");
    expect(lines).toContain("USER 65532:65532");
    expect(lines).toContain('ENTRYPOINT ["node", "bin/spindle.js"]');
    // The runtime stage copies no sources: only the build output (test/unit/runtime.test.ts starts
    // agent and controller from exactly the image's file set).
    const runtime = lines.slice(lines.indexOf(stages[1]!));
    expect(runtime.filter((l) => /^COPY\s/.test(l) && /\b(src|discovery-handlers)\b/.test(l))).toEqual([]);
    const { appVersion } = await chartMeta();
    const pkg = JSON.parse(await readFile(join(REPO, "package.json"), "utf8")) as { version: string };
    expect(appVersion, "the chart's appVersion (its default image tag) is the package version").toBe(pkg.version);
  });

  it("copies files that exist and that .dockerignore does not drop", async () => {
    const sources = await contextSources();
    expect(sources.sort()).toEqual([
      "bin",
      "discovery-handlers",
      "package-lock.json",
      "package-lock.json",
      "package.json",
      "package.json",
      "scripts/build.ts",
      "src",
    ]);
    const patterns = await ignorePatterns();
    for (const s of sources) {
      await expect(stat(join(REPO, s)), s).resolves.toBeDefined();
      expect(ignored(patterns, s), `${s} is in .dockerignore`).toBe(false);
    }
    expect(ignored(patterns, "bin/spindle.js")).toBe(false);
    expect(ignored(patterns, "scripts/chaos.ts")).toBe(true);
    expect(ignored(patterns, "src/agent/device-name.test.ts")).toBe(true);
    expect(ignored(patterns, "node_modules/x/index.js")).toBe(true);
  });
});

describe("chart RBAC: enough for the real agent and controller, and no more", () => {
  const kc = kubeConfig();
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const coordination = kc.makeApiClient(k8s.CoordinationV1Api);
  const configs = new ResourceClient<Obj>(kc, DEVICE_CONFIGURATIONS, "spindle-test");
  const devices = new ResourceClient<Device & Obj>(kc, DEVICES, "spindle-test");
  const dsas = new ResourceClient<Obj>(kc, DEVICE_SPIN_APPS, "spindle-test");
  const spinApps = new ResourceClient<Obj>(kc, SPIN_APPS, "spindle-test");
  const suffix = randomBytes(3).toString("hex");
  const release = `rbac-${suffix}`;
  const dcName = `chart-usb-${suffix}`;
  const deniedDcName = `chart-denied-${suffix}`;
  const goneNode = `chart-node-${suffix}`;
  const processes: SpindleProcess[] = [];
  let ns: Awaited<ReturnType<typeof testNamespace>>;
  let rendered: Manifest[];
  let rbacFile: string;
  let agentKubeconfig: string;
  let usb: UsbFixture;
  let agent: SpindleProcess;
  let controller: SpindleProcess;
  let agentSa: string;
  let controllerSa: string;
  let leaseName: string;

  const appsOf = async (dsa: string) =>
    (await spinApps.list(ns.name)).items.filter((s) => s.metadata?.labels?.["spindle.dev/device-spin-app"] === dsa);
  const devicesOf = async (configuration: string) =>
    (await devices.list()).items.filter((d) => d.spec.configurationName === configuration);
  const nodeResources = async (node: string) =>
    Object.keys((await core.readNode({ name: node })).status?.capacity ?? {}).filter((k) =>
      k.startsWith("spindle.dev/"),
    );
  const forbiddenLines = (p: SpindleProcess) =>
    p
      .log()
      .split("\n")
      .filter((l) => /forbidden|HTTP-Code: 403|: 403\b/i.test(l));

  beforeAll(async () => {
    ns = await testNamespace("chart-rbac");
    usb = await UsbFixture.create();
    const { objects } = await helmTemplate(release, ns.name, {
      logLevel: "debug",
      // This suite checks the node-resource path's RBAC; DRA's is in test/e2e/dra.test.ts.
      placement: "node-resources",
      agent: {
        handlers: ["usb"],
        secretRefs: [{ namespace: ns.name, name: "usb-token" }],
        configMapRefs: [{ namespace: ns.name, name: "usb-settings" }],
      },
    });
    rendered = objects;
    // Exactly the chart's ServiceAccounts, Roles and bindings, for real.
    const rbac = objects.filter((o) => RBAC_KINDS.has(o.kind));
    rbacFile = join(workDir, `${release}-rbac.yaml`);
    await writeFile(rbacFile, rbac.map((o) => JSON.stringify(o)).join("\n---\n"));
    await applyManifests(rbac, false);

    await core.createNamespacedSecret({
      namespace: ns.name,
      body: { metadata: { name: "usb-token" }, stringData: { token: "s3cret" } },
    });
    await core.createNamespacedSecret({
      namespace: ns.name,
      body: { metadata: { name: "not-listed" }, stringData: { token: "other" } },
    });
    await core.createNamespacedConfigMap({
      namespace: ns.name,
      body: { metadata: { name: "usb-settings" }, data: { site: "plant-3" } },
    });

    const daemonSet = only<Workload>(objects, "DaemonSet");
    const deployment = only<Workload>(objects, "Deployment");
    agentSa = daemonSet.spec.template.spec.serviceAccountName;
    controllerSa = deployment.spec.template.spec.serviceAccountName;
    // The agent's credentials as the kubelet gives them: a token bound to an agent Pod on edge-1,
    // which carries the node the policy checks. Its writes count once the policy denies.
    agentKubeconfig = (await podBoundKubeconfig(kc, inject("kubeconfig"), ns.name, agentSa, "edge-1", workDir))
      .kubeconfig;
    const asEdge1 = new Impersonated(kc, serviceAccountUser(ns.name, agentSa), "edge-1");
    await eventually("the node restriction policy to take effect", async () => {
      const a = await asEdge1.apply(
        "/api/v1/nodes/edge-2/status",
        { apiVersion: "v1", kind: "Node", metadata: { name: "edge-2" }, status: {} },
        "spindle-agent-edge-1",
      );
      return a.status === 403 && a.body.message?.includes("[own-node-status]");
    });
    const controllerKubeconfig = await impersonatingKubeconfig(inject("kubeconfig"), ns.name, controllerSa, workDir);

    // The commands and environment of the chart's containers, with the downward API filled in
    // as the kubelet would. The HTTP endpoints stay off here: this test is about API access.
    const agentProc = processOf(daemonSet.spec.template.spec.containers[0]!, { "spec.nodeName": "edge-1" });
    agent = await SpindleProcess.start(`chart-agent-${suffix}`, agentProc.args, {
      ...agentProc.env,
      SPINDLE_KUBELET_DIR: join(workDir, "kubelet-edge-1"), // the chart's hostPath, here a scratch dir
      SPINDLE_HTTP_ADDRESS: "",
      KUBECONFIG: agentKubeconfig,
    });
    processes.push(agent);
    const controllerProc = processOf(deployment.spec.template.spec.containers[0]!, {
      "metadata.namespace": ns.name,
      "metadata.name": `${release}-controller-0`,
    });
    leaseName = controllerProc.args[controllerProc.args.indexOf("--lease-name") + 1]!;
    controller = await SpindleProcess.start(`chart-controller-${suffix}`, controllerProc.args, {
      ...controllerProc.env,
      SPINDLE_HTTP_ADDRESS: "",
      KUBECONFIG: controllerKubeconfig,
    });
    processes.push(controller);
  });

  afterAll(async () => {
    for (const p of processes) await p.stop();
    for (const name of [dcName, deniedDcName]) await configs.delete(name).catch(() => undefined);
    await core.deleteNode({ name: goneNode }).catch(() => undefined);
    if (rbacFile) await kubectl("delete", "--ignore-not-found", "--wait=false", "-f", rbacFile).catch(() => undefined);
    await usb?.dispose();
    await ns?.remove();
  });

  it("runs the processes as the ServiceAccounts (the apiserver sees the impersonated user)", async () => {
    for (const sa of [agentSa, controllerSa]) {
      const file = await impersonatingKubeconfig(inject("kubeconfig"), ns.name, sa, workDir);
      expect(await whoAmI(inject("kubectl"), file)).toBe(serviceAccountUser(ns.name, sa));
    }
    expect(agent.args).toEqual(["agent"]);
    // The chart turns the DRA kubelet plugin on: its two sockets are where the kubelet looks.
    const kubeletDir = join(workDir, "kubelet-edge-1");
    await eventually("the kubelet plugin's sockets", async () => {
      const kinds = await Promise.all(
        ["plugins_registry/spindle.dev-reg.sock", "plugins/spindle.dev/dra.sock"].map((f) =>
          stat(join(kubeletDir, f)).then(
            (s) => s.isSocket(),
            () => false,
          ),
        ),
      );
      return kinds.every(Boolean) || undefined;
    });
    expect(controller.args).toEqual(
      expect.arrayContaining(["controller", "--lease-namespace", ns.name, "--identity", `${release}-controller-0`]),
    );
  });

  it("lets the agent read its listed Secret and ConfigMap, publish a Device and advertise it on its node", async () => {
    await configs.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: dcName },
      spec: {
        discoveryHandler: {
          name: "usb",
          discoveryDetails: { sysfsRoot: usb.sysfsRoot, vendorIds: { action: "Include", items: ["0403"] } },
          // The discovery starts only once both resolve: a 403 would fail it.
          discoveryProperties: [
            { name: "token", valueFrom: { secretKeyRef: { namespace: ns.name, name: "usb-token", key: "token" } } },
            { name: "site", valueFrom: { configMapKeyRef: { namespace: ns.name, name: "usb-settings", key: "site" } } },
          ],
        },
        capacity: 1,
        offlineGraceSeconds: 1,
      },
    });
    await usb.plug({ port: "1-1", vendorId: "0403", productId: "6001", serial: "X", manufacturer: "FTDI" });
    const [device] = await eventually("the agent to publish the Device", async () => {
      const list = await devicesOf(dcName);
      return list.length === 1 ? list : undefined;
    });
    expect(device!.spec.nodes).toEqual(["edge-1"]);
    expect(device!.spec.properties).toMatchObject({ USB_VENDOR_ID: "0403", USB_SERIAL: "X" });
    await eventually("the extended resource on edge-1 (nodes/status)", async () =>
      (await nodeResources("edge-1")).includes(`spindle.dev/${device!.metadata.name}`),
    );
    expect(agent.entries().some((e) => e.configuration === dcName && e.msg === "discovery started")).toBe(true);
  });

  it("lets the controller run a SpinApp, write Device, DeviceSpinApp and DeviceConfiguration status, Events and its Lease", async () => {
    await dsas.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceSpinApp",
      metadata: { name: "reader", namespace: ns.name },
      spec: {
        deviceConfiguration: dcName,
        template: { spec: { image: "ghcr.io/acme/reader:v1", executor: EXECUTOR, replicas: 1 } },
      },
    });
    const [app] = await eventually("the controller to create a SpinApp", async () => {
      const list = await appsOf("reader");
      return list.length === 1 ? list : undefined;
    });
    const deviceName = app!.metadata!.labels!["spindle.dev/device"]!;
    await eventually("the slot in the Device's status", async () => {
      const d = await devices.get(deviceName);
      return d.status?.allocations?.length === 1;
    });
    const dsa = await eventually("the DeviceSpinApp's status", async () => {
      const d = (await dsas.get("reader", ns.name)) as Obj & {
        status?: { boundDevices?: number; conditions?: { type: string; status: string }[] };
      };
      return d.status?.boundDevices === 1 ? d : undefined;
    });
    expect(dsa.status?.conditions?.find((c) => c.type === "DevicesAvailable")?.status).toBe("True");
    await eventually("the DeviceConfiguration's status", async () => {
      const c = (await configs.get(dcName)) as Obj & {
        status?: { deviceCount?: number; conditions?: { type: string; status: string }[] };
      };
      return (
        c.status?.deviceCount === 1 && c.status.conditions?.some((x) => x.type === "Accepted" && x.status === "True")
      );
    });
    await eventually("the controller's Bound Event", async () => {
      const events = await core.listNamespacedEvent({
        namespace: ns.name,
        fieldSelector: "involvedObject.name=reader",
      });
      return events.items.some((e) => e.reason === "Bound" && e.source?.component === "spindle-controller");
    });
    const lease = await coordination.readNamespacedLease({ name: leaseName, namespace: ns.name });
    expect(lease.spec?.holderIdentity).toBe(`${release}-controller-0`);
    const renewed = (l: k8s.V1Lease) => JSON.stringify(l.spec?.renewTime);
    await eventually(
      "a lease renewal (update)",
      async () =>
        renewed(await coordination.readNamespacedLease({ name: leaseName, namespace: ns.name })) !== renewed(lease),
      30_000,
    );
  });

  it("lets them tear down: the controller deletes the SpinApp, the agent deletes the Device and withdraws the resource", async () => {
    const [app] = await appsOf("reader");
    const deviceName = app!.metadata!.labels!["spindle.dev/device"]!;
    await dsas.delete("reader", ns.name);
    await eventually("the controller to delete the SpinApp", async () => (await appsOf("reader")).length === 0);
    await usb.unplug("1-1");
    await eventually("the agent to delete the Device", async () => (await devicesOf(dcName)).length === 0, 30_000);
    await eventually(
      "the extended resource to be withdrawn",
      async () => !(await nodeResources("edge-1")).includes(`spindle.dev/${deviceName}`),
    );
  });

  it("lets the controller clean up after a deleted node: it deletes the Devices only that node saw", async () => {
    // A second node and its agent (same chart command and ServiceAccount), which then goes away
    // with its node, as when a node is removed from the cluster for good.
    await core.createNode({ body: { metadata: { name: goneNode, labels: { "kubernetes.io/os": "linux" } } } });
    const daemonSet = only<Workload>(rendered, "DaemonSet");
    const proc = processOf(daemonSet.spec.template.spec.containers[0]!, { "spec.nodeName": goneNode });
    const second = await SpindleProcess.start(`chart-agent-gone-${suffix}`, proc.args, {
      ...proc.env,
      SPINDLE_KUBELET_DIR: join(workDir, `kubelet-${goneNode}`),
      SPINDLE_HTTP_ADDRESS: "",
      KUBECONFIG: (await podBoundKubeconfig(kc, inject("kubeconfig"), ns.name, agentSa, goneNode, workDir)).kubeconfig,
    });
    processes.push(second);
    await usb.plug({ port: "1-2", vendorId: "0403", productId: "6001", serial: "Y" });
    const device = await eventually(`the agent on ${goneNode} to publish its Device`, async () =>
      (await devicesOf(dcName)).find((d) => d.spec.nodes.includes(goneNode)),
    );
    await second.stop(); // devices stay published across an agent's restart
    expect((await devices.get(device.metadata.name!)).spec.nodes).toEqual([goneNode]);
    await core.deleteNode({ name: goneNode });
    await eventually(
      "the controller to delete the Device of the deleted node",
      () =>
        devices.get(device.metadata.name!).then(
          () => false,
          () => true,
        ),
      30_000,
    );
    expect(forbiddenLines(second), second.name).toEqual([]);
    await usb.unplug("1-2");
  });

  it("lets the controller give its Lease up on a clean shutdown (an update)", async () => {
    await controller.stop();
    const lease = await coordination.readNamespacedLease({ name: leaseName, namespace: ns.name });
    expect(lease.spec?.holderIdentity ?? "").toBe("");
  });

  it("left no forbidden request in the agent's or controller's log", () => {
    for (const p of [agent, controller]) {
      expect(p.log().length, `${p.name} logged`).toBeGreaterThan(0);
      expect(forbiddenLines(p), p.name).toEqual([]);
    }
  });

  it("keeps the agent from a Secret that agent.secretRefs does not list (its Warning Event says 403)", async () => {
    await configs.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: deniedDcName },
      spec: {
        discoveryHandler: {
          name: "usb",
          discoveryDetails: { sysfsRoot: usb.sysfsRoot },
          discoveryProperties: [
            { name: "token", valueFrom: { secretKeyRef: { namespace: ns.name, name: "not-listed", key: "token" } } },
          ],
        },
      },
    });
    const event = await eventually("the agent's DiscoveryFailed Event in default", async () => {
      const events = await core.listNamespacedEvent({
        namespace: "default",
        fieldSelector: `involvedObject.name=${deniedDcName}`,
      });
      return events.items.find((e) => e.reason === "DiscoveryFailed" && e.source?.host === "edge-1");
    });
    expect(event.message).toContain(`cannot read Secret ${ns.name}/not-listed key token: 403`);
    expect(event.source?.component).toBe("spindle-agent");
  });

  it("answers kubectl auth can-i as the chart intends: yes for what they use, no for the rest", async () => {
    const other = "kube-public";
    const agentChecks: [AccessCheck, boolean][] = [
      [{ verb: "list", resource: "deviceconfigurations.spindle.dev" }, true],
      [{ verb: "watch", resource: "deviceconfigurations.spindle.dev" }, true],
      ...["list", "watch", "create", "patch", "delete"].map((verb): [AccessCheck, boolean] => [
        { verb, resource: "devices.spindle.dev" },
        true,
      ]),
      [{ verb: "patch", resource: "nodes", subresource: "status" }, true],
      [{ verb: "watch", resource: "nodes" }, true],
      [{ verb: "create", resource: "events", namespace: "default" }, true],
      [{ verb: "get", resource: "secrets/usb-token", namespace: ns.name }, true],
      [{ verb: "get", resource: "configmaps/usb-settings", namespace: ns.name }, true],
      // The DRA kubelet plugin reads the claims it prepares; nothing else of them.
      [{ verb: "get", resource: "resourceclaims.resource.k8s.io", namespace: other }, true],
      [{ verb: "list", resource: "resourceclaims.resource.k8s.io", namespace: other }, false],
      [{ verb: "patch", resource: "resourceclaims.resource.k8s.io", namespace: other }, false],
      // No more:
      [{ verb: "*", resource: "*" }, false],
      [{ verb: "create", resource: "spinapps.core.spinkube.dev", namespace: ns.name }, false],
      [{ verb: "get", resource: "secrets/not-listed", namespace: ns.name }, false],
      [{ verb: "get", resource: "secrets/usb-token", namespace: other }, false],
      [{ verb: "list", resource: "secrets", namespace: ns.name }, false],
      [{ verb: "watch", resource: "secrets", namespace: ns.name }, false],
      [{ verb: "list", resource: "secrets" }, false],
      [{ verb: "get", resource: "configmaps/other", namespace: ns.name }, false],
      [{ verb: "list", resource: "configmaps", namespace: ns.name }, false],
      [{ verb: "delete", resource: "nodes" }, false],
      [{ verb: "patch", resource: "nodes" }, false],
      [{ verb: "update", resource: "nodes", subresource: "status" }, false],
      [{ verb: "get", resource: "nodes", subresource: "status" }, false],
      [{ verb: "update", resource: "devices.spindle.dev" }, false],
      [{ verb: "patch", resource: "devices.spindle.dev", subresource: "status" }, false],
      [{ verb: "create", resource: "deviceconfigurations.spindle.dev" }, false],
      [{ verb: "patch", resource: "deviceconfigurations.spindle.dev" }, false],
      [{ verb: "list", resource: "devicespinapps.spindle.dev" }, false],
      [{ verb: "create", resource: "events", namespace: ns.name }, false],
      [{ verb: "create", resource: "pods", namespace: ns.name }, false],
      [{ verb: "get", resource: "leases", namespace: ns.name }, false],
    ];
    const controllerChecks: [AccessCheck, boolean][] = [
      ...["devices", "devicespinapps", "deviceconfigurations"].flatMap((r) =>
        ["list", "watch"].map((verb): [AccessCheck, boolean] => [{ verb, resource: `${r}.spindle.dev` }, true]),
      ),
      [{ verb: "patch", resource: "devices.spindle.dev", subresource: "status" }, true],
      [{ verb: "patch", resource: "devicespinapps.spindle.dev", subresource: "status", namespace: other }, true],
      [{ verb: "patch", resource: "deviceconfigurations.spindle.dev", subresource: "status" }, true],
      // A deleted node's Devices: its entry released (apply), or the Device deleted.
      [{ verb: "list", resource: "nodes" }, true],
      [{ verb: "watch", resource: "nodes" }, true],
      [{ verb: "patch", resource: "devices.spindle.dev" }, true],
      [{ verb: "delete", resource: "devices.spindle.dev" }, true],
      ...["list", "watch", "create", "patch", "delete"].map((verb): [AccessCheck, boolean] => [
        { verb, resource: "spinapps.core.spinkube.dev", namespace: other },
        true,
      ]),
      [{ verb: "create", resource: "events", namespace: ns.name }, true],
      [{ verb: "create", resource: "events", namespace: other }, true],
      [{ verb: "create", resource: "leases.coordination.k8s.io", namespace: ns.name }, true],
      [{ verb: "get", resource: `leases.coordination.k8s.io/${leaseName}`, namespace: ns.name }, true],
      [{ verb: "update", resource: `leases.coordination.k8s.io/${leaseName}`, namespace: ns.name }, true],
      // No more:
      [{ verb: "*", resource: "*" }, false],
      [{ verb: "get", resource: "secrets/usb-token", namespace: ns.name }, false],
      [{ verb: "get", resource: "secrets", namespace: ns.name }, false],
      [{ verb: "list", resource: "secrets" }, false],
      [{ verb: "get", resource: "configmaps", namespace: ns.name }, false],
      [{ verb: "create", resource: "pods", namespace: ns.name }, false],
      [{ verb: "create", resource: "deployments.apps", namespace: ns.name }, false],
      [{ verb: "create", resource: "devices.spindle.dev" }, false],
      [{ verb: "update", resource: "devices.spindle.dev" }, false],
      [{ verb: "get", resource: "nodes" }, false],
      [{ verb: "patch", resource: "nodes" }, false],
      [{ verb: "delete", resource: "nodes" }, false],
      [{ verb: "patch", resource: "devicespinapps.spindle.dev", namespace: ns.name }, false],
      [{ verb: "delete", resource: "devicespinapps.spindle.dev", namespace: ns.name }, false],
      [{ verb: "patch", resource: "deviceconfigurations.spindle.dev" }, false],
      [{ verb: "update", resource: "spinapps.core.spinkube.dev", subresource: "status", namespace: ns.name }, false],
      [{ verb: "patch", resource: "nodes", subresource: "status" }, false],
      [{ verb: "update", resource: `leases.coordination.k8s.io/${leaseName}`, namespace: "default" }, false],
      [{ verb: "create", resource: "leases.coordination.k8s.io", namespace: "default" }, false],
      [{ verb: "update", resource: "leases.coordination.k8s.io/kube-scheduler", namespace: ns.name }, false],
      [{ verb: "delete", resource: "leases.coordination.k8s.io", namespace: ns.name }, false],
      [{ verb: "list", resource: "leases.coordination.k8s.io", namespace: ns.name }, false],
    ];
    const results = await Promise.all(
      [
        ...agentChecks.map(([c, want]) => ({ sa: agentSa, c, want })),
        ...controllerChecks.map(([c, want]) => ({ sa: controllerSa, c, want })),
      ].map(async ({ sa, c, want }) => ({
        question: `${sa}: ${describeCheck(c)}`,
        want,
        got: await canI(inject("kubectl"), inject("kubeconfig"), serviceAccountUser(ns.name, sa), c),
      })),
    );
    const wrong = results.filter((r) => r.got !== r.want).map((r) => `${r.question}: ${r.got ? "yes" : "no"}`);
    expect(wrong).toEqual([]);
  });
});
