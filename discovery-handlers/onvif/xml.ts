import { XMLParser } from "fast-xml-parser";

/**
 * Safe XML reading for everything a camera sends (WS-Discovery datagrams, SOAP responses).
 *
 * - Documents with a DTD are refused before parsing: SOAP forbids them (SOAP 1.2 part 1 §5), and
 *   refusing them means no entity of any kind can be declared, so XML bombs cannot expand.
 * - The parser itself never expands entities (`processEntities: false`); `decodeText` decodes
 *   only the five predefined entities and character references, in one pass, so output is never
 *   longer than input.
 * - Namespace prefixes are stripped; attributes are kept under `@_name`; values stay strings.
 * - Size and element count are bounded before the parser runs; parse errors become results.
 */

export type XmlNode = unknown;
export type XmlResult = { ok: true; value: Record<string, unknown> } | { ok: false; error: string };

export interface XmlLimits {
  /** Largest document accepted, in UTF-16 code units (callers bound bytes before decoding). */
  maxChars: number;
  /** Most `<` characters (elements, closing tags, comments) accepted. */
  maxTags: number;
}

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: "@_",
  removeNSPrefix: true,
  processEntities: false,
  htmlEntities: false,
  parseTagValue: false,
  parseAttributeValue: false,
  ignoreDeclaration: true,
  ignorePiTags: true,
  trimValues: true,
});

const DTD = /<!(DOCTYPE|ENTITY|ELEMENT|ATTLIST)/i;

export function parseXml(text: string, limits: XmlLimits): XmlResult {
  if (typeof text !== "string") return { ok: false, error: "not text" };
  if (text.length > limits.maxChars) return { ok: false, error: `document larger than ${limits.maxChars} characters` };
  if (DTD.test(text)) return { ok: false, error: "document type declarations are not allowed" };
  let tags = 0;
  for (let i = text.indexOf("<"); i !== -1; i = text.indexOf("<", i + 1)) {
    if (++tags > limits.maxTags) return { ok: false, error: `more than ${limits.maxTags} tags` };
  }
  if (tags === 0) return { ok: false, error: "not XML" };
  try {
    const value: unknown = parser.parse(text);
    if (!isRecord(value)) return { ok: false, error: "not XML" };
    return { ok: true, value };
  } catch (err) {
    return { ok: false, error: `malformed XML: ${shortError(err)}` };
  }
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** The children named `name` (an element that appears once is not an array in the parsed tree). */
export function children(node: XmlNode, name: string, max = 1024): XmlNode[] {
  if (!isRecord(node)) return [];
  const value = Object.hasOwn(node, name) ? node[name] : undefined;
  if (value === undefined) return [];
  return Array.isArray(value) ? value.slice(0, max) : [value];
}

/** The first child named `name`. */
export function child(node: XmlNode, name: string): XmlNode | undefined {
  return children(node, name, 1)[0];
}

/** Follow a path of element names, taking the first match at each step. */
export function path(node: XmlNode, ...names: string[]): XmlNode | undefined {
  let current: XmlNode | undefined = node;
  for (const name of names) {
    current = child(current, name);
    if (current === undefined) return undefined;
  }
  return current;
}

/** Text content of an element (entities decoded), or undefined when it has none. */
export function text(node: XmlNode | undefined): string | undefined {
  if (typeof node === "string") return decodeText(node);
  if (typeof node === "number" || typeof node === "boolean") return String(node);
  if (isRecord(node) && Object.hasOwn(node, "#text")) return text(node["#text"]);
  if (Array.isArray(node)) return text(node[0]);
  return undefined;
}

/** An attribute value (prefix stripped), entities decoded. */
export function attribute(node: XmlNode | undefined, name: string): string | undefined {
  if (!isRecord(node)) return undefined;
  const value = node[`@_${name}`];
  return typeof value === "string" ? decodeText(value) : undefined;
}

const NAMED: Record<string, string> = { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'" };

/** Decode predefined entities and character references in one pass; unknown references stay as written. */
export function decodeText(raw: string): string {
  if (!raw.includes("&")) return raw;
  return raw.replace(/&(#x[0-9a-fA-F]{1,6}|#[0-9]{1,7}|lt|gt|amp|quot|apos);/g, (whole, ref: string) => {
    if (ref.startsWith("#")) {
      const code = ref[1] === "x" ? Number.parseInt(ref.slice(2), 16) : Number.parseInt(ref.slice(1), 10);
      if (!Number.isFinite(code) || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return "";
      return String.fromCodePoint(code);
    }
    return NAMED[ref] ?? whole;
  });
}

/** Escape text for inclusion in XML content or attribute values. */
export function escapeXml(value: string): string {
  return value.replace(/[<>&"']/g, (c) => `&${{ "<": "lt", ">": "gt", "&": "amp", '"': "quot", "'": "apos" }[c]};`);
}

/** A short, single-line error description: no device text beyond a few characters. */
export function shortError(err: unknown, max = 160): string {
  const message = err instanceof Error ? err.message : String(err);
  const line = message.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]+/g, " ").trim();
  return line.length > max ? `${line.slice(0, max)}…` : line;
}
