import { existsSync } from "node:fs";
import { mkdtemp, readdir } from "node:fs/promises";
import { createServer, Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connectAsync, type MqttClient } from "mqtt";
import { afterEach, describe, expect, it } from "vitest";
import { freePort } from "../sandbox/processes.js";
import { EmbeddedBroker } from "./broker.js";
import { type ScenarioInput, validateScenario } from "./scenario.js";
import { runScenario, Simulation, type SimulationEvent } from "./simulation.js";

/*
 * The runner with the real fakes on loopback: a real MQTT broker and clients, a sysfs tree on
 * disk, a fake camera answering SOAP over HTTP. What is checked is what a discovery handler would
 * see on the wire or on disk, and that nothing is left behind.
 */

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => undefined);
});

function scenario(input: Partial<ScenarioInput> & Pick<ScenarioInput, "devices">) {
  return validateScenario("test", { name: "unit", ...input });
}

/** Resolves once the port accepts a TCP connection (true) or refuses it (false). */
function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = new Socket();
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
    socket.connect(port, "127.0.0.1");
  });
}

/** A subscriber on `#` that records the latest payload of every topic (retained ones included). */
async function watchBroker(uri: string): Promise<{ client: MqttClient; latest: Map<string, string> }> {
  const client = await connectAsync(uri, { reconnectPeriod: 100, clean: true });
  client.on("error", () => undefined);
  const latest = new Map<string, string>();
  client.on("message", (topic, payload) => latest.set(topic, payload.toString()));
  await client.subscribeAsync("#", { qos: 1 });
  cleanups.push(() => client.endAsync(true));
  return { client, latest };
}

async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function soapDateTime(xaddr: string): Promise<number> {
  const body =
    '<?xml version="1.0"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope">' +
    '<s:Body><GetSystemDateAndTime xmlns="http://www.onvif.org/ver10/device/wsdl"/></s:Body></s:Envelope>';
  const response = await fetch(xaddr, { method: "POST", body, headers: { "Content-Type": "application/soap+xml" } });
  await response.text();
  return response.status;
}

describe("Simulation", () => {
  it("plays a timeline on the real fakes, each change visible on the wire or on disk, and leaves nothing behind", async () => {
    const port = await freePort();
    const directory = join(await mkdtemp(join(tmpdir(), "sim-test-")), "usb");
    const events: SimulationEvent[] = [];
    const simulation = await Simulation.start(
      scenario({
        mqtt: { broker: { embedded: { host: "127.0.0.1", port } } },
        usb: { directory },
        devices: [
          { kind: "home-assistant", name: "temp", id: "temp_1" },
          { kind: "homie", name: "door" },
          { kind: "onvif-camera", name: "cam", plugged: false },
          { kind: "usb", name: "serial", vendorId: "0403", productId: "6001", serial: "FT1" },
        ],
        timeline: [
          { at: "400ms", action: "unplug", device: "temp" },
          { at: "400ms", action: "kill", device: "door" },
          { at: "400ms", action: "plug", device: "cam" },
          { at: "900ms", action: "flap", device: "serial", every: "100ms", for: "450ms" },
          { at: "1500ms", action: "broker-outage", for: "400ms" },
        ],
      }),
      { onEvent: (e) => events.push(e) },
    );
    cleanups.push(() => simulation.stop());
    expect(simulation.mqttUri).toBe(`mqtt://127.0.0.1:${port}`);
    expect(simulation.sysfsRoot).toBe(join(directory, "bus/usb/devices"));

    const { latest } = await watchBroker(simulation.mqttUri!);
    await until("the retained announcements", () => latest.has("homeassistant/sensor/temp_1/config"));
    expect(JSON.parse(latest.get("homeassistant/sensor/temp_1/config")!)).toMatchObject({ unique_id: "temp_1" });
    expect(latest.get("homie/5/door/$state")).toBe("ready");
    expect(await readdir(simulation.sysfsRoot!)).toContain("1-1");
    expect(simulation.camera("cam"), "cam starts unplugged").toBeUndefined();

    const run = simulation.run();
    await until("cam plugged", () => simulation.camera("cam") !== undefined);
    expect(await soapDateTime(simulation.camera("cam")!.xaddr)).toBe(200);
    await until("temp removed, door lost", () => latest.get("homeassistant/sensor/temp_1/config") === "");
    await until("door's will", () => latest.get("homie/5/door/$state") === "lost");

    await until("the outage", () => events.some((e) => e.detail.includes("down for 0.4 s")), 3_000);
    expect(await accepts(port), "no broker during the outage").toBe(false);
    await run;
    expect(await accepts(port), "the broker is back after the outage").toBe(true);

    const lines = events.map((e) => `${e.action} ${e.device ?? "-"}`);
    expect(lines.filter((l) => l === "unplug serial" || l === "plug serial").length).toBeGreaterThanOrEqual(4);
    expect(events.filter((e) => e.device === "serial").at(-1)?.detail).toBe("done, plugged as before");
    expect(await readdir(simulation.sysfsRoot!)).toContain("1-1");
    expect(lines.at(-1)).toBe("end -");

    const xaddr = simulation.camera("cam")!.xaddr;
    await simulation.stop();
    expect(await accepts(port), "broker closed").toBe(false);
    expect(existsSync(directory), "sysfs tree removed").toBe(false);
    await expect(soapDateTime(xaddr), "camera closed").rejects.toThrow();
    expect(events.at(-1)).toMatchObject({ action: "stop", detail: expect.stringContaining("2 device(s) unplugged") });
  });

  it("on a given broker, stopping leaves no retained config behind (a shared broker stays clean)", async () => {
    const broker = await EmbeddedBroker.start();
    cleanups.push(() => broker.close());
    const simulation = await Simulation.start(
      scenario({
        mqtt: { broker: { uri: broker.uri } },
        devices: [
          { kind: "home-assistant", name: "temp", count: 3, id: "temp_{i}" },
          { kind: "homie", name: "door", count: 2, id: "door-{i}" },
        ],
      }),
    );
    cleanups.push(() => simulation.stop());
    const before = await watchBroker(broker.uri);
    await until(
      "5 devices announced",
      () => [...before.latest.keys()].filter((t) => t.endsWith("/config") || t.endsWith("$state")).length === 5,
    );
    await simulation.stop();

    const after = await watchBroker(broker.uri);
    await new Promise((r) => setTimeout(r, 300));
    expect([...after.latest].filter(([, payload]) => payload !== "")).toEqual([]);
  });

  it("a failed start stops what had started before it, and says why", async () => {
    const port = await freePort();
    const directory = join(await mkdtemp(join(tmpdir(), "sim-test-")), "usb");
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, "127.0.0.1", r));
    cleanups.push(() => new Promise((r) => taken.close(r)));
    const cameraPort = (taken.address() as { port: number }).port;
    await expect(
      Simulation.start(
        scenario({
          mqtt: { broker: { embedded: { host: "127.0.0.1", port } } },
          usb: { directory },
          devices: [
            { kind: "homie", name: "door" },
            { kind: "usb", name: "serial", vendorId: "0403", productId: "6001" },
            { kind: "onvif-camera", name: "cam", port: cameraPort },
          ],
        }),
      ),
    ).rejects.toThrow(/plug cam: .*EADDRINUSE/);
    expect(await accepts(port), "broker closed").toBe(false);
    expect(existsSync(directory), "sysfs tree removed").toBe(false);
  });

  it("a given broker that does not answer fails the start at once, naming it", async () => {
    const port = await freePort();
    const started = Date.now();
    await expect(
      Simulation.start(
        scenario({ mqtt: { broker: { uri: `mqtt://127.0.0.1:${port}` } }, devices: [{ kind: "homie", name: "d" }] }),
      ),
    ).rejects.toThrow(`cannot reach the MQTT broker at mqtt://127.0.0.1:${port}`);
    expect(Date.now() - started).toBeLessThan(6_000);
  });

  it("aborting (Ctrl-C) ends a scenario that runs forever, and runScenario cleans up", async () => {
    const port = await freePort();
    const controller = new AbortController();
    const events: SimulationEvent[] = [];
    const done = runScenario(
      scenario({
        mqtt: { broker: { embedded: { host: "127.0.0.1", port } } },
        devices: [{ kind: "mqtt-topic", name: "meter", topic: "meters/1", interval: "100ms" }],
        duration: "forever",
      }),
      {
        signal: controller.signal,
        onEvent: (e) => {
          events.push(e);
          if (e.action === "end") setTimeout(() => controller.abort(), 300);
        },
      },
    );
    await done;
    expect(events.map((e) => e.action)).toEqual(["start", "plug", "end", "stop"]);
    expect(await accepts(port)).toBe(false);
  });

  it("misbehave restarts a camera on the same address with the new behaviour, and none heals it", async () => {
    const simulation = await Simulation.start(scenario({ devices: [{ kind: "onvif-camera", name: "cam" }] }));
    cleanups.push(() => simulation.stop());
    const body = async () => {
      const response = await fetch(simulation.camera("cam")!.xaddr, {
        method: "POST",
        body:
          '<?xml version="1.0"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope">' +
          '<s:Body><GetSystemDateAndTime xmlns="http://www.onvif.org/ver10/device/wsdl"/></s:Body></s:Envelope>',
      });
      return response.text();
    };
    const xaddr = simulation.camera("cam")!.xaddr;
    expect(await body()).toMatch(/<\/SOAP-ENV:Envelope>$/);
    expect(await simulation.misbehave("cam", "malformed-xml")).toBe("camera misbehaves: malformed-xml");
    expect(simulation.camera("cam")!.xaddr).toBe(xaddr);
    expect(await body()).not.toMatch(/<\/SOAP-ENV:Envelope>$/);
    await simulation.misbehave("cam", "none");
    expect(await body()).toMatch(/<\/SOAP-ENV:Envelope>$/);
  });

  it("a duration shorter than the timeline cuts it off", async () => {
    const events: SimulationEvent[] = [];
    const started = Date.now();
    await runScenario(
      scenario({
        devices: [{ kind: "usb", name: "serial", vendorId: "0403", productId: "6001" }],
        timeline: [{ at: "100ms", action: "flap", device: "serial", every: "50ms", for: "1m" }],
        duration: "600ms",
      }),
      { onEvent: (e) => events.push(e) },
    );
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(events.at(-1)?.action).toBe("stop");
  });
});
