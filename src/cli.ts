import { Command } from "commander";
import { agentCommand } from "./commands/agent.js";
import { controllerCommand } from "./commands/controller.js";
import { crdsCommand } from "./commands/crds.js";
import { sandboxCommand } from "./commands/sandbox.js";

const program = new Command("spindle")
  .description("Finds edge devices and runs SpinKube SpinApps bound to them.")
  .showHelpAfterError();

program
  .command("crds")
  .description("Print Spindle's CRDs as YAML (generated from the zod schemas in src/api)")
  .option("--write", "regenerate the files in crds/ instead of printing")
  .action(crdsCommand);

program
  .command("sandbox")
  .description(
    "Run a local Kubernetes control plane (etcd, apiserver, controller-manager, scheduler, KWOK nodes, spin-operator) until Ctrl-C; prints KUBECONFIG= and KUBECTL= when ready",
  )
  .action(sandboxCommand);

program
  .command("agent")
  .description("Run discovery on one node and publish what it finds as Device objects")
  .option("--node <name>", "this node's name (default: $NODE_NAME)")
  .option("--kubeconfig <path>", "kubeconfig (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
  .option("--handlers <list>", "comma-separated discovery handlers to run (default: all)", process.env.SPINDLE_HANDLERS)
  .action(agentCommand);

program
  .command("controller")
  .description("Run the DeviceSpinApp controller (one active replica, elected with a Lease)")
  .option("--kubeconfig <path>", "kubeconfig (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
  .option("--lease-namespace <ns>", "namespace of the leader-election Lease", process.env.POD_NAMESPACE ?? "default")
  .option("--lease-name <name>", "name of the leader-election Lease", "spindle-controller")
  .option("--lease-seconds <n>", "seconds without renewal before a standby takes over", "15")
  .option("--identity <id>", "this replica's identity in the Lease (default: <hostname>-<pid>)")
  .action(controllerCommand);

try {
  await program.parseAsync();
} catch (err) {
  process.stderr.write(`spindle: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
}
