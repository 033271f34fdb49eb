import type * as k8s from "@kubernetes/client-node";
import type { DiscoveryHandler } from "../../discovery-handlers/handler.js";
import { formatIssues } from "../api/common.js";
import { type DeviceConfiguration, deviceConfiguration } from "../api/device-configuration.js";
import { Cache, sleep } from "../k8s/cache.js";
import { EventRecorder } from "../k8s/events.js";
import { apiVersionOf, DEVICE_CONFIGURATIONS } from "../k8s/resources.js";
import type { Logger } from "../log/logger.js";
import { DevicePublisher } from "./device-publisher.js";
import { resolveDiscoveryProperties } from "./discovery-properties.js";

interface DiscoveryRun {
  /** The discoveryHandler part of the spec it was started with: a change restarts it. */
  key: string;
  abort: AbortController;
  done: Promise<void>;
}

export interface AgentOptions {
  kc: k8s.KubeConfig;
  nodeName: string;
  handlers: ReadonlyMap<string, DiscoveryHandler<unknown>>;
  /** Handlers that exist but are switched off on this node: their configurations are skipped quietly. */
  disabled?: ReadonlySet<string>;
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
    this.publisher = new DevicePublisher(options.kc, options.nodeName, this.log, this.events, (name) =>
      this.valid.get(name),
    );
    this.configurations = new Cache<ConfigObj>(
      options.kc,
      { type: DEVICE_CONFIGURATIONS, onChange: (obj, verb) => this.onConfiguration(obj, verb) },
      this.log,
    );
  }

  /**
   * Resolves once every cache has listed and discovery has started; until then nothing is
   * adopted, published or left (a failed first list is retried, never taken as "no objects").
   */
  async start(): Promise<void> {
    this.configurations.start();
    const [configs, published] = await Promise.all([
      this.configurations.whenSynced(this.abort.signal),
      this.publisher.start(this.abort.signal),
    ]);
    if (!configs || !published) return;
    this.ready = true;
    for (const c of this.configurations.list()) this.sync(c);
    this.publisher.adopt();
    this.log.info({ configurations: this.runs.size }, "agent started");
  }

  private ready = false;

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
    const key = JSON.stringify(configuration.spec.discoveryHandler);
    const run = this.runs.get(name);
    if (run?.key === key) {
      this.valid.set(name, configuration);
      this.publisher.configurationChanged(name);
      return;
    }
    const handler = this.options.handlers.get(configuration.spec.discoveryHandler.name);
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
      this.reportInvalid(
        raw,
        "UnknownHandler",
        `discoveryHandler.name: no discovery handler "${configuration.spec.discoveryHandler.name}" on this agent (known: ${[...this.options.handlers.keys()].join(", ")})`,
      );
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
    const done = this.runDiscovery(configuration, handler, details.data, abort.signal);
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
    let failures = 0;
    while (!signal.aborted) {
      try {
        const properties = await resolveDiscoveryProperties(
          this.options.kc,
          configuration.spec.discoveryHandler.discoveryProperties,
        );
        log.info("discovery started");
        for await (const set of handler.discover({ details, properties, signal, log })) {
          if (signal.aborted) break;
          failures = 0;
          log.debug({ devices: set.length }, "device set");
          this.publisher.report(name, handler.name, handler.shared, set);
        }
        if (signal.aborted) return;
        throw new Error("discovery ended without being stopped");
      } catch (err) {
        if (signal.aborted) return;
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
  }
}
