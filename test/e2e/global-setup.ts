import type { TestProject } from "vitest/node";
import { ALL_MODULES, ensureBinaries } from "../../src/sandbox/build.js";
import { ControlPlane } from "../../src/sandbox/control-plane.js";

declare module "vitest" {
  export interface ProvidedContext {
    kubeconfig: string;
    kubectl: string;
    sandboxDir: string;
    sandboxPids: number[];
  }
}

/**
 * Starts one real control plane for the whole e2e project. The first run builds it from the
 * pinned Go modules (many minutes); later runs reuse the cached binaries.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const started = Date.now();
  const log = (line: string) => process.stderr.write(`[sandbox] ${line}\n`);
  // Every module, helm too (chart.test.ts), so no test's hook waits for a build.
  await ensureBinaries(log, { modules: ALL_MODULES });
  const cp = await ControlPlane.start({ log });
  process.stderr.write(`[sandbox] up in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  project.provide("kubeconfig", cp.kubeconfigPath);
  project.provide("kubectl", cp.kubectlPath);
  project.provide("sandboxDir", cp.dir);
  project.provide("sandboxPids", cp.processIds());
  return () => cp.stop();
}
