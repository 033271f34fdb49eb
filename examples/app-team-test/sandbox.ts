import { randomBytes } from "node:crypto";
import { SpindleCluster } from "spindle/testing";
import { inject } from "vitest";
import { loadClientNodeConfig } from "../../src/sandbox/client-node.js";
import { testNamespace } from "../../test/e2e/cluster.js";
import { SpindleProcess } from "../../test/e2e/spindle-process.js";

/**
 * Where camera.test.ts gets its cluster. In your own CI this is a cluster with Spindle installed
 * (its chart) and KUBECONFIG pointing at it: `SpindleCluster.connect()` and a namespace of yours
 * are all you need. In this repository `npm test` runs the example against the e2e sandbox, which
 * has no Spindle running, so an agent and the controller are started here.
 */
export async function sandboxWithSpindle(): Promise<{
  cluster: SpindleCluster;
  namespace: string;
  /** A name unique to this run, so parallel runs do not see each other's devices. */
  run: string;
  stop(): Promise<void>;
}> {
  const ns = await testNamespace("app-team");
  const agent = await SpindleProcess.agent("edge-1", ["--handlers", "onvif"]);
  const controller = await SpindleProcess.start("controller-app-team", ["controller", "--lease-namespace", ns.name]);
  return {
    cluster: new SpindleCluster(loadClientNodeConfig(inject("kubeconfig"))),
    namespace: ns.name,
    run: randomBytes(3).toString("hex"),
    stop: async () => {
      await controller.stop();
      await agent.stop();
      await ns.remove();
    },
  };
}
