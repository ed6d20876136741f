//! Shared access policies end to end (issue 16): `iothub policy` makes least-privilege policies
//! and rotates keys; a rotated or deleted key stops working at once, for tokens, event streams and
//! portal sessions; a portal session reads no keys and makes no login links; and every refused
//! token gets the same 401 body, whatever was wrong with it.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn cli_ok(hub: &TestHub, args: &[&str]) -> String {
    let out = hub.cli(args);
    assert!(
        out.status.success(),
        "iothub {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn cli_err(hub: &TestHub, args: &[&str]) -> String {
    let out = hub.cli(args);
    assert!(!out.status.success(), "iothub {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

fn keys(hub: &TestHub, name: &str) -> (String, String) {
    let v: Value = serde_json::from_str(&cli_ok(
        hub,
        &["-o", "json", "policy", "show", name, "--keys"],
    ))
    .unwrap();
    (
        v["primaryKey"].as_str().unwrap().to_string(),
        v["secondaryKey"].as_str().unwrap().to_string(),
    )
}

fn status(hub: &TestHub, method: reqwest::Method, path: &str, auth: &str) -> u16 {
    hub.client()
        .request(method, format!("{}{path}", hub.base()))
        .header("Authorization", auth)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// Finding 7: one 401 body for every refused token, so an anonymous caller cannot learn which
/// policy names exist.
#[test]
fn an_unknown_policy_and_a_wrong_signature_get_identical_401_bodies() {
    let hub = TestHub::start(&[]);
    let owner_key = hub.policy_key("iothubowner");
    let stranger = iothub_pki::sas::generate_key().unwrap();
    let tokens = [
        ("unknown policy", hub.token("nosuchpolicy", &owner_key, 600)),
        ("wrong signature", hub.token("iothubowner", &stranger, 600)),
        (
            "wrong signature, other policy",
            hub.token("registryRead", &stranger, 600),
        ),
        ("expired", hub.token("iothubowner", &owner_key, -10)),
        (
            "malformed",
            "SharedAccessSignature sr=x&sig=!!&se=1&skn=iothubowner".into(),
        ),
    ];
    let mut bodies = Vec::new();
    for (what, token) in &tokens {
        for path in ["/certificates", "/no/such/route"] {
            let r = hub
                .client()
                .get(format!("{}{path}", hub.base()))
                .header("Authorization", token)
                .send()
                .unwrap();
            assert_eq!(r.status(), 401, "{what} {path}");
            bodies.push((*what, r.text().unwrap()));
        }
    }
    for (what, body) in &bodies {
        assert_eq!(body, &bodies[0].1, "{what} is answered differently");
    }
    let v: Value = serde_json::from_str(&bodies[0].1).unwrap();
    assert_eq!(v["code"], "401002");
    let message = v["message"].as_str().unwrap();
    assert!(!message.contains("nosuchpolicy") && !message.contains("signature does not match"));
}

/// Finding 6: a restricted policy from the CLI gets only its rights; keys are shown only when
/// asked; rotation and deletion end the old key at once; every change is audited without keys.
#[test]
fn cli_policies_grant_least_privilege_and_rotation_ends_the_old_key_at_once() {
    let hub = TestHub::start(&[]);
    let added = cli_ok(
        &hub,
        &["policy", "add", "reader", "--rights", "RegistryRead"],
    );
    assert!(added.contains("rights: RegistryRead"), "{added}");
    let listed = cli_ok(&hub, &["policy", "list"]);
    assert!(
        listed.contains("reader") && listed.contains("iothubowner"),
        "{listed}"
    );
    let shown = cli_ok(&hub, &["policy", "show", "reader"]);
    let (primary, secondary) = keys(&hub, "reader");
    for out in [&added, &listed, &shown] {
        assert!(
            !out.contains(&primary) && !out.contains(&secondary),
            "a key printed unasked: {out}"
        );
    }
    let json_list: Value =
        serde_json::from_str(&cli_ok(&hub, &["-o", "json", "policy", "list"])).unwrap();
    assert!(json_list["value"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["keyName"] == "reader" && p["rights"] == "RegistryRead"));

    let token = hub.token("reader", &primary, 600);
    assert_eq!(
        status(&hub, reqwest::Method::GET, "/certificates", &token),
        200
    );
    // Least privilege: no writes, no keys, no policy management; each 403 audited.
    let r = hub
        .client()
        .put(format!("{}/policies/mine", hub.base()))
        .header("Authorization", &token)
        .json(&json!({ "rights": "RegistryRead" }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        status(
            &hub,
            reqwest::Method::POST,
            "/policies/iothubowner/listKeys",
            &token
        ),
        403
    );
    let arm = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Devices/IotHubs/iothub";
    assert_eq!(
        status(
            &hub,
            reqwest::Method::POST,
            &format!("{arm}/listkeys"),
            &token
        ),
        403
    );
    let audit = hub.get_json("/audit?target=policy%2Fmine");
    assert_eq!(audit["value"][0]["actor"], "reader");
    assert_eq!(audit["value"][0]["code"], "403001");

    // Rotation: the old primary key is refused at once, the new one and the secondary work.
    let rotated = cli_ok(&hub, &["policy", "rotate", "reader", "--key", "primary"]);
    assert!(!rotated.contains(&secondary), "{rotated}");
    assert_eq!(
        status(&hub, reqwest::Method::GET, "/certificates", &token),
        401
    );
    let (new_primary, same_secondary) = keys(&hub, "reader");
    assert_ne!(new_primary, primary);
    assert_eq!(same_secondary, secondary);
    assert_eq!(
        status(
            &hub,
            reqwest::Method::GET,
            "/certificates",
            &hub.token("reader", &new_primary, 600)
        ),
        200
    );
    // Deletion: no key of it works any more.
    cli_ok(&hub, &["policy", "delete", "reader"]);
    assert_eq!(
        status(
            &hub,
            reqwest::Method::GET,
            "/certificates",
            &hub.token("reader", &secondary, 600)
        ),
        401
    );

    // Audit: add, rotate, delete by the owner, no key in any entry.
    let log = hub.get_json("/audit?target=policy%2Freader");
    let actions: Vec<&str> = log["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["policy.delete", "policy.rotateKey", "policy.put"]);
    let text = log.to_string();
    for k in [&primary, &secondary, &new_primary] {
        assert!(!text.contains(k.as_str()), "a key in the audit log");
    }

    // The owner policy is protected, bad input is explained, and nothing changes.
    let e = cli_err(&hub, &["policy", "delete", "iothubowner"]);
    assert!(
        e.contains("403053") && e.contains("cannot be deleted"),
        "{e}"
    );
    let e = cli_err(
        &hub,
        &["policy", "add", "iothubowner", "--rights", "RegistryRead"],
    );
    assert!(e.contains("403053"), "{e}");
    let e = cli_err(
        &hub,
        &["policy", "add", "x", "--rights", "RegistryRead,Admin"],
    );
    assert!(
        e.contains("400075") && e.contains("'Admin' is not a right"),
        "{e}"
    );
    let e = cli_err(
        &hub,
        &["policy", "add", "bad name", "--rights", "RegistryRead"],
    );
    assert!(e.contains("400074"), "{e}");
    assert!(!cli_ok(&hub, &["policy", "list"]).contains("\nx "));

    // Rotating the key the local connection string holds keeps the CLI working.
    let before = hub.connection_string();
    cli_ok(
        &hub,
        &["policy", "rotate", "iothubowner", "--key", "primary"],
    );
    assert_ne!(hub.connection_string(), before);
    cli_ok(&hub, &["policy", "list"]);
}

/// Finding 6: a live event stream and a portal session end when the key behind them is rotated;
/// the startup login link stands for the owner's primary key.
#[test]
fn rotation_ends_the_streams_and_portal_sessions_made_with_the_old_key() {
    let hub = TestHub::start(&[]);
    cli_ok(
        &hub,
        &["policy", "add", "watcher", "--rights", "ServiceConnect"],
    );
    cli_ok(
        &hub,
        &[
            "policy",
            "add",
            "ops",
            "--rights",
            "RegistryRead,RegistryWrite,ServiceConnect,DeviceConnect",
        ],
    );
    let (watcher_key, _) = keys(&hub, "watcher");
    let (ops_key, _) = keys(&hub, "ops");

    let mut stream = hub
        .client()
        .get(format!("{}/messages/stream", hub.base()))
        .header("Authorization", hub.token("watcher", &watcher_key, 600))
        .send()
        .unwrap();
    assert_eq!(stream.status(), 200);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = tx.send(());
    });

    // A portal session from a link made with ops' primary key.
    let http = hub.client_without_redirects();
    let link: Value = http
        .post(format!("{}/portal-links", hub.base()))
        .header("Authorization", hub.token("ops", &ops_key, 600))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let r = http
        .get(format!("{}{}", hub.base(), link["path"].as_str().unwrap()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let with_cookie = |path: &str| {
        http.get(format!("{}{path}", hub.base()))
            .header("Cookie", &cookie)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(with_cookie("/certificates"), 200);
    // An unused link from the same key.
    let unused: Value = http
        .post(format!("{}/portal-links", hub.base()))
        .header("Authorization", hub.token("ops", &ops_key, 600))
        .send()
        .unwrap()
        .json()
        .unwrap();
    // A link made with the owner's primary key (as the one `serve` prints on a terminal is).
    let owner_link: Value = http
        .post(format!("{}/portal-links", hub.base()))
        .header("Authorization", hub.owner_token())
        .send()
        .unwrap()
        .json()
        .unwrap();

    let started = Instant::now();
    cli_ok(&hub, &["policy", "rotate", "watcher", "--key", "primary"]);
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the event stream opened with the rotated key did not end");
    assert!(started.elapsed() < Duration::from_secs(5));

    cli_ok(&hub, &["policy", "rotate", "ops", "--key", "primary"]);
    assert_eq!(
        with_cookie("/certificates"),
        401,
        "the portal session outlived its key"
    );
    assert_eq!(with_cookie("/portal/certificates"), 401);
    let r = http
        .get(format!(
            "{}{}",
            hub.base(),
            unused["path"].as_str().unwrap()
        ))
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "a link made with the rotated key still signs in"
    );

    cli_ok(
        &hub,
        &["policy", "rotate", "iothubowner", "--key", "primary"],
    );
    let r = http
        .get(format!(
            "{}{}",
            hub.base(),
            owner_link["path"].as_str().unwrap()
        ))
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "an owner's link outlived the owner's primary key"
    );
}

/// Finding 5: a portal session gets no policy keys by any route, cannot rotate or change
/// policies, and cannot make login links; each refusal is a 403 that says why, and is audited.
#[test]
fn a_portal_session_gets_no_keys_by_any_route() {
    let hub = TestHub::start(&[]);
    let http = hub.client_without_redirects();
    let link: Value = http
        .post(format!("{}/portal-links", hub.base()))
        .header("Authorization", hub.owner_token())
        .send()
        .unwrap()
        .json()
        .unwrap();
    let r = http
        .get(format!("{}{}", hub.base(), link["path"].as_str().unwrap()))
        .send()
        .unwrap();
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = http
        .get(format!("{}/portal/certificates", hub.base()))
        .header("Cookie", &cookie)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let csrf = page
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let arm = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Devices/IotHubs/iothub";
    let calls: Vec<(reqwest::Method, String, Option<Value>)> = vec![
        (
            reqwest::Method::POST,
            "/policies/iothubowner/listKeys".into(),
            None,
        ),
        (
            reqwest::Method::POST,
            "/policies/service/listKeys".into(),
            None,
        ),
        (reqwest::Method::POST, format!("{arm}/listkeys"), None),
        (
            reqwest::Method::POST,
            format!("{arm}/IotHubKeys/iothubowner/listkeys"),
            None,
        ),
        (
            reqwest::Method::POST,
            "/policies/service/rotateKey".into(),
            Some(json!({ "key": "primary" })),
        ),
        (
            reqwest::Method::PUT,
            "/policies/mine".into(),
            Some(json!({ "rights": "RegistryRead" })),
        ),
        (reqwest::Method::DELETE, "/policies/service".into(), None),
        (reqwest::Method::POST, "/portal-links".into(), None),
    ];
    let owner_key = hub.policy_key("iothubowner");
    for (method, path, body) in &calls {
        let mut rb = http
            .request(method.clone(), format!("{}{path}", hub.base()))
            .header("Cookie", &cookie)
            .header("X-CSRF-Token", &csrf)
            .header("Origin", format!("https://localhost:{}", hub.port));
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let r = rb.send().unwrap();
        let code = r.status().as_u16();
        let text = r.text().unwrap();
        assert_eq!(code, 403, "{method} {path}: {text}");
        assert!(text.contains("portal session"), "{method} {path}: {text}");
        assert!(
            !text.contains(&owner_key),
            "{method} {path}: a key in the answer"
        );
    }
    // Every refusal is on record with the portal as actor; the session still reads policies.
    let audit = hub.get_json("/audit?limit=20");
    let refused = audit["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "portal" && e["outcome"] == "failure" && e["code"] == "403001")
        .count();
    assert_eq!(refused, calls.len(), "{audit}");
    let r = http
        .get(format!("{}/policies", hub.base()))
        .header("Cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.text().unwrap().contains(&owner_key));
    // The policies are unchanged.
    assert_eq!(hub.policy_key("iothubowner"), owner_key);
    assert_eq!(
        status(
            &hub,
            reqwest::Method::GET,
            "/policies/mine",
            &hub.owner_token()
        ),
        404
    );
}
