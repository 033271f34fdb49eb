import http from "node:http";
import type { AddressInfo } from "node:net";
import onvif from "onvif";
import { afterEach, describe, expect, it } from "vitest";
import { readCamera } from "./device-service.js";
import { FakeCamera, type FakeCameraOptions, fakeUuid, type Misbehaviour } from "./fake-camera.js";

const cameras: FakeCamera[] = [];
const servers: http.Server[] = [];

async function camera(options: Partial<FakeCameraOptions> = {}): Promise<FakeCamera> {
  // No Hello: these tests talk to the device service directly, and handlers in other test files need not see them.
  const cam = await FakeCamera.start({ uuid: fakeUuid(), hello: false, multicast: false, ...options });
  cameras.push(cam);
  return cam;
}

afterEach(async () => {
  await Promise.all(cameras.splice(0).map((c) => c.stop({ bye: false })));
  await Promise.all(servers.splice(0).map((s) => new Promise((resolve) => s.close(resolve))));
});

const limits = { timeoutMs: 1000, maxResponseBytes: 1024 * 1024 };

describe("readCamera", () => {
  it("reads device information, MAC and the RTSP stream URI without turning strings into numbers", async () => {
    const cam = await camera({
      mac: "02:00:00:00:00:AB",
      firmware: "1.10",
      serial: "00012345678901234567890",
      manufacturer: "Acme & Co <Cameras>",
      profiles: [{ token: "second" }, { token: "main&1" }],
    });
    const result = await readCamera({ xaddr: cam.xaddr, ...limits });
    expect(result.problem).toBeUndefined();
    expect(result.details).toMatchObject({
      manufacturer: "Acme & Co <Cameras>",
      model: "FakeCam",
      firmwareVersion: "1.10",
      serialNumber: "00012345678901234567890",
      profileToken: "second",
      streamUri: cam.streamUri("second"),
    });
    expect(result.details.interfaces).toEqual([{ mac: "02:00:00:00:00:AB", ipv4: ["127.0.0.1"], enabled: true }]);
  });

  it("reads an ONVIF 1.x camera completely through GetCapabilities when GetServices is a SOAP fault", async () => {
    // Firmware older than ONVIF 2.0 does not know GetServices (added in ONVIF 2.0; Profile S does
    // not require it). Real cameras answer it with the Core spec's generic fault for an action
    // they do not implement, env:Receiver / ter:ActionNotSupported, "Optional Action Not
    // Implemented" (ONVIF Core Specification, 5.11.2.2 "Generic faults"; seen from real cameras in
    // https://github.com/milg0/onvif-java-lib/issues/17 and
    // https://github.com/cdavis-code/easy_onvif_workspace/issues/19), and list their services in
    // GetCapabilities (https://github.com/quatanium/python-onvif/pull/30: "Axis cameras do not
    // implement it"; https://github.com/quatanium/python-onvif/issues/35: a Siqura camera faults on
    // GetServices). The fake's "1.x" mode answers exactly so.
    const cam = await camera({ onvifVersion: "1.x", credentials: { username: "admin", password: "old-firmware" } });
    const result = await readCamera({
      xaddr: cam.xaddr,
      credentials: { username: "admin", password: "old-firmware" },
      ...limits,
    });
    expect(cam.calls.GetServices).toBe(1);
    expect(cam.calls.GetCapabilities).toBe(1);
    expect(result.problem).toBeUndefined();
    expect(result.details.streamUri).toBe(cam.streamUri("profile_1"));
    expect(result.details.interfaces?.[0]?.mac).toBe("02:00:00:00:00:01");
  });

  it("still reports a camera whose GetServices and GetCapabilities both fail", async () => {
    const server = http.createServer((_req, res) => {
      res.writeHead(500, { "Content-Type": "application/soap+xml" });
      res.end(
        `<?xml version="1.0"?><env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" ` +
          `xmlns:ter="http://www.onvif.org/ver10/error"><env:Body><env:Fault><env:Code><env:Value>env:Receiver</env:Value>` +
          `<env:Subcode><env:Value>ter:ActionNotSupported</env:Value></env:Subcode></env:Code><env:Reason>` +
          `<env:Text xml:lang="en">Optional Action Not Implemented</env:Text></env:Reason></env:Fault></env:Body></env:Envelope>`,
      );
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as AddressInfo).port;
    const result = await readCamera({ xaddr: `http://127.0.0.1:${port}/onvif/device_service`, ...limits });
    expect(result.problem).toMatch(/SOAP fault/);
  });

  it("authenticates with WS-UsernameToken, and reports refused or missing credentials without secrets", async () => {
    const cam = await camera({ credentials: { username: "admin", password: "correct-horse" } });
    const good = await readCamera({
      xaddr: cam.xaddr,
      credentials: { username: "admin", password: "correct-horse" },
      ...limits,
    });
    expect(good.problem).toBeUndefined();
    expect(good.details.streamUri).toBe(cam.streamUri("profile_1"));

    const wrong = await readCamera({
      xaddr: cam.xaddr,
      credentials: { username: "admin", password: "battery-staple" },
      ...limits,
    });
    expect(wrong.problem).toMatch(/not authorized.*rejected/i);
    expect(JSON.stringify(wrong)).not.toMatch(/battery-staple|correct-horse/);
    expect(wrong.details.streamUri).toBeUndefined();

    const none = await readCamera({ xaddr: cam.xaddr, ...limits });
    expect(none.problem).toMatch(/not authorized.*none are configured/i);
  });

  it("serves everything the onvif package's own connect() needs", async () => {
    const cam = await camera({ credentials: { username: "u", password: "p4ss" } });
    const url = new URL(cam.xaddr);
    const client = new onvif.Cam({
      hostname: url.hostname,
      port: Number(url.port),
      username: "u",
      password: "p4ss",
      autoconnect: false,
      timeout: 2000,
    });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("connect() did not call back")), 5000);
      client.connect((err) => {
        clearTimeout(timer);
        if (err) reject(err);
        else resolve();
      });
    });
    const stream = await new Promise<{ uri: string }>((resolve, reject) =>
      client.getStreamUri({ protocol: "RTSP" }, (err, data) => (err || !data ? reject(err) : resolve(data))),
    );
    expect(stream.uri).toBe(cam.streamUri("profile_1"));
    expect(cam.calls.GetVideoSources).toBe(1);
  });

  const modes: [Misbehaviour, RegExp][] = [
    ["hang", /timeout/i],
    ["malformed-xml", /malformed|unexpected/i],
    ["xml-bomb", /malformed|entity|unexpected/i],
    ["huge-response", /too large/i],
  ];
  for (const [mode, problem] of modes) {
    it(`survives a camera in "${mode}" mode in bounded time`, async () => {
      const cam = await camera({ misbehave: mode });
      const started = Date.now();
      const result = await readCamera({ xaddr: cam.xaddr, ...limits });
      expect(Date.now() - started).toBeLessThan(10_000);
      expect(result.problem).toMatch(problem);
      expect(result.problem?.length ?? 0).toBeLessThan(600);
      expect(result.details.streamUri).toBeUndefined();
    });
  }

  it("cuts responses that would make the package's namespace regex quadratic", async () => {
    const server = http.createServer((_req, res) => {
      res.writeHead(200, { "Content-Type": "application/soap+xml" });
      res.end(`<s:Envelope><s:Body>${"xmlns".repeat(200_000)}</s:Body></s:Envelope>`);
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as AddressInfo).port;
    const started = Date.now();
    const result = await readCamera({ xaddr: `http://127.0.0.1:${port}/onvif/device_service`, ...limits });
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(result.problem).toMatch(/namespace/);
  });

  it("reports refused connections and bad URLs", async () => {
    const server = http.createServer();
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as AddressInfo).port;
    await new Promise((resolve) => server.close(resolve));
    const refused = await readCamera({ xaddr: `http://127.0.0.1:${port}/onvif/device_service`, ...limits });
    expect(refused.problem).toMatch(/connection failed \(ECONNREFUSED\)/);
    expect((await readCamera({ xaddr: "ftp://x/", ...limits })).problem).toBe("invalid device service URL");
  });

  it("stops at once when aborted", async () => {
    const cam = await camera({ misbehave: "hang" });
    const abort = new AbortController();
    const started = Date.now();
    setTimeout(() => abort.abort(), 200);
    const result = await readCamera({
      xaddr: cam.xaddr,
      timeoutMs: 30_000,
      maxResponseBytes: 1024,
      signal: abort.signal,
    });
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(result.problem).toMatch(/stopped/);
  });
});
