import { connectAsync } from "mqtt";
import { MqttDeviceSimulator } from "../../discovery-handlers/mqtt/mock.js";
import type { FakeCamera, Misbehaviour } from "../../discovery-handlers/onvif/fake-camera.js";
import { UsbFixture } from "../../discovery-handlers/usb/mock.js";
import { EmbeddedBroker } from "./broker.js";
import { createDevice, SimulatedCamera, type SimulatedDevice } from "./devices.js";
import { isMqttDevice, type Scenario, type TimelineEvent, targetsOf } from "./scenario.js";

/**
 * Runs a scenario: starts what its devices need (an embedded MQTT broker or a connection to the
 * given one, a USB sysfs tree), plugs the devices that start plugged, then plays the timeline.
 * Every change is reported as a `SimulationEvent`. `stop()` unplugs every device the polite way
 * (so no retained config or advertisement outlives the run, even on a shared broker) and closes
 * everything; a failed start stops what had started before it rethrows.
 *
 * Each device has its own queue, so one slow device (an MQTT publish waiting out a broker outage)
 * holds up only its own later events, not the timeline.
 */

export interface SimulationEvent {
  /** Seconds since the simulation started. */
  t: number;
  action: TimelineEvent["action"] | "start" | "end" | "stop";
  device?: string;
  detail: string;
}

export interface SimulationOptions {
  /** Called for every event (the CLI prints them). */
  onEvent?: (event: SimulationEvent) => void;
  /** Where `passwordFromEnv` names are looked up (default: process.env). */
  env?: NodeJS.ProcessEnv;
}

/** How long stop() waits for one device's goodbye before it just drops the connection. */
const GOODBYE_TIMEOUT_MS = 5_000;

export class Simulation {
  private readonly startedAt = Date.now();
  private readonly devices = new Map<string, SimulatedDevice>();
  private readonly queues = new Map<string, Promise<unknown>>();
  private broker: EmbeddedBroker | undefined;
  private brokerUri: string | undefined;
  private mqtt: MqttDeviceSimulator | undefined;
  private usb: UsbFixture | undefined;
  private stopping: Promise<void> | undefined;

  private constructor(
    readonly scenario: Scenario,
    private readonly options: SimulationOptions,
  ) {}

  /** Starts the scenario's infrastructure and plugs its initially plugged devices. */
  static async start(scenario: Scenario, options: SimulationOptions = {}): Promise<Simulation> {
    const simulation = new Simulation(scenario, options);
    try {
      await simulation.startInfrastructure();
      await Promise.all(
        scenario.devices
          .filter((d) => d.plugged)
          .map((d) => simulation.apply(d.name, "plug", (device) => device.plug())),
      );
    } catch (err) {
      await simulation.stop();
      throw err;
    }
    return simulation;
  }

  /** The broker MQTT devices publish to (without credentials); undefined without MQTT devices. */
  get mqttUri(): string | undefined {
    return this.brokerUri;
  }

  /** The simulated /sys/bus/usb/devices (a DeviceConfiguration's `sysfsRoot`); undefined without USB devices. */
  get sysfsRoot(): string | undefined {
    return this.usb?.sysfsRoot;
  }

  get deviceNames(): string[] {
    return [...this.devices.keys()];
  }

  device(name: string): SimulatedDevice {
    const device = this.devices.get(name);
    if (!device) throw new Error(`no device named "${name}" in scenario ${this.scenario.name}`);
    return device;
  }

  /** The running fake camera of an `onvif-camera` device (undefined while unplugged). */
  camera(name: string): FakeCamera | undefined {
    const device = this.device(name);
    return device instanceof SimulatedCamera ? device.current : undefined;
  }

  plug(name: string): Promise<string> {
    return this.apply(name, "plug", (d) => d.plug());
  }

  unplug(name: string): Promise<string> {
    return this.apply(name, "unplug", (d) => d.unplug());
  }

  kill(name: string): Promise<string> {
    return this.apply(name, "kill", (d) => d.kill());
  }

  misbehave(name: string, mode: Misbehaviour | "none"): Promise<string> {
    return this.apply(name, "misbehave", (d) => {
      if (!(d instanceof SimulatedCamera)) throw new Error(`${name} is not an onvif-camera`);
      return d.misbehave(mode);
    });
  }

  /** Plugs and unplugs a device every `everyMs` for `forMs`, then leaves it as it was. */
  async flap(name: string, everyMs: number, forMs: number, signal?: AbortSignal): Promise<void> {
    const device = this.device(name);
    const wasPlugged = device.plugged;
    const until = Date.now() + forMs;
    this.emit("flap", `every ${everyMs / 1000} s for ${forMs / 1000} s`, name);
    while (Date.now() < until && !signal?.aborted) {
      if (device.plugged) await this.unplug(name);
      else await this.plug(name);
      if (!(await wait(Math.min(everyMs, until - Date.now()), signal))) break;
    }
    if (device.plugged !== wasPlugged) await (wasPlugged ? this.plug(name) : this.unplug(name));
    this.emit("flap", `done, ${wasPlugged ? "plugged" : "unplugged"} as before`, name);
  }

  /** Takes the embedded broker away for `forMs`: every MQTT connection drops, none is accepted. */
  async brokerOutage(forMs: number, signal?: AbortSignal): Promise<void> {
    const broker = this.broker;
    if (!broker) throw new Error("broker-outage needs the embedded broker");
    await broker.down();
    this.emit("broker-outage", `broker ${broker.uri} down for ${forMs / 1000} s`);
    await wait(forMs, signal);
    if (this.stopping) return; // stop() brings it back for the goodbyes
    await broker.up();
    this.emit("broker-outage", `broker ${broker.uri} back`);
  }

  /**
   * Plays the timeline (times from the start of the simulation), then waits out `duration`.
   * Resolves when it is over or `signal` aborts; rejects with the first failed event. Does not
   * stop the simulation: the caller does (runScenario does both).
   */
  async run(signal?: AbortSignal): Promise<void> {
    const controller = new AbortController();
    const abort = () => controller.abort();
    signal?.addEventListener("abort", abort, { once: true });
    if (signal?.aborted) abort();
    const { duration } = this.scenario;
    const endTimer =
      typeof duration === "number" ? setTimeout(abort, Math.max(0, this.startedAt + duration - Date.now())) : undefined;
    let failure: { error: unknown } | undefined;
    const tasks: Promise<void>[] = [];
    try {
      for (const event of this.scenario.timeline) {
        if (!(await wait(this.startedAt + event.at - Date.now(), controller.signal))) break;
        tasks.push(
          this.dispatch(event, controller.signal).catch((error: unknown) => {
            failure ??= { error };
            controller.abort();
          }),
        );
      }
      await Promise.all(tasks);
      if (failure) throw failure.error;
      if (!controller.signal.aborted) {
        this.emit("end", "end of the timeline");
        if (duration !== undefined) await wait(Number.POSITIVE_INFINITY, controller.signal);
      }
    } finally {
      clearTimeout(endTimer);
      signal?.removeEventListener("abort", abort);
    }
  }

  /** Unplugs every device politely (bounded in time), then closes the broker, clients and the USB tree. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    // Events still running get a moment to finish, so their devices end in a known state.
    await within(Promise.allSettled(this.queues.values()), GOODBYE_TIMEOUT_MS);
    await this.broker?.up().catch(() => undefined);
    const plugged = [...this.devices.values()].filter((d) => d.plugged);
    await Promise.all(plugged.map((d) => within(d.unplug(), GOODBYE_TIMEOUT_MS)));
    const closed: string[] = [`${plugged.length} device(s) unplugged`];
    if (this.mqtt) {
      await this.mqtt.close();
      closed.push("MQTT clients closed");
    }
    if (this.broker) {
      await this.broker.close();
      closed.push(`broker ${this.broker.uri} stopped`);
    }
    if (this.usb) {
      await this.usb.dispose();
      closed.push(`USB tree ${this.usb.base} removed`);
    }
    this.emit("stop", closed.join(", "));
  }

  private async startInfrastructure(): Promise<void> {
    const { scenario } = this;
    if (scenario.devices.some(isMqttDevice)) {
      const broker = scenario.mqtt.broker;
      if ("embedded" in broker) {
        this.broker = await EmbeddedBroker.start(broker.embedded);
        this.brokerUri = this.broker.uri;
        this.mqtt = new MqttDeviceSimulator({ url: this.brokerUri });
        this.emit("start", `embedded MQTT broker at ${this.brokerUri} (discoveryDetails.brokerUri)`);
      } else {
        const password =
          broker.password ??
          (broker.passwordFromEnv
            ? (this.options.env?.[broker.passwordFromEnv] ?? process.env[broker.passwordFromEnv])
            : undefined);
        if (broker.passwordFromEnv && password === undefined)
          throw new Error(`mqtt.broker.passwordFromEnv: $${broker.passwordFromEnv} is not set`);
        const credentials = {
          ...(broker.username ? { username: broker.username } : {}),
          ...(password ? { password } : {}),
        };
        await probeBroker(broker.uri, credentials);
        this.brokerUri = broker.uri;
        this.mqtt = new MqttDeviceSimulator({ url: broker.uri, ...credentials });
        this.emit("start", `MQTT devices publish to ${broker.uri}`);
      }
    }
    if (scenario.devices.some((d) => d.kind === "usb")) {
      this.usb = await UsbFixture.create(scenario.usb.directory);
      this.emit("start", `USB sysfs tree at ${this.usb.sysfsRoot} (discoveryDetails.sysfsRoot)`);
    }
    if (scenario.devices.some((d) => d.kind === "onvif-camera"))
      this.emit("start", `ONVIF cameras multicast on ${scenario.onvif.interface} (discoveryDetails.interface)`);
    if (scenario.devices.some((d) => d.kind === "mdns"))
      this.emit("start", `mDNS services advertised on ${scenario.mdns.interface} (discoveryDetails.interface)`);
    const context = {
      ...(this.mqtt ? { mqtt: this.mqtt } : {}),
      ...(this.usb ? { usb: this.usb } : {}),
      onvifInterface: scenario.onvif.interface,
      mdnsInterface: scenario.mdns.interface,
      ...(this.options.env ? { env: this.options.env } : {}),
    };
    for (const spec of scenario.devices) this.devices.set(spec.name, createDevice(spec, context));
  }

  private async dispatch(event: TimelineEvent, signal: AbortSignal): Promise<void> {
    if (event.action === "broker-outage") return this.brokerOutage(event.for, signal);
    const names = targetsOf(this.scenario, event.device).map((d) => d.name);
    const act = (name: string): Promise<unknown> => {
      switch (event.action) {
        case "plug":
          return this.plug(name);
        case "unplug":
          return this.unplug(name);
        case "kill":
          return this.kill(name);
        case "misbehave":
          return this.misbehave(name, event.mode);
        case "flap":
          return this.flap(name, event.every, event.for, signal);
      }
    };
    await Promise.all(names.map(act));
  }

  /** Runs `action` on the device's queue, after its earlier events, and reports it. */
  private apply(
    name: string,
    action: SimulationEvent["action"],
    fn: (device: SimulatedDevice) => Promise<string>,
  ): Promise<string> {
    const device = this.device(name);
    const previous = this.queues.get(name) ?? Promise.resolve();
    const next = previous
      .catch(() => undefined)
      .then(async () => {
        try {
          const detail = await fn(device);
          this.emit(action, detail, name);
          return detail;
        } catch (err) {
          throw new Error(`${action} ${name}: ${err instanceof Error ? err.message : String(err)}`);
        }
      });
    this.queues.set(
      name,
      next.catch(() => undefined),
    );
    return next;
  }

  private emit(action: SimulationEvent["action"], detail: string, device?: string): void {
    this.options.onEvent?.({
      t: Math.round((Date.now() - this.startedAt) / 100) / 10,
      action,
      ...(device ? { device } : {}),
      detail,
    });
  }
}

/** Sleeps `ms` (Infinity: until aborted); false when the signal aborted first. */
async function wait(ms: number, signal?: AbortSignal): Promise<boolean> {
  if (signal?.aborted) return false;
  if (ms <= 0) return true;
  return new Promise((resolve) => {
    const done = (value: boolean) => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      resolve(value);
    };
    const onAbort = () => done(false);
    const timer = Number.isFinite(ms) ? setTimeout(() => done(true), ms) : undefined;
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Waits for `promise` (ignoring its failure) at most `ms`; the timer never outlives it. */
async function within(promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    promise.catch(() => undefined),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    }),
  ]);
  clearTimeout(timer);
}

/** Fails fast, with the broker's address, when a given broker cannot be reached (the simulator would retry forever). */
async function probeBroker(uri: string, credentials: { username?: string; password?: string }): Promise<void> {
  try {
    const client = await connectAsync(uri, { ...credentials, reconnectPeriod: 0, connectTimeout: 5_000 }, false);
    await client.endAsync();
  } catch (err) {
    throw new Error(`cannot reach the MQTT broker at ${uri}: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/**
 * Starts a scenario, plays it, and stops everything when it ends, when `signal` aborts (Ctrl-C),
 * or when an event fails (then it rejects, after cleaning up).
 */
export async function runScenario(
  scenario: Scenario,
  options: SimulationOptions & { signal?: AbortSignal } = {},
): Promise<void> {
  const simulation = await Simulation.start(scenario, options);
  try {
    await simulation.run(options.signal);
  } finally {
    await simulation.stop();
  }
}
