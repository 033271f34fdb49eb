import { createServer, type Server, type Socket } from "node:net";
import type { Aedes } from "aedes";

/**
 * An in-process MQTT broker (aedes) on one address and port, for simulations and tests, with an
 * outage on demand: `down()` stops listening and drops every connection, `up()` listens again on
 * the same port. Retained messages survive an outage, as with a broker that keeps its store.
 *
 * aedes is a development dependency (the production image has none of this): it is imported
 * only when an embedded broker starts.
 */
export class EmbeddedBroker {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly broker: Aedes,
    readonly host: string,
    private boundPort: number,
  ) {}

  /** Starts listening on `host:port` (port 0: any free port). */
  static async start(options: { host?: string; port?: number } = {}): Promise<EmbeddedBroker> {
    let aedes: typeof import("aedes");
    try {
      aedes = await import("aedes");
    } catch {
      throw new Error("the embedded MQTT broker needs the aedes package (npm install --save-dev aedes)");
    }
    const broker = await aedes.Aedes.createBroker();
    const embedded = new EmbeddedBroker(broker, options.host ?? "127.0.0.1", options.port ?? 0);
    try {
      await embedded.up();
    } catch (err) {
      await new Promise<void>((r) => broker.close(() => r()));
      throw err;
    }
    return embedded;
  }

  get port(): number {
    return this.boundPort;
  }

  get uri(): string {
    return `mqtt://${this.host}:${this.boundPort}`;
  }

  get listening(): boolean {
    return this.server !== undefined;
  }

  /** Listens again (on the same port once it has one). */
  async up(): Promise<void> {
    if (this.server) return;
    const server = createServer((socket) => {
      this.sockets.add(socket);
      socket.once("close", () => this.sockets.delete(socket));
      socket.on("error", () => undefined);
      this.broker.handle(socket);
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.boundPort, this.host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    const address = server.address();
    if (address && typeof address === "object") this.boundPort = address.port;
    this.server = server;
  }

  /** The outage: no new connections, and every open one is dropped (clients see the broker vanish). */
  async down(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    const closed = new Promise<void>((r) => server.close(() => r()));
    for (const socket of this.sockets) socket.destroy();
    await closed;
  }

  async close(): Promise<void> {
    await this.down();
    await new Promise<void>((r) => this.broker.close(() => r()));
  }
}
