import { appendFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { describeRun, figuresOf, runChaos } from "../chaos.js";

/**
 * Randomized operations against real agents and controllers behind a fault-injecting proxy,
 * then the invariants once the faults stop (test/chaos.ts). `npm test` runs a few seeds;
 * `npm run chaos` runs many more through CHAOS_SEEDS (a count, or a comma-separated list to
 * replay given seeds) and CHAOS_OPERATIONS, collecting one JSON line per run in CHAOS_REPORT.
 */
function seeds(): number[] {
  const raw = process.env.CHAOS_SEEDS?.trim() || "3";
  if (raw.includes(",")) return raw.split(",").map((s) => Number(s.trim()));
  return Array.from({ length: Number(raw) }, (_, i) => i + 1);
}
const OPERATIONS = Number(process.env.CHAOS_OPERATIONS || 25);
const CONVERGENCE_S = 30;

describe("chaos", () => {
  for (const seed of seeds()) {
    it(
      `seed ${seed}: ${OPERATIONS} random operations under API faults, then every invariant within ${CONVERGENCE_S} s`,
      async () => {
        const run = await runChaos({ seed, operations: OPERATIONS });
        const line = JSON.stringify(figuresOf(run));
        process.stderr.write(`[chaos] ${line}\n`);
        if (process.env.CHAOS_REPORT) appendFileSync(process.env.CHAOS_REPORT, `${line}\n`);
        if (run.violations > 0 || run.convergenceSeconds > CONVERGENCE_S) throw new Error(describeRun(run));
        expect(run.violations).toBe(0);
        expect(run.convergenceSeconds).toBeLessThanOrEqual(CONVERGENCE_S);
      },
      // Start-up (~15 s), the operations, up to 60 s of convergence, and the clean-up.
      120_000 + OPERATIONS * 2_000,
    );
  }
});
