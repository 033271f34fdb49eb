import { loadScenarioFile, type Scenario } from "../simulate/scenario.js";
import { runScenario, type SimulationEvent } from "../simulate/simulation.js";

export interface SimulateOptions {
  output?: string;
  check?: boolean;
}

/**
 * `spindle simulate <scenario.yaml>`: validates the scenario, starts its simulated devices, plays
 * the timeline and prints every event; the end of the scenario, Ctrl-C or SIGTERM stops and
 * cleans up everything. A bad file or a failed event exits with status 1, after cleaning up.
 */
export async function simulateCommand(file: string, options: SimulateOptions): Promise<void> {
  const output = options.output ?? "text";
  if (output !== "text" && output !== "json") throw new Error(`--output: expected text or json, got ${output}`);
  const scenario = await loadScenarioFile(file);
  if (options.check) {
    process.stdout.write(`${file}: valid: ${summary(scenario)}\n`);
    return;
  }
  const print = (event: SimulationEvent) =>
    process.stdout.write(output === "json" ? `${JSON.stringify(event)}\n` : `${formatEvent(event)}\n`);

  const controller = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    if (controller.signal.aborted) return;
    process.stderr.write(`spindle simulate: ${signal}: stopping\n`);
    controller.abort();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    if (output === "text") process.stdout.write(`scenario ${scenario.name}: ${summary(scenario)}\n`);
    await runScenario(scenario, { onEvent: print, signal: controller.signal });
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

function summary(scenario: Scenario): string {
  const kinds = new Map<string, number>();
  for (const d of scenario.devices) kinds.set(d.kind, (kinds.get(d.kind) ?? 0) + 1);
  const devices = [...kinds].map(([kind, n]) => `${n} ${kind}`).join(", ");
  const end =
    scenario.duration === "forever"
      ? "runs until Ctrl-C"
      : scenario.duration !== undefined
        ? `runs ${scenario.duration / 1000} s`
        : "ends with its timeline";
  return `${devices}; ${scenario.timeline.length} timeline event(s); ${end}`;
}

/** `  12.3s  plug           cam-2         camera … (Hello)` */
export function formatEvent(event: SimulationEvent): string {
  return `${`${event.t.toFixed(1)}s`.padStart(8)}  ${event.action.padEnd(13)}  ${(event.device ?? "-").padEnd(16)}  ${event.detail}`;
}
