import { randomBytes } from "node:crypto";
import { Bonjour } from "bonjour-service";
import { describe, expect, it } from "vitest";
import { brokerUriOf, findBrokerOverMdns, publicBrokerUri } from "./broker.js";

describe("broker addresses", () => {
  it("publishes scheme, host and port only", () => {
    expect(publicBrokerUri("mqtt://broker.local")).toBe("mqtt://broker.local:1883");
    expect(publicBrokerUri("mqtts://broker.local/path?x=1")).toBe("mqtts://broker.local:8883");
    expect(publicBrokerUri("mqtt://user:pw@10.0.0.1:1884")).toBe("mqtt://10.0.0.1:1884");
    expect(publicBrokerUri("mqtt://[fd00::1]:1883")).toBe("mqtt://[fd00::1]:1883");
  });

  it("prefers an IPv4 address of a resolved service", () => {
    expect(brokerUriOf({ addresses: ["fd00::5", "10.1.2.3"], port: 1883 })).toBe("mqtt://10.1.2.3:1883");
    expect(brokerUriOf({ addresses: ["fd00::5"], port: 1883 })).toBe("mqtt://[fd00::5]:1883");
    expect(
      brokerUriOf({ addresses: [], referer: { address: "10.9.9.9", family: "IPv4", port: 5353, size: 1 }, port: 8 }),
    ).toBe("mqtt://10.9.9.9:8");
    expect(brokerUriOf({ addresses: [], port: 1883 })).toBeUndefined();
  });
});

describe("findBrokerOverMdns", () => {
  it("finds an _mqtt._tcp service over multicast on loopback", async () => {
    // Loopback only: the interface is explicit on both sides, so nothing goes out on the real link.
    const options = { interface: "127.0.0.1", bind: "0.0.0.0" } as ConstructorParameters<typeof Bonjour>[0];
    const publisher = new Bonjour(options);
    const port = 20000 + (randomBytes(2).readUInt16BE() % 20000);
    publisher.publish({ name: `spindle-test-${randomBytes(3).toString("hex")}`, type: "mqtt", port });
    try {
      const signal = AbortSignal.timeout(10_000);
      const uri = await findBrokerOverMdns({ interface: "127.0.0.1", signal, queryIntervalMs: 500 });
      expect(uri).toMatch(new RegExp(`^mqtt://[0-9.]+:${port}$`));
    } finally {
      await new Promise<void>((resolve) => publisher.unpublishAll(() => resolve()));
      publisher.destroy();
    }
  });

  it("gives up when the signal aborts", async () => {
    const controller = new AbortController();
    const found = findBrokerOverMdns({ interface: "127.0.0.1", signal: controller.signal, queryIntervalMs: 100 });
    setTimeout(() => controller.abort(), 200);
    // Another test's broker may answer first; either way the call returns.
    expect([undefined, expect.any(String)]).toContainEqual(await found);
  });
});
