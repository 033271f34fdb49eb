import { loadKubeConfig } from "../k8s/kubeconfig.js";
import { readSnapshot, renderSnapshot } from "../status/snapshot.js";

/** `spindle status`: devices, DeviceSpinApps with their SpinApps and pods, recent events; once. */
export async function statusCommand(options: { kubeconfig?: string; output?: string }): Promise<void> {
  const snapshot = await readSnapshot(await loadKubeConfig(options.kubeconfig));
  if (options.output === "json") process.stdout.write(`${JSON.stringify(snapshot, null, 2)}\n`);
  else if (!options.output || options.output === "table")
    process.stdout.write(`${renderSnapshot(snapshot, process.stdout.columns ?? 120)}\n`);
  else throw new Error(`-o ${options.output}: use table or json`);
}
