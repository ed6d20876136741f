//! Chain validation: whether a chain a device presents leads to a Verified, unexpired CA of the
//! trust index, for client authentication, with a precise reason when it does not.
//!
//! Why pure: the MQTT gateway asks this at every CONNECT, and the answer decides who gets in. The
//! trust set is passed in as a [`TrustIndex`] (a snapshot the service layer rebuilds when a CA
//! changes), so the rule never touches the database and is tested exhaustively.

use std::time::Duration;

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};

use crate::cert::CertInfo;
use crate::pop::format_time;
use crate::trust_index::{name_key, AnchorEntry, NameKey, TrustIndex};

/// A chain that leads to a Verified CA.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Each presented certificate's issuer name and serial (normalized, see
    /// [`crate::revocation::normalize_serial`]), leaf first: what a revocation is checked against.
    pub presented: Vec<(NameKey, String)>,
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
    /// A certificate of the chain was revoked (see [`crate::revocation`]).
    #[error("{0}")]
    Revoked(crate::revocation::Revoked),
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
    validate_chain_knowing(chain, index, now, max_len, None).map(|v| v.ok)
}

/// An intermediate a device presented (as `[leaf, intermediate]`) that a full validation found
/// signed by a registered, Verified CA with no name constraints, of the trust snapshot it was
/// validated against. webpki checked the intermediate itself then (a CA, allowed for client
/// authentication, within the CA's path length, no unknown critical extension), and a
/// certificate's bytes never change, so while that snapshot is current the next chain
/// `[leaf, this intermediate]` needs only the leaf's signature checked: a fleet's devices share
/// their intermediate, so after a restart only the first of them pays for it. Its own validity
/// and the CA's expiry are checked at every use; revocations are checked after every verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownIntermediate {
    /// The registered CA it is signed by.
    pub ca_name: String,
    pub ca_not_after: i64,
    /// The intermediate, parsed (its DER is `info.der`).
    pub info: CertInfo,
}

/// A chain's verdict, and what it taught.
#[derive(Debug, Clone)]
pub struct Validation {
    pub ok: ChainOk,
    /// The chain's intermediate, when a full validation found it worth remembering.
    pub learned: Option<KnownIntermediate>,
    /// Whether `known` decided the verdict (one signature checked instead of two).
    pub used_known: bool,
}

/// [`validate_chain_bounded`], given the intermediate the caller remembers for this chain (see
/// [`KnownIntermediate`]; it must come from a validation against this same `index`).
///
/// A chain `[leaf, known intermediate]` is first tried with the intermediate as the trust anchor;
/// anything else, and any failure there, takes the full way, in four steps: read the presented
/// certificates, find the registered CAs they name as issuers, try the Verified and unexpired
/// ones with webpki, and on failure work out the most useful reason (so a refusal always has its
/// full reason).
pub fn validate_chain_knowing(
    chain: &[Vec<u8>],
    index: &TrustIndex,
    now: i64,
    max_len: usize,
    known: Option<&KnownIntermediate>,
) -> Result<Validation, ChainError> {
    if let Some(ok) = known.and_then(|k| via_known(chain, k, now)) {
        return Ok(Validation {
            ok,
            learned: None,
            used_known: true,
        });
    }
    let infos = read_presented(chain, max_len)?;
    let candidates = candidates(&infos, index);
    if candidates.is_empty() {
        return Err(unknown_issuer(&infos));
    }
    let leaf_cert = CertificateDer::from(chain[0].as_slice());
    let paths = PathCheck::new(&leaf_cert, &chain[1..], index, now)?;
    let usable: Vec<&AnchorEntry> = candidates
        .iter()
        .copied()
        .filter(|c| c.verified && c.not_after >= now)
        .collect();
    let first_error = if usable.is_empty() {
        None
    } else {
        match paths.attempt(&usable) {
            Ok(path) => {
                let ca_not_after = usable
                    .iter()
                    .find(|c| c.ca_name == path.ca_name)
                    .map_or(i64::MAX, |c| c.not_after);
                // Only `[leaf, intermediate]` whose path went through the intermediate to a CA
                // without name constraints (an anchor made of the intermediate would not carry
                // the CA's).
                let learned = (chain.len() == 2 && path.below == 1 && !path.constrained_anchor)
                    .then(|| KnownIntermediate {
                        ca_name: path.ca_name.clone(),
                        ca_not_after,
                        info: infos[1].clone(),
                    });
                return admitted(path.ca_name, infos, ca_not_after, now).map(|ok| Validation {
                    ok,
                    learned,
                    used_known: false,
                });
            }
            Err(e) => Some(e),
        }
    };
    Err(refusal(&paths, &candidates, &usable, first_error, now))
}

/// The verdict on `[leaf, known intermediate]` with the intermediate as the only trust anchor,
/// or None to take the full way (another chain, an intermediate or CA out of its validity, or
/// any refusal: the full way works out its reason).
fn via_known(chain: &[Vec<u8>], known: &KnownIntermediate, now: i64) -> Option<ChainOk> {
    let intermediate = &known.info;
    if chain.len() != 2 || chain[1] != intermediate.der {
        return None;
    }
    if now < intermediate.not_before || now > intermediate.not_after || now > known.ca_not_after {
        return None;
    }
    let leaf_info = CertInfo::from_der(&chain[0]).ok()?;
    let leaf_der = CertificateDer::from(chain[0].as_slice());
    let leaf = webpki::EndEntityCert::try_from(&leaf_der).ok()?;
    let intermediate_der = CertificateDer::from(intermediate.der.as_slice());
    let anchor = webpki::anchor_from_trusted_cert(&intermediate_der).ok()?;
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::since_unix_epoch(Duration::from_secs(now.max(0) as u64)),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .ok()?;
    admitted(
        known.ca_name.clone(),
        vec![leaf_info, intermediate.clone()],
        known.ca_not_after,
        now,
    )
    .ok()
}

/// A path webpki verified: the CA it ended at, how many presented intermediates it went
/// through, and whether that CA carries name constraints.
struct VerifiedTo {
    ca_name: String,
    below: usize,
    constrained_anchor: bool,
}

/// The facts of every presented certificate, leaf first; the length bound is checked before any
/// parsing, so an oversized chain costs nothing.
fn read_presented(chain: &[Vec<u8>], max_len: usize) -> Result<Vec<CertInfo>, ChainError> {
    if chain.len() > max_len {
        return Err(ChainError::TooLong {
            len: chain.len(),
            max: max_len,
        });
    }
    if chain.is_empty() {
        return Err(ChainError::NoCertificate);
    }
    chain
        .iter()
        .map(|der| CertInfo::from_der(der).map_err(|e| ChainError::Unparsable(e.to_string())))
        .collect()
}

/// The registered CAs whose subject is the issuer of any presented certificate (each once, in the
/// order the chain names them): the only CAs the chain can lead to.
fn candidates<'i>(infos: &[CertInfo], index: &'i TrustIndex) -> Vec<&'i AnchorEntry> {
    let mut candidates: Vec<&AnchorEntry> = Vec::new();
    for info in infos {
        for c in index.candidates(&info.issuer_raw) {
            if !candidates.iter().any(|k| k.ca_name == c.ca_name) {
                candidates.push(c.as_ref());
            }
        }
    }
    candidates
}

/// The refusal for a chain that names no registered CA, with a hint when the leaf's issuer is an
/// intermediate the device did not send.
fn unknown_issuer(infos: &[CertInfo]) -> ChainError {
    let leaf = &infos[0];
    let top = infos.last().unwrap_or(leaf);
    let presented_issuer = infos.iter().any(|i| i.subject_raw == leaf.issuer_raw);
    let hint = if !presented_issuer && !leaf.is_self_issued() {
        format!("; if '{}' is an intermediate CA, send it in the chain after the leaf, or register and verify it", leaf.issuer)
    } else {
        String::new()
    };
    ChainError::UnknownIssuer {
        issuer: top.issuer.clone(),
        hint,
    }
}

/// The presented chain as webpki takes it, ready to be tried against one set of candidate CAs at
/// a time (the usable ones first, the Unverified ones only to explain a refusal).
struct PathCheck<'a> {
    leaf: webpki::EndEntityCert<'a>,
    intermediates: Vec<CertificateDer<'a>>,
    time: UnixTime,
    index: &'a TrustIndex,
}

impl<'a> PathCheck<'a> {
    fn new(
        leaf: &'a CertificateDer<'a>,
        intermediates: &'a [Vec<u8>],
        index: &'a TrustIndex,
        now: i64,
    ) -> Result<PathCheck<'a>, ChainError> {
        let leaf = webpki::EndEntityCert::try_from(leaf).map_err(|e| match e {
            webpki::Error::SignatureAlgorithmMismatch => ChainError::Unparsable(
                SIGNATURE_ALGORITHM_MISMATCH.replace("a certificate of the chain", "it"),
            ),
            other => ChainError::Unparsable(format!("{other:?}")),
        })?;
        Ok(PathCheck {
            leaf,
            intermediates: intermediates
                .iter()
                .map(|d| CertificateDer::from(d.as_slice()))
                .collect(),
            time: UnixTime::since_unix_epoch(Duration::from_secs(now.max(0) as u64)),
            index,
        })
    }

    /// Tries a set of candidates; on success, says which one the path ended at and how.
    fn attempt(&self, set: &[&AnchorEntry]) -> Result<VerifiedTo, webpki::Error> {
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
        let within_path_len = |path: &webpki::VerifiedPath<'_>| -> Result<(), webpki::Error> {
            let below = path.intermediate_certificates().count();
            match anchor_name(set, &anchors, path.anchor()).and_then(|n| self.index.path_len(&n)) {
                Some(max) if below > max as usize => Err(webpki::Error::PathLenConstraintViolated),
                _ => Ok(()),
            }
        };
        let path = self.leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &self.intermediates,
            self.time,
            webpki::KeyUsage::client_auth(),
            None,
            Some(&within_path_len),
        )?;
        Ok(VerifiedTo {
            ca_name: anchor_name(set, &anchors, path.anchor()).unwrap_or_default(),
            below: path.intermediate_certificates().count(),
            constrained_anchor: path.anchor().name_constraints.is_some(),
        })
    }
}

/// The name of the CA of `set` that `anchor` was made from. `anchors` holds the trust anchors made
/// from `set`, paired with it by position: that assumes every CA of `set` made one (a CA webpki
/// could not read would shift the names after it; the registry only holds CAs that parsed).
fn anchor_name(
    set: &[&AnchorEntry],
    anchors: &[TrustAnchor<'_>],
    anchor: &TrustAnchor<'_>,
) -> Option<String> {
    set.iter()
        .zip(anchors.iter())
        .find(|(_, a)| {
            a.subject == anchor.subject
                && a.subject_public_key_info == anchor.subject_public_key_info
        })
        .map(|(c, _)| c.ca_name.clone())
}

/// The verdict on a chain that verified against the usable CA `ca_name`: the leaf must still name
/// a device, and the verdict says how long it holds and which issuer subjects it depends on.
fn admitted(
    ca_name: String,
    mut infos: Vec<CertInfo>,
    ca_not_after: i64,
    now: i64,
) -> Result<ChainOk, ChainError> {
    // A chain from a Verified CA still names no device when its leaf has a CN that is not text
    // (any of them: the CN count is judged by the caller on the text CNs). Judged after the
    // path, so an untrusted chain hears only about trust.
    if let Some(found) = infos[0].non_text_common_names.first() {
        return Err(ChainError::LeafCommonNameNotText {
            found: found.clone(),
        });
    }
    let valid_from = infos.iter().map(|i| i.not_before).max().unwrap_or(now);
    let valid_until = infos
        .iter()
        .map(|i| i.not_after)
        .min()
        .unwrap_or(now)
        .min(ca_not_after);
    let presented: Vec<(NameKey, String)> = infos
        .iter()
        .map(|i| {
            let serial =
                crate::revocation::normalize_serial(&i.serial).unwrap_or_else(|_| i.serial.clone());
            (name_key(&i.issuer_raw), serial)
        })
        .collect();
    let mut issuers: Vec<NameKey> = infos.iter().map(|i| name_key(&i.issuer_raw)).collect();
    issuers.sort_unstable();
    issuers.dedup();
    Ok(ChainOk {
        ca_name,
        leaf: infos.swap_remove(0),
        valid_from,
        valid_until,
        issuers,
        presented,
    })
}

/// The most useful reason a chain with candidate CAs is not admitted: it leads to an Unverified
/// CA, or only to an expired one, or it does not verify (`first_error`, webpki's refusal against
/// the usable CAs, when there were any).
fn refusal(
    paths: &PathCheck<'_>,
    candidates: &[&AnchorEntry],
    usable: &[&AnchorEntry],
    first_error: Option<webpki::Error>,
    now: i64,
) -> ChainError {
    let unverified: Vec<&AnchorEntry> =
        candidates.iter().copied().filter(|c| !c.verified).collect();
    if !unverified.is_empty() {
        if let Ok(VerifiedTo { ca_name, .. }) = paths.attempt(&unverified) {
            let subject = unverified
                .iter()
                .find(|c| c.ca_name == ca_name)
                .map(|c| c.subject.clone())
                .unwrap_or_default();
            return ChainError::Unverified { ca_name, subject };
        }
    }
    let expired: Vec<&AnchorEntry> = candidates
        .iter()
        .copied()
        .filter(|c| c.verified && c.not_after < now)
        .collect();
    if let Some(c) = expired.first() {
        if first_error.is_none() {
            return ChainError::CaExpired {
                ca_name: c.ca_name.clone(),
                subject: c.subject.clone(),
                not_after: format_time(c.not_after),
            };
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
    ChainError::Invalid {
        ca_name,
        subject,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_certs::{params, root_inter_leaf, Chain};
    use crate::trust_index::ParsedAnchor;
    use rcgen::{BasicConstraints, KeyPair};

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
}
