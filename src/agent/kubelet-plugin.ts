import { mkdir, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";
import { DRIVER } from "../k8s/dra.js";
import type { Logger } from "../log/logger.js";

/**
 * The kubelet's plugin registration (v1) and DRA (v1) gRPC protocols, and DRA resource health
 * (v1), as Spindle speaks them: written for Spindle from the kubelet's protocol (package and
 * field numbers are the wire contract of k8s.io/kubelet's pluginregistration, dra and dra-health
 * v1 APIs).
 */
export const KUBELET_PLUGIN_PROTOS: Record<string, string> = {
  registration: `syntax = "proto3";
package pluginregistration;
// Served by a plugin on a socket in the kubelet's plugins_registry directory.
service Registration {
  rpc GetInfo(InfoRequest) returns (PluginInfo) {}
  rpc NotifyRegistrationStatus(RegistrationStatus) returns (RegistrationStatusResponse) {}
}
message PluginInfo {
  string type = 1;               // "DRAPlugin"
  string name = 2;               // the driver name
  string endpoint = 3;           // the plugin's DRA socket
  repeated string supported_versions = 4; // gRPC services, e.g. "v1.DRAPlugin"
}
message RegistrationStatus {
  bool plugin_registered = 1;
  string error = 2;
}
message RegistrationStatusResponse {}
message InfoRequest {}
`,
  dra: `syntax = "proto3";
package k8s.io.kubelet.pkg.apis.dra.v1;
service DRAPlugin {
  rpc NodePrepareResources(NodePrepareResourcesRequest) returns (NodePrepareResourcesResponse) {}
  rpc NodeUnprepareResources(NodeUnprepareResourcesRequest) returns (NodeUnprepareResourcesResponse) {}
}
message Claim {
  string namespace = 1;
  string uid = 2;
  string name = 3;
}
message NodePrepareResourcesRequest { repeated Claim claims = 1; }
message NodePrepareResourcesResponse { map<string, NodePrepareResourceResponse> claims = 1; }
message NodePrepareResourceResponse {
  repeated Device devices = 1;
  string error = 2;
}
message Device {
  repeated string request_names = 1;
  string pool_name = 2;
  string device_name = 3;
  repeated string cdi_device_ids = 4;
  optional string share_id = 5;
}
message NodeUnprepareResourcesRequest { repeated Claim claims = 1; }
message NodeUnprepareResourcesResponse { map<string, NodeUnprepareResourceResponse> claims = 1; }
message NodeUnprepareResourceResponse { string error = 1; }
`,
  health: `syntax = "proto3";
package v1;
service DRAResourceHealth {
  rpc NodeWatchResources(NodeWatchResourcesRequest) returns (stream NodeWatchResourcesResponse) {}
}
message NodeWatchResourcesRequest {}
enum HealthStatus {
  UNKNOWN = 0;
  HEALTHY = 1;
  UNHEALTHY = 2;
}
message DeviceIdentifier {
  string pool_name = 1;
  string device_name = 2;
}
message DeviceHealth {
  DeviceIdentifier device = 1;
  HealthStatus health = 2;
  int64 last_updated_time = 3;
  int64 health_check_timeout_seconds = 4;
  string message = 5;
}
message NodeWatchResourcesResponse { repeated DeviceHealth devices = 1; }
`,
};

export const DRA_PLUGIN_SERVICE = "v1.DRAPlugin";

export interface WireClaim {
  namespace: string;
  uid: string;
  name: string;
}
export interface WireDevice {
  request_names: string[];
  pool_name: string;
  device_name: string;
  cdi_device_ids: string[];
}

type Services = {
  Registration: grpc.ServiceClientConstructor;
  DRAPlugin: grpc.ServiceClientConstructor;
  DRAResourceHealth: grpc.ServiceClientConstructor;
};
let loaded: Services | undefined;

/** The three services, parsed once (for the plugin and for tests speaking the kubelet's side). */
export function kubeletPluginProtocol(): Services {
  if (loaded) return loaded;
  const load = (text: string) => {
    const { root } = protobuf.parse(text, { keepCase: true });
    return grpc.loadPackageDefinition(
      protoLoader.fromJSON(root.toJSON(), {
        keepCase: true,
        enums: String,
        longs: String,
        defaults: true,
        arrays: true,
      }),
    ) as unknown as Record<string, unknown>;
  };
  const reg = load(KUBELET_PLUGIN_PROTOS.registration!) as {
    pluginregistration: { Registration: grpc.ServiceClientConstructor };
  };
  const dra = load(KUBELET_PLUGIN_PROTOS.dra!) as {
    k8s: { io: { kubelet: { pkg: { apis: { dra: { v1: { DRAPlugin: grpc.ServiceClientConstructor } } } } } } };
  };
  const health = load(KUBELET_PLUGIN_PROTOS.health!) as { v1: { DRAResourceHealth: grpc.ServiceClientConstructor } };
  loaded = {
    Registration: reg.pluginregistration.Registration,
    DRAPlugin: dra.k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin,
    DRAResourceHealth: health.v1.DRAResourceHealth,
  };
  return loaded;
}

/** The allocation of a claim, as the plugin reads it from the apiserver. */
export type ClaimAllocation = { request: string; driver: string; pool: string; device: string }[];

export interface KubeletPluginOptions {
  /** The kubelet's plugins_registry directory (default /var/lib/kubelet/plugins_registry). */
  registryDir: string;
  /** Where the DRA socket goes (default /var/lib/kubelet/plugins/spindle.dev). */
  pluginDir: string;
  /** The claim's allocation results, read from the apiserver (undefined: the claim is gone). */
  allocationOf: (claim: WireClaim) => Promise<ClaimAllocation | undefined>;
  /** Pool/device names of this node's published DRA devices, for health. */
  devices: () => { pool: string; device: string }[];
  log: Logger;
}

/**
 * The agent's DRA kubelet plugin for driver spindle.dev. A Spin app gets its device's connection
 * details as Spin variables, so preparing needs no CDI device: Prepare answers the allocated
 * devices of the claim (read from its allocation), Unprepare forgets the claim; both are
 * idempotent (the kubelet retries, and calls again after its restart). Health reports every
 * published device HEALTHY: a device that goes away leaves its slice instead.
 */
export class KubeletPlugin {
  private registration = new grpc.Server();
  private dra = new grpc.Server();
  private prepared = new Map<string, WireDevice[]>();
  private watchers = new Set<grpc.ServerWritableStream<unknown, unknown>>();
  registered: boolean | undefined;
  readonly registrationSocket: string;
  readonly draSocket: string;

  constructor(private options: KubeletPluginOptions) {
    this.registrationSocket = join(options.registryDir, `${DRIVER}-reg.sock`);
    this.draSocket = join(options.pluginDir, "dra.sock");
  }

  async start(): Promise<void> {
    const { Registration, DRAPlugin, DRAResourceHealth } = kubeletPluginProtocol();
    this.dra.addService(DRAPlugin.service, {
      NodePrepareResources: (
        call: grpc.ServerUnaryCall<{ claims: WireClaim[] }, unknown>,
        cb: grpc.sendUnaryData<unknown>,
      ) =>
        void this.prepare(call.request.claims).then(
          (claims) => cb(null, { claims }),
          (err) => cb(err as Error),
        ),
      NodeUnprepareResources: (
        call: grpc.ServerUnaryCall<{ claims: WireClaim[] }, unknown>,
        cb: grpc.sendUnaryData<unknown>,
      ) => {
        const claims: Record<string, { error: string }> = {};
        for (const c of call.request.claims) {
          this.prepared.delete(c.uid);
          claims[c.uid] = { error: "" };
        }
        cb(null, { claims });
      },
    });
    this.dra.addService(DRAResourceHealth.service, {
      NodeWatchResources: (call: grpc.ServerWritableStream<unknown, unknown>) => {
        this.watchers.add(call);
        call.on("cancelled", () => this.watchers.delete(call));
        call.on("close", () => this.watchers.delete(call));
        call.write(this.health());
      },
    });
    this.registration.addService(Registration.service, {
      GetInfo: (_call: unknown, cb: grpc.sendUnaryData<unknown>) =>
        cb(null, {
          type: "DRAPlugin",
          name: DRIVER,
          endpoint: this.draSocket,
          supported_versions: [DRA_PLUGIN_SERVICE],
        }),
      NotifyRegistrationStatus: (
        call: grpc.ServerUnaryCall<{ plugin_registered: boolean; error: string }, unknown>,
        cb: grpc.sendUnaryData<unknown>,
      ) => {
        this.registered = call.request.plugin_registered;
        if (this.registered) this.options.log.info({ driver: DRIVER }, "registered with the kubelet");
        else this.options.log.warn({ error: call.request.error }, "the kubelet refused the DRA plugin");
        cb(null, {});
      },
    });
    // The DRA socket first: the kubelet connects to it as soon as it sees the registration socket.
    await bind(this.dra, this.draSocket);
    await bind(this.registration, this.registrationSocket);
  }

  /** Tells health watchers (the kubelet) the current device list again. */
  devicesChanged(): void {
    const message = this.health();
    for (const w of this.watchers) w.write(message);
  }

  private health(): unknown {
    const now = String(Math.floor(Date.now() / 1000));
    return {
      devices: this.options.devices().map((d) => ({
        device: { pool_name: d.pool, device_name: d.device },
        health: "HEALTHY",
        last_updated_time: now,
        health_check_timeout_seconds: "0",
        message: "",
      })),
    };
  }

  private async prepare(claims: WireClaim[]): Promise<Record<string, { devices: WireDevice[]; error: string }>> {
    const out: Record<string, { devices: WireDevice[]; error: string }> = {};
    for (const claim of claims) {
      const known = this.prepared.get(claim.uid);
      if (known) {
        out[claim.uid] = { devices: known, error: "" };
        continue;
      }
      try {
        const allocation = await this.options.allocationOf(claim);
        if (!allocation) {
          out[claim.uid] = { devices: [], error: `claim ${claim.namespace}/${claim.name} (${claim.uid}) not found` };
          continue;
        }
        const devices = allocation
          .filter((r) => r.driver === DRIVER)
          .map((r) => ({ request_names: [r.request], pool_name: r.pool, device_name: r.device, cdi_device_ids: [] }));
        this.prepared.set(claim.uid, devices);
        out[claim.uid] = { devices, error: "" };
      } catch (err) {
        out[claim.uid] = { devices: [], error: `reading claim ${claim.namespace}/${claim.name}: ${String(err)}` };
      }
    }
    return out;
  }

  async stop(): Promise<void> {
    for (const w of this.watchers) w.end();
    this.watchers.clear();
    await Promise.all([shutdown(this.registration), shutdown(this.dra)]);
    await Promise.all([rm(this.registrationSocket, { force: true }), rm(this.draSocket, { force: true })]);
  }
}

async function bind(server: grpc.Server, socket: string): Promise<void> {
  await mkdir(dirname(socket), { recursive: true });
  await rm(socket, { force: true }); // a stale socket of an earlier run
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix://${socket}`, grpc.ServerCredentials.createInsecure(), (err) =>
      err ? reject(err) : resolve(),
    ),
  );
}

function shutdown(server: grpc.Server): Promise<void> {
  return new Promise((resolve) => server.tryShutdown(() => resolve()));
}
