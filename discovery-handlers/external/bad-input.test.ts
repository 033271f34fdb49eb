/**
 * External handlers that misbehave, over real unix sockets and real gRPC: handlers written with
 * grpc-js straight from discovery.proto (testing/raw-handler.ts, not the SDK), registered through
 * the agent's registration server, streamed from by the agent's adapter (ExternalHandler).
 * test/e2e/external-bad-input.test.ts shows what of this reaches Devices.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { DiscoveredDevice } from "../handler.js";
import { MAX_MESSAGE_BYTES } from "./protocol.js";
import { type RegistrationServer, startRegistrationServer } from "./registration-server.js";
import {
  emptyDevices,
  encodeResponse,
  type NotGrpcKind,
  NotGrpcServer,
  type RawDevice,
  RawHandler,
  registerWith,
  StallingHandler,
} from "./testing/raw-handler.js";
import { MAX_DEVICES_PER_RESPONSE, MAX_ENTRIES_PER_RESPONSE } from "./wire.js";

/** Every log line, parsed: the assertions are about what an operator reads. */
const lines: Record<string, unknown>[] = [];
const log = pino({ level: "debug" }, { write: (l: string) => void lines.push(JSON.parse(l)) });
let dir: string;
let agent: RegistrationServer;
const cleanups: (() => void | Promise<void>)[] = [];

beforeEach(async () => {
  lines.length = 0;
  dir = await mkdtemp("/tmp/spindle-bad-");
  agent = await startRegistrationServer({
    socketPath: join(dir, "agent-registration.sock"),
    builtIn: new Set(["usb"]),
    firstListWarnMs: 300,
    log,
  });
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  await agent.close();
  await rm(dir, { recursive: true, force: true });
});

async function rawHandler(name: string): Promise<RawHandler> {
  const h = await RawHandler.start(join(dir, `${name}.sock`));
  cleanups.push(() => h.close());
  await registerWith(join(dir, "agent-registration.sock"), { name, endpoint: h.socket });
  return h;
}

/** Runs a discovery through the agent's adapter and collects what it yields. */
function discover(name: string) {
  const handler = agent.registry.get(name);
  if (!handler) throw new Error(`${name} not registered`);
  const abort = new AbortController();
  const sets: DiscoveredDevice[][] = [];
  let error: unknown;
  const done = (async () => {
    try {
      for await (const set of handler.discover({ details: {}, properties: {}, signal: abort.signal, log }))
        sets.push(set);
    } catch (err) {
      error = err;
    }
  })();
  cleanups.push(async () => {
    abort.abort();
    await done;
  });
  return { sets, error: () => error, last: () => sets[sets.length - 1], done };
}

async function until<T>(what: string, f: () => T | undefined | false, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const ids = (set: DiscoveredDevice[] | undefined) => set?.map((d) => d.id).join(",");
const logged = (msg: RegExp, level?: number) =>
  lines.filter((l) => msg.test(String(l.msg)) && (level === undefined || l.level === level));

describe("lists over the bounds", () => {
  // First in the file: the peak RSS of this worker is what the test measures.
  it("16 MiB of empty devices (8 million) is refused from its bytes, unread: memory stays bounded", async () => {
    const h = await rawHandler("flood");
    h.list([{ id: "good", properties: { A: "1" } }]);
    const run = discover("flood");
    await until("the good list", () => ids(run.last()) === "good");
    const before = process.resourceUsage().maxRSS;
    h.list(emptyDevices((MAX_MESSAGE_BYTES - 64) / 2));
    const err = await until("the refusal", () => run.error());
    // Decoding them would be 8 million objects (about 3 GB and 20 s of a blocked event loop).
    const grownMiB = (process.resourceUsage().maxRSS - before) / 1024;
    expect(grownMiB).toBeLessThan(256);
    expect(String(err)).toMatch(
      /external handler flood \(.*flood\.sock\) sent a device list Spindle refuses: 8388576 devices in one list \(at most 10000\); the last list stays published/,
    );
    expect(run.sets.map(ids)).toEqual(["good"]);
  });

  it("100,000 devices: refused with a clear error, logged; the last good list is the last yielded", async () => {
    const h = await rawHandler("many");
    const run = discover("many");
    h.list([
      { id: "a", properties: {} },
      { id: "b", properties: {} },
    ]);
    await until("a,b", () => ids(run.last()) === "a,b");
    h.list(Array.from({ length: 100_000 }, (_, i) => ({ id: `d${i}`, properties: { N: String(i) } })));
    const err = await until("the refusal", () => run.error());
    expect(String(err)).toMatch(/100000 devices in one list \(at most 10000\); the last list stays published/);
    expect(run.sets.map(ids)).toEqual(["a,b"]); // nothing partial, nothing empty
    expect(logged(/list refused; the last list stays published/, 50)).toHaveLength(1);
  });

  it("exactly the bound is accepted", async () => {
    const h = await rawHandler("edge");
    const run = discover("edge");
    h.list(Array.from({ length: MAX_DEVICES_PER_RESPONSE }, (_, i) => ({ id: `d${i}`, properties: {} })));
    await until("all of them", () => run.last()?.length === MAX_DEVICES_PER_RESPONSE);
    expect(run.error()).toBeUndefined();
  });

  it("more properties than the entry budget, even on one device, is refused from the bytes", async () => {
    const h = await rawHandler("wide");
    const run = discover("wide");
    h.list([{ id: "ok", properties: {} }]);
    await until("ok", () => ids(run.last()) === "ok");
    const properties = Object.fromEntries(
      Array.from({ length: MAX_ENTRIES_PER_RESPONSE + 1 }, (_, i) => [`P${i}`, ""]),
    );
    h.list([{ id: "wide", properties }]);
    const err = await until("the refusal", () => run.error());
    expect(String(err)).toMatch(/more than 200000 properties, mounts and device specs in one list, over 1 devices/);
    expect(run.sets.map(ids)).toEqual(["ok"]);
  });

  it("bytes that are not a DiscoverResponse are refused, never partly used", async () => {
    const h = await rawHandler("garbled");
    const run = discover("garbled");
    h.list([{ id: "ok", properties: {} }]);
    await until("ok", () => ids(run.last()) === "ok");
    // A valid device, then one whose length runs past the end of the message.
    h.list(Buffer.concat([encodeResponse([{ id: "half", properties: {} }]), Buffer.from([0x0a, 0x7f, 0x0a])]));
    const err = await until("the refusal", () => run.error());
    expect(String(err)).toMatch(/not a valid DiscoverResponse \(a device runs past the end of the message\)/);
    expect(run.sets.map(ids)).toEqual(["ok"]);
  });

  it("a message announced over the size bound is refused from its length prefix, before it arrives", async () => {
    const stall = await StallingHandler.start(
      join(dir, "big.sock"),
      encodeResponse([{ id: "ok", properties: {} }]),
      MAX_MESSAGE_BYTES + 1,
    );
    cleanups.push(() => stall.close());
    await registerWith(join(dir, "agent-registration.sock"), { name: "big", endpoint: stall.socket });
    const run = discover("big");
    const err = await until("the refusal", () => run.error());
    expect(String(err)).toMatch(/a list over the 16777216-byte message bound \(.*larger than max/);
    expect(run.sets.map(ids)).toEqual(["ok"]);
  });
});

describe("untrusted contents", () => {
  it("invalid ids, invalid names, huge or control-character values, duplicates: dropped with one warning", async () => {
    const h = await rawHandler("messy");
    const run = discover("messy");
    const list: RawDevice[] = [
      {
        id: "ok-1",
        properties: {
          GOOD: "1",
          "bad name": "x",
          lower: "x",
          HUGE: "x".repeat(1_000_000),
          BIDI: "a\u202eb",
          NUL: "a\u0000b",
        },
      },
      { id: "ok-1", properties: { GOOD: "second" } },
      { id: "", properties: {} },
      { id: "x".repeat(2000), properties: {} },
      { id: "bad\nid", properties: {} },
      { id: "ok-2", properties: {} },
    ];
    h.list(list);
    await until("the list", () => run.last());
    expect(run.last()).toEqual([
      { id: "ok-1", properties: { GOOD: "1" } },
      { id: "ok-2", properties: {} },
    ]);
    const warnings = logged(/cannot be published as sent/, 40);
    expect(warnings).toHaveLength(1);
    expect((warnings[0]!.problems as string[]).sort()).toEqual([
      "1 × duplicate device id: the first one kept",
      "2 × property name not [A-Z][A-Z0-9_]*: property dropped",
      "3 × device id empty, longer than 1024 or with control characters: device dropped",
      "3 × property value longer than 4096 characters or with control characters: property dropped",
    ]);
    // The same problems again are not logged again; new ones are.
    h.list([...list, { id: "ok-3", properties: {} }]);
    await until("ok-3", () => run.last()?.length === 3);
    expect(logged(/cannot be published as sent/, 40)).toHaveLength(1);
    expect(run.error()).toBeUndefined();
  });
});

describe("slow and hung streams", () => {
  it("a handler that never sends its first list is logged as quiet, not cut, and blocks nobody", async () => {
    const quiet = await rawHandler("quiet");
    quiet.silent = true;
    const other = await rawHandler("other");
    const q = discover("quiet");
    const o = discover("other");
    await until("the quiet warning", () => logged(/has sent no device list since Discover was called/, 40).length > 0);
    for (let i = 1; i <= 3; i++) {
      other.list(Array.from({ length: i }, (_, j) => ({ id: `o${j}`, properties: {} })));
      await until(`other's list ${i}`, () => o.last()?.length === i);
    }
    expect(q.sets).toEqual([]);
    expect(q.error()).toBeUndefined();
    expect(agent.registry.names()).toEqual(["other", "quiet"]);
    // A late first list is taken as any other.
    quiet.list([{ id: "late", properties: {} }]);
    await until("the late list", () => ids(q.last()) === "late");
  });

  it("a handler hung in the middle of a message: its last list stays, others flow, it goes when it dies", async () => {
    const stall = await StallingHandler.start(join(dir, "stall.sock"), encodeResponse([{ id: "s1", properties: {} }]));
    await registerWith(join(dir, "agent-registration.sock"), { name: "stall", endpoint: stall.socket });
    const other = await rawHandler("other");
    const s = discover("stall");
    const o = discover("other");
    await until("the stalled handler's whole first list", () => ids(s.last()) === "s1");
    await until("the second message begun", () => stall.calls === 1);
    for (let i = 1; i <= 3; i++) {
      other.list(Array.from({ length: i }, (_, j) => ({ id: `o${j}`, properties: {} })));
      await until(`other's list ${i}`, () => o.last()?.length === i);
    }
    await new Promise((r) => setTimeout(r, 500));
    expect(s.sets.map(ids)).toEqual(["s1"]);
    expect(s.error()).toBeUndefined();
    await stall.close();
    await until("its devices gone with it", () => s.last()?.length === 0);
    expect(s.error()).toBeUndefined();
  });
});

describe("endpoints that are not gRPC", () => {
  const kinds: (NotGrpcKind | "file" | "missing")[] = ["http1", "garbage", "close", "silent", "file", "missing"];
  it.each(kinds)(
    "%s: the endpoint is removed with the reason logged, nothing yielded, the agent keeps serving",
    async (kind) => {
      const path = join(dir, `${kind}.sock`);
      if (kind === "file") await writeFile(path, "not a socket\n");
      else if (kind !== "missing") {
        const junk = await NotGrpcServer.start(path, kind);
        cleanups.push(() => junk.close());
      }
      await registerWith(join(dir, "agent-registration.sock"), { name: "junk", endpoint: path });
      const run = discover("junk");
      await until("the endpoint removed", () => agent.registry.names().length === 0, 25_000);
      const removed = logged(/external discovery handler endpoint removed/, 40);
      expect(removed).toHaveLength(1);
      expect(removed[0]).toMatchObject({ handler: "junk", endpoint: path });
      expect(String(removed[0]!.reason)).toMatch(/^cannot call Discover: ./);
      expect(run.sets).toEqual([]);
      expect(run.error()).toBeUndefined();
      // The agent is unharmed: a real handler registers and streams.
      const good = await rawHandler("good");
      good.list([{ id: "g", properties: {} }]);
      const g = discover("good");
      await until("the good handler's list", () => ids(g.last()) === "g");
    },
    40_000,
  );
});
