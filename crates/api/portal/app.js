// The iothub portal: a small script over the hub's own HTTPS API. The session cookie
// authenticates; every state-changing call carries the page's CSRF token. Data is only ever put
// into the page as text (textContent), never as markup.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const main = document.getElementById("main");

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function toast(text) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.classList.add("show");
  setTimeout(() => t.classList.remove("show"), 2500);
}

async function api(method, path, body, etag) {
  const headers = { "Accept": "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = CSRF;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (etag) headers["If-Match"] = etag;
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin" });
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) {
    const e = new Error((data && data.message) || ("HTTP " + r.status));
    e.code = data && data.code;
    e.status = r.status;
    throw e;
  }
  return data;
}

const enc = encodeURIComponent;

// Reads a certificate file: PEM as text; binary DER (.cer) as base64, as Azure's CLI sends it.
async function readCertificate(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  const text = new TextDecoder("utf-8", { fatal: false }).decode(bytes);
  if (text.includes("-----BEGIN")) return text;
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

// A file input with a drop zone; returns { block, get() }.
function fileField(id, label, accept) {
  const input = el("input", { type: "file", id, accept });
  let dropped = null;
  const name = el("span", { class: "hint" });
  const drop = el("div", { class: "drop" }, "or drop the file here");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    dropped = ev.dataTransfer.files[0] || null;
    name.textContent = dropped ? dropped.name : "";
  });
  input.addEventListener("change", () => { dropped = null; name.textContent = ""; });
  const error = el("div", { class: "error", id: id + "-error", "aria-live": "polite" });
  input.setAttribute("aria-describedby", id + "-error");
  const block = el("div", { class: "field" }, el("label", { for: id, text: label }), input, drop, name, error);
  return { block, error, get: () => dropped || input.files[0] || null };
}

// ---------- Certificates ----------------------------------------------------------------------

async function certificatesPage() {
  main.replaceChildren(
    el("h1", { text: "Certificates" }),
    el("div", { class: "toolbar" }, el("button", { type: "button", id: "add", class: "primary", onclick: () => showAdd() }, "Add")),
    el("div", { id: "add-panel" }),
    el("div", { id: "list" }),
    el("div", { id: "details" }),
  );
  await renderList();
  const selected = new URLSearchParams(location.search).get("name");
  if (selected) showDetails(selected);
}

// Whole days from now until an RFC 1123 time (negative once passed).
function daysLeft(expiry) {
  const at = Date.parse(expiry);
  return Number.isNaN(at) ? undefined : Math.floor((at - Date.now()) / 86400000);
}

// A CA expiring within 30 days (the hub's warning window) gets a badge; an expired one a red one.
function expiryBadge(days) {
  if (typeof days !== "number" || days >= 30) return "";
  return el("span", { class: days < 0 ? "badge bad" : "badge warn", title: "days until the certificate expires",
    text: days < 0 ? " expired" : " " + days + (days === 1 ? " day left" : " days left") });
}

async function renderList() {
  const box = document.getElementById("list");
  const data = await api("GET", "/certificates");
  if (!data.value.length) {
    box.replaceChildren(el("p", { class: "muted", text: "No certificates yet. Select Add to upload your CA certificate." }));
    return;
  }
  const rows = data.value.map((c) => el("tr", {
    class: "selectable", tabindex: "0", "data-name": c.name,
    onclick: () => showDetails(c.name),
    onkeydown: (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); showDetails(c.name); } },
  },
    el("td", { text: c.name }),
    el("td", {}, el("span", { class: "status " + c.properties.status, text: c.properties.status })),
    el("td", { class: "wide", text: c.properties.subject }),
    el("td", { class: "mono wide", text: c.properties.thumbprint }),
    el("td", {}, c.properties.expiry, expiryBadge(daysLeft(c.properties.expiry))),
  ));
  box.replaceChildren(el("table", { "aria-label": "CA certificates" },
    el("thead", {}, el("tr", {}, el("th", { text: "Name" }), el("th", { text: "Status" }), el("th", { class: "wide", text: "Subject" }), el("th", { class: "wide", text: "Thumbprint" }), el("th", { text: "Expiry" }))),
    el("tbody", {}, ...rows)));
}

function showAdd() {
  const nameInput = el("input", { type: "text", id: "cert-name", autocomplete: "off", "aria-describedby": "cert-name-error", required: true });
  const nameError = el("div", { class: "error", id: "cert-name-error", "aria-live": "polite" });
  const file = fileField("cert-file", "Certificate file (.pem or .cer)", ".pem,.cer,.crt,.der");
  const form = el("form", { class: "panel", id: "add-form", "aria-label": "Add certificate" },
    el("h2", { text: "Add certificate" }),
    el("div", { class: "field" }, el("label", { for: "cert-name", text: "Certificate Name" }), nameInput, el("span", { class: "hint", text: "1 to 64 letters, digits, '-', '.' or '_'" }), nameError),
    file.block,
    el("div", { class: "toolbar" }, el("button", { type: "submit", class: "primary", id: "save" }, "Save"), el("button", { type: "button", onclick: () => form.remove() }, "Cancel")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    nameError.textContent = ""; file.error.textContent = "";
    const name = nameInput.value.trim();
    const f = file.get();
    if (!name) { nameError.textContent = "Enter a certificate name."; nameInput.focus(); return; }
    if (!f) { file.error.textContent = "Choose the CA certificate file (.pem or .cer)."; return; }
    try {
      await api("PUT", "/certificates/" + enc(name), { properties: { certificate: await readCertificate(f) } });
      form.remove();
      toast("Saved " + name + ": Unverified");
      await renderList();
      showDetails(name);
    } catch (e) {
      // The hub's own reason, next to the field it concerns.
      if (e.code === "400050") nameError.textContent = e.message;
      else if (e.code === "412002" || e.code === "409050") nameError.textContent = e.message;
      else file.error.textContent = e.message;
    }
  });
  document.getElementById("add-panel").replaceChildren(form);
  nameInput.focus();
}

let countdown = null;

async function showDetails(name) {
  const box = document.getElementById("details");
  clearInterval(countdown);
  let c;
  try { c = await api("GET", "/certificates/" + enc(name)); }
  catch (e) { box.replaceChildren(el("p", { class: "error", text: e.message })); return; }
  const p = c.properties;
  const codeBox = el("div", { id: "code-box" });
  const verifyFile = fileField("verify-file", "Verification certificate (.pem or .cer)", ".pem,.cer,.crt,.der");
  const verifyResult = el("div", { id: "verify-result", "aria-live": "polite" });
  const audit = el("div", { id: "audit" });
  const panel = el("section", { class: "panel", id: "details-panel", "aria-label": "Certificate Details" },
    el("h2", { text: "Certificate Details: " + c.name }),
    el("dl", { class: "details" },
      el("dt", { text: "Status" }), el("dd", {}, el("span", { class: "status " + p.status, id: "detail-status", text: p.status })),
      el("dt", { text: "Subject" }), el("dd", { text: p.subject }),
      el("dt", { text: "Issuer" }), el("dd", { text: p.issuer }),
      el("dt", { text: "Thumbprint (SHA-1)" }), el("dd", { class: "mono", text: p.thumbprint }),
      el("dt", { text: "Thumbprint (SHA-256)" }), el("dd", { class: "mono", text: p.thumbprintSha256 }),
      el("dt", { text: "Valid" }), el("dd", { text: p.notBefore + " to " + p.expiry }),
      el("dt", { text: "Key" }), el("dd", { text: p.keyAlgorithm }),
      el("dt", { text: "Updated" }), el("dd", { text: p.updated })),
    el("h2", { text: "Proof of possession" }),
    el("div", { class: "toolbar" }, el("button", { type: "button", class: "primary", id: "generate", onclick: () => generate(c.name, c.etag, codeBox) }, "Generate Verification Code")),
    codeBox,
    verifyFile.block,
    el("div", { class: "toolbar" }, el("button", { type: "button", id: "verify", class: "primary", onclick: () => verify(c.name, verifyFile, verifyResult) }, "Verify")),
    verifyResult,
    el("h2", { text: "Audit trail" }),
    audit,
    el("div", { class: "toolbar" }, el("button", { type: "button", class: "danger", id: "delete", onclick: () => remove(c.name) }, "Delete")));
  box.replaceChildren(panel);
  renderAudit(c.name, audit);
  panel.scrollIntoView({ block: "start" });
}

function commandsFor(name, code) {
  return [
    "# one step, the key never leaves your machine:",
    "iothub cert prove " + name + " --key <your CA key file>",
    "",
    "# or with openssl, as in the tutorial (steps 8-9):",
    "openssl req -new -key pop.key -out pop.csr -subj \"/CN=" + code + "\"",
    "openssl ca -config rootca.conf -in pop.csr -out pop.crt -extensions client_ext",
  ].join("\n");
}

async function generate(name, etag, codeBox) {
  clearInterval(countdown);
  try {
    const r = await api("POST", "/certificates/" + enc(name) + "/generateVerificationCode");
    const code = r.properties.verificationCode;
    const expires = Date.parse(r.properties.verificationCodeExpiry);
    const left = el("span", { class: "hint", id: "code-expiry" });
    const tick = () => {
      const s = Math.max(0, Math.round((expires - Date.now()) / 1000));
      left.textContent = s > 0 ? "expires in " + Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0") : "expired: generate a new code";
    };
    tick();
    countdown = setInterval(tick, 1000);
    codeBox.replaceChildren(
      el("div", { class: "code" }, el("output", { id: "verification-code", text: code }),
        el("button", { type: "button", id: "copy", onclick: async () => { try { await navigator.clipboard.writeText(code); toast("Copied"); } catch (_) { toast("Copy failed: select the code"); } } }, "Copy to clipboard"),
        left),
      el("p", { class: "hint", text: "Make a certificate whose subject is CN=" + code + ", signed with this CA's private key, then upload it below and select Verify." }),
      el("pre", { id: "commands", text: commandsFor(name, code) }));
  } catch (e) {
    codeBox.replaceChildren(el("p", { class: "error", text: e.message }));
  }
}

async function verify(name, file, result) {
  file.error.textContent = "";
  const f = file.get();
  if (!f) { file.error.textContent = "Choose the verification certificate file."; return; }
  try {
    await api("POST", "/certificates/" + enc(name) + "/verify", { certificate: await readCertificate(f) });
    clearInterval(countdown);
    result.replaceChildren(el("p", { class: "status Verified", text: "Verified" }));
    toast(name + " is Verified");
    await renderList();
    await showDetails(name);
  } catch (e) {
    const what = {
      "400053": "Sign the verification certificate with this CA (not another one of the chain).",
      "400054": "Sign it with this CA's own private key.",
      "400055": "Put the current code, and only it, as the subject CN.",
      "400056": "Generate a verification code first.",
      "400057": "The code expired: generate a new one and a new certificate.",
      "400064": "The code was already used: generate a new one to verify again.",
    }[String(e.code)] || "";
    file.error.textContent = e.message + (what ? " " + what : "");
  }
}

async function remove(name) {
  if (!confirm("Delete certificate '" + name + "'? Devices whose chain ends at it will be refused.")) return;
  try {
    await api("DELETE", "/certificates/" + enc(name));
    document.getElementById("details").replaceChildren();
    toast("Deleted " + name);
    await renderList();
  } catch (e) { toast(e.message); }
}

async function renderAudit(name, box) {
  try {
    const r = await api("GET", "/audit?limit=20&target=" + enc("certificate/" + name));
    if (!r.value.length) { box.replaceChildren(el("p", { class: "muted", text: "No entries." })); return; }
    box.replaceChildren(el("table", { "aria-label": "Audit trail" },
      el("thead", {}, el("tr", {}, el("th", { text: "Time" }), el("th", { text: "By" }), el("th", { text: "Action" }), el("th", { text: "Outcome" }))),
      el("tbody", {}, ...r.value.map((a) => el("tr", {},
        el("td", { text: a.time }), el("td", { text: a.actor }), el("td", { text: a.action }),
        el("td", { text: a.outcome + (a.code ? " [" + a.code + "]" : "") + ": " + a.detail }))))));
  } catch (e) { box.replaceChildren(el("p", { class: "error", text: e.message })); }
}

// ---------- Devices ---------------------------------------------------------------------------

async function devicesPage() {
  main.replaceChildren(
    el("h1", { text: "Devices" }),
    el("div", { class: "toolbar" }, el("button", { type: "button", class: "primary", id: "add-device", onclick: () => showAddDevice() }, "Add device")),
    el("div", { id: "add-panel" }),
    el("div", { id: "list" }));
  await renderDevices();
}

async function renderDevices() {
  const box = document.getElementById("list");
  const list = await api("GET", "/devices?top=1000");
  if (!list.length) { box.replaceChildren(el("p", { class: "muted", text: "No devices yet." })); return; }
  box.replaceChildren(el("table", { "aria-label": "Devices" },
    el("thead", {}, el("tr", {}, ...["Device", "Status", "Authentication", "Connection", "Last activity", "Last refusal", ""].map((h, i) => el("th", { class: i === 2 || i === 4 ? "wide" : null, text: h })))),
    el("tbody", {}, ...list.map((d) => el("tr", { "data-device": d.deviceId },
      el("td", {}, el("a", { href: "/portal/device?id=" + enc(d.deviceId), text: d.deviceId })),
      el("td", {}, el("span", { class: "status " + d.status, text: d.status })),
      el("td", { class: "wide", text: d.authentication.type }),
      el("td", {}, el("span", { class: "status " + d.connectionState, text: d.connectionState })),
      el("td", { class: "wide", text: d.lastActivityTime.startsWith("0001") ? "never" : d.lastActivityTime }),
      el("td", { text: d.lastRefusal ? d.lastRefusal + " (" + d.lastRefusalTime + ")" : "-" }),
      el("td", {},
        el("button", { type: "button", onclick: () => setStatus(d, d.status === "enabled" ? "disabled" : "enabled") }, d.status === "enabled" ? "Disable" : "Enable"),
        " ",
        el("button", { type: "button", class: "danger", onclick: () => removeDevice(d.deviceId) }, "Delete")))))));
}

function showAddDevice() {
  const id = el("input", { type: "text", id: "device-id", autocomplete: "off", "aria-describedby": "device-id-error" });
  const idError = el("div", { class: "error", id: "device-id-error", "aria-live": "polite" });
  const auth = el("select", { id: "device-auth" },
    el("option", { value: "certificateAuthority", text: "X.509 CA signed" }),
    el("option", { value: "selfSigned", text: "X.509 self-signed" }),
    el("option", { value: "sas", text: "Symmetric key (SAS)" }));
  const thumb = el("input", { type: "text", id: "device-thumbprint", autocomplete: "off", "aria-describedby": "device-thumbprint-error" });
  const thumbError = el("div", { class: "error", id: "device-thumbprint-error", "aria-live": "polite" });
  const thumbField = el("div", { class: "field", hidden: true }, el("label", { for: "device-thumbprint", text: "Certificate thumbprint (SHA-1 or SHA-256)" }), thumb, thumbError);
  auth.addEventListener("change", () => { thumbField.hidden = auth.value !== "selfSigned"; });
  const form = el("form", { class: "panel", "aria-label": "Add device" },
    el("h2", { text: "Add device" }),
    el("div", { class: "field" }, el("label", { for: "device-id", text: "Device ID" }), id, idError),
    el("div", { class: "field" }, el("label", { for: "device-auth", text: "Authentication type" }), auth),
    thumbField,
    el("div", { class: "toolbar" }, el("button", { type: "submit", class: "primary" }, "Save"), el("button", { type: "button", onclick: () => form.remove() }, "Cancel")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    idError.textContent = ""; thumbError.textContent = "";
    const body = { deviceId: id.value.trim(), status: "enabled", authentication: { type: auth.value } };
    if (auth.value === "selfSigned") body.authentication.x509Thumbprint = { primaryThumbprint: thumb.value.trim() };
    try {
      await api("PUT", "/devices/" + enc(body.deviceId), body);
      form.remove();
      toast("Added " + body.deviceId);
      await renderDevices();
    } catch (e) {
      if (e.code === "400071") thumbError.textContent = e.message; else idError.textContent = e.message;
    }
  });
  document.getElementById("add-panel").replaceChildren(form);
  id.focus();
}

async function setStatus(d, status) {
  try {
    const current = await api("GET", "/devices/" + enc(d.deviceId));
    current.status = status;
    await api("PUT", "/devices/" + enc(d.deviceId), current, "\"" + current.etag + "\"");
    toast(d.deviceId + " " + status);
    await renderDevices();
  } catch (e) { toast(e.message); }
}

async function removeDevice(id) {
  if (!confirm("Delete device '" + id + "'? Its connection is closed at once.")) return;
  try { await api("DELETE", "/devices/" + enc(id), undefined, "\"*\""); toast("Deleted " + id); await renderDevices(); }
  catch (e) { toast(e.message); }
}

// ---------- Provisioning ----------------------------------------------------------------------

async function provisioningPage() {
  const info = await api("GET", "/provisioning");
  main.replaceChildren(
    el("h1", { text: "Provisioning" }),
    el("p", {}, "Devices register with the device SDK's ProvisioningDeviceClient on this hub's MQTT port: ID scope ",
      el("code", { id: "id-scope", text: info.idScope }), ", provisioning host ", el("code", { text: info.provisioningHost }), "."),
    el("h2", { text: "Enrollment groups" }),
    el("div", { class: "toolbar" }, el("button", { type: "button", class: "primary", id: "add-group", onclick: () => showAddGroup() }, "Add enrollment group")),
    el("div", { id: "group-panel" }),
    el("div", { id: "groups" }),
    el("h2", { text: "Individual enrollments" }),
    el("div", { id: "individuals" }),
    el("h2", { text: "Registrations" }),
    el("div", { id: "registrations" }));
  await renderEnrollments();
}

async function renderEnrollments() {
  const [groups, individuals, registrations] = await Promise.all([
    api("GET", "/enrollmentGroups"), api("GET", "/enrollments"), api("GET", "/registrations")]);
  const actions = (kind, name, v) => el("td", {},
    el("button", { type: "button", onclick: () => setEnrollmentStatus(kind, name, v.provisioningStatus === "enabled" ? "disabled" : "enabled") }, v.provisioningStatus === "enabled" ? "Disable" : "Enable"),
    " ",
    el("button", { type: "button", class: "danger", onclick: () => removeEnrollment(kind, name) }, "Delete"));
  document.getElementById("groups").replaceChildren(groups.value.length ? el("table", { "aria-label": "Enrollment groups" },
    el("thead", {}, el("tr", {}, ...["Group", "CA", "Status", "Initial twin", ""].map((h) => el("th", { text: h })))),
    el("tbody", {}, ...groups.value.map((g) => el("tr", { "data-group": g.enrollmentGroupId },
      el("td", { text: g.enrollmentGroupId }),
      el("td", { text: g.attestation.x509.caReferences.primary }),
      el("td", {}, el("span", { class: "status " + g.provisioningStatus, text: g.provisioningStatus })),
      el("td", { class: "wide" }, el("code", { text: JSON.stringify(g.initialTwin) })),
      actions("enrollmentGroups", g.enrollmentGroupId, g)))))
    : el("p", { class: "muted", text: "No enrollment groups yet." }));
  document.getElementById("individuals").replaceChildren(individuals.value.length ? el("table", { "aria-label": "Individual enrollments" },
    el("thead", {}, el("tr", {}, ...["Registration", "Certificate (SHA-256)", "Status", ""].map((h) => el("th", { text: h })))),
    el("tbody", {}, ...individuals.value.map((e) => el("tr", {},
      el("td", { text: e.registrationId }),
      el("td", { class: "wide" }, el("code", { text: e.attestation.x509.clientCertificates.primary.info.sha256Thumbprint })),
      el("td", {}, el("span", { class: "status " + e.provisioningStatus, text: e.provisioningStatus })),
      actions("enrollments", e.registrationId, e)))))
    : el("p", { class: "muted", text: "None (iothub dps individual add ID --cert FILE)." }));
  document.getElementById("registrations").replaceChildren(registrations.value.length ? el("table", { "aria-label": "Registrations" },
    el("thead", {}, el("tr", {}, ...["Registration", "Device", "Through", "Last registered"].map((h) => el("th", { text: h })))),
    el("tbody", {}, ...registrations.value.map((r) => el("tr", {},
      el("td", { text: r.registrationId }),
      el("td", {}, el("a", { href: "/portal/device?id=" + enc(r.deviceId), text: r.deviceId })),
      el("td", { text: r.enrollment.kind + " " + r.enrollment.name }),
      el("td", { text: r.lastUpdatedDateTimeUtc })))))
    : el("p", { class: "muted", text: "No device has registered yet." }));
}

async function showAddGroup() {
  const cas = await api("GET", "/certificates");
  const verified = cas.value.filter((c) => c.properties.isVerified);
  const name = el("input", { type: "text", id: "group-name", autocomplete: "off", "aria-describedby": "group-error" });
  const ca = el("select", { id: "group-ca" }, ...verified.map((c) => el("option", { value: c.name, text: c.name })));
  const twin = el("textarea", { id: "group-twin", rows: "3", placeholder: "{\"tags\": {}, \"properties\": {\"desired\": {}}}" });
  const error = el("div", { class: "error", id: "group-error", "aria-live": "polite" });
  const form = el("form", { class: "panel", "aria-label": "Add enrollment group" },
    el("h2", { text: "Add enrollment group" }),
    el("div", { class: "field" }, el("label", { for: "group-name", text: "Name" }), name),
    el("div", { class: "field" }, el("label", { for: "group-ca", text: "Verified CA" }), verified.length ? ca : el("p", { class: "muted", text: "No Verified CA yet: add one and prove possession first." })),
    el("div", { class: "field" }, el("label", { for: "group-twin", text: "Initial twin (JSON, optional)" }), twin),
    error,
    el("div", { class: "toolbar" }, el("button", { type: "submit", class: "primary" }, "Save"), el("button", { type: "button", onclick: () => form.remove() }, "Cancel")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    const body = { attestation: { type: "x509", x509: { caReferences: { primary: ca.value } } }, provisioningStatus: "enabled" };
    if (twin.value.trim()) {
      try { body.initialTwin = JSON.parse(twin.value); } catch (e) { error.textContent = "The initial twin is not JSON: " + e.message; return; }
    }
    try {
      await api("PUT", "/enrollmentGroups/" + enc(name.value.trim()), body);
      form.remove();
      toast("Added enrollment group " + name.value.trim());
      await renderEnrollments();
    } catch (e) { error.textContent = e.message; }
  });
  document.getElementById("group-panel").replaceChildren(form);
  name.focus();
}

async function setEnrollmentStatus(kind, name, status) {
  try {
    const current = await api("GET", "/" + kind + "/" + enc(name));
    current.provisioningStatus = status;
    await api("PUT", "/" + kind + "/" + enc(name), current, "\"" + current.etag + "\"");
    toast(name + " " + status);
    await renderEnrollments();
  } catch (e) { toast(e.message); }
}

async function removeEnrollment(kind, name) {
  if (!confirm("Delete enrollment '" + name + "'? Devices registered through it stay.")) return;
  try { await api("DELETE", "/" + kind + "/" + enc(name)); toast("Deleted " + name); await renderEnrollments(); }
  catch (e) { toast(e.message); }
}

// ---------- Connections -----------------------------------------------------------------------

async function connectionsPage() {
  const r = await api("GET", "/connections");
  main.replaceChildren(
    el("h1", { text: "Connections" }),
    el("h2", { text: "Connected devices (" + r.live.length + ")" }),
    r.live.length ? el("table", { "aria-label": "Connected devices" },
      el("thead", {}, el("tr", {}, el("th", { text: "Device" }), el("th", { text: "From" }), el("th", { text: "Since" }), el("th", { class: "wide", text: "Authentication" }))),
      el("tbody", {}, ...r.live.map((s) => el("tr", {}, el("td", { text: s.deviceId }), el("td", { text: s.remote }), el("td", { text: s.since }), el("td", { class: "wide", text: s.authentication })))))
      : el("p", { class: "muted", text: "None." }),
    el("h2", { text: "Recent refusals (" + r.refusals.length + ")" }),
    r.refusals.length ? el("table", { "aria-label": "Recent refusals" },
      el("thead", {}, el("tr", {}, el("th", { text: "Time" }), el("th", { text: "Client" }), el("th", { class: "wide", text: "From" }), el("th", { text: "Reason" }))),
      el("tbody", {}, ...r.refusals.map((x) => el("tr", {}, el("td", { text: x.time }), el("td", { text: x.clientId || "-" }), el("td", { class: "wide", text: x.remote }), el("td", { text: x.reason })))))
      : el("p", { class: "muted", text: "None." }));
}

// ---------- Overview --------------------------------------------------------------------------

function tile(label, value, note) {
  return el("div", { class: "tile" }, el("div", { class: "tile-value", text: String(value) }), el("div", { class: "tile-label", text: label }), note ? el("div", { class: "hint", text: note }) : null);
}

async function overviewPage() {
  const o = await api("GET", "/overview");
  const refusals = Object.entries(o.refusalsLastHour).filter(([, n]) => n > 0);
  main.replaceChildren(
    el("h1", { text: "Overview" }),
    el("div", { class: "tiles", "aria-label": "The hub at a glance" },
      tile("Verified CAs", o.certificates.verified, o.certificates.unverified + " unverified"),
      tile("Devices", o.devices.total, o.devices.enabled + " enabled"),
      tile("Connected now", o.devices.connected),
      tile("Telemetry", o.telemetry.messagesPerSecond + "/s", o.telemetry.messagesSinceStart + (o.telemetry.messagesSinceStart === 1 ? " message" : " messages") + " since start"),
      tile("Refusals, last hour", refusals.reduce((a, [, n]) => a + n, 0))),
    el("h2", { text: "Certificates expiring within 30 days" }),
    o.certificates.expiringSoon.length ? el("table", { "aria-label": "Certificates expiring soon" },
      el("thead", {}, el("tr", {}, el("th", { text: "Name" }), el("th", { text: "Status" }), el("th", { text: "Expiry" }), el("th", { text: "Days left" }))),
      el("tbody", {}, ...o.certificates.expiringSoon.map((c) => el("tr", {},
        el("td", {}, el("a", { href: "/portal/certificates?name=" + enc(c.name), text: c.name })),
        el("td", {}, el("span", { class: "status " + c.status, text: c.status })),
        el("td", { text: c.expiry }),
        el("td", {}, el("span", { class: c.daysLeft < 0 ? "badge bad" : "badge warn", text: c.daysLeft < 0 ? "expired" : String(c.daysLeft) }))))))
      : el("p", { class: "muted", text: "None." }),
    el("h2", { text: "Refusals in the last hour, by reason" }),
    refusals.length ? el("table", { "aria-label": "Refusals by reason" },
      el("thead", {}, el("tr", {}, el("th", { text: "Reason" }), el("th", { text: "Count" }))),
      el("tbody", {}, ...refusals.map(([reason, n]) => el("tr", {}, el("td", { text: reason.replace(/_/g, " ") }), el("td", { text: String(n) })))))
      : el("p", { class: "muted", text: "None." }));
}

// ---------- One device ------------------------------------------------------------------------

function field(dt, dd) { return [el("dt", { text: dt }), el("dd", {}, dd)]; }

async function devicePage() {
  const id = new URLSearchParams(location.search).get("id") || "";
  const d = await api("GET", "/devices/" + enc(id));
  const conns = await api("GET", "/connections");
  const live = conns.live.find((s) => s.deviceId === id);
  main.replaceChildren(
    el("h1", { text: "Device " + id }),
    el("dl", { class: "details", "aria-label": "Device" },
      ...field("Status", el("span", { class: "status " + d.status, text: d.status })),
      ...field("Authentication", d.authentication.type),
      ...field("Connection", el("span", { class: "status " + d.connectionState, text: d.connectionState + (live ? " from " + live.remote + " since " + live.since : "") })),
      ...field("Last activity", d.lastActivityTime.startsWith("0001") ? "never" : d.lastActivityTime),
      ...field("Last refusal", d.lastRefusal ? d.lastRefusal + " (" + d.lastRefusalTime + ")" : "none"),
      ...field("Certificate expiry", d.certificateExpiry || (live && live.certificateExpiry) || "known once it has connected with a certificate")),
    el("h2", { text: "Twin" }), el("div", { id: "twin" }),
    el("h2", { text: "Send a cloud-to-device message" }), c2dForm(id),
    el("h2", { text: "Invoke a direct method" }), methodForm(id),
    el("h2", { text: "Live telemetry" }), telemetryLog(id));
  await renderTwin(id);
}

async function renderTwin(id) {
  const box = document.getElementById("twin");
  const t = await api("GET", "/twins/" + enc(id));
  const desired = Object.fromEntries(Object.entries(t.properties.desired).filter(([k]) => !k.startsWith("$")));
  const editor = el("textarea", { id: "desired", rows: "6", "aria-describedby": "desired-error" });
  editor.value = JSON.stringify(desired, null, 2);
  const error = el("div", { class: "error", id: "desired-error", "aria-live": "polite" });
  const form = el("form", { class: "panel", "aria-label": "Desired properties" },
    el("p", { class: "hint", text: "etag " + t.etag + ", desired $version " + t.properties.desired.$version + ", reported $version " + t.properties.reported.$version }),
    el("div", { class: "field" }, el("label", { for: "desired", text: "Desired properties (a merge patch: a key set to null is removed)" }), editor, error),
    el("div", { class: "toolbar" }, el("button", { type: "submit", class: "primary" }, "Save desired")),
    el("h3", { text: "Reported properties" }), el("pre", { id: "reported", text: JSON.stringify(t.properties.reported, null, 2) }),
    el("h3", { text: "Tags" }), el("pre", { text: JSON.stringify(t.tags || {}, null, 2) }));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    let patch;
    try { patch = JSON.parse(editor.value); } catch (e) { error.textContent = "Not JSON: " + e.message; return; }
    try {
      await api("PATCH", "/twins/" + enc(id), { properties: { desired: patch } }, "\"" + t.etag + "\"");
      toast("Desired properties saved");
      await renderTwin(id);
    } catch (e) {
      error.textContent = e.status === 412 ? "The twin changed since this page read it (" + e.message + "). Reload to see the current one." : e.message;
    }
  });
  box.replaceChildren(form);
}

function c2dForm(id) {
  const body = el("textarea", { id: "c2d-body", rows: "3" });
  const result = el("div", { id: "c2d-result", class: "hint", "aria-live": "polite" });
  const form = el("form", { class: "panel", "aria-label": "Cloud-to-device message" },
    el("div", { class: "field" }, el("label", { for: "c2d-body", text: "Message body" }), body),
    el("div", { class: "toolbar" }, el("button", { type: "submit", class: "primary" }, "Send")), result);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const m = await api("POST", "/devices/" + enc(id) + "/messages/devicebound", { body: body.value });
      result.textContent = "Queued as " + m.messageId + " (" + m.state + ")";
    } catch (e) { result.textContent = e.message; }
  });
  return form;
}

function methodForm(id) {
  const name = el("input", { type: "text", id: "method-name", autocomplete: "off" });
  const payload = el("textarea", { id: "method-payload", rows: "3" });
  payload.value = "null";
  const timeout = el("input", { type: "text", id: "method-timeout", value: "30", inputmode: "numeric" });
  const answer = el("pre", { id: "method-answer", "aria-live": "polite" });
  const form = el("form", { class: "panel", "aria-label": "Direct method" },
    el("div", { class: "field" }, el("label", { for: "method-name", text: "Method name" }), name),
    el("div", { class: "field" }, el("label", { for: "method-payload", text: "Payload (JSON)" }), payload),
    el("div", { class: "field" }, el("label", { for: "method-timeout", text: "Timeout, seconds (5 to 300)" }), timeout),
    el("div", { class: "toolbar" }, el("button", { type: "submit", class: "primary" }, "Invoke")), answer);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    answer.textContent = "Waiting for the device...";
    try {
      const r = await api("POST", "/twins/" + enc(id) + "/methods",
        { methodName: name.value.trim(), payload: JSON.parse(payload.value), responseTimeoutInSeconds: Number(timeout.value) });
      answer.textContent = "status " + r.status + "\n" + JSON.stringify(r.payload, null, 2);
    } catch (e) { answer.textContent = e.message; }
  });
  return form;
}

function telemetryLog(id) {
  const list = el("ol", { id: "telemetry", class: "log", "aria-live": "polite" });
  const box = el("div", { class: "panel" }, el("p", { class: "hint", text: "New messages from this device appear here as they arrive." }), list);
  const source = new EventSource("/messages/stream?deviceId=" + enc(id));
  source.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    list.prepend(el("li", {}, el("span", { class: "mono", text: m.enqueuedTime + "  " }), el("span", { text: m.body === null ? "(binary) " + m.bodyBase64 : m.body })));
    while (list.children.length > 50) list.lastChild.remove();
  };
  return box;
}

// ---------- start -----------------------------------------------------------------------------

document.getElementById("logout").addEventListener("click", async () => {
  await fetch("/portal/logout", { method: "POST", headers: { "X-CSRF-Token": CSRF }, credentials: "same-origin" });
  location.href = "/portal/signed-out";
});

const page = document.body.dataset.page;
for (const a of document.querySelectorAll("nav a")) if (a.dataset.nav === page) a.setAttribute("aria-current", "page");
({ overview: overviewPage, certificates: certificatesPage, devices: devicesPage, device: devicePage, provisioning: provisioningPage, connections: connectionsPage })[page]()
  .catch((e) => main.replaceChildren(el("p", { class: "error", text: e.message })));
