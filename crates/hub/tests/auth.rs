//! Authentication (SharedAccessSignature tokens against the hub's policies) and authorization of
//! the certificate operations, through the service layer.

mod common;

use common::*;
use iothub_hub::{HubConfig, HubError, IfMatch, Principal};
use iothub_pki::gen::KeyKind;
use iothub_pki::sas::build_token;

const HOUR: i64 = 3600;

fn key(env: &Env, policy: &str) -> String {
    env.hub
        .policy_keys(&sys(), policy)
        .unwrap_or_else(|e| panic!("keys of {policy}: {e}"))
        .primary_key
}

fn token(env: &Env, policy: &str, resource: &str, expiry: i64) -> String {
    build_token(resource, &key(env, policy), Some(policy), expiry).expect("token")
}

fn principal(env: &Env, policy: &str) -> Principal {
    let t = token(env, policy, "localhost", env.now() + HOUR);
    let p = env
        .hub
        .authenticate(Some(&t))
        .unwrap_or_else(|e| panic!("{policy}: {e}"));
    assert_eq!(p.policy, policy);
    p
}

fn assert_unauthorized(env: &Env, header: Option<&str>) {
    let err = env
        .hub
        .authenticate(header)
        .expect_err(&format!("accepted: {header:?}"));
    assert!(matches!(err, HubError::Unauthorized(_)), "{err:?}");
    assert_eq!(err.code().number, 401002, "{err}");
    assert_eq!(err.code().status, 401);
}

#[test]
fn bad_tokens_are_401002() {
    let env = Env::new();
    let now = env.now();
    let reader_key = key(&env, "registryRead");
    let owner_key = key(&env, "iothubowner");

    assert_unauthorized(&env, None);
    for garbage in [
        "",
        "garbage",
        "Bearer abc",
        "SharedAccessSignature ",
        "SharedAccessSignature sr=localhost&sig=%%%&se=1&skn=registryRead",
        "SharedAccessSignature sr=localhost&sig=AAAA&se=soon&skn=registryRead",
        "SharedAccessSignature sr=localhost&sig=AAAA&se=99999999999&skn=registryRead",
    ] {
        assert_unauthorized(&env, Some(garbage));
    }
    // Expired, including at the expiry instant.
    for expiry in [now - 1, now] {
        let t = build_token("localhost", &reader_key, Some("registryRead"), expiry).unwrap();
        assert_unauthorized(&env, Some(&t));
    }
    // Signed with another policy's key.
    let t = build_token("localhost", &owner_key, Some("registryRead"), now + HOUR).unwrap();
    assert_unauthorized(&env, Some(&t));
    // A policy this hub does not have.
    let t = build_token("localhost", &owner_key, Some("nosuchpolicy"), now + HOUR).unwrap();
    assert_unauthorized(&env, Some(&t));
    // For another host.
    for host in ["otherhost", "otherhost:8443", "localhost.example.com"] {
        let t = build_token(host, &reader_key, Some("registryRead"), now + HOUR).unwrap();
        assert_unauthorized(&env, Some(&t));
    }
    // Without skn (a device-style token).
    let t = build_token("localhost", &reader_key, None, now + HOUR).unwrap();
    assert_unauthorized(&env, Some(&t));
    // A tampered expiry.
    let good = build_token("localhost", &reader_key, Some("registryRead"), now + HOUR).unwrap();
    let tampered = good.replace(
        &format!("se={}", now + HOUR),
        &format!("se={}", now + 100 * HOUR),
    );
    assert_ne!(tampered, good);
    assert_unauthorized(&env, Some(&tampered));

    // A valid token becomes invalid once the clock passes its expiry.
    assert!(env.hub.authenticate(Some(&good)).is_ok());
    env.clock.advance(HOUR);
    assert_unauthorized(&env, Some(&good));
}

#[test]
fn host_names_match_with_or_without_port_and_case() {
    let env = Env::with(HubConfig {
        host_names: vec!["localhost".into()],
        ..HubConfig::default()
    });
    for host in ["localhost:8443", "LOCALHOST", "localhost", "LocalHost:443"] {
        let t = token(&env, "registryRead", host, env.now() + HOUR);
        let p = env
            .hub
            .authenticate(Some(&t))
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(p.policy, "registryRead");
        assert_eq!(p.rights, vec!["RegistryRead".to_string()]);
    }
}

#[test]
fn secondary_key_is_accepted() {
    let env = Env::new();
    let policy = env.hub.policy_keys(&sys(), "registryReadWrite").unwrap();
    assert_ne!(policy.primary_key, policy.secondary_key);
    let t = build_token(
        "localhost",
        &policy.secondary_key,
        Some("registryReadWrite"),
        env.now() + HOUR,
    )
    .unwrap();
    let p = env.hub.authenticate(Some(&t)).unwrap();
    assert_eq!(p.policy, "registryReadWrite");
}

#[test]
fn registry_read_can_read_but_not_write() {
    let env = Env::new();
    let ca = root("Reader Root", KeyKind::EcP256);
    let other = root("Reader Other Root", KeyKind::EcP256);
    env.put("ca", &ca.pem);
    let code = env.code("ca");
    let reader = principal(&env, "registryRead");

    let listed = env.hub.list_certificates(&reader).expect("list");
    assert_eq!(listed, env.all());
    assert_eq!(
        env.hub.get_certificate(&reader, "ca").expect("get"),
        env.get("ca")
    );
    env.hub
        .audit_log(&reader, None, None, 10)
        .expect("read the audit log");

    let forbidden = |err: &HubError| {
        matches!(err, HubError::Forbidden { policy, right, .. }
            if policy == "registryRead" && *right == "RegistryWrite")
    };
    let t = target("ca");
    let vcert = ca.vcert_at(&code, env.time());
    let err = env.refused(&reader, &t, "authorization", 403001, || {
        env.hub
            .put_certificate(&reader, "ca", &body(&other.pem), Some(&IfMatch::Any))
    });
    assert!(forbidden(&err), "{err:?}");
    let err = env.refused(&reader, &target("new"), "authorization", 403001, || {
        env.hub
            .put_certificate(&reader, "new", &body(&other.pem), None)
    });
    assert!(forbidden(&err), "{err:?}");
    let err = env.refused(&reader, &t, "authorization", 403001, || {
        env.hub.verify_certificate(&reader, "ca", None, &vcert)
    });
    assert!(forbidden(&err), "{err:?}");
    let err = env.refused(&reader, &t, "authorization", 403001, || {
        env.hub.delete_certificate(&reader, "ca", None)
    });
    assert!(forbidden(&err), "{err:?}");
    let err = env.refused(&reader, &t, "authorization", 403001, || {
        env.hub.generate_verification_code(&reader, "ca", None)
    });
    assert!(forbidden(&err), "{err:?}");

    // The code the reader could not use is still live for a writer.
    assert!(env.verify("ca", &vcert).unwrap().is_verified);
}

#[test]
fn service_policy_cannot_even_list() {
    let env = Env::new();
    env.put("ca", &root("Service Root", KeyKind::EcP256).pem);
    let service = principal(&env, "service");
    let err = env.refused(&service, "certificates", "authorization", 403001, || {
        env.hub.list_certificates(&service)
    });
    assert!(
        matches!(&err, HubError::Forbidden { policy, right, .. }
            if policy == "service" && *right == "RegistryRead"),
        "{err:?}"
    );
    let err = env.refused(&service, &target("ca"), "authorization", 403001, || {
        env.hub.get_certificate(&service, "ca")
    });
    assert!(matches!(err, HubError::Forbidden { .. }), "{err:?}");
    let err = env.refused(&service, &target("ca"), "authorization", 403001, || {
        env.hub.generate_verification_code(&service, "ca", None)
    });
    assert!(matches!(err, HubError::Forbidden { .. }), "{err:?}");
}

#[test]
fn registry_read_write_runs_the_seed_flow_but_cannot_read_keys() {
    let env = Env::new();
    let writer = principal(&env, "registryReadWrite");
    let ca = root("Writer Root", KeyKind::EcP256);
    let (view, created) = env
        .hub
        .put_certificate(&writer, "ca", &body(&ca.pem), None)
        .unwrap();
    assert!(created && !view.is_verified);
    let (_, code, _) = env
        .hub
        .generate_verification_code(&writer, "ca", None)
        .unwrap();
    let verified = env
        .hub
        .verify_certificate(&writer, "ca", None, &ca.vcert_at(&code, env.time()))
        .unwrap();
    assert!(verified.is_verified);
    let entries = env.audit();
    assert!(entries[..3]
        .iter()
        .all(|e| e.success && e.actor == "registryReadWrite"));

    let err = env.refused(
        &writer,
        "policy/iothubowner",
        "authorization",
        403001,
        || env.hub.policy_keys(&writer, "iothubowner"),
    );
    assert!(
        matches!(&err, HubError::Forbidden { policy, .. } if policy == "registryReadWrite"),
        "{err:?}"
    );
    let reader = principal(&env, "registryRead");
    let err = env.refused(
        &reader,
        "policy/registryRead",
        "authorization",
        403001,
        || env.hub.policy_keys(&reader, "registryRead"),
    );
    assert!(matches!(err, HubError::Forbidden { .. }), "{err:?}");
    // Listing policies (without keys) needs RegistryRead only.
    let names: Vec<String> = env
        .hub
        .list_policies(&writer)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for p in [
        "iothubowner",
        "service",
        "device",
        "registryRead",
        "registryReadWrite",
    ] {
        assert!(names.iter().any(|n| n == p), "{p} missing from {names:?}");
    }
}

#[test]
fn owner_token_reads_keys_and_unknown_policy_is_404051() {
    let env = Env::new();
    let owner = principal(&env, "iothubowner");
    let keys = env.hub.policy_keys(&owner, "service").unwrap();
    assert_eq!(keys.rights, vec!["ServiceConnect".to_string()]);
    let err = env.hub.policy_keys(&owner, "nosuch").unwrap_err();
    assert_eq!(err, HubError::PolicyNotFound("nosuch".into()));
    assert_eq!(err.code().number, 404051);
    // ensure_default_policies is idempotent: keys survive a second call.
    assert!(env.hub.ensure_default_policies().unwrap().is_none());
    assert_eq!(env.hub.policy_keys(&owner, "service").unwrap(), keys);
}

/// An AMQP client's token may name the hub with a scheme and a path (an Event Hubs reader signs
/// `sb://host/entity`); the host must still be the hub's, and the expiry comes back with the
/// principal so that a long-lived connection can hold it to it.
#[test]
fn a_policy_token_may_name_the_hub_with_a_scheme_and_a_path() {
    let env = Env::new();
    let expiry = env.now() + HOUR;
    for resource in [
        "sb://localhost/iothub",
        "amqps://localhost:5671/messages/devicebound",
        "https://localhost",
        "localhost:8443",
    ] {
        let t = token(&env, "service", resource, expiry);
        let (p, until) = env
            .hub
            .authenticate_token(&t)
            .unwrap_or_else(|e| panic!("{resource}: {e}"));
        assert_eq!(
            (p.policy.as_str(), until),
            ("service", expiry),
            "{resource}"
        );
    }
    for resource in [
        "sb://elsewhere/iothub",
        "sb://localhostx/",
        "elsewhere/localhost",
    ] {
        let t = token(&env, "service", resource, expiry);
        assert!(
            matches!(
                env.hub.authenticate_token(&t),
                Err(HubError::Unauthorized(_))
            ),
            "{resource}"
        );
    }
}
