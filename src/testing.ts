/**
 * `spindle/testing`: Spindle's simulated devices for an app team's own tests (vitest, node:test,
 * anything that runs TypeScript through tsx or vite). Each fake speaks the real protocol, so the
 * Spindle agent on a cluster finds it as it would find the real device:
 *
 * - `FakeCamera`: an ONVIF camera (WS-Discovery over real UDP multicast, SOAP device and media
 *   services over HTTP, WS-UsernameToken credentials, misbehaviour on demand);
 * - `MqttDeviceSimulator`: Home Assistant, Homie and Sparkplug B devices and plain topic
 *   publishers on a real broker; `EmbeddedBroker`: an in-process one with outages on demand;
 * - `UsbFixture`: a sysfs tree shaped like /sys/bus/usb/devices, with plug and unplug;
 * - `advertiseService`: an mDNS (DNS-SD) service;
 * - `Simulation` / `runScenario`: a whole scenario file (the format of `spindle simulate`);
 * - `SpindleCluster`, `spinVariables`, `waitFor`: read Devices and SpinApps to assert on.
 *
 * Nothing here is loaded by the agent or the controller.
 */

export {
  type Advertisement,
  type AdvertiseOptions,
  advertiseService,
} from "../discovery-handlers/mdns/mock.js";
export {
  type HomeAssistantDeviceOptions,
  type HomieDeviceOptions,
  MqttDeviceSimulator,
  type PlainTopicOptions,
  type SimulatedHomeAssistantDevice,
  type SimulatedHomieDevice,
  type SimulatedPlainTopic,
  type SimulatedSparkplugNode,
  type SimulatorOptions,
  type SparkplugNodeOptions,
} from "../discovery-handlers/mqtt/mock.js";
export {
  FakeCamera,
  type FakeCameraOptions,
  type FakeProfile,
  fakeUuid,
  type Misbehaviour,
} from "../discovery-handlers/onvif/fake-camera.js";
export { type FakeUsbDevice, UsbFixture } from "../discovery-handlers/usb/mock.js";
export { EmbeddedBroker } from "./simulate/broker.js";
export {
  DEVICE_LABEL,
  DEVICE_SPIN_APP_LABEL,
  type DeviceObject,
  type SpinAppObject,
  SpindleCluster,
  spinVariables,
  waitFor,
} from "./simulate/cluster-view.js";
export type { SimulatedDevice } from "./simulate/devices.js";
export {
  loadScenarioFile,
  parseScenario,
  type Scenario,
  type ScenarioDevice,
  ScenarioError,
  type ScenarioInput,
  type ScenarioIssue,
  scenarioSchema,
  type TimelineEvent,
  validateScenario,
} from "./simulate/scenario.js";
export { runScenario, Simulation, type SimulationEvent, type SimulationOptions } from "./simulate/simulation.js";
