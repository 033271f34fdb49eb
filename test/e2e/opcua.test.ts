/**
 * OPC UA on the sandbox: two real node-opcua servers registered with a real Local Discovery
 * Server (all on 127.0.0.1), an agent running the opcua handler -> two Devices with the
 * servers' properties; one server stops -> its Device goes after the grace period.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type * as k8s from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningOpcua, startLds, startOpcuaServer } from "../../discovery-handlers/opcua/testing.js";
import type { Device } from "../../src/api/device.js";
import { DEVICE_CONFIGURATIONS, DEVICES, ResourceClient } from "../../src/k8s/resources.js";
import { eventually, kubeConfig } from "./cluster.js";
import { SpindleProcess } from "./spindle-process.js";

type Obj = k8s.KubernetesObject & Record<string, unknown>;

describe("opcua: servers behind an LDS become Devices", () => {
  const kc = kubeConfig();
  const configs = new ResourceClient<Obj>(kc, DEVICE_CONFIGURATIONS, "spindle-test");
  const devices = new ResourceClient<Device & Obj>(kc, DEVICES, "spindle-test");
  const base = 46000 + (process.pid % 500) * 4;
  let pki: string;
  let lds: RunningOpcua;
  let a: RunningOpcua;
  let b: RunningOpcua | undefined;
  let agent: SpindleProcess;

  const devicesOf = async () => (await devices.list()).items.filter((d) => d.spec.configurationName === "opcua-e2e");

  beforeAll(async () => {
    pki = await mkdtemp(join(tmpdir(), "spindle-opcua-e2e-"));
    lds = await startLds(base, pki);
    a = await startOpcuaServer({
      port: base + 1,
      applicationName: "Line 1 PLC",
      applicationUri: "urn:plant:line1",
      ldsUrl: lds.url,
      pkiDir: pki,
    });
    b = await startOpcuaServer({
      port: base + 2,
      applicationName: "Line 2 PLC",
      applicationUri: "urn:plant:line2",
      ldsUrl: lds.url,
      pkiDir: pki,
    });
    agent = await SpindleProcess.agent("edge-1", ["--handlers", "opcua"], {
      SPINDLE_OPCUA_PKI_DIR: join(pki, "agent"),
    });
  }, 120_000);

  afterAll(async () => {
    await agent?.stop();
    await configs.delete("opcua-e2e").catch(() => undefined);
    await b?.stop();
    await a?.stop();
    await lds?.stop();
    if (pki) await rm(pki, { recursive: true, force: true });
  });

  it("publishes both servers with their properties, shared, and removes a stopped one after the grace period", async () => {
    await configs.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: "opcua-e2e" },
      spec: {
        discoveryHandler: {
          name: "opcua",
          discoveryDetails: {
            opcuaDiscoveryMethod: { standard: { discoveryUrls: [lds.url] } },
            applicationNames: { action: "Exclude", items: [] },
            pollSeconds: 1,
          },
        },
        offlineGraceSeconds: 3,
      },
    });
    const two = await eventually("two OPC UA Devices", async () => {
      const list = await devicesOf();
      return list.length === 2 ? list : undefined;
    });
    const line2 = two.find((d) => d.spec.properties.OPCUA_APPLICATION_URI === "urn:plant:line2")!;
    expect(line2.spec.shared).toBe(true);
    expect(line2.spec.handler).toBe("opcua");
    expect(line2.spec.properties).toMatchObject({
      OPCUA_DISCOVERY_URL: `opc.tcp://127.0.0.1:${base + 2}`,
      OPCUA_ENDPOINT_URL: `opc.tcp://127.0.0.1:${base + 2}`,
      OPCUA_APPLICATION_NAME: "Line 2 PLC",
      OPCUA_SECURITY_MODES: "None,Sign,SignAndEncrypt",
    });
    await b!.stop();
    b = undefined;
    const stopped = Date.now();
    await eventually("line 2's Device gone after the grace period", async () => {
      const list = await devicesOf();
      return list.length === 1 && list[0]!.spec.properties.OPCUA_APPLICATION_NAME === "Line 1 PLC";
    });
    expect(Date.now() - stopped).toBeGreaterThanOrEqual(3000);
  });
});
