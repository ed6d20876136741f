//! Shared access policies through the service layer: least-privilege policies, key rotation and
//! deletion taking effect at once, the owner policy's protection, portal sessions kept away from
//! keys, and one answer for every refused token (issue 16, findings 5, 6 and 7).

mod common;

use common::*;
use iothub_hub::{HubError, KeySlot, Principal};
use iothub_pki::sas::build_token;

const HOUR: i64 = 3600;

/// One service call under test, its result reduced to success or the refusal.
type Op<'a> = Box<dyn Fn() -> Result<(), HubError> + 'a>;

fn token_with(env: &Env, policy: &str, key: &str) -> String {
    build_token("localhost", key, Some(policy), env.now() + HOUR).expect("token")
}

fn login(env: &Env, policy: &str, key: &str) -> Result<Principal, HubError> {
    env.hub.authenticate(Some(&token_with(env, policy, key)))
}

fn owner(env: &Env) -> Principal {
    let key = env.hub.owner_policy().unwrap().primary_key;
    login(env, "iothubowner", &key).unwrap()
}

/// Finding 7: an anonymous caller cannot tell an unknown policy name from a wrong key.
#[test]
fn every_refused_token_gets_the_same_answer() {
    let env = Env::new();
    let owner_key = env.hub.owner_policy().unwrap().primary_key;
    let other_key = iothub_pki::sas::generate_key().unwrap();
    let now = env.now();
    let refusals = [
        (
            "unknown policy",
            token_with(&env, "nosuchpolicy", &owner_key),
        ),
        (
            "wrong signature",
            token_with(&env, "iothubowner", &other_key),
        ),
        (
            "expired",
            build_token("localhost", &owner_key, Some("iothubowner"), now - 1).unwrap(),
        ),
        (
            "another host",
            build_token("otherhost", &owner_key, Some("iothubowner"), now + HOUR).unwrap(),
        ),
        (
            "no policy name",
            build_token("localhost", &owner_key, None, now + HOUR).unwrap(),
        ),
        (
            "malformed",
            "SharedAccessSignature sr=localhost&sig=!!&se=1&skn=x".into(),
        ),
        ("not a token", "garbage".into()),
    ];
    let messages: Vec<(&str, String)> = refusals
        .iter()
        .map(|(what, t)| {
            let e = env.hub.authenticate(Some(t)).expect_err(what);
            assert_eq!(e.code().number, 401002, "{what}: {e}");
            (*what, e.to_string())
        })
        .collect();
    for (what, m) in &messages {
        assert_eq!(m, &messages[0].1, "{what} is answered differently");
        assert!(
            !m.contains("nosuchpolicy") && !m.contains("iothubowner"),
            "{m}"
        );
    }
}

#[test]
fn a_restricted_policy_gets_only_its_rights_and_changes_are_audited_without_keys() {
    let env = Env::new();
    let owner = owner(&env);
    let (view, created) = env
        .hub
        .put_policy(&owner, "telemetry-reader", "ServiceConnect, registryread")
        .unwrap();
    assert!(created);
    assert_eq!(view.rights, ["RegistryRead", "ServiceConnect"]);
    let keys = env.hub.policy_keys(&owner, "telemetry-reader").unwrap();
    assert_ne!(keys.primary_key, keys.secondary_key);
    assert_eq!(
        base64_len(&keys.primary_key),
        32,
        "32 random bytes, base64, like the built-in keys"
    );
    let reader = login(&env, "telemetry-reader", &keys.primary_key).unwrap();
    assert_eq!(reader.rights, ["RegistryRead", "ServiceConnect"]);
    assert!(env.hub.list_certificates(&reader).is_ok());
    // It may not write, nor read keys, nor manage policies: 403, audited with its name.
    for op in [
        Box::new(|| env.hub.policy_keys(&reader, "iothubowner").map(|_| ())) as Op,
        Box::new(|| {
            env.hub
                .put_policy(&reader, "mine", "RegistryRead")
                .map(|_| ())
        }),
        Box::new(|| env.hub.delete_policy(&reader, "service")),
        Box::new(|| {
            env.hub
                .rotate_policy_key(&reader, "service", "primary")
                .map(|_| ())
        }),
    ] {
        let before = env.last_audit_id();
        let e = op().unwrap_err();
        assert_eq!(e.code().number, 403001, "{e}");
        let written = env.audit_after(before);
        assert_eq!(written.len(), 1, "{written:?}");
        assert_eq!(written[0].actor, "telemetry-reader");
        assert!(!written[0].success);
    }

    // Changing the rights keeps the keys.
    let (view, created) = env
        .hub
        .put_policy(&owner, "telemetry-reader", "ServiceConnect")
        .unwrap();
    assert!(!created);
    assert_eq!(view.rights, ["ServiceConnect"]);
    assert_eq!(
        env.hub
            .policy_keys(&owner, "telemetry-reader")
            .unwrap()
            .primary_key,
        keys.primary_key
    );
    assert_eq!(
        login(&env, "telemetry-reader", &keys.primary_key)
            .unwrap()
            .rights,
        ["ServiceConnect"]
    );

    // Audit: created, changed, by the owner; no key anywhere in the log.
    let log = env.audit();
    let puts: Vec<_> = log
        .iter()
        .filter(|e| e.action == "policy.put" && e.success)
        .collect();
    assert_eq!(puts.len(), 2, "{puts:?}");
    assert_eq!(
        puts[1].detail,
        "created with rights RegistryRead, ServiceConnect"
    );
    assert_eq!(puts[0].detail, "rights set to ServiceConnect");
    assert!(puts
        .iter()
        .all(|e| e.actor == "iothubowner" && e.target == "policy/telemetry-reader"));
    for e in &log {
        for secret in [&keys.primary_key, &keys.secondary_key] {
            assert!(!e.detail.contains(secret.as_str()), "{e:?}");
        }
    }
}

fn base64_len(key: &str) -> usize {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap()
        .len()
}

#[test]
fn rotation_and_deletion_stop_the_old_key_at_once() {
    let env = Env::new();
    let owner = owner(&env);
    env.hub.put_policy(&owner, "ops", "RegistryRead").unwrap();
    let old = env.hub.policy_keys(&owner, "ops").unwrap();
    let by_primary = login(&env, "ops", &old.primary_key).unwrap();
    let by_secondary = login(&env, "ops", &old.secondary_key).unwrap();
    let mut epoch = env.hub.watch_policies();

    let rotated = env.hub.rotate_policy_key(&owner, "ops", "primary").unwrap();
    assert_ne!(rotated.primary_key, old.primary_key);
    assert_eq!(rotated.secondary_key, old.secondary_key);
    assert!(epoch.has_changed().unwrap(), "live streams are told");
    epoch.mark_unchanged();
    // The old primary key is refused at once, the new one and the untouched secondary work.
    assert_eq!(
        login(&env, "ops", &old.primary_key)
            .unwrap_err()
            .code()
            .number,
        401002
    );
    assert!(login(&env, "ops", &rotated.primary_key).is_ok());
    assert!(login(&env, "ops", &old.secondary_key).is_ok());
    // What was authenticated with the old key is no longer current; the other key's is.
    assert!(env.hub.refresh_principal(&by_primary).is_none());
    assert!(env.hub.refresh_principal(&by_secondary).is_some());
    let entry = env.last_audit();
    assert_eq!(
        (
            entry.action.as_str(),
            entry.target.as_str(),
            entry.detail.as_str(),
            entry.success
        ),
        (
            "policy.rotateKey",
            "policy/ops",
            "primary key replaced",
            true
        )
    );

    env.hub.delete_policy(&owner, "ops").unwrap();
    assert!(epoch.has_changed().unwrap());
    assert_eq!(
        login(&env, "ops", &old.secondary_key)
            .unwrap_err()
            .code()
            .number,
        401002
    );
    assert!(env.hub.refresh_principal(&by_secondary).is_none());
    assert_eq!(env.last_audit().action, "policy.delete");
    assert_eq!(
        env.hub.get_policy(&owner, "ops").unwrap_err(),
        HubError::PolicyNotFound("ops".into())
    );
    assert_eq!(
        env.hub
            .delete_policy(&owner, "ops")
            .unwrap_err()
            .code()
            .number,
        404051
    );
    // The system principal (the hub itself) has no key to lose.
    assert!(env.hub.refresh_principal(&Principal::system()).is_some());
    assert_eq!(KeySlot::Primary.name(), "primary");
}

#[test]
fn bad_requests_are_refused_with_their_own_codes_and_change_nothing() {
    let env = Env::new();
    let owner = owner(&env);
    let policies_before = env.hub.all_policy_keys(&owner).unwrap();
    let cases: Vec<(&str, u32, Op)> = vec![
        (
            "name with a space",
            400074,
            Box::new(|| {
                env.hub
                    .put_policy(&owner, "a b", "RegistryRead")
                    .map(|_| ())
            }),
        ),
        (
            "name too long",
            400074,
            Box::new(|| {
                env.hub
                    .put_policy(&owner, &"n".repeat(65), "RegistryRead")
                    .map(|_| ())
            }),
        ),
        (
            "unknown right",
            400075,
            Box::new(|| {
                env.hub
                    .put_policy(&owner, "x", "RegistryRead, Owner")
                    .map(|_| ())
            }),
        ),
        (
            "no rights",
            400075,
            Box::new(|| env.hub.put_policy(&owner, "x", "").map(|_| ())),
        ),
        (
            "owner stripped",
            403053,
            Box::new(|| {
                env.hub
                    .put_policy(&owner, "iothubowner", "RegistryRead")
                    .map(|_| ())
            }),
        ),
        (
            "owner deleted",
            403053,
            Box::new(|| env.hub.delete_policy(&owner, "iothubowner")),
        ),
        (
            "no such key",
            400004,
            Box::new(|| {
                env.hub
                    .rotate_policy_key(&owner, "service", "tertiary")
                    .map(|_| ())
            }),
        ),
        (
            "rotate a missing policy",
            404051,
            Box::new(|| {
                env.hub
                    .rotate_policy_key(&owner, "nosuch", "primary")
                    .map(|_| ())
            }),
        ),
    ];
    for (what, code, op) in &cases {
        let before = env.last_audit_id();
        let e = op().unwrap_err();
        assert_eq!(e.code().number, *code, "{what}: {e}");
        let written = env.audit_after(before);
        assert_eq!(written.len(), 1, "{what}: one failure entry: {written:?}");
        assert_eq!(written[0].code.as_deref(), Some(code.to_string().as_str()));
        assert_eq!(written[0].detail, e.to_string());
    }
    let e = env
        .hub
        .put_policy(&owner, "x", "RegistryRead, Owner")
        .unwrap_err();
    assert!(e.to_string().contains("'Owner' is not a right"), "{e}");
    let e = env.hub.delete_policy(&owner, "iothubowner").unwrap_err();
    assert!(e.to_string().contains("cannot be deleted"), "{e}");
    assert_eq!(env.hub.all_policy_keys(&owner).unwrap(), policies_before);

    // The owner policy may be "changed" to what it is; the other built-ins may change freely.
    assert!(env
        .hub
        .put_policy(
            &owner,
            "iothubowner",
            "RegistryRead,RegistryWrite,ServiceConnect,DeviceConnect"
        )
        .is_ok());
    assert_eq!(
        env.hub
            .put_policy(&owner, "service", "ServiceConnect, RegistryRead")
            .unwrap()
            .0
            .rights,
        ["RegistryRead", "ServiceConnect"]
    );
    env.hub.delete_policy(&owner, "registryRead").unwrap();

    // At most 16 policies (Azure's quota), the built-in ones included.
    let mut n = env.hub.list_policies(&owner).unwrap().len();
    while n < 16 {
        env.hub
            .put_policy(&owner, &format!("p{n}"), "RegistryRead")
            .unwrap();
        n += 1;
    }
    let e = env
        .hub
        .put_policy(&owner, "one-too-many", "RegistryRead")
        .unwrap_err();
    assert_eq!(e.code().number, 403052, "{e}");
    assert!(env.hub.get_policy(&owner, "one-too-many").is_err());
}

/// Finding 5: a portal session (owner rights, from an owner's login link) reads no key and makes
/// no login link; each refusal is a 403 with the reason, audited.
#[test]
fn portal_sessions_read_no_keys_and_make_no_login_links() {
    let env = Env::new();
    let owner = owner(&env);
    let maker = env.hub.authorize_portal_link(&owner).unwrap();
    assert_eq!(maker.policy, "iothubowner");
    let portal = Principal::portal_session(maker, owner.rights.clone());
    assert!(portal.is_owner());
    // It may still do what the portal pages do.
    assert!(env.hub.list_certificates(&portal).is_ok());
    assert!(env.hub.list_policies(&portal).is_ok());
    let ops: Vec<(&str, Op)> = vec![
        (
            "policy.listKeys",
            Box::new(|| env.hub.policy_keys(&portal, "iothubowner").map(|_| ())),
        ),
        (
            "policy.listKeys",
            Box::new(|| env.hub.all_policy_keys(&portal).map(|_| ())),
        ),
        (
            "policy.rotateKey",
            Box::new(|| {
                env.hub
                    .rotate_policy_key(&portal, "service", "primary")
                    .map(|_| ())
            }),
        ),
        (
            "policy.put",
            Box::new(|| {
                env.hub
                    .put_policy(&portal, "mine", "RegistryRead")
                    .map(|_| ())
            }),
        ),
        (
            "policy.delete",
            Box::new(|| env.hub.delete_policy(&portal, "service")),
        ),
        (
            "portal.createLink",
            Box::new(|| env.hub.authorize_portal_link(&portal).map(|_| ())),
        ),
    ];
    for (action, op) in &ops {
        let before = env.last_audit_id();
        let e = op().unwrap_err();
        assert_eq!(e.code().number, 403001, "{action}: {e}");
        assert!(e.to_string().contains("portal session"), "{action}: {e}");
        let written = env.audit_after(before);
        assert_eq!(written.len(), 1, "{action}: {written:?}");
        assert_eq!(
            (written[0].actor.as_str(), written[0].action.as_str()),
            ("portal", *action)
        );
    }
    // The session stands for the owner's key: rotating it ends the session.
    assert!(env.hub.refresh_principal(&portal).is_some());
    env.hub
        .rotate_policy_key(&owner, "iothubowner", "primary")
        .unwrap();
    assert!(env.hub.refresh_principal(&portal).is_none());
}
