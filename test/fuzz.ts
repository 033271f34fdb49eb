import { appendFileSync } from "node:fs";

/**
 * How many generated inputs a property test tries: the base count in `npm test`, times
 * FUZZ_SCALE in `npm run fuzz`. With FUZZ_REPORT set, each call records the parser and its count
 * (one JSON line), which `npm run reliability` sums into its table.
 */
export function fuzzRuns(base: number, parser: string): number {
  const runs = Math.max(1, Math.round(base * Number(process.env.FUZZ_SCALE ?? 1)));
  if (process.env.FUZZ_REPORT) appendFileSync(process.env.FUZZ_REPORT, `${JSON.stringify({ parser, runs })}\n`);
  return runs;
}
