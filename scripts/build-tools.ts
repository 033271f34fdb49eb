/**
 * Builds (or finds in the cache) the sandbox's Go binaries ahead of time:
 * `npx tsx scripts/build-tools.ts [module...]` (default: every module but the on-demand otelcol). `spindle dev`
 * and the e2e tests build what they need on their own; this is for warming a cache or timing a
 * cold build on its own.
 */
import { ALL_MODULES, ensureBinaries, type ModuleName, TOOL_MODULES } from "../src/sandbox/build.js";
import { formatDuration } from "../src/sandbox/build-progress.js";

const asked = process.argv.slice(2);
const known: string[] = TOOL_MODULES.map((t) => t.module);
const unknown = asked.filter((m) => !known.includes(m));
if (unknown.length > 0) {
  process.stderr.write(`unknown module ${unknown.join(", ")}; the modules are: ${known.join(", ")}\n`);
  process.exit(2);
}
const started = Date.now();
const binaries = await ensureBinaries(undefined, {
  modules: asked.length > 0 ? (asked as ModuleName[]) : ALL_MODULES,
  progress: true,
});
process.stderr.write(
  `sandbox binaries ready in ${formatDuration(Date.now() - started)}: ${Object.keys(binaries).join(", ")}\n`,
);
