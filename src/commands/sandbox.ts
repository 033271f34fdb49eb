import { ControlPlane } from "../sandbox/control-plane.js";

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

export function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const done = (signal: NodeJS.Signals) => {
      process.off("SIGINT", done);
      process.off("SIGTERM", done);
      resolve(signal);
    };
    process.on("SIGINT", done);
    process.on("SIGTERM", done);
  });
}
