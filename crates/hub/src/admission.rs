//! One CONNECT, one call: [`Hub::admit`] judges a device's CONNECT and registers its session, or
//! records and returns precisely why not.
//!
//! Why one call: admission is a small protocol. A ticket (the device and trust generations) is
//! taken before the judgement; the session is registered; if a device or trust change landed in
//! between, the new session is re-checked, because that change looked for it before it existed;
//! a refusal is counted against the address and recorded before the device hears CONNACK 5. Its
//! correctness must not depend on an adapter calling four methods in the right order, so the
//! gateway makes this one call and carries bytes.
//!
//! The judgement itself lives here too ([`Hub::authenticate_device`]: names, record, then the
//! rule of the device's authentication type). Owns no state. Asks of others: the device cache
//! for the record (the store on a miss, remembered under the cache's generation rule), trust to
//! validate a CA chain, sessions to take the ticket, register the session and count refusals.

use std::net::SocketAddr;

use base64::Engine as _;
use iothub_pki::chain::ChainError;
use iothub_pki::device_id::{validate_device_id, DeviceIdError};
use iothub_pki::sas::{SasError, SasToken};
use iothub_pki::CertInfo;
use iothub_store::AuthType;

use crate::device_cache::ConnectRecord;
use crate::devices::DeviceAuth;
use crate::metrics::RefusalClass;
use crate::sessions::{Admission, AuthMethod, ConnectRequest};
use crate::Hub;

/// Why a CONNECT was refused. Its `Display` is the precise reason the device's record, the log
/// and `iothub connections` show (escaped where it carries peer text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The client id has the `{device}/{module}` form.
    ModuleClientId {
        client_id: String,
    },
    /// The client id is not a valid device id.
    ClientIdInvalid(DeviceIdError),
    /// No username was sent.
    NoUsername {
        client_id: String,
    },
    /// The username's host is not one of the hub's names.
    ForeignHost {
        host: String,
        hub_names: Vec<String>,
        client_id: String,
    },
    /// The username names another device than the client id.
    UsernameNamesOtherDevice {
        named: String,
        client_id: String,
    },
    /// The username is not `{host}/{id}/...`.
    UsernameMalformed {
        username: String,
        client_id: String,
    },
    /// The device's record could not be read.
    RegistryUnavailable(String),
    NotRegistered {
        device_id: String,
    },
    /// An unknown device of a CA whose auto-registration reached its device limit.
    AutoRegisterLimit {
        ca_name: String,
        limit: u64,
        device_id: String,
    },
    Disabled {
        device_id: String,
    },
    /// A certificate-authenticated device presented no client certificate.
    NoClientCertificate {
        device_id: String,
        auth_type: AuthType,
    },
    /// The presented chain does not end at a Verified CA (or is otherwise invalid).
    Chain(ChainError),
    /// The leaf's only CN is not the client id.
    LeafCnMismatch {
        cn: String,
        client_id: String,
    },
    LeafWithoutCn {
        client_id: String,
    },
    LeafCnCount {
        count: usize,
        client_id: String,
    },
    /// A selfSigned device's certificate cannot be parsed.
    CertificateUnreadable(String),
    ThumbprintMismatch {
        thumbprint: String,
        device_id: String,
    },
    /// A selfSigned device's certificate is outside its validity period.
    CertificateNotValidNow {
        not_before: i64,
        not_after: i64,
    },
    NoSasToken {
        device_id: String,
    },
    PasswordNotText,
    /// The SAS token is malformed, unsigned by the device's keys or expired.
    SasToken(SasError),
    /// The SAS token is for another resource than this hub's `{host}/devices/{id}`.
    SasResource {
        resource: String,
        device_id: String,
    },
    /// The device's stored authentication type is none a device can connect with.
    AuthTypeCannotConnect {
        device_id: String,
        auth_type: AuthType,
    },
    /// The judgement itself failed (a blocking task panicked or was cancelled).
    Internal(String),
    /// A provisioning client's username is not `{idScope}/registrations/{id}/api-version=...`.
    ProvisioningUsername {
        username: String,
        client_id: String,
    },
    /// A provisioning client named an ID scope that is not this hub's.
    ForeignIdScope {
        id_scope: String,
        client_id: String,
    },
    /// A provisioning client's username names another registration id than its client id.
    ProvisioningClientId {
        named: String,
        client_id: String,
    },
    /// A provisioning client presented no certificate (X.509 attestation needs one).
    ProvisioningNoCertificate {
        registration_id: String,
    },
}

/// The reason of [`Refusal::CertificateNotValidNow`].
fn not_valid_now(not_before: i64, not_after: i64) -> String {
    format!(
        "the client certificate is valid from {} to {}, not now",
        iothub_pki::pop::format_time(not_before),
        iothub_pki::pop::format_time(not_after)
    )
}

/// The reason of [`Refusal::AutoRegisterLimit`]: what happened and how to go on.
fn auto_register_limit(ca_name: &str, limit: u64, device_id: &str) -> String {
    format!(
        "device '{device_id}' is not registered, and auto-registration through '{ca_name}' reached its limit of {limit} devices; raise it (iothub cert update {ca_name} --auto-register-limit N) or register the device"
    )
}

/// How refusals write the hub's host in the username they expected.
const USERNAME: &str = "{hub host}";

/// The reason of a device's refusal for its username.
fn username_reason(refusal: &Refusal) -> String {
    match refusal {
        Refusal::NoUsername { client_id } => {
            format!("no username; expected '{USERNAME}/{client_id}/?api-version=...'")
        }
        Refusal::ForeignHost {
            host,
            hub_names,
            client_id,
        } => format!(
            "the username names host '{host}', which is not this hub (expected one of: {}); expected '{USERNAME}/{client_id}/?api-version=...'",
            hub_names.join(", ")
        ),
        Refusal::UsernameNamesOtherDevice { named, client_id } => format!(
            "the username names device '{named}' but the client id is '{client_id}'; expected '{USERNAME}/{client_id}/?api-version=...'"
        ),
        Refusal::UsernameMalformed {
            username,
            client_id,
        } => format!("username '{username}' is not '{USERNAME}/{client_id}/?api-version=...'"),
        _ => String::new(),
    }
}

/// The reason of a provisioning client's refusal at CONNECT.
fn provisioning_reason(refusal: &Refusal) -> String {
    match refusal {
        Refusal::ProvisioningUsername { username, client_id } => format!(
            "provisioning username '{username}' is not '{{idScope}}/registrations/{client_id}/api-version=...'"
        ),
        Refusal::ForeignIdScope { id_scope, client_id } => format!(
            "provisioning client '{client_id}' names ID scope '{id_scope}', which is not this hub's (iothub dps id-scope prints it)"
        ),
        Refusal::ProvisioningClientId { named, client_id } => format!(
            "the provisioning username names registration '{named}' but the client id is '{client_id}'; they must be the same"
        ),
        Refusal::ProvisioningNoCertificate { registration_id } => format!(
            "provisioning client '{registration_id}' presented no client certificate; registration needs an X.509 certificate whose CN is the registration id"
        ),
        _ => String::new(),
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::ModuleClientId { client_id } => write!(
                f,
                "client id '{client_id}' names a module; modules are not supported yet"
            ),
            Refusal::ClientIdInvalid(e) => write!(f, "client id: {e}"),
            Refusal::NoUsername { .. }
            | Refusal::ForeignHost { .. }
            | Refusal::UsernameNamesOtherDevice { .. }
            | Refusal::UsernameMalformed { .. } => f.write_str(&username_reason(self)),
            Refusal::RegistryUnavailable(e) => write!(f, "the registry is unavailable: {e}"),
            Refusal::NotRegistered { device_id } => {
                write!(f, "device '{device_id}' is not registered")
            }
            Refusal::AutoRegisterLimit {
                ca_name,
                limit,
                device_id,
            } => f.write_str(&auto_register_limit(ca_name, *limit, device_id)),
            Refusal::Disabled { device_id } => write!(f, "device '{device_id}' is disabled"),
            Refusal::NoClientCertificate {
                device_id,
                auth_type,
            } => write!(
                f,
                "device '{device_id}' authenticates with {auth_type} but presented no client certificate"
            ),
            Refusal::Chain(e) => write!(f, "{e}"),
            Refusal::LeafCnMismatch { cn, client_id } => {
                write!(f, "leaf CN '{cn}' is not the client id '{client_id}'")
            }
            Refusal::LeafWithoutCn { client_id } => write!(
                f,
                "the leaf certificate has no CN; expected CN '{client_id}'"
            ),
            Refusal::LeafCnCount { count, client_id } => write!(
                f,
                "the leaf certificate has {count} CNs; expected exactly one, '{client_id}'"
            ),
            Refusal::CertificateUnreadable(e) => {
                write!(f, "the client certificate cannot be read: {e}")
            }
            Refusal::ThumbprintMismatch {
                thumbprint,
                device_id,
            } => write!(
                f,
                "the client certificate's thumbprint {thumbprint} matches neither registered thumbprint of device '{device_id}'"
            ),
            Refusal::CertificateNotValidNow {
                not_before,
                not_after,
            } => f.write_str(&not_valid_now(*not_before, *not_after)),
            Refusal::NoSasToken { device_id } => write!(
                f,
                "device '{device_id}' authenticates with sas but sent no SAS token as its password"
            ),
            Refusal::PasswordNotText => f.write_str("the password is not UTF-8 text"),
            Refusal::SasToken(e) => write!(f, "{e}"),
            Refusal::SasResource {
                resource,
                device_id,
            } => write!(
                f,
                "the SAS token is for '{resource}', expected '{USERNAME}/devices/{device_id}'"
            ),
            Refusal::AuthTypeCannotConnect {
                device_id,
                auth_type,
            } => write!(
                f,
                "device '{device_id}' has authentication type '{auth_type}', which cannot connect"
            ),
            Refusal::Internal(e) => write!(f, "authentication task failed: {e}"),
            Refusal::ProvisioningUsername { .. }
            | Refusal::ForeignIdScope { .. }
            | Refusal::ProvisioningClientId { .. }
            | Refusal::ProvisioningNoCertificate { .. } => f.write_str(&provisioning_reason(self)),
        }
    }
}

impl std::error::Error for Refusal {}

impl Refusal {
    /// The reason class `/metrics` counts this refusal under. Exhaustive on purpose: a new
    /// variant does not compile until someone decides its class.
    pub fn class(&self) -> RefusalClass {
        use RefusalClass as C;
        match self {
            Refusal::ForeignHost { .. } | Refusal::ForeignIdScope { .. } => C::ForeignHost,
            Refusal::NotRegistered { .. } | Refusal::AutoRegisterLimit { .. } => C::UnknownDevice,
            Refusal::Disabled { .. } => C::Disabled,
            Refusal::Chain(e) => match e {
                ChainError::UnknownIssuer { .. } | ChainError::Unverified { .. } => C::UnverifiedCa,
                ChainError::CaExpired { .. } => C::Expired,
                ChainError::Revoked(_) => C::Revoked,
                ChainError::LeafCommonNameNotText { .. } => C::CnMismatch,
                ChainError::NoCertificate
                | ChainError::TooLong { .. }
                | ChainError::Unparsable(_)
                | ChainError::Invalid { .. } => C::BadCredentials,
            },
            Refusal::LeafCnMismatch { .. }
            | Refusal::LeafWithoutCn { .. }
            | Refusal::LeafCnCount { .. } => C::CnMismatch,
            Refusal::CertificateNotValidNow { .. }
            | Refusal::SasToken(SasError::Expired { .. }) => C::Expired,
            Refusal::NoClientCertificate { .. }
            | Refusal::CertificateUnreadable(_)
            | Refusal::ThumbprintMismatch { .. }
            | Refusal::NoSasToken { .. }
            | Refusal::PasswordNotText
            | Refusal::SasToken(_)
            | Refusal::SasResource { .. }
            | Refusal::UsernameNamesOtherDevice { .. }
            | Refusal::ProvisioningClientId { .. }
            | Refusal::ProvisioningNoCertificate { .. } => C::BadCredentials,
            Refusal::ModuleClientId { .. }
            | Refusal::ClientIdInvalid(_)
            | Refusal::NoUsername { .. }
            | Refusal::UsernameMalformed { .. }
            | Refusal::RegistryUnavailable(_)
            | Refusal::AuthTypeCannotConnect { .. }
            | Refusal::Internal(_)
            | Refusal::ProvisioningUsername { .. } => C::Other,
        }
    }
}

impl Hub {
    /// Judges a CONNECT and, if admitted, registers its session (closing an older session of the
    /// same device); if refused, counts the refusal against `peer`'s address and records it
    /// before returning, so the caller only answers CONNACK 5.
    ///
    /// A device whose record is in memory is judged in the caller's task (chain checks are CPU
    /// work, like the TLS handshake before them); otherwise one trip to the blocking pool reads
    /// the store. A session registered across a device or trust change is re-checked on the
    /// blocking pool; a refusal then arrives as a `Close` signal.
    pub async fn admit(
        &self,
        req: ConnectRequest,
        peer: SocketAddr,
        clean_session: bool,
    ) -> Result<Admission, Refusal> {
        let ticket = self.connect_ticket();
        let (req, verdict) = match self.authenticate_device_from_memory(&req) {
            Some(verdict) => (req, verdict),
            None => {
                let hub = self.clone();
                let client_id = req.client_id.clone();
                match tokio::task::spawn_blocking(move || {
                    let verdict = hub.authenticate_device(&req);
                    (req, verdict)
                })
                .await
                {
                    Ok(judged) => judged,
                    Err(e) => {
                        let refusal = Refusal::Internal(e.to_string());
                        self.metrics().connect_refused(refusal.class());
                        self.refuse_connection(&client_id, peer, &refusal.to_string());
                        return Err(refusal);
                    }
                }
            }
        };
        let method = match verdict {
            Ok(method) => method,
            Err(refusal) => {
                // Counted before the answer: the device's next connection meets the budget.
                self.metrics().connect_refused(refusal.class());
                self.refuse_connection(&req.client_id, peer, &refusal.to_string());
                return Err(refusal);
            }
        };
        let admission = self.open_session(&req, method, clean_session, ticket);
        self.metrics().connect_accepted();
        if admission.recheck {
            let (hub, id) = (self.clone(), admission.device_id.clone());
            tokio::task::spawn_blocking(move || hub.revalidate_device_sessions(&id));
        }
        Ok(admission)
    }
}

fn username_device(username: &str) -> Option<(&str, &str)> {
    // "{host}/{deviceId}/?api-version=..." (host may carry a port).
    let mut parts = username.splitn(3, '/');
    let host = parts.next()?;
    let device = parts.next()?;
    Some((host, device))
}

/// A selfSigned device: its certificate's thumbprint is one it registered, and the certificate is
/// inside its validity period.
fn judge_self_signed(
    req: &ConnectRequest,
    primary: &str,
    secondary: Option<&str>,
    now: i64,
) -> Result<AuthMethod, Refusal> {
    let id = req.client_id.as_str();
    let leaf = req
        .chain
        .first()
        .ok_or_else(|| Refusal::NoClientCertificate {
            device_id: id.to_string(),
            auth_type: AuthType::SelfSigned,
        })?;
    let info =
        CertInfo::from_der(leaf).map_err(|e| Refusal::CertificateUnreadable(e.to_string()))?;
    let matches = |t: &str| t == info.thumbprint_sha1 || t == info.thumbprint_sha256;
    if !(matches(primary) || secondary.is_some_and(matches)) {
        return Err(Refusal::ThumbprintMismatch {
            thumbprint: info.thumbprint_sha1,
            device_id: id.to_string(),
        });
    }
    if !info.is_valid_at(now) {
        return Err(Refusal::CertificateNotValidNow {
            not_before: info.not_before,
            not_after: info.not_after,
        });
    }
    Ok(AuthMethod::SelfSigned {
        thumbprint: info.thumbprint_sha1,
        not_after: info.not_after,
    })
}

impl Hub {
    /// Decides whether a CONNECT is admitted (a step of [`Hub::admit`], public for the tests that
    /// interleave a change between the steps). Every refusal carries the precise reason.
    pub fn authenticate_device(&self, req: &ConnectRequest) -> Result<AuthMethod, Refusal> {
        self.check_connect_names(req)?;
        let id = req.client_id.as_str();
        let device = match self.device_cache().get(id) {
            Some(device) => device,
            None => {
                let generation = self.device_cache().generation();
                let record = self
                    .store()
                    .get_device(id)
                    .map_err(|e| Refusal::RegistryUnavailable(e.to_string()))?;
                match record {
                    Some(record) => self.device_cache().remember(generation, &record),
                    None => return self.admit_unregistered(req),
                }
            }
        };
        self.judge_connect(req, &device)
    }

    /// [`Hub::authenticate_device`] without touching the store, for callers that must not
    /// block (the gateway's async tasks): None when the device's record is not in memory, and
    /// the caller should then run `authenticate_device` on a blocking thread.
    pub fn authenticate_device_from_memory(
        &self,
        req: &ConnectRequest,
    ) -> Option<Result<AuthMethod, Refusal>> {
        if let Err(reason) = self.check_connect_names(req) {
            return Some(Err(reason));
        }
        let device = self.device_cache().lookup(&req.client_id)?;
        Some(self.judge_connect(req, &device))
    }

    /// The client id and username rules of CONNECT, which need no record. The username is
    /// `{host}/{id}/?api-version=...` as the Azure device SDKs form it; the host must be one of the
    /// hub's names (as for SAS tokens), so a device configured for another hub is told so.
    fn check_connect_names(&self, req: &ConnectRequest) -> Result<(), Refusal> {
        let id = req.client_id.as_str();
        if id.contains('/') {
            return Err(Refusal::ModuleClientId {
                client_id: id.to_string(),
            });
        }
        validate_device_id(id).map_err(Refusal::ClientIdInvalid)?;
        let client_id = || id.to_string();
        match req.username.as_deref() {
            None => Err(Refusal::NoUsername {
                client_id: client_id(),
            }),
            Some(u) => match username_device(u) {
                Some((host, dev)) if dev == id => {
                    if self.is_hub_host(host) {
                        Ok(())
                    } else {
                        Err(Refusal::ForeignHost {
                            host: host.to_string(),
                            hub_names: self.config().host_names.clone(),
                            client_id: client_id(),
                        })
                    }
                }
                Some((_, dev)) => Err(Refusal::UsernameNamesOtherDevice {
                    named: dev.to_string(),
                    client_id: client_id(),
                }),
                None => Err(Refusal::UsernameMalformed {
                    username: u.to_string(),
                    client_id: client_id(),
                }),
            },
        }
    }

    /// The verdict on a CONNECT whose names passed, given the device's record.
    fn judge_connect(
        &self,
        req: &ConnectRequest,
        device: &ConnectRecord,
    ) -> Result<AuthMethod, Refusal> {
        let id = req.client_id.as_str();
        if !device.enabled {
            return Err(Refusal::Disabled {
                device_id: id.to_string(),
            });
        }
        let now = self.now();
        match &device.auth {
            Some(DeviceAuth::CertificateAuthority) => self.judge_ca_chain(req, now),
            Some(DeviceAuth::SelfSigned { primary, secondary }) => {
                judge_self_signed(req, primary, secondary.as_deref(), now)
            }
            Some(DeviceAuth::Sas { primary, secondary }) => {
                self.judge_sas_token(req, [primary, secondary], now)
            }
            None => Err(Refusal::AuthTypeCannotConnect {
                device_id: id.to_string(),
                auth_type: device.auth_type,
            }),
        }
    }

    /// A certificateAuthority device: its chain ends at a Verified CA and its leaf's only CN is
    /// its id.
    pub(crate) fn judge_ca_chain(
        &self,
        req: &ConnectRequest,
        now: i64,
    ) -> Result<AuthMethod, Refusal> {
        let id = req.client_id.as_str();
        if req.chain.is_empty() {
            return Err(Refusal::NoClientCertificate {
                device_id: id.to_string(),
                auth_type: AuthType::CertificateAuthority,
            });
        }
        let ok = self
            .validate_device_chain(&req.chain, now)
            .map_err(Refusal::Chain)?;
        match ok.leaf_common_names.as_slice() {
            [cn] if cn == id => Ok(AuthMethod::Ca {
                ca_name: ok.ca_name,
                issuers: ok.issuers,
                not_after: ok.leaf_not_after,
            }),
            [cn] => Err(Refusal::LeafCnMismatch {
                cn: cn.clone(),
                client_id: id.to_string(),
            }),
            [] => Err(Refusal::LeafWithoutCn {
                client_id: id.to_string(),
            }),
            many => Err(Refusal::LeafCnCount {
                count: many.len(),
                client_id: id.to_string(),
            }),
        }
    }

    /// A sas device: a token signed with one of its keys, unexpired, for this hub's
    /// `{host}/devices/{id}`.
    fn judge_sas_token(
        &self,
        req: &ConnectRequest,
        keys: [&String; 2],
        now: i64,
    ) -> Result<AuthMethod, Refusal> {
        let id = req.client_id.as_str();
        let password = req.password.as_deref().ok_or_else(|| Refusal::NoSasToken {
            device_id: id.to_string(),
        })?;
        let text = std::str::from_utf8(password).map_err(|_| Refusal::PasswordNotText)?;
        let token = SasToken::parse(text).map_err(Refusal::SasToken)?;
        let keys: Vec<Vec<u8>> = keys
            .iter()
            .filter_map(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
            .collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        token
            .check_device(id, &refs, now)
            .map_err(Refusal::SasToken)?;
        let resource = token.resource();
        let expected_suffix = format!("/devices/{id}");
        let host_ok = resource
            .strip_suffix(&expected_suffix)
            .is_some_and(|host| self.is_hub_host(host));
        if !host_ok {
            return Err(Refusal::SasResource {
                resource,
                device_id: id.to_string(),
            });
        }
        Ok(AuthMethod::Sas)
    }
}
