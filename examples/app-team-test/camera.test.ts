/**
 * An app team's end-to-end test for a SpinApp that reads ONVIF cameras: start a fake camera,
 * check that Spindle runs the app for it with the camera's addresses as Spin variables, unplug
 * the camera, check the app is torn down. Only `spindle/testing` is needed; the cluster is any
 * cluster with Spindle installed (here: the repository's sandbox, see sandbox.ts).
 */

import { FakeCamera, fakeUuid, type SpindleCluster, spinVariables, waitFor } from "spindle/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sandboxWithSpindle } from "./sandbox.js";

const GRACE_SECONDS = 2;

describe("the thumbnailer runs for every camera, and stops when the camera goes", () => {
  let env: Awaited<ReturnType<typeof sandboxWithSpindle>>;
  let cluster: SpindleCluster;
  let camera: FakeCamera | undefined;
  const uuid = fakeUuid();
  const configuration = () => `app-team-cams-${env.run}`;
  const thumbnailers = () => cluster.spinApps(env.namespace, "thumbnailer");

  beforeAll(async () => {
    env = await sandboxWithSpindle();
    cluster = env.cluster;
    // What the edge operator would declare: cameras on this interface (here only our fake one).
    await cluster.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceConfiguration",
      metadata: { name: configuration() },
      spec: {
        discoveryHandler: {
          name: "onvif",
          discoveryDetails: { interface: "127.0.0.1", uuids: { action: "Include", items: [uuid] } },
        },
        offlineGraceSeconds: GRACE_SECONDS,
      },
    });
    // The app team's own request: one thumbnailer per camera, told where the camera is.
    await cluster.apply({
      apiVersion: "spindle.dev/v1alpha1",
      kind: "DeviceSpinApp",
      metadata: { name: "thumbnailer", namespace: env.namespace },
      spec: {
        deviceConfiguration: configuration(),
        variables: [
          { name: "camera_url", fromProperty: "ONVIF_DEVICE_SERVICE_URL" },
          { name: "stream_uri", fromProperty: "ONVIF_STREAM_URI" },
        ],
        template: {
          spec: { image: "ghcr.io/acme/thumbnailer:v1", executor: "containerd-shim-spin", replicas: 1 },
        },
      },
    });
  });

  afterAll(async () => {
    await camera?.stop();
    await cluster?.delete("DeviceConfiguration", configuration());
    await env?.stop();
  });

  it("starts a thumbnailer for a new camera, with its device service and stream addresses", async () => {
    camera = await FakeCamera.start({ uuid, ip: "127.0.0.1", interface: "127.0.0.1", model: "Cam-1" });
    const [app] = await waitFor("a thumbnailer SpinApp", async () => {
      const apps = await thumbnailers();
      return apps.length === 1 ? apps : undefined;
    });
    expect(spinVariables(app!)).toEqual({
      camera_url: camera.xaddr,
      stream_uri: camera.streamUri("profile_1"),
    });
  });

  it("tears the thumbnailer down once the camera has said Bye and the grace period is over", async () => {
    await camera!.stop({ bye: true });
    camera = undefined;
    await waitFor("no thumbnailer", async () => (await thumbnailers()).length === 0, {
      timeoutMs: GRACE_SECONDS * 1000 + 20_000,
    });
  });
});
