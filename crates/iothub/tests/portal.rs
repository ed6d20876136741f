//! Portal sessions and CSRF over real HTTPS: single-use, expiring login links; cookie flags;
//! security headers; state-changing requests need the session's CSRF token and the hub's own
//! origin; sign-out ends the session; only an owner credential makes login links. A browser at
//! `/` is sent to the portal while API clients keep their answer; the icon is served; the
//! overview route counts what the hub holds.

mod common;

use common::*;
use reqwest::blocking::Client;
use serde_json::Value;

fn new_link(hub: &TestHub) -> String {
    let url = ok(&hub.cli(&["portal-link"])).trim().to_string();
    assert!(url.contains("/portal/login?token="), "{url}");
    url
}

/// Signs in with a fresh link; returns (session cookie "name=value", CSRF token).
fn sign_in(hub: &TestHub, http: &Client) -> (String, String) {
    let r = http.get(new_link(hub)).send().unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()["location"],
        "/portal/overview",
        "to the overview, with no token after login"
    );
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(flag), "{flag} missing from {set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    let page = http
        .get(format!("{}/portal/certificates", hub.base()))
        .header("Cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = page.text().unwrap();
    assert!(!html.contains("<script>"), "no inline script (CSP)");
    let csrf = html
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(csrf.len(), 64);
    (cookie, csrf)
}

fn cert_body() -> Value {
    let now = time::OffsetDateTime::now_utc();
    let ca = iothub_pki::gen::make_ca(
        "portal-ca",
        iothub_pki::gen::KeyKind::EcP256,
        None,
        now - time::Duration::hours(1),
        now + time::Duration::days(3),
    )
    .unwrap();
    serde_json::json!({ "properties": { "certificate": ca.cert_pem } })
}

#[test]
fn login_links_are_single_use_and_expire() {
    let hub = TestHub::start(&["--portal-link-lifetime", "1s"]);
    let http = hub.client_without_redirects();
    // A link works once. (serve prints none when its stdout is no terminal: see
    // limits_and_posture.rs, serve_prints_no_secret_unless_on_a_terminal.)
    let printed = new_link(&hub);
    assert_eq!(http.get(&printed).send().unwrap().status(), 303);
    assert_eq!(
        http.get(&printed).send().unwrap().status(),
        401,
        "a login link works once"
    );
    // An unused link expires.
    let link = new_link(&hub);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        http.get(&link).send().unwrap().status(),
        401,
        "an expired link is refused"
    );
    // Unknown tokens and no token are refused.
    assert_eq!(
        http.get(format!("{}/portal/login?token=00", hub.base()))
            .send()
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http.get(format!("{}/portal/login", hub.base()))
            .send()
            .unwrap()
            .status(),
        401
    );
    // Pages without a session ask to sign in; the API without a session or token is 401.
    assert_eq!(
        http.get(format!("{}/portal/certificates", hub.base()))
            .send()
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http.get(format!("{}/certificates", hub.base()))
            .header("Cookie", "iothub_session=forged")
            .send()
            .unwrap()
            .status(),
        401
    );
}

#[test]
fn state_changes_need_the_csrf_token_and_the_hub_origin() {
    let hub = TestHub::start(&[]);
    let http = hub.client_without_redirects();
    let (cookie, csrf) = sign_in(&hub, &http);
    let url = format!("{}/certificates/from-portal", hub.base());
    // Reads work with the cookie alone.
    let r = http
        .get(format!("{}/certificates", hub.base()))
        .header("Cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // A write without the token, with a wrong token, or from another origin is refused (403002).
    for (token, origin) in [
        (None, None),
        (Some("0".repeat(64)), None),
        (Some(csrf.clone()), Some("https://evil.example")),
    ] {
        let mut req = http.put(&url).header("Cookie", &cookie).json(&cert_body());
        if let Some(t) = &token {
            req = req.header("X-CSRF-Token", t);
        }
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        let r = req.send().unwrap();
        assert_eq!(r.status(), 403, "token {token:?} origin {origin:?}");
        let e: Value = r.json().unwrap();
        assert_eq!(e["code"], "403002", "{e}");
    }
    let list: Value = http
        .get(format!("{}/certificates", hub.base()))
        .header("Cookie", &cookie)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        list["value"].as_array().unwrap().len(),
        0,
        "refused writes changed nothing"
    );
    // With the token and the hub's own origin it works, and the audit names the portal.
    let r = http
        .put(&url)
        .header("Cookie", &cookie)
        .header("X-CSRF-Token", &csrf)
        .header("Origin", format!("https://localhost:{}", hub.port))
        .json(&cert_body())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    let audit: Value = http
        .get(format!(
            "{}/audit?target=certificate%2Ffrom-portal",
            hub.base()
        ))
        .header("Cookie", &cookie)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(audit["value"][0]["actor"], "portal");
    // Delete through the portal session, then sign out: the cookie no longer works.
    let r = http
        .delete(&url)
        .header("Cookie", &cookie)
        .header("X-CSRF-Token", &csrf)
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = http
        .post(format!("{}/portal/logout", hub.base()))
        .header("Cookie", &cookie)
        .header("X-CSRF-Token", &csrf)
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(
        http.get(format!("{}/certificates", hub.base()))
            .header("Cookie", &cookie)
            .send()
            .unwrap()
            .status(),
        401
    );
    // Signing out without the CSRF token is refused too (no forced logout from another site).
    let (cookie, _) = sign_in(&hub, &http);
    assert_eq!(
        http.post(format!("{}/portal/logout", hub.base()))
            .header("Cookie", &cookie)
            .send()
            .unwrap()
            .status(),
        403
    );
}

#[test]
fn only_an_owner_credential_makes_login_links() {
    let hub = TestHub::start(&[]);
    let http = hub.client_without_redirects();
    let url = format!("{}/portal-links", hub.base());
    assert_eq!(http.post(&url).send().unwrap().status(), 401);
    let read = hub.token("registryRead", &hub.policy_key("registryRead"), 600);
    let r = http
        .post(&url)
        .header("Authorization", read)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    // A portal session cannot mint more links.
    let (cookie, csrf) = sign_in(&hub, &http);
    let r = http
        .post(&url)
        .header("Cookie", &cookie)
        .header("X-CSRF-Token", &csrf)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .post(&url)
        .header("Authorization", hub.owner_token())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // The static assets are served with their types and the same headers.
    let js = http
        .get(format!("{}/portal/static/app.js", hub.base()))
        .send()
        .unwrap();
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(js.headers().contains_key("content-security-policy"));
}

#[test]
fn a_browser_at_the_root_goes_to_the_portal_and_api_clients_keep_their_answer() {
    let hub = TestHub::start(&[]);
    let http = hub.client_without_redirects();
    let browser = http
        .get(format!("{}/", hub.base()))
        .header("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .unwrap();
    assert_eq!(browser.status(), 303);
    assert_eq!(browser.headers()["location"], "/portal");
    // An API client (no text/html in Accept): today's JSON 401, then 404 with a token.
    for accept in [None, Some("application/json")] {
        let mut req = http.get(format!("{}/", hub.base()));
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        let r = req.send().unwrap();
        assert_eq!(r.status(), 401, "{accept:?}");
        assert_eq!(r.json::<Value>().unwrap()["code"], "401002", "{accept:?}");
    }
    let r = http
        .get(format!("{}/", hub.base()))
        .header("Authorization", hub.owner_token())
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    // A POST to / is not a browser arriving: the API answers.
    let r = http
        .post(format!("{}/", hub.base()))
        .header("Accept", "text/html")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    // The icon, without signing in.
    let icon = http
        .get(format!("{}/favicon.ico", hub.base()))
        .send()
        .unwrap();
    assert_eq!(icon.status(), 200);
    assert_eq!(icon.headers()["content-type"], "image/svg+xml");
    assert!(icon.text().unwrap().starts_with("<svg"));
}

#[test]
fn the_overview_counts_what_the_hub_holds() {
    let hub = TestHub::start(&[]);
    verified_root_with_devices(&hub, &["ov-1", "ov-2"]);
    let dir = hub.dir.clone();
    let (_, code) =
        RawDevice::connect(&hub, &dir.join("ov-1.pem"), &dir.join("ov-1.key"), "nobody").unwrap();
    assert_ne!(code, 0);
    let (mut d, code) =
        RawDevice::connect(&hub, &dir.join("ov-1.pem"), &dir.join("ov-1.key"), "ov-1").unwrap();
    assert_eq!(code, 0);
    d.publish("devices/ov-1/messages/events/", b"x", 1).unwrap();
    let o = hub.get_json("/overview");
    assert_eq!(o["certificates"]["verified"], 1, "{o}");
    assert_eq!(o["certificates"]["unverified"], 0, "{o}");
    assert_eq!(
        o["certificates"]["expiringSoon"],
        serde_json::json!([]),
        "{o}"
    );
    assert_eq!(
        o["devices"],
        serde_json::json!({"total": 2, "enabled": 2, "connected": 1})
    );
    assert_eq!(o["refusalsLastHour"]["unknown_device"], 1, "{o}");
    assert_eq!(o["refusalsLastHour"]["unverified_ca"], 0, "{o}");
    assert_eq!(o["telemetry"]["messagesSinceStart"], 1, "{o}");
    // A CA that expires in ten days is listed, with its days left.
    let now = time::OffsetDateTime::now_utc();
    let soon = iothub_pki::gen::make_ca(
        "Soon",
        iothub_pki::gen::KeyKind::EcP256,
        None,
        now - time::Duration::hours(1),
        now + time::Duration::days(10) + time::Duration::hours(1),
    )
    .unwrap();
    std::fs::write(dir.join("soon.pem"), &soon.cert_pem).unwrap();
    ok(&hub.cli(&["cert", "add", "soon", "soon.pem"]));
    let o = hub.get_json("/overview");
    assert_eq!(o["certificates"]["expiringSoon"][0]["name"], "soon", "{o}");
    assert_eq!(o["certificates"]["expiringSoon"][0]["daysLeft"], 10, "{o}");
    assert_eq!(o["certificates"]["expiringSoon"][0]["status"], "Unverified");
    // Connections carry the device certificate's expiry.
    let c = hub.get_json("/connections");
    assert!(
        c["live"][0]["certificateExpiry"]
            .as_str()
            .unwrap()
            .ends_with("GMT"),
        "{c}"
    );
    d.disconnect();
}
