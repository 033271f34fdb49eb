import { existsSync } from "node:fs";
import { connectAsync } from "mqtt";
import { describe, expect, it } from "vitest";
import { findMosquittoProgram, MosquittoNotInstalledError, startMosquitto } from "./mosquitto.js";

describe("startMosquitto", () => {
  it("runs a broker on a loopback port, keeps retained messages across a restart, and cleans up", async () => {
    const broker = await startMosquitto();
    const pid = broker.pid;
    expect(pid).toBeGreaterThan(0);
    expect(broker.url).toBe(`mqtt://127.0.0.1:${broker.port}`);
    const publisher = await connectAsync(broker.url, { protocolVersion: 4 });
    await publisher.publishAsync("keep/me", "retained", { qos: 1, retain: true });
    await publisher.endAsync();

    await broker.stopProcess({ crash: true });
    expect(broker.pid).toBeUndefined();
    await broker.startProcess();
    const subscriber = await connectAsync(broker.url, { protocolVersion: 4 });
    const received = new Promise<string>((resolve) => subscriber.on("message", (_t, p) => resolve(p.toString())));
    await subscriber.subscribeAsync("keep/me");
    expect(await received).toBe("retained");
    await subscriber.endAsync();

    await broker.stop();
    expect(() => process.kill(pid!, 0)).toThrow();
  });

  it("refuses anonymous clients when users are given", async () => {
    const broker = await startMosquitto({ users: { alice: "pw-alice" } });
    try {
      await expect(connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0 })).rejects.toThrow();
      const alice = await connectAsync(broker.url, {
        protocolVersion: 4,
        reconnectPeriod: 0,
        username: "alice",
        password: "pw-alice",
      });
      await alice.endAsync();
    } finally {
      await broker.stop();
    }
  });

  it("says how to install Mosquitto when it is missing", () => {
    expect(() => findMosquittoProgram("mosquitto-not-here")).toThrow(MosquittoNotInstalledError);
    expect(() => findMosquittoProgram("mosquitto-not-here")).toThrow(/install the Debian package mosquitto/);
    expect(existsSync(findMosquittoProgram())).toBe(true);
  });
});
