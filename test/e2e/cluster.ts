import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import * as k8s from "@kubernetes/client-node";
import { inject } from "vitest";
import { applyObject, loadClientNodeConfig } from "../../src/sandbox/client-node.js";
import { spinAppExecutor } from "../../src/sandbox/control-plane.js";
import { type FaultPlan, FaultProxy } from "../fault-proxy.js";

const run = promisify(execFile);

/** Helpers for e2e tests on the sandbox control plane started by global-setup.ts. */
export function kubeConfig(): k8s.KubeConfig {
  return loadClientNodeConfig(inject("kubeconfig"));
}

export async function kubectl(...args: string[]): Promise<string> {
  const { stdout } = await run(inject("kubectl"), ["--kubeconfig", inject("kubeconfig"), ...args]);
  return stdout;
}

/** A fresh namespace with the SpinAppExecutor SpinApps need; deleted by the returned function. */
export async function testNamespace(prefix: string): Promise<{ name: string; remove: () => Promise<void> }> {
  const kc = kubeConfig();
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const name = `${prefix}-${randomBytes(3).toString("hex")}`;
  await core.createNamespace({ body: { metadata: { name } } });
  await applyObject(kc, spinAppExecutor(name), "spindle-test");
  return {
    name,
    remove: async () => {
      await core.deleteNamespace({ name }).catch(() => undefined);
    },
  };
}

/** Polls until `fn` returns a value that isn't undefined/false, or fails with what it last saw. */
export async function eventually<T>(
  what: string,
  fn: () => Promise<T | undefined | false>,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await fn();
      if (value !== undefined && value !== false) return value as T;
      last = value;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(
    `timed out waiting for ${what}; last: ${last instanceof Error ? last.message : JSON.stringify(last)}`,
  );
}

/**
 * A FaultProxy in front of the sandbox's apiserver (serving the apiserver's own certificate, so
 * clients trust it unchanged) and a kubeconfig for it with the sandbox admin's token.
 */
export async function sandboxFaultProxy(
  seed: number,
  plan: Partial<FaultPlan> = {},
): Promise<{ proxy: FaultProxy; kubeconfig: string }> {
  const kc = kubeConfig();
  const pki = join(inject("sandboxDir"), "pki");
  const proxy = await FaultProxy.start({
    upstream: kc.getCurrentCluster()!.server,
    caFile: join(pki, "apiserver.crt"),
    certFile: join(pki, "apiserver.crt"),
    keyFile: join(pki, "apiserver.key"),
    seed,
    plan,
  });
  const kubeconfig = join(await mkdtemp(join(tmpdir(), "spindle-fault-proxy-")), "kubeconfig");
  await proxy.writeKubeconfig(kubeconfig, kc.getCurrentUser()!.token!);
  return { proxy, kubeconfig };
}
