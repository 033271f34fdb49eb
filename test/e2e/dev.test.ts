import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { eventually } from "./cluster.js";

const BIN = resolve(import.meta.dirname, "../../bin/spindle.js");

describe("spindle dev", () => {
  it("shows devices of every handler and running SpinApps, then leaves nothing behind on Ctrl-C", async () => {
    // Without a terminal it prints the tables every 5 s instead of redrawing the screen.
    const dev = spawn(process.execPath, [BIN, "dev"], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, KUBECONFIG: "" },
    });
    let out = "";
    dev.stdout.on("data", (d: Buffer) => {
      out += d.toString();
    });
    dev.stderr.on("data", (d: Buffer) => {
      out += d.toString();
    });
    const exited = new Promise<number | null>((r) => dev.once("exit", (code) => r(code)));
    try {
      const sandboxDir = await eventually(
        "the sandbox to be ready",
        async () => /logs:\s+(\S+)\/logs/.exec(out)?.[1],
        300_000,
      );
      // The last table printed: every handler's devices, and SpinApps with Running pods on the right nodes.
      const table = await eventually(
        "devices and running SpinApps in the live view",
        async () => {
          const last = out.split("spindle dev —").at(-1) ?? "";
          const ok =
            /usb-serial\s+usb\s+True\s+usb-serial-\w+\s+edge-1\s/.test(last) &&
            /onvif-cameras\s+onvif\s+True\s+onvif-cameras-\w+\s+edge-1,edge-2/.test(last) &&
            /mqtt-sensors\s+mqtt\s+True\s+mqtt-sensors-\w+\s+edge-1,edge-2/.test(last) &&
            /mdns-services\s+mdns\s+True\s+mdns-services-\w+/.test(last) &&
            /serial-reader\s+DevicesBound\s+serial-reader-\w+\s+usb-serial-\w+\s+yes\s+edge-1:Running/.test(last) &&
            /thumbnailer\s+DevicesBound/.test(last) &&
            /sensor-bridge\s+DevicesBound/.test(last);
          return ok ? last : undefined;
        },
        120_000,
      );
      expect(table).toMatch(/RECENT EVENTS[\s\S]*Bound/);
      dev.kill("SIGINT");
      expect(await exited).toBe(0);
      expect(existsSync(sandboxDir), "the sandbox directory is removed").toBe(false);
    } finally {
      if (dev.exitCode === null) dev.kill("SIGKILL");
    }
  });
});
