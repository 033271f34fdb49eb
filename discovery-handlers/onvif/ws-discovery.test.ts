import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { fuzzRuns } from "../../test/fuzz.js";
import { billionLaughs } from "./fake-camera.js";
import {
  buildBye,
  buildHello,
  buildProbe,
  buildProbeMatches,
  type EndpointDescription,
  LIMITS,
  MAX_DATAGRAM,
  messageKind,
  type ParseResult,
  parseBye,
  parseHello,
  parseHostPort,
  parseProbe,
  parseProbeMatches,
  probeMatchesDevice,
  type WsdEndpoint,
} from "./ws-discovery.js";

const camera: EndpointDescription = {
  address: "urn:uuid:5f5a69c2-e0ae-504f-829b-00fcdab4ee99",
  types: "dn:NetworkVideoTransmitter tds:Device",
  scopes: ["onvif://www.onvif.org/name/Cam%201", "onvif://www.onvif.org/Profile/Streaming"],
  xaddrs: ["http://192.0.2.10/onvif/device_service", "http://[fe80::1]:8080/onvif/device_service"],
  metadataVersion: 3,
};
const seq = { instanceId: 1, messageNumber: 1 };

/** A ProbeMatch as a Hikvision-style camera sends it: other prefixes, whitespace, query strings. */
const realWorld = `<?xml version="1.0" encoding="UTF-8"?>
<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"
  xmlns:wsadis="http://schemas.xmlsoap.org/ws/2004/08/addressing"
  xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery"
  xmlns:dn="http://www.onvif.org/ver10/network/wsdl">
 <env:Header>
  <wsadis:MessageID>urn:uuid:0b1c2d3e-0000-4000-8000-000000000001</wsadis:MessageID>
  <wsadis:RelatesTo>uuid:aaaa</wsadis:RelatesTo>
  <wsadis:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsadis:To>
  <wsadis:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches</wsadis:Action>
 </env:Header>
 <env:Body>
  <d:ProbeMatches>
   <d:ProbeMatch>
    <wsadis:EndpointReference>
     <wsadis:Address>urn:uuid:4419a1c2-3b1c-11b2-8c4d-bcbac2a1b2c3</wsadis:Address>
    </wsadis:EndpointReference>
    <d:Types>dn:NetworkVideoTransmitter</d:Types>
    <d:Scopes>onvif://www.onvif.org/type/video_encoder
      onvif://www.onvif.org/name/HIKVISION%20DS-2CD2143G0-I onvif://www.onvif.org/hardware/DS-2CD2143G0-I</d:Scopes>
    <d:XAddrs>http://192.0.2.64/onvif/device_service?a=1&amp;b=2 http://[fe80::bec:aff:fe1f:2c3]/onvif/device_service</d:XAddrs>
    <d:MetadataVersion>10</d:MetadataVersion>
   </d:ProbeMatch>
  </d:ProbeMatches>
 </env:Body>
</env:Envelope>`;

function okValue<T>(result: ParseResult<T>): T {
  if (!result.ok) throw new Error(`expected ok, got ${result.error}`);
  return result.value;
}

/** What every parsed endpoint must satisfy, whatever the input. */
function checkBounded(e: WsdEndpoint) {
  expect(e.uuid.length).toBeLessThanOrEqual(LIMITS.addressChars);
  expect(e.uuid).toMatch(/^[\x21-\x7e]+$/);
  expect(e.xaddrs.length).toBeLessThanOrEqual(LIMITS.xaddrs);
  expect(e.scopes.length).toBeLessThanOrEqual(LIMITS.scopes);
  expect(e.types.length).toBeLessThanOrEqual(LIMITS.types);
  for (const s of [...e.xaddrs, ...e.scopes, ...e.types]) {
    expect(s.length).toBeLessThanOrEqual(LIMITS.tokenChars);
    expect(s).not.toMatch(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\s]/);
  }
  for (const x of e.xaddrs) expect(x).toMatch(/^https?:\/\//);
}

describe("WS-Discovery messages", () => {
  it("round-trips ProbeMatches, Hello and Bye", () => {
    const pm = okValue(parseProbeMatches(buildProbeMatches(camera, "uuid:probe-1", seq)));
    expect(pm.relatesTo).toBe("uuid:probe-1");
    expect(pm.matches).toHaveLength(1);
    expect(pm.matches[0]).toEqual({
      uuid: camera.address,
      xaddrs: ["http://192.0.2.10/onvif/device_service", "http://[fe80::1]:8080/onvif/device_service"],
      scopes: camera.scopes,
      types: ["dn:NetworkVideoTransmitter", "tds:Device"],
      onvif: true,
      metadataVersion: "3",
    });
    const hello = okValue(parseHello(buildHello(camera, seq)));
    expect(hello.uuid).toBe(camera.address);
    expect(hello.onvif).toBe(true);
    expect(hello.xaddrs).toHaveLength(2);
    const bye = okValue(parseBye(buildBye(camera, seq)));
    expect(bye.uuid).toBe(camera.address);
    expect(bye.xaddrs).toEqual([]);
    expect(messageKind(buildBye(camera, seq))).toBe("Bye");
    expect(messageKind(buildProbe("uuid:x"))).toBe("Probe");
  });

  it("reads a real-world ProbeMatch with other prefixes, line breaks and escaped query strings", () => {
    const pm = okValue(parseProbeMatches(realWorld));
    expect(pm.relatesTo).toBe("uuid:aaaa");
    const [m] = pm.matches;
    expect(m?.uuid).toBe("urn:uuid:4419a1c2-3b1c-11b2-8c4d-bcbac2a1b2c3");
    expect(m?.xaddrs).toEqual([
      "http://192.0.2.64/onvif/device_service?a=1&b=2",
      "http://[fe80::bec:aff:fe1f:2c3]/onvif/device_service",
    ]);
    expect(m?.scopes).toHaveLength(3);
    expect(m?.onvif).toBe(true);
  });

  it("tells message kinds apart and refuses the wrong one", () => {
    expect(parseHello(buildProbeMatches(camera, undefined, seq)).ok).toBe(false);
    expect(parseProbeMatches(buildHello(camera, seq)).ok).toBe(false);
    expect(parseBye(buildProbe("uuid:1")).ok).toBe(false);
    const probe = okValue(
      parseProbe(buildProbe("uuid:1", "dn:NetworkVideoTransmitter", ["onvif://www.onvif.org/name"])),
    );
    expect(probe).toEqual({
      messageId: "uuid:1",
      types: ["dn:NetworkVideoTransmitter"],
      scopes: ["onvif://www.onvif.org/name"],
    });
  });

  it("recognizes ONVIF types by namespace, not by prefix alone", () => {
    const wsdPrinter = buildHello({ ...camera, types: "wsdp:Device" }, seq).replace(
      'xmlns:d="',
      'xmlns:wsdp="http://schemas.xmlsoap.org/ws/2006/02/devprof" xmlns:d="',
    );
    expect(okValue(parseHello(wsdPrinter)).onvif).toBe(false);
    expect(okValue(parseHello(buildHello({ ...camera, types: "tds:Device" }, seq))).onvif).toBe(true);
    expect(okValue(parseHello(buildHello({ ...camera, types: "x:NetworkVideoTransmitter" }, seq))).onvif).toBe(true);
  });

  it("sanitizes and bounds hostile content", () => {
    const hostile = buildProbeMatches(
      {
        ...camera,
        scopes: [
          "onvif://www.onvif.org/name/ok",
          "onvif://www.onvif.org/name/../../etc/passwd",
          `onvif://www.onvif.org/name/${"A".repeat(10_000)}`,
          "onvif://www.onvif.org/name/bell\u0007\u001b[31m",
          "onvif://www.onvif.org/name/CTRLREF",
          ...Array.from({ length: 500 }, (_, i) => `s${i}`),
        ],
        xaddrs: [
          "javascript:alert(1)",
          "file:///etc/passwd",
          "http://u:p@host/x",
          `http://${"b".repeat(5000)}/`,
          "http://ok/",
        ],
      },
      undefined,
      seq,
    ).replace("CTRLREF", "&#1;&#x1b;&#0;&#xD800;x");
    const [m] = okValue(parseProbeMatches(hostile)).matches;
    if (!m) throw new Error("no match");
    checkBounded(m);
    expect(m.xaddrs).toEqual(["http://ok/"]);
    expect(m.scopes).toContain("onvif://www.onvif.org/name/bell[31m");
    expect(m.scopes).toContain("onvif://www.onvif.org/name/x");
    expect(m.scopes.some((s) => s.includes("AAAA"))).toBe(false);
    expect(m.scopes).toHaveLength(LIMITS.scopes);
  });

  it("refuses a missing or unprintable endpoint address, and matches without addresses", () => {
    expect(parseProbeMatches(buildProbeMatches({ ...camera, address: "" }, undefined, seq)).ok).toBe(false);
    expect(
      parseProbeMatches(buildProbeMatches({ ...camera, address: "urn:uuid:\u00e9t\u00e9" }, undefined, seq)).ok,
    ).toBe(false);
    expect(parseProbeMatches(buildProbeMatches({ ...camera, xaddrs: ["ftp://x/"] }, undefined, seq)).ok).toBe(false);
  });

  it("does not expand XML bombs, and refuses DTDs, deep nesting and oversize input quickly", () => {
    const started = performance.now();
    const bombs = [
      billionLaughs(),
      billionLaughs(
        `<s:Envelope><s:Body><d:ProbeMatches><d:ProbeMatch><a:EndpointReference><a:Address>&lol9;</a:Address></a:EndpointReference><d:XAddrs>http://x/&lol9;</d:XAddrs></d:ProbeMatch></d:ProbeMatches></s:Body></s:Envelope>`,
      ),
      billionLaughs().replace("DOCTYPE", "doctype"),
      `<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><s:Envelope><s:Body><d:Hello>&e;</d:Hello></s:Body></s:Envelope>`,
    ];
    for (const bomb of bombs) {
      for (const parse of [parseProbeMatches, parseHello, parseBye, parseProbe]) {
        const result = parse(bomb);
        expect(result.ok).toBe(false);
        if (!result.ok) expect(result.error.length).toBeLessThan(300);
      }
    }
    expect(parseHello(`<a>${"<b>".repeat(30_000)}`).ok).toBe(false);
    expect(parseHello(`<s:Envelope><s:Body>${" ".repeat(MAX_DATAGRAM)}</s:Body></s:Envelope>`).ok).toBe(false);
    expect(performance.now() - started).toBeLessThan(5_000);
  });

  it("never throws on random input (fast-check)", () => {
    const fragments = fc.constantFrom(
      "<",
      ">",
      "</",
      "/>",
      "s:Envelope",
      "s:Body",
      "s:Header",
      "d:ProbeMatches",
      "d:ProbeMatch",
      "d:Hello",
      "d:Bye",
      "a:EndpointReference",
      "a:Address",
      "a:Action",
      "a:RelatesTo",
      "d:XAddrs",
      "d:Scopes",
      "d:Types",
      "urn:uuid:1",
      "http://h/x",
      "http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches",
      "dn:NetworkVideoTransmitter",
      "&amp;",
      "&#1;",
      "&#xD800;",
      "&lol;",
      "<!DOCTYPE",
      "<![CDATA[",
      "]]>",
      "<!--",
      "-->",
      '="',
      '"',
      " ",
      "\u0000",
      "__proto__",
      "constructor",
      "xmlns:a=",
    );
    const xmlish = fc.array(fragments, { maxLength: 80 }).map((parts) => parts.join(""));
    const input = fc.oneof(
      xmlish,
      fc.string({ maxLength: 300 }),
      fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
    );
    fc.assert(
      fc.property(input, (raw) => {
        for (const parse of [parseProbeMatches, parseHello, parseBye, parseProbe] as const) {
          const result = (parse as (x: string | Buffer) => ParseResult<unknown>)(raw);
          expect(typeof result.ok).toBe("boolean");
        }
        const pm = parseProbeMatches(raw);
        if (pm.ok) for (const m of pm.value.matches) checkBounded(m);
        const hello = parseHello(raw);
        if (hello.ok) checkBounded(hello.value);
      }),
      { numRuns: fuzzRuns(3000, "WS-Discovery messages") },
    );
  });

  it("matches probes against device types and scopes", () => {
    const types = ["dn:NetworkVideoTransmitter", "tds:Device"];
    const scopes = ["onvif://www.onvif.org/name/Alpha", "onvif://www.onvif.org/Profile/Streaming"];
    const probe = (t: string[], s: string[]) => ({ types: t, scopes: s });
    expect(probeMatchesDevice(probe(["x:NetworkVideoTransmitter"], []), types, scopes)).toBe(true);
    expect(probeMatchesDevice(probe([], ["onvif://www.onvif.org/name"]), types, scopes)).toBe(true);
    expect(probeMatchesDevice(probe([], ["onvif://www.onvif.org/name/Alpha/"]), types, scopes)).toBe(true);
    expect(probeMatchesDevice(probe([], ["onvif://www.onvif.org/name/Al"]), types, scopes)).toBe(false);
    expect(probeMatchesDevice(probe(["wsdp:Printer"], []), types, scopes)).toBe(false);
  });

  it("parses unicast host[:port]", () => {
    expect(parseHostPort("192.0.2.1")).toEqual({ host: "192.0.2.1", port: 3702 });
    expect(parseHostPort("cam.local:3703")).toEqual({ host: "cam.local", port: 3703 });
    expect(parseHostPort("[::1]:9")).toBeUndefined();
    expect(parseHostPort("host:0")).toBeUndefined();
    expect(parseHostPort("host:70000")).toBeUndefined();
    expect(parseHostPort("a/b")).toBeUndefined();
  });
});
