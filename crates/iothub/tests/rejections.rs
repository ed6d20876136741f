//! Every rejection rule of the CA registry, over real HTTPS against a running `iothub serve`: each
//! refusal answers its HTTP status and stable JSON `code`, leaves the stored record (and the whole
//! certificate list) exactly as it was, and, when the hub layer refused it, appends a `failure`
//! entry with that code to the audit log of the certificate.
//!
//! Certificates are made in-process with `iothub_pki::gen` (and rcgen / openssl for the odd shapes
//! the generator cannot make), so the whole file runs in a few seconds plus one deliberate sleep.

mod common;

use common::*;
use iothub_pki::gen::{self, CaIssuer, KeyKind};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::Method;
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};

// ---------------------------------------------------------------------------------------------
// Harness helpers (kept in this file: tests/common is shared with other suites).

/// Starts a hub whose MQTT listener binds an ephemeral loopback port, so that hubs of parallel
/// tests do not collide on the default 8883. The variable (not the flag) is used so that it
/// yields to a `--mqtt` flag should the shared harness ever pass one.
fn start(extra: &[&str]) -> TestHub {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var("IOTHUB_MQTT", "127.0.0.1:0"));
    TestHub::start(extra)
}

/// A CA made in-process, with its key and an issuer to sign with.
struct Ca {
    pem: String,
    key: String,
    issuer: CaIssuer,
}

fn make_ca_valid(cn: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Ca {
    let g = gen::make_ca(cn, KeyKind::EcP256, None, not_before, not_after).unwrap();
    Ca {
        issuer: CaIssuer::from_pem(&g.cert_pem, &g.key_pem).unwrap(),
        pem: g.cert_pem,
        key: g.key_pem,
    }
}

fn make_ca(cn: &str) -> Ca {
    let now = OffsetDateTime::now_utc();
    make_ca_valid(cn, now - Duration::hours(1), now + Duration::days(30))
}

/// A verification certificate for `code` signed by `ca`, valid now.
fn pop_cert(ca: &Ca, code: &str) -> String {
    gen::make_verification_cert(
        code,
        &ca.issuer,
        OffsetDateTime::now_utc(),
        Duration::days(1),
    )
    .unwrap()
    .cert_pem
}

/// The first PEM block of `pem` (`make_leaf` appends the CA chain).
fn first_pem(pem: &str) -> String {
    const END: &str = "-----END CERTIFICATE-----";
    let end = pem.find(END).expect("a PEM certificate") + END.len();
    format!("{}\n", &pem[..end])
}

/// A certificate signed by `ca` whose subject is `O=Contoso` only (no CN at all).
fn signed_without_cn(ca: &Ca) -> String {
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&ca.pem, rcgen::KeyPair::from_pem(&ca.key).unwrap())
            .unwrap();
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "Contoso");
    params.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(1);
    let key = rcgen::KeyPair::generate().unwrap();
    params.signed_by(&key, &issuer).unwrap().pem()
}

/// The certificate-PUT body in the current shape.
fn put_body(pem: &str) -> Value {
    json!({ "properties": { "certificate": pem } })
}

/// An authenticated API client for one hub.
struct Api {
    http: Client,
    base: String,
    auth: String,
    policy: String,
}

impl Api {
    fn owner(hub: &TestHub) -> Api {
        Api {
            http: hub.client(),
            base: hub.base(),
            auth: hub.owner_token(),
            policy: "iothubowner".into(),
        }
    }

    fn req(&self, method: Method, path: &str, if_match: Option<&str>) -> RequestBuilder {
        let rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", &self.auth);
        match if_match {
            Some(m) => rb.header("If-Match", m),
            None => rb,
        }
    }

    fn get(&self, name: &str) -> Response {
        self.req(Method::GET, &format!("/certificates/{name}"), None)
            .send()
            .unwrap()
    }

    fn put(&self, name: &str, body: &Value, if_match: Option<&str>) -> Response {
        self.req(Method::PUT, &format!("/certificates/{name}"), if_match)
            .json(body)
            .send()
            .unwrap()
    }

    fn put_raw(&self, name: &str, body: &str, if_match: Option<&str>) -> Response {
        self.req(Method::PUT, &format!("/certificates/{name}"), if_match)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap()
    }

    fn generate(&self, name: &str, if_match: Option<&str>) -> Response {
        self.req(
            Method::POST,
            &format!("/certificates/{name}/generateVerificationCode"),
            if_match,
        )
        .send()
        .unwrap()
    }

    fn verify(&self, name: &str, certificate: &str, if_match: Option<&str>) -> Response {
        self.req(
            Method::POST,
            &format!("/certificates/{name}/verify"),
            if_match,
        )
        .json(&json!({ "certificate": certificate }))
        .send()
        .unwrap()
    }

    fn verify_raw(&self, name: &str, body: &str, if_match: Option<&str>) -> Response {
        self.req(
            Method::POST,
            &format!("/certificates/{name}/verify"),
            if_match,
        )
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap()
    }

    fn delete(&self, name: &str, if_match: Option<&str>) -> Response {
        self.req(Method::DELETE, &format!("/certificates/{name}"), if_match)
            .send()
            .unwrap()
    }

    /// The audit entries of `certificate/{name}` (`name` as the hub sees it, decoded), newest first.
    fn audit(&self, name: &str) -> Vec<Value> {
        let target = percent_encoding::utf8_percent_encode(
            &format!("certificate/{name}"),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        let r = self
            .req(
                Method::GET,
                &format!("/audit?target={target}&limit=5"),
                None,
            )
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().unwrap();
        v["value"].as_array().unwrap().clone()
    }

    /// GET of one certificate: status and body, whatever they are.
    fn snapshot(&self, name: &str) -> (u16, Value) {
        let r = self.get(name);
        let status = r.status().as_u16();
        (status, r.json().unwrap())
    }

    fn state(&self, name: &str) -> Value {
        let (status, v) = self.snapshot(name);
        assert_eq!(status, 200, "GET {name}: {v}");
        v
    }

    fn etag(&self, name: &str) -> String {
        self.state(name)["etag"].as_str().unwrap().to_string()
    }

    fn list(&self) -> Value {
        let r = self.req(Method::GET, "/certificates", None).send().unwrap();
        assert_eq!(r.status(), 200);
        r.json().unwrap()
    }

    fn create(&self, name: &str, pem: &str) -> Value {
        let r = self.put(name, &put_body(pem), None);
        expect_ok(r, 201)
    }

    /// Generates a code and returns it.
    fn code(&self, name: &str) -> String {
        let v = expect_ok(self.generate(name, None), 200);
        v["properties"]["verificationCode"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

fn expect_ok(r: Response, status: u16) -> Value {
    let got = r.status().as_u16();
    let text = r.text().unwrap();
    assert_eq!(got, status, "expected {status}, got {got}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Asserts an error answer: status, JSON `code`, the `errorName` matching the hub's table, the
/// `iothub-errorcode` header, a message. Returns the body.
fn expect_error(r: Response, status: u16, code: &str) -> Value {
    let got = r.status().as_u16();
    let header = r
        .headers()
        .get("iothub-errorcode")
        .map(|v| v.to_str().unwrap().to_string());
    let text = r.text().unwrap();
    assert_eq!(got, status, "expected {status} {code}, got {got}: {text}");
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    assert_eq!(v["code"], code, "{text}");
    let known = iothub_hub::error::ALL_CODES
        .iter()
        .find(|c| c.number.to_string() == code)
        .unwrap_or_else(|| panic!("{code} is not in ALL_CODES"));
    assert_eq!(v["errorName"], known.name, "{text}");
    assert_eq!(header.as_deref(), Some(known.name), "{text}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{text}"
    );
    assert!(v["httpStatusCode"].as_str().is_some(), "{text}");
    v
}

fn decoded(name: &str) -> String {
    percent_encoding::percent_decode_str(name)
        .decode_utf8()
        .unwrap()
        .into_owned()
}

fn newest_id(entries: &[Value]) -> Option<i64> {
    entries.first().map(|e| e["id"].as_i64().unwrap())
}

/// Runs `send`, which must be refused with `status`/`code`; asserts that the certificate `name`
/// (as written in the URL) and the whole list are unchanged, and that the refusal is in the audit
/// log of the certificate when `audited` (else that nothing was appended). Returns the error body.
fn refused(
    api: &Api,
    name: &str,
    status: u16,
    code: &str,
    audited: bool,
    send: impl FnOnce() -> Response,
) -> Value {
    let target = decoded(name);
    let before = api.snapshot(name);
    let list_before = api.list();
    let last = newest_id(&api.audit(&target));
    let err = expect_error(send(), status, code);
    assert_eq!(
        api.snapshot(name),
        before,
        "refusal {code} changed certificate '{name}'"
    );
    assert_eq!(api.list(), list_before, "refusal {code} changed the list");
    let entries = api.audit(&target);
    if audited {
        let e = entries
            .first()
            .unwrap_or_else(|| panic!("no audit entry for refusal {code} of '{name}'"));
        assert!(
            newest_id(&entries) > last,
            "refusal {code} of '{name}' was not audited: newest entry is {e}"
        );
        assert_eq!(e["outcome"], "failure", "{e}");
        assert_eq!(e["code"], code, "{e}");
        assert_eq!(e["actor"], api.policy.as_str(), "{e}");
        assert_eq!(e["target"], format!("certificate/{target}"), "{e}");
    } else {
        assert_eq!(
            newest_id(&entries),
            last,
            "refusal {code} of '{name}' appended an audit entry: {:?}",
            entries.first()
        );
    }
    err
}

// ---------------------------------------------------------------------------------------------
// Verify: every proof-of-possession rule.

#[test]
fn proof_of_possession_rejections_then_lower_case_code_verifies() {
    let hub = start(&[]);
    let api = Api::owner(&hub);
    let root = make_ca("Contoso Root CA");
    let created = api.create("root", &root.pem);
    assert_eq!(created["properties"]["isVerified"], false);
    let etag_created = created["etag"].as_str().unwrap().to_string();

    // No code yet: 400056, whatever the certificate.
    let early = pop_cert(&root, &"AB".repeat(24));
    refused(&api, "root", 400, "400056", true, || {
        api.verify("root", &early, None)
    });

    // A regenerated code replaces the old one: a certificate for the old code is a CN mismatch.
    let code1 = api.code("root");
    let code2 = api.code("root");
    assert_ne!(code1, code2);
    let stale_cert = pop_cert(&root, &code1);
    refused(&api, "root", 400, "400055", true, || {
        api.verify("root", &stale_cert, None)
    });

    // The code is shown only by generateVerificationCode: never by GET nor in the audit log.
    let shown = api.state("root");
    assert!(!shown.to_string().contains(&code2), "{shown}");
    assert!(shown["properties"]["verificationCodeExpiry"].is_string());
    for e in api.audit("root") {
        assert!(!e.to_string().contains(&code2), "{e}");
    }

    // Wrong key: a different CA with the very same subject signs the verification certificate.
    let twin = make_ca("Contoso Root CA");
    let twin_cert = pop_cert(&twin, &code2);
    refused(&api, "root", 400, "400054", true, || {
        api.verify("root", &twin_cert, None)
    });

    // A self-signed certificate carrying the code as CN: its issuer is not the CA.
    let self_signed = make_ca(&code2).pem;
    refused(&api, "root", 400, "400053", true, || {
        api.verify("root", &self_signed, None)
    });

    // A verification certificate from another CA.
    let other = make_ca("Fabrikam Root CA");
    let other_cert = pop_cert(&other, &code2);
    refused(&api, "root", 400, "400053", true, || {
        api.verify("root", &other_cert, None)
    });

    // CN is not the code.
    let mismatch = pop_cert(&root, &"0".repeat(48));
    let e = refused(&api, "root", 400, "400055", true, || {
        api.verify("root", &mismatch, None)
    });
    // The message shows the found CN and no part of the live code.
    let message = e["message"].as_str().unwrap();
    assert!(message.contains(&"0".repeat(48)), "{message}");
    assert!(!message.contains(&code2), "{message}");
    assert!(!message.contains(&code2[..8]), "{message}");

    // No CN at all.
    let no_cn = signed_without_cn(&root);
    refused(&api, "root", 400, "400062", true, || {
        api.verify("root", &no_cn, None)
    });

    // Right CA, right code, but the verification certificate expired (and one not yet valid).
    let now = OffsetDateTime::now_utc();
    let expired = gen::make_verification_cert(
        &code2,
        &root.issuer,
        now - Duration::days(10),
        Duration::days(1),
    )
    .unwrap()
    .cert_pem;
    refused(&api, "root", 400, "400058", true, || {
        api.verify("root", &expired, None)
    });
    let future = gen::make_verification_cert(
        &code2,
        &root.issuer,
        now + Duration::days(10),
        Duration::days(1),
    )
    .unwrap()
    .cert_pem;
    refused(&api, "root", 400, "400058", true, || {
        api.verify("root", &future, None)
    });

    // The input rules apply to the verification certificate too.
    let good = pop_cert(&root, &code2.to_ascii_lowercase());
    refused(&api, "root", 400, "400051", true, || {
        api.verify("root", "this is not a certificate", None)
    });
    refused(&api, "root", 400, "400065", true, || {
        api.verify("root", "", None)
    });
    let two = format!("{good}{}", root.pem);
    refused(&api, "root", 400, "400052", true, || {
        api.verify("root", &two, None)
    });
    let padded = format!("{good}{}", " ".repeat(65 * 1024));
    refused(&api, "root", 400, "400063", true, || {
        api.verify("root", &padded, None)
    });
    // A private key is refused for what it is (issue 16, finding 7).
    refused(&api, "root", 400, "400077", true, || {
        api.verify("root", &root.key, None)
    });

    // Malformed bodies are refused by the API before the hub sees them.
    refused(&api, "root", 400, "400004", true, || {
        api.verify_raw("root", "{\"certificate\": ", None)
    });
    refused(&api, "root", 400, "400004", true, || {
        api.verify_raw("root", "{}", None)
    });
    refused(&api, "root", 400, "400004", true, || {
        api.verify_raw("root", "{\"certificate\": 42}", None)
    });

    // A stale etag (from before the codes) is refused even with a good certificate.
    refused(&api, "root", 412, "412001", true, || {
        api.verify("root", &good, Some(&etag_created))
    });

    // The order of the checks (docs/flows.md): If-Match before the body; issuer before
    // signature; signature before CN; CN before validity.
    refused(&api, "root", 412, "412001", true, || {
        api.verify("root", "garbage", Some(&etag_created))
    });
    let other_wrong_cn = pop_cert(&other, &"1".repeat(48));
    refused(&api, "root", 400, "400053", true, || {
        api.verify("root", &other_wrong_cn, None)
    });
    let twin_wrong_cn = pop_cert(&twin, &"1".repeat(48));
    refused(&api, "root", 400, "400054", true, || {
        api.verify("root", &twin_wrong_cn, None)
    });
    let expired_wrong_cn = gen::make_verification_cert(
        &"1".repeat(48),
        &root.issuer,
        now - Duration::days(10),
        Duration::days(1),
    )
    .unwrap()
    .cert_pem;
    refused(&api, "root", 400, "400055", true, || {
        api.verify("root", &expired_wrong_cn, None)
    });

    // After all of that, a lower-case copy of the live code verifies (hex, compared without case).
    let before = api.state("root");
    let current = before["etag"].as_str().unwrap().to_string();
    let v = expect_ok(api.verify("root", &good, Some(&current)), 200);
    assert_eq!(v["properties"]["isVerified"], true, "{v}");
    assert_eq!(v["properties"]["status"], "Verified", "{v}");
    assert!(v["properties"]["verificationCodeExpiry"].is_null(), "{v}");
    assert_ne!(v["etag"], before["etag"]);
    assert_eq!(api.state("root")["properties"]["isVerified"], true);
    let e = &api.audit("root")[0];
    assert_eq!(e["outcome"], "success", "{e}");
    assert_eq!(e["action"], "certificate.verify", "{e}");
    assert!(e["code"].is_null(), "{e}");

    // The code is consumed: verifying again with the same certificate is 400064.
    refused(&api, "root", 400, "400064", true, || {
        api.verify("root", &good, None)
    });

    // A new code makes a new verification possible (the CA stays Verified).
    let code3 = api.code("root");
    let v = expect_ok(api.verify("root", &pop_cert(&root, &code3), None), 200);
    assert_eq!(v["properties"]["isVerified"], true);
}

// ---------------------------------------------------------------------------------------------
// Upload: names, inputs, CA rules, isVerified, bodies, existence.

#[test]
fn upload_rejections() {
    let hub = start(&[]);
    let api = Api::owner(&hub);
    let base = make_ca("Upload Base CA");
    api.create("base", &base.pem);
    let base_etag = api.etag("base");
    let fresh = make_ca("Fresh CA");

    // Names: refused on every certificate route, before anything else.
    let long = "x".repeat(65);
    for name in ["bad%20name", long.as_str(), "x%2Fy", "a!"] {
        refused(&api, name, 400, "400050", true, || {
            api.put(name, &put_body(&fresh.pem), None)
        });
        refused(&api, name, 400, "400050", true, || api.generate(name, None));
        refused(&api, name, 400, "400050", true, || {
            api.verify(name, &fresh.pem, None)
        });
        refused(&api, name, 400, "400050", true, || api.delete(name, None));
        expect_error(api.get(name), 400, "400050");
    }
    // 64 characters of the allowed alphabet are fine.
    let max_name = format!("A-b.c_{}", "9".repeat(58));
    assert_eq!(max_name.len(), 64);
    api.create(&max_name, &make_ca("Longest Name CA").pem);

    // A leaf (basicConstraints CA:FALSE) is not a CA: neither as a new name nor as a replacement.
    let now = OffsetDateTime::now_utc();
    let leaf = first_pem(
        &gen::make_leaf(
            "device-1",
            KeyKind::EcP256,
            &base.issuer,
            &[],
            now - Duration::hours(1),
            now + Duration::days(1),
        )
        .unwrap()
        .cert_pem,
    );
    refused(&api, "leafy", 400, "400059", true, || {
        api.put("leafy", &put_body(&leaf), None)
    });
    refused(&api, "base", 400, "400059", true, || {
        api.put("base", &put_body(&leaf), Some(&base_etag))
    });

    // An expired CA.
    let old = make_ca_valid("Old CA", now - Duration::days(30), now - Duration::days(1));
    refused(&api, "old", 400, "400066", true, || {
        api.put("old", &put_body(&old.pem), None)
    });

    // An RSA 1024 CA (made with openssl): unsupported key.
    let dir = hub.dir.clone();
    sh(&dir, "openssl", &["genrsa", "-out", "weak.key", "1024"]);
    sh(
        &dir,
        "openssl",
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "weak.key",
            "-out",
            "weak.pem",
            "-days",
            "30",
            "-subj",
            "/CN=Weak RSA CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ],
    );
    let weak = std::fs::read_to_string(dir.join("weak.pem")).unwrap();
    refused(&api, "weak", 400, "400061", true, || {
        api.put("weak", &put_body(&weak), None)
    });

    // The same certificate under another name.
    let e = refused(&api, "copy", 409, "409050", true, || {
        api.put("copy", &put_body(&base.pem), None)
    });
    assert!(e["message"].as_str().unwrap().contains("'base'"), "{e}");

    // Over --max-certificate-bytes (64 KiB): valid PEM padded with 65 KiB of white space.
    let padded = format!("{}{}", fresh.pem, " ".repeat(65 * 1024));
    refused(&api, "big", 400, "400063", true, || {
        api.put("big", &put_body(&padded), None)
    });
    refused(&api, "base", 400, "400063", true, || {
        api.put("base", &put_body(&padded), Some(&base_etag))
    });
    // A string over 64 KiB that is not even a certificate is refused for its size first.
    let junk = "A".repeat(70 * 1024);
    refused(&api, "big", 400, "400063", true, || {
        api.put("big", &put_body(&junk), None)
    });

    // Over --max-request-bytes (256 KiB): 413 from the API layer, before the hub.
    let huge = format!("{}{}", fresh.pem, "\n".repeat(300 * 1024));
    refused(&api, "huge", 413, "413001", true, || {
        api.put("huge", &put_body(&huge), None)
    });
    refused(&api, "base", 413, "413001", true, || {
        api.put("base", &put_body(&huge), Some(&base_etag))
    });

    // Garbage, two certificates, empty, a key instead of a certificate.
    refused(&api, "junk", 400, "400051", true, || {
        api.put("junk", &put_body("this is not a certificate"), None)
    });
    refused(&api, "junk", 400, "400051", true, || {
        api.put("junk", &put_body("TUlJQ2dEQ0NBaWFnQXdJQkFnSVVE"), None)
    });
    let two = format!("{}{}", fresh.pem, base.pem);
    refused(&api, "two", 400, "400052", true, || {
        api.put("two", &put_body(&two), None)
    });
    refused(&api, "empty", 400, "400065", true, || {
        api.put("empty", &put_body(""), None)
    });
    refused(&api, "empty", 400, "400065", true, || {
        api.put("empty", &put_body(" \r\n\t "), None)
    });
    refused(&api, "keyfile", 400, "400077", true, || {
        api.put("keyfile", &put_body(&fresh.key), None)
    });

    // isVerified=true on upload without --allow-verify-on-upload, in both body shapes.
    refused(&api, "eager", 400, "400060", true, || {
        api.put(
            "eager",
            &json!({ "properties": { "certificate": fresh.pem, "isVerified": true } }),
            None,
        )
    });
    refused(&api, "eager", 400, "400060", true, || {
        api.put(
            "eager",
            &json!({ "certificate": fresh.pem, "isVerified": true }),
            None,
        )
    });
    // ... nor can a replacement mark an existing CA Verified.
    refused(&api, "base", 400, "400060", true, || {
        api.put(
            "base",
            &json!({ "properties": { "certificate": base.pem, "isVerified": true } }),
            Some(&base_etag),
        )
    });

    // Malformed JSON, a body without a certificate, wrong types: 400004 (API layer).
    for body in [
        "{\"properties\": {",
        "not json",
        "",
        "{}",
        "{\"properties\": {}}",
        "{\"properties\": {\"isVerified\": false}}",
        "{\"properties\": {\"certificate\": 5}}",
        "[1, 2]",
    ] {
        refused(&api, "fresh", 400, "400004", true, || {
            api.put_raw("fresh", body, None)
        });
        refused(&api, "base", 400, "400004", true, || {
            api.put_raw("base", body, Some(&base_etag))
        });
    }

    // An existing name without If-Match: 412002; If-Match on a missing name: 412001.
    refused(&api, "base", 412, "412002", true, || {
        api.put("base", &put_body(&fresh.pem), None)
    });
    refused(&api, "ghost", 412, "412001", true, || {
        api.put("ghost", &put_body(&fresh.pem), Some("*"))
    });

    // The order of the upload rules (docs/flows.md): name, input, CA, isVerified, existence.
    refused(&api, "a!", 400, "400050", true, || {
        api.put("a!", &put_body("garbage"), None)
    });
    refused(&api, "base", 400, "400051", true, || {
        api.put("base", &put_body("garbage"), None)
    });
    refused(&api, "ghost", 400, "400051", true, || {
        api.put("ghost", &put_body("garbage"), Some("*"))
    });
    refused(&api, "eager", 400, "400059", true, || {
        api.put(
            "eager",
            &json!({ "properties": { "certificate": leaf, "isVerified": true } }),
            None,
        )
    });
    refused(&api, "base", 400, "400060", true, || {
        api.put(
            "base",
            &json!({ "properties": { "certificate": fresh.pem, "isVerified": true } }),
            None,
        )
    });

    // None of those refusals left anything behind: the fresh CA registers normally, and the base
    // is still at its original etag.
    let v = api.create("fresh", &fresh.pem);
    assert_eq!(v["properties"]["isVerified"], false);
    assert_eq!(api.etag("base"), base_etag);
}

// ---------------------------------------------------------------------------------------------
// Preconditions (If-Match) and missing certificates.

#[test]
fn stale_etags_and_missing_certificates() {
    let hub = start(&[]);
    let api = Api::owner(&hub);
    let ca = make_ca("Etag CA");
    api.create("etagged", &ca.pem);
    let stale = api.etag("etagged");
    let code = api.code("etagged");
    let current = api.etag("etagged");
    assert_ne!(stale, current);
    let good = pop_cert(&ca, &code);

    for if_match in [stale.as_str(), "\"AAAAAAAAAAA=\"", "garbage"] {
        refused(&api, "etagged", 412, "412001", true, || {
            api.verify("etagged", &good, Some(if_match))
        });
        refused(&api, "etagged", 412, "412001", true, || {
            api.generate("etagged", Some(if_match))
        });
        refused(&api, "etagged", 412, "412001", true, || {
            api.delete("etagged", Some(if_match))
        });
        refused(&api, "etagged", 412, "412001", true, || {
            api.put("etagged", &put_body(&ca.pem), Some(if_match))
        });
    }

    // Missing certificates: 404050 on every certificate route (GET is a read: not audited).
    refused(&api, "ghost", 404, "404050", false, || api.get("ghost"));
    refused(&api, "ghost", 404, "404050", true, || {
        api.verify("ghost", &good, None)
    });
    refused(&api, "ghost", 404, "404050", true, || {
        api.generate("ghost", None)
    });
    refused(&api, "ghost", 404, "404050", true, || {
        api.delete("ghost", None)
    });
    refused(&api, "ghost", 404, "404050", true, || {
        api.delete("ghost", Some("*"))
    });

    // The current etag, quoted or not, still works after all those refusals.
    let v = expect_ok(
        api.verify("etagged", &good, Some(&format!("\"{current}\""))),
        200,
    );
    assert_eq!(v["properties"]["isVerified"], true);
    let after = v["etag"].as_str().unwrap().to_string();
    refused(&api, "etagged", 412, "412001", true, || {
        api.delete("etagged", Some(&current))
    });
    let r = api.delete("etagged", Some(&after));
    assert_eq!(r.status(), 204);
    expect_error(api.get("etagged"), 404, "404050");
    let e = &api.audit("etagged")[0];
    assert_eq!(e["action"], "certificate.delete", "{e}");
    assert_eq!(e["outcome"], "success", "{e}");
}

// ---------------------------------------------------------------------------------------------
// Body shapes and replacement.

#[test]
fn legacy_body_shape_and_replacing_content_resets_verification() {
    let hub = start(&[]);
    let api = Api::owner(&hub);
    let a = make_ca("Legacy A CA");
    let b = make_ca("Legacy B CA");

    // The 2017 top-level shape creates (201) and, with If-Match, replaces (200).
    let v = expect_ok(
        api.put("legacy", &json!({ "certificate": a.pem }), None),
        201,
    );
    assert_eq!(v["properties"]["isVerified"], false);
    assert_eq!(v["properties"]["status"], "Unverified");
    let etag1 = v["etag"].as_str().unwrap().to_string();
    let v = expect_ok(
        api.put(
            "legacy",
            &json!({ "certificate": a.pem, "isVerified": false }),
            Some(&etag1),
        ),
        200,
    );
    assert_ne!(v["etag"].as_str().unwrap(), etag1);
    assert_eq!(
        v["properties"]["subject"],
        api.state("legacy")["properties"]["subject"]
    );

    // Verify it.
    let code = api.code("legacy");
    expect_ok(api.verify("legacy", &pop_cert(&a, &code), None), 200);
    let verified = api.state("legacy");
    assert_eq!(verified["properties"]["isVerified"], true);

    // Replacing with the same content keeps it Verified.
    let v = expect_ok(
        api.put(
            "legacy",
            &put_body(&a.pem),
            Some(verified["etag"].as_str().unwrap()),
        ),
        200,
    );
    assert_eq!(v["properties"]["isVerified"], true, "{v}");

    // Replacing a Verified CA with a different CA resets it to Unverified, and clears its code.
    let code_b = api.code("legacy");
    let v = expect_ok(
        api.put("legacy", &put_body(&b.pem), Some(&api.etag("legacy"))),
        200,
    );
    assert_eq!(v["properties"]["isVerified"], false, "{v}");
    assert_eq!(v["properties"]["status"], "Unverified", "{v}");
    assert!(v["properties"]["verificationCodeExpiry"].is_null(), "{v}");
    assert_ne!(
        v["properties"]["thumbprint"],
        verified["properties"]["thumbprint"]
    );
    assert!(
        v["properties"]["subject"]
            .as_str()
            .unwrap()
            .contains("Legacy B CA"),
        "{v}"
    );
    refused(&api, "legacy", 400, "400056", true, || {
        api.verify("legacy", &pop_cert(&b, &code_b), None)
    });
    // The old CA's key proves nothing for the new content.
    let code = api.code("legacy");
    refused(&api, "legacy", 400, "400053", true, || {
        api.verify("legacy", &pop_cert(&a, &code), None)
    });
    expect_ok(api.verify("legacy", &pop_cert(&b, &code), None), 200);

    // A's thumbprint was released by the replacement: it registers under another name; replacing
    // "legacy" back with it now collides with that name.
    api.create("again", &a.pem);
    let etag = api.etag("legacy");
    refused(&api, "legacy", 409, "409050", true, || {
        api.put("legacy", &put_body(&a.pem), Some(&etag))
    });
}

// ---------------------------------------------------------------------------------------------
// Rules that depend on serve flags: code lifetime, CA limit, size limits, verify on upload.

#[test]
fn serve_flags_code_lifetime_ca_limit_sizes_and_verify_on_upload() {
    let hub = start(&[
        "--code-lifetime",
        "2s",
        "--ca-limit",
        "2",
        "--allow-verify-on-upload",
        "--max-certificate-bytes",
        "4096",
        "--max-request-bytes",
        "8192",
    ]);
    let api = Api::owner(&hub);

    // A code living 2 s: generate first, do the rest while it ages.
    let slow = make_ca("Slow CA");
    api.create("slow", &slow.pem);
    let started = std::time::Instant::now();
    let code = api.code("slow");
    let cert = pop_cert(&slow, &code);

    // With --allow-verify-on-upload, isVerified=true is honoured: Verified at once.
    let trusted = make_ca("Trusted On Upload CA");
    let v = expect_ok(
        api.put(
            "trusted",
            &json!({ "properties": { "certificate": trusted.pem, "isVerified": true } }),
            None,
        ),
        201,
    );
    assert_eq!(v["properties"]["isVerified"], true, "{v}");
    assert_eq!(v["properties"]["status"], "Verified", "{v}");
    let e = &api.audit("trusted")[0];
    assert_eq!(e["outcome"], "success", "{e}");
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("Verified (on upload)"),
        "{e}"
    );

    // --max-certificate-bytes 4096 and --max-request-bytes 8192.
    let padded = format!("{}{}", trusted.pem, " ".repeat(4096));
    refused(&api, "trusted", 400, "400063", true, || {
        api.put("trusted", &put_body(&padded), Some("*"))
    });
    let huge = format!("{}{}", trusted.pem, " ".repeat(8192));
    refused(&api, "trusted", 413, "413001", true, || {
        api.put("trusted", &put_body(&huge), Some("*"))
    });
    let padded_pop = format!("{cert}{}", " ".repeat(4096));
    refused(&api, "slow", 400, "400063", true, || {
        api.verify("slow", &padded_pop, None)
    });

    // The CA limit (2): a third create is refused, and leaves nothing.
    let third = make_ca("Third CA");
    refused(&api, "third", 403, "403050", true, || {
        api.put("third", &put_body(&third.pem), None)
    });

    // The code has expired.
    std::thread::sleep(std::time::Duration::from_millis(3200).saturating_sub(started.elapsed()));
    let state = api.state("slow");
    assert!(
        state["properties"]["verificationCodeExpiry"].is_null(),
        "{state}"
    );
    refused(&api, "slow", 400, "400057", true, || {
        api.verify("slow", &cert, None)
    });
    // The code is checked before the body.
    refused(&api, "slow", 400, "400057", true, || {
        api.verify("slow", "garbage", None)
    });
    // A fresh code verifies.
    let code = api.code("slow");
    expect_ok(api.verify("slow", &pop_cert(&slow, &code), None), 200);

    // Deleting one CA makes room for the third.
    assert_eq!(api.delete("trusted", Some("*")).status(), 204);
    api.create("third", &third.pem);
}

// ---------------------------------------------------------------------------------------------
// Refusals decided by the API layer.

/// docs/decisions.md: "authenticated refusals, including 403, are audited" and "a refusal appends
/// only a failure audit entry". An authenticated owner's PUT or verify with malformed JSON, without
/// a certificate, or over --max-request-bytes is refused by `iothub_api` (read_json / the handler)
/// before the hub is called, so no audit entry is written (the other rejection tests assert that
/// nothing is appended today; this one states the documented behaviour).
#[test]
fn api_layer_refusals_are_audited() {
    let hub = start(&[]);
    let api = Api::owner(&hub);
    let root = make_ca("API Layer CA");
    api.create("root", &root.pem);
    let etag = api.etag("root");
    refused(&api, "root", 400, "400004", true, || {
        api.put_raw("root", "{\"properties\": {", Some(&etag))
    });
    refused(&api, "root", 400, "400004", true, || {
        api.put_raw("root", "{\"properties\": {}}", Some(&etag))
    });
    refused(&api, "newcomer", 400, "400004", true, || {
        api.put_raw("newcomer", "not json", None)
    });
    refused(&api, "root", 400, "400004", true, || {
        api.verify_raw("root", "{}", None)
    });
    let huge = "A".repeat(300 * 1024);
    refused(&api, "root", 413, "413001", true, || {
        api.put("root", &put_body(&huge), Some(&etag))
    });
}
