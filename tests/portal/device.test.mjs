// The overview page and the page of one device, in real Chromium against a running hub, with a
// real MQTT device (mqtt-device.mjs) answering: the counts after real connects and refusals; the
// twin's desired properties edited with its etag (and a stale etag refused with the reason); a
// cloud-to-device message received by the device; a direct method answered by it; its telemetry
// arriving live. A browser opening the hub's root lands on the portal, and no request of any page
// fails (the icon included). Screenshots go to test-artifacts/portal/ (to docs/, which README
// shows, with IOTHUB_UPDATE_SCREENSHOTS=1).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";
import { MqttDevice } from "./mqtt-device.mjs";

const ROOT = resolve(import.meta.dirname, "../..");
const BIN = process.env.IOTHUB_BIN || join(ROOT, "target/debug/iothub");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARTIFACTS = join(ROOT, "test-artifacts/portal");
mkdirSync(ARTIFACTS, { recursive: true });
// README's pictures are refreshed only when asked (IOTHUB_UPDATE_SCREENSHOTS=1), so a test run
// leaves the repository as it found it.
const SHOTS = process.env.IOTHUB_UPDATE_SCREENSHOTS === "1" ? join(ROOT, "docs") : ARTIFACTS;

let dir, hub, base, mqttPort, browser, page, device;
const failures = [];

function iothub(...args) {
  return execFileSync(BIN, ["--data", join(dir, "data"), ...args], { cwd: dir, encoding: "utf8" });
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "iothub-portal-device-"));
  hub = spawn(BIN, ["--data", join(dir, "data"), "serve", "--https", "127.0.0.1:0", "--mqtt", "127.0.0.1:0", "--metrics", "off"], {
    cwd: dir, env: { ...process.env, IOTHUB_LOG: "warn" }, stdio: ["ignore", "pipe", "inherit"],
  });
  const lines = createInterface({ input: hub.stdout });
  await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error("the hub did not start")), 60000);
    lines.on("line", (line) => {
      const mq = line.match(/^mqtt listening on .*:(\d+)$/);
      if (mq) mqttPort = Number(mq[1]);
      const https = line.match(/^https listening on (\S+)$/);
      if (https) { base = "https://" + https[1]; clearTimeout(timer); ok(); }
    });
  });
  // A verified root, two registered devices, one of them connected; one refused connection.
  iothub("pki", "ca", "root");
  iothub("cert", "add", "root", "root.pem");
  iothub("cert", "prove", "root", "--key", "root.key");
  for (const id of ["pump-1", "pump-2"]) {
    iothub("pki", "device", id, "--ca-cert", "root.pem", "--ca-key", "root.key");
    iothub("device", "add", id);
  }
  const files = (id) => ({ host: "127.0.0.1", port: mqttPort, ca: join(dir, "data/tls/ca.pem"), cert: join(dir, id + ".pem"), key: join(dir, id + ".key") });
  const stranger = new MqttDevice({ ...files("pump-2"), id: "not-registered" });
  await assert.rejects(stranger.connected, /CONNACK 5/);
  device = new MqttDevice({ ...files("pump-1"), id: "pump-1" });
  await device.ready();
  device.publish("devices/pump-1/messages/events/", JSON.stringify({ temperature: 21.5 }));

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  // Every failed request or console error of any page fails the last test.
  page.on("response", (r) => { if (r.status() >= 400) failures.push(r.status() + " " + r.url()); });
  page.on("console", (m) => { if (m.type() === "error") failures.push("console: " + m.text()); });
});

after(async () => {
  device?.close();
  await browser?.close();
  hub?.kill("SIGKILL");
});

test("a browser at the hub's root is sent to the portal, then the overview after sign-in", async () => {
  const r = await page.goto(base + "/");
  assert.equal(r.status(), 401, "the portal asks to sign in");
  assert.match(page.url(), /\/portal$/);
  failures.length = 0;   // that 401 is the sign-in page itself, expected
  const link = iothub("portal-link").trim();
  // The link names the hub as clients do (localhost); the session cookie belongs to that origin.
  base = new URL(link).origin;
  await page.goto(link);
  assert.match(page.url(), /\/portal\/overview$/);
  const tiles = page.getByLabel("The hub at a glance");
  await tiles.getByText("Verified CAs").waitFor();
  const tile = (label) => tiles.locator(".tile", { hasText: label }).locator(".tile-value");
  assert.equal(await tile("Verified CAs").textContent(), "1");
  assert.equal(await tile("Devices").textContent(), "2");
  assert.equal(await tile("Connected now").textContent(), "1");
  assert.equal(await tile("Refusals, last hour").textContent(), "1");
  await page.getByRole("table", { name: "Refusals by reason" }).getByText("unknown device").waitFor();
  await page.screenshot({ path: join(SHOTS, "portal-overview.png"), fullPage: true });
});

test("the device page: details, twin with etag, C2D, a direct method, live telemetry", async () => {
  await page.goto(base + "/portal/devices");
  await page.getByRole("link", { name: "pump-1" }).click();
  await page.waitForURL(/\/portal\/device\?id=pump-1$/);
  const details = page.getByLabel("Device", { exact: true });
  await details.getByText("Connected from").waitFor();
  assert.match(await details.textContent(), /certificateAuthority/);
  assert.match(await details.textContent(), /Certificate expiry\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z/);

  // Twin: save desired with the etag the page read.
  await page.getByRole("textbox", { name: /Desired properties/ }).fill('{"interval": 30}');
  await page.getByRole("button", { name: "Save desired" }).click();
  await page.getByText(/desired \$version 2/).waitFor();
  const twin = JSON.parse(iothub("-o", "json", "twin", "show", "pump-1"));
  assert.equal(twin.properties.desired.interval, 30);
  // Someone else changes it: the page's etag is stale, and the hub's refusal is shown.
  iothub("twin", "update", "pump-1", "--desired", '{"interval": 60}');
  await page.getByRole("textbox", { name: /Desired properties/ }).fill('{"interval": 45}');
  await page.getByRole("button", { name: "Save desired" }).click();
  await page.locator("#desired-error").getByText(/changed since this page read it/).waitFor();
  // The refusal under test: its response, and the console's note of it.
  assert.equal(failures.filter((f) => f.includes("412")).length, 2, failures.join("; "));
  failures.splice(0, failures.length, ...failures.filter((f) => !f.includes("412")));

  // A cloud-to-device message, received by the device.
  await page.getByLabel("Message body").fill("open the valve");
  await page.getByRole("button", { name: "Send" }).click();
  await page.locator("#c2d-result").getByText(/Queued as/).waitFor();
  for (let i = 0; i < 100 && !device.c2d.includes("open the valve"); i++) await new Promise((r) => setTimeout(r, 50));
  assert.ok(device.c2d.includes("open the valve"), "the device received the message");

  // A direct method, answered by the device.
  await page.getByLabel("Method name").fill("reboot");
  await page.getByLabel("Payload (JSON)").fill('{"delay": 1}');
  await page.getByRole("button", { name: "Invoke" }).click();
  await page.locator("#method-answer").getByText(/status 200/).waitFor();
  assert.match(await page.locator("#method-answer").textContent(), /"answered": "reboot"/);
  assert.deepEqual(device.methods.map((m) => [m.name, JSON.parse(m.payload)]), [["reboot", { delay: 1 }]]);

  // Live telemetry: a message sent now appears without reloading.
  device.publish("devices/pump-1/messages/events/", JSON.stringify({ temperature: 22.25 }));
  await page.locator("#telemetry").getByText('{"temperature":22.25}').waitFor();
  await page.screenshot({ path: join(SHOTS, "portal-device.png"), fullPage: true });
});

test("the provisioning page: the ID scope, a group added on a Verified CA, disabled, a refusal shown", async () => {
  await page.goto(base + "/portal/provisioning");
  const scope = iothub("dps", "id-scope").trim();
  assert.equal(await page.locator("#id-scope").textContent(), scope);
  await page.getByText("No enrollment groups yet.").waitFor();

  await page.getByRole("button", { name: "Add enrollment group" }).click();
  await page.getByLabel("Name").fill("pumps");
  await page.getByLabel("Verified CA").selectOption("root");
  await page.getByLabel("Initial twin (JSON, optional)").fill('{"tags": {"site": "north"}}');
  await page.getByRole("button", { name: "Save" }).click();
  const row = page.locator('tr[data-group="pumps"]');
  await row.waitFor();
  const group = JSON.parse(iothub("-o", "json", "dps", "group", "show", "pumps"));
  assert.equal(group.attestation.x509.caReferences.primary, "root");
  assert.deepEqual(group.initialTwin.tags, { site: "north" });

  await row.getByRole("button", { name: "Disable" }).click();
  await row.getByText("disabled").waitFor();
  assert.equal(JSON.parse(iothub("-o", "json", "dps", "group", "show", "pumps")).provisioningStatus, "disabled");

  // The hub's refusal is shown in the form (an initial twin may not set reported properties).
  await page.getByRole("button", { name: "Add enrollment group" }).click();
  await page.getByLabel("Name").fill("bad");
  await page.getByLabel("Initial twin (JSON, optional)").fill('{"properties": {"reported": {"a": 1}}}');
  await page.getByRole("button", { name: "Save" }).click();
  await page.locator("#group-error").getByText(/properties.reported/).waitFor();
  assert.equal(failures.filter((f) => f.includes("400")).length, 2, failures.join("; "));
  failures.splice(0, failures.length, ...failures.filter((f) => !f.includes("400")));
  await page.screenshot({ path: join(SHOTS, "portal-provisioning.png"), fullPage: true });
});

test("no page asked for anything that failed (the icon included)", async () => {
  await page.goto(base + "/portal/certificates");
  await page.getByRole("heading", { name: "Certificates" }).waitFor();
  const icon = await page.evaluate(async () => (await fetch("/favicon.ico")).status);
  assert.equal(icon, 200);
  assert.deepEqual(failures, []);
});
