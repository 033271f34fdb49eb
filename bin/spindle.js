#!/usr/bin/env node
// With NODE_ENV=production (the image sets it) and a build in dist/ (`npm run build`), runs the
// compiled bundle: no TypeScript at run time. Otherwise, or with SPINDLE_FROM_SOURCE=1, runs the
// TypeScript sources through tsx, so development and the tests never run stale build output.
import { existsSync } from "node:fs";

const dist = new URL("../dist/cli.js", import.meta.url);

if (process.env.NODE_ENV === "production" && !process.env.SPINDLE_FROM_SOURCE && existsSync(dist)) {
  await import(dist.href);
} else {
  let register;
  try {
    ({ register } = await import("tsx/esm/api"));
  } catch {
    process.stderr.write(
      "spindle: no production build (dist/cli.js with NODE_ENV=production) and no tsx to run the sources: run `npm run build` or `npm ci`\n",
    );
    process.exit(1);
  }
  register();
  await import("../src/cli.ts");
}
