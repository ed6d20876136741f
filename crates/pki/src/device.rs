//! Device identity rules: which device ids are valid, how thumbprints are written, and whether a
//! presented certificate chain leads to a registered CA, with a precise reason when it does not.
//!
//! Why pure: the MQTT gateway asks this at every CONNECT, and the answer decides who gets in. The
//! trust set is passed in as a [`TrustIndex`] (a snapshot the service layer rebuilds when a CA
//! changes), so the rule never touches the database and is tested exhaustively.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};

use crate::cert::CertInfo;
use crate::pop::format_time;

/// Why a device id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device id '{shown}' is invalid: expected 1 to 128 ASCII letters, digits or any of - . + % _ # * ? ! ( ) , = @ $ ' ({problem})")]
pub struct DeviceIdError {
    pub shown: String,
    pub problem: String,
}

/// Validates a device id as Azure IoT Hub allows them.
pub fn validate_device_id(id: &str) -> Result<(), DeviceIdError> {
    let problem = if id.is_empty() {
        "it is empty".to_string()
    } else if id.len() > 128 {
        format!("it has {} characters", id.chars().count())
    } else if let Some(c) = id.chars().find(|c| {
        !(c.is_ascii_alphanumeric()
            || matches!(
                c,
                '-' | '.'
                    | '+'
                    | '%'
                    | '_'
                    | '#'
                    | '*'
                    | '?'
                    | '!'
                    | '('
                    | ')'
                    | ','
                    | '='
                    | '@'
                    | '$'
                    | '\''
            ))
    }) {
        format!("it contains {c:?}")
    } else {
        return Ok(());
    };
    // Built only for a refusal: every connect validates its ID, and most are valid.
    let shown = id
        .chars()
        .take(140)
        .collect::<String>()
        .escape_debug()
        .to_string();
    Err(DeviceIdError { shown, problem })
}

/// Normalises a thumbprint: SHA-1 (40 hex) or SHA-256 (64 hex), without regard to case; colons and
/// spaces (as `openssl x509 -fingerprint` prints them) are removed. Returns uppercase hex.
pub fn normalize_thumbprint(text: &str) -> Result<String, String> {
    let hex: String = text.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
    if !(hex.len() == 40 || hex.len() == 64) || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "thumbprint '{}' is invalid: expected 40 (SHA-1) or 64 (SHA-256) hex digits",
            text.chars().take(80).collect::<String>()
        ));
    }
    Ok(hex.to_ascii_uppercase())
}

/// A CA of the registry, as the trust index holds it.
#[derive(Debug, Clone)]
pub struct AnchorEntry {
    pub ca_name: String,
    pub der: Vec<u8>,
    pub subject: String,
    pub verified: bool,
    pub not_after: i64,
}

/// A short key for a distinguished name, from its DER. The trust index finds CAs by the exact DER
/// of an issuer name, so a change to a CA can only alter the verdict on chains in which some
/// certificate names that CA's subject as its issuer: these keys let the hub find exactly those
/// chains (two names sharing a key only cost an extra re-check, never a missed one).
pub type NameKey = u64;

/// The [`NameKey`] of a DER-encoded name.
pub fn name_key(der: &[u8]) -> NameKey {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    der.hash(&mut h);
    h.finish()
}

/// How many shards a [`ShardedMap`] has: a change copies about 1/64 of the map.
const SHARDS: usize = 64;

/// A map split into shards, each behind an `Arc`, so that a copy changed in a few keys clones
/// only the shards holding them and shares the rest. The trust index is republished on every CA
/// change: copying a whole 10,000-CA map each time made every change cost the whole registry.
#[derive(Debug, Clone)]
struct ShardedMap<K, V> {
    shards: Vec<Arc<HashMap<K, V>>>,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap {
            shards: (0..SHARDS).map(|_| Arc::new(HashMap::new())).collect(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> ShardedMap<K, V> {
    fn shard_of<Q: Hash + ?Sized>(key: &Q) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % SHARDS as u64) as usize
    }

    fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[Self::shard_of(key)].get(key)
    }

    /// The shard that holds `key`, copied first if another index still shares it.
    fn shard_mut<Q>(&mut self, key: &Q) -> &mut HashMap<K, V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        Arc::make_mut(&mut self.shards[Self::shard_of(key)])
    }
}

/// The registered CAs indexed by the DER of their subject: a chain is checked against only the CAs
/// whose subject equals an issuer it names, never by scanning them all. Cloning it is cheap
/// (shared shards), and [`TrustIndex::with_changes`] copies only what a change touches.
#[derive(Debug, Clone, Default)]
pub struct TrustIndex {
    by_subject: ShardedMap<Arc<[u8]>, Vec<Arc<AnchorEntry>>>,
    /// basicConstraints path lengths of the CAs that have one, by CA name: webpki's trust anchors
    /// carry no basicConstraints, so the limit a registered CA sets below itself is enforced here.
    path_lens: ShardedMap<String, u32>,
    count: usize,
}

/// A registered CA with what the index needs from its certificate, parsed once: a registry of
/// thousands of CAs is re-indexed on every CA change, and parsing each certificate every time
/// made that quadratic.
#[derive(Debug, Clone)]
pub struct ParsedAnchor {
    pub entry: Arc<AnchorEntry>,
    subject_raw: Arc<[u8]>,
    path_len: Option<u32>,
}

impl ParsedAnchor {
    /// Parses a registered CA's certificate.
    pub fn parse(ca_name: &str, der: &[u8], verified: bool) -> Result<ParsedAnchor, String> {
        let info = CertInfo::from_der(der).map_err(|e| e.to_string())?;
        Ok(ParsedAnchor {
            entry: Arc::new(AnchorEntry {
                ca_name: ca_name.to_string(),
                der: der.to_vec(),
                subject: info.subject,
                verified,
                not_after: info.not_after,
            }),
            subject_raw: info.subject_raw.into(),
            path_len: info.ca.flatten(),
        })
    }
}

impl ParsedAnchor {
    /// The key of this CA's subject: chains naming it as an issuer are the ones a change to this
    /// CA can affect.
    pub fn subject_key(&self) -> NameKey {
        name_key(&self.subject_raw)
    }
}

impl TrustIndex {
    /// Builds the index; entries whose DER cannot be read are skipped (the registry only holds
    /// parsed certificates).
    pub fn new(entries: impl IntoIterator<Item = AnchorEntry>) -> TrustIndex {
        TrustIndex::from_parsed(entries.into_iter().filter_map(|e| {
            let info = CertInfo::from_der(&e.der).ok()?;
            Some(ParsedAnchor {
                subject_raw: info.subject_raw.into(),
                path_len: info.ca.flatten(),
                entry: Arc::new(e),
            })
        }))
    }

    /// Builds the index from CAs parsed earlier (CA names are unique).
    pub fn from_parsed(anchors: impl IntoIterator<Item = ParsedAnchor>) -> TrustIndex {
        TrustIndex::default().with_changes(&[], anchors)
    }

    /// A copy of this index without the CAs `removed` (by name) and with the CAs `added`: a
    /// replaced CA is in both. Only the shards these CAs fall in are copied, so the cost follows
    /// the change, not the size of the registry.
    pub fn with_changes(
        &self,
        removed: &[ParsedAnchor],
        added: impl IntoIterator<Item = ParsedAnchor>,
    ) -> TrustIndex {
        let mut next = self.clone();
        for r in removed {
            next.remove(r);
        }
        for a in added {
            if let Some(len) = a.path_len {
                next.path_lens
                    .shard_mut(a.entry.ca_name.as_str())
                    .insert(a.entry.ca_name.clone(), len);
            }
            next.by_subject
                .shard_mut(&*a.subject_raw)
                .entry(a.subject_raw)
                .or_default()
                .push(a.entry);
            next.count += 1;
        }
        next
    }

    fn remove(&mut self, anchor: &ParsedAnchor) {
        let name = anchor.entry.ca_name.as_str();
        if self.by_subject.get(&*anchor.subject_raw).is_none() {
            return;
        }
        let shard = self.by_subject.shard_mut(&*anchor.subject_raw);
        let Some(entries) = shard.get_mut(&*anchor.subject_raw) else {
            return;
        };
        let before = entries.len();
        entries.retain(|e| e.ca_name != name);
        self.count -= before - entries.len();
        if entries.is_empty() {
            shard.remove(&*anchor.subject_raw);
        }
        if self.path_lens.get(name).is_some() {
            self.path_lens.shard_mut(name).remove(name);
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The names of the CAs in the index, in no particular order (tests and diagnostics).
    pub fn ca_names(&self) -> Vec<String> {
        self.by_subject
            .shards
            .iter()
            .flat_map(|s| s.values().flatten().map(|e| e.ca_name.clone()))
            .collect()
    }

    fn candidates(&self, issuer_raw: &[u8]) -> &[Arc<AnchorEntry>] {
        self.by_subject
            .get(issuer_raw)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// A chain that leads to a Verified CA.
#[derive(Debug, Clone)]
pub struct ChainOk {
    /// The registered CA the chain ends at.
    pub ca_name: String,
    pub leaf: CertInfo,
    /// The verdict holds only while every presented certificate and the CA are valid: from the
    /// latest `notBefore` to the earliest `notAfter` (Unix seconds).
    pub valid_from: i64,
    pub valid_until: i64,
    /// The issuer names of the presented certificates (sorted, no repeats): the verdict can only
    /// change when a CA with one of these subjects is added, changed or removed.
    pub issuers: Vec<NameKey>,
}

/// The default bound on the number of certificates a device may present.
pub const DEFAULT_MAX_CHAIN_LEN: usize = 8;

/// Why a presented chain does not lead to a Verified CA.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("no client certificate was presented")]
    NoCertificate,
    #[error("the client presented {len} certificates; at most {max} are accepted")]
    TooLong { len: usize, max: usize },
    #[error("the client certificate cannot be read: {0}")]
    Unparsable(String),
    #[error("no registered CA issued '{issuer}'{hint}")]
    UnknownIssuer { issuer: String, hint: String },
    #[error("chain ends at '{subject}' (certificate '{ca_name}') which is Unverified; prove possession of its key first")]
    Unverified { ca_name: String, subject: String },
    #[error("chain ends at '{subject}' (certificate '{ca_name}') which expired at {not_after}")]
    CaExpired {
        ca_name: String,
        subject: String,
        not_after: String,
    },
    #[error("the leaf certificate's CN is {found}, not a text string; a device certificate's CN must be the device id as text (a UTF8String or PrintableString)")]
    LeafCommonNameNotText { found: String },
    #[error("the chain does not verify against registered CA '{ca_name}' ({subject}): {reason}")]
    Invalid {
        ca_name: String,
        subject: String,
        reason: String,
    },
}

/// Why webpki refuses a certificate whose outer signatureAlgorithm differs from the signed one.
const SIGNATURE_ALGORITHM_MISMATCH: &str = "a certificate of the chain has a signatureAlgorithm field that differs from the signature algorithm inside its signed part (TBSCertificate); RFC 5280 (4.1.1.2) requires the two to be the same";

fn describe(e: &webpki::Error, now: i64) -> String {
    use webpki::Error as E;
    match e {
        E::UnknownIssuer | E::InvalidSignatureForPublicKey => {
            "a certificate names that CA as its issuer but was not signed with its key".into()
        }
        E::CertExpired { not_after, .. } => format!(
            "a certificate of the chain expired at {} (now {})",
            format_time(not_after.as_secs() as i64),
            format_time(now)
        ),
        E::CertNotValidYet { not_before, .. } => format!(
            "a certificate of the chain is not valid before {} (now {})",
            format_time(not_before.as_secs() as i64),
            format_time(now)
        ),
        E::RequiredEkuNotFoundContext(_) => {
            "the leaf certificate has an extended key usage without clientAuth".into()
        }
        E::CaUsedAsEndEntity => {
            "the leaf certificate is a CA certificate, not a device certificate".into()
        }
        E::EndEntityUsedAsCa => "an intermediate of the chain is not a CA certificate".into(),
        E::PathLenConstraintViolated => "the chain is longer than a CA's path length allows".into(),
        E::UnsupportedCertVersion => "a certificate of the chain is not X.509 v3".into(),
        E::SignatureAlgorithmMismatch => SIGNATURE_ALGORITHM_MISMATCH.into(),
        E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            "a signature algorithm of the chain is not supported".into()
        }
        other => format!("{other:?}"),
    }
}

/// Checks that `chain` (leaf first, then any intermediates, as presented in the TLS handshake)
/// leads to a Verified, unexpired CA of `index`, at time `now`, for client authentication (a leaf
/// with an extended key usage must include clientAuth; a leaf without one is accepted, RFC 5280).
pub fn validate_chain(
    chain: &[Vec<u8>],
    index: &TrustIndex,
    now: i64,
) -> Result<ChainOk, ChainError> {
    validate_chain_bounded(chain, index, now, DEFAULT_MAX_CHAIN_LEN)
}

/// [`validate_chain`] with an explicit bound on the chain length, checked before any parsing.
pub fn validate_chain_bounded(
    chain: &[Vec<u8>],
    index: &TrustIndex,
    now: i64,
    max_len: usize,
) -> Result<ChainOk, ChainError> {
    if chain.len() > max_len {
        return Err(ChainError::TooLong {
            len: chain.len(),
            max: max_len,
        });
    }
    let leaf_der = chain.first().ok_or(ChainError::NoCertificate)?;
    let leaf = CertInfo::from_der(leaf_der).map_err(|e| ChainError::Unparsable(e.to_string()))?;
    let mut infos = vec![leaf.clone()];
    for der in &chain[1..] {
        infos.push(CertInfo::from_der(der).map_err(|e| ChainError::Unparsable(e.to_string()))?);
    }
    // Candidates: registered CAs whose subject is the issuer of any presented certificate.
    let mut candidates: Vec<&AnchorEntry> = Vec::new();
    for info in &infos {
        for c in index.candidates(&info.issuer_raw) {
            if !candidates.iter().any(|k| k.ca_name == c.ca_name) {
                candidates.push(c.as_ref());
            }
        }
    }
    if candidates.is_empty() {
        let top = infos.last().unwrap_or(&leaf);
        let presented_issuer = infos.iter().any(|i| i.subject_raw == leaf.issuer_raw);
        let hint = if !presented_issuer && !leaf.is_self_issued() {
            format!("; if '{}' is an intermediate CA, send it in the chain after the leaf, or register and verify it", leaf.issuer)
        } else {
            String::new()
        };
        return Err(ChainError::UnknownIssuer {
            issuer: top.issuer.clone(),
            hint,
        });
    }

    let leaf_cert = CertificateDer::from(leaf_der.as_slice());
    let ee = webpki::EndEntityCert::try_from(&leaf_cert).map_err(|e| match e {
        webpki::Error::SignatureAlgorithmMismatch => ChainError::Unparsable(
            SIGNATURE_ALGORITHM_MISMATCH.replace("a certificate of the chain", "it"),
        ),
        other => ChainError::Unparsable(format!("{other:?}")),
    })?;
    let intermediates: Vec<CertificateDer<'_>> = chain[1..]
        .iter()
        .map(|d| CertificateDer::from(d.as_slice()))
        .collect();
    let time = UnixTime::since_unix_epoch(Duration::from_secs(now.max(0) as u64));

    // Try a set of candidates; on success, name the one the path ended at.
    let attempt = |set: &[&AnchorEntry]| -> Result<String, webpki::Error> {
        let ders: Vec<CertificateDer<'_>> = set
            .iter()
            .map(|c| CertificateDer::from(c.der.as_slice()))
            .collect();
        let anchors: Vec<TrustAnchor<'_>> = ders
            .iter()
            .filter_map(|d| webpki::anchor_from_trusted_cert(d).ok())
            .collect();
        // A path is acceptable only if the number of intermediates below the anchor respects
        // the anchor's own path length (webpki checks the intermediates' constraints itself).
        let name_of = |anchor: &TrustAnchor<'_>| {
            set.iter()
                .zip(anchors.iter())
                .find(|(_, a)| {
                    a.subject == anchor.subject
                        && a.subject_public_key_info == anchor.subject_public_key_info
                })
                .map(|(c, _)| c.ca_name.clone())
        };
        let within_path_len = |path: &webpki::VerifiedPath<'_>| -> Result<(), webpki::Error> {
            let below = path.intermediate_certificates().count();
            match name_of(path.anchor()).and_then(|n| index.path_lens.get(&n).copied()) {
                Some(max) if below > max as usize => Err(webpki::Error::PathLenConstraintViolated),
                _ => Ok(()),
            }
        };
        let path = ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            time,
            webpki::KeyUsage::client_auth(),
            None,
            Some(&within_path_len),
        )?;
        let anchor = path.anchor();
        Ok(set
            .iter()
            .zip(anchors.iter())
            .find(|(_, a)| {
                a.subject == anchor.subject
                    && a.subject_public_key_info == anchor.subject_public_key_info
            })
            .map(|(c, _)| c.ca_name.clone())
            .unwrap_or_default())
    };

    let usable: Vec<&AnchorEntry> = candidates
        .iter()
        .copied()
        .filter(|c| c.verified && c.not_after >= now)
        .collect();
    let first_error = if usable.is_empty() {
        None
    } else {
        match attempt(&usable) {
            Ok(ca_name) => {
                // A chain from a Verified CA still names no device when its leaf has a CN that
                // is not text (any of them: the CN count is judged by the caller on the text
                // CNs). Judged after the path, so an untrusted chain hears only about trust.
                if let Some(found) = leaf.non_text_common_names.first() {
                    return Err(ChainError::LeafCommonNameNotText {
                        found: found.clone(),
                    });
                }
                let ca_not_after = usable
                    .iter()
                    .find(|c| c.ca_name == ca_name)
                    .map_or(i64::MAX, |c| c.not_after);
                let valid_from = infos.iter().map(|i| i.not_before).max().unwrap_or(now);
                let valid_until = infos
                    .iter()
                    .map(|i| i.not_after)
                    .min()
                    .unwrap_or(now)
                    .min(ca_not_after);
                let mut issuers: Vec<NameKey> =
                    infos.iter().map(|i| name_key(&i.issuer_raw)).collect();
                issuers.sort_unstable();
                issuers.dedup();
                return Ok(ChainOk {
                    ca_name,
                    leaf,
                    valid_from,
                    valid_until,
                    issuers,
                });
            }
            Err(e) => Some(e),
        }
    };
    // Not admitted: find the most useful reason.
    let unverified: Vec<&AnchorEntry> =
        candidates.iter().copied().filter(|c| !c.verified).collect();
    if !unverified.is_empty() {
        if let Ok(ca_name) = attempt(&unverified) {
            let subject = unverified
                .iter()
                .find(|c| c.ca_name == ca_name)
                .map(|c| c.subject.clone())
                .unwrap_or_default();
            return Err(ChainError::Unverified { ca_name, subject });
        }
    }
    let expired: Vec<&AnchorEntry> = candidates
        .iter()
        .copied()
        .filter(|c| c.verified && c.not_after < now)
        .collect();
    if let Some(c) = expired.first() {
        if first_error.is_none() {
            return Err(ChainError::CaExpired {
                ca_name: c.ca_name.clone(),
                subject: c.subject.clone(),
                not_after: format_time(c.not_after),
            });
        }
    }
    let c = usable.first().or(candidates.first()).copied();
    let (ca_name, subject) = c
        .map(|c| (c.ca_name.clone(), c.subject.clone()))
        .unwrap_or_default();
    let reason = match &first_error {
        Some(e) => describe(e, now),
        None => match c {
            Some(c) if !c.verified => "a certificate names that Unverified CA as its issuer but was not signed with its key".into(),
            _ => "no usable CA".into(),
        },
    };
    Err(ChainError::Invalid {
        ca_name,
        subject,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    fn params(cn: &str, ca: Option<BasicConstraints>) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(1);
        match ca {
            Some(bc) => {
                p.is_ca = IsCa::Ca(bc);
                p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            }
            None => {
                p.is_ca = IsCa::ExplicitNoCa;
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        p
    }

    #[test]
    fn device_ids_and_thumbprints() {
        for ok in [
            "sensor-1",
            "a",
            &"x".repeat(128),
            "-.+%_#*?!(),=@$'",
            "UPPER.lower",
        ] {
            assert!(validate_device_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", &"x".repeat(129), "a/b", "bad id", "é", "tab\t", "nul\0"] {
            let e = validate_device_id(bad).unwrap_err();
            assert!(e.to_string().contains("expected 1 to 128"), "{e}");
        }
        let sha1 = "97388663832d0393c9246cab4fba2c8677185a25";
        assert_eq!(
            normalize_thumbprint(sha1).unwrap(),
            sha1.to_ascii_uppercase()
        );
        let colons = "AB:".repeat(31) + "AB";
        assert_eq!(normalize_thumbprint(&colons).unwrap(), "AB".repeat(32));
        for bad in ["", "XYZ", &"A".repeat(41), &"G".repeat(40)] {
            assert!(normalize_thumbprint(bad).is_err(), "{bad}");
        }
    }

    struct Chain {
        root: rcgen::Certificate,
        root_issuer: Issuer<'static, KeyPair>,
        inter: rcgen::Certificate,
        leaf: rcgen::Certificate,
    }

    /// root ("root", with `root_constraints`) > "inter" > leaf "dev".
    fn root_inter_leaf(root_constraints: BasicConstraints) -> Chain {
        let root_key = KeyPair::generate().unwrap();
        let root_params = params("root", Some(root_constraints));
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);
        let inter_key = KeyPair::generate().unwrap();
        let inter_params = params("inter", Some(BasicConstraints::Unconstrained));
        let inter = inter_params.signed_by(&inter_key, &root_issuer).unwrap();
        let leaf = params("dev", None)
            .signed_by(
                &KeyPair::generate().unwrap(),
                &Issuer::new(inter_params, inter_key),
            )
            .unwrap();
        Chain {
            root,
            root_issuer,
            inter,
            leaf,
        }
    }

    #[test]
    fn a_registered_ca_path_length_is_enforced() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let Chain {
            root,
            root_issuer,
            inter,
            leaf,
        } = root_inter_leaf(BasicConstraints::Constrained(0));
        let direct = params("dev2", None)
            .signed_by(&KeyPair::generate().unwrap(), &root_issuer)
            .unwrap();
        let index = TrustIndex::new([AnchorEntry {
            ca_name: "root".into(),
            der: root.der().to_vec(),
            subject: "CN=root".into(),
            verified: true,
            not_after: i64::MAX,
        }]);
        let err =
            validate_chain(&[leaf.der().to_vec(), inter.der().to_vec()], &index, now).unwrap_err();
        assert!(err.to_string().contains("path length"), "{err}");
        let ok = validate_chain(&[direct.der().to_vec()], &index, now).unwrap();
        assert_eq!(ok.ca_name, "root");
        // More certificates than the bound are refused before any parsing.
        let long = vec![vec![0u8; 4]; 9];
        assert_eq!(
            validate_chain(&long, &index, now).unwrap_err(),
            ChainError::TooLong { len: 9, max: 8 }
        );
    }

    #[test]
    fn a_verdict_names_exactly_the_subjects_a_trust_change_must_recheck() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let Chain {
            root, inter, leaf, ..
        } = root_inter_leaf(BasicConstraints::Unconstrained);
        let other_key = KeyPair::generate().unwrap();
        let other = params("other", Some(BasicConstraints::Unconstrained))
            .self_signed(&other_key)
            .unwrap();
        let anchor = |name: &str, der: &[u8]| ParsedAnchor::parse(name, der, true).unwrap();
        let (root_a, other_a) = (anchor("root", root.der()), anchor("other", other.der()));
        let chain = vec![leaf.der().to_vec(), inter.der().to_vec()];

        let ok = validate_chain(&chain, &TrustIndex::from_parsed([root_a.clone()]), now).unwrap();
        let inter_subject = CertInfo::from_der(inter.der()).unwrap().subject_raw;
        let mut expected = vec![name_key(&inter_subject), root_a.subject_key()];
        expected.sort_unstable();
        assert_eq!(ok.issuers, expected);
        assert!(!ok.issuers.contains(&other_a.subject_key()));

        // A CA whose subject the chain does not name changes nothing about the verdict.
        let with_other = TrustIndex::from_parsed([root_a, other_a]);
        let again = validate_chain(&chain, &with_other, now).unwrap();
        assert_eq!(
            (again.ca_name, again.valid_until, again.issuers),
            (ok.ca_name, ok.valid_until, ok.issuers)
        );
    }

    #[test]
    fn a_changed_copy_of_the_index_leaves_the_original_as_it_was() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let Chain {
            root, inter, leaf, ..
        } = root_inter_leaf(BasicConstraints::Constrained(0));
        let chain = vec![leaf.der().to_vec(), inter.der().to_vec()];
        let other = params("other", Some(BasicConstraints::Unconstrained))
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap();
        let root_a = ParsedAnchor::parse("root", root.der(), true).unwrap();
        let other_a = ParsedAnchor::parse("other", other.der(), true).unwrap();
        let path_len_refusal = |index: &TrustIndex| {
            let e = validate_chain(&chain, index, now).unwrap_err();
            assert!(e.to_string().contains("path length"), "{e}");
        };

        let before = TrustIndex::from_parsed([root_a.clone(), other_a.clone()]);
        path_len_refusal(&before);
        let after = before.with_changes(std::slice::from_ref(&root_a), []);
        // The copy lost the CA, its path length with it; the original (which CONNECTs may still
        // hold) is untouched.
        assert!(matches!(
            validate_chain(&chain, &after, now),
            Err(ChainError::UnknownIssuer { .. })
        ));
        assert_eq!(
            (after.len(), after.ca_names()),
            (1, vec!["other".to_string()])
        );
        assert!(after.path_lens.get("root").is_none());
        path_len_refusal(&before);
        assert_eq!(before.len(), 2);
        // Removing a CA the index does not hold changes nothing; adding it back restores it.
        let same = after.with_changes(std::slice::from_ref(&root_a), []);
        assert_eq!(same.len(), 1);
        let back = same.with_changes(&[], [root_a]);
        path_len_refusal(&back);
        let mut names = back.ca_names();
        names.sort();
        assert_eq!(names, vec!["other".to_string(), "root".to_string()]);
    }

    #[test]
    fn a_change_copies_only_the_shards_it_touches() {
        let anchors: Vec<ParsedAnchor> = (0..200)
            .map(|i| {
                let name = format!("ca-{i}");
                let cert = params(&name, Some(BasicConstraints::Constrained(1)))
                    .self_signed(&KeyPair::generate().unwrap())
                    .unwrap();
                ParsedAnchor::parse(&name, cert.der(), true).unwrap()
            })
            .collect();
        let before = TrustIndex::from_parsed(anchors.iter().cloned());
        let after = before.with_changes(&anchors[..1], anchors[..1].iter().cloned());
        assert_eq!(after.len(), 200);
        fn shared<K, V>(a: &ShardedMap<K, V>, b: &ShardedMap<K, V>) -> usize {
            let same = a.shards.iter().zip(&b.shards);
            same.filter(|(x, y)| Arc::ptr_eq(x, y)).count()
        }
        // One subject shard and one path-length shard were copied; the rest are shared.
        assert_eq!(shared(&before.by_subject, &after.by_subject), SHARDS - 1);
        assert_eq!(shared(&before.path_lens, &after.path_lens), SHARDS - 1);
    }

    /// Random sequences of CA additions, replacements and removals, applied one change at a
    /// time with `with_changes`, always give the index a rebuild from scratch would: same CAs,
    /// same candidates for every subject (several CAs may share one), same path lengths.
    #[test]
    fn changing_the_index_step_by_step_matches_building_it_anew() {
        // 8 subjects x 2 keys, some with a path length; the same certificate may sit under
        // several names, as far as the index is concerned.
        let pool: Vec<(String, Vec<u8>)> = (0..16)
            .map(|i| {
                let subject = format!("subject-{}", i % 8);
                let bc = if i % 3 == 0 {
                    BasicConstraints::Constrained(i % 4)
                } else {
                    BasicConstraints::Unconstrained
                };
                let cert = params(&subject, Some(bc))
                    .self_signed(&KeyPair::generate().unwrap())
                    .unwrap();
                (subject, cert.der().to_vec())
            })
            .collect();
        let subjects: Vec<Arc<[u8]>> = pool
            .iter()
            .map(|(_, der)| CertInfo::from_der(der).unwrap().subject_raw.into())
            .collect();
        let view = |index: &TrustIndex| {
            let mut names = index.ca_names();
            names.sort();
            let by_subject: Vec<Vec<String>> = subjects
                .iter()
                .map(|s| {
                    let mut n: Vec<String> = index
                        .candidates(s)
                        .iter()
                        .map(|e| e.ca_name.clone())
                        .collect();
                    n.sort();
                    n
                })
                .collect();
            let lens: Vec<Option<u32>> = names
                .iter()
                .map(|n| index.path_lens.get(n).copied())
                .collect();
            (index.len(), names, by_subject, lens)
        };

        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |bound: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % bound as u64) as usize
        };
        let mut model: HashMap<String, ParsedAnchor> = HashMap::new();
        let mut index = TrustIndex::default();
        for step in 0..400 {
            let name = format!("ca-{}", next(24));
            let (_, der) = &pool[next(pool.len())];
            let verified = next(2) == 0;
            let (removed, added): (Vec<ParsedAnchor>, Vec<ParsedAnchor>) = match next(3) {
                // Remove the CA of that name, if there is one.
                0 => (model.remove(&name).into_iter().collect(), vec![]),
                // Add it, or replace the one of that name.
                _ => {
                    let new = ParsedAnchor::parse(&name, der, verified).unwrap();
                    let old = model.insert(name.clone(), new.clone());
                    (old.into_iter().collect(), vec![new])
                }
            };
            index = index.with_changes(&removed, added);
            let anew = TrustIndex::from_parsed(model.values().cloned());
            assert_eq!(view(&index), view(&anew), "after step {step}");
        }
        assert!(!model.is_empty());
    }
}
