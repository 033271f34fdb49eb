import { pino } from "pino";

export type Logger = pino.Logger;

/** JSON logs to stderr; LOG_LEVEL picks the level (info by default). */
export function createLogger(name: string, level = process.env.LOG_LEVEL ?? "info"): Logger {
  return pino({ name, level, redact: ["password", "*.password", "credentials", "*.credentials"] }, pino.destination(2));
}
