import { defineConfig } from "vitest/config";

// Three projects: `unit` runs beside its subject (real brokers and sockets, no cluster);
// `e2e` and `scale` run against the sandbox control plane started once in test/e2e/global-setup.ts.
// `npm test` runs unit and e2e.
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: "unit",
          include: ["src/**/*.test.ts", "discovery-handlers/**/*.test.ts", "test/unit/**/*.test.ts"],
          testTimeout: 30_000,
        },
      },
      {
        test: {
          name: "e2e",
          // examples/app-team-test: an app team's own test, run against the same sandbox.
          include: ["test/e2e/**/*.test.ts", "examples/**/*.test.ts"],
          globalSetup: ["test/e2e/global-setup.ts"],
          testTimeout: 180_000,
          hookTimeout: 900_000,
          fileParallelism: false,
        },
      },
      {
        // `npm run test:scale`: runs too long for `npm test` (10,000 devices on one node).
        test: {
          name: "scale",
          include: ["test/scale/**/*.test.ts"],
          globalSetup: ["test/e2e/global-setup.ts"],
          testTimeout: 1_200_000,
          hookTimeout: 900_000,
          fileParallelism: false,
        },
      },
    ],
  },
});
