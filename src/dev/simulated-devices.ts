import { createServer, type Server } from "node:net";
import { Aedes } from "aedes";
import { advertiseService } from "../../discovery-handlers/mdns/mock.js";
import { MqttDeviceSimulator, type SimulatedHomeAssistantDevice } from "../../discovery-handlers/mqtt/mock.js";
import { FakeCamera } from "../../discovery-handlers/onvif/fake-camera.js";
import { UsbFixture } from "../../discovery-handlers/usb/mock.js";
import { freePort } from "../sandbox/processes.js";

export const DEMO_CREDENTIALS = { username: "spindle", password: "demo-only-password" };

/**
 * The devices `spindle dev` simulates, each speaking its real protocol on loopback: two ONVIF
 * cameras (WS-Discovery + SOAP), MQTT devices on an embedded aedes broker, a USB sysfs tree and
 * an mDNS service. `toggle*` plugs and unplugs them.
 */
export class SimulatedDevices {
  readonly mqttUri: string;
  private cameras = new Map<string, FakeCamera | undefined>();
  private mqttDevices = new Map<string, SimulatedHomeAssistantDevice | undefined>();
  private usbPlugged = new Set<string>();
  private mdns: { stop(): Promise<void> } | undefined;

  private constructor(
    private broker: Aedes,
    private server: Server,
    port: number,
    private sim: MqttDeviceSimulator,
    readonly usb: UsbFixture,
  ) {
    this.mqttUri = `mqtt://127.0.0.1:${port}`;
  }

  static async start(): Promise<SimulatedDevices> {
    const broker = await Aedes.createBroker();
    const server = createServer(broker.handle);
    const port = await freePort();
    await new Promise<void>((r) => server.listen(port, "127.0.0.1", r));
    const sim = new MqttDeviceSimulator({ url: `mqtt://127.0.0.1:${port}` });
    const devices = new SimulatedDevices(broker, server, port, sim, await UsbFixture.create());
    await devices.toggleCamera("cam-1");
    await devices.toggleCamera("cam-2");
    await devices.toggleMqtt("greenhouse_temp");
    await devices.toggleMqtt("door_sensor");
    await devices.toggleUsb("1-1");
    await devices.toggleMdns();
    return devices;
  }

  async toggleCamera(name: "cam-1" | "cam-2" | string): Promise<string> {
    const running = this.cameras.get(name);
    if (running) {
      await running.stop({ bye: true });
      this.cameras.set(name, undefined);
      return `camera ${name} stopped (Bye)`;
    }
    const n = name === "cam-1" ? 2 : 3;
    const camera = await FakeCamera.start({
      uuid: `5f0c0de0-0000-4000-8000-00000000000${n}`,
      ip: `127.0.0.${n}`,
      interface: "127.0.0.1",
      mac: `02:00:00:00:00:0${n}`,
      manufacturer: "Acme",
      model: `Cam-${n}00`,
      credentials: DEMO_CREDENTIALS,
    });
    this.cameras.set(name, camera);
    return `camera ${name} started on ${camera.xaddr} (Hello)`;
  }

  async toggleMqtt(id: string): Promise<string> {
    const device = this.mqttDevices.get(id);
    if (device) {
      await device.remove();
      this.mqttDevices.set(id, undefined);
      return `MQTT device ${id} removed`;
    }
    this.mqttDevices.set(
      id,
      await this.sim.homeAssistant({
        id,
        component: "sensor",
        manufacturer: "Acme",
        model: "Sense-1",
        availability: true,
      }),
    );
    return `MQTT device ${id} announced (Home Assistant discovery)`;
  }

  async toggleUsb(port: string): Promise<string> {
    if (this.usbPlugged.has(port)) {
      await this.usb.unplug(port);
      this.usbPlugged.delete(port);
      return `USB device at ${port} unplugged`;
    }
    await this.usb.plug({
      port,
      vendorId: "0403",
      productId: "6001",
      serial: `FT${port.replace(/\D/g, "")}`,
      manufacturer: "FTDI",
      product: "FT232R USB UART",
    });
    this.usbPlugged.add(port);
    return `USB device plugged at ${port}`;
  }

  async toggleMdns(): Promise<string> {
    if (this.mdns) {
      await this.mdns.stop();
      this.mdns = undefined;
      return "mDNS service withdrawn (goodbye)";
    }
    this.mdns = await advertiseService({
      name: "Lab Printer",
      type: "spindle-demo",
      port: 631,
      txt: { model: "LP-1", location: "lab" },
      interface: "127.0.0.1",
    });
    return "mDNS service advertised";
  }

  async stop(): Promise<void> {
    for (const c of this.cameras.values()) await c?.stop({ bye: true });
    await this.mdns?.stop();
    await this.sim.close();
    await new Promise<void>((r) => this.broker.close(() => r()));
    await new Promise<void>((r) => this.server.close(() => r()));
    await this.usb.dispose();
  }
}
