import { readdir } from "node:fs/promises";
import { join, resolve } from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  duration,
  loadScenarioFile,
  parseScenario,
  ScenarioError,
  stableUuid,
  validateScenario,
} from "../../src/simulate/scenario.js";

const SCENARIOS = resolve(import.meta.dirname, "../../examples/scenarios");

/** The issues of a scenario that must fail, as "line N: path: message" strings. */
function issuesOf(yaml: string): string[] {
  try {
    parseScenario("test.yaml", yaml);
  } catch (err) {
    expect(err).toBeInstanceOf(ScenarioError);
    return (err as ScenarioError).issues.map((i) => `${i.line ? `line ${i.line}: ` : ""}${i.path}: ${i.message}`);
  }
  throw new Error("the scenario was accepted");
}

const USB = '{kind: usb, name: serial, vendorId: "0403", productId: "6001"}';

describe("scenario files: errors name the field, its line and what was expected", () => {
  it("wrong types, missing fields and unknown fields", () => {
    expect(
      issuesOf(`devices:
  - kind: usb
    name: serial
    vendorId: 403
  - {kind: homie, name: h, plugd: true}
`),
    ).toEqual([
      "line 4: devices[0].vendorId: Invalid input: expected string, received number",
      "line 2: devices[0].productId: missing: expected string",
      "line 5: devices[1].plugd: unknown field (a typo?)",
    ]);
  });

  it("unknown kinds and actions list the ones there are; durations say their form", () => {
    const issues = issuesOf(`devices:
  - {kind: toaster, name: t}
timeline:
  - {at: 10x, action: plug, device: t}
  - {at: 5s, action: explode, device: t}
duration: -3
`);
    expect(issues).toEqual([
      "line 2: devices[0].kind: expected kind: onvif-camera, home-assistant, homie, sparkplug, mqtt-topic, usb or mdns",
      'line 4: timeline[0].at: expected a duration like "10s", "500ms", "2m", "1h" or a number of seconds',
      "line 5: timeline[1].action: expected action: plug, unplug, kill, flap, misbehave or broker-outage",
      expect.stringMatching(/^line 6: duration: expected "forever" or a duration/),
    ]);
  });

  it("references, identities and what needs the embedded broker", () => {
    expect(
      issuesOf(`mqtt: {broker: {uri: "mqtt://broker.lab:1883"}}
devices:
  - {kind: onvif-camera, name: cam, count: 2, uuid: fixed}
  - ${USB.replace("serial", "a").replace("}", ', port: "1-1"}')}
  - ${USB.replace("serial", "b").replace("}", ', port: "1-1"}')}
  - {kind: homie, name: h}
timeline:
  - {at: 1s, action: plug, device: nope}
  - {at: 2s, action: broker-outage, for: 3s}
  - {at: 3s, action: misbehave, device: a, mode: hang}
`),
    ).toEqual([
      "line 3: devices[0].uuid: with count 2 it must contain {i} (each copy needs its own)",
      "line 3: devices[0]: cam-2 and cam-1 have the same identity (onvif uuid fixed)",
      "line 5: devices[2]: b and a have the same identity (usb port 1-1)",
      'line 8: timeline[0].device: no device named "nope"',
      "line 9: timeline[1].action: broker-outage needs the embedded broker (mqtt.broker.embedded)",
      "line 10: timeline[2].device: misbehave applies to onvif-camera devices only",
    ]);
  });

  it("not YAML, not an object, empty", () => {
    expect(issuesOf("devices: [\n  {kind: usb")[0]).toMatch(/^line 2: : not valid YAML: /);
    expect(issuesOf("[1, 2]")).toEqual(["line 1: : Invalid input: expected object, received array"]);
    expect(issuesOf("")).toEqual([": Invalid input: expected object, received null"]);
    expect(issuesOf("devices: []")).toEqual([expect.stringMatching(/^line 1: devices: Too small/)]);
  });

  it("the error message lists every issue under the file name", () => {
    try {
      parseScenario("lab.yaml", `devices:\n  - {kind: usb, name: Serial}\n`);
      expect.unreachable();
    } catch (err) {
      expect((err as Error).message).toBe(
        [
          "lab.yaml: invalid scenario",
          "  line 2: devices[0].name: expected a name of lowercase letters, digits and '-', at most 40 characters",
          "  line 2: devices[0].vendorId: missing: expected string",
          "  line 2: devices[0].productId: missing: expected string",
        ].join("\n"),
      );
    }
  });
});

describe("scenario expansion", () => {
  it("expands counts with {i}, fills stable identities and sorts the timeline", () => {
    const scenario = parseScenario(
      "lab.yaml",
      `devices:
  - {kind: onvif-camera, name: cam, count: 2, ip: "127.0.0.{i}"}
  - {kind: usb, name: s, count: 2, vendorId: "0403", productId: "6001", serial: "FT{i}"}
  - {kind: usb, name: pinned, vendorId: "0403", productId: "6001", port: "1-1"}
  - {kind: homie, name: h, plugged: false}
timeline:
  - {at: 1m, action: flap, device: cam, every: 500ms, for: 10}
  - {at: 1.5, action: plug, device: h}
`,
    );
    expect(scenario.name).toBe("lab");
    expect(scenario.devices.map((d) => d.name)).toEqual(["cam-1", "cam-2", "s-1", "s-2", "pinned", "h"]);
    const [cam1, cam2, s1, s2, pinned, h] = scenario.devices;
    expect(cam1).toMatchObject({ ip: "127.0.0.1", group: "cam" });
    expect(cam2).toMatchObject({ ip: "127.0.0.2", group: "cam" });
    expect(cam1?.kind === "onvif-camera" && cam1.uuid).toBe(stableUuid("lab/cam-1"));
    // The pinned port is taken: the others get the next free ones.
    expect([s1, s2, pinned].map((d) => d?.kind === "usb" && [d.port, d.serial])).toEqual([
      ["1-2", "FT1"],
      ["1-3", "FT2"],
      ["1-1", undefined],
    ]);
    expect(h).toMatchObject({ plugged: false, id: "h", version: 5 });
    expect(scenario.timeline).toEqual([
      { at: 1500, action: "plug", device: "h" },
      { at: 60_000, action: "flap", device: "cam", every: 500, for: 10_000 },
    ]);
    expect(scenario.mqtt.broker).toEqual({ embedded: { host: "127.0.0.1", port: 0 } });
    expect(scenario.onvif.interface).toBe("127.0.0.1");
  });

  it("the same scenario gives the same identities every time (so the same Device names)", () => {
    const a = parseScenario("x.yaml", `devices: [{kind: onvif-camera, name: cam, count: 3}]`);
    const b = parseScenario("x.yaml", `devices: [{kind: onvif-camera, name: cam, count: 3}]`);
    expect(a.devices).toEqual(b.devices);
    const uuids = a.devices.map((d) => (d.kind === "onvif-camera" ? d.uuid : ""));
    expect(new Set(uuids).size).toBe(3);
    for (const uuid of uuids) expect(uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-a[0-9a-f]{3}-[0-9a-f]{12}$/);
  });

  it("every scenario in examples/scenarios is valid", async () => {
    const files = (await readdir(SCENARIOS)).filter((f) => f.endsWith(".yaml"));
    expect(files.length).toBeGreaterThanOrEqual(3);
    for (const file of files) {
      const scenario = await loadScenarioFile(join(SCENARIOS, file));
      expect(scenario.devices.length, file).toBeGreaterThan(0);
    }
  });
});

describe("properties", () => {
  it("durations: <n>ms, <n>s, <n>m and a bare number of seconds parse to milliseconds", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 86_400 }), (n) => {
        expect(duration.parse(`${n}ms`)).toBe(n);
        expect(duration.parse(`${n}s`)).toBe(n * 1000);
        expect(duration.parse(n)).toBe(n * 1000);
        expect(duration.parse(`${n / 100}s`)).toBe(Math.round((n / 100) * 1000));
        if (n <= 10_000) expect(duration.parse(`${n}m`)).toBe(n * 60_000);
      }),
    );
  });

  it("any input either validates or throws a ScenarioError whose issues all name a path and a message", () => {
    const device = fc.record(
      {
        kind: fc.constantFrom("onvif-camera", "usb", "homie", "mdns", "sparkplug", "toaster"),
        name: fc.constantFrom("a", "b", "cam", "Bad", ""),
        count: fc.oneof(fc.integer({ min: -1, max: 4 }), fc.string()),
        vendorId: fc.constantFrom("0403", "xyz", 403),
        productId: fc.constantFrom("6001", undefined),
        type: fc.constantFrom("http", "_bad type"),
        port: fc.oneof(fc.integer({ min: 0, max: 70_000 }), fc.constantFrom("1-1", "1-{i}")),
        group: fc.string({ maxLength: 5 }),
      },
      { requiredKeys: ["kind", "name"] },
    );
    const event = fc.record(
      {
        at: fc.oneof(fc.integer({ min: -5, max: 100 }), fc.constantFrom("1s", "2x", "")),
        action: fc.constantFrom("plug", "unplug", "kill", "flap", "misbehave", "broker-outage", "dance"),
        device: fc.constantFrom("a", "b", "cam", "cam-1", "nope"),
        every: fc.constantFrom("1s", 0),
        for: fc.constantFrom("2s", -1),
        mode: fc.constantFrom("hang", "none", "sleepy"),
      },
      { requiredKeys: ["at", "action"] },
    );
    const scenario = fc.oneof(
      fc.record({ devices: fc.array(device, { maxLength: 4 }), timeline: fc.array(event, { maxLength: 4 }) }),
      fc.jsonValue(),
    );
    fc.assert(
      fc.property(scenario, (input) => {
        try {
          const valid = validateScenario("fuzz", input);
          expect(valid.devices.length).toBeGreaterThan(0);
        } catch (err) {
          expect(err).toBeInstanceOf(ScenarioError);
          const issues = (err as ScenarioError).issues;
          expect(issues.length).toBeGreaterThan(0);
          for (const issue of issues) expect(issue.message.length).toBeGreaterThan(0);
        }
      }),
      { numRuns: 500 },
    );
  });
});
