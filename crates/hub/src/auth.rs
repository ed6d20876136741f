//! Who is calling, and what they may do: SharedAccessSignature tokens checked against the hub's
//! shared access policies (Azure's model: `iothubowner`, `service`, `device`, `registryRead`,
//! `registryReadWrite`), rights per operation, and etag preconditions.

use base64::Engine as _;
use iothub_pki::sas::SasToken;
use iothub_store::PolicyRecord;

use crate::{Hub, HubError};

/// A right a policy grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    RegistryRead,
    RegistryWrite,
    ServiceConnect,
    DeviceConnect,
}

impl Right {
    pub const ALL: [Right; 4] = [
        Right::RegistryRead,
        Right::RegistryWrite,
        Right::ServiceConnect,
        Right::DeviceConnect,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Right::RegistryRead => "RegistryRead",
            Right::RegistryWrite => "RegistryWrite",
            Right::ServiceConnect => "ServiceConnect",
            Right::DeviceConnect => "DeviceConnect",
        }
    }
}

/// An authenticated caller: the policy whose key signed its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub policy: String,
    pub rights: Vec<String>,
}

impl Principal {
    /// The principal for actions the hub takes itself (never returned by `authenticate`).
    pub fn system() -> Principal {
        Principal {
            policy: "system".into(),
            rights: Right::ALL.iter().map(|r| r.name().to_string()).collect(),
        }
    }

    pub fn has(&self, right: Right) -> bool {
        self.rights.iter().any(|r| r == right.name())
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
    /// Authenticates an `Authorization` header value (a SharedAccessSignature token).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, HubError> {
        let header = authorization.ok_or_else(|| {
            HubError::Unauthorized(
                "no Authorization header; send 'SharedAccessSignature sr=..&sig=..&se=..&skn=..' (see 'iothub sas-token')".into(),
            )
        })?;
        let token = SasToken::parse(header)?;
        let policy_name = token
            .skn
            .clone()
            .ok_or(iothub_pki::sas::SasError::NoPolicy)?;
        let policy = self
            .policies
            .read()
            .map_err(|_| HubError::Internal("policy lock poisoned".into()))?
            .iter()
            .find(|p| p.name == policy_name)
            .cloned()
            .ok_or_else(|| {
                HubError::Unauthorized(format!(
                    "the token names policy '{policy_name}', which this hub does not have"
                ))
            })?;
        let keys: Vec<Vec<u8>> = [&policy.primary_key, &policy.secondary_key]
            .iter()
            .filter_map(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
            .collect();
        let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        token.check(&policy.name, &key_refs, self.now())?;
        let resource = token.resource();
        if !self.is_hub_host(&resource) {
            return Err(HubError::Unauthorized(
                iothub_pki::sas::SasError::WrongResource {
                    found: resource,
                    expected: self.config.host_names.join(", "),
                }
                .to_string(),
            ));
        }
        Ok(Principal {
            policy: policy.name,
            rights: policy.rights,
        })
    }

    /// Whether `resource` names this hub: one of its host names, with or without a port,
    /// compared without regard to case.
    pub(crate) fn is_hub_host(&self, resource: &str) -> bool {
        let host = strip_port(resource);
        self.config
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
            if self.store.insert_policy_if_absent(&policy)? && *name == "iothubowner" {
                created_owner = Some(policy);
            }
        }
        *self
            .policies
            .write()
            .map_err(|_| HubError::Internal("policy lock poisoned".into()))? =
            self.store.list_policies()?;
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
        if let Err(e) = self.store.append_audit(&entry) {
            tracing::error!(error = %e, "could not write an audit entry for a refusal");
        }
    }

    /// The policies without their keys.
    pub fn list_policies(&self, who: &Principal) -> Result<Vec<(String, Vec<String>)>, HubError> {
        self.authorize(
            who,
            Right::RegistryRead,
            "list shared access policies",
            "policies",
        )?;
        Ok(self
            .policies
            .read()
            .map_err(|_| HubError::Internal("policy lock poisoned".into()))?
            .iter()
            .map(|p| (p.name.clone(), p.rights.clone()))
            .collect())
    }

    /// A policy with its keys; only a caller holding every right (an owner) may read keys.
    pub fn policy_keys(&self, who: &Principal, name: &str) -> Result<PolicyRecord, HubError> {
        for right in Right::ALL {
            self.authorize(
                who,
                right,
                "read shared access policy keys",
                &format!("policy/{name}"),
            )?;
        }
        self.policies
            .read()
            .map_err(|_| HubError::Internal("policy lock poisoned".into()))?
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| HubError::PolicyNotFound(name.to_string()))
    }

    /// The owner policy (for the local connection string); the hub reads it itself.
    pub fn owner_policy(&self) -> Result<PolicyRecord, HubError> {
        self.policy_keys(&Principal::system(), "iothubowner")
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
