import { type Advertisement, advertiseService } from "../../discovery-handlers/mdns/mock.js";
import type {
  MqttDeviceSimulator,
  SimulatedHomeAssistantDevice,
  SimulatedHomieDevice,
  SimulatedPlainTopic,
  SimulatedSparkplugNode,
} from "../../discovery-handlers/mqtt/mock.js";
import { FakeCamera, type Misbehaviour } from "../../discovery-handlers/onvif/fake-camera.js";
import type { UsbFixture } from "../../discovery-handlers/usb/mock.js";
import type { CAMERA_MISBEHAVIOURS, ScenarioDevice } from "./scenario.js";

// The scenario schema lists the fake camera's misbehaviours; this stops compiling when they differ.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const _misbehavioursMatch: Same<(typeof CAMERA_MISBEHAVIOURS)[number], Misbehaviour> = true;

/**
 * One simulated device of a scenario, started from the existing fakes (fake ONVIF camera, MQTT
 * simulator, USB sysfs fixture, mDNS advertiser). Three ways to go away, as real devices do:
 * `unplug` says goodbye (Bye, removed config, graceful disconnect, mDNS goodbye), `kill` does not
 * (power loss: no Bye, the broker sends the last will, mDNS records expire). Each returns a line
 * for the event log.
 */
export interface SimulatedDevice {
  readonly name: string;
  readonly kind: ScenarioDevice["kind"];
  readonly plugged: boolean;
  plug(): Promise<string>;
  unplug(): Promise<string>;
  kill(): Promise<string>;
}

export interface DeviceContext {
  /** Present when the scenario has MQTT devices. */
  mqtt?: MqttDeviceSimulator;
  /** Present when the scenario has USB devices. */
  usb?: UsbFixture;
  /** IPv4 address of the interface cameras multicast on. */
  onvifInterface: string;
  /** IPv4 address of the interface mDNS services are advertised on. */
  mdnsInterface: string;
  /** Where `passwordFromEnv` is looked up (default: process.env). */
  env?: NodeJS.ProcessEnv;
}

export function createDevice(spec: ScenarioDevice, context: DeviceContext): SimulatedDevice {
  switch (spec.kind) {
    case "onvif-camera":
      return new SimulatedCamera(spec, context.onvifInterface, context.env ?? process.env);
    case "usb":
      return new SimulatedUsbDevice(spec, need(context.usb, "a USB fixture"));
    case "mdns":
      return new SimulatedMdnsService(spec, context.mdnsInterface);
    default:
      return new SimulatedMqttDevice(spec, need(context.mqtt, "an MQTT simulator"));
  }
}

function need<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`internal: ${what} was not started`);
  return value;
}

/** Base: the plugged state, and the same message whichever way a device is already gone. */
abstract class Base<S extends ScenarioDevice> implements SimulatedDevice {
  protected isPlugged = false;
  constructor(protected readonly spec: S) {}
  get name(): string {
    return this.spec.name;
  }
  get kind(): S["kind"] {
    return this.spec.kind;
  }
  get plugged(): boolean {
    return this.isPlugged;
  }
  async plug(): Promise<string> {
    if (this.isPlugged) return "already plugged";
    const line = await this.start();
    this.isPlugged = true;
    return line;
  }
  async unplug(): Promise<string> {
    if (!this.isPlugged) return "already unplugged";
    this.isPlugged = false;
    return this.stop(true);
  }
  async kill(): Promise<string> {
    if (!this.isPlugged) return "already unplugged";
    this.isPlugged = false;
    return this.stop(false);
  }
  protected abstract start(): Promise<string>;
  protected abstract stop(graceful: boolean): Promise<string>;
}

type CameraSpec = Extract<ScenarioDevice, { kind: "onvif-camera" }>;

export class SimulatedCamera extends Base<CameraSpec> {
  private camera: FakeCamera | undefined;
  /** The HTTP port of the first start, kept across restarts so the device service URL stays the same. */
  private port: number | undefined;
  private mode: Misbehaviour | undefined;

  constructor(
    spec: CameraSpec,
    private readonly iface: string,
    private readonly env: NodeJS.ProcessEnv,
  ) {
    super(spec);
    this.port = spec.port;
    this.mode = spec.misbehave;
  }

  get current(): FakeCamera | undefined {
    return this.camera;
  }

  protected async start(): Promise<string> {
    const options = {
      uuid: this.spec.uuid!,
      ip: this.spec.ip!,
      interface: this.iface,
      multicast: this.spec.multicast,
      ...(this.spec.unicastPort ? { unicastPort: this.spec.unicastPort } : {}),
      ...(this.spec.mac ? { mac: this.spec.mac } : {}),
      ...(this.spec.manufacturer ? { manufacturer: this.spec.manufacturer } : {}),
      ...(this.spec.model ? { model: this.spec.model } : {}),
      ...(this.spec.serial ? { serial: this.spec.serial } : {}),
      ...(this.spec.scopes ? { scopes: this.spec.scopes } : {}),
      ...(this.spec.credentials ? { credentials: this.credentials() } : {}),
      ...(this.mode ? { misbehave: this.mode } : {}),
    };
    let camera: FakeCamera;
    try {
      camera = await FakeCamera.start({ ...options, ...(this.port ? { port: this.port } : {}) });
    } catch (err) {
      // The remembered port was taken meanwhile: any port (the device service URL changes).
      if (
        this.spec.port !== undefined ||
        this.port === undefined ||
        (err as NodeJS.ErrnoException).code !== "EADDRINUSE"
      )
        throw err;
      camera = await FakeCamera.start(options);
    }
    this.camera = camera;
    this.port = camera.port;
    const mode = this.mode ? `, misbehaving: ${this.mode}` : "";
    const announce = this.spec.multicast ? "Hello" : "no multicast";
    return `camera ${camera.id} at ${camera.xaddr}, unicast probes ${camera.unicastProbeAddress} (${announce}${mode})`;
  }

  protected async stop(graceful: boolean): Promise<string> {
    await this.camera?.stop({ bye: graceful });
    this.camera = undefined;
    if (!this.spec.multicast) return "camera stopped";
    return graceful ? "camera stopped (Bye)" : "camera lost power (no Bye)";
  }

  /** Restarts the camera with another misbehaviour (`none`: behaves again), without a Bye in between. */
  async misbehave(mode: Misbehaviour | "none"): Promise<string> {
    this.mode = mode === "none" ? undefined : mode;
    if (!this.isPlugged) return `will misbehave (${mode}) when plugged`;
    await this.camera?.stop({ bye: false });
    this.isPlugged = false;
    await this.plug();
    return mode === "none" ? "camera behaves again" : `camera misbehaves: ${mode}`;
  }

  private credentials(): { username: string; password: string } {
    const c = this.spec.credentials!;
    const password = c.password ?? this.env[c.passwordFromEnv!];
    if (password === undefined)
      throw new Error(`${this.name}: credentials.passwordFromEnv: $${c.passwordFromEnv} is not set`);
    return { username: c.username, password };
  }
}

type UsbSpec = Extract<ScenarioDevice, { kind: "usb" }>;

class SimulatedUsbDevice extends Base<UsbSpec> {
  constructor(
    spec: UsbSpec,
    private readonly fixture: UsbFixture,
  ) {
    super(spec);
  }

  protected async start(): Promise<string> {
    const s = this.spec;
    await this.fixture.plug({
      port: s.port!,
      vendorId: s.vendorId.toLowerCase(),
      productId: s.productId.toLowerCase(),
      ...(s.serial !== undefined ? { serial: s.serial } : {}),
      ...(s.manufacturer !== undefined ? { manufacturer: s.manufacturer } : {}),
      ...(s.product !== undefined ? { product: s.product } : {}),
      ...(s.deviceClass !== undefined ? { deviceClass: s.deviceClass } : {}),
      ...(s.interfaceClasses !== undefined ? { interfaceClasses: s.interfaceClasses } : {}),
    });
    return `USB ${s.vendorId}:${s.productId} plugged at ${s.port} in ${this.fixture.sysfsRoot}`;
  }

  protected async stop(): Promise<string> {
    await this.fixture.unplug(this.spec.port!);
    return `USB device at ${this.spec.port} unplugged`;
  }
}

type MdnsSpec = Extract<ScenarioDevice, { kind: "mdns" }>;

class SimulatedMdnsService extends Base<MdnsSpec> {
  private advertisement: Advertisement | undefined;

  constructor(
    spec: MdnsSpec,
    private readonly iface: string,
  ) {
    super(spec);
  }

  protected async start(): Promise<string> {
    const s = this.spec;
    this.advertisement = await advertiseService({
      name: s.instance!,
      type: s.type,
      protocol: s.protocol,
      port: s.port,
      txt: s.txt,
      interface: this.iface,
      ...(s.ttl !== undefined ? { ttl: s.ttl } : {}),
    });
    return `mDNS "${s.instance}._${s.type}._${s.protocol}" advertised on ${this.iface}`;
  }

  protected async stop(graceful: boolean): Promise<string> {
    const advertisement = this.advertisement;
    this.advertisement = undefined;
    if (graceful) await advertisement?.stop();
    else await advertisement?.crash();
    return graceful ? "mDNS service withdrawn (goodbye)" : "mDNS service vanished (no goodbye; records expire)";
  }
}

type MqttSpec = Extract<ScenarioDevice, { kind: "home-assistant" | "homie" | "sparkplug" | "mqtt-topic" }>;
type MqttRunning =
  | { kind: "home-assistant"; device: SimulatedHomeAssistantDevice }
  | { kind: "homie"; device: SimulatedHomieDevice }
  | { kind: "sparkplug"; device: SimulatedSparkplugNode }
  | { kind: "mqtt-topic"; device: SimulatedPlainTopic };

class SimulatedMqttDevice extends Base<MqttSpec> {
  private running: MqttRunning | undefined;

  constructor(
    spec: MqttSpec,
    private readonly sim: MqttDeviceSimulator,
  ) {
    super(spec);
  }

  protected async start(): Promise<string> {
    const s = this.spec;
    switch (s.kind) {
      case "home-assistant": {
        const device = await this.sim.homeAssistant({
          id: s.id!,
          component: s.component,
          availability: s.availability,
          abbreviate: s.abbreviate,
          ...(s.manufacturer ? { manufacturer: s.manufacturer } : {}),
          ...(s.model ? { model: s.model } : {}),
          ...(s.prefix ? { prefix: s.prefix } : {}),
        });
        this.running = { kind: s.kind, device };
        return `Home Assistant ${s.component} ${s.id} announced on ${device.configTopic}`;
      }
      case "homie": {
        const device = await this.sim.homie({
          id: s.id!,
          version: s.version,
          ...(s.prefix ? { prefix: s.prefix } : {}),
        });
        this.running = { kind: s.kind, device };
        return `Homie ${s.version} device ${s.id} ready on ${device.topic}`;
      }
      case "sparkplug": {
        const device = await this.sim.sparkplug({
          group: s.group,
          edgeNode: s.edgeNode!,
          devices: s.devices,
          ...(s.dataInterval ? { dataIntervalMs: s.dataInterval } : {}),
        });
        this.running = { kind: s.kind, device };
        return `Sparkplug B edge node ${s.group}/${s.edgeNode} born (bdSeq ${device.bdSeq}, ${s.devices.length} devices)`;
      }
      case "mqtt-topic": {
        const device = await this.sim.plainTopic({ topic: s.topic, intervalMs: s.interval, payload: s.payload });
        this.running = { kind: s.kind, device };
        return `publishing on ${s.topic} every ${s.interval / 1000} s`;
      }
    }
  }

  protected async stop(graceful: boolean): Promise<string> {
    const running = this.running;
    this.running = undefined;
    switch (running?.kind) {
      case "home-assistant":
        if (graceful) await running.device.remove();
        else await running.device.setAvailable(false);
        return graceful ? "Home Assistant config removed" : "availability offline";
      case "homie":
        if (graceful) await running.device.remove();
        else await running.device.disconnect({ graceful: false });
        return graceful ? "Homie device removed" : "connection dropped (the broker publishes the will: lost)";
      case "sparkplug":
        await running.device.disconnect({ graceful });
        return graceful
          ? "NDEATH published, disconnected"
          : "connection dropped (the broker publishes the NDEATH will)";
      case "mqtt-topic":
        running.device.stop();
        return "stopped publishing (gone after the silence timeout)";
      default:
        return "not running";
    }
  }
}
