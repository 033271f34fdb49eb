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
  .option(
    "--otel",
    "start a real OpenTelemetry Collector on 127.0.0.1 and export the agents' and controller's traces to it",
  )
  .action(async (opts: { otel?: boolean }) => (await import("./commands/dev.js")).devCommand({ otel: opts.otel }));

program
  .command("simulate")
  .description(
    "Start the simulated devices a scenario file declares (ONVIF cameras, MQTT devices, USB sysfs trees, mDNS services), play its timeline and print each event; Ctrl-C or the end of the scenario cleans up",
  )
  .argument("<scenario>", "scenario YAML file (examples/scenarios/)")
  .option("-o, --output <format>", "text or json (one event per line)", "text")
  .option("--check", "validate the scenario and exit")
  .action(async (file, options) => (await import("./commands/simulate.js")).simulateCommand(file, options));

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
  .option(
    "--registration-socket <path>",
    "serve Akri's discovery-handler registration (v0) on this unix socket, e.g. /var/lib/spindle/agent-registration.sock (env SPINDLE_REGISTRATION_SOCKET; default: off)",
    process.env.SPINDLE_REGISTRATION_SOCKET,
  )
  .option(
    "--allow-external-override <list>",
    "built-in handlers an external handler may replace by registering the same name (env SPINDLE_ALLOW_EXTERNAL_OVERRIDE; default: none)",
    process.env.SPINDLE_ALLOW_EXTERNAL_OVERRIDE,
  )
  .option(
    "--placement <mode>",
    "auto (DRA where the controller set it up, else node extended resources), dra or node-resources (env SPINDLE_PLACEMENT)",
    process.env.SPINDLE_PLACEMENT ?? "auto",
  )
  .option(
    "--kubelet-dir <path>",
    "serve the DRA kubelet plugin for spindle.dev under this kubelet root, e.g. /var/lib/kubelet (env SPINDLE_KUBELET_DIR; default: off)",
    process.env.SPINDLE_KUBELET_DIR,
  )
  .action(async (options) => (await import("./commands/agent.js")).agentCommand(options));

program
  .command("handler")
  .description("Run one built-in discovery handler out of process, registered with an agent over Akri's protocol (v0)")
  .argument("<handler>", "the built-in handler to run (usb, onvif, mqtt, mdns, opcua)")
  .requiredOption(
    "--registration-socket <path>",
    "the agent's registration socket (env SPINDLE_REGISTRATION_SOCKET)",
    process.env.SPINDLE_REGISTRATION_SOCKET,
  )
  .option(
    "--name <name>",
    "the name to register (default: <handler>-external; a built-in name needs the agent's consent)",
  )
  .option("--socket <path>", "serve Discover on this unix socket (default: <registration dir>/<name>.sock)")
  .action(async (handler, options) => (await import("./commands/handler.js")).handlerCommand(handler, options));

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
  .option(
    "--placement <mode>",
    "auto (DRA where the cluster maps extended resources to DeviceClasses, else node extended resources), dra or node-resources (env SPINDLE_PLACEMENT)",
    process.env.SPINDLE_PLACEMENT ?? "auto",
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
