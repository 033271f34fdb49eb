import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import { Api } from "../k8s/api.js";

/** Spindle's Prometheus metrics: one registry per process, served at /metrics. */
export const registry = new Registry();
// The event-loop delay histogram samples every 10 ms by default: 100 wake-ups a second cost an
// idle agent about 0.45 % of a core (measured). 100 ms is plenty for a lag metric.
collectDefaultMetrics({ register: registry, prefix: "spindle_process_", eventLoopMonitoringPrecision: 100 });

export const apiWrites = new Counter({
  name: "spindle_api_writes_total",
  help: "Writes to the Kubernetes API, by resource and verb (apply, delete).",
  labelNames: ["resource", "verb"] as const,
  registers: [registry],
});

export const devicesPublished = new Gauge({
  name: "spindle_devices",
  help: "Devices this agent currently publishes, by DeviceConfiguration.",
  labelNames: ["configuration"] as const,
  registers: [registry],
});

export const discoveryLatency = new Histogram({
  name: "spindle_discovery_latency_seconds",
  help: "From a handler reporting a new or changed device to its Device being written.",
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
  registers: [registry],
});

export const reconcileDuration = new Histogram({
  name: "spindle_reconcile_duration_seconds",
  help: "Duration of one controller reconcile of the whole desired state.",
  buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30],
  registers: [registry],
});

export const reconcileErrors = new Counter({
  name: "spindle_reconcile_errors_total",
  help: "Reconciles (controller) or device publications (agent) that failed and will be retried.",
  registers: [registry],
});

export const spinAppsBound = new Gauge({
  name: "spindle_spinapps_bound",
  help: "SpinApps the controller keeps bound to devices, by namespace.",
  labelNames: ["namespace"] as const,
  registers: [registry],
});

export const apiConnections = new Gauge({
  name: "spindle_api_connections_opened",
  help: "TLS connections to the Kubernetes API this process opened since it started.",
  registers: [registry],
  collect() {
    this.set(Api.opened);
  },
});
