import { appendFileSync } from "node:fs";

/** A measured figure from a test, for `npm run reliability` (one JSON line to RELIABILITY_REPORT). */
export function recordFigure(figure: string, value: number, unit: string): void {
  process.stderr.write(`[figure] ${figure}: ${value} ${unit}\n`);
  if (process.env.RELIABILITY_REPORT) {
    appendFileSync(process.env.RELIABILITY_REPORT, `${JSON.stringify({ figure, value, unit })}\n`);
  }
}
