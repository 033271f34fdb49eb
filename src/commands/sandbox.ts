import { ControlPlane } from "../sandbox/control-plane.js";
import { untilSignal } from "./signals.js";

/** `spindle sandbox`: a real control plane in the foreground until Ctrl-C / SIGTERM. */
export async function sandboxCommand(): Promise<void> {
  const cp = await ControlPlane.start();
  process.stdout.write(`KUBECONFIG=${cp.kubeconfigPath}\nKUBECTL=${cp.kubectlPath}\n`);
  process.stderr.write(
    `try: ${cp.kubectlPath} --kubeconfig ${cp.kubeconfigPath} get nodes\nCtrl-C stops the sandbox.\n`,
  );
  await untilSignal();
  process.stderr.write("stopping the sandbox...\n");
  await cp.stop();
}
