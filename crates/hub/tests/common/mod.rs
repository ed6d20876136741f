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

/// The principal of a token signed with `policy`'s primary key, valid for a minute.
pub fn principal_of(env: &Env, policy: &str) -> Principal {
    let key = env.hub.policy_keys(&sys(), policy).unwrap().primary_key;
    let token =
        iothub_pki::sas::build_token("localhost", &key, Some(policy), env.now() + 60).unwrap();
    env.hub.authenticate(Some(&token)).unwrap()
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

// ---------------------------------------------------------------------------------------------
// Certificates no generator makes (security review, issue 16, finding 7): a tiny DER rewriter
// (definite lengths only, which is all DER has) and a re-signer with the CA's own key.

/// (header length, content length) of the TLV at the start of `d`.
fn tlv_header(d: &[u8]) -> (usize, usize) {
    let first = d[1] as usize;
    if first < 0x80 {
        (2, first)
    } else {
        let n = first & 0x7f;
        let len = d[2..2 + n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (2 + n, len)
    }
}

/// The consecutive complete TLVs of `d`.
fn tlv_items(mut d: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !d.is_empty() {
        let (h, l) = tlv_header(d);
        out.push(d[..h + l].to_vec());
        d = &d[h + l..];
    }
    out
}

fn content(d: &[u8]) -> &[u8] {
    let (h, l) = tlv_header(d);
    &d[h..h + l]
}

pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// ecdsa-with-SHA256 and ecdsa-with-SHA384 AlgorithmIdentifiers, DER.
pub const ALG_ECDSA_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];
pub const ALG_ECDSA_SHA384: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
];

/// A subject Name holding one CN whose value has the raw `tag` and `value` bytes.
pub fn cn_name(tag: u8, value: &[u8]) -> Vec<u8> {
    let atv = tlv(
        0x30,
        &[tlv(0x06, &[0x55, 0x04, 0x03]), tlv(tag, value)].concat(),
    );
    tlv(0x30, &tlv(0x31, &atv))
}

/// `cert` (DER, v3, signed by the EC P-256 key `issuer_key_pem`) signed again by that key, with
/// `subject` (DER) as its subject when given, and `inner` as the signature algorithm inside the
/// TBS while the outer field stays ecdsa-with-SHA256 (the signature is always ECDSA SHA-256).
pub fn resigned(
    cert: &[u8],
    issuer_key_pem: &str,
    subject: Option<Vec<u8>>,
    inner: &[u8],
) -> Vec<u8> {
    use rcgen::SigningKey;
    let outer = tlv_items(content(cert));
    let mut fields = tlv_items(content(&outer[0]));
    // version, serial, signature, issuer, validity, subject, ...
    fields[2] = inner.to_vec();
    if let Some(s) = subject {
        fields[5] = s;
    }
    let tbs = tlv(0x30, &fields.concat());
    let key = rcgen::KeyPair::from_pem(issuer_key_pem).expect("CA key");
    let signature = key.sign(&tbs).expect("signs");
    let mut bits = vec![0u8];
    bits.extend_from_slice(&signature);
    tlv(
        0x30,
        &[tbs, ALG_ECDSA_SHA256.to_vec(), tlv(0x03, &bits)].concat(),
    )
}

/// PEM text of one DER certificate.
pub fn pem_of(der: &[u8]) -> String {
    iothub_pki::input::der_to_pem(der)
}
