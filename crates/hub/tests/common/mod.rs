//! Shared fixtures of the service-layer tests: a hub over an in-memory (or file) SQLite store with
//! a manual clock standing at the real current time, test CAs made with `iothub_pki::gen`, and the
//! refusal check every rejection test applies (exact code, registry unchanged, one failure audit
//! entry written).
#![allow(dead_code)]

use std::fmt::Debug;
use std::sync::Arc;

use iothub_hub::auth::decode_etag;
use iothub_hub::clock::ManualClock;
use iothub_hub::{CaView, Hub, HubConfig, HubError, IfMatch, Principal, PutCertificate};
use iothub_pki::gen::{self, CaIssuer, KeyKind};
use iothub_store::{AuditEntry, SqliteStore, Store};
use time::{Duration, OffsetDateTime};

/// A hub and the clock it reads.
pub struct Env {
    pub hub: Hub,
    pub clock: Arc<ManualClock>,
}

pub fn sys() -> Principal {
    Principal::system()
}

pub fn real_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

pub fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).expect("a representable instant")
}

pub fn target(name: &str) -> String {
    format!("certificate/{name}")
}

impl Env {
    pub fn new() -> Env {
        Env::with(HubConfig::default())
    }

    pub fn with(config: HubConfig) -> Env {
        let store = SqliteStore::open_in_memory().expect("in-memory store");
        Env::over(Arc::new(store), config, real_now())
    }

    /// A hub over `store` whose clock stands at `now`, with the default policies.
    pub fn over(store: Arc<dyn Store>, config: HubConfig, now: i64) -> Env {
        let clock = Arc::new(ManualClock::new(now));
        let hub = Hub::new(store, config, clock.clone()).expect("hub");
        hub.ensure_default_policies().expect("default policies");
        Env { hub, clock }
    }

    pub fn now(&self) -> i64 {
        self.hub.now()
    }

    /// The clock's instant, for certificate generation.
    pub fn time(&self) -> OffsetDateTime {
        at(self.now())
    }

    /// Creates `name` (no If-Match) as the system and checks that it was created Unverified.
    pub fn put(&self, name: &str, pem: &str) -> CaView {
        let (view, created) = self
            .hub
            .put_certificate(&sys(), name, &body(pem), None)
            .unwrap_or_else(|e| panic!("put {name}: {e}"));
        assert!(created, "put {name} should have created it");
        assert!(!view.is_verified);
        view
    }

    pub fn get(&self, name: &str) -> CaView {
        self.hub
            .get_certificate(&sys(), name)
            .unwrap_or_else(|e| panic!("get {name}: {e}"))
    }

    pub fn try_get(&self, name: &str) -> Option<CaView> {
        match self.hub.get_certificate(&sys(), name) {
            Ok(v) => Some(v),
            Err(HubError::NotFound(_)) => None,
            Err(e) => panic!("get {name}: {e}"),
        }
    }

    pub fn all(&self) -> Vec<CaView> {
        self.hub.list_certificates(&sys()).expect("list")
    }

    /// Generates a code for `name` as the system; returns it.
    pub fn code(&self, name: &str) -> String {
        self.hub
            .generate_verification_code(&sys(), name, None)
            .unwrap_or_else(|e| panic!("generate code for {name}: {e}"))
            .1
    }

    pub fn verify(&self, name: &str, vcert: &str) -> Result<CaView, HubError> {
        self.hub.verify_certificate(&sys(), name, None, vcert)
    }

    /// Every audit entry, newest first.
    pub fn audit(&self) -> Vec<AuditEntry> {
        self.hub
            .audit_log(&sys(), None, None, 1000)
            .expect("audit log")
    }

    pub fn last_audit(&self) -> AuditEntry {
        self.audit().into_iter().next().expect("an audit entry")
    }

    pub fn last_audit_id(&self) -> i64 {
        self.audit().first().map_or(0, |e| e.id)
    }

    /// Runs `op`, which must be refused with `code`. Checks that the registry (every CA's view:
    /// etag, isVerified, code expiry, updated, content) is unchanged, and that exactly one audit
    /// entry was written: a failure by `who` of `action` on `target`, carrying `code`.
    pub fn refused<T: Debug>(
        &self,
        who: &Principal,
        target: &str,
        action: &str,
        code: u32,
        op: impl FnOnce() -> Result<T, HubError>,
    ) -> HubError {
        let (err, written) = self.refusal(code, op);
        assert_eq!(
            written.len(),
            1,
            "a refusal must write one audit entry: {written:?}"
        );
        let entry = &written[0];
        assert!(!entry.success, "audit entry of a refusal: {entry:?}");
        assert_eq!(entry.code.as_deref(), Some(code.to_string().as_str()));
        assert_eq!(entry.action, action, "{entry:?}");
        assert_eq!(entry.target, target, "{entry:?}");
        assert_eq!(entry.actor, who.policy, "{entry:?}");
        assert_eq!(entry.time, self.now());
        assert_eq!(entry.detail, err.to_string());
        err
    }

    /// As [`Env::refused`], for refusals of reads (which are not audited unless the caller lacks
    /// the right): checks the code and that the registry is unchanged.
    pub fn refused_read<T: Debug>(
        &self,
        code: u32,
        op: impl FnOnce() -> Result<T, HubError>,
    ) -> HubError {
        self.refusal(code, op).0
    }

    fn refusal<T: Debug>(
        &self,
        code: u32,
        op: impl FnOnce() -> Result<T, HubError>,
    ) -> (HubError, Vec<AuditEntry>) {
        let before = self.all();
        let audit_before = self.last_audit_id();
        let err = match op() {
            Ok(v) => panic!("expected a refusal with code {code}, got Ok({v:?})"),
            Err(e) => e,
        };
        assert_eq!(err.code().number, code, "wrong code for: {err}");
        assert_eq!(u32::from(err.code().status), code / 1000);
        let after = self.all();
        assert_eq!(before.len(), after.len(), "a refusal added or removed a CA");
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(
                (&b.name, &b.etag, b.is_verified, b.verification_code_expiry),
                (&a.name, &a.etag, a.is_verified, a.verification_code_expiry),
                "a refusal changed CA '{}'",
                b.name
            );
            assert_eq!(b, a, "a refusal changed CA '{}'", b.name);
        }
        (err, self.audit_after(audit_before))
    }

    /// The audit entries written after entry `id`, newest first.
    pub fn audit_after(&self, id: i64) -> Vec<AuditEntry> {
        self.audit().into_iter().filter(|e| e.id > id).collect()
    }
}

pub fn body(pem: &str) -> PutCertificate {
    PutCertificate {
        certificate: pem.to_string(),
        is_verified: None,
    }
}

pub fn if_match(etag: &str) -> IfMatch {
    IfMatch::Etag(etag.to_string())
}

/// A different, well-formed etag than `etag` (the next counter value).
pub fn other_etag(etag: &str) -> String {
    let n = decode_etag(etag).expect("an etag the hub issued");
    iothub_hub::auth::encode_etag(n + 1000)
}

/// The first PEM block of `pem` (make_ca writes an intermediate followed by its parent).
pub fn first_pem(pem: &str) -> String {
    const END: &str = "-----END CERTIFICATE-----";
    let end = pem.find(END).expect("a PEM certificate") + END.len();
    format!("{}\n", &pem[..end])
}

pub fn der_of(pem: &str) -> Vec<u8> {
    iothub_pki::parse_certificate_input(first_pem(pem).as_bytes(), usize::MAX).expect("PEM")
}

/// A test CA: its certificate alone (what an operator uploads), its key, and an issuer.
pub struct TestCa {
    pub cn: String,
    pub pem: String,
    pub key_pem: String,
    pub issuer: CaIssuer,
}

fn validity() -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - Duration::days(1), now + Duration::days(365))
}

pub fn root(cn: &str, kind: KeyKind) -> TestCa {
    let (nb, na) = validity();
    let g = gen::make_ca(cn, kind, None, nb, na).expect("root CA");
    let issuer = CaIssuer::from_pem(&g.cert_pem, &g.key_pem).expect("issuer");
    TestCa {
        cn: cn.to_string(),
        pem: g.cert_pem,
        key_pem: g.key_pem,
        issuer,
    }
}

pub fn intermediate(cn: &str, kind: KeyKind, parent: &TestCa) -> TestCa {
    let (nb, na) = validity();
    let g = gen::make_ca(cn, kind, Some(&parent.issuer), nb, na).expect("intermediate CA");
    let issuer = CaIssuer::from_pem(&g.cert_pem, &g.key_pem).expect("issuer");
    assert_eq!(g.cert_pem.matches("BEGIN CERTIFICATE").count(), 2);
    TestCa {
        cn: cn.to_string(),
        pem: first_pem(&g.cert_pem),
        key_pem: g.key_pem,
        issuer,
    }
}

impl TestCa {
    /// A verification certificate for `code`, valid from 5 minutes before `now` for an hour.
    pub fn vcert_at(&self, code: &str, now: OffsetDateTime) -> String {
        gen::make_verification_cert(code, &self.issuer, now, Duration::hours(1))
            .expect("verification certificate")
            .cert_pem
    }

    /// A device certificate issued by this CA (DER of the leaf alone).
    pub fn leaf_der(&self, cn: &str) -> Vec<u8> {
        let (nb, na) = validity();
        let g = gen::make_leaf(cn, KeyKind::EcP256, &self.issuer, &[], nb, na).expect("leaf");
        der_of(&g.cert_pem)
    }

    pub fn leaf_pem(&self, cn: &str) -> String {
        let (nb, na) = validity();
        let g = gen::make_leaf(cn, KeyKind::EcP256, &self.issuer, &[], nb, na).expect("leaf");
        first_pem(&g.cert_pem)
    }
}

pub fn is_code(code: &str) -> bool {
    code.len() == 48
        && code
            .chars()
            .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c))
}
