// The seed tutorial's eleven steps, clicked in the portal in real Chromium against a running hub,
// with the verification certificate made by openssl exactly as steps 8-9 do; then a failing
// verification (wrong key) and its reason, deletion with confirmation, and the devices and
// connections pages. Screenshots go to test-artifacts/portal/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const ROOT = resolve(import.meta.dirname, "../..");
const BIN = process.env.IOTHUB_BIN || join(ROOT, "target/debug/iothub");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARTIFACTS = join(ROOT, "test-artifacts/portal");
mkdirSync(ARTIFACTS, { recursive: true });

let dir, hub, link, mqttPort, browser, page;

function iothub(...args) {
  return execFileSync(BIN, ["--data", join(dir, "data"), ...args], { cwd: dir, encoding: "utf8" });
}

function sh(cmd, ...args) {
  return execFileSync(cmd, args, { cwd: dir, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

// An openssl CA directory as the tutorial's rootca.conf uses it.
function opensslCa(cert, key, name) {
  const db = join(dir, name + ".db");
  mkdirSync(join(db, "newcerts"), { recursive: true });
  writeFileSync(join(db, "index.txt"), "");
  writeFileSync(join(db, "serial"), "1000\n");
  const conf = join(dir, name + ".conf");
  writeFileSync(conf, `[ ca ]
default_ca = CA_default
[ CA_default ]
dir = ${db}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
certificate = ${join(dir, cert)}
private_key = ${join(dir, key)}
default_md = sha256
default_days = 30
policy = policy_loose
unique_subject = no
[ policy_loose ]
commonName = supplied
[ client_ext ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
`);
  return conf;
}

// Seed steps 8-9: openssl req -new -key pop.key (CN = code), then openssl ca -extensions client_ext.
function verificationCert(conf, code, out) {
  sh("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", out + ".key");
  sh("openssl", "req", "-new", "-key", out + ".key", "-out", out + ".csr", "-subj", "/CN=" + code);
  sh("openssl", "ca", "-batch", "-config", conf, "-in", out + ".csr", "-out", out, "-extensions", "client_ext");
  return join(dir, out);
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "iothub-portal-"));
  hub = spawn(BIN, ["--data", join(dir, "data"), "serve", "--https", "127.0.0.1:0", "--mqtt", "127.0.0.1:0", "--metrics", "off"], {
    cwd: dir, env: { ...process.env, IOTHUB_LOG: "warn" }, stdio: ["ignore", "pipe", "inherit"],
  });
  const lines = createInterface({ input: hub.stdout });
  await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error("the hub did not start")), 60000);
    lines.on("line", (line) => {
      const mq = line.match(/^mqtt listening on .*:(\d+)$/);
      if (mq) mqttPort = mq[1];
      if (line.startsWith("https listening on")) { clearTimeout(timer); ok(); }
    });
  });
  // serve prints no login link when its stdout is not a terminal (it would land in a log): ask
  // for one as an operator does.
  link = iothub("portal-link").trim();
  assert.match(link, /^https:\/\/\S+\/portal\/login\?token=\S+$/, "portal-link prints a login link");
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  // The hub's certificate is issued by its own local CA, which this throwaway profile does not trust.
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
});

after(async () => {
  await browser?.close();
  hub?.kill("SIGKILL");
});

test("the seed's steps 1-11 in the portal, with openssl making the verification certificate", async () => {
  iothub("pki", "ca", "root");
  await page.goto(link);
  assert.match(page.url(), /\/portal\/overview$/, "no secret left in the URL after login");
  await page.getByRole("link", { name: "Certificates" }).click();
  // A login link works once.
  const again = await (await page.context().newPage()).goto(link);
  assert.equal(again.status(), 401);

  // 1-4: Settings > Certificates, Add, Certificate Name, pick the .pem, Save: listed as Unverified.
  await page.getByRole("button", { name: "Add" }).click();
  await page.getByLabel("Certificate Name").fill("root");
  await page.setInputFiles("#cert-file", join(dir, "root.pem"));
  await page.getByRole("button", { name: "Save" }).click();
  const row = page.locator('tr[data-name="root"]');
  await row.getByText("Unverified").waitFor();
  await page.screenshot({ path: join(ARTIFACTS, "1-list-unverified.png"), fullPage: true });

  // 5-7: Certificate Details, Generate Verification Code, the code with copy and countdown.
  await row.click();
  await page.getByRole("button", { name: "Generate Verification Code" }).click();
  const code = (await page.locator("#verification-code").textContent()).trim();
  assert.match(code, /^[0-9A-F]{48}$/);
  assert.match(await page.locator("#code-expiry").textContent(), /expires in \d+:\d\d/);
  assert.ok((await page.locator("#commands").textContent()).includes(`iothub cert prove root`));
  assert.ok((await page.locator("#commands").textContent()).includes(`/CN=${code}`));
  await page.getByRole("button", { name: "Copy to clipboard" }).waitFor();
  await page.screenshot({ path: join(ARTIFACTS, "2-details-with-code.png"), fullPage: true });

  // 8-9: openssl req + openssl ca, exactly as the tutorial.
  const conf = opensslCa("root.pem", "root.key", "root");
  const pop = verificationCert(conf, code, "pop.crt");

  // 10-11: upload it and Verify: Verified.
  await page.setInputFiles("#verify-file", pop);
  await page.getByRole("button", { name: "Verify" }).click();
  await page.locator("#detail-status", { hasText: "Verified" }).waitFor();
  await page.locator('tr[data-name="root"]').getByText("Verified", { exact: true }).waitFor();
  await page.locator("#audit").getByText("certificate.verify").first().waitFor();
  await page.screenshot({ path: join(ARTIFACTS, "3-verified.png"), fullPage: true });
  const status = JSON.parse(iothub("-o", "json", "cert", "show", "root"));
  assert.equal(status.properties.isVerified, true);
});

test("a verification certificate signed with the wrong key shows the hub's reason", async () => {
  iothub("pki", "ca", "other");
  mkdirSync(join(dir, "fake"), { recursive: true });
  iothub("pki", "ca", "other", "--out-dir", "fake");   // same subject, another key
  await page.goto(link.replace(/login\?token=.*/, "certificates"));
  await page.getByRole("button", { name: "Add" }).click();
  await page.getByLabel("Certificate Name").fill("other");
  await page.setInputFiles("#cert-file", join(dir, "other.pem"));
  await page.getByRole("button", { name: "Save" }).click();
  await page.locator('tr[data-name="other"]').getByText("Unverified").waitFor();
  await page.getByRole("button", { name: "Generate Verification Code" }).click();
  const code = (await page.locator("#verification-code").textContent()).trim();
  const conf = opensslCa("fake/other.pem", "fake/other.key", "fake-other");
  const pop = verificationCert(conf, code, "wrong.crt");
  await page.setInputFiles("#verify-file", pop);
  await page.getByRole("button", { name: "Verify" }).click();
  const error = page.locator("#verify-file-error");
  await error.getByText("not signed by the key of certificate 'other'").waitFor();
  assert.match(await error.textContent(), /Sign it with this CA's own private key/);
  assert.equal((await page.locator("#detail-status").textContent()).trim(), "Unverified");
  await page.screenshot({ path: join(ARTIFACTS, "4-wrong-key.png"), fullPage: true });

  // A bad name is refused next to the name field.
  await page.getByRole("button", { name: "Add" }).click();
  await page.getByLabel("Certificate Name").fill("bad name!");
  await page.setInputFiles("#cert-file", join(dir, "other.pem"));
  await page.getByRole("button", { name: "Save" }).click();
  await page.locator("#cert-name-error").getByText("is invalid").waitFor();

  // Delete, with confirmation.
  page.once("dialog", (d) => d.accept());
  await page.locator('tr[data-name="other"]').click();
  await page.getByRole("button", { name: "Delete" }).click();
  await page.locator('tr[data-name="other"]').waitFor({ state: "detached" });
});

test("devices and connections pages", async () => {
  await page.goto(link.replace(/login\?token=.*/, "devices"));
  await page.getByRole("button", { name: "Add device" }).click();
  await page.getByLabel("Device ID").fill("sensor-1");
  await page.getByRole("button", { name: "Save" }).click();
  const row = page.locator('tr[data-device="sensor-1"]');
  await row.getByText("enabled").waitFor();
  await row.getByRole("button", { name: "Disable" }).click();
  await row.getByText("disabled").waitFor();
  // Self-signed with a bad thumbprint: the reason shows next to the thumbprint field.
  await page.getByRole("button", { name: "Add device" }).click();
  await page.getByLabel("Device ID").fill("ss-1");
  await page.getByLabel("Authentication type").selectOption("selfSigned");
  await page.getByLabel(/thumbprint/).fill("XYZ");
  await page.getByRole("button", { name: "Save" }).click();
  await page.locator("#device-thumbprint-error").getByText("expected 40 (SHA-1) or 64 (SHA-256) hex digits").waitFor();
  // A device of an unregistered CA is refused; the connections page shows why.
  iothub("pki", "ca", "stranger");
  iothub("pki", "device", "sensor-9", "--ca-cert", "stranger.pem", "--ca-key", "stranger.key");
  iothub("device", "add", "sensor-9");
  try {
    execFileSync("mosquitto_pub", ["-h", "localhost", "-p", mqttPort, "--cafile", join(dir, "data/tls/ca.pem"),
      "--cert", join(dir, "sensor-9.pem"), "--key", join(dir, "sensor-9.key"), "-i", "sensor-9",
      "-u", "localhost/sensor-9/?api-version=2021-04-12", "-t", "devices/sensor-9/messages/events/", "-m", "x", "-q", "1"],
      { stdio: "ignore" });
    assert.fail("a device of an unregistered CA was admitted");
  } catch (e) {
    assert.equal(e.status, 5, "mosquitto_pub reports the refusal (CONNACK 5)");
  }
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(link.replace(/login\?token=.*/, "connections"));
  await page.getByRole("heading", { name: /Recent refusals \(1\)/ }).waitFor();
  await page.getByText("no registered CA issued 'CN=stranger'").waitFor();
  await page.screenshot({ path: join(ARTIFACTS, "5-connections-phone.png"), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });
  page.once("dialog", (d) => d.accept());
  await page.goto(link.replace(/login\?token=.*/, "devices"));
  await page.locator('tr[data-device="sensor-1"]').getByRole("button", { name: "Delete" }).click();
  await page.locator('tr[data-device="sensor-1"]').waitFor({ state: "detached" });
  // Sign out ends the session.
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForURL(/signed-out/);
  const r = await page.goto(link.replace(/login\?token=.*/, "certificates"));
  assert.equal(r.status(), 401);
});
