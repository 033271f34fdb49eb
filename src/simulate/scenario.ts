import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { basename, extname } from "node:path";
import { LineCounter, parseDocument } from "yaml";
import { z } from "zod";

/**
 * The scenario file `spindle simulate` runs: which simulated devices to start (kind, count,
 * identity, credentials, misbehaviour), where they live (MQTT broker, multicast interface, USB
 * sysfs root), and a timeline of what happens to them. This schema is the one source of truth
 * for the format; `parseScenario` turns a file into a `Scenario` with every count expanded and
 * every default filled in, or a `ScenarioError` whose lines name the field, its line in the file,
 * and what was expected there.
 */

// ---- durations ----

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/;
const UNIT_MS = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 } as const;
const DURATION_HINT = 'expected a duration like "10s", "500ms", "2m", "1h" or a number of seconds';

/** A duration: `"10s"`, `"500ms"`, `"1.5m"`, `"1h"`, or a number of seconds. Parsed to milliseconds. */
export const duration = z
  .union(
    [
      z.number({ error: DURATION_HINT }).nonnegative({ error: DURATION_HINT }),
      z.string({ error: DURATION_HINT }).regex(DURATION, { error: DURATION_HINT }),
    ],
    { error: DURATION_HINT },
  )
  .transform((value) => {
    if (typeof value === "number") return Math.round(value * 1000);
    const [, amount, unit] = DURATION.exec(value)!;
    return Math.round(Number(amount) * UNIT_MS[unit as keyof typeof UNIT_MS]);
  })
  .refine((ms) => ms <= 7 * 86_400_000, { error: "at most 7 days" })
  .meta({ description: DURATION_HINT });

const positiveDuration = duration.refine((ms) => ms > 0, { error: "must be longer than 0" });

// ---- devices ----

/** The fake camera's misbehaviour modes (discovery-handlers/onvif/fake-camera.ts `Misbehaviour`). */
export const CAMERA_MISBEHAVIOURS = [
  "malformed-xml",
  "xml-bomb",
  "huge-response",
  "hang",
  "hostile-probe-match",
] as const;

const name = z.string().regex(/^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$/, {
  error: "expected a name of lowercase letters, digits and '-', at most 40 characters",
});
/** A string of at most `max` characters; `{i}` in it becomes the copy's number when `count` > 1. */
const text = (max = 256) => z.string().min(1).max(max);
const hex = (digits: number) =>
  z.string().regex(new RegExp(`^[0-9a-fA-F]{${digits}}$`), { error: `expected ${digits} hex digits` });

const common = {
  name: name.meta({ description: "Name in the timeline; with count > 1 the copies are <name>-1, <name>-2, ..." }),
  count: z.int().min(1).max(256).default(1),
  plugged: z.boolean().default(true).meta({ description: "Present from the start (false: the timeline plugs it)." }),
};

const secret = z
  .strictObject({
    username: text(),
    password: text().optional(),
    passwordFromEnv: z
      .string()
      .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, { error: "expected an environment variable name" })
      .optional(),
  })
  .refine((c) => (c.password === undefined) !== (c.passwordFromEnv === undefined), {
    error: "give exactly one of password and passwordFromEnv",
  });

const onvifCamera = z.strictObject({
  kind: z.literal("onvif-camera"),
  ...common,
  uuid: text(64)
    .optional()
    .meta({ description: "Endpoint UUID; derived from the scenario and device name if absent." }),
  ip: text(64).optional().meta({ description: "Address the camera serves on (default: the onvif interface)." }),
  port: z.int().min(1).max(65_535).optional().meta({ description: "HTTP port (default: any free port)." }),
  unicastPort: z
    .int()
    .min(1)
    .max(65_535)
    .optional()
    .meta({ description: "UDP port for unicast probes (an agent's unicastHosts entry); default: any free port." }),
  multicast: z
    .boolean()
    .default(true)
    .meta({ description: "false: no Hello/Bye and no multicast Probes, unicast probes only." }),
  mac: text(64).optional(),
  manufacturer: text().optional(),
  model: text().optional(),
  serial: text().optional(),
  scopes: z.array(text(1024)).max(64).optional(),
  credentials: secret.optional(),
  misbehave: z.enum(CAMERA_MISBEHAVIOURS).optional(),
});

const homeAssistant = z.strictObject({
  kind: z.literal("home-assistant"),
  ...common,
  id: text(128).optional().meta({ description: "Object id and unique_id (default: the device name)." }),
  component: text(64).default("sensor"),
  manufacturer: text().optional(),
  model: text().optional(),
  availability: z
    .boolean()
    .default(true)
    .meta({ description: "Publish an availability topic (kill sets it offline)." }),
  abbreviate: z.boolean().default(false),
  prefix: text(256).optional(),
});

const homie = z.strictObject({
  kind: z.literal("homie"),
  ...common,
  id: text(128).optional(),
  version: z.union([z.literal(5), z.literal(4)], { error: "expected 5 or 4" }).default(5),
  prefix: text(256).optional(),
});

const sparkplug = z.strictObject({
  kind: z.literal("sparkplug"),
  ...common,
  group: text(128),
  edgeNode: text(128).optional().meta({ description: "Edge node id (default: the device name)." }),
  devices: z.array(text(128)).max(256).default([]),
  dataInterval: positiveDuration.optional(),
});

const mqttTopic = z.strictObject({
  kind: z.literal("mqtt-topic"),
  ...common,
  topic: text(1024).refine((t) => !/[+#\u0000]/.test(t), { error: "a topic to publish on has no wildcards" }),
  interval: positiveDuration.default(5_000),
  payload: z.string().max(65_536).default("{}"),
});

const usb = z.strictObject({
  kind: z.literal("usb"),
  ...common,
  port: z
    .string()
    .regex(/^(\d+-\d+(\.\d+)*|.*\{i\}.*)$/, { error: 'expected a sysfs port like "1-1" or "1-1.2"' })
    .optional()
    .meta({ description: "sysfs port; the next free 1-N if absent." }),
  vendorId: hex(4),
  productId: hex(4),
  serial: text().optional(),
  manufacturer: text().optional(),
  product: text().optional(),
  deviceClass: hex(2).optional(),
  interfaceClasses: z.array(hex(2)).min(1).max(32).optional(),
});

const mdns = z.strictObject({
  kind: z.literal("mdns"),
  ...common,
  instance: text(63).optional().meta({ description: "Service instance name (default: the device name)." }),
  type: z.string().regex(/^_?[A-Za-z0-9][A-Za-z0-9-]{0,61}$/, { error: 'expected a bare service type like "http"' }),
  protocol: z.enum(["tcp", "udp"]).default("tcp"),
  port: z.int().min(1).max(65_535),
  txt: z.record(z.string().min(1).max(255), z.string().max(255)).default({}),
  ttl: z.int().min(1).max(86_400).optional().meta({ description: "Record TTL in seconds (kill: gone after this)." }),
});

const deviceSpec = z.discriminatedUnion("kind", [onvifCamera, homeAssistant, homie, sparkplug, mqttTopic, usb, mdns], {
  error: (issue) =>
    issue.code === "invalid_union"
      ? "expected kind: onvif-camera, home-assistant, homie, sparkplug, mqtt-topic, usb or mdns"
      : undefined,
});

const MQTT_KINDS = new Set(["home-assistant", "homie", "sparkplug", "mqtt-topic"]);

// ---- timeline ----

const at = duration.meta({ description: "When, from the start of the simulation." });
const target = text(64).meta({ description: "A device name, or the name of a counted group (all its copies)." });

const timelineEvent = z.discriminatedUnion(
  "action",
  [
    z.strictObject({ at, action: z.literal("plug"), device: target }),
    z.strictObject({ at, action: z.literal("unplug"), device: target }),
    z.strictObject({ at, action: z.literal("kill"), device: target }),
    z.strictObject({
      at,
      action: z.literal("flap"),
      device: target,
      every: positiveDuration.meta({ description: "Time between plug and unplug." }),
      for: positiveDuration,
    }),
    z.strictObject({
      at,
      action: z.literal("misbehave"),
      device: target,
      mode: z.enum([...CAMERA_MISBEHAVIOURS, "none"]),
    }),
    z.strictObject({ at, action: z.literal("broker-outage"), for: positiveDuration }),
  ],
  {
    error: (issue) =>
      issue.code === "invalid_union"
        ? "expected action: plug, unplug, kill, flap, misbehave or broker-outage"
        : undefined,
  },
);

// ---- the file ----

const ipv4 = z.ipv4({ error: "expected an IPv4 address" });

const broker = z.union(
  [
    z.strictObject({
      embedded: z.strictObject({
        host: ipv4.default("127.0.0.1"),
        port: z.int().min(0).max(65_535).default(0).meta({ description: "0: any free port." }),
      }),
    }),
    z.strictObject({
      uri: z
        .string()
        .regex(/^mqtts?:\/\/[^/@\s]+$/, { error: "expected mqtt://host:port or mqtts://host:port (no credentials)" }),
      username: text().optional(),
      password: text().optional(),
      passwordFromEnv: z
        .string()
        .regex(/^[A-Za-z_][A-Za-z0-9_]*$/)
        .optional(),
    }),
  ],
  { error: "expected {embedded: {host, port}} or {uri, username, password | passwordFromEnv}" },
);

export const scenarioSchema = z.strictObject({
  name: name.optional().meta({ description: "Default: the file name." }),
  onvif: z.strictObject({ interface: ipv4.default("127.0.0.1") }).prefault({}),
  mdns: z.strictObject({ interface: ipv4.default("127.0.0.1") }).prefault({}),
  mqtt: z.strictObject({ broker: broker.default({ embedded: { host: "127.0.0.1", port: 0 } }) }).prefault({}),
  usb: z
    .strictObject({
      directory: text(4096).optional().meta({
        description:
          "Where the simulated sysfs tree is built: a directory that does not exist yet (default: a fresh temp dir), removed at the end. The handler's sysfsRoot is <directory>/bus/usb/devices.",
      }),
    })
    .prefault({}),
  devices: z.array(deviceSpec).min(1).max(1024),
  timeline: z.array(timelineEvent).max(10_000).default([]),
  duration: z
    .union([z.literal("forever"), duration], {
      error: `expected "forever" or ${DURATION_HINT.replace("expected ", "")}`,
    })
    .optional()
    .meta({ description: "How long to run; default: until the last timeline event is done. forever: until Ctrl-C." }),
});

export type ScenarioInput = z.input<typeof scenarioSchema>;
type Parsed = z.output<typeof scenarioSchema>;
type DeviceSpec = z.output<typeof deviceSpec>;

/** One simulated device after count expansion, with its identity filled in. */
export type ScenarioDevice = DeviceSpec & {
  /** The copy's own name (`cam-2`); `group` is the name in the file. */
  name: string;
  group: string;
};
export type TimelineEvent = z.output<typeof timelineEvent>;

export interface Scenario extends Omit<Parsed, "devices" | "name"> {
  name: string;
  devices: ScenarioDevice[];
  /** Sorted by `at` (events at the same time keep their order in the file). */
  timeline: TimelineEvent[];
}

// ---- errors ----

export interface ScenarioIssue {
  /** `devices[2].ip` */
  path: string;
  /** 1-based line in the file, where known. */
  line?: number;
  message: string;
}

/** A scenario that cannot run: every problem, each with its field path, line and what was expected. */
export class ScenarioError extends Error {
  constructor(
    readonly source: string,
    readonly issues: ScenarioIssue[],
  ) {
    super(
      `${source}: invalid scenario\n${issues
        .map((i) => `  ${i.line ? `line ${i.line}: ` : ""}${i.path || "(top level)"}: ${i.message}`)
        .join("\n")}`,
    );
    this.name = "ScenarioError";
  }
}

export function formatPath(path: readonly PropertyKey[]): string {
  return path.map((p, i) => (typeof p === "number" ? `[${p}]` : `${i === 0 ? "" : "."}${String(p)}`)).join("");
}

// ---- parsing ----

/** Parses and validates a scenario from YAML (or JSON) text. Throws ScenarioError. */
export function parseScenario(source: string, content: string): Scenario {
  const lines = new LineCounter();
  const doc = parseDocument(content, { lineCounter: lines, prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ScenarioError(
      source,
      doc.errors.map((e) => ({
        path: "",
        ...(e.linePos?.[0] ? { line: e.linePos[0].line } : {}),
        message: `not valid YAML: ${e.message.split("\n")[0]!.replace(/ at line \d+, column \d+:?$/, "")}`,
      })),
    );
  }
  const lineOf = (path: readonly PropertyKey[]): number | undefined => {
    // The deepest node of the path that exists in the file (a missing field points at its parent).
    for (let n = path.length; n >= 0; n--) {
      const node = n === 0 ? doc.contents : doc.getIn(path.slice(0, n) as (string | number)[], true);
      const range = (node as { range?: [number, number, number] } | undefined)?.range;
      if (range) return lines.linePos(range[0]).line;
    }
    return undefined;
  };
  return validateScenario(source, doc.toJS(), lineOf, basename(source, extname(source)));
}

/** Reads and validates a scenario file. */
export async function loadScenarioFile(file: string): Promise<Scenario> {
  return parseScenario(file, await readFile(file, "utf8"));
}

/** Validates an already parsed scenario object (e.g. written in a test). Throws ScenarioError. */
export function validateScenario(
  source: string,
  input: unknown,
  lineOf: (path: readonly PropertyKey[]) => number | undefined = () => undefined,
  defaultName = "scenario",
): Scenario {
  const issue = (path: readonly PropertyKey[], message: string): ScenarioIssue => {
    const line = lineOf(path);
    return { path: formatPath(path), ...(line ? { line } : {}), message };
  };
  const parsed = scenarioSchema.safeParse(input);
  if (!parsed.success) {
    throw new ScenarioError(
      source,
      parsed.error.issues.flatMap((i) =>
        i.code === "unrecognized_keys"
          ? i.keys.map((key) => issue([...i.path, key], "unknown field (a typo?)"))
          : [
              issue(
                i.path,
                i.message.replace(/^Invalid input: expected (.+), received undefined$/, "missing: expected $1"),
              ),
            ],
      ),
    );
  }
  const problems: ScenarioIssue[] = [];
  const scenario = expand(parsed.data, defaultName, (path, message) => problems.push(issue(path, message)));
  if (problems.length > 0) throw new ScenarioError(source, problems);
  return scenario;
}

/** Fields that tell one device from another: with count > 1 they must hold `{i}`. */
const IDENTITY_FIELDS: Partial<Record<DeviceSpec["kind"], string[]>> = {
  "onvif-camera": ["uuid", "mac", "serial"],
  "home-assistant": ["id"],
  homie: ["id"],
  sparkplug: ["edgeNode"],
  "mqtt-topic": ["topic"],
  usb: ["port"],
  mdns: ["instance"],
};

/** Expands counts, fills in identities, and checks what the schema cannot see (unique names, references). */
function expand(
  parsed: Parsed,
  defaultName: string,
  problem: (path: readonly PropertyKey[], message: string) => void,
): Scenario {
  const scenarioName = parsed.name ?? (/^[a-z0-9-]+$/.test(defaultName) ? defaultName : "scenario");
  const devices: ScenarioDevice[] = [];
  const groups = new Map<string, ScenarioDevice[]>();
  let nextUsbPort = 1;
  const usedUsbPorts = new Set(
    parsed.devices.flatMap((d) => (d.kind === "usb" && d.port && !d.port.includes("{i}") ? [d.port] : [])),
  );

  parsed.devices.forEach((spec, index) => {
    if (groups.has(spec.name)) problem(["devices", index, "name"], `"${spec.name}" is already the name of a device`);
    if (spec.count > 1) {
      for (const field of IDENTITY_FIELDS[spec.kind] ?? []) {
        const value = (spec as Record<string, unknown>)[field];
        if (typeof value === "string" && !value.includes("{i}"))
          problem(["devices", index, field], `with count ${spec.count} it must contain {i} (each copy needs its own)`);
      }
      for (const field of ["port", "unicastPort"] as const)
        if (spec.kind === "onvif-camera" && spec[field] !== undefined)
          problem(["devices", index, field], `with count ${spec.count} the copies cannot share one port: leave it out`);
    }
    const copies: ScenarioDevice[] = [];
    for (let i = 1; i <= spec.count; i++) {
      const copyName = spec.count === 1 ? spec.name : `${spec.name}-${i}`;
      const device = { ...substitute(spec, i), name: copyName, group: spec.name } as ScenarioDevice;
      fillIdentity(device, scenarioName, parsed);
      if (device.kind === "usb" && device.port === undefined) {
        while (usedUsbPorts.has(`1-${nextUsbPort}`)) nextUsbPort++;
        device.port = `1-${nextUsbPort}`;
        usedUsbPorts.add(device.port);
      }
      copies.push(device);
    }
    groups.set(spec.name, copies);
    devices.push(...copies);
  });

  // Two copies must not be one device to a handler.
  const seen = new Map<string, string>();
  for (const device of devices) {
    const index = parsed.devices.findIndex((d) => d.name === device.group);
    for (const key of identityKeys(device)) {
      const other = seen.get(key);
      if (other && other !== device.name)
        problem(["devices", index], `${device.name} and ${other} have the same identity (${key})`);
      seen.set(key, device.name);
    }
  }
  const byName = new Map<string, ScenarioDevice>();
  for (const d of devices) {
    const other = byName.get(d.name);
    if (other && other.group !== d.group)
      problem(
        ["devices", parsed.devices.findIndex((spec) => spec.name === d.group)],
        `"${d.name}" names both a device of "${other.group}" and one of "${d.group}"`,
      );
    byName.set(d.name, d);
  }

  const embedded = "embedded" in parsed.mqtt.broker;
  const timeline = parsed.timeline.map((event, index) => ({ event, index }));
  for (const { event, index } of timeline) {
    if (event.action === "broker-outage") {
      if (!embedded)
        problem(["timeline", index, "action"], "broker-outage needs the embedded broker (mqtt.broker.embedded)");
      continue;
    }
    const targets = groups.get(event.device) ?? (byName.has(event.device) ? [byName.get(event.device)!] : []);
    if (targets.length === 0) {
      problem(["timeline", index, "device"], `no device named "${event.device}"`);
      continue;
    }
    if (event.action === "misbehave" && targets.some((t) => t.kind !== "onvif-camera"))
      problem(["timeline", index, "device"], "misbehave applies to onvif-camera devices only");
    if (event.action === "kill" && targets.some((t) => t.kind === "home-assistant" && !t.availability))
      problem(["timeline", index, "device"], "kill of a home-assistant device needs availability: true");
  }
  if (!devices.some((d) => MQTT_KINDS.has(d.kind)) && parsed.timeline.some((e) => e.action === "broker-outage"))
    problem(["timeline"], "broker-outage without any MQTT device");

  const sorted = timeline.sort((a, b) => a.event.at - b.event.at || a.index - b.index).map((t) => t.event);
  return { ...parsed, name: scenarioName, devices, timeline: sorted };
}

/** Every string in the spec with `{i}` replaced by the copy's number. */
function substitute<T>(value: T, i: number): T {
  if (typeof value === "string") return value.replaceAll("{i}", String(i)) as T;
  if (Array.isArray(value)) return value.map((v) => substitute(v, i)) as T;
  if (value && typeof value === "object")
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, substitute(v, i)])) as T;
  return value;
}

/** Stable defaults: the same scenario gives the same devices (and so the same Device names) every run. */
function fillIdentity(device: ScenarioDevice, scenarioName: string, parsed: Parsed): void {
  switch (device.kind) {
    case "onvif-camera":
      device.uuid ??= stableUuid(`${scenarioName}/${device.name}`);
      device.ip ??= parsed.onvif.interface;
      break;
    case "home-assistant":
    case "homie":
      device.id ??= device.name;
      break;
    case "sparkplug":
      device.edgeNode ??= device.name;
      break;
    case "mdns":
      device.instance ??= device.name;
      device.type = device.type.replace(/^_/, "");
      break;
    default:
  }
}

function identityKeys(device: ScenarioDevice): string[] {
  switch (device.kind) {
    case "onvif-camera":
      return [`onvif uuid ${device.uuid!.replace(/^urn:uuid:/i, "").toLowerCase()}`];
    case "home-assistant":
      return [`home-assistant ${device.prefix ?? "homeassistant"}/${device.component}/${device.id}`];
    case "homie":
      return [`homie ${device.prefix ?? "homie"}/${device.version}/${device.id}`];
    case "sparkplug":
      return [`sparkplug ${device.group}/${device.edgeNode}`];
    case "mqtt-topic":
      return [`topic ${device.topic}`];
    case "usb":
      return [`usb port ${device.port}`];
    case "mdns":
      return [`mdns ${device.instance}._${device.type}._${device.protocol}`];
  }
}

/** A UUID (version 8 layout, name-based) from a name. */
export function stableUuid(seed: string): string {
  const h = createHash("sha256").update(`spindle-simulate:${seed}`).digest("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-8${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

/** The device names an event's `device` field means (a group stands for all its copies). */
export function targetsOf(scenario: Scenario, device: string): ScenarioDevice[] {
  const group = scenario.devices.filter((d) => d.group === device);
  return group.length > 0 ? group : scenario.devices.filter((d) => d.name === device);
}

export const isMqttDevice = (device: ScenarioDevice): boolean => MQTT_KINDS.has(device.kind);
