import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as k8s from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HANDLERS } from "../../discovery-handlers/index.js";
import { DEMO_NAMESPACE, exampleObjects } from "../../src/commands/dev.js";
import { kubeConfig, kubectl } from "./cluster.js";

describe("examples/ (what the README shows and `spindle dev` applies)", () => {
  const core = kubeConfig().makeApiClient(k8s.CoreV1Api);

  beforeAll(async () => {
    await core.createNamespace({ body: { metadata: { name: DEMO_NAMESPACE } } }).catch(() => undefined);
  });
  afterAll(async () => {
    await core.deleteNamespace({ name: DEMO_NAMESPACE }).catch(() => undefined);
  });

  it("are accepted by the apiserver (server-side dry run) and by each handler's own schema", async () => {
    const objects = await exampleObjects({ mqttUri: "mqtt://127.0.0.1:1883", usbRoot: "/tmp/sysfs" });
    expect(objects.map((o) => o.kind).sort()).toEqual(expect.arrayContaining(["DeviceConfiguration", "DeviceSpinApp"]));
    for (const obj of objects) {
      const spec = (obj as { spec?: { discoveryHandler?: { name: string; discoveryDetails: unknown } } }).spec;
      if (spec?.discoveryHandler) {
        const parsed = HANDLERS.get(spec.discoveryHandler.name)?.detailsSchema.safeParse(
          spec.discoveryHandler.discoveryDetails,
        );
        expect(parsed?.error, `${obj.metadata?.name}`).toBeUndefined();
      }
    }
    const file = join(await mkdtemp(join(tmpdir(), "examples-")), "all.json");
    await writeFile(file, objects.map((o) => JSON.stringify(o)).join("\n"));
    const out = await kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=spindle-test", "-f", file);
    expect(out.split("\n").filter(Boolean)).toHaveLength(objects.length);
  });
});
