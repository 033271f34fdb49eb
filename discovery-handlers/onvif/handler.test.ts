import { Writable } from "node:stream";
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { MAX_PROPERTY_VALUE, PROPERTY_NAME } from "../../src/api/device.js";
import type { DiscoveredDevice } from "../handler.js";
import { onvifDetails } from "./details.js";
import { deviceInformation } from "./device-service.js";
import { FakeCamera, type FakeCameraOptions, fakeUuid, type Misbehaviour } from "./fake-camera.js";
import { credentialsFor, endpointId, normalizeMac, onvifHandler, toDevice } from "./handler.js";

/*
 * Real UDP multicast over loopback: every socket names 127.0.0.1 as its multicast interface, so
 * nothing is sent on other interfaces. Test files run in parallel and all fake cameras share
 * 239.255.255.250:3702, so assertions look only at the cameras each test started.
 */

const cameras: FakeCamera[] = [];
const runs: Run[] = [];

async function camera(options: Partial<FakeCameraOptions> = {}): Promise<FakeCamera> {
  const cam = await FakeCamera.start({ uuid: fakeUuid(), interface: "127.0.0.1", ...options });
  cameras.push(cam);
  return cam;
}

afterEach(async () => {
  await Promise.all(runs.splice(0).map((r) => r.stop()));
  await Promise.all(cameras.splice(0).map((c) => c.stop({ bye: false })));
});

interface Run {
  latest: DiscoveredDevice[] | undefined;
  yields: DiscoveredDevice[][];
  logs: string[];
  ended: boolean;
  device(cam: FakeCamera): DiscoveredDevice | undefined;
  stop(): Promise<void>;
}

function run(details: Record<string, unknown> = {}, properties: Record<string, string> = {}): Run {
  const abort = new AbortController();
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      logs.push(String(chunk));
      cb();
    },
  });
  const log = pino({ level: "debug" }, sink);
  const state: Run = {
    latest: undefined,
    yields: [],
    logs,
    ended: false,
    device: (cam) => state.latest?.find((d) => d.id === cam.id),
    stop: async () => {
      abort.abort();
      await done;
    },
  };
  const parsed = onvifDetails.parse({
    interface: "127.0.0.1",
    discoveryTimeoutSeconds: 0.5,
    requestTimeoutSeconds: 2,
    ...details,
  });
  const done = (async () => {
    for await (const devices of onvifHandler.discover({ details: parsed, properties, signal: abort.signal, log })) {
      state.latest = devices;
      state.yields.push(devices);
    }
    state.ended = true;
  })();
  runs.push(state);
  return state;
}

async function until<T>(what: string, probe: () => T | undefined | false, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** Everything a published device must satisfy whatever the camera said. */
function checkSafe(device: DiscoveredDevice) {
  for (const [name, value] of Object.entries(device.properties)) {
    expect(name).toMatch(PROPERTY_NAME);
    expect(value.length).toBeLessThanOrEqual(MAX_PROPERTY_VALUE);
    expect(value).not.toMatch(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/);
  }
  if (device.problem !== undefined) expect(device.problem).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/);
}

const only = (...cams: FakeCamera[]) => ({ uuids: { action: "Include", items: cams.map((c) => c.id) } });

describe("onvif handler over loopback multicast", () => {
  it("finds two cameras by probe, with stream URI and MAC", async () => {
    const a = await camera({ hello: false, mac: "02:00:00:00:00:AA", firmware: "1.10", model: "A-1" });
    const b = await camera({ hello: false, ip: "127.0.0.2", mac: "02-00-00-00-00-BB", model: "B-2" });
    const r = run();
    const [da, db] = await until("both cameras", () => {
      const found = [r.device(a), r.device(b)];
      return found.every(Boolean) && (found as DiscoveredDevice[]);
    });
    expect(da).toEqual({
      id: a.id,
      properties: {
        ONVIF_DEVICE_SERVICE_URL: a.xaddr,
        ONVIF_DEVICE_UUID: a.id,
        ONVIF_DEVICE_IP_ADDRESS: "127.0.0.1",
        ONVIF_DEVICE_MAC_ADDRESS: "02:00:00:00:00:aa",
        ONVIF_STREAM_URI: `rtsp://127.0.0.1:8554/profile_1`,
        ONVIF_MANUFACTURER: "Spindle",
        ONVIF_MODEL: "A-1",
        ONVIF_FIRMWARE_VERSION: "1.10",
        ONVIF_SERIAL_NUMBER: a.id.slice(0, 8),
        ONVIF_HARDWARE_ID: "fake-1",
        ONVIF_SCOPES: a.scopes.join(" "),
      },
    });
    expect(db?.properties).toMatchObject({
      ONVIF_DEVICE_SERVICE_URL: b.xaddr,
      ONVIF_DEVICE_IP_ADDRESS: "127.0.0.2",
      ONVIF_DEVICE_MAC_ADDRESS: "02:00:00:00:00:bb",
      ONVIF_STREAM_URI: "rtsp://127.0.0.2:8554/profile_1",
      ONVIF_MODEL: "B-2",
    });
    expect(da?.problem).toBeUndefined();
    expect(db?.problem).toBeUndefined();
  });

  it("sees a Hello at once and a Bye at once, without waiting for the probe interval", async () => {
    const r = run({ probeIntervalSeconds: 3600 });
    await until("first set", () => r.latest);
    const cam = await camera();
    const started = Date.now();
    await until("camera from Hello", () => r.device(cam), 10_000);
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(r.device(cam)?.properties.ONVIF_STREAM_URI).toBe(cam.streamUri("profile_1"));
    await cam.stop();
    await until("camera gone after Bye", () => !r.device(cam), 10_000);
  });

  it("drops a camera that stops answering when a probe round completes without it", async () => {
    const cam = await camera({ hello: false });
    const r = run({ probeIntervalSeconds: 1, ...only(cam) });
    await until("camera", () => r.device(cam));
    await cam.stop({ bye: false });
    await until("camera dropped", () => r.latest?.length === 0);
  });

  it("reads each camera once across probe rounds, re-reads on Hello, and yields only changes", async () => {
    const cam = await camera({ hello: false });
    const r = run({ probeIntervalSeconds: 1, ...only(cam) });
    await until("camera", () => r.device(cam));
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    expect(cam.calls.GetDeviceInformation).toBe(1);
    expect(r.yields).toHaveLength(1);
    await cam.sendHello();
    await until("re-read after Hello", () => cam.calls.GetDeviceInformation === 2);
    expect(r.yields).toHaveLength(1);
  });

  it("reads an ONVIF 1.x camera (GetServices is a SOAP fault) once, as complete", async () => {
    // See device-service.test.ts for the sources of the 1.x behaviour. Complete means: no
    // problem (no DeviceIncomplete Warning, no "not fully read" log) and no re-read per round.
    const cam = await camera({ hello: false, onvifVersion: "1.x" });
    const r = run({ probeIntervalSeconds: 1, ...only(cam) });
    const device = await until("camera", () => r.device(cam));
    expect(device.problem).toBeUndefined();
    expect(device.properties.ONVIF_STREAM_URI).toBe(cam.streamUri("profile_1"));
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    expect(cam.calls.GetServices).toBe(1);
    expect(cam.calls.GetDeviceInformation).toBe(1);
    expect(r.logs.join("")).not.toContain("not fully read");
  });

  it("probes listed hosts by unicast for networks without multicast", async () => {
    const cam = await camera({ multicast: false });
    const without = run(only(cam));
    await until("first set", () => without.latest);
    expect(without.device(cam)).toBeUndefined();
    const r = run({ unicastHosts: [cam.unicastProbeAddress], ...only(cam) });
    const device = await until("camera by unicast", () => r.device(cam));
    expect(device.properties.ONVIF_DEVICE_SERVICE_URL).toBe(cam.xaddr);
  });

  describe("filters", () => {
    const setup = async () => ({
      a: await camera({ hello: false, mac: "02:00:00:00:01:0a", scopes: ["onvif://www.onvif.org/name/Alpha"] }),
      b: await camera({
        hello: false,
        ip: "127.0.0.2",
        mac: "02:00:00:00:01:0b",
        scopes: ["onvif://www.onvif.org/name/Beta", "onvif://www.onvif.org/location/Hall"],
      }),
      c: await camera({
        hello: false,
        ip: "127.0.0.3",
        mac: "02:00:00:00:01:0c",
        scopes: ["onvif://www.onvif.org/name/Gamma"],
      }),
    });

    /** Runs the handler with the filter (and a uuid Include when the filter is not on uuids) and returns which of a, b, c it kept. */
    async function kept(filter: Record<string, unknown>, cams: Record<string, FakeCamera>): Promise<string[]> {
      const all = Object.values(cams);
      const r = run("uuids" in filter ? filter : { ...filter, ...only(...all) });
      const latest = await until("first set", () => r.latest);
      await r.stop();
      return Object.entries(cams)
        .filter(([, cam]) => latest.some((d) => d.id === cam.id))
        .map(([name]) => name);
    }

    it("on UUID, scopes, MAC and IP, Include and Exclude", async () => {
      const cams = await setup();
      const { a, b } = cams;
      expect(await kept({ uuids: { action: "Include", items: [a.address.toUpperCase(), b.id] } }, cams)).toEqual([
        "a",
        "b",
      ]);
      const excluded = await kept({ uuids: { action: "Exclude", items: [a.id] } }, cams);
      expect(excluded).toEqual(["b", "c"]);
      expect(
        await kept({ scopes: { action: "Include", items: ["onvif://www.onvif.org/location/hall", "x"] } }, cams),
      ).toEqual(["b"]);
      expect(await kept({ scopes: { action: "Exclude", items: ["onvif://www.onvif.org/name/Alpha"] } }, cams)).toEqual([
        "b",
        "c",
      ]);
      expect(await kept({ macAddresses: { action: "Include", items: ["02:00:00:00:01:0C"] } }, cams)).toEqual(["c"]);
      expect(await kept({ macAddresses: { action: "Exclude", items: ["02:00:00:00:01:0c"] } }, cams)).toEqual([
        "a",
        "b",
      ]);
      expect(await kept({ ipAddresses: { action: "Include", items: ["127.0.0.2", "127.0.0.3"] } }, cams)).toEqual([
        "b",
        "c",
      ]);
      expect(await kept({ ipAddresses: { action: "Exclude", items: ["127.0.0.2"] } }, cams)).toEqual(["a", "c"]);
      // An excluded camera is not even read (no credentials go to it).
      expect(a.calls.GetDeviceInformation ?? 0).toBeLessThan(b.calls.GetDeviceInformation ?? 0);
    });
  });

  describe("credentials", () => {
    it("reports a camera that refuses the credentials, with nothing secret anywhere", async () => {
      const cam = await camera({ hello: false, credentials: { username: "admin", password: "correct-horse" } });
      const r = run(only(cam), { username: "admin", password: "wrong-battery" });
      const device = await until("camera", () => r.device(cam));
      expect(device.problem).toMatch(/authoriz/i);
      expect(device.properties).toEqual({
        ONVIF_DEVICE_SERVICE_URL: cam.xaddr,
        ONVIF_DEVICE_UUID: cam.id,
        ONVIF_DEVICE_IP_ADDRESS: "127.0.0.1",
        ONVIF_SCOPES: cam.scopes.join(" "),
      });
      await r.stop();
      const everything = JSON.stringify(r.yields) + r.logs.join("");
      expect(everything).not.toContain("wrong-battery");
      expect(everything).not.toContain("correct-horse");
      expect(r.logs.join("")).toContain("not fully read");

      const none = run(only(cam));
      expect((await until("camera", () => none.device(cam))).problem).toMatch(/none are configured/);
    });

    it("reads everything with the right credentials, per camera over the default", async () => {
      const cam = await camera({ hello: false, credentials: { username: "viewer", password: "per-camera-pw" } });
      const r = run(only(cam), {
        username: "admin",
        password: "default-pw",
        [`${cam.id}.username`]: "viewer",
        [`${cam.id}.password`]: "per-camera-pw",
      });
      const device = await until("camera", () => r.device(cam));
      expect(device.problem).toBeUndefined();
      expect(device.properties.ONVIF_STREAM_URI).toBe(cam.streamUri("profile_1"));
      expect(device.properties.ONVIF_DEVICE_MAC_ADDRESS).toBe("02:00:00:00:00:01");
      await r.stop();
      const everything = JSON.stringify(r.yields) + r.logs.join("");
      expect(everything).not.toContain("per-camera-pw");
      expect(everything).not.toContain("default-pw");
    });
  });

  describe("misbehaving cameras", () => {
    const modes: [Misbehaviour, RegExp][] = [
      ["hang", /timeout/],
      ["malformed-xml", /malformed/],
      ["xml-bomb", /malformed/],
      ["huge-response", /too large/],
    ];
    for (const [mode, problem] of modes) {
      it(`reports a camera in "${mode}" mode in bounded time, next to a good one`, async () => {
        const bad = await camera({ hello: false, misbehave: mode });
        const good = await camera({ hello: false, ip: "127.0.0.2" });
        const started = Date.now();
        const r = run({ requestTimeoutSeconds: 1, ...only(bad, good) });
        const latest = await until("both", () => r.device(bad) && r.device(good) && r.latest);
        expect(Date.now() - started).toBeLessThan(15_000);
        const device = r.device(bad);
        expect(device?.problem).toMatch(problem);
        expect(device?.properties.ONVIF_DEVICE_SERVICE_URL).toBe(bad.xaddr);
        expect(device?.properties.ONVIF_DEVICE_UUID).toBe(bad.id);
        expect(r.device(good)?.problem).toBeUndefined();
        expect(r.device(good)?.properties.ONVIF_STREAM_URI).toBe(good.streamUri("profile_1"));
        for (const d of latest) checkSafe(d);
      });
    }

    it("sanitizes and bounds a hostile ProbeMatch and hostile device information", async () => {
      const cam = await camera({ hello: false, misbehave: "hostile-probe-match" });
      const r = run(only(cam));
      const device = await until("camera", () => r.device(cam));
      checkSafe(device);
      const p = device.properties;
      expect(p.ONVIF_DEVICE_SERVICE_URL).toBe(cam.xaddr);
      expect(p.ONVIF_DEVICE_IP_ADDRESS).toBe("127.0.0.1");
      expect(p.ONVIF_STREAM_URI).toBe(cam.streamUri("profile_1"));
      expect(p.ONVIF_DEVICE_MAC_ADDRESS).toBeUndefined();
      expect(p.ONVIF_MANUFACTURER?.length).toBeLessThanOrEqual(256);
      expect(p.ONVIF_MANUFACTURER).toMatch(/^EvilCorp\[31m/);
      expect(p.ONVIF_SCOPES?.length).toBeLessThanOrEqual(2048);
      expect(p.ONVIF_SCOPES).toContain(cam.scopes[0]);
      expect(p.ONVIF_SCOPES).not.toContain("AAAA");
      expect(Object.keys(p).length).toBeLessThanOrEqual(10);
    });
  });

  it("ends the iterator and releases everything on abort, even with a read in flight", async () => {
    const cam = await camera({ hello: false, misbehave: "hang" });
    const r = run({ requestTimeoutSeconds: 60, ...only(cam) });
    await until("camera being read", () => cam.calls.GetSystemDateAndTime === 1);
    const started = Date.now();
    await r.stop();
    expect(r.ended).toBe(true);
    expect(Date.now() - started).toBeLessThan(5_000);
  });
});

describe("onvif handler helpers", () => {
  it("publishes the HardwareId from GetDeviceInformation as ONVIF_HARDWARE_ID", () => {
    // Written from the GetDeviceInformationResponse element of the device management WSDL
    // (https://www.onvif.org/ver10/device/wsdl/devicemgmt.wsdl; ONVIF Core Specification, "Get
    // device information": Manufacturer, Model, FirmwareVersion, SerialNumber, HardwareId, all
    // xs:string). The values are illustrative, in the form cameras give them.
    const xml =
      `<?xml version="1.0" encoding="UTF-8"?><SOAP-ENV:Envelope xmlns:SOAP-ENV="http://www.w3.org/2003/05/soap-envelope" ` +
      `xmlns:tds="http://www.onvif.org/ver10/device/wsdl"><SOAP-ENV:Body><tds:GetDeviceInformationResponse>` +
      `<tds:Manufacturer>AXIS</tds:Manufacturer><tds:Model>P1344</tds:Model>` +
      `<tds:FirmwareVersion>5.40.9.2</tds:FirmwareVersion><tds:SerialNumber>00408C1A2B3C</tds:SerialNumber>` +
      `<tds:HardwareId>17F</tds:HardwareId></tds:GetDeviceInformationResponse></SOAP-ENV:Body></SOAP-ENV:Envelope>`;
    const details = deviceInformation(xml, 1 << 20) ?? {};
    const camera = {
      id: "c1",
      endpoint: { uuid: "urn:uuid:c1", types: [], scopes: [], xaddrs: [], onvif: true },
      xaddr: "http://192.0.2.10/onvif/device_service",
      ip: "192.0.2.10",
    };
    const device = toDevice(camera, { details });
    expect(device.properties).toMatchObject({
      ONVIF_MANUFACTURER: "AXIS",
      ONVIF_MODEL: "P1344",
      ONVIF_FIRMWARE_VERSION: "5.40.9.2",
      ONVIF_SERIAL_NUMBER: "00408C1A2B3C",
      ONVIF_HARDWARE_ID: "17F",
    });
  });

  it("derives ids, MACs and credentials", () => {
    expect(endpointId("urn:uuid:ABC-1")).toBe("abc-1");
    expect(endpointId("uuid:abc")).toBe("abc");
    expect(endpointId("http://Cam/1")).toBe("http://cam/1");
    expect(normalizeMac("AA-BB-CC-DD-EE-FF")).toBe("aa:bb:cc:dd:ee:ff");
    expect(normalizeMac("aabbccddeeff")).toBe("aa:bb:cc:dd:ee:ff");
    expect(normalizeMac("../../etc")).toBeUndefined();
    const props = { username: "u", password: "p", "abc.password": "q", "urn:uuid:def.username": "w" };
    expect(credentialsFor(props, "abc", "urn:uuid:abc")).toEqual({ username: "u", password: "q" });
    expect(credentialsFor(props, "def", "urn:uuid:def")).toEqual({ username: "w", password: "p" });
    expect(credentialsFor({}, "abc", "urn:uuid:abc")).toBeUndefined();
  });

  it("gives each node its own multicast interface from nodeInterfaces", () => {
    const details = onvifDetails.parse({
      interface: "192.0.2.1",
      nodeInterfaces: { "edge-a": "127.0.0.1", "edge-b.example": "198.51.100.7" },
    });
    expect(onvifHandler.forNode(details, "edge-a").interface).toBe("127.0.0.1");
    expect(onvifHandler.forNode(details, "edge-b.example").interface).toBe("198.51.100.7");
    // Nodes not listed (and names that are not own keys) keep `interface`.
    expect(onvifHandler.forNode(details, "edge-c").interface).toBe("192.0.2.1");
    expect(onvifHandler.forNode(details, "constructor").interface).toBe("192.0.2.1");
    expect(onvifHandler.forNode(onvifDetails.parse({}), "edge-a").interface).toBeUndefined();
    expect(onvifDetails.safeParse({ nodeInterfaces: { Edge_A: "127.0.0.1" } }).success).toBe(false);
    expect(onvifDetails.safeParse({ nodeInterfaces: { "edge-a": "eth1" } }).success).toBe(false);
  });

  it("validates details with Akri's field names and the defaults", () => {
    expect(onvifDetails.parse({})).toEqual({
      discoveryTimeoutSeconds: 1.5,
      probeIntervalSeconds: 30,
      requestTimeoutSeconds: 5,
      maxResponseBytes: 1024 * 1024,
    });
    expect(
      onvifDetails.parse({ scopes: { items: ["onvif://www.onvif.org/name/x"] }, unicastHosts: ["10.0.0.5:3702"] })
        .scopes?.action,
    ).toBe("Include");
    expect(onvifDetails.safeParse({ interface: "eth0" }).success).toBe(false);
    expect(onvifDetails.safeParse({ unknown: 1 }).success).toBe(false);
    expect(onvifDetails.safeParse({ unicastHosts: ["a b"] }).success).toBe(false);
  });
});
