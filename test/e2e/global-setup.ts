import type { TestProject } from "vitest/node";
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
  const cp = await ControlPlane.start({ log: (line) => process.stderr.write(`[sandbox] ${line}\n`) });
  process.stderr.write(`[sandbox] up in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  project.provide("kubeconfig", cp.kubeconfigPath);
  project.provide("kubectl", cp.kubectlPath);
  project.provide("sandboxDir", cp.dir);
  project.provide("sandboxPids", cp.processIds());
  return () => cp.stop();
}
