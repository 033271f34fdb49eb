import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import * as k8s from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { UsbFixture } from "../../discovery-handlers/usb/mock.js";
import type { Device } from "../../src/api/device.js";
import { DEVICE_CONFIGURATIONS, DEVICES, objectPath, ResourceClient } from "../../src/k8s/resources.js";
import { ensureBinaries } from "../../src/sandbox/build.js";
import { eventually, kubeConfig, kubectl, testNamespace } from "./cluster.js";
import { serviceAccountUser } from "./impersonation.js";
import { type Answer, Impersonated, impersonatingNodeKubeconfig, podBoundKubeconfig } from "./node-identity.js";
import { SpindleProcess } from "./spindle-process.js";

const run = promisify(execFile);
const CHART = resolve(import.meta.dirname, "../../charts/spindle");
const APPLIED_KINDS = new Set([
  "ServiceAccount",
  "ClusterRole",
  "ClusterRoleBinding",
  "Role",
  "RoleBinding",
  "ValidatingAdmissionPolicy",
  "ValidatingAdmissionPolicyBinding",
]);

type Obj = k8s.KubernetesObject & Record<string, unknown>;
interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
  spec?: { template?: { spec?: { serviceAccountName?: string } } };
}

const devicePath = (name: string) => objectPath(DEVICES, name);
const nodeStatusPath = (node: string) => `/api/v1/nodes/${node}/status`;
const slicePath = (name: string) => `/apis/resource.k8s.io/v1/resourceslices/${name}`;
const sliceBody = (name: string, node: string) => ({
  apiVersion: "resource.k8s.io/v1",
  kind: "ResourceSlice",
  metadata: { name },
  spec: {
    driver: "spindle.dev",
    nodeName: node,
    pool: { name: `nodes/${node}/node-scoped`, generation: 1, resourceSliceCount: 1 },
    devices: [{ name: "d-0", attributes: { "spindle.dev/slot": { int: 0 } } }],
  },
});
const manager = (node: string) => `spindle-agent-${node}`;

/** The Device an agent of `node` applies (src/agent/device-publisher.ts desiredDevice). */
function deviceBody(name: string, node: string, shared: boolean, properties: Record<string, string>) {
  return {
    apiVersion: "spindle.dev/v1alpha1",
    kind: "Device",
    metadata: { name, labels: { "spindle.dev/configuration": "scoped", [`node.spindle.dev/${node}`]: "" } },
    spec: { configurationName: "scoped", handler: "usb", shared, id: name, nodes: [node], properties, capacity: 1 },
  };
}

/** What an agent applies to leave a Device: an empty intent releases every field it owns. */
const leaveBody = (name: string) => ({ apiVersion: "spindle.dev/v1alpha1", kind: "Device", metadata: { name } });

const nodeResourcesBody = (node: string, resources: Record<string, string>) => ({
  apiVersion: "v1",
  kind: "Node",
  metadata: { name: node },
  status: { capacity: resources, allocatable: resources },
});

const eventBody = (host: string) => ({
  apiVersion: "v1",
  kind: "Event",
  metadata: { name: `scoped.${randomBytes(6).toString("hex")}`, namespace: "default" },
  involvedObject: { apiVersion: "spindle.dev/v1alpha1", kind: "DeviceConfiguration", name: "scoped" },
  type: "Normal",
  reason: "Test",
  message: "node-scoped test",
  source: { component: "spindle-agent", host },
  reportingComponent: "spindle-agent",
  reportingInstance: host,
  firstTimestamp: new Date().toISOString(),
  lastTimestamp: new Date().toISOString(),
  count: 1,
});

describe("node restriction: the agent of a node writes only what is its node's (chart policy)", () => {
  const kc = kubeConfig();
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const rbac = kc.makeApiClient(k8s.RbacAuthorizationV1Api);
  const devices = new ResourceClient<Device & Obj>(kc, DEVICES, "spindle-test");
  const configs = new ResourceClient<Obj>(kc, DEVICE_CONFIGURATIONS, "spindle-test");
  const suffix = randomBytes(3).toString("hex");
  const release = `scoped-${suffix}`;
  const policy = `${release}-spindle-agent-node-restriction`;
  // Device names of this run: local ones of edge-1 and edge-2, and a shared one.
  const local1 = `scoped-l1-${suffix}`;
  const local2 = `scoped-l2-${suffix}`;
  const shared = `scoped-s-${suffix}`;
  const spare = `scoped-x-${suffix}`;
  const dcName = `scoped-usb-${suffix}`;
  const beyondRbac = `${release}-beyond-chart-rbac`;
  const processes: SpindleProcess[] = [];
  let ns: Awaited<ReturnType<typeof testNamespace>>;
  let workDir: string;
  let manifestFile: string;
  let agentUser: string;
  let controllerUser: string;
  let edge1: Impersonated;
  let edge2: Impersonated;
  let usb: UsbFixture;

  /** A denial by this policy, naming the rule: 403 and "[<rule>]" in the message. */
  const expectDenied = (answer: Answer, rule: string, what: string) => {
    expect(answer.status, `${what}: ${answer.body.message}`).toBe(403);
    expect(answer.body.message, what).toContain(`ValidatingAdmissionPolicy '${policy}'`);
    expect(answer.body.message, what).toContain(`[${rule}]`);
  };
  const expectAllowed = (answer: Answer, what: string) => {
    expect(answer.status, `${what}: ${answer.body.message}`).toBeLessThan(300);
  };
  const nodesOf = async (name: string) => (await devices.get(name)).spec.nodes;
  const spindleResources = async (node: string) =>
    Object.keys((await core.readNode({ name: node })).status?.capacity ?? {}).filter((k) =>
      k.startsWith("spindle.dev/"),
    );

  beforeAll(async () => {
    workDir = await mkdtemp(join(tmpdir(), "spindle-node-scoped-"));
    ns = await testNamespace("node-scoped");
    const binaries = await ensureBinaries((line) => process.stderr.write(`[helm] ${line}\n`));
    if (!binaries.helm) throw new Error("ensureBinaries() returned no helm");
    const values = join(workDir, "values.yaml");
    await writeFile(values, JSON.stringify({ agent: { handlers: ["usb"] } }));
    const { stdout } = await run(
      binaries.helm,
      ["template", release, CHART, "--namespace", ns.name, "--values", values],
      {
        env: {
          ...process.env,
          HELM_CACHE_HOME: join(workDir, "helm"),
          HELM_CONFIG_HOME: join(workDir, "helm"),
          HELM_DATA_HOME: join(workDir, "helm"),
        },
        maxBuffer: 32 * 1024 * 1024,
      },
    );
    const objects = parseAllDocuments(stdout)
      .map((d) => d.toJS() as Manifest | null)
      .filter((o): o is Manifest => o !== null);
    expect(objects.filter((o) => o.kind === "ValidatingAdmissionPolicy").map((o) => o.metadata.name)).toEqual([policy]);
    // The chart's ServiceAccounts, RBAC and admission policy, for real.
    manifestFile = join(workDir, "applied.yaml");
    await writeFile(
      manifestFile,
      objects
        .filter((o) => APPLIED_KINDS.has(o.kind))
        .map((o) => JSON.stringify(o))
        .join("\n---\n"),
    );
    await kubectl("apply", "--server-side", "--field-manager", "spindle-test", "-f", manifestFile);
    const saOf = (kind: string) => objects.find((o) => o.kind === kind)!.spec!.template!.spec!.serviceAccountName!;
    agentUser = serviceAccountUser(ns.name, saOf("DaemonSet"));
    controllerUser = serviceAccountUser(ns.name, saOf("Deployment"));
    edge1 = new Impersonated(kc, agentUser, "edge-1");
    edge2 = new Impersonated(kc, agentUser, "edge-2");
    // The apiserver loads a new policy asynchronously: wait until it denies.
    await eventually("the policy to take effect", async () => {
      const a = await edge1.apply(nodeStatusPath("edge-2"), nodeResourcesBody("edge-2", {}), manager("edge-1"));
      return a.status === 403 && a.body.message?.includes(policy);
    });
    usb = await UsbFixture.create();
  });

  afterAll(async () => {
    for (const p of processes) await p.stop();
    await configs.delete(dcName).catch(() => undefined);
    for (const name of [local1, local2, shared, spare]) await devices.delete(name).catch(() => undefined);
    await rbac.deleteClusterRoleBinding({ name: beyondRbac }).catch(() => undefined);
    await rbac.deleteClusterRole({ name: beyondRbac }).catch(() => undefined);
    for (const node of ["edge-1", "edge-2"]) {
      await new Impersonated(kc, undefined)
        .apply(nodeStatusPath(node), nodeResourcesBody(node, {}), "spindle-test-cleanup")
        .catch(() => undefined);
    }
    if (manifestFile) await kubectl("delete", "--ignore-not-found", "--wait=false", "-f", manifestFile).catch(() => 0);
    await usb?.dispose();
    await ns?.remove();
    if (workDir) await rm(workDir, { recursive: true, force: true });
  });

  it("gives an agent pod's token its node: authentication.kubernetes.io/node-name in the user's extra", async () => {
    const sa = agentUser.split(":").pop()!;
    const { kubeconfig } = await podBoundKubeconfig(kc, inject("kubeconfig"), ns.name, sa, "edge-1", workDir);
    const { stdout } = await run(inject("kubectl"), ["--kubeconfig", kubeconfig, "auth", "whoami", "-o", "json"]);
    const review = JSON.parse(stdout) as {
      status: { userInfo: { username: string; extra?: Record<string, string[]> } };
    };
    expect(review.status.userInfo.username).toBe(agentUser);
    expect(review.status.userInfo.extra?.["authentication.kubernetes.io/node-name"]).toEqual(["edge-1"]);
  });

  it("lets the agent of edge-1 publish, join, change, leave and delete its Devices, advertise on its Node and record Events", async () => {
    // edge-2 publishes a local device and a shared one; edge-1 a local one.
    expectAllowed(
      await edge2.apply(devicePath(local2), deviceBody(local2, "edge-2", false, { A: "1" }), manager("edge-2")),
      "edge-2 publishes its local device",
    );
    expectAllowed(
      await edge2.apply(devicePath(shared), deviceBody(shared, "edge-2", true, { A: "1" }), manager("edge-2")),
      "edge-2 publishes a shared device",
    );
    expectAllowed(
      await edge1.apply(devicePath(local1), deviceBody(local1, "edge-1", false, { A: "1" }), manager("edge-1")),
      "edge-1 publishes its local device",
    );
    expectAllowed(
      await edge1.apply(devicePath(local1), deviceBody(local1, "edge-1", false, { A: "2" }), manager("edge-1")),
      "edge-1 changes its local device",
    );
    expect((await devices.get(local1)).spec.properties).toEqual({ A: "2" });
    // Joining a shared device: first unforced (as firstApply does), and a changed view later.
    expectAllowed(
      await edge1.apply(devicePath(shared), deviceBody(shared, "edge-1", true, { A: "1" }), manager("edge-1"), false),
      "edge-1 joins the shared device",
    );
    expect(await nodesOf(shared)).toEqual(["edge-2", "edge-1"]);
    expectAllowed(
      await edge1.apply(devicePath(shared), deviceBody(shared, "edge-1", true, { A: "1", B: "2" }), manager("edge-1")),
      "edge-1 reports more of the shared device",
    );
    expectAllowed(
      await edge1.apply(devicePath(shared), leaveBody(shared), manager("edge-1")),
      "edge-1 leaves the shared device",
    );
    const left = await devices.get(shared);
    expect(left.spec.nodes).toEqual(["edge-2"]);
    expect(left.metadata?.labels?.["node.spindle.dev/edge-1"]).toBeUndefined();
    expectAllowed(
      await edge1.apply(devicePath(shared), deviceBody(shared, "edge-1", true, { A: "1" }), manager("edge-1")),
      "edge-1 joins again",
    );
    // Extended resources on its own Node, then withdrawn.
    const resource = `spindle.dev/${local1}`;
    expectAllowed(
      await edge1.apply(nodeStatusPath("edge-1"), nodeResourcesBody("edge-1", { [resource]: "1" }), manager("edge-1")),
      "edge-1 advertises on its Node",
    );
    expect(await spindleResources("edge-1")).toContain(resource);
    expectAllowed(
      await edge1.apply(nodeStatusPath("edge-1"), nodeResourcesBody("edge-1", {}), manager("edge-1")),
      "edge-1 withdraws",
    );
    expect(await spindleResources("edge-1")).not.toContain(resource);
    // The external handlers registered on it, named on its own Node (merge patch of status).
    for (const names of ["opcua,acme", null])
      expectAllowed(
        await edge1.call(
          "PATCH",
          nodeStatusPath("edge-1"),
          { metadata: { annotations: { "spindle.dev/external-handlers": names } } },
          { contentType: "application/merge-patch+json" },
        ),
        `edge-1 names its external handlers: ${names}`,
      );
    expectAllowed(
      await edge1.call("POST", "/api/v1/namespaces/default/events", eventBody("edge-1")),
      "edge-1 records an Event",
    );
    // A ResourceSlice of its own node's pool (DRA placement), then gone again.
    expectAllowed(
      await edge1.apply(slicePath(`${release}-edge-1`), sliceBody(`${release}-edge-1`, "edge-1"), manager("edge-1")),
      "edge-1 publishes a ResourceSlice for its node",
    );
    expectAllowed(
      await edge1.call("DELETE", slicePath(`${release}-edge-1`), { kind: "DeleteOptions", apiVersion: "v1" }),
      "edge-1 deletes its ResourceSlice",
    );
    // The last node deletes, with the agent's preconditions.
    const current = await devices.get(local1);
    expectAllowed(
      await edge1.call("DELETE", devicePath(local1), {
        kind: "DeleteOptions",
        apiVersion: "v1",
        propagationPolicy: "Background",
        preconditions: { uid: current.metadata?.uid, resourceVersion: current.metadata?.resourceVersion },
      }),
      "edge-1 deletes its local device",
    );
    await expect(devices.get(local1)).rejects.toThrow(/404/);
  });

  it("denies every write for another node, or past the agent's own part, naming the rule", async () => {
    // Beyond the chart's RBAC, so that the policy (not RBAC) is what stops these two.
    await rbac.createClusterRole({
      body: {
        metadata: { name: beyondRbac },
        rules: [
          { apiGroups: ["spindle.dev"], resources: ["devices/status"], verbs: ["patch"] },
          { apiGroups: [""], resources: ["nodes"], verbs: ["patch"] },
        ],
      },
    });
    await rbac.createClusterRoleBinding({
      body: {
        metadata: { name: beyondRbac },
        roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: beyondRbac },
        subjects: [{ kind: "ServiceAccount", name: agentUser.split(":").pop()!, namespace: ns.name }],
      },
    });
    const before = { shared: await devices.get(shared), local2: await devices.get(local2) };
    const merge = (node: Impersonated, path: string, patch: unknown) =>
      node.call("PATCH", path, patch, {
        contentType: "application/merge-patch+json",
        query: { fieldManager: manager(node.node!) },
      });
    const noNode = new Impersonated(kc, agentUser);
    const attempts: [string, string, () => Promise<Answer>][] = [
      [
        "node-identity",
        "an agent token without a node",
        () => noNode.apply(devicePath(spare), deviceBody(spare, "edge-1", false, {}), manager("edge-1")),
      ],
      [
        "own-field-manager",
        "a write under edge-2's field manager",
        () => edge1.apply(devicePath(spare), deviceBody(spare, "edge-1", false, {}), manager("edge-2")),
      ],
      [
        "create-own-node",
        "a Device created for edge-2",
        () => edge1.apply(devicePath(spare), deviceBody(spare, "edge-2", false, {}), manager("edge-1")),
      ],
      [
        "publishers-only",
        "edge-2's local device rewritten",
        () => merge(edge1, devicePath(local2), { spec: { properties: { A: "evil" } } }),
      ],
      [
        "own-entry-only",
        "edge-2 removed from the shared device",
        () => merge(edge1, devicePath(shared), { spec: { nodes: ["edge-1"] } }),
      ],
      [
        "own-entry-only",
        "a foreign node added to the shared device",
        () =>
          edge1.call("PATCH", devicePath(shared), [{ op: "add", path: "/spec/nodes/-", value: "edge-3" }], {
            contentType: "application/json-patch+json",
            query: { fieldManager: manager("edge-1") },
          }),
      ],
      [
        "local-device",
        "edge-1 joining edge-2's local device",
        () => edge1.apply(devicePath(local2), deviceBody(local2, "edge-1", false, { A: "1" }), manager("edge-1")),
      ],
      [
        "own-node-label",
        "edge-2's node label taken off",
        () => merge(edge1, devicePath(shared), { metadata: { labels: { "node.spindle.dev/edge-2": null } } }),
      ],
      [
        "apply-only",
        "a merge patch of a Device edge-1 publishes",
        () => merge(edge1, devicePath(shared), { spec: { properties: { A: "evil" } } }),
      ],
      [
        "others-managed-fields",
        "edge-2's ownership of its entry forged away",
        () =>
          merge(edge1, devicePath(shared), {
            metadata: {
              managedFields: [
                {
                  manager: manager("edge-1"),
                  operation: "Apply",
                  apiVersion: "spindle.dev/v1alpha1",
                  fieldsType: "FieldsV1",
                  fieldsV1: { "f:spec": { "f:nodes": { 'v:"edge-1"': {} } } },
                },
              ],
            },
          }),
      ],
      [
        "no-finalizers",
        "a finalizer that would keep the Device",
        () =>
          edge1.apply(
            devicePath(shared),
            {
              ...deviceBody(shared, "edge-1", true, { A: "1" }),
              metadata: { ...deviceBody(shared, "edge-1", true, {}).metadata, finalizers: ["example.com/keep"] },
            },
            manager("edge-1"),
          ),
      ],
      [
        "delete-last-node",
        "deleting the shared device edge-2 still publishes",
        () => edge1.call("DELETE", devicePath(shared)),
      ],
      ["delete-last-node", "deleting edge-2's local device", () => edge1.call("DELETE", devicePath(local2))],
      [
        "device-status",
        "status.allocations written",
        () =>
          edge1.apply(
            `${devicePath(shared)}/status`,
            {
              apiVersion: "spindle.dev/v1alpha1",
              kind: "Device",
              metadata: { name: shared },
              status: { allocations: [{ slot: 0, holder: "x/stolen" }] },
            },
            manager("edge-1"),
          ),
      ],
      [
        "own-node-status",
        "resources advertised on edge-2",
        () =>
          edge1.apply(
            nodeStatusPath("edge-2"),
            nodeResourcesBody("edge-2", { "spindle.dev/fake": "100" }),
            manager("edge-1"),
          ),
      ],
      [
        "node-resources",
        "its own Node's cpu capacity raised",
        () => edge1.apply(nodeStatusPath("edge-1"), nodeResourcesBody("edge-1", { cpu: "512" }), manager("edge-1")),
      ],
      [
        "node-fields",
        "a label put on its own Node through status",
        () =>
          merge(edge1, nodeStatusPath("edge-1"), {
            metadata: { labels: { "node-role.kubernetes.io/control-plane": "" } },
          }),
      ],
      [
        "node-fields",
        "another annotation put on its own Node through status",
        () => merge(edge1, nodeStatusPath("edge-1"), { metadata: { annotations: { "acme.example/owner": "evil" } } }),
      ],
      [
        "own-node-status",
        "external handlers named on edge-2",
        () =>
          merge(edge1, nodeStatusPath("edge-2"), {
            metadata: { annotations: { "spindle.dev/external-handlers": "x" } },
          }),
      ],
      [
        "node-status-only",
        "its own Node object patched",
        () => merge(edge1, "/api/v1/nodes/edge-1", { spec: { unschedulable: true } }),
      ],
      [
        "own-resource-slices",
        "a ResourceSlice for edge-2's pool",
        () => edge1.apply(slicePath(`${release}-edge-2`), sliceBody(`${release}-edge-2`, "edge-2"), manager("edge-1")),
      ],
      [
        "event-source",
        "an Event recorded as edge-2",
        () => edge1.call("POST", "/api/v1/namespaces/default/events", eventBody("edge-2")),
      ],
    ];
    // RBAC picks the new binding up asynchronously: wait until the policy is what answers.
    const statusAttempt = attempts.find(([rule]) => rule === "device-status")![2];
    await eventually("the extra RBAC to take effect", async () =>
      (await statusAttempt()).body.message?.includes("[device-status]"),
    );
    for (const [rule, what, attempt] of attempts) expectDenied(await attempt(), rule, what);

    // Nothing of it landed.
    const after = { shared: await devices.get(shared), local2: await devices.get(local2) };
    expect(after.shared.spec).toEqual(before.shared.spec);
    expect(after.shared.metadata?.labels).toEqual(before.shared.metadata?.labels);
    expect(after.shared.metadata?.finalizers).toBeUndefined();
    expect(after.shared.status?.allocations).toBeUndefined();
    expect(after.local2.spec).toEqual(before.local2.spec);
    await expect(devices.get(spare)).rejects.toThrow(/404/);
    expect(await spindleResources("edge-2")).not.toContain("spindle.dev/fake");
    const node1 = await core.readNode({ name: "edge-1" });
    expect(node1.spec?.unschedulable).toBeFalsy();
    expect(node1.metadata?.labels?.["node-role.kubernetes.io/control-plane"]).toBeUndefined();
    expect(node1.status?.capacity?.cpu).not.toBe("512");

    // kubectl with --as and as-user-extra (in the kubeconfig: kubectl 1.34 has no flag for it) is denied alike.
    const asEdge1 = await impersonatingNodeKubeconfig(inject("kubeconfig"), agentUser, "edge-1", workDir);
    const denied = await run(inject("kubectl"), [
      "--kubeconfig",
      asEdge1,
      "delete",
      "device",
      shared,
      "--wait=false",
    ]).then(
      () => "",
      (err: { stderr?: string }) => err.stderr ?? String(err),
    );
    expect(denied).toContain("[delete-last-node]");
    expect(await nodesOf(shared)).toEqual(["edge-2", "edge-1"]);
    await rbac.deleteClusterRoleBinding({ name: beyondRbac });
    await rbac.deleteClusterRole({ name: beyondRbac });
  });

  it("leaves the controller and an admin unaffected", async () => {
    const controller = new Impersonated(kc, controllerUser);
    const admin = new Impersonated(kc, undefined); // the sandbox admin itself
    // The controller writes allocations, and leaves for a deleted node under its field manager.
    expectAllowed(
      await controller.apply(
        `${devicePath(shared)}/status`,
        {
          apiVersion: "spindle.dev/v1alpha1",
          kind: "Device",
          metadata: { name: shared },
          status: { allocations: [{ slot: 0, holder: `${ns.name}/app` }] },
        },
        "spindle-controller",
      ),
      "the controller writes status.allocations",
    );
    expectAllowed(
      await controller.apply(devicePath(shared), leaveBody(shared), manager("edge-2")),
      "the controller leaves for edge-2",
    );
    expect(await nodesOf(shared)).toEqual(["edge-1"]);
    // An admin edits what no agent may.
    expectAllowed(
      await admin.call(
        "PATCH",
        devicePath(local2),
        { spec: { properties: { A: "by-admin" } } },
        { contentType: "application/merge-patch+json" },
      ),
      "an admin edits edge-2's device",
    );
    expectAllowed(
      await admin.apply(
        nodeStatusPath("edge-2"),
        nodeResourcesBody("edge-2", { "spindle.dev/admin": "1" }),
        "spindle-test-admin",
      ),
      "an admin writes edge-2's status",
    );
    expectAllowed(
      await admin.apply(nodeStatusPath("edge-2"), nodeResourcesBody("edge-2", {}), "spindle-test-admin"),
      "and takes it back",
    );
    // The controller deletes a Device two nodes still publish (edge-2 joins first).
    expectAllowed(
      await edge2.apply(devicePath(shared), deviceBody(shared, "edge-2", true, { A: "1" }), manager("edge-2")),
      "edge-2 joins again",
    );
    expect(await nodesOf(shared)).toEqual(["edge-1", "edge-2"]);
    expectAllowed(
      await controller.call("DELETE", devicePath(shared)),
      "the controller deletes a Device two nodes publish",
    );
    expectAllowed(await admin.call("DELETE", devicePath(local2)), "an admin deletes edge-2's device");
  });

  it("keeps the real agent working with a pod-bound token, and stops it when it claims another node", async () => {
    const sa = agentUser.split(":").pop()!;
    const own = await podBoundKubeconfig(kc, inject("kubeconfig"), ns.name, sa, "edge-1", workDir);
    const agent = await SpindleProcess.start(`scoped-agent-${suffix}`, ["agent", "--node", "edge-1"], {
      KUBECONFIG: own.kubeconfig,
      SPINDLE_HANDLERS: "usb",
      SPINDLE_HTTP_ADDRESS: "",
    });
    processes.push(agent);
    await configs.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: dcName },
      spec: {
        discoveryHandler: {
          name: "usb",
          discoveryDetails: { sysfsRoot: usb.sysfsRoot, vendorIds: { action: "Include", items: ["0403"] } },
        },
        capacity: 1,
        offlineGraceSeconds: 1,
      },
    });
    await usb.plug({ port: "1-1", vendorId: "0403", productId: "6001", serial: "S1" });
    const published = async () => (await devices.list()).items.filter((d) => d.spec.configurationName === dcName);
    const [device] = await eventually("the agent to publish the Device", async () => {
      const list = await published();
      return list.length === 1 ? list : undefined;
    });
    expect(device!.spec.nodes).toEqual(["edge-1"]);
    const resource = `spindle.dev/${device!.metadata!.name}`;
    await eventually("the extended resource on edge-1", async () =>
      (await spindleResources("edge-1")).includes(resource),
    );

    // The same token on an agent that says it runs on edge-2: every write is refused.
    const impostor = await SpindleProcess.start(`scoped-impostor-${suffix}`, ["agent", "--node", "edge-2"], {
      KUBECONFIG: own.kubeconfig,
      SPINDLE_HANDLERS: "usb",
      SPINDLE_HTTP_ADDRESS: "",
    });
    processes.push(impostor);
    await eventually("the impostor's write to be denied", async () => impostor.log().includes("[own-field-manager]"));
    expect((await published()).flatMap((d) => d.spec.nodes)).toEqual(["edge-1"]);
    await impostor.stop();

    await usb.unplug("1-1");
    await eventually("the agent to delete the Device", async () => (await published()).length === 0, 30_000);
    await eventually("the resource withdrawn", async () => !(await spindleResources("edge-1")).includes(resource));
    const refused = agent
      .log()
      .split("\n")
      .filter((l) => /ValidatingAdmissionPolicy|forbidden|: 403\b/i.test(l));
    expect(refused).toEqual([]);
  });
});
