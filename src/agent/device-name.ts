import { createHash } from "node:crypto";

const HASH_LENGTH = 12; // 48 bits; collisions are still detected, never merged
const MAX_NAME = 63; // the name is also the extended resource's name part: a qualified name, <= 63

/** The identity a Device is hashed from: a shared device is the same everywhere; a local one is per node. */
export function deviceIdentity(id: string, shared: boolean, nodeName: string): string {
  return shared ? id : `${id}@${nodeName}`;
}

/** `<configuration>-<hash>`: DNS-1123, at most 63 characters, the same for the same identity. */
export function deviceName(configurationName: string, identity: string): string {
  const hash = createHash("sha256").update(configurationName).update("\0").update(identity).digest("hex");
  const prefix = configurationName
    .slice(0, MAX_NAME - HASH_LENGTH - 1)
    .replace(/[^a-z0-9]+$/, "")
    .replace(/\./g, "-");
  return `${prefix}-${hash.slice(0, HASH_LENGTH)}`;
}

/** The node extended resource that places a SpinApp next to this device. */
export function extendedResourceName(deviceName: string): string {
  return `spindle.dev/${deviceName}`;
}

/**
 * The label a node puts on every Device it publishes, so its agent can watch only those (a
 * list's membership cannot be field-selected). A node name that is not a valid label name
 * (over 63 characters) is hashed.
 */
export function nodeLabel(nodeName: string): string {
  const plain = /^[a-z0-9A-Z]([-a-z0-9_.A-Z]{0,61}[a-z0-9A-Z])?$/.test(nodeName);
  return `node.spindle.dev/${plain ? nodeName : `h-${createHash("sha256").update(nodeName).digest("hex").slice(0, 32)}`}`;
}
