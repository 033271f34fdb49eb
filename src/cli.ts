import { Command } from "commander";

// Each command's module is imported only when that command runs, so `spindle <command> --help`
// loads commander alone and the agent never loads the controller, the sandbox or the dev tools.

const program = new Command("spindle")
  .description("Finds edge devices and runs SpinKube SpinApps bound to them.")
  .showHelpAfterError();

program
  .command("crds")
  .description("Print Spindle's CRDs as YAML (generated from the zod schemas in src/api)")
  .option("--write", "regenerate the files in crds/ instead of printing")
  .action(async (options) => (await import("./commands/crds.js")).crdsCommand(options));

program
  .command("sandbox")
  .description(
    "Run a local Kubernetes control plane (etcd, apiserver, controller-manager, scheduler, KWOK nodes, spin-operator) until Ctrl-C; prints KUBECONFIG= and KUBECTL= when ready",
  )
  .action(async () => (await import("./commands/sandbox.js")).sandboxCommand());

program
  .command("dev")
  .description(
    "The whole system on a local sandbox: control plane, simulated devices, agents on edge-1 and edge-2, the controller, examples/, and a live view with keys to plug and unplug devices",
  )
  .action(async () => (await import("./commands/dev.js")).devCommand());

program
  .command("agent")
  .description("Run discovery on one node and publish what it finds as Device objects")
  .option("--node <name>", "this node's name (default: $NODE_NAME)")
  .option("--kubeconfig <path>", "kubeconfig (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
  .option(
    "--handlers <list>",
    "comma-separated discovery handlers to run (default: all; env SPINDLE_HANDLERS)",
    process.env.SPINDLE_HANDLERS,
  )
  .option(
    "--http-address <host:port>",
    "serve /metrics, /healthz and /readyz here (env SPINDLE_HTTP_ADDRESS; default: off)",
    process.env.SPINDLE_HTTP_ADDRESS,
  )
  .action(async (options) => (await import("./commands/agent.js")).agentCommand(options));

program
  .command("controller")
  .description("Run the DeviceSpinApp controller (one active replica, elected with a Lease)")
  .option("--kubeconfig <path>", "kubeconfig (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
  .option("--lease-namespace <ns>", "namespace of the leader-election Lease", process.env.POD_NAMESPACE ?? "default")
  .option("--lease-name <name>", "name of the leader-election Lease", "spindle-controller")
  .option("--lease-seconds <n>", "seconds without renewal before a standby takes over", "15")
  .option("--identity <id>", "this replica's identity in the Lease (default: <hostname>-<pid>)")
  .option(
    "--http-address <host:port>",
    "serve /metrics, /healthz and /readyz here (env SPINDLE_HTTP_ADDRESS; default: off)",
    process.env.SPINDLE_HTTP_ADDRESS,
  )
  .action(async (options) => (await import("./commands/controller.js")).controllerCommand(options));

program
  .command("status")
  .description("Show devices per configuration, DeviceSpinApps with their SpinApps and pods, and recent events")
  .option("--kubeconfig <path>", "kubeconfig (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
  .option("-o, --output <format>", "table or json", "table")
  .action(async (options) => (await import("./commands/status.js")).statusCommand(options));

try {
  await program.parseAsync();
} catch (err) {
  process.stderr.write(`spindle: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
}
