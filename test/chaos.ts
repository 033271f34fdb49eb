/**
 * The chaos runner (issue 10): real agents and controllers, all talking to kube-apiserver through
 * one seeded FaultProxy, while a seeded sequence of random operations plugs and unplugs USB
 * devices, creates, edits (into invalid and back) and deletes DeviceSpinApps, deletes and edits
 * managed SpinApps by hand, changes a DeviceConfiguration's capacity, kills the leading
 * controller and deletes and re-creates a Node. Then the faults stop (`proxy.calm()`) and the
 * runner polls the apiserver directly, never through Spindle, until every invariant holds:
 *
 *  0. the Devices are exactly the plugged fixture devices, one per (device, node), with the
 *     configuration's current capacity;
 *  1. the cluster is a fixpoint of the planner: `plan()` over what was listed has no SpinApp,
 *     slot or Device writes left (exactly the desired SpinApps exist, with the desired spec);
 *  2. an independent check that does not trust `plan()`: no device over-allocated, allocations
 *     match the SpinApps' replicas with unique slots, no two SpinApps for one (DeviceSpinApp,
 *     device), every SpinApp carries its Device's USB_SERIAL as `usb_serial` and is owned by it;
 *  3. each Node's `spindle.dev/*` extended resources are exactly its Devices, valued at capacity;
 *  4. a DeviceSpinApp left invalid at the end still has the SpinApps it had when it was made
 *     invalid, unless something that may legitimately remove one happened to it since.
 *
 * Convergence is the start of a streak of checks, at least STABLE_MS long, in which every
 * invariant held. Must run inside the vitest e2e project (it uses the sandbox from global-setup
 * through `inject`). The USB agent runs every usb DeviceConfiguration, and both fixtures are on
 * this host, so each node sees every fixture device and publishes it as its own node-local Device.
 */
import { writeFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as k8s from "@kubernetes/client-node";
import { UsbFixture } from "../discovery-handlers/usb/mock.js";
import type { Device } from "../src/api/device.js";
import { type ObservedSpinApp, plan, type RawObject, type Snapshot } from "../src/controller/plan.js";
import { DEVICE_LABEL, DSA_LABEL } from "../src/controller/spin-app-builder.js";
import { statusCode } from "../src/k8s/client.js";
import { DEVICE_CONFIGURATIONS, DEVICE_SPIN_APPS, DEVICES, ResourceClient, SPIN_APPS } from "../src/k8s/resources.js";
import { EXECUTOR, SANDBOX_NODES, sandboxNode } from "../src/sandbox/control-plane.js";
import { kubeConfig, sandboxFaultProxy, testNamespace } from "./e2e/cluster.js";
import { SpindleProcess } from "./e2e/spindle-process.js";
import type { FaultCounts, FaultPlan, FaultProxy } from "./fault-proxy.js";

type Obj = k8s.KubernetesObject & Record<string, unknown>;
type DeviceObj = Device & Obj;
type SpinAppObj = Obj & ObservedSpinApp;

export interface ChaosOptions {
  seed: number;
  /** Random operations to run (the final restores of invalid DeviceSpinApps come on top). */
  operations: number;
  /** Pause between operations, ms (min, max). */
  gapMs?: [number, number];
  /** Give up waiting for convergence after this long (ms). */
  convergenceLimitMs?: number;
  /** Progress lines (op log as it happens). */
  log?: (line: string) => void;
  /** For breaking the checks on purpose: keep injecting faults after the operations. */
  skipCalm?: boolean;
  /** For breaking the checks on purpose: runs after the calm, before convergence is measured. */
  afterCalm?: (run: ChaosHandles) => Promise<void>;
}

/** What a run started, for `afterCalm`. */
export interface ChaosHandles {
  namespace: string;
  configurations: string[];
  fixtures: UsbFixture[];
  plugged: readonly { fixture: number; port: string; serial: string }[];
  controllers: SpindleProcess[];
  agents: SpindleProcess[];
}

export interface ChaosFaults {
  errors: number;
  resets: number;
  watchCloses: number;
  delays: number;
  firstListFailures: number;
  total: number;
}

export interface ChaosResult {
  seed: number;
  /** Operations performed (random ones plus the final restores). */
  operations: number;
  operationsByKind: Record<string, number>;
  faults: ChaosFaults;
  /** Requests that went through the proxy. */
  requests: number;
  /** From calm to the start of the stable streak; the time waited when it never converged. */
  convergenceSeconds: number;
  converged: boolean;
  /** Invariant violations at the end (0 when converged). */
  violations: number;
  /** What failed, with the offending objects. */
  violationDetails: string[];
  opLog: string[];
  /** Everything needed to debug a red run: op log, faults injected, last violations, process logs. */
  debugFile: string;
  logFiles: Record<string, string>;
}

/** The faults while operations run. failFirstList counts from setPlan, which a new controller re-arms. */
export const CHAOS_PLAN: Partial<FaultPlan> = {
  errorRate: 0.1,
  resetRate: 0.05,
  watchCloseRate: 0.5,
  watchCloseMinMs: 200,
  watchCloseMaxMs: 4000,
  delayRate: 0.2,
  maxDelayMs: 1000,
  failFirstList: 2,
};

const POLL_MS = 250;
const STABLE_MS = 2000;
const PORTS = ["1-1", "1-2", "1-3", "1-4", "1-5", "1-6"];
const MAX_PLUGGED = 4; // per fixture; every plugged device becomes one Device per node
const MAX_DSAS = 4;
const NODE_CYCLED = "edge-2";
const LEASE = "spindle-controller";
const MANAGER = "chaos-test";

/** mulberry32: a seed gives one fixed sequence. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The candidate that `roll` (0..1) lands on, each taking a share of the range by its weight. */
function weighted<T extends { weight: number }>(candidates: readonly T[], roll: number): T {
  let left = roll * candidates.reduce((s, o) => s + o.weight, 0);
  for (const c of candidates) {
    left -= c.weight;
    if (left < 0) return c;
  }
  return candidates[candidates.length - 1]!;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Plugged {
  fixture: number;
  port: string;
  serial: string;
}

interface DsaRecord {
  name: string;
  fixture: number;
  /** The valid spec it has (or returns to). */
  spec: Record<string, unknown>;
  invalid?: "image" | "replicas";
  /** While invalid: the SpinApps it had when it was made invalid, by name, unless since disrupted. */
  kept?: Map<string, { uid: string; device: string; deviceUid: string }>;
}

interface Observed {
  dsas: Obj[];
  devices: DeviceObj[];
  spinApps: SpinAppObj[];
  configurations: Obj[];
  nodes: k8s.V1Node[];
}

/** Runs one seeded chaos run; cleans up everything it started, also when it throws. */
export async function runChaos(options: ChaosOptions): Promise<ChaosResult> {
  const { seed } = options;
  const random = mulberry32(seed);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
  const int = (min: number, max: number) => min + Math.floor(random() * (max - min + 1));
  const [gapMin, gapMax] = options.gapMs ?? [150, 500];
  const limitMs = options.convergenceLimitMs ?? 60_000;

  const kc = kubeConfig();
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const coordination = kc.makeApiClient(k8s.CoordinationV1Api);
  const configs = new ResourceClient<Obj>(kc, DEVICE_CONFIGURATIONS, MANAGER);
  const devicesApi = new ResourceClient<DeviceObj>(kc, DEVICES, MANAGER);
  const dsasApi = new ResourceClient<Obj>(kc, DEVICE_SPIN_APPS, MANAGER);
  const spinAppsApi = new ResourceClient<SpinAppObj>(kc, SPIN_APPS, MANAGER);
  const byHand = new ResourceClient<Obj>(kc, SPIN_APPS, "someone-else");
  // Deletes through client-node: its requests frame their bodies (see deleteObject).
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  const deleteObject = (type: typeof SPIN_APPS, name: string, namespace?: string) =>
    (namespace
      ? custom.deleteNamespacedCustomObject({
          group: type.group,
          version: type.version,
          plural: type.plural,
          namespace,
          name,
        })
      : custom.deleteClusterCustomObject({ group: type.group, version: type.version, plural: type.plural, name })
    ).catch((err: unknown) => {
      if (statusCode(err) !== 404) throw err;
    });

  const started = Date.now();
  const opLog: string[] = [];
  const operationsByKind: Record<string, number> = {};
  const note = (line: string) => {
    const entry = `+${((Date.now() - started) / 1000).toFixed(1)}s ${line}`;
    opLog.push(entry);
    options.log?.(`[chaos seed ${seed}] ${entry}`);
  };

  const processes: SpindleProcess[] = [];
  const controllers = new Map<string, SpindleProcess>();
  const fixtures: UsbFixture[] = [];
  const dcNames: string[] = [];
  const capacities: number[] = [];
  let proxy: FaultProxy | undefined;
  let ns: Awaited<ReturnType<typeof testNamespace>> | undefined;
  const workDir = await mkdtemp(join(tmpdir(), `spindle-chaos-${seed}-`));
  const debugFile = join(workDir, "chaos.json");
  let proxyKubeconfig = "";
  let controllerCount = 0;

  const plugged: Plugged[] = [];
  let serialCount = 0;
  const dsaRecords = new Map<string, DsaRecord>();
  let dsaCount = 0;
  let imageVersion = 1;

  const startController = async () => {
    const identity = `chaos-${++controllerCount}`;
    const p = await SpindleProcess.start(
      `chaos${seed}-${identity}`,
      ["controller", "--lease-namespace", ns!.name, "--lease-seconds", "4", "--identity", identity],
      { KUBECONFIG: proxyKubeconfig },
    );
    processes.push(p);
    controllers.set(identity, p);
    return identity;
  };

  const applyConfig = (i: number) =>
    configs.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: dcNames[i] },
      spec: {
        discoveryHandler: { name: "usb", discoveryDetails: { sysfsRoot: fixtures[i]!.sysfsRoot, pollSeconds: 1 } },
        capacity: capacities[i],
        offlineGraceSeconds: 2,
      },
    });

  const applyDsa = (name: string, spec: Record<string, unknown>) =>
    dsasApi.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceSpinApp",
      metadata: { name, namespace: ns!.name },
      spec,
    });

  const templateSpec = (r: DsaRecord) => (r.spec.template as { spec: Record<string, unknown> }).spec;

  /** Everything that may legitimately remove a kept SpinApp of an invalid DeviceSpinApp. */
  const disrupt = (why: string, match: (k: { device: string; name: string }, r: DsaRecord) => boolean) => {
    for (const r of dsaRecords.values())
      for (const [name, k] of r.kept ?? new Map())
        if (match({ ...k, name }, r)) {
          r.kept!.delete(name);
          note(`  (${name} of invalid ${r.name} may now go: ${why})`);
        }
  };

  const observe = async (): Promise<Observed> => {
    const [dsas, devices, spinApps, configurations, nodes] = await Promise.all([
      dsasApi.list(ns!.name).then((l) => l.items),
      devicesApi.list().then((l) => l.items.filter((d) => dcNames.includes(d.spec.configurationName))),
      spinAppsApi.list(ns!.name, DSA_LABEL).then((l) => l.items),
      Promise.all(dcNames.map((n) => configs.get(n))),
      core.listNode().then((l) => l.items),
    ]);
    return { dsas, devices, spinApps, configurations, nodes };
  };

  // ---- operations ----------------------------------------------------------------------------

  type Op = { kind: string; weight: number; when: () => boolean; run: () => Promise<void> };
  const validDsas = () => [...dsaRecords.values()].filter((r) => !r.invalid);
  const invalidDsas = () => [...dsaRecords.values()].filter((r) => r.invalid);
  const managedSpinApps = async () =>
    (await spinAppsApi.list(ns!.name, DSA_LABEL)).items.filter((s) => !s.metadata.deletionTimestamp);

  const restore = async (r: DsaRecord, why: string) => {
    if (random() < 0.5) templateSpec(r).image = `ghcr.io/acme/chaos:v${++imageVersion}`;
    await applyDsa(r.name, r.spec);
    note(`restore ${r.name} to a valid spec (${why}): image ${templateSpec(r).image}`);
    r.invalid = undefined;
    r.kept = undefined;
  };

  const ops: Op[] = [
    {
      kind: "plug",
      weight: 3,
      when: () => fixtures.some((_, i) => plugged.filter((p) => p.fixture === i).length < MAX_PLUGGED),
      run: async () => {
        const fixture = pick(
          fixtures.map((_, i) => i).filter((i) => plugged.filter((p) => p.fixture === i).length < MAX_PLUGGED),
        );
        const port = pick(PORTS.filter((p) => !plugged.some((x) => x.fixture === fixture && x.port === p)));
        const serial = `S${seed}X${++serialCount}`;
        await fixtures[fixture]!.plug({ port, vendorId: "0403", productId: "6001", serial, manufacturer: "FTDI" });
        plugged.push({ fixture, port, serial });
        note(`plug ${serial} into ${dcNames[fixture]} port ${port}`);
      },
    },
    {
      kind: "unplug",
      weight: 2,
      when: () => plugged.length > 0,
      run: async () => {
        const p = pick(plugged);
        await fixtures[p.fixture]!.unplug(p.port);
        plugged.splice(plugged.indexOf(p), 1);
        note(`unplug ${p.serial} from ${dcNames[p.fixture]} port ${p.port}`);
        const gone = (await devicesApi.list()).items
          .filter((d) => d.spec.properties.USB_SERIAL === p.serial)
          .map((d) => d.metadata.name!);
        disrupt(`${p.serial} unplugged`, (k) => gone.includes(k.device));
      },
    },
    {
      kind: "createDeviceSpinApp",
      weight: 2,
      when: () => dsaRecords.size < MAX_DSAS,
      run: async () => {
        const fixture = int(0, fixtures.length - 1);
        const name = `app-${++dsaCount}`;
        const spec: Record<string, unknown> = {
          deviceConfiguration: dcNames[fixture],
          template: {
            spec: { image: `ghcr.io/acme/chaos:v${++imageVersion}`, executor: EXECUTOR, replicas: int(1, 2) },
          },
        };
        if (random() < 0.3) spec.maxApps = int(1, 3);
        const serials = plugged.filter((p) => p.fixture === fixture).map((p) => p.serial);
        const roll = random();
        if (roll < 0.2 && serials.length > 0)
          spec.selector = {
            matchExpressions: [{ property: "USB_SERIAL", operator: "NotIn", values: [pick(serials)] }],
          };
        else if (roll < 0.4)
          spec.selector = {
            matchExpressions: [
              {
                property: "USB_SERIAL",
                operator: "In",
                // Some present ones and the next serial to be plugged.
                values: [...serials.filter(() => random() < 0.6), `S${seed}X${serialCount + 1}`],
              },
            ],
          };
        await applyDsa(name, spec);
        dsaRecords.set(name, { name, fixture, spec });
        note(`create DeviceSpinApp ${name} ${JSON.stringify(spec)}`);
      },
    },
    {
      kind: "editDeviceSpinAppValid",
      weight: 1,
      when: () => validDsas().length > 0,
      run: async () => {
        const r = pick(validDsas());
        const t = templateSpec(r);
        if (random() < 0.5) t.image = `ghcr.io/acme/chaos:v${++imageVersion}`;
        else t.replicas = int(1, 2);
        await applyDsa(r.name, r.spec);
        note(`edit ${r.name}: image ${t.image}, replicas ${t.replicas}`);
      },
    },
    {
      kind: "editDeviceSpinAppInvalid",
      weight: 2,
      when: () => validDsas().length > 0,
      run: async () => {
        const r = pick(validDsas());
        const how = random() < 0.5 ? "image" : "replicas";
        const bad = structuredClone(r.spec) as { template: { spec: Record<string, unknown> } };
        if (how === "image") bad.template.spec.image = "";
        else bad.template.spec.replicas = capacities[r.fixture]! + 1;
        await applyDsa(r.name, bad);
        // What it runs now must keep running (invariant 4), as far as can be seen right after.
        const [apps, devices] = await Promise.all([managedSpinApps(), devicesApi.list()]);
        r.kept = new Map();
        for (const s of apps) {
          if (s.metadata.labels?.[DSA_LABEL] !== r.name) continue;
          const device = s.metadata.labels?.[DEVICE_LABEL] ?? "";
          const d = devices.items.find((x) => x.metadata.name === device);
          if (d) r.kept.set(s.metadata.name!, { uid: s.metadata.uid!, device, deviceUid: d.metadata.uid! });
        }
        r.invalid = how;
        note(
          `edit ${r.name} into invalid (${how === "image" ? 'image ""' : `replicas ${bad.template.spec.replicas} > capacity`}); it runs ${[...r.kept.keys()].join(", ") || "nothing"}`,
        );
      },
    },
    {
      kind: "restoreDeviceSpinApp",
      weight: 2,
      when: () => invalidDsas().length > 0,
      run: () => restore(pick(invalidDsas()), "random"),
    },
    {
      kind: "deleteDeviceSpinApp",
      weight: 1,
      when: () => dsaRecords.size > 0,
      run: async () => {
        const r = pick([...dsaRecords.values()]);
        await deleteObject(DEVICE_SPIN_APPS, r.name, ns!.name);
        dsaRecords.delete(r.name);
        note(`delete DeviceSpinApp ${r.name}`);
      },
    },
    {
      kind: "deleteSpinApp",
      weight: 2,
      when: () => dsaRecords.size > 0,
      run: async () => {
        const apps = await managedSpinApps();
        if (apps.length === 0) return note("delete SpinApp: none to delete");
        const s = pick(apps);
        await deleteObject(SPIN_APPS, s.metadata.name!, ns!.name);
        note(`delete SpinApp ${s.metadata.name} by hand`);
        disrupt("deleted by hand", (k) => k.name === s.metadata.name);
      },
    },
    {
      kind: "editSpinApp",
      weight: 2,
      when: () => dsaRecords.size > 0,
      run: async () => {
        const apps = await managedSpinApps();
        if (apps.length === 0) return note("edit SpinApp: none to edit");
        const s = pick(apps);
        await byHand.apply({
          apiVersion: "core.spinkube.dev/v1alpha1",
          kind: "SpinApp",
          metadata: { name: s.metadata.name, namespace: ns!.name },
          spec: { image: "ghcr.io/evil/app:latest", executor: EXECUTOR, replicas: 1 },
        });
        note(`edit SpinApp ${s.metadata.name} by hand (image ghcr.io/evil/app:latest, force)`);
      },
    },
    {
      kind: "changeCapacity",
      weight: 1,
      when: () => true,
      run: async () => {
        const i = int(0, fixtures.length - 1);
        const before = capacities[i]!;
        capacities[i] = pick([1, 2, 3].filter((c) => c !== before));
        await applyConfig(i);
        note(`capacity of ${dcNames[i]} ${before} -> ${capacities[i]}`);
        disrupt("its configuration's capacity changed", (_k, r) => r.fixture === i);
      },
    },
    {
      kind: "killLeader",
      weight: 1,
      when: () => true,
      run: async () => {
        const lease = await coordination
          .readNamespacedLease({ name: LEASE, namespace: ns!.name })
          .catch(() => undefined);
        const holder = lease?.spec?.holderIdentity ?? "";
        const p = controllers.get(holder);
        if (!p) return note(`kill leader: no running leader (Lease holder "${holder}")`);
        await p.stop("SIGKILL");
        controllers.delete(holder);
        proxy!.setPlan(CHAOS_PLAN); // the replacement's first lists fail too
        const replacement = await startController();
        note(`kill leader ${holder} (SIGKILL); start ${replacement}`);
      },
    },
    {
      kind: "recreateNode",
      weight: 1,
      when: () => true,
      run: async () => {
        const devices = (await devicesApi.list()).items.filter((d) => d.spec.nodes.includes(NODE_CYCLED));
        const away = int(300, 2000);
        try {
          await core.deleteNode({ name: NODE_CYCLED });
          note(`delete Node ${NODE_CYCLED}`);
          disrupt(`Node ${NODE_CYCLED} deleted`, (k) => devices.some((d) => d.metadata.name === k.device));
          await sleep(away);
        } finally {
          await recreateNode();
        }
        note(`re-create Node ${NODE_CYCLED} after ${away} ms; Ready`);
      },
    },
  ];

  /** Creates the Node unless it exists, and waits for KWOK to mark it Ready. */
  const recreateNode = async () => {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const existing = await core.readNode({ name: NODE_CYCLED }).catch(() => undefined);
      if (existing && !existing.metadata?.deletionTimestamp) break;
      try {
        await core.createNode({ body: sandboxNode(NODE_CYCLED) });
        break;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await sleep(200); // 409: still being deleted
      }
    }
    // KWOK marks it Ready.
    while (Date.now() < deadline) {
      const n = await core.readNode({ name: NODE_CYCLED }).catch(() => undefined);
      if (n?.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True")) return;
      await sleep(200);
    }
    throw new Error(`Node ${NODE_CYCLED} not Ready 30 s after it was re-created`);
  };

  // ---- invariants ----------------------------------------------------------------------------

  const check = (o: Observed): string[] => {
    const v: string[] = [];
    const devicesByName = new Map(o.devices.map((d) => [d.metadata.name!, d]));
    const nodeNames = new Set(o.nodes.map((n) => n.metadata!.name!));

    // 0. Devices = plugged fixture devices × nodes.
    for (let i = 0; i < fixtures.length; i++) {
      const mine = o.devices.filter((d) => d.spec.configurationName === dcNames[i]);
      const want = plugged
        .filter((p) => p.fixture === i)
        .flatMap((p) => SANDBOX_NODES.map((n) => `${p.serial}@${n}`))
        .sort();
      const have = mine.map((d) => `${d.spec.properties.USB_SERIAL}@${d.spec.nodes.join("+")}`).sort();
      if (JSON.stringify(want) !== JSON.stringify(have))
        v.push(`[0 devices] ${dcNames[i]}: want ${JSON.stringify(want)}, have ${JSON.stringify(have)}`);
      for (const d of mine)
        if (d.spec.capacity !== capacities[i])
          v.push(`[0 devices] ${d.metadata.name} capacity ${d.spec.capacity}, configuration says ${capacities[i]}`);
    }

    // 1. A fixpoint of the planner.
    const snapshot: Snapshot = {
      deviceSpinApps: o.dsas as unknown as RawObject[],
      devices: o.devices,
      spinApps: o.spinApps,
      configurations: o.configurations as unknown as RawObject[],
      nodes: nodeNames,
      failures: new Map(),
      now: Date.now(),
      validateDetails: () => ({ ok: true }),
    };
    for (const a of plan(snapshot).actions) {
      if (a.kind === "applySpinApp")
        v.push(
          `[1 plan] applySpinApp ${a.spinApp.metadata.name} (${a.create ? "missing" : "drifted"}) for ${a.dsaKey} on ${a.device}`,
        );
      else if (a.kind === "deleteSpinApp") v.push(`[1 plan] deleteSpinApp ${a.name}: ${a.reason}`);
      else if (a.kind === "applyAllocations") {
        const d = devicesByName.get(a.device);
        v.push(
          `[1 plan] applyAllocations ${a.device}: want ${JSON.stringify(a.allocations)}, have ${JSON.stringify(d?.status?.allocations ?? [])} used ${d?.status?.used}`,
        );
      } else if (a.kind === "deleteDevice") v.push(`[1 plan] deleteDevice ${a.device} (nodes ${a.nodes} gone)`);
      else if (a.kind === "releaseNode") v.push(`[1 plan] releaseNode ${a.node} from ${a.device}`);
    }

    // 2. Independent of plan().
    const replicas = (s: SpinAppObj) => {
      const r = s.spec?.replicas;
      return typeof r === "number" ? r : 1;
    };
    const pairs = new Map<string, string[]>();
    const used = new Map<string, number>();
    for (const s of o.spinApps) {
      const name = s.metadata.name!;
      const device = s.metadata.labels?.[DEVICE_LABEL] ?? "";
      const pair = `${s.metadata.labels?.[DSA_LABEL]}/${device}`;
      pairs.set(pair, [...(pairs.get(pair) ?? []), name]);
      used.set(device, (used.get(device) ?? 0) + replicas(s));
      const d = devicesByName.get(device);
      if (!d) {
        v.push(`[2 spinapps] ${name} names device ${device}, which does not exist`);
        continue;
      }
      // The image its valid DeviceSpinApp asks for, checked here without plan(), so a planner
      // that stopped seeing drift cannot hide it. (An invalid one's SpinApps are left as they
      // run, hand edits included: the controller keeps no copy of the last valid spec.)
      const r = dsaRecords.get(s.metadata.labels?.[DSA_LABEL] ?? "");
      if (!r) v.push(`[2 spinapps] ${name} belongs to no DeviceSpinApp of this run`);
      else if (!r.invalid && s.spec?.image !== templateSpec(r).image)
        v.push(`[2 spinapps] ${name}: image ${s.spec?.image}, ${r.name} asks for ${templateSpec(r).image}`);
      const vars = (s.spec?.variables as { name: string; value?: string }[] | undefined) ?? [];
      const serial = vars.find((x) => x.name === "usb_serial")?.value;
      if (serial !== d.spec.properties.USB_SERIAL)
        v.push(`[2 spinapps] ${name}: usb_serial ${serial}, its Device ${device} has ${d.spec.properties.USB_SERIAL}`);
      const owners = (s.metadata.ownerReferences as k8s.V1OwnerReference[] | undefined) ?? [];
      const devOwners = owners.filter((r) => r.kind === "Device");
      if (devOwners.length !== 1 || devOwners[0]!.uid !== d.metadata.uid || devOwners[0]!.name !== device)
        v.push(
          `[2 spinapps] ${name}: owner references ${JSON.stringify(owners.map((r) => `${r.kind}/${r.name}/${r.uid}`))}, its Device is ${device}/${d.metadata.uid}`,
        );
    }
    for (const [pair, names] of pairs)
      if (names.length > 1) v.push(`[2 spinapps] ${names.length} SpinApps for ${pair}: ${names.join(", ")}`);
    for (const d of o.devices) {
      const name = d.metadata.name!;
      const sum = used.get(name) ?? 0;
      const allocations = d.status?.allocations ?? [];
      if (sum > d.spec.capacity)
        v.push(`[2 slots] ${name} over-allocated: ${sum} replicas, capacity ${d.spec.capacity}`);
      if (allocations.length !== sum)
        v.push(
          `[2 slots] ${name}: ${allocations.length} allocations for ${sum} replicas: ${JSON.stringify(allocations)}`,
        );
      if (new Set(allocations.map((a) => a.slot)).size !== allocations.length)
        v.push(`[2 slots] ${name}: duplicate slots ${JSON.stringify(allocations)}`);
    }

    // 3. Node extended resources = the node's Devices, at capacity (keys of this run's configurations).
    const ours = (key: string) => dcNames.some((c) => key.startsWith(`spindle.dev/${c}-`));
    for (const node of o.nodes) {
      const n = node.metadata!.name!;
      if (!SANDBOX_NODES.includes(n)) continue;
      const want = new Map(
        o.devices
          .filter((d) => d.spec.nodes.includes(n))
          .map((d) => [`spindle.dev/${d.metadata.name}`, String(d.spec.capacity)]),
      );
      for (const field of ["capacity", "allocatable"] as const) {
        const have = new Map(Object.entries(node.status?.[field] ?? {}).filter(([k]) => ours(k)));
        for (const [k, val] of want)
          if (have.get(k) !== val) v.push(`[3 node] ${n} status.${field}[${k}] = ${have.get(k)}, want ${val}`);
        for (const k of have.keys())
          if (!want.has(k)) v.push(`[3 node] ${n} status.${field}[${k}] names no Device of ${n}`);
      }
    }
    for (const n of SANDBOX_NODES) if (!nodeNames.has(n)) v.push(`[3 node] Node ${n} does not exist`);

    // 4. Keep last good.
    for (const r of dsaRecords.values()) {
      if (!r.invalid || !r.kept) continue;
      for (const [name, k] of r.kept) {
        const d = devicesByName.get(k.device);
        if (!d || d.metadata.uid !== k.deviceUid) continue; // its device went: it may go too
        const s = o.spinApps.find((x) => x.metadata.name === name);
        if (!s || s.metadata.uid !== k.uid || s.metadata.deletionTimestamp)
          v.push(
            `[4 keep] ${name} of ${r.name} (invalid: ${r.invalid}) ran on ${k.device} before the invalid edit and is ${s ? (s.metadata.deletionTimestamp ? "being deleted" : `replaced (uid ${s.metadata.uid}, was ${k.uid})`) : "gone"}`,
          );
      }
    }
    return v;
  };

  // ---- the run -------------------------------------------------------------------------------

  let result: ChaosResult | undefined;
  let lastViolations: string[] = [];
  const dumpDebug = (extra: Record<string, unknown> = {}) =>
    writeFileSync(
      debugFile,
      JSON.stringify(
        {
          seed,
          opLog,
          lastViolations,
          counts: proxy?.counts,
          faults: proxy?.faults,
          logs: Object.fromEntries(processes.map((p) => [p.name, p.logFile])),
          ...extra,
        },
        null,
        2,
      ),
    );
  try {
    ns = await testNamespace(`chaos-s${seed}`);
    const suffix = ns.name.slice(ns.name.lastIndexOf("-") + 1);
    for (const letter of ["a", "b"]) {
      fixtures.push(await UsbFixture.create());
      dcNames.push(`chaos-${suffix}-${letter}`);
      capacities.push(int(1, 3));
    }
    note(
      `namespace ${ns.name}; configurations ${dcNames.map((n, i) => `${n} (capacity ${capacities[i]})`).join(", ")}`,
    );
    for (let i = 0; i < fixtures.length; i++) await applyConfig(i);

    const link = await sandboxFaultProxy(seed, CHAOS_PLAN);
    proxy = link.proxy;
    proxyKubeconfig = link.kubeconfig;

    const agents: SpindleProcess[] = [];
    for (const node of SANDBOX_NODES) {
      const a = await SpindleProcess.agent(node, ["--handlers", "usb"], { KUBECONFIG: proxyKubeconfig });
      agents.push(a);
      processes.push(a);
    }
    await startController();
    await startController();
    note(`started agents on ${SANDBOX_NODES.join(", ")} and controllers chaos-1, chaos-2, all through the fault proxy`);
    // Operations are only chaos while something runs to suffer them.
    const upBy = Date.now() + 60_000;
    while (
      !(
        agents.every((a) => a.entries().some((e) => e.msg === "agent started")) &&
        [...controllers.values()].some((c) => c.entries().some((e) => e.msg === "caches synced"))
      )
    ) {
      if (Date.now() > upBy) throw new Error("agents and a controller did not start within 60 s");
      await sleep(200);
    }
    note(`processes up (${proxy.counts.firstListFailures} first lists failed so far)`);

    for (let n = 0; n < options.operations; n++) {
      const candidates = n === 0 ? [ops[0]!] : n === 1 ? [ops[2]!] : ops.filter((o) => o.when());
      const op = weighted(candidates, random());
      operationsByKind[op.kind] = (operationsByKind[op.kind] ?? 0) + 1;
      try {
        await op.run();
      } catch (err) {
        note(`${op.kind} failed: ${err instanceof Error ? err.message : String(err)}`);
      }
      await sleep(int(gapMin, gapMax));
    }
    // Some invalid DeviceSpinApps go back to valid; the rest stay invalid, for invariant 4.
    for (const r of invalidDsas()) {
      if (random() < 0.5) {
        operationsByKind.restoreDeviceSpinApp = (operationsByKind.restoreDeviceSpinApp ?? 0) + 1;
        await restore(r, "final");
      } else note(`leave ${r.name} invalid (${r.invalid})`);
    }

    // However the random operations left it, end on a state worth checking: devices plugged
    // and bound on both configurations, then SpinApps edited and deleted by hand right before
    // the calm, so every run proves drift repair and re-creation, not just a quiet cluster.
    const final = async (kind: string) => {
      const op = ops.find((o) => o.kind === kind)!;
      operationsByKind[kind] = (operationsByKind[kind] ?? 0) + 1;
      await op
        .run()
        .catch((err: unknown) => note(`${kind} failed: ${err instanceof Error ? err.message : String(err)}`));
    };
    for (let i = 0; i < fixtures.length; i++) {
      while (plugged.filter((p) => p.fixture === i).length < 2) {
        const port = PORTS.find((p) => !plugged.some((x) => x.fixture === i && x.port === p))!;
        const serial = `S${seed}X${++serialCount}`;
        await fixtures[i]!.plug({ port, vendorId: "0403", productId: "6001", serial, manufacturer: "FTDI" });
        plugged.push({ fixture: i, port, serial });
        operationsByKind.plug = (operationsByKind.plug ?? 0) + 1;
        note(`plug ${serial} into ${dcNames[i]} port ${port} (final)`);
      }
      if (!validDsas().some((r) => r.fixture === i && !r.spec.selector)) {
        const name = `app-${++dsaCount}`;
        const spec = {
          deviceConfiguration: dcNames[i],
          template: { spec: { image: `ghcr.io/acme/chaos:v${++imageVersion}`, executor: EXECUTOR, replicas: 1 } },
        };
        await applyDsa(name, spec);
        dsaRecords.set(name, { name, fixture: i, spec });
        operationsByKind.createDeviceSpinApp = (operationsByKind.createDeviceSpinApp ?? 0) + 1;
        note(`create DeviceSpinApp ${name} ${JSON.stringify(spec)} (final)`);
      }
    }
    await recreateNode(); // whatever happened to the operations, the Node is back before the calm
    const boundBy = Date.now() + 20_000;
    while ((await managedSpinApps().catch(() => [])).length < 2 && Date.now() < boundBy) await sleep(250);
    await final("editSpinApp");
    await final("deleteSpinApp");
    await final("editSpinApp");
    if (!options.skipCalm) proxy.calm();
    const calmAt = Date.now();
    note(`calm${options.skipCalm ? " SKIPPED" : ""} (faults: ${JSON.stringify(proxy.counts)})`);
    await options.afterCalm?.({
      namespace: ns.name,
      configurations: dcNames,
      fixtures,
      plugged,
      controllers: [...controllers.values()],
      agents,
    });
    let streakStart: number | undefined;
    let convergedAt: number | undefined;
    while (Date.now() - calmAt < limitMs) {
      const at = Date.now();
      try {
        lastViolations = check(await observe());
      } catch (err) {
        lastViolations = [`[read] ${err instanceof Error ? err.message : String(err)}`];
      }
      if (lastViolations.length === 0) {
        streakStart ??= at;
        if (Date.now() - streakStart >= STABLE_MS) {
          convergedAt = streakStart;
          break;
        }
      } else streakStart = undefined;
      await sleep(POLL_MS);
    }
    const convergenceSeconds = ((convergedAt ?? Date.now()) - calmAt) / 1000;
    note(
      convergedAt
        ? `converged ${convergenceSeconds.toFixed(2)} s after calm`
        : `NOT converged after ${convergenceSeconds} s`,
    );
    const c: FaultCounts = proxy.counts;
    result = {
      seed,
      operations: Object.values(operationsByKind).reduce((a, b) => a + b, 0),
      operationsByKind,
      faults: {
        errors: c.errors,
        resets: c.resets,
        watchCloses: c.watchCloses,
        delays: c.delays,
        firstListFailures: c.firstListFailures,
        total: c.errors + c.resets + c.watchCloses + c.delays + c.firstListFailures,
      },
      requests: c.requests,
      convergenceSeconds: Number(convergenceSeconds.toFixed(2)),
      converged: convergedAt !== undefined,
      violations: convergedAt !== undefined ? 0 : lastViolations.length,
      violationDetails: convergedAt !== undefined ? [] : lastViolations,
      opLog,
      debugFile,
      logFiles: Object.fromEntries(processes.map((p) => [p.name, p.logFile])),
    };
    return result;
  } finally {
    try {
      dumpDebug({ result: result && { ...result, opLog: undefined } });
    } catch {
      // best effort
    }
    for (const p of processes) await p.stop().catch(() => undefined);
    await proxy?.stop().catch(() => undefined);
    await cleanUpNodes(core, dcNames).catch(() => undefined);
    for (const name of dcNames) await deleteObject(DEVICE_CONFIGURATIONS, name).catch(() => undefined);
    for (const f of fixtures) await f.dispose().catch(() => undefined);
    await ns?.remove();
  }
}

/** Makes sure the cycled Node exists, and takes this run's extended resources off the Nodes. */
async function cleanUpNodes(core: k8s.CoreV1Api, dcNames: string[]): Promise<void> {
  const exists = await core.readNode({ name: NODE_CYCLED }).then(
    () => true,
    () => false,
  );
  if (!exists) await core.createNode({ body: sandboxNode(NODE_CYCLED) }).catch(() => undefined);
  for (const name of SANDBOX_NODES) {
    const node = await core.readNode({ name }).catch(() => undefined);
    if (!node) continue;
    const stale = (m: Record<string, string> | undefined) =>
      Object.fromEntries(
        Object.keys(m ?? {})
          .filter((k) => dcNames.some((c) => k.startsWith(`spindle.dev/${c}-`)))
          .map((k) => [k, null]),
      );
    const capacity = stale(node.status?.capacity);
    const allocatable = stale(node.status?.allocatable);
    if (Object.keys(capacity).length + Object.keys(allocatable).length === 0) continue;
    await core.patchNodeStatus(
      { name, body: { status: { capacity, allocatable } } },
      k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch),
    );
  }
}

/** The failure message of a red run: what failed, the op log, the faults, where the logs are. */
export function describeRun(r: ChaosResult): string {
  return [
    `chaos seed ${r.seed}: ${r.converged ? "converged" : "did not converge"} in ${r.convergenceSeconds} s after calm; ${r.violations} violation(s)`,
    ...r.violationDetails.map((v) => `  ${v}`),
    "operations:",
    ...r.opLog.map((l) => `  ${l}`),
    `faults injected: ${JSON.stringify(r.faults)} over ${r.requests} requests`,
    `debug file (op log, every fault, process logs): ${r.debugFile}`,
    ...Object.entries(r.logFiles).map(([k, v]) => `  log ${k}: ${v}`),
  ].join("\n");
}

/** The figures printed (and collected by `npm run chaos`) for one run. */
export function figuresOf(r: ChaosResult): Record<string, unknown> {
  return {
    seed: r.seed,
    operations: r.operations,
    operationsByKind: r.operationsByKind,
    faults: r.faults,
    requests: r.requests,
    convergenceSeconds: r.convergenceSeconds,
    converged: r.converged,
    violations: r.violations,
  };
}
