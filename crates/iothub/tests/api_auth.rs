//! Authentication and authorization of the HTTPS API, end to end against `iothub serve`: every
//! route refuses every kind of bad SharedAccessSignature with 401 "401002" and a
//! `www-authenticate` header and changes nothing; policies without the right get 403 "403001"
//! (audited for writes, with the policy as actor); the owner reaches every route; and the CLI's
//! `iothub sas-token` makes tokens the API accepts.

mod common;

use common::*;
use iothub_pki::gen::{self, CaIssuer, KeyKind};
use reqwest::blocking::{Client, Response};
use reqwest::header::HeaderValue;
use reqwest::Method;
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};

/// Starts a hub whose MQTT listener binds an ephemeral loopback port (see tests/rejections.rs).
fn start(extra: &[&str]) -> TestHub {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var("IOTHUB_MQTT", "127.0.0.1:0"));
    TestHub::start(extra)
}

struct Ca {
    pem: String,
    issuer: CaIssuer,
}

fn make_ca(cn: &str) -> Ca {
    let now = OffsetDateTime::now_utc();
    let g = gen::make_ca(
        cn,
        KeyKind::EcP256,
        None,
        now - Duration::hours(1),
        now + Duration::days(30),
    )
    .unwrap();
    Ca {
        issuer: CaIssuer::from_pem(&g.cert_pem, &g.key_pem).unwrap(),
        pem: g.cert_pem,
    }
}

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

/// One request of the route table: method, path (with query), JSON body, If-Match.
#[derive(Clone)]
struct Call {
    method: Method,
    path: String,
    body: Option<Value>,
    if_match: Option<String>,
}

fn call(method: Method, path: &str) -> Call {
    Call {
        method,
        path: path.to_string(),
        body: None,
        if_match: None,
    }
}

impl Call {
    fn body(mut self, body: Value) -> Call {
        self.body = Some(body);
        self
    }

    fn if_match(mut self, etag: &str) -> Call {
        self.if_match = Some(etag.to_string());
        self
    }

    fn label(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Sends `c` with `auth` as the Authorization header (None: no header at all).
fn send(http: &Client, base: &str, c: &Call, auth: Option<&HeaderValue>) -> Response {
    let mut rb = http.request(c.method.clone(), format!("{base}{}", c.path));
    if let Some(a) = auth {
        rb = rb.header("Authorization", a.clone());
    }
    if let Some(m) = &c.if_match {
        rb = rb.header("If-Match", m);
    }
    if let Some(b) = &c.body {
        rb = rb.json(b);
    }
    rb.send()
        .unwrap_or_else(|e| panic!("{} failed: {e}", c.label()))
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap()
}

/// Asserts an error answer with `status` and JSON `code`; returns the body.
fn expect_error(r: Response, status: u16, code: &str, what: &str) -> Value {
    let got = r.status().as_u16();
    let www = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let errorcode = r
        .headers()
        .get("iothub-errorcode")
        .map(|v| v.to_str().unwrap().to_string());
    let text = r.text().unwrap();
    assert_eq!(
        got, status,
        "{what}: expected {status} {code}, got {got}: {text}"
    );
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e}): {text}"));
    assert_eq!(v["code"], code, "{what}: {text}");
    assert_eq!(
        errorcode.as_deref(),
        v["errorName"].as_str(),
        "{what}: {text}"
    );
    if status == 401 {
        assert_eq!(
            www.as_deref(),
            Some("SharedAccessSignature"),
            "{what}: 401 without www-authenticate"
        );
        assert_eq!(v["errorName"], "IotHubUnauthorizedAccess", "{what}: {text}");
        assert_eq!(v["httpStatusCode"], "Unauthorized", "{what}: {text}");
    }
    if status == 403 {
        assert_eq!(v["errorName"], "IotHubForbidden", "{what}: {text}");
    }
    v
}

fn expect_status(r: Response, status: u16, what: &str) -> Value {
    let got = r.status().as_u16();
    let text = r.text().unwrap();
    assert_eq!(got, status, "{what}: expected {status}, got {got}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// What must not change: the certificate list and the whole audit log.
fn world(http: &Client, base: &str, owner: &HeaderValue) -> (Value, Value) {
    let list = expect_status(
        send(http, base, &call(Method::GET, "/certificates"), Some(owner)),
        200,
        "list",
    );
    let audit = expect_status(
        send(
            http,
            base,
            &call(Method::GET, "/audit?limit=1000"),
            Some(owner),
        ),
        200,
        "audit",
    );
    (list, audit)
}

fn newest_audit(http: &Client, base: &str, owner: &HeaderValue, name: &str) -> Value {
    let v = expect_status(
        send(
            http,
            base,
            &call(
                Method::GET,
                &format!("/audit?target=certificate%2F{name}&limit=1"),
            ),
            Some(owner),
        ),
        200,
        "audit",
    );
    v["value"][0].clone()
}

/// The owner key, from the connection string the hub wrote.
fn owner_key(hub: &TestHub) -> String {
    hub.connection_string()
        .split("SharedAccessKey=")
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn every_route_refuses_bad_tokens_with_401_and_changes_nothing() {
    let hub = start(&[]);
    let http = hub.client();
    let base = hub.base();
    let owner = hv(&hub.owner_token());
    let key = owner_key(&hub);
    let read_key = hub.policy_key("registryRead");
    let host = format!("localhost:{}", hub.port);
    let later = unix_now() + 3600;

    // A registered CA with a live code, so that every route has something real to act on.
    let ca = make_ca("Auth Root CA");
    let put = json!({ "properties": { "certificate": ca.pem } });
    expect_status(
        send(
            &http,
            &base,
            &call(Method::PUT, "/certificates/root").body(put.clone()),
            Some(&owner),
        ),
        201,
        "create root",
    );
    let v = expect_status(
        send(
            &http,
            &base,
            &call(Method::POST, "/certificates/root/generateVerificationCode"),
            Some(&owner),
        ),
        200,
        "code",
    );
    let code = v["properties"]["verificationCode"].as_str().unwrap();
    let etag = v["etag"].as_str().unwrap().to_string();
    let verify = json!({ "certificate": pop_cert(&ca, code) });
    let other = make_ca("Auth Other CA");
    let put_other = json!({ "properties": { "certificate": other.pem } });

    let routes = vec![
        call(Method::GET, "/certificates"),
        call(Method::GET, "/certificates/root"),
        call(Method::GET, "/certificates/ghost"),
        call(Method::PUT, "/certificates/newcomer").body(put_other.clone()),
        call(Method::PUT, "/certificates/root")
            .body(put_other.clone())
            .if_match(&etag),
        call(Method::DELETE, "/certificates/root"),
        call(Method::DELETE, "/certificates/root").if_match(&etag),
        call(Method::POST, "/certificates/root/generateVerificationCode"),
        call(Method::POST, "/certificates/root/verify").body(verify.clone()),
        call(Method::POST, "/certificates/ghost/verify").body(verify.clone()),
        call(Method::GET, "/audit"),
        call(Method::GET, "/audit?target=certificate%2Froot&limit=5"),
        call(Method::GET, "/policies"),
        call(Method::POST, "/policies/iothubowner/listKeys"),
        call(Method::POST, "/policies/registryRead/listKeys"),
        call(Method::GET, "/openapi.json"),
        call(Method::GET, "/no/such/route"),
        call(Method::POST, "/no/such/route").body(json!({})),
        call(Method::GET, "/"),
        // The device routes share the same guard.
        call(Method::GET, "/devices"),
        call(Method::GET, "/devices/dev-1"),
        call(Method::PUT, "/devices/dev-1").body(json!({ "deviceId": "dev-1" })),
        call(Method::DELETE, "/devices/dev-1"),
        call(Method::GET, "/devices/dev-1/messages/devicebound"),
        call(Method::POST, "/devices/dev-1/messages/devicebound").body(json!({ "body": "x" })),
        call(Method::GET, "/messages"),
        call(Method::GET, "/messages/stream"),
        call(Method::GET, "/connections"),
    ];

    let tampered = hub.token("iothubowner", &key, 60).replace("&se=", "&se=1");
    let bad: Vec<(&str, Option<HeaderValue>)> = vec![
        ("no Authorization", None),
        ("garbage", Some(hv("garbage"))),
        ("empty", Some(hv(""))),
        ("prefix only", Some(hv("SharedAccessSignature "))),
        ("bearer", Some(hv("Bearer abc.def.ghi"))),
        (
            "malformed signature",
            Some(hv(&format!(
                "SharedAccessSignature sr={host}&sig=!!&se={later}&skn=iothubowner"
            ))),
        ),
        (
            "no policy name",
            Some(hv(
                &iothub_pki::sas::build_token(&host, &key, None, later).unwrap()
            )),
        ),
        (
            "non-ASCII",
            Some(HeaderValue::from_bytes(b"SharedAccessSignature sr=\xe9").unwrap()),
        ),
        (
            "too long",
            Some(hv(&format!(
                "SharedAccessSignature sr={}",
                "a".repeat(5000)
            ))),
        ),
        (
            "expired owner token",
            Some(hv(&hub.token("iothubowner", &key, -10))),
        ),
        (
            "wrong key (registryRead's key, skn=iothubowner)",
            Some(hv(&hub.token("iothubowner", &read_key, 3600))),
        ),
        (
            "unknown policy",
            Some(hv(&hub.token("nosuchpolicy", &key, 3600))),
        ),
        (
            "another host",
            Some(hv(&iothub_pki::sas::build_token(
                "otherhost",
                &key,
                Some("iothubowner"),
                later,
            )
            .unwrap())),
        ),
        (
            "another host with this port",
            Some(hv(&iothub_pki::sas::build_token(
                &format!("otherhost:{}", hub.port),
                &key,
                Some("iothubowner"),
                later,
            )
            .unwrap())),
        ),
        ("tampered expiry", Some(hv(&tampered))),
        (
            "wrong key (the owner's key, skn=registryRead)",
            Some(hv(&hub.token("registryRead", &key, 3600))),
        ),
    ];

    let before = world(&http, &base, &owner);
    for (what, auth) in &bad {
        for route in &routes {
            let r = send(&http, &base, route, auth.as_ref());
            expect_error(r, 401, "401002", &format!("{what}: {}", route.label()));
        }
    }
    // Unauthenticated requests change nothing and are not audited.
    assert_eq!(world(&http, &base, &owner), before);
    let root = expect_status(
        send(
            &http,
            &base,
            &call(Method::GET, "/certificates/root"),
            Some(&owner),
        ),
        200,
        "root",
    );
    assert_eq!(root["etag"], etag.as_str());
    assert_eq!(root["properties"]["isVerified"], false);
}

#[test]
fn rights_are_enforced_per_policy_and_the_owner_reaches_every_route() {
    let hub = start(&[]);
    let http = hub.client();
    let base = hub.base();
    let owner = hv(&hub.owner_token());
    let read = hv(&hub.token("registryRead", &hub.policy_key("registryRead"), 3600));
    let service = hv(&hub.token("service", &hub.policy_key("service"), 3600));
    let device = hv(&hub.token("device", &hub.policy_key("device"), 3600));
    let read_write = hv(&hub.token(
        "registryReadWrite",
        &hub.policy_key("registryReadWrite"),
        3600,
    ));

    let ca = make_ca("Rights Root CA");
    let put = json!({ "properties": { "certificate": ca.pem } });
    expect_status(
        send(
            &http,
            &base,
            &call(Method::PUT, "/certificates/root").body(put.clone()),
            Some(&owner),
        ),
        201,
        "create root",
    );
    let v = expect_status(
        send(
            &http,
            &base,
            &call(Method::POST, "/certificates/root/generateVerificationCode"),
            Some(&owner),
        ),
        200,
        "code",
    );
    let code = v["properties"]["verificationCode"]
        .as_str()
        .unwrap()
        .to_string();
    let etag = v["etag"].as_str().unwrap().to_string();
    let verify = json!({ "certificate": pop_cert(&ca, &code) });
    let other = make_ca("Rights Other CA");
    let put_other = json!({ "properties": { "certificate": other.pem } });

    // registryRead: reads work.
    for path in [
        "/certificates",
        "/certificates/root",
        "/audit",
        "/audit?target=certificate%2Froot&limit=5",
        "/policies",
    ] {
        expect_status(
            send(&http, &base, &call(Method::GET, path), Some(&read)),
            200,
            &format!("registryRead GET {path}"),
        );
    }
    // ... writes and key reads are 403, change nothing, and certificate writes are audited with
    // registryRead as the actor.
    let writes = [
        call(Method::PUT, "/certificates/newcomer").body(put_other.clone()),
        call(Method::PUT, "/certificates/root")
            .body(put_other.clone())
            .if_match(&etag),
        call(Method::DELETE, "/certificates/root"),
        call(Method::DELETE, "/certificates/root").if_match("*"),
        call(Method::POST, "/certificates/root/generateVerificationCode"),
        call(Method::POST, "/certificates/root/verify").body(verify.clone()),
    ];
    for w in &writes {
        let list_before = world(&http, &base, &owner).0;
        let r = send(&http, &base, w, Some(&read));
        expect_error(r, 403, "403001", &format!("registryRead {}", w.label()));
        assert_eq!(world(&http, &base, &owner).0, list_before, "{}", w.label());
        let name = w.path.split('/').nth(2).unwrap();
        let e = newest_audit(&http, &base, &owner, name);
        assert_eq!(e["actor"], "registryRead", "{}: {e}", w.label());
        assert_eq!(e["outcome"], "failure", "{}: {e}", w.label());
        assert_eq!(e["code"], "403001", "{}: {e}", w.label());
    }
    for policy in ["iothubowner", "registryRead", "service"] {
        let r = send(
            &http,
            &base,
            &call(Method::POST, &format!("/policies/{policy}/listKeys")),
            Some(&read),
        );
        let e = expect_error(r, 403, "403001", &format!("registryRead listKeys {policy}"));
        assert!(
            !e.to_string().contains(&hub.policy_key(policy)),
            "a key leaked in a 403: {e}"
        );
    }
    // The root is untouched: same etag, its code still live.
    let root = expect_status(
        send(
            &http,
            &base,
            &call(Method::GET, "/certificates/root"),
            Some(&owner),
        ),
        200,
        "root",
    );
    assert_eq!(root["etag"], etag.as_str());
    assert!(root["properties"]["verificationCodeExpiry"].is_string());

    // service and device lack RegistryRead.
    for (policy, token) in [("service", &service), ("device", &device)] {
        for path in ["/certificates", "/certificates/root", "/audit"] {
            expect_error(
                send(&http, &base, &call(Method::GET, path), Some(token)),
                403,
                "403001",
                &format!("{policy} GET {path}"),
            );
        }
        expect_error(
            send(
                &http,
                &base,
                &call(Method::POST, "/certificates/root/generateVerificationCode"),
                Some(token),
            ),
            403,
            "403001",
            &format!("{policy} generateVerificationCode"),
        );
    }

    // registryReadWrite may change certificates but not read keys.
    expect_status(
        send(
            &http,
            &base,
            &call(Method::PUT, "/certificates/rw").body(put_other.clone()),
            Some(&read_write),
        ),
        201,
        "registryReadWrite PUT",
    );
    let e = newest_audit(&http, &base, &owner, "rw");
    assert_eq!(e["actor"], "registryReadWrite", "{e}");
    assert_eq!(e["outcome"], "success", "{e}");
    expect_error(
        send(
            &http,
            &base,
            &call(Method::POST, "/policies/iothubowner/listKeys"),
            Some(&read_write),
        ),
        403,
        "403001",
        "registryReadWrite listKeys",
    );
    expect_status(
        send(
            &http,
            &base,
            &call(Method::DELETE, "/certificates/rw"),
            Some(&read_write),
        ),
        204,
        "registryReadWrite DELETE",
    );

    // The owner reaches every route.
    for path in [
        "/certificates",
        "/certificates/root",
        "/audit",
        "/audit?target=certificate%2Froot&limit=5",
        "/policies",
    ] {
        expect_status(
            send(&http, &base, &call(Method::GET, path), Some(&owner)),
            200,
            &format!("owner GET {path}"),
        );
    }
    let doc = expect_status(
        send(
            &http,
            &base,
            &call(Method::GET, "/openapi.json"),
            Some(&owner),
        ),
        200,
        "owner GET /openapi.json",
    );
    assert!(
        doc["paths"]["/certificates/{name}/verify"].is_object(),
        "{doc}"
    );
    let keys = expect_status(
        send(
            &http,
            &base,
            &call(Method::POST, "/policies/registryRead/listKeys"),
            Some(&owner),
        ),
        200,
        "owner listKeys",
    );
    assert_eq!(
        keys["primaryKey"].as_str().unwrap(),
        hub.policy_key("registryRead")
    );
    expect_error(
        send(
            &http,
            &base,
            &call(Method::POST, "/policies/nosuchpolicy/listKeys"),
            Some(&owner),
        ),
        404,
        "404051",
        "owner listKeys of a missing policy",
    );
    let v = expect_status(
        send(
            &http,
            &base,
            &call(Method::POST, "/certificates/root/verify")
                .body(verify.clone())
                .if_match(&etag),
            Some(&owner),
        ),
        200,
        "owner verify",
    );
    assert_eq!(v["properties"]["isVerified"], true);
    expect_status(
        send(
            &http,
            &base,
            &call(Method::POST, "/certificates/root/generateVerificationCode"),
            Some(&owner),
        ),
        200,
        "owner generateVerificationCode",
    );
    expect_status(
        send(
            &http,
            &base,
            &call(Method::PUT, "/certificates/newcomer").body(put_other.clone()),
            Some(&owner),
        ),
        201,
        "owner PUT create",
    );
    let etag = expect_status(
        send(
            &http,
            &base,
            &call(Method::GET, "/certificates/newcomer"),
            Some(&owner),
        ),
        200,
        "owner GET newcomer",
    )["etag"]
        .as_str()
        .unwrap()
        .to_string();
    expect_status(
        send(
            &http,
            &base,
            &call(Method::PUT, "/certificates/newcomer")
                .body(put_other.clone())
                .if_match(&etag),
            Some(&owner),
        ),
        200,
        "owner PUT replace",
    );
    expect_status(
        send(
            &http,
            &base,
            &call(Method::DELETE, "/certificates/newcomer"),
            Some(&owner),
        ),
        204,
        "owner DELETE",
    );
    // An unknown route, once authenticated, is a plain 404.
    expect_error(
        send(
            &http,
            &base,
            &call(Method::GET, "/no/such/route"),
            Some(&owner),
        ),
        404,
        "404000",
        "owner unknown route",
    );
}

#[test]
fn cli_sas_tokens_are_accepted_and_scoped() {
    let hub = start(&[]);
    let http = hub.client();
    let base = hub.base();

    let owner = ok(&hub.cli(&["sas-token"])).trim().to_string();
    assert!(owner.starts_with("SharedAccessSignature "), "{owner}");
    assert!(owner.contains("skn=iothubowner"), "{owner}");
    let owner = hv(&owner);
    let ca = make_ca("CLI Token CA");
    let put = json!({ "properties": { "certificate": ca.pem } });
    expect_status(
        send(
            &http,
            &base,
            &call(Method::PUT, "/certificates/cli").body(put.clone()),
            Some(&owner),
        ),
        201,
        "PUT with the CLI's owner token",
    );
    expect_status(
        send(
            &http,
            &base,
            &call(Method::POST, "/policies/iothubowner/listKeys"),
            Some(&owner),
        ),
        200,
        "listKeys with the CLI's owner token",
    );

    // --policy registryRead: a read-only token.
    let read = ok(&hub.cli(&["sas-token", "--policy", "registryRead"]))
        .trim()
        .to_string();
    assert!(read.contains("skn=registryRead"), "{read}");
    let read = hv(&read);
    let list = expect_status(
        send(
            &http,
            &base,
            &call(Method::GET, "/certificates"),
            Some(&read),
        ),
        200,
        "GET with the CLI's registryRead token",
    );
    assert_eq!(list["value"].as_array().unwrap().len(), 1, "{list}");
    expect_error(
        send(
            &http,
            &base,
            &call(Method::DELETE, "/certificates/cli"),
            Some(&read),
        ),
        403,
        "403001",
        "DELETE with the CLI's registryRead token",
    );
    expect_error(
        send(
            &http,
            &base,
            &call(Method::PUT, "/certificates/cli2").body(put.clone()),
            Some(&read),
        ),
        403,
        "403001",
        "PUT with the CLI's registryRead token",
    );

    // JSON output carries the token and its expiry.
    let v: Value =
        serde_json::from_str(&ok(&hub.cli(&["-o", "json", "sas-token", "--ttl", "60"]))).unwrap();
    let expiry = v["expiry"].as_i64().unwrap();
    assert!((expiry - unix_now() - 60).abs() <= 5, "{v}");
    expect_status(
        send(
            &http,
            &base,
            &call(Method::GET, "/certificates"),
            Some(&hv(v["sas"].as_str().unwrap())),
        ),
        200,
        "GET with the CLI's JSON token",
    );

    // A zero or negative lifetime is refused with a clear error, and prints no token.
    for ttl in ["--ttl=0", "--ttl=-5", "--ttl=31536001"] {
        let out = hub.cli(&["sas-token", ttl]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{ttl} succeeded");
        assert!(stderr.contains("--ttl"), "{ttl}: {stderr}");
        assert!(stderr.contains("expected 1 to"), "{ttl}: {stderr}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("SharedAccessSignature"),
            "{ttl} printed a token"
        );
    }
    // An unknown policy is a clear error too.
    let out = hub.cli(&["sas-token", "--policy", "nosuchpolicy"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nosuchpolicy"), "{stderr}");
}

/// Methods a path does not serve must not tell an anonymous caller that the path exists: the
/// route table must not be probeable without a token (ARCHITECTURE.md, Invariants: "unknown routes
/// answer 401 before 404, so the route table cannot be probed anonymously"). Today a known path
/// with an unserved method answers 405 (axum's method-not-allowed fallback) before authentication,
/// while an unknown path answers 401: the difference reveals which paths exist.
#[test]
fn anonymous_callers_cannot_probe_the_route_table_with_other_methods() {
    let hub = start(&[]);
    let http = hub.client();
    let base = hub.base();
    let mut answers = Vec::new();
    for (method, path) in [
        (Method::POST, "/certificates"),
        (Method::DELETE, "/audit"),
        (Method::PUT, "/openapi.json"),
        (Method::GET, "/certificates/root/verify"),
        (Method::POST, "/no/such/route"),
    ] {
        let r = send(&http, &base, &call(method.clone(), path), None);
        answers.push((format!("{method} {path}"), r.status().as_u16()));
    }
    assert!(
        answers.iter().all(|(_, s)| *s == 401),
        "anonymous answers differ by route: {answers:?}"
    );
}

/// docs/decisions.md: "authenticated refusals, including 403, are audited". Refusals of reads are
/// not: `Hub::list_certificates`, `get_certificate`, `audit_log` and `policy_keys` return the 403
/// without `refuse`, so e.g. a registryRead caller trying to read the owner's keys leaves no trace.
#[test]
fn forbidden_reads_are_audited() {
    let hub = start(&[]);
    let http = hub.client();
    let base = hub.base();
    let owner = hv(&hub.owner_token());
    let read = hv(&hub.token("registryRead", &hub.policy_key("registryRead"), 3600));
    let service = hv(&hub.token("service", &hub.policy_key("service"), 3600));
    let ca = make_ca("Audited Reads CA");
    expect_status(
        send(
            &http,
            &base,
            &call(Method::PUT, "/certificates/root")
                .body(json!({ "properties": { "certificate": ca.pem } })),
            Some(&owner),
        ),
        201,
        "create root",
    );
    let newest = || {
        let v = expect_status(
            send(
                &http,
                &base,
                &call(Method::GET, "/audit?limit=1"),
                Some(&owner),
            ),
            200,
            "audit",
        );
        v["value"][0].clone()
    };
    let attempts = [
        ("service", &service, call(Method::GET, "/certificates")),
        ("service", &service, call(Method::GET, "/certificates/root")),
        ("service", &service, call(Method::GET, "/audit")),
        (
            "registryRead",
            &read,
            call(Method::POST, "/policies/iothubowner/listKeys"),
        ),
    ];
    let mut missing = Vec::new();
    for (policy, token, c) in attempts {
        let last = newest()["id"].as_i64();
        expect_error(
            send(&http, &base, &c, Some(token)),
            403,
            "403001",
            &format!("{policy} {}", c.label()),
        );
        let e = newest();
        if e["id"].as_i64() <= last {
            missing.push(format!("{policy} {}", c.label()));
            continue;
        }
        assert_eq!(e["actor"], policy, "{e}");
        assert_eq!(e["outcome"], "failure", "{e}");
        assert_eq!(e["code"], "403001", "{e}");
    }
    assert!(missing.is_empty(), "403 refusals not audited: {missing:?}");
}
