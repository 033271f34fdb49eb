import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

/**
 * Akri's discovery-handler protocol (package v0) for grpc-js. The text is discovery.proto's,
 * kept here so the production bundle needs no file beside it; protocol.test.ts checks that the
 * two are the same.
 */
export const DISCOVERY_PROTO = `// Akri's discovery-handler protocol, version v0, as Spindle speaks it. Written for Spindle from
// the protocol's description; wire-compatible with Akri's agent and handlers.
//
// Flow: a handler serves DiscoveryHandler on a unix socket (or TCP) and calls
// Registration.RegisterDiscoveryHandler on the agent's socket. For each DeviceConfiguration
// naming the handler, the agent calls Discover; every DiscoverResponse on that stream is the
// handler's complete current device list and replaces the previous one.
syntax = "proto3";

package v0;

// Served by the agent on its registration socket (always a unix socket).
service Registration {
  rpc RegisterDiscoveryHandler(RegisterDiscoveryHandlerRequest) returns (Empty) {}
}

message Empty {}

message RegisterDiscoveryHandlerRequest {
  // The name DeviceConfigurations use in spec.discoveryHandler.name.
  string name = 1;
  // A unix socket path (UDS) or "http://<host>:<port>" (NETWORK).
  string endpoint = 2;
  enum EndpointType {
    UDS = 0;
    NETWORK = 1;
  }
  EndpointType endpoint_type = 3;
  // True when the devices are seen by several nodes (network devices); false for local ones.
  bool shared = 4;
}

// Served by each discovery handler.
service DiscoveryHandler {
  rpc Discover(DiscoverRequest) returns (stream DiscoverResponse);
}

message ByteData {
  optional bytes vec = 1;
}

message DiscoverRequest {
  // The configuration's discoveryDetails as YAML text.
  string discovery_details = 1;
  // discoveryProperties with Secret and ConfigMap references resolved.
  map<string, ByteData> discovery_properties = 2;
}

message DiscoverResponse {
  // The full current list, not a change.
  repeated Device devices = 1;
}

message Device {
  string id = 1;
  map<string, string> properties = 2;
  repeated Mount mounts = 3;
  repeated DeviceSpec device_specs = 4;
}

message Mount {
  string container_path = 1;
  string host_path = 2;
  bool read_only = 3;
}

message DeviceSpec {
  string container_path = 1;
  string host_path = 2;
  // Cgroup permissions: some of r, w, m.
  string permissions = 3;
}
`;

/** Largest message either side accepts: a bigger DiscoverResponse fails its stream, unread. */
export const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

export type EndpointType = "UDS" | "NETWORK";

export interface RegisterDiscoveryHandlerRequest {
  name: string;
  endpoint: string;
  endpoint_type: EndpointType;
  shared: boolean;
}

export interface WireMount {
  container_path: string;
  host_path: string;
  read_only: boolean;
}

export interface WireDeviceSpec {
  container_path: string;
  host_path: string;
  permissions: string;
}

export interface WireDevice {
  id: string;
  properties: Record<string, string>;
  mounts: WireMount[];
  device_specs: WireDeviceSpec[];
}

export interface DiscoverRequest {
  discovery_details: string;
  discovery_properties: Record<string, { vec?: Buffer }>;
}

export interface DiscoverResponse {
  devices: WireDevice[];
}

interface ProtocolServices {
  Registration: grpc.ServiceClientConstructor;
  DiscoveryHandler: grpc.ServiceClientConstructor;
}

let loaded: ProtocolServices | undefined;

/** The v0 services, parsed once. */
export function protocol(): ProtocolServices {
  if (loaded) return loaded;
  const { root } = protobuf.parse(DISCOVERY_PROTO, { keepCase: true });
  const definition = protoLoader.fromJSON(root.toJSON(), {
    keepCase: true,
    enums: String,
    longs: String,
    defaults: true,
    arrays: true,
    objects: true,
  });
  const v0 = (grpc.loadPackageDefinition(definition) as unknown as { v0: ProtocolServices }).v0;
  loaded = { Registration: v0.Registration, DiscoveryHandler: v0.DiscoveryHandler };
  return loaded;
}

/** grpc-js target for a registered endpoint: a unix socket path or an http://host:port URL. */
export function grpcTarget(endpoint: string, type: EndpointType): string {
  if (type === "UDS") return `unix:${endpoint}`;
  const url = new URL(endpoint);
  return url.host;
}

export const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
  "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
  // A dead handler is noticed within seconds, not after TCP's own timeouts.
  "grpc.keepalive_time_ms": 10_000,
  "grpc.keepalive_timeout_ms": 5_000,
  "grpc.keepalive_permit_without_calls": 1,
  "grpc.max_reconnect_backoff_ms": 5_000,
};
