//! Portal sessions and CSRF over real HTTPS: single-use, expiring login links; cookie flags;
//! security headers; state-changing requests need the session's CSRF token and the hub's own
//! origin; sign-out ends the session; only an owner credential makes login links.

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
        "/portal/certificates",
        "no token after login"
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
