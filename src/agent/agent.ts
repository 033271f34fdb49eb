import { join } from "node:path";
import type * as k8s from "@kubernetes/client-node";
import type { HandlerRegistry } from "../../discovery-handlers/external/registry.js";
import type { DiscoveryHandler } from "../../discovery-handlers/handler.js";
import { formatIssues } from "../api/common.js";
import {
  type DeviceConfiguration,
  deviceConfiguration,
  EXTERNAL_HANDLERS_ANNOTATION,
} from "../api/device-configuration.js";
import { Api, ApiError } from "../k8s/api.js";
import { Cache, sleep } from "../k8s/cache.js";
import { DRIVER, type PlacementOption } from "../k8s/dra.js";
import { EventRecorder } from "../k8s/events.js";
import type { ClusterAccess } from "../k8s/kubeconfig.js";
import { apiVersionOf, DEVICE_CONFIGURATIONS, NODES, objectPath } from "../k8s/resources.js";
import type { Logger } from "../log/logger.js";
import { DevicePublisher } from "./device-publisher.js";
import { resolveDiscoveryProperties } from "./discovery-properties.js";
import { AgentDra } from "./dra.js";
import type { ClaimAllocation, KubeletPlugin } from "./kubelet-plugin.js";
import { ReferenceWatch } from "./reference-watch.js";

interface DiscoveryRun {
  /** The discoveryHandler part of the spec it was started with: a change restarts it. */
  key: string;
  abort: AbortController;
  done: Promise<void>;
}

export interface AgentOptions {
  kc: ClusterAccess;
  nodeName: string;
  handlers: ReadonlyMap<string, DiscoveryHandler<unknown>>;
  /** Handlers that exist but are switched off on this node: their configurations are skipped quietly. */
  disabled?: ReadonlySet<string>;
  /** External handlers registered over Akri's protocol (--registration-socket); they win over built-ins they may replace. */
  external?: Pick<HandlerRegistry, "get" | "onChange" | "names">;
  /** How SpinApps reach this node's devices (default auto: DRA where the controller set it up). */
  placement?: PlacementOption;
  /** The kubelet's root (e.g. /var/lib/kubelet): serve the DRA kubelet plugin for spindle.dev there. */
  kubeletDir?: string;
  log: Logger;
}

type ConfigObj = DeviceConfiguration & k8s.KubernetesObject;

/**
 * The per-node agent: one discovery per DeviceConfiguration (started, restarted on a change of
 * its discoveryHandler, stopped on delete), its device sets handed to the DevicePublisher. The
 * publisher looks the configuration up when it reconciles, so an edit of capacity, properties or
 * grace applies at once and is never undone by a discovery started under the old spec. An edit
 * that does not validate keeps the last valid spec running, and is reported.
 */
export class Agent {
  readonly publisher: DevicePublisher;
  readonly dra: AgentDra;
  private kubeletPlugin: KubeletPlugin | undefined;
  private configurations: Cache<ConfigObj>;
  private runs = new Map<string, DiscoveryRun>();
  /** The last valid spec of each configuration, and the generation it came from. */
  private valid = new Map<string, DeviceConfiguration>();
  private seen = new Map<string, string>();
  private abort = new AbortController();
  private events: EventRecorder;
  private log: Logger;
  private stopped = false;

  constructor(private options: AgentOptions) {
    this.log = options.log.child({ node: options.nodeName });
    this.events = new EventRecorder(options.kc, "spindle-agent", this.log, options.nodeName);
    this.publisher = new DevicePublisher(
      options.kc,
      options.nodeName,
      this.log,
      this.events,
      (name) => this.valid.get(name),
      {
        advertiseNodeResources: () => this.dra.mode() === "node-resources",
        onPublishedChange: () => {
          this.dra.sync();
          this.kubeletPlugin?.devicesChanged();
        },
      },
    );
    this.dra = new AgentDra({
      kc: options.kc,
      nodeName: options.nodeName,
      fieldManager: this.publisher.fieldManager,
      placement: options.placement ?? "auto",
      devices: () => this.publisher.publishedDevices(),
      ready: () => this.publisher.isAdopted,
      unreachable: (device) => this.publisher.isUnreachable(device),
      onPlacementChange: () => this.publisher.refreshNodeResources(),
      log: this.log,
    });
    this.configurations = new Cache<ConfigObj>(
      options.kc,
      { type: DEVICE_CONFIGURATIONS, onChange: (obj, verb) => this.onConfiguration(obj, verb) },
      this.log,
    );
    options.external?.onChange((handler) => this.externalHandlerChanged(handler));
  }

  /** An external handler registered or went away: configurations naming it are looked at again. */
  private externalHandlerChanged(handler: string): void {
    this.advertiseExternalHandlers();
    if (this.stopped || !this.ready) return;
    for (const c of this.configurations.list()) {
      if ((c.spec as { discoveryHandler?: { name?: string } } | undefined)?.discoveryHandler?.name !== handler)
        continue;
      this.seen.delete(c.metadata.name!);
      this.sync(c);
    }
  }

  private advertisingExternal = false;
  private advertiseExternalAgain = false;

  /**
   * Names the registered external handlers on this node's Node (an annotation), so the
   * controller can accept configurations that use them. One merge patch at a time; a 404 (no
   * Node yet) or an error is retried. A merge patch of one key leaves the extended resources'
   * server-side-apply ownership alone.
   */
  private advertiseExternalHandlers(): void {
    if (!this.options.external || this.stopped) return;
    if (this.advertisingExternal) {
      this.advertiseExternalAgain = true;
      return;
    }
    this.advertisingExternal = true;
    void (async () => {
      do {
        this.advertiseExternalAgain = false;
        const names = this.options.external!.names().join(",");
        try {
          // Through nodes/status, which the agent may write for its own Node anyway (RBAC and
          // the node restriction policy allow this one annotation there, nothing else).
          await Api.for(this.options.kc).request("PATCH", `${objectPath(NODES, this.options.nodeName)}/status`, {
            body: { metadata: { annotations: { [EXTERNAL_HANDLERS_ANNOTATION]: names || null } } },
            contentType: "application/merge-patch+json",
          });
        } catch (err) {
          this.log.warn({ err: String(err) }, "cannot name the external handlers on the Node; retrying");
          this.advertiseExternalAgain = true;
          await sleep(5000, this.abort.signal);
        }
      } while (this.advertiseExternalAgain && !this.stopped);
      this.advertisingExternal = false;
    })();
  }

  /**
   * Resolves once every cache has listed and discovery has started; until then nothing is
   * adopted, published or left (a failed first list is retried, never taken as "no objects").
   */
  async start(): Promise<void> {
    this.configurations.start();
    const [configs, published, dra] = await Promise.all([
      this.configurations.whenSynced(this.abort.signal),
      this.publisher.start(this.abort.signal),
      this.dra.start(this.abort.signal),
    ]);
    if (!configs || !published || !dra) return;
    if (this.options.kubeletDir) await this.startKubeletPlugin(this.options.kubeletDir);
    this.ready = true;
    for (const c of this.configurations.list()) this.sync(c);
    this.publisher.adopt();
    this.advertiseExternalHandlers();
    this.log.info({ configurations: this.runs.size }, "agent started");
  }

  private ready = false;

  /** Registers the DRA kubelet plugin: the kubelet starts no pod whose claim names a driver without one. */
  private async startKubeletPlugin(kubeletDir: string): Promise<void> {
    const api = Api.for(this.options.kc);
    // gRPC is loaded only where the plugin is served, as for external handlers.
    const { KubeletPlugin } = await import("./kubelet-plugin.js");
    this.kubeletPlugin = new KubeletPlugin({
      registryDir: join(kubeletDir, "plugins_registry"),
      pluginDir: join(kubeletDir, "plugins", DRIVER),
      allocationOf: async (claim) => {
        try {
          const c = await api.request<{
            metadata: { uid: string };
            status?: { allocation?: { devices?: { results?: ClaimAllocation } } };
          }>("GET", `/apis/resource.k8s.io/v1/namespaces/${claim.namespace}/resourceclaims/${claim.name}`);
          return c.metadata.uid === claim.uid ? (c.status?.allocation?.devices?.results ?? []) : undefined;
        } catch (err) {
          if (err instanceof ApiError && err.code === 404) return undefined;
          throw err;
        }
      },
      devices: () => this.dra.publishedDevices(),
      log: this.log,
    });
    await this.kubeletPlugin.start();
    this.log.info({ socket: this.kubeletPlugin.registrationSocket }, "DRA kubelet plugin serving");
  }

  private onConfiguration(obj: ConfigObj, verb: string): void {
    if (this.stopped || !this.ready) return;
    if (verb === "delete") {
      const name = obj.metadata.name!;
      this.stopRun(name);
      this.valid.delete(name);
      this.seen.delete(name);
      this.publisher.dropConfiguration(name);
      this.log.info({ configuration: name }, "configuration deleted; leaving its devices");
      return;
    }
    this.sync(obj);
  }

  /** Brings the discovery for one configuration in line with its spec. */
  private sync(raw: ConfigObj): void {
    const name = raw.metadata.name!;
    // Status writes do not change the generation: nothing to do for them.
    const version = `${raw.metadata.uid}/${raw.metadata.generation}`;
    if (this.seen.get(name) === version) return;
    this.seen.set(name, version);
    const parsed = deviceConfiguration.safeParse(raw);
    if (!parsed.success) {
      this.reportInvalid(raw, "InvalidConfiguration", formatIssues(parsed.error));
      return;
    }
    const configuration = parsed.data;
    const handlerName = configuration.spec.discoveryHandler.name;
    const external = this.options.external?.get(handlerName);
    const key = JSON.stringify(configuration.spec.discoveryHandler) + (external ? " external" : "");
    const run = this.runs.get(name);
    if (run?.key === key) {
      this.valid.set(name, configuration);
      this.publisher.configurationChanged(name);
      return;
    }
    const handler = external ?? this.options.handlers.get(handlerName);
    if (!handler && this.options.disabled?.has(configuration.spec.discoveryHandler.name)) {
      this.log.info(
        { configuration: name, handler: configuration.spec.discoveryHandler.name },
        "handler disabled on this node",
      );
      this.stopRun(name);
      this.valid.set(name, configuration);
      this.publisher.configurationChanged(name);
      return;
    }
    if (!handler) {
      const registered = this.options.external?.names() ?? [];
      this.reportInvalid(
        raw,
        "UnknownHandler",
        `discoveryHandler.name: no discovery handler "${handlerName}" on this agent (built in: ${[...this.options.handlers.keys()].join(", ")}${this.options.external ? `; registered: ${registered.join(", ") || "none"}` : ""})`,
      );
      // Waiting for an external handler to register (again): its devices keep their grace period.
      if (this.options.external && !this.runs.has(name)) {
        this.valid.set(name, configuration);
        this.publisher.configurationChanged(name);
      }
      return;
    }
    const details = handler.detailsSchema.safeParse(configuration.spec.discoveryHandler.discoveryDetails);
    if (!details.success) {
      // The discovery under the last valid spec (if any) keeps running.
      this.reportInvalid(
        raw,
        "InvalidDiscoveryDetails",
        formatIssues(details.error, "discoveryHandler.discoveryDetails"),
      );
      return;
    }
    this.stopRun(name);
    this.valid.set(name, configuration);
    this.publisher.configurationChanged(name);
    const abort = new AbortController();
    const nodeDetails = handler.forNode ? handler.forNode(details.data, this.options.nodeName) : details.data;
    const done = this.runDiscovery(configuration, handler, nodeDetails, abort.signal);
    this.runs.set(name, { key, abort, done });
  }

  private reportInvalid(raw: ConfigObj, reason: string, message: string): void {
    const name = raw.metadata.name!;
    this.log.error({ configuration: name, reason }, message);
    void this.events.record(
      { apiVersion: apiVersionOf(DEVICE_CONFIGURATIONS), kind: "DeviceConfiguration", name, uid: raw.metadata.uid },
      "Warning",
      reason,
      message,
    );
  }

  /** Runs one discovery until aborted; a handler that fails is restarted with backoff. */
  private async runDiscovery(
    configuration: DeviceConfiguration,
    handler: DiscoveryHandler<unknown>,
    details: unknown,
    signal: AbortSignal,
  ): Promise<void> {
    const name = configuration.metadata.name!;
    const log = this.log.child({ configuration: name, handler: handler.name });
    const references = configuration.spec.discoveryHandler.discoveryProperties;
    let failures = 0;
    // A rotated Secret or ConfigMap restarts this discovery only, with the new values.
    let attempt = new AbortController();
    let properties: Record<string, string> | undefined;
    const watch = new ReferenceWatch(this.options.kc, references, log, () => {
      void resolveDiscoveryProperties(this.options.kc, references).then(
        (next) => {
          if (properties && sameValues(properties, next)) return;
          log.info("referenced Secret or ConfigMap changed; restarting discovery");
          attempt.abort();
        },
        () => attempt.abort(), // unreadable now: the restart reports why
      );
    });
    if (!watch.empty) void watch.start(signal);
    signal.addEventListener("abort", () => void watch.stop(), { once: true });
    while (!signal.aborted) {
      attempt = new AbortController();
      const running = AbortSignal.any([signal, attempt.signal]);
      try {
        properties = await resolveDiscoveryProperties(this.options.kc, references);
        log.info("discovery started");
        for await (const set of handler.discover({ details, properties, signal: running, log })) {
          if (running.aborted) break;
          failures = 0;
          log.debug({ devices: set.length }, "device set");
          this.publisher.report(name, handler.name, handler.shared, set);
        }
        if (signal.aborted) return;
        if (attempt.signal.aborted) continue;
        throw new Error("discovery ended without being stopped");
      } catch (err) {
        if (signal.aborted) return;
        if (attempt.signal.aborted) continue;
        failures++;
        const message = err instanceof Error ? err.message : String(err);
        log.error({ err: message }, "discovery failed; restarting");
        void this.events.record(
          {
            apiVersion: apiVersionOf(DEVICE_CONFIGURATIONS),
            kind: "DeviceConfiguration",
            name,
            uid: configuration.metadata.uid,
          },
          "Warning",
          "DiscoveryFailed",
          message,
        );
        await sleep(Math.min(500 * 2 ** (failures - 1), 30_000), signal);
      }
    }
  }

  private stopRun(name: string): void {
    const run = this.runs.get(name);
    if (!run) return;
    run.abort.abort();
    this.runs.delete(name);
  }

  /** Stops discoveries and watches. Devices are left as they are: a restart adopts them. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.abort.abort();
    const runs = [...this.runs.values()];
    for (const r of runs) r.abort.abort();
    await Promise.race([Promise.allSettled(runs.map((r) => r.done)), sleep(3000)]);
    this.runs.clear();
    await this.configurations.stop();
    await this.publisher.stop();
    await this.dra.stop();
    await this.kubeletPlugin?.stop();
  }
}

function sameValues(a: Record<string, string>, b: Record<string, string>): boolean {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => a[k] === b[k]);
}
