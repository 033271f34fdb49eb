/**
 * Test handlers that speak Akri's v0 protocol from discovery.proto directly with grpc-js (not
 * the SDK), so that they can misbehave: send any bytes as a DiscoverResponse, never answer,
 * stall in the middle of a message. Tests and benches only; production code never imports this.
 */
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { unlink } from "node:fs/promises";
import http2 from "node:http2";
import net from "node:net";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const PROTO_PATH = join(import.meta.dirname, "..", "discovery.proto");
const root = protobuf.parse(readFileSync(PROTO_PATH, "utf8"), { keepCase: true }).root;
const DiscoverResponseType = root.lookupType("v0.DiscoverResponse");
const DiscoverRequestType = root.lookupType("v0.DiscoverRequest");

export interface RawDevice {
  id: string;
  properties?: Record<string, string>;
}

/** A DiscoverResponse as bytes, encoded from discovery.proto. */
export function encodeResponse(devices: readonly RawDevice[]): Buffer {
  return Buffer.from(DiscoverResponseType.encode(DiscoverResponseType.fromObject({ devices })).finish());
}

/** `count` empty devices (two bytes each) as one DiscoverResponse. */
export function emptyDevices(count: number): Buffer {
  const b = Buffer.alloc(count * 2);
  for (let i = 0; i < b.length; i += 2) b[i] = 0x0a;
  return b;
}

/** Registers with an agent's v0.Registration socket, as any Akri handler does. */
export async function registerWith(
  registrationSocket: string,
  request: { name: string; endpoint: string; endpoint_type?: "UDS" | "NETWORK"; shared?: boolean },
): Promise<void> {
  const definition = protoLoader.loadSync(PROTO_PATH, { keepCase: true, enums: String, defaults: true });
  const v0 = grpc.loadPackageDefinition(definition).v0 as unknown as { Registration: grpc.ServiceClientConstructor };
  const client = new v0.Registration(
    `unix:${registrationSocket}`,
    grpc.credentials.createInsecure(),
  ) as unknown as grpc.Client & {
    RegisterDiscoveryHandler(r: object, cb: (err: grpc.ServiceError | null) => void): void;
  };
  try {
    await new Promise<void>((resolve, reject) =>
      client.RegisterDiscoveryHandler({ endpoint_type: "UDS", shared: true, ...request }, (err) =>
        err ? reject(err) : resolve(),
      ),
    );
  } finally {
    client.close();
  }
}

/**
 * A DiscoveryHandler served with grpc-js whose responses are raw bytes: `list` sets the current
 * response and writes it to every open Discover stream; each new Discover call gets the current
 * one at once (Akri's handlers send their list when called), unless `silent`.
 */
export class RawHandler {
  private server = new grpc.Server({ "grpc.max_send_message_length": -1 });
  private calls = new Set<grpc.ServerWritableStream<unknown, Buffer>>();
  private current: Buffer | undefined;
  /** Discover requests as received (discovery_details, discovery_properties). */
  readonly requests: Record<string, unknown>[] = [];
  /** When set, Discover calls are answered with headers but never a message. */
  silent = false;

  private constructor(readonly socket: string) {
    this.server.addService(
      {
        Discover: {
          path: "/v0.DiscoveryHandler/Discover",
          requestStream: false,
          responseStream: true,
          requestSerialize: (r: Buffer) => r,
          requestDeserialize: (b: Buffer) => DiscoverRequestType.toObject(DiscoverRequestType.decode(b)),
          responseSerialize: (b: Buffer) => b,
          responseDeserialize: (b: Buffer) => b,
        },
      },
      {
        Discover: (call: grpc.ServerWritableStream<Record<string, unknown>, Buffer>) => {
          this.requests.push(call.request);
          this.calls.add(call as grpc.ServerWritableStream<unknown, Buffer>);
          const forget = () => this.calls.delete(call as grpc.ServerWritableStream<unknown, Buffer>);
          call.on("cancelled", forget);
          call.on("close", forget);
          call.on("error", forget);
          if (this.silent) call.sendMetadata(new grpc.Metadata());
          else if (this.current) call.write(this.current);
        },
      },
    );
  }

  static async start(socket: string): Promise<RawHandler> {
    await unlink(socket).catch(() => {});
    const h = new RawHandler(socket);
    await new Promise<void>((resolve, reject) =>
      h.server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (err) =>
        err ? reject(err) : resolve(),
      ),
    );
    return h;
  }

  /** Open Discover streams. */
  get streams(): number {
    return this.calls.size;
  }

  /** Sets the current list (devices, or raw bytes) and sends it on every open stream. */
  list(devices: readonly RawDevice[] | Buffer): void {
    this.current = Buffer.isBuffer(devices) ? devices : encodeResponse(devices);
    for (const c of this.calls) c.write(this.current);
  }

  async close(): Promise<void> {
    for (const c of this.calls) c.end();
    this.calls.clear();
    this.server.forceShutdown();
    await unlink(this.socket).catch(() => {});
  }
}

/**
 * An HTTP/2 server that answers Discover like a gRPC handler, sends `first` (one whole
 * DiscoverResponse) and then the start of a second message that never completes: a handler
 * hung in the middle of a message. Its HTTP/2 layer stays alive (it answers pings).
 */
export class StallingHandler {
  private sessions = new Set<http2.ServerHttp2Session>();
  calls = 0;

  private constructor(
    readonly socket: string,
    private server: http2.Http2Server,
  ) {}

  static async start(socket: string, first: Buffer, announcedBytes = 1000): Promise<StallingHandler> {
    await unlink(socket).catch(() => {});
    const server = http2.createServer();
    const h = new StallingHandler(socket, server);
    server.on("session", (s) => {
      h.sessions.add(s);
      s.on("close", () => h.sessions.delete(s));
      s.on("error", () => {});
    });
    server.on("stream", (stream) => {
      h.calls++;
      stream.on("error", () => {});
      stream.respond({ ":status": 200, "content-type": "application/grpc" });
      stream.write(frame(first));
      // A length prefix announcing `announcedBytes`, then only ten of them.
      const prefix = Buffer.alloc(5);
      prefix.writeUInt32BE(announcedBytes, 1);
      stream.write(Buffer.concat([prefix, Buffer.alloc(10, 0x0a)]));
    });
    server.listen(socket);
    await once(server, "listening");
    return h;
  }

  async close(): Promise<void> {
    for (const s of this.sessions) s.destroy();
    await new Promise((r) => this.server.close(r));
    await unlink(this.socket).catch(() => {});
  }
}

function frame(message: Buffer): Buffer {
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(message.length, 1);
  return Buffer.concat([prefix, message]);
}

/** Unix-socket servers that are not gRPC at all. */
export type NotGrpcKind = "http1" | "garbage" | "silent" | "close";

export class NotGrpcServer {
  private sockets = new Set<net.Socket>();

  private constructor(
    readonly socket: string,
    private server: net.Server,
  ) {}

  static async start(socket: string, kind: NotGrpcKind): Promise<NotGrpcServer> {
    await unlink(socket).catch(() => {});
    const server = net.createServer();
    const h = new NotGrpcServer(socket, server);
    server.on("connection", (s) => {
      h.sockets.add(s);
      s.on("close", () => h.sockets.delete(s));
      s.on("error", () => {});
      s.on("data", () => {}); // read and ignore whatever the client says
      if (kind === "http1") s.end("HTTP/1.1 400 Bad Request\r\ncontent-length: 9\r\n\r\nnot grpc\n");
      else if (kind === "garbage") s.write(Buffer.from("\u0000\u0007garbage\u00ff\u00fe".repeat(64), "latin1"));
      else if (kind === "close") s.destroy();
      // silent: accept and never answer
    });
    server.listen(socket);
    await once(server, "listening");
    return h;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((r) => this.server.close(r));
    await unlink(this.socket).catch(() => {});
  }
}
