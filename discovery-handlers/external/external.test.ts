/**
 * Akri's v0 protocol end to end in one process, over real unix sockets and real gRPC: the SDK
 * serves handlers, the registration server takes their registrations, and the agent-side
 * ExternalHandler streams from them. No Kubernetes here (test/e2e/external-handlers.test.ts has it).
 */
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
// Through the package export, as a handler outside this repository imports it.
import { type ServedHandler, serveDiscoveryHandler } from "spindle/handler-sdk";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { z } from "zod";
import { createLogger } from "../../src/log/logger.js";
import type { DiscoveredDevice, DiscoveryHandler } from "../handler.js";
import { CHANNEL_OPTIONS, DISCOVERY_PROTO, protocol } from "./protocol.js";
import { type RegistrationServer, STATE_FILE, startRegistrationServer } from "./registration-server.js";
import { HandlerRegistry } from "./registry.js";

const log = createLogger("test", "silent");
let dir: string;
let agent: RegistrationServer;
const served: ServedHandler[] = [];
const cleanups: (() => void | Promise<void>)[] = [];

beforeEach(async () => {
  dir = await mkdtemp("/tmp/spindle-dh-");
  agent = await startRegistrationServer({
    socketPath: join(dir, "agent-registration.sock"),
    builtIn: new Set(["usb"]),
    log,
  });
});

afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
  for (const s of served.splice(0)) await s.close();
  await agent.close();
  await rm(dir, { recursive: true, force: true });
});

/** A handler whose device sets the test pushes. */
function scriptedHandler(name: string, shared = true) {
  let push: (set: DiscoveredDevice[]) => void = () => {};
  let seen: { details: unknown; properties: Record<string, string> } | undefined;
  const handler: DiscoveryHandler<{ prefix: string }> = {
    name,
    shared,
    detailsSchema: z.strictObject({ prefix: z.string() }),
    async *discover({ details, properties, signal }) {
      seen = { details, properties };
      const queue: DiscoveredDevice[][] = [];
      let wake: (() => void) | undefined;
      push = (set) => {
        queue.push(set);
        wake?.();
      };
      signal.addEventListener("abort", () => wake?.());
      while (!signal.aborted) {
        if (queue.length === 0) await new Promise<void>((r) => (wake = r));
        while (queue.length > 0) yield queue.shift()!;
      }
    },
  };
  return { handler: handler as DiscoveryHandler<unknown>, push: (s: DiscoveredDevice[]) => push(s), seen: () => seen };
}

async function serve(handler: DiscoveryHandler<unknown>, socket?: string) {
  const s = await serveDiscoveryHandler(handler, {
    registrationSocket: join(dir, "agent-registration.sock"),
    socket,
    log,
  });
  served.push(s);
  await s.registered;
  return s;
}

/** Runs a discovery through the agent side and collects what it yields. */
function discover(name: string, details: Record<string, unknown>, properties: Record<string, string> = {}) {
  const handler = agent.registry.get(name);
  if (!handler) throw new Error(`${name} not registered`);
  const abort = new AbortController();
  const sets: DiscoveredDevice[][] = [];
  let error: unknown;
  const done = (async () => {
    try {
      for await (const set of handler.discover({ details, properties, signal: abort.signal, log })) sets.push(set);
    } catch (err) {
      error = err;
    }
  })();
  cleanups.push(async () => {
    abort.abort();
    await done;
  });
  return { sets, error: () => error, last: () => sets[sets.length - 1] };
}

async function until<T>(what: string, f: () => T | undefined | false, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const ids = (set: DiscoveredDevice[] | undefined) => set?.map((d) => d.id).sort();

describe("discovery.proto", () => {
  it("is the text the code loads", () => {
    expect(DISCOVERY_PROTO).toBe(readFileSync(join(import.meta.dirname, "discovery.proto"), "utf8"));
  });

  it("has Akri's v0 services and method paths", () => {
    const { Registration, DiscoveryHandler } = protocol();
    expect(Registration.service.RegisterDiscoveryHandler!.path).toBe("/v0.Registration/RegisterDiscoveryHandler");
    expect(DiscoveryHandler.service.Discover!.path).toBe("/v0.DiscoveryHandler/Discover");
    expect(DiscoveryHandler.service.Discover!.responseStream).toBe(true);
  });
});

describe("registration and discovery over the v0 protocol", () => {
  it("streams full lists that replace each other, with details as YAML and properties as bytes", async () => {
    const h = scriptedHandler("thermo");
    await serve(h.handler);
    expect(agent.registry.names()).toEqual(["thermo"]);
    expect(agent.registry.get("thermo")!.shared).toBe(true);
    const run = discover("thermo", { prefix: "t" }, { TOKEN: "s3cret" });
    await until("the handler's discover", () => h.seen());
    expect(h.seen()).toEqual({ details: { prefix: "t" }, properties: { TOKEN: "s3cret" } });
    h.push([
      { id: "a", properties: { T_URL: "http://a" } },
      { id: "b", properties: {} },
    ]);
    await until("two devices", () => run.last()?.length === 2);
    h.push([{ id: "b", properties: { T_URL: "http://b" } }]);
    await until("the second list", () => ids(run.last())?.join() === "b");
    expect(run.last()).toEqual([{ id: "b", properties: { T_URL: "http://b" } }]);
    h.push([]);
    await until("an empty list", () => run.last()?.length === 0);
  });

  it("keeps mounts and device specs", async () => {
    const h = scriptedHandler("serial");
    await serve(h.handler);
    const run = discover("serial", { prefix: "s" });
    await until("discover", () => h.seen());
    const device: DiscoveredDevice = {
      id: "ttyUSB0",
      properties: { SERIAL_PATH: "/dev/ttyUSB0" },
      mounts: [{ containerPath: "/data", hostPath: "/var/data", readOnly: true }],
      deviceSpecs: [{ containerPath: "/dev/ttyUSB0", hostPath: "/dev/ttyUSB0", permissions: "rw" }],
    };
    h.push([device]);
    await until("the device", () => run.last()?.length === 1);
    expect(run.last()).toEqual([device]);
  });

  it("merges several endpoints of one name; a dead one loses only its devices and is removed", async () => {
    const one = scriptedHandler("cam");
    const two = scriptedHandler("cam");
    await serve(one.handler, join(dir, "cam-1.sock"));
    const second = await serve(two.handler, join(dir, "cam-2.sock"));
    expect(agent.registry.endpoints("cam")).toHaveLength(2);
    const run = discover("cam", { prefix: "c" });
    await until("both discovering", () => one.seen() && two.seen());
    one.push([
      { id: "x", properties: {} },
      { id: "shared", properties: { FROM: "one" } },
    ]);
    two.push([
      { id: "y", properties: {} },
      { id: "shared", properties: { FROM: "two" } },
    ]);
    await until("the union", () => run.last()?.length === 3);
    expect(run.last()!.find((d) => d.id === "shared")!.properties.FROM).toBe("one");
    await second.close();
    served.splice(served.indexOf(second), 1);
    await until("two's devices gone", () => ids(run.last())?.join() === "shared,x");
    await until("two's endpoint removed", () => agent.registry.endpoints("cam").length === 1);
  });

  it("a handler that restarts and registers again is streamed from again", async () => {
    const first = scriptedHandler("plc");
    const s = await serve(first.handler);
    const run = discover("plc", { prefix: "p" });
    await until("discover", () => first.seen());
    first.push([{ id: "m1", properties: {} }]);
    await until("m1", () => run.last()?.length === 1);
    await s.close();
    served.splice(served.indexOf(s), 1);
    await until("m1 gone with its handler", () => run.last()?.length === 0);
    await until("endpoint removed", () => agent.registry.names().length === 0);
    const second = scriptedHandler("plc");
    await serve(second.handler);
    await until("the running discovery reaches the new process", () => second.seen());
    second.push([
      { id: "m1", properties: {} },
      { id: "m2", properties: {} },
    ]);
    await until("both", () => run.last()?.length === 2);
  });

  it("refuses built-in names, bad names and bad endpoints", async () => {
    const client = new (protocol().Registration)(
      `unix:${join(dir, "agent-registration.sock")}`,
      grpc.credentials.createInsecure(),
      CHANNEL_OPTIONS,
    ) as unknown as {
      RegisterDiscoveryHandler(r: object, cb: (err: grpc.ServiceError | null) => void): void;
      close(): void;
    };
    cleanups.push(() => client.close());
    const register = (r: object) =>
      new Promise<grpc.ServiceError | null>((resolve) => client.RegisterDiscoveryHandler(r, resolve));
    const usb = await register({ name: "usb", endpoint: "/tmp/x.sock", endpoint_type: "UDS", shared: false });
    expect(usb?.code).toBe(grpc.status.ALREADY_EXISTS);
    expect(usb?.details).toMatch(/built-in.*--allow-external-override usb/);
    expect((await register({ name: "no spaces", endpoint: "/tmp/x.sock" }))?.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect((await register({ name: "rel", endpoint: "x.sock" }))?.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect((await register({ name: "net", endpoint: "ftp://h:1", endpoint_type: "NETWORK" }))?.code).toBe(
      grpc.status.INVALID_ARGUMENT,
    );
    expect(agent.registry.names()).toEqual([]);
  });

  it("a handler refusing the details fails the discovery with its message", async () => {
    const h = scriptedHandler("strict");
    await serve(h.handler);
    const run = discover("strict", { prefix: 42 });
    const err = await until("the error", () => run.error());
    expect(String(err)).toMatch(/external handler strict refused the discovery details: .*prefix/);
  });

  it("an endpoint that is not gRPC is dropped, nothing is yielded, the agent stays up", async () => {
    const path = join(dir, "junk.sock");
    const sockets = new Set<net.Socket>();
    const junk = net.createServer((s) => {
      sockets.add(s);
      s.on("error", () => {});
      s.end("HTTP/1.1 400 Bad Request\r\n\r\nnot grpc\n");
    });
    await new Promise<void>((r) => junk.listen(path, r));
    cleanups.push(() => {
      for (const s of sockets) s.destroy();
      junk.close();
    });
    agent.registry.register({ name: "junk", endpoint: path, endpoint_type: "UDS", shared: false });
    const run = discover("junk", {});
    await until("junk removed", () => agent.registry.names().length === 0);
    expect(run.sets).toEqual([]);
    expect(run.error()).toBeUndefined();
  });

  it("a response over the size bound is refused unread: the discovery fails, the last list is never replaced", async () => {
    const h = scriptedHandler("huge");
    await serve(h.handler);
    const run = discover("huge", { prefix: "h" });
    await until("discover", () => h.seen());
    h.push([{ id: "ok", properties: {} }]);
    await until("ok", () => run.last()?.length === 1);
    // 17 MiB of property values: over MAX_MESSAGE_BYTES (the SDK's grpc-js refuses to send it).
    h.push(Array.from({ length: 17 }, (_, i) => ({ id: `d${i}`, properties: { BIG: "x".repeat(1024 * 1024) } })));
    const err = await until("the refusal", () => run.error());
    expect(String(err)).toMatch(/sent a device list Spindle refuses: a list over the 16777216-byte message bound/);
    expect(run.sets.map((s) => ids(s)?.join())).toEqual(["ok"]);
  });
});

describe("HandlerRegistry", () => {
  it("remembers registrations across a restart of the agent (Akri forgets them: issue #558)", async () => {
    const statePath = join(dir, STATE_FILE);
    const first = new HandlerRegistry({ builtIn: new Set(), statePath, log });
    first.register({ name: "debugEcho", endpoint: "/tmp/a.sock", endpoint_type: "UDS", shared: true });
    first.register({ name: "debugEcho", endpoint: "http://10.0.0.1:10000", endpoint_type: "NETWORK", shared: true });
    await first.flush();
    const second = new HandlerRegistry({ builtIn: new Set(), statePath, log });
    expect(second.endpoints("debugEcho").map((r) => r.endpoint)).toEqual(["/tmp/a.sock", "http://10.0.0.1:10000"]);
    expect(second.get("debugEcho")!.shared).toBe(true);
  });

  it("lets an operator-listed built-in name be replaced", () => {
    const r = new HandlerRegistry({ builtIn: new Set(["mqtt"]), allowOverride: new Set(["mqtt"]), log });
    r.register({ name: "mqtt", endpoint: "/tmp/m.sock", endpoint_type: "UDS", shared: true });
    expect(r.names()).toEqual(["mqtt"]);
  });
});
