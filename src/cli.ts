import { Command } from "commander";
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

try {
  await program.parseAsync();
} catch (err) {
  process.stderr.write(`spindle: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
}
