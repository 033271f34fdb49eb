import { randomBytes } from "node:crypto";
import { isIP } from "node:net";
import fc from "fast-check";
import { pino } from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { MAX_PROPERTIES, MAX_PROPERTY_VALUE, PROPERTY_NAME } from "../../src/api/device.js";
import { fuzzRuns } from "../../test/fuzz.js";
import type { DiscoveredDevice } from "../handler.js";
import { type MdnsDetails, mdnsDetails, serviceTypes } from "./details.js";
import { mdnsHandler, toDevice } from "./handler.js";
import { type Advertisement, advertiseService } from "./mock.js";

// Real multicast over loopback: every socket joins 224.0.0.251 on 127.0.0.1 and sends from it.
const LOOPBACK = "127.0.0.1";
const log = pino({ level: "silent" });
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

/** A service type no other test (or process) on this machine uses. */
const uniqueType = () => `spt-${randomBytes(4).toString("hex")}`;

const ads: Advertisement[] = [];
const controllers: AbortController[] = [];
afterEach(async () => {
  for (const c of controllers.splice(0)) c.abort();
  await Promise.all(ads.splice(0).map((a) => a.stop()));
});

async function advertise(options: Parameters<typeof advertiseService>[0]): Promise<Advertisement> {
  const ad = await advertiseService({ interface: LOOPBACK, ...options });
  ads.push(ad);
  return ad;
}

function run(details: Partial<MdnsDetails> & { serviceTypes: string[] }) {
  const controller = new AbortController();
  controllers.push(controller);
  const sets: DiscoveredDevice[][] = [];
  const parsed = mdnsDetails.parse({ interface: LOOPBACK, ...details });
  const done = (async () => {
    for await (const set of mdnsHandler.discover({ details: parsed, properties: {}, signal: controller.signal, log })) {
      sets.push(set);
    }
  })();
  return { sets, done, controller, latest: () => sets.at(-1) ?? [] };
}

async function until(check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("timed out waiting");
    await new Promise((r) => setTimeout(r, 20));
  }
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const names = (set: DiscoveredDevice[]) => set.map((d) => d.properties.MDNS_NAME).sort();

describe("mdnsDetails", () => {
  it("normalizes service types and validates", () => {
    const details = mdnsDetails.parse({ serviceTypes: ["http", "_http._tcp", "_ipp._udp", "_MQTT"] });
    expect(details.protocol).toBe("tcp");
    expect(serviceTypes(details).map((t) => t.label)).toEqual(["_http._tcp", "_ipp._udp", "_mqtt._tcp"]);
    expect(serviceTypes(mdnsDetails.parse({ serviceTypes: ["coap"], protocol: "udp" }))[0]).toEqual({
      name: "coap",
      protocol: "udp",
      label: "_coap._udp",
    });
    expect(mdnsDetails.safeParse({ serviceTypes: [] }).success).toBe(false);
    expect(mdnsDetails.safeParse({ serviceTypes: ["_http._sctp"] }).success).toBe(false);
    expect(mdnsDetails.safeParse({ serviceTypes: ["../x"] }).success).toBe(false);
    expect(mdnsDetails.safeParse({ serviceTypes: ["http"], interface: "lo" }).success).toBe(false);
    expect(mdnsDetails.safeParse({ serviceTypes: ["http"], txt: { model: { items: ["a"] } } }).success).toBe(true);
  });
});

describe("discovery over loopback multicast", () => {
  it("finds a service with its TXT properties, and loses it on goodbye", async () => {
    const type = uniqueType();
    const r = run({ serviceTypes: [`_${type}._tcp`] });
    await until(() => r.sets.length === 1);
    expect(r.sets[0]).toEqual([]);

    const ad = await advertise({ name: "Sensor One", type, port: 8080, txt: { model: "x1", "fw-version": "1.2" } });
    await until(() => r.latest().length === 1);
    const [device] = r.latest();
    expect(device?.id).toBe(`mdns:_${type}._tcp:sensor one._${type}._tcp.local`);
    expect(device?.properties).toMatchObject({
      MDNS_NAME: "Sensor One",
      MDNS_PORT: "8080",
      MDNS_TYPE: `_${type}._tcp`,
      MDNS_TXT_MODEL: "x1",
      MDNS_TXT_FW_VERSION: "1.2",
    });
    expect(device?.properties.MDNS_HOST?.length).toBeGreaterThan(0);
    // bonjour-service announces only non-loopback addresses; whatever it sent must be IPs.
    for (const address of device?.properties.MDNS_ADDRESSES?.split(",") ?? []) expect(isIP(address)).not.toBe(0);

    await ad.stop();
    ads.splice(ads.indexOf(ad), 1);
    // A goodbye is immediate; nothing here waits on a TTL (which would be 2 minutes).
    await until(() => r.latest().length === 0, 5_000);

    r.controller.abort();
    await r.done;
  });

  it("finds services published before it started, on several types", async () => {
    const [a, b] = [uniqueType(), uniqueType()];
    await advertise({ name: "first", type: a, port: 1 });
    await advertise({ name: "second", type: b, port: 2, protocol: "udp" });
    const r = run({ serviceTypes: [a, `_${b}._udp`] });
    await until(() => r.sets.length >= 1);
    await until(() => r.latest().length === 2, 5_000);
    // Sets are sorted by id; the random type names decide the order.
    expect(r.latest().map((d) => d.id)).toEqual(
      [`mdns:_${a}._tcp:first._${a}._tcp.local`, `mdns:_${b}._udp:second._${b}._udp.local`].sort(),
    );
    r.controller.abort();
    await r.done;
  });

  it("expires a service that vanishes without a goodbye, and keeps one that stays", async () => {
    const type = uniqueType();
    const r = run({ serviceTypes: [type] });
    // TTL 2 s: after its first two announcements (0 s, 3 s) the survivor stays only by answering our queries.
    const doomed = await advertise({ name: "doomed", type, port: 1, ttl: 2 });
    await advertise({ name: "survivor", type, port: 2, ttl: 2 });
    await until(() => r.latest().length === 2);
    const seenBoth = r.sets.length;
    await doomed.crash();
    ads.splice(ads.indexOf(doomed), 1);
    await until(() => !names(r.latest()).includes("doomed"), 8_000);
    await sleep(10_000);
    // The survivor was never dropped, through several TTLs without announcements.
    for (const set of r.sets.slice(seenBoth - 1)) expect(names(set)).toContain("survivor");
    expect(names(r.latest())).toEqual(["survivor"]);
    r.controller.abort();
    await r.done;
  });

  it("cleans up on abort: iterator ends, socket and timers go", async () => {
    const count = (kind: string) => process.getActiveResourcesInfo().filter((r) => r === kind).length;
    await sleep(100);
    const socketsBefore = count("UDPWRAP") + count("UDPWrap");
    const timersBefore = count("Timeout");
    const r = run({ serviceTypes: [uniqueType()] });
    await until(() => r.sets.length === 1);
    expect(count("UDPWRAP") + count("UDPWrap")).toBe(socketsBefore + 1);
    r.controller.abort();
    await r.done;
    await sleep(50);
    expect(count("UDPWRAP") + count("UDPWrap")).toBe(socketsBefore);
    expect(count("Timeout")).toBeLessThanOrEqual(timersBefore);
  });

  it("browses on this node's interface from nodeInterfaces", async () => {
    const type = uniqueType();
    const parsed = mdnsDetails.parse({
      serviceTypes: [type],
      interface: "192.0.2.1",
      nodeInterfaces: { "edge-a": LOOPBACK, "edge-b": "198.51.100.7" },
    });
    const details = mdnsHandler.forNode(parsed, "edge-a");
    // Checked before browsing: nothing may go out on an interface other than loopback.
    expect(details.interface).toBe(LOOPBACK);
    expect(mdnsHandler.forNode(parsed, "edge-b").interface).toBe("198.51.100.7");
    expect(mdnsHandler.forNode(parsed, "edge-c").interface).toBe("192.0.2.1");
    expect(mdnsDetails.safeParse({ serviceTypes: ["http"], nodeInterfaces: { "edge-a": "lo" } }).success).toBe(false);
    await advertise({ name: "per-node", type, port: 9 });
    const controller = new AbortController();
    controllers.push(controller);
    const sets: DiscoveredDevice[][] = [];
    const done = (async () => {
      for await (const set of mdnsHandler.discover({ details, properties: {}, signal: controller.signal, log })) {
        sets.push(set);
      }
    })();
    await until(() => names(sets.at(-1) ?? []).includes("per-node"));
    controller.abort();
    await done;
  });

  it("ends at once when the signal is already aborted", async () => {
    const sets: unknown[] = [];
    const details = mdnsDetails.parse({ serviceTypes: ["http"], interface: LOOPBACK });
    for await (const set of mdnsHandler.discover({ details, properties: {}, signal: AbortSignal.abort(), log })) {
      sets.push(set);
    }
    expect(sets).toEqual([]);
  });
});

describe("filters", () => {
  const type = uniqueType();
  const published: Advertisement[] = [];
  beforeAll(async () => {
    published.push(
      ...(await Promise.all([
        advertiseService({ name: "Alpha", type, port: 1, txt: { role: "camera", zone: "1" }, interface: LOOPBACK }),
        advertiseService({ name: "Beta", type, port: 2, txt: { role: "sensor" }, interface: LOOPBACK }),
        advertiseService({ name: "Gamma", type, port: 3, interface: LOOPBACK }),
      ])),
    );
  });
  afterAll(async () => {
    await Promise.all(published.map((a) => a.stop()));
  });

  const cases: [string, Partial<MdnsDetails>, string[]][] = [
    ["none", {}, ["Alpha", "Beta", "Gamma"]],
    ["name include (any case)", { names: { action: "Include", items: ["alpha", "gamma"] } }, ["Alpha", "Gamma"]],
    ["name exclude", { names: { action: "Exclude", items: ["Alpha"] } }, ["Beta", "Gamma"]],
    ["txt include", { txt: { role: { action: "Include", items: ["camera"] } } }, ["Alpha"]],
    ["txt exclude, key in any case", { txt: { ROLE: { action: "Exclude", items: ["camera"] } } }, ["Beta", "Gamma"]],
    [
      "name and txt together",
      { names: { action: "Exclude", items: ["Beta"] }, txt: { zone: { action: "Exclude", items: ["2"] } } },
      ["Alpha", "Gamma"],
    ],
  ];
  it.each(cases)("%s", async (_name, filters, expected) => {
    const r = run({ serviceTypes: [type], ...filters });
    await until(() => names(r.latest()).length >= expected.length);
    await sleep(300); // anything wrongly included would have arrived with the rest
    expect(names(r.latest())).toEqual(expected);
    r.controller.abort();
    await r.done;
  });
});

describe("hostile services", () => {
  const checkBounded = (device: DiscoveredDevice) => {
    expect(Object.keys(device.properties).length).toBeLessThanOrEqual(MAX_PROPERTIES);
    expect(device.id.length).toBeLessThanOrEqual(1024);
    expect(CONTROL.test(device.id)).toBe(false);
    for (const [name, value] of Object.entries(device.properties)) {
      expect(name).toMatch(PROPERTY_NAME);
      expect(value.length).toBeLessThanOrEqual(MAX_PROPERTY_VALUE);
      expect(CONTROL.test(value)).toBe(false);
    }
  };

  it("sanitizes TXT keys and values that arrive over the wire", async () => {
    const type = uniqueType();
    const txt: Record<string, string> = {
      "../x": "up\u0000and\u001b[2Jout",
      "a\u0001b": "bell\u0007",
      "line\nbreak": "v",
      "": "no key",
      "===": "only separators",
    };
    // A single TXT string holds at most 255 bytes, so "10 KB of TXT" means many long strings.
    for (let i = 0; i < 60; i++) txt[`k${String(i).padStart(2, "0")}`] = "v".repeat(240);
    await advertise({ name: "Evil\u0007Name\u202e", type, port: 9, txt });
    const r = run({ serviceTypes: [type] });
    await until(() => r.latest().length === 1);
    const [device] = r.latest();
    if (!device) throw new Error("no device");
    checkBounded(device);
    expect(device.properties.MDNS_NAME, "control and bidi-override characters are stripped").toBe("EvilName");
    expect(device.properties.MDNS_TXT_X).toBe("upand[2Jout");
    expect(device.properties.MDNS_TXT_A_B).toBe("bell");
    // The core properties survive the cut of the many TXT keys.
    expect(device.properties.MDNS_TYPE).toBe(`_${type}._tcp`);
    expect(device.properties.MDNS_PORT).toBe("9");
    expect(Object.keys(device.properties).length).toBe(MAX_PROPERTIES);
    r.controller.abort();
    await r.done;
  });

  const type = serviceTypes(mdnsDetails.parse({ serviceTypes: ["http"] }))[0]!;
  const service = (fields: Record<string, unknown>) =>
    ({ name: "n", host: "h.local", port: 80, fqdn: "n._http._tcp.local", addresses: [], ...fields }) as never;

  it("bounds values and keys no packet could carry whole", () => {
    const device = toDevice(
      type,
      service({
        name: "N".repeat(10_000),
        fqdn: `${"F".repeat(10_000)}._http._tcp.local`,
        txt: { big: "x".repeat(10_240), ["K".repeat(10_000)]: "v", bin: Buffer.from([0, 1, 2, 65]) },
      }),
    );
    checkBounded(device);
    expect(device.properties.MDNS_TXT_BIG).toHaveLength(MAX_PROPERTY_VALUE);
    expect(device.properties.MDNS_NAME).toHaveLength(MAX_PROPERTY_VALUE);
    expect(device.properties.MDNS_TXT_BIN).toBe("A");
    expect(device.id.startsWith("mdns:_http._tcp:ffff")).toBe(true);
  });

  it("never produces an unbounded or unprintable device for any service data", () => {
    const text = fc.string({ unit: "binary", maxLength: 5_000 });
    fc.assert(
      fc.property(
        fc.record({
          name: text,
          host: text,
          fqdn: text,
          port: fc.oneof(fc.integer(), fc.constant(undefined)),
          addresses: fc.array(text, { maxLength: 5 }),
          txt: fc.oneof(
            fc.dictionary(text, fc.oneof(text, fc.constant(undefined)), { maxKeys: 100 }),
            fc.constant(undefined),
          ),
        }),
        (fields) => {
          const device = toDevice(type, service(fields));
          checkBounded(device);
          expect(device.properties.MDNS_TYPE).toBe("_http._tcp");
        },
      ),
      { numRuns: fuzzRuns(2000, "mDNS service records") },
    );
  });
});
