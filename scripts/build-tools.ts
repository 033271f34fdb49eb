/**
 * Builds (or finds in the cache) every binary the sandbox and the tests run, before the tests
 * start, so a cold build on a fresh machine is timed and reported on its own.
 */
import { ensureBinaries } from "../src/sandbox/build.js";

const started = Date.now();
const binaries = await ensureBinaries();
process.stderr.write(
  `sandbox binaries ready in ${((Date.now() - started) / 1000).toFixed(1)} s: ${Object.keys(binaries).join(", ")}\n`,
);
