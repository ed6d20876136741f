//! The device registry over HTTPS in Azure IoT Hub's shapes (docs/azure-wire.md#device-registry), against the
//! real `iothub serve`: PUT creates answer 200 with the Azure device JSON, SAS keys are generated
//! when omitted, etags guard updates and deletes (quoted, and `"*"`), device ids follow Azure's
//! character rules, invalid authentication is 400071, listing pages with `x-ms-continuation`, a
//! `registryRead` token reads but cannot write, and `device import` takes JSON and CSV.

mod common;

use base64::Engine as _;
use common::*;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};

/// Everything but letters, digits and `-._` is percent-encoded in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_');

fn seg(id: &str) -> String {
    utf8_percent_encode(id, SEGMENT).to_string()
}

/// An answer: status, headers, JSON body (Null when empty).
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }

    /// Asserts the status (and for errors the JSON code and the `iothub-errorcode` header).
    fn expect(self, status: u16, code: Option<&str>, what: &str) -> Answer {
        assert_eq!(
            self.status, status,
            "{what}: expected {status} {code:?}, got {}: {}",
            self.status, self.body
        );
        if let Some(code) = code {
            assert_eq!(self.body["code"], code, "{what}: {}", self.body);
            assert_eq!(
                self.header("iothub-errorcode").as_deref(),
                self.body["errorName"].as_str(),
                "{what}: {}",
                self.body
            );
        }
        self
    }
}

/// One request with `token` as Authorization.
fn call(
    hub: &TestHub,
    token: &str,
    method: Method,
    path: &str,
    if_match: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let mut rb = hub
        .client()
        .request(method, format!("{}{path}", hub.base()))
        .header("Authorization", token);
    if let Some(m) = if_match {
        rb = rb.header("If-Match", m);
    }
    if let Some(b) = body {
        rb = rb
            .header("Content-Type", "application/json; charset=utf-8")
            .body(b.to_string());
    }
    let r = rb.send().unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().unwrap();
    let body = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// The registry as the owner sees it.
struct Registry<'a> {
    hub: &'a TestHub,
    token: String,
}

impl<'a> Registry<'a> {
    fn owner(hub: &'a TestHub) -> Registry<'a> {
        Registry {
            hub,
            token: hub.owner_token(),
        }
    }

    fn put(&self, id: &str, if_match: Option<&str>, body: &Value) -> Answer {
        call(
            self.hub,
            &self.token,
            Method::PUT,
            &format!("/devices/{}", seg(id)),
            if_match,
            Some(body),
        )
    }

    fn get(&self, id: &str) -> Answer {
        call(
            self.hub,
            &self.token,
            Method::GET,
            &format!("/devices/{}", seg(id)),
            None,
            None,
        )
    }

    fn delete(&self, id: &str, if_match: Option<&str>) -> Answer {
        call(
            self.hub,
            &self.token,
            Method::DELETE,
            &format!("/devices/{}", seg(id)),
            if_match,
            None,
        )
    }

    fn list(&self, query: &str) -> Answer {
        call(
            self.hub,
            &self.token,
            Method::GET,
            &format!("/devices{query}"),
            None,
            None,
        )
    }
}

/// A request body as azure-iot-hub's registry manager sends it.
fn body(id: &str, status: &str, authentication: Value) -> Value {
    json!({
        "deviceId": id,
        "status": status,
        "authentication": authentication,
        "capabilities": { "iotEdge": false },
    })
}

fn ca_auth() -> Value {
    json!({ "type": "certificateAuthority" })
}

fn is_key_of_32_bytes(v: &Value) -> bool {
    v.as_str()
        .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
        .is_some_and(|raw| raw.len() == 32)
}

#[test]
fn create_answers_200_with_the_azure_device_shape() {
    let hub = TestHub::start(&[]);
    let reg = Registry::owner(&hub);

    // SAS without keys: generated, base64 of 32 bytes, primary and secondary distinct.
    let a = reg
        .put(
            "sas-dev",
            None,
            &body("sas-dev", "enabled", json!({ "type": "sas" })),
        )
        .expect(200, None, "create sas-dev");
    let d = &a.body;
    assert_eq!(d["deviceId"], "sas-dev");
    assert_eq!(d["status"], "enabled");
    assert_eq!(d["connectionState"], "Disconnected");
    assert_eq!(d["lastActivityTime"], "0001-01-01T00:00:00Z");
    assert_eq!(d["authentication"]["type"], "sas");
    let keys = &d["authentication"]["symmetricKey"];
    assert!(is_key_of_32_bytes(&keys["primaryKey"]), "{d}");
    assert!(is_key_of_32_bytes(&keys["secondaryKey"]), "{d}");
    assert_ne!(keys["primaryKey"], keys["secondaryKey"]);
    let thumbs = d["authentication"]["x509Thumbprint"]
        .as_object()
        .unwrap_or_else(|| panic!("x509Thumbprint is not an object: {d}"));
    assert!(thumbs.contains_key("primaryThumbprint") && thumbs.contains_key("secondaryThumbprint"));
    assert!(thumbs.values().all(Value::is_null), "{d}");
    let etag = d["etag"].as_str().unwrap();
    assert!(!etag.is_empty());
    // The ETag header carries the same etag, quoted.
    assert_eq!(a.header("etag"), Some(format!("\"{etag}\"")));
    assert!(
        d["generationId"].as_str().is_some_and(|g| !g.is_empty()),
        "{d}"
    );
    assert_eq!(d["cloudToDeviceMessageCount"], 0);
    for field in [
        "statusReason",
        "connectionStateUpdatedTime",
        "statusUpdatedTime",
        "capabilities",
    ] {
        assert!(d.get(field).is_some(), "{field} missing: {d}");
    }

    // Given keys are kept as given.
    let k1 = iothub_pki::sas::generate_key().unwrap();
    let k2 = iothub_pki::sas::generate_key().unwrap();
    let d = reg
        .put(
            "sas-keys",
            None,
            &body(
                "sas-keys",
                "enabled",
                json!({ "type": "sas", "symmetricKey": { "primaryKey": k1, "secondaryKey": k2 } }),
            ),
        )
        .expect(200, None, "create sas-keys")
        .body;
    assert_eq!(d["authentication"]["symmetricKey"]["primaryKey"], k1);
    assert_eq!(d["authentication"]["symmetricKey"]["secondaryKey"], k2);

    // No authentication at all: sas, as Azure.
    let d = reg
        .put("default-auth", None, &json!({ "deviceId": "default-auth" }))
        .expect(200, None, "create without authentication")
        .body;
    assert_eq!(d["authentication"]["type"], "sas");
    assert_eq!(d["status"], "enabled");
    assert!(is_key_of_32_bytes(
        &d["authentication"]["symmetricKey"]["primaryKey"]
    ));

    // Certificate authority: no keys, no thumbprints.
    let d = reg
        .put("ca-dev", None, &body("ca-dev", "disabled", ca_auth()))
        .expect(200, None, "create ca-dev")
        .body;
    assert_eq!(d["authentication"]["type"], "certificateAuthority");
    assert_eq!(d["status"], "disabled");
    assert!(
        d["authentication"]["symmetricKey"]["primaryKey"].is_null(),
        "{d}"
    );
    assert!(
        d["authentication"]["x509Thumbprint"]["primaryThumbprint"].is_null(),
        "{d}"
    );

    // Self-signed: thumbprints normalized to upper-case hex without separators.
    let sha1 = "ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01";
    let sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let d = reg
        .put(
            "ss-dev",
            None,
            &body(
                "ss-dev",
                "enabled",
                json!({ "type": "selfSigned", "x509Thumbprint": { "primaryThumbprint": sha1, "secondaryThumbprint": sha256 } }),
            ),
        )
        .expect(200, None, "create ss-dev")
        .body;
    let t = &d["authentication"]["x509Thumbprint"];
    assert_eq!(t["primaryThumbprint"], sha1.replace(':', "").to_uppercase());
    assert_eq!(t["secondaryThumbprint"], sha256.to_uppercase());
    assert!(
        d["authentication"]["symmetricKey"]["primaryKey"].is_null(),
        "{d}"
    );

    // GET answers the same shape and etag.
    let g = reg.get("sas-dev").expect(200, None, "get sas-dev");
    assert_eq!(g.body["etag"], etag);
    assert_eq!(g.header("etag"), Some(format!("\"{etag}\"")));
    assert_eq!(g.body["authentication"], a.body["authentication"]);
    assert_eq!(g.body["lastActivityTime"], "0001-01-01T00:00:00Z");
}

#[test]
fn etags_guard_updates_and_deletes() {
    let hub = TestHub::start(&[]);
    let reg = Registry::owner(&hub);
    let v1 = reg
        .put("guarded", None, &body("guarded", "enabled", ca_auth()))
        .expect(200, None, "create")
        .body;
    let e1 = v1["etag"].as_str().unwrap().to_string();

    // Creating again without If-Match: 409001, nothing changed.
    reg.put("guarded", None, &body("guarded", "disabled", ca_auth()))
        .expect(409, Some("409001"), "create twice");
    let now = reg.get("guarded").expect(200, None, "get").body;
    assert_eq!(now["etag"], e1.as_str());
    assert_eq!(now["status"], "enabled");

    // Update with the quoted etag (azure-iot-hub's _ensure_quoted).
    let v2 = reg
        .put(
            "guarded",
            Some(&format!("\"{e1}\"")),
            &body("guarded", "disabled", ca_auth()),
        )
        .expect(200, None, "update with the quoted etag")
        .body;
    let e2 = v2["etag"].as_str().unwrap().to_string();
    assert_ne!(e2, e1, "the etag changes on update");
    assert_eq!(v2["status"], "disabled");
    assert_eq!(v2["generationId"], v1["generationId"]);

    // Update with "*" (quoted wildcard).
    let v3 = reg
        .put(
            "guarded",
            Some("\"*\""),
            &body("guarded", "enabled", ca_auth()),
        )
        .expect(200, None, "update with \"*\"")
        .body;
    let e3 = v3["etag"].as_str().unwrap().to_string();
    assert_ne!(e3, e2);
    assert_eq!(v3["status"], "enabled");

    // A stale etag: 412001, nothing changed.
    reg.put(
        "guarded",
        Some(&format!("\"{e1}\"")),
        &body("guarded", "disabled", ca_auth()),
    )
    .expect(412, Some("412001"), "update with a stale etag");
    assert_eq!(reg.get("guarded").body["etag"], e3.as_str());
    reg.delete("guarded", Some(&format!("\"{e2}\""))).expect(
        412,
        Some("412001"),
        "delete with a stale etag",
    );
    reg.get("guarded").expect(200, None, "still there");

    // If-Match on a device that does not exist: 404001 (nothing to update).
    reg.put("ghost", Some("\"*\""), &body("ghost", "enabled", ca_auth()))
        .expect(404, Some("404001"), "update of a missing device");
    reg.get("ghost").expect(404, Some("404001"), "not created");

    // Delete with "*": 204 and an empty body; then the device is gone.
    let gone = reg
        .delete("guarded", Some("\"*\""))
        .expect(204, None, "delete with \"*\"");
    assert!(gone.body.is_null(), "{}", gone.body);
    reg.get("guarded")
        .expect(404, Some("404001"), "get after delete");
    reg.delete("guarded", Some("\"*\""))
        .expect(404, Some("404001"), "delete twice");

    // Delete with the current etag, quoted, works too; and the id can be created afresh.
    let v = reg
        .put("guarded", None, &body("guarded", "enabled", ca_auth()))
        .expect(200, None, "create again")
        .body;
    let e = v["etag"].as_str().unwrap();
    reg.delete("guarded", Some(&format!("\"{e}\"")))
        .expect(204, None, "delete with the etag");
}

#[test]
fn device_ids_follow_azure_rules() {
    let hub = TestHub::start(&[]);
    let reg = Registry::owner(&hub);
    let t = hub.owner_token();
    let raw = |method: Method, path: &str, b: Option<&Value>| call(&hub, &t, method, path, None, b);
    let any = body("x", "enabled", ca_auth());

    // Invalid ids, as the path carries them.
    let long = "a".repeat(129);
    for (path_id, what) in [
        (long.as_str(), "129 characters"),
        ("a%2Fb", "a/b"),
        ("bad%20id", "a space"),
        ("%C3%A9", "é"),
        ("caf%C3%A9", "non-ASCII"),
    ] {
        let path = format!("/devices/{path_id}");
        raw(Method::PUT, &path, Some(&any)).expect(400, Some("400070"), &format!("PUT {what}"));
        raw(Method::GET, &path, None).expect(400, Some("400070"), &format!("GET {what}"));
    }
    assert_eq!(
        reg.list("").expect(200, None, "list").body,
        json!([]),
        "no invalid id was registered"
    );

    // 128 characters is the longest id.
    let longest = "b".repeat(128);
    reg.put(&longest, None, &body(&longest, "enabled", ca_auth()))
        .expect(200, None, "128 characters");

    // Every special character Azure allows, alone and all together, round-trips.
    let specials = "-.+%_#*?!(),=@$'";
    let mut ids: Vec<String> = specials.chars().map(|c| format!("d{c}1")).collect();
    ids.push(format!("all{specials}"));
    ids.push("%".into());
    ids.push("%41".into()); // stays literally "%41", not "A"
    for id in &ids {
        let d = reg
            .put(id, None, &body(id, "enabled", ca_auth()))
            .expect(200, None, &format!("create {id:?}"))
            .body;
        assert_eq!(d["deviceId"], id.as_str());
        let g = reg.get(id).expect(200, None, &format!("get {id:?}")).body;
        assert_eq!(g["deviceId"], id.as_str());
    }
    assert_eq!(
        reg.get("A").status,
        404,
        "'%41' was decoded twice and registered as 'A'"
    );
    let listed: Vec<String> = reg
        .list("")
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deviceId"].as_str().unwrap().to_string())
        .collect();
    for id in &ids {
        assert!(listed.contains(id), "{id:?} not listed: {listed:?}");
    }
    // Ids are case-sensitive.
    reg.put("Case", None, &body("Case", "enabled", ca_auth()))
        .expect(200, None, "Case");
    reg.put("case", None, &body("case", "enabled", ca_auth()))
        .expect(200, None, "case is another device");
    for id in &ids {
        reg.delete(id, Some("\"*\""))
            .expect(204, None, &format!("delete {id:?}"));
    }
}

#[test]
fn invalid_authentication_is_400071() {
    let hub = TestHub::start(&[]);
    let reg = Registry::owner(&hub);
    let cases = [
        (
            "selfSigned without a thumbprint",
            json!({ "type": "selfSigned" }),
        ),
        (
            "selfSigned with an empty x509Thumbprint",
            json!({ "type": "selfSigned", "x509Thumbprint": { "primaryThumbprint": null } }),
        ),
        (
            "selfSigned with a 39-digit thumbprint",
            json!({ "type": "selfSigned", "x509Thumbprint": { "primaryThumbprint": "A".repeat(39) } }),
        ),
        (
            "selfSigned with a non-hex thumbprint",
            json!({ "type": "selfSigned", "x509Thumbprint": { "primaryThumbprint": "G".repeat(40) } }),
        ),
        (
            "sas with a non-base64 primary key",
            json!({ "type": "sas", "symmetricKey": { "primaryKey": "not base64!!" } }),
        ),
        (
            "sas with a non-base64 secondary key",
            json!({ "type": "sas", "symmetricKey": { "primaryKey": iothub_pki::sas::generate_key().unwrap(), "secondaryKey": "%%%" } }),
        ),
        (
            "sas with a 4-byte key",
            json!({ "type": "sas", "symmetricKey": { "primaryKey": "AAAAAA==" } }),
        ),
        ("an unknown type", json!({ "type": "password" })),
    ];
    for (what, auth) in cases {
        let a = reg
            .put("bad-auth", None, &body("bad-auth", "enabled", auth))
            .expect(400, Some("400071"), what);
        assert!(
            a.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {}",
            a.body
        );
    }
    reg.get("bad-auth")
        .expect(404, Some("404001"), "nothing was registered");

    // An update with invalid authentication is refused and changes nothing.
    let v = reg
        .put("good-auth", None, &body("good-auth", "enabled", ca_auth()))
        .expect(200, None, "create")
        .body;
    reg.put(
        "good-auth",
        Some("\"*\""),
        &body("good-auth", "enabled", json!({ "type": "selfSigned" })),
    )
    .expect(
        400,
        Some("400071"),
        "update to selfSigned without a thumbprint",
    );
    let now = reg.get("good-auth").body;
    assert_eq!(now["etag"], v["etag"]);
    assert_eq!(now["authentication"]["type"], "certificateAuthority");
}

#[test]
fn listing_pages_with_x_ms_continuation() {
    let hub = TestHub::start(&[]);
    let reg = Registry::owner(&hub);
    let mut ids: Vec<String> = (1..=5).map(|i| format!("page-{i}")).collect();
    ids.push("page-#?".into()); // a continuation that needs encoding in a query
    for id in &ids {
        reg.put(id, None, &body(id, "enabled", ca_auth()))
            .expect(200, None, id);
    }
    ids.sort();

    // Follow the header with ?after=.
    let mut seen = Vec::new();
    let mut query = "?top=2".to_string();
    let mut pages = 0;
    loop {
        let a = reg.list(&query).expect(200, None, &query);
        pages += 1;
        let page: Vec<String> = a
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["deviceId"].as_str().unwrap().to_string())
            .collect();
        assert!(page.len() <= 2, "{query}: {page:?}");
        for d in a.body.as_array().unwrap() {
            assert!(
                d["etag"].is_string() && d["authentication"].is_object(),
                "{d}"
            );
        }
        seen.extend(page);
        match a.header("x-ms-continuation") {
            Some(next) => {
                assert_eq!(Some(&next), seen.last(), "the continuation is the last id");
                query = format!("?top=2&after={}", seg(&next));
            }
            None => break,
        }
        assert!(pages < 10, "paging does not end: {seen:?}");
    }
    assert_eq!(seen, ids, "every device once, in order");

    // The continuation may also be sent back as a request header.
    let first = reg.list("?top=2").expect(200, None, "first page");
    let next = first.header("x-ms-continuation").unwrap();
    let r = hub
        .client()
        .get(format!("{}/devices?top=2", hub.base()))
        .header("Authorization", hub.owner_token())
        .header("x-ms-continuation", &next)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let page: Value = r.json().unwrap();
    assert_eq!(page[0]["deviceId"], ids[2].as_str(), "{page}");

    // A page that is not full has no continuation; top outside 1-1000 counts as 1000.
    let all = reg.list("?top=1000").expect(200, None, "top=1000");
    assert_eq!(all.body.as_array().unwrap().len(), ids.len());
    assert!(all.header("x-ms-continuation").is_none());
    let zero = reg.list("?top=0").expect(200, None, "top=0");
    assert_eq!(zero.body.as_array().unwrap().len(), ids.len());
    let last = reg
        .list(&format!("?after={}", seg(ids.last().unwrap())))
        .expect(200, None, "after the last");
    assert_eq!(last.body, json!([]));
}

#[test]
fn a_registry_read_token_reads_but_cannot_write() {
    let hub = TestHub::start(&[]);
    let owner = Registry::owner(&hub);
    let d = owner
        .put("readable", None, &body("readable", "enabled", ca_auth()))
        .expect(200, None, "create")
        .body;
    let key = hub.policy_key("registryRead");
    let reader = Registry {
        hub: &hub,
        token: iothub_pki::sas::build_token(
            &format!("localhost:{}", hub.port),
            &key,
            Some("registryRead"),
            unix_now() + 3600,
        )
        .unwrap(),
    };
    let got = reader
        .get("readable")
        .expect(200, None, "registryRead GET")
        .body;
    assert_eq!(got["etag"], d["etag"]);
    let list = reader
        .list("?top=10")
        .expect(200, None, "registryRead list")
        .body;
    assert_eq!(list[0]["deviceId"], "readable");
    reader
        .get("missing")
        .expect(404, Some("404001"), "registryRead GET of a missing device");

    // Writes: 403001, whether the device exists or not, with or without If-Match.
    reader
        .put("new-one", None, &body("new-one", "enabled", ca_auth()))
        .expect(403, Some("403001"), "registryRead create");
    reader
        .put(
            "readable",
            Some("\"*\""),
            &body("readable", "disabled", ca_auth()),
        )
        .expect(403, Some("403001"), "registryRead update");
    reader
        .delete("readable", Some("\"*\""))
        .expect(403, Some("403001"), "registryRead delete");
    reader.delete("readable", None).expect(
        403,
        Some("403001"),
        "registryRead delete without If-Match",
    );
    owner
        .get("new-one")
        .expect(404, Some("404001"), "nothing was created");
    let after = owner.get("readable").expect(200, None, "still there").body;
    assert_eq!(after["etag"], d["etag"]);
    assert_eq!(after["status"], "enabled");
}

#[test]
fn device_import_takes_json_and_csv_and_names_failures() {
    let hub = TestHub::start(&[]);
    let dir = hub.dir.clone();
    let reg = Registry::owner(&hub);
    let sha256 = "AB".repeat(32);

    // A JSON array of Azure device objects.
    let devices = json!([
        { "deviceId": "j-ca", "status": "enabled", "authentication": { "type": "certificateAuthority" } },
        { "deviceId": "j-sas", "authentication": { "type": "sas" } },
        { "deviceId": "j-ss", "status": "disabled", "authentication": { "type": "selfSigned", "x509Thumbprint": { "primaryThumbprint": sha256 } } },
    ]);
    std::fs::write(dir.join("devices.json"), devices.to_string()).unwrap();
    let out = ok(&hub.cli_in(&dir, &["device", "import", "devices.json"]));
    assert!(out.contains("3 of 3"), "{out}");
    assert_eq!(
        reg.get("j-ca").body["authentication"]["type"],
        "certificateAuthority"
    );
    assert!(is_key_of_32_bytes(
        &reg.get("j-sas").body["authentication"]["symmetricKey"]["primaryKey"]
    ));
    let ss = reg.get("j-ss").expect(200, None, "j-ss").body;
    assert_eq!(ss["status"], "disabled");
    assert_eq!(
        ss["authentication"]["x509Thumbprint"]["primaryThumbprint"],
        sha256.as_str()
    );

    // CSV with the header deviceId,authType,primaryThumbprint (CRLF line ends).
    let sha1 = "cd".repeat(20);
    std::fs::write(
        dir.join("devices.csv"),
        format!(
            "deviceId,authType,primaryThumbprint\r\nc-ca,certificateAuthority,\r\nc-ss,selfSigned,{sha1}\r\nc-sas,sas,\r\n"
        ),
    )
    .unwrap();
    let out = ok(&hub.cli_in(&dir, &["-o", "json", "device", "import", "devices.csv"]));
    let summary: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["total"], 3, "{summary}");
    assert_eq!(summary["imported"], 3, "{summary}");
    assert_eq!(
        reg.get("c-ca").body["authentication"]["type"],
        "certificateAuthority"
    );
    assert_eq!(
        reg.get("c-ss").body["authentication"]["x509Thumbprint"]["primaryThumbprint"],
        sha1.to_uppercase()
    );
    assert_eq!(reg.get("c-sas").body["authentication"]["type"], "sas");

    // One invalid row in each format: the valid rows are registered, the command exits non-zero
    // and names each failure.
    std::fs::write(
        dir.join("mixed.csv"),
        "deviceId,authType,primaryThumbprint\nm-1,certificateAuthority,\nbad id,certificateAuthority,\nm-2,selfSigned,\nm-3,certificateAuthority,\n",
    )
    .unwrap();
    let out = hub.cli_in(&dir, &["device", "import", "mixed.csv"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("2 of 4"), "{stdout}");
    assert!(
        stdout.contains("bad id") && stdout.contains("400070"),
        "{stdout}"
    );
    assert!(
        stdout.contains("m-2") && stdout.contains("400071"),
        "{stdout}"
    );
    assert!(stderr.contains("2 of 4"), "{stderr}");
    reg.get("m-1").expect(200, None, "m-1 imported");
    reg.get("m-3")
        .expect(200, None, "m-3 imported after the failures");
    reg.get("m-2")
        .expect(404, Some("404001"), "m-2 not imported");

    let mixed = json!([
        { "deviceId": "mj-1", "authentication": { "type": "certificateAuthority" } },
        { "deviceId": "j-ca", "authentication": { "type": "certificateAuthority" } },
        { "deviceId": "mj-2", "authentication": { "type": "sas", "symmetricKey": { "primaryKey": "***" } } },
    ]);
    std::fs::write(dir.join("mixed.json"), mixed.to_string()).unwrap();
    let out = hub.cli_in(&dir, &["-o", "json", "device", "import", "mixed.json"]);
    assert!(!out.status.success());
    let summary: Value = serde_json::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(summary["imported"], 1, "{summary}");
    let failed: Vec<(String, String)> = summary["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["deviceId"].as_str().unwrap().to_string(),
                f["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(failed.len(), 2, "{summary}");
    assert_eq!(failed[0].0, "j-ca");
    assert!(failed[0].1.contains("409001"), "{summary}");
    assert_eq!(failed[1].0, "mj-2");
    assert!(failed[1].1.contains("400071"), "{summary}");
    reg.get("mj-1").expect(200, None, "mj-1 imported");
}

#[test]
fn device_import_accepts_a_csv_with_a_byte_order_mark() {
    let hub = TestHub::start(&[]);
    let dir = hub.dir.clone();
    std::fs::write(
        dir.join("bom.csv"),
        "\u{feff}deviceId,authType,primaryThumbprint\r\nbom-1,certificateAuthority,\r\n",
    )
    .unwrap();
    let out = hub.cli_in(&dir, &["device", "import", "bom.csv"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Registry::owner(&hub)
        .get("bom-1")
        .expect(200, None, "bom-1 imported");
}

#[test]
fn device_import_unquotes_quoted_csv_fields() {
    let hub = TestHub::start(&[]);
    let dir = hub.dir.clone();
    // As spreadsheets export: every field quoted; or only the values.
    std::fs::write(
        dir.join("quoted.csv"),
        "\"deviceId\",\"authType\",\"primaryThumbprint\"\n\"q-1\",\"certificateAuthority\",\"\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("values.csv"),
        "deviceId,authType,primaryThumbprint\n\"q-2\",\"certificateAuthority\",\"\"\n",
    )
    .unwrap();
    let mut failures = Vec::new();
    for file in ["quoted.csv", "values.csv"] {
        let out = hub.cli_in(&dir, &["device", "import", file]);
        if !out.status.success() {
            failures.push(format!(
                "{file}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    let reg = Registry::owner(&hub);
    reg.get("q-1").expect(200, None, "q-1 imported");
    reg.get("q-2").expect(200, None, "q-2 imported");
}

#[test]
fn device_import_of_hundreds_sends_chunks_and_writes_only_the_good_rows() {
    let hub = TestHub::start(&[]);
    let dir = hub.dir.clone();
    let reg = Registry::owner(&hub);
    reg.put(
        "imp-7",
        None,
        &json!({ "authentication": { "type": "certificateAuthority" } }),
    )
    .expect(200, None, "an existing device");
    // 1,500 rows (two requests): an invalid id, an existing id, a self-signed row without a
    // thumbprint; the rest land.
    let mut csv = String::from("deviceId,authType\n");
    for i in 0..1500 {
        match i {
            3 => csv.push_str("bad id,certificateAuthority\n"),
            1200 => csv.push_str("imp-1200,selfSigned\n"),
            _ => csv.push_str(&format!("imp-{i},certificateAuthority\n")),
        }
    }
    std::fs::write(dir.join("many.csv"), csv).unwrap();
    let out = hub.cli_in(&dir, &["device", "import", "many.csv"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("imported 1497 of 1500 devices"), "{stdout}");
    let failures: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(failures.len(), 3, "{stdout}");
    assert!(
        failures[0].contains("bad id") && failures[0].contains("400070"),
        "{stdout}"
    );
    assert!(
        failures[1].contains("imp-7") && failures[1].contains("409001"),
        "{stdout}"
    );
    assert!(
        failures[2].contains("imp-1200") && failures[2].contains("400071"),
        "{stdout}"
    );
    // Off a terminal, progress is at most a line per 10%, never a redraw per device.
    assert!(!stderr.contains('\r'), "{stderr}");
    assert!(stderr.lines().count() <= 12, "{stderr}");
    reg.get("imp-1499").expect(200, None, "the last row landed");
    reg.get("imp-1200")
        .expect(404, Some("404001"), "refused row not written");
    let listed = call(
        &hub,
        &reg.token,
        Method::GET,
        "/devices?top=1000&after=imp-1",
        None,
        None,
    );
    assert!(listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["deviceId"] != "bad id"));
}

#[test]
fn the_import_route_takes_at_most_its_row_limit() {
    let hub = TestHub::start(&[]);
    let reg = Registry::owner(&hub);
    let rows: Vec<Value> = (0..1001)
        .map(|i| json!({ "deviceId": format!("lim-{i}"), "authentication": { "type": "certificateAuthority" } }))
        .collect();
    call(
        &hub,
        &reg.token,
        Method::POST,
        "/devices",
        None,
        Some(&json!(rows)),
    )
    .expect(400, Some("400004"), "1001 rows refused whole");
    reg.get("lim-0")
        .expect(404, Some("404001"), "nothing written");
    let answer = call(
        &hub,
        &reg.token,
        Method::POST,
        "/devices",
        None,
        Some(&json!(rows[..1000])),
    )
    .expect(200, None, "1000 rows taken");
    assert_eq!(answer.body["imported"], 1000, "{}", answer.body);
    assert_eq!(answer.body["results"][999]["deviceId"], "lim-999");
    // A registryRead token: refused whole.
    let read = hub.token("registryRead", &hub.policy_key("registryRead"), 3600);
    call(
        &hub,
        &read,
        Method::POST,
        "/devices",
        None,
        Some(&json!([rows[1000]])),
    )
    .expect(403, Some("403001"), "registryRead import");
    reg.get("lim-1000")
        .expect(404, Some("404001"), "nothing written");
    // The byte limit (IMPORT_MAX_BYTES, 2,048,000): past it, 413 before any parsing.
    let big = json!([{ "deviceId": "lim-big", "statusReason": "x".repeat(2_048_000) }]);
    call(&hub, &reg.token, Method::POST, "/devices", None, Some(&big)).expect(
        413,
        Some("413001"),
        "an oversize import body",
    );
    reg.get("lim-big")
        .expect(404, Some("404001"), "nothing written");
}
