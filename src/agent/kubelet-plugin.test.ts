import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../log/logger.js";
import { type ClaimAllocation, KubeletPlugin, kubeletPluginProtocol, type WireClaim } from "./kubelet-plugin.js";

type Unary = (req: unknown, cb: (err: grpc.ServiceError | null, res: never) => void) => void;

/** Calls a unary method as the kubelet does. */
function call<T>(client: grpc.Client, method: string, req: unknown): Promise<T> {
  return new Promise((resolve, reject) =>
    (client as unknown as Record<string, Unary>)[method]!.call(client, req, (err, res) =>
      err ? reject(err) : resolve(res as T),
    ),
  );
}

describe("DRA kubelet plugin: the kubelet's side of plugin registration v1, DRA v1 and health", () => {
  let dir: string;
  let plugin: KubeletPlugin;
  const reads: string[] = [];
  const claim: WireClaim = { namespace: "apps", uid: "0b3c-claim", name: "reader-extended-resources-x" };
  const allocation: ClaimAllocation = [
    { request: "container-0-request-0", driver: "spindle.dev", pool: "nodes/edge-1/cams", device: "cams-abc-0" },
    { request: "other", driver: "gpu.example.com", pool: "p", device: "gpu0" },
  ];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "spindle-kubelet-"));
    plugin = new KubeletPlugin({
      registryDir: join(dir, "plugins_registry"),
      pluginDir: join(dir, "plugins", "spindle.dev"),
      allocationOf: async (c) => {
        reads.push(c.uid);
        return c.uid === claim.uid ? allocation : undefined;
      },
      devices: () => [{ pool: "nodes/edge-1/cams", device: "cams-abc-0" }],
      log: createLogger("test", "silent"),
    });
    await plugin.start();
  });

  afterAll(async () => {
    await plugin.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const clients = () => {
    const { Registration, DRAPlugin, DRAResourceHealth } = kubeletPluginProtocol();
    const creds = grpc.credentials.createInsecure();
    const registration = new Registration(`unix://${plugin.registrationSocket}`, creds);
    return {
      registration,
      connect: (endpoint: string) => ({
        dra: new DRAPlugin(`unix://${endpoint}`, creds),
        health: new DRAResourceHealth(`unix://${endpoint}`, creds),
      }),
    };
  };

  it("registers: GetInfo names driver, endpoint and v1.DRAPlugin; the status is taken", async () => {
    const { registration } = clients();
    const info = await call<{ type: string; name: string; endpoint: string; supported_versions: string[] }>(
      registration,
      "GetInfo",
      {},
    );
    expect(info).toEqual({
      type: "DRAPlugin",
      name: "spindle.dev",
      endpoint: plugin.draSocket,
      supported_versions: ["v1.DRAPlugin"],
    });
    await call(registration, "NotifyRegistrationStatus", { plugin_registered: true, error: "" });
    expect(plugin.registered).toBe(true);
    registration.close();
  });

  it("prepares and unprepares idempotently, answering only its own driver's devices", async () => {
    const { dra } = clients().connect(plugin.draSocket);
    const first = await call<{ claims: Record<string, { devices: unknown[]; error: string }> }>(
      dra,
      "NodePrepareResources",
      { claims: [claim] },
    );
    const again = await call<typeof first>(dra, "NodePrepareResources", { claims: [claim] });
    const expected = {
      devices: [
        {
          request_names: ["container-0-request-0"],
          pool_name: "nodes/edge-1/cams",
          device_name: "cams-abc-0",
          cdi_device_ids: [],
        },
      ],
      error: "",
    };
    expect(first.claims[claim.uid]).toEqual(expected);
    expect(again.claims[claim.uid]).toEqual(expected);
    expect(reads).toEqual([claim.uid]); // the second Prepare did not read the claim again
    const gone = await call<typeof first>(dra, "NodePrepareResources", { claims: [{ ...claim, uid: "missing" }] });
    expect(gone.claims.missing?.error).toMatch(/not found/);
    for (let i = 0; i < 2; i++) {
      const un = await call<{ claims: Record<string, { error: string }> }>(dra, "NodeUnprepareResources", {
        claims: [claim],
      });
      expect(un.claims[claim.uid]).toEqual({ error: "" });
    }
    dra.close();
  });

  it("reports health, and serves a kubelet that reconnects", async () => {
    for (let round = 0; round < 2; round++) {
      const { health, dra } = clients().connect(plugin.draSocket);
      const stream = (
        health as unknown as { NodeWatchResources: (req: unknown) => grpc.ClientReadableStream<unknown> }
      ).NodeWatchResources({});
      const first = await new Promise<{
        devices: { device: { pool_name: string; device_name: string }; health: string }[];
      }>((resolve, reject) => {
        stream.once("data", resolve);
        stream.once("error", reject);
      });
      expect(first.devices).toEqual([
        expect.objectContaining({
          device: { pool_name: "nodes/edge-1/cams", device_name: "cams-abc-0" },
          health: "HEALTHY",
        }),
      ]);
      stream.cancel();
      const res = await call<{ claims: Record<string, { error: string }> }>(dra, "NodePrepareResources", {
        claims: [claim],
      });
      expect(res.claims[claim.uid]?.error).toBe("");
      health.close();
      dra.close();
    }
  });
});
