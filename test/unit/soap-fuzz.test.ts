import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { deviceInformation, networkInterfaces } from "../../discovery-handlers/onvif/device-service.js";
import { billionLaughs } from "../../discovery-handlers/onvif/fake-camera.js";
import { fuzzRuns } from "../fuzz.js";

const good = `<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:tds="http://www.onvif.org/ver10/device/wsdl"><s:Body>
<tds:GetDeviceInformationResponse><tds:Manufacturer>Acme</tds:Manufacturer><tds:Model>C1</tds:Model><tds:FirmwareVersion>1.10</tds:FirmwareVersion><tds:SerialNumber>0012345678901234567</tds:SerialNumber><tds:HardwareId>h</tds:HardwareId></tds:GetDeviceInformationResponse>
<tds:GetNetworkInterfacesResponse><tds:NetworkInterfaces token="eth0"><tt:Enabled xmlns:tt="x">true</tt:Enabled><tt:Info xmlns:tt="x"><tt:HwAddress>02:00:00:00:00:01</tt:HwAddress></tt:Info></tds:NetworkInterfaces></tds:GetNetworkInterfacesResponse>
</s:Body></s:Envelope>`;

/** A valid response with random cuts, duplications and insertions. */
const mutated = fc
  .array(fc.tuple(fc.nat(good.length), fc.nat(64), fc.string({ maxLength: 24 })), { maxLength: 6 })
  .map((edits) => edits.reduce((doc, [at, cut, insert]) => doc.slice(0, at) + insert + doc.slice(at + cut), good));

describe("SOAP responses from cameras (fuzzed)", () => {
  it("reads a good response", () => {
    expect(deviceInformation(good, 1 << 20)).toMatchObject({
      manufacturer: "Acme",
      firmwareVersion: "1.10",
      serialNumber: "0012345678901234567",
    });
    expect(networkInterfaces(good, 1 << 20)?.[0]?.mac).toBe("02:00:00:00:00:01");
  });

  it("refuses entity expansion instead of expanding it", () => {
    expect(deviceInformation(billionLaughs(), 1 << 20)).toBeUndefined();
  });

  it("never throws on mutated or random responses, and bounds what it returns", () => {
    fc.assert(
      fc.property(fc.oneof(mutated, fc.string({ maxLength: 400 })), (xml) => {
        const info = deviceInformation(xml, 1 << 16);
        for (const v of Object.values(info ?? {})) expect(typeof v).toBe("string");
        const nics = networkInterfaces(xml, 1 << 16);
        expect(nics === undefined || nics.length <= 32).toBe(true);
      }),
      { numRuns: fuzzRuns(3000, "SOAP responses") },
    );
  });
});
