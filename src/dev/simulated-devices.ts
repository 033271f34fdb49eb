import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { loadScenarioFile, type Scenario } from "../simulate/scenario.js";
import { Simulation } from "../simulate/simulation.js";

/** The scenario `spindle dev` runs: the same format as `spindle simulate`. */
export const DEV_SCENARIO = join(
  resolve(dirname(fileURLToPath(import.meta.url)), "../.."),
  "examples/scenarios/dev.yaml",
);

/**
 * The devices `spindle dev` simulates, from examples/scenarios/dev.yaml, each speaking its real
 * protocol on loopback (ONVIF cameras, MQTT devices on an embedded broker, a USB sysfs tree, an
 * mDNS service). `toggle` plugs and unplugs one by its name in the scenario.
 */
export class SimulatedDevices {
  private constructor(private readonly simulation: Simulation) {}

  static async start(file = DEV_SCENARIO): Promise<SimulatedDevices> {
    return new SimulatedDevices(await Simulation.start(await loadScenarioFile(file)));
  }

  get scenario(): Scenario {
    return this.simulation.scenario;
  }

  get mqttUri(): string {
    return this.simulation.mqttUri!;
  }

  get usbRoot(): string {
    return this.simulation.sysfsRoot!;
  }

  /** The cameras' credentials (the first camera's), for the Secret the ONVIF configuration reads. */
  get credentials(): { username: string; password: string } {
    const camera = this.scenario.devices.find((d) => d.kind === "onvif-camera" && d.credentials?.password);
    const c = camera?.kind === "onvif-camera" ? camera.credentials : undefined;
    return { username: c?.username ?? "", password: c?.password ?? "" };
  }

  async toggle(name: string): Promise<string> {
    const device = this.simulation.device(name);
    return device.plugged ? this.simulation.unplug(name) : this.simulation.plug(name);
  }

  stop(): Promise<void> {
    return this.simulation.stop();
  }
}
