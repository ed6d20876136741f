//! Who is calling, and what they may do: SharedAccessSignature tokens checked against the hub's
//! shared access policies (Azure's model: `iothubowner`, `service`, `device`, `registryRead`,
//! `registryReadWrite`), rights per operation, and etag preconditions.
//!
//! Owns no state. Asks of others: the policies part for the in-memory policies
//! (`Policies::read`, `Policies::replace` when the defaults are made), the config for host names,
//! the store for audit entries.

use base64::Engine as _;
use iothub_pki::sas::SasToken;
use iothub_store::PolicyRecord;

use crate::{Hub, HubError};

pub use iothub_pki::policy::{KeySlot, Right};

/// The key that authenticated a caller: its policy, which of the two keys, and the SHA-256 of the
/// key (never the key itself), so that a later request or a long-lived stream can tell whether
/// that key still belongs to the policy (`Hub::refresh_principal`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub policy: String,
    pub slot: KeySlot,
    key_digest: [u8; 32],
}

impl Credential {
    pub(crate) fn of(policy: &PolicyRecord, slot: KeySlot) -> Credential {
        Credential {
            policy: policy.name.clone(),
            slot,
            key_digest: key_digest(policy, slot),
        }
    }
}

// The digest is derived from a secret: Debug names the policy and slot only.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({} {} key)", self.policy, self.slot.name())
    }
}

fn key_digest(policy: &PolicyRecord, slot: KeySlot) -> [u8; 32] {
    let key = match slot {
        KeySlot::Primary => &policy.primary_key,
        KeySlot::Secondary => &policy.secondary_key,
    };
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// An authenticated caller: the policy whose key signed its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The actor named in the audit log: the policy, or "portal" for a portal session.
    pub policy: String,
    pub rights: Vec<String>,
    /// The key behind this caller (a portal session: the key of the login link's maker); None for
    /// the hub itself.
    pub credential: Option<Credential>,
    /// A browser session of the portal: it never reads policy keys nor makes login links.
    pub portal: bool,
}

impl Principal {
    /// The principal for actions the hub takes itself (never returned by `authenticate`).
    pub fn system() -> Principal {
        Principal {
            policy: "system".into(),
            rights: Right::ALL.iter().map(|r| r.name().to_string()).collect(),
            credential: None,
            portal: false,
        }
    }

    /// A portal session opened from a login link that `maker` created.
    pub fn portal_session(maker: Credential, rights: Vec<String>) -> Principal {
        Principal {
            policy: "portal".into(),
            rights,
            credential: Some(maker),
            portal: true,
        }
    }

    pub fn has(&self, right: Right) -> bool {
        self.rights.iter().any(|r| r == right.name())
    }

    /// Whether the principal holds every right (Azure's `iothubowner`).
    pub fn is_owner(&self) -> bool {
        Right::ALL.iter().all(|r| self.has(*r))
    }

    /// Refuses with a precise reason unless the principal holds `right`.
    pub fn require(&self, right: Right, action: &str) -> Result<(), HubError> {
        if self.has(right) {
            Ok(())
        } else {
            Err(HubError::Forbidden {
                policy: self.policy.clone(),
                right: right.name(),
                action: action.to_string(),
            })
        }
    }
}

/// The one answer to every token that is not accepted. Telling an anonymous caller *why* (an
/// unknown policy name, a wrong signature, an expired token) would let it learn which policy
/// names exist; the precise cause is logged at debug level instead.
pub const TOKEN_REFUSED: &str = "the SharedAccessSignature token is not accepted: a token must be well formed, name one of this hub's policies (skn), be signed with one of that policy's keys for one of the hub's host names (sr) and not be expired (se); 'iothub sas-token' makes one";

/// The default policies created on first start, as Azure creates them for a new hub.
pub const DEFAULT_POLICIES: &[(&str, &[Right])] = &[
    ("iothubowner", &Right::ALL),
    ("service", &[Right::ServiceConnect]),
    ("device", &[Right::DeviceConnect]),
    ("registryRead", &[Right::RegistryRead]),
    (
        "registryReadWrite",
        &[Right::RegistryRead, Right::RegistryWrite],
    ),
];

/// An If-Match precondition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// `*`: the record must exist, any etag.
    Any,
    /// A specific etag, as the client sent it (quotes and W/ removed).
    Etag(String),
}

impl IfMatch {
    /// Parses an If-Match header value: surrounding quotes and a `W/` prefix are removed (clients
    /// differ: the management SDK sends etags raw, the service SDK quotes them, even `"*"`).
    pub fn parse(value: &str) -> Option<IfMatch> {
        let v = value.trim();
        let v = v.strip_prefix("W/").unwrap_or(v);
        let v = v
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or(v);
        match v {
            "" => None,
            "*" => Some(IfMatch::Any),
            other => Some(IfMatch::Etag(other.to_string())),
        }
    }

    /// Whether this precondition holds for a record whose etag is `current`.
    pub fn matches(&self, current: u64) -> bool {
        match self {
            IfMatch::Any => true,
            IfMatch::Etag(given) => decode_etag(given) == Some(current),
        }
    }

    pub fn shown(&self) -> String {
        match self {
            IfMatch::Any => "*".into(),
            IfMatch::Etag(e) => e.clone(),
        }
    }
}

/// Renders an etag as Azure does: base64 of a 64-bit big-endian counter, e.g. `AAAAAAAAAAE=`.
pub fn encode_etag(etag: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(etag.to_be_bytes())
}

pub fn decode_etag(text: &str) -> Option<u64> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .ok()?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

impl Hub {
    /// Authenticates an `Authorization` header value (a SharedAccessSignature token). Every
    /// refused token gets the same answer ([`TOKEN_REFUSED`]); the cause is logged at debug level.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, HubError> {
        let header = authorization.ok_or_else(|| {
            HubError::Unauthorized(
                "no Authorization header; send 'SharedAccessSignature sr=..&sig=..&se=..&skn=..' (see 'iothub sas-token')".into(),
            )
        })?;
        self.authenticate_token(header)
            .map(|(principal, _)| principal)
    }

    /// [`Hub::authenticate`] for a token handed over a connection that outlives it (AMQP's
    /// put-token): the principal and the token's expiry (Unix seconds), after which the
    /// connection must present a new token.
    pub fn authenticate_token(&self, token: &str) -> Result<(Principal, i64), HubError> {
        self.check_token(token).map_err(|cause| {
            // The cause names no secret (no signature, no key); Debug escapes what the caller sent.
            tracing::debug!(cause = ?cause, "SharedAccessSignature token refused");
            HubError::Unauthorized(TOKEN_REFUSED.into())
        })
    }

    /// The precise reason a token is refused, for the log; callers get [`TOKEN_REFUSED`].
    fn check_token(&self, header: &str) -> Result<(Principal, i64), String> {
        let token = SasToken::parse(header).map_err(|e| e.to_string())?;
        let policy_name = token
            .skn
            .clone()
            .ok_or_else(|| iothub_pki::sas::SasError::NoPolicy.to_string())?;
        let policy = self
            .policies()
            .read(|held| held.iter().find(|p| p.name == policy_name).cloned())
            .ok_or_else(|| "policy lock poisoned".to_string())?
            .ok_or_else(|| {
                format!("the token names policy '{policy_name}', which this hub does not have")
            })?;
        // A key that is not base64 (never written by the hub) matches nothing, rather than
        // standing for an empty HMAC key.
        // Event Hubs clients sign with the key's text itself, not its decoded bytes
        // (docs/azure-wire.md#amqp); their tokens name an `sb://` audience, and only those are
        // also tried that way. Both forms are computed, so timing does not tell which matched.
        let event_hubs_style = token.resource().starts_with("sb://");
        let signed_with = |k: &str| {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(k)
                .ok()
                .filter(|k| !k.is_empty())
                .is_some_and(|k| token.signed_with(&k));
            let as_text = !k.is_empty() && token.signed_with(k.as_bytes());
            decoded | (event_hubs_style & as_text)
        };
        // Both keys are always tried (no early exit), so timing does not tell which one matched.
        let primary = signed_with(&policy.primary_key);
        let secondary = signed_with(&policy.secondary_key);
        let slot = match (primary, secondary) {
            (true, _) => KeySlot::Primary,
            (false, true) => KeySlot::Secondary,
            (false, false) => {
                return Err(iothub_pki::sas::SasError::BadSignature(policy.name).to_string())
            }
        };
        if token.expiry <= self.now() {
            return Err(iothub_pki::sas::SasError::Expired {
                expired_at: iothub_pki::pop::format_time(token.expiry),
            }
            .to_string());
        }
        let resource = token.resource();
        if !self.is_hub_resource(&resource) {
            return Err(iothub_pki::sas::SasError::WrongResource {
                found: resource,
                expected: self.config().host_names.join(", "),
            }
            .to_string());
        }
        let principal = Principal {
            credential: Some(Credential::of(&policy, slot)),
            policy: policy.name,
            rights: policy.rights,
            portal: false,
        };
        Ok((principal, token.expiry))
    }

    /// `who` as it stands now: None once the key behind it was rotated or its policy deleted
    /// (tokens are stateless, so a stream or a portal session asks this on every step), else the
    /// principal with its policy's current rights. The hub itself is always current.
    pub fn refresh_principal(&self, who: &Principal) -> Option<Principal> {
        let Some(cred) = &who.credential else {
            return Some(who.clone());
        };
        self.policies()
            .read(|held| {
                let policy = held.iter().find(|p| p.name == cred.policy)?;
                let now = key_digest(policy, cred.slot);
                if !iothub_pki::pop::constant_time_eq(&now, &cred.key_digest) {
                    return None;
                }
                Some(Principal {
                    rights: policy.rights.clone(),
                    ..who.clone()
                })
            })
            .flatten()
    }

    /// Whether a policy token's `resource` names this hub: [`Hub::is_hub_host`], with a scheme
    /// and a path allowed around the host (`sb://host/iothub` is the audience of an Event Hubs
    /// reader's token; AMQP clients may sign `amqps://host/...`): the policy's rights, not the
    /// path, decide what the token may do.
    fn is_hub_resource(&self, resource: &str) -> bool {
        let without_scheme = resource
            .split_once("://")
            .map_or(resource, |(_, rest)| rest);
        self.is_hub_host(without_scheme.split('/').next().unwrap_or_default())
    }

    /// Whether `resource` names this hub: one of its host names, with or without a port,
    /// compared without regard to case.
    pub(crate) fn is_hub_host(&self, resource: &str) -> bool {
        let host = strip_port(resource);
        self.config()
            .host_names
            .iter()
            .any(|h| strip_port(h).eq_ignore_ascii_case(host))
    }

    /// Creates the default policies that do not exist yet, with fresh random keys. Returns the
    /// owner policy when it was created now (so that its connection string can be shown once).
    pub fn ensure_default_policies(&self) -> Result<Option<PolicyRecord>, HubError> {
        let mut created_owner = None;
        for (name, rights) in DEFAULT_POLICIES {
            let key = || {
                iothub_pki::sas::generate_key()
                    .map_err(|_| HubError::Internal("the system random source failed".into()))
            };
            let policy = PolicyRecord {
                name: name.to_string(),
                primary_key: key()?,
                secondary_key: key()?,
                rights: rights.iter().map(|r| r.name().to_string()).collect(),
            };
            if self.store().insert_policy_if_absent(&policy)? && *name == "iothubowner" {
                created_owner = Some(policy);
            }
        }
        self.policies().replace(self.store().list_policies()?)?;
        Ok(created_owner)
    }

    /// Refuses with a precise reason unless `who` holds `right`; every refusal is audited (an
    /// identified credential tried something it may not do), reads included.
    pub fn authorize(
        &self,
        who: &Principal,
        right: Right,
        action: &str,
        target: &str,
    ) -> Result<(), HubError> {
        match who.require(right, action) {
            Ok(()) => Ok(()),
            Err(e) => self.refuse(who, "authorization", target, e),
        }
    }

    /// Audits a refusal decided by an adapter before the service call (a malformed or oversized
    /// request body), so that every refused operation by an identified caller is on record.
    pub fn audit_refusal(
        &self,
        who: &Principal,
        action: &str,
        target: &str,
        code: u32,
        message: &str,
    ) {
        let mut entry = self.audit_entry(who, action, target, &Ok(message.to_string()));
        entry.success = false;
        entry.code = Some(code.to_string());
        if let Err(e) = self.store().append_audit(&entry) {
            tracing::error!(error = %e, "could not write an audit entry for a refusal");
        }
    }
}

fn strip_port(host: &str) -> &str {
    // "[::1]:8443" -> "::1"; "::1" stays; "localhost:8443" -> "localhost".
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_forms() {
        assert_eq!(IfMatch::parse("\"*\""), Some(IfMatch::Any));
        assert_eq!(IfMatch::parse("*"), Some(IfMatch::Any));
        assert_eq!(
            IfMatch::parse("W/\"AAAAAAAAAAE=\""),
            Some(IfMatch::Etag("AAAAAAAAAAE=".into()))
        );
        assert_eq!(IfMatch::parse("  "), None);
        assert!(IfMatch::parse("AAAAAAAAAAE=").unwrap().matches(1));
        assert!(!IfMatch::parse("AAAAAAAAAAI=").unwrap().matches(1));
        assert!(!IfMatch::parse("garbage").unwrap().matches(1));
    }

    #[test]
    fn etag_round_trip() {
        for v in [0u64, 1, 255, u64::MAX] {
            assert_eq!(decode_etag(&encode_etag(v)), Some(v));
        }
        assert_eq!(encode_etag(1), "AAAAAAAAAAE=");
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("localhost:8443"), "localhost");
        assert_eq!(strip_port("localhost"), "localhost");
        assert_eq!(strip_port("[::1]:8443"), "::1");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("127.0.0.1:1"), "127.0.0.1");
    }
}
