//! The provisioning service, device side: what the Azure device SDK's `ProvisioningDeviceClient`
//! gets when it connects to the hub's MQTT port with its certificate and asks to be registered.
//!
//! Why its own module: a provisioning client is not a device yet. It is admitted on structure
//! only (this hub's ID scope, client id = registration id, a certificate presented); the
//! judgement comes with its register request, which answers with the precise reason or assigns
//! it a device: an individual enrollment whose certificate it presents, or else the enrollment
//! group bound to the Verified CA its chain ends at (the same chain, CN and revocation rules as
//! CONNECT). The device, its initial twin, the registration and the audit entry are written in
//! one store transaction; re-registering keeps the device and its twin. The answer to register
//! is `assigning` with an operation id, and the poll that follows reads the registration back, as
//! the real service does.
//!
//! Owns: the ID scope once read (`Provisioning`). Asks of others: the store, trust (the chain
//! verdict), sessions (refusals counted like a device's), `twins` (the initial twin), the audit
//! log.

use std::net::SocketAddr;
use std::sync::OnceLock;

use iothub_pki::cert::CertInfo;
use iothub_store::{AuthType, EnrollmentKind, EnrollmentRecord, RegistrationRecord, StoreError};
use serde_json::json;

use crate::admission::Refusal;
use crate::auth::{encode_etag, Principal};
use crate::enrollments::kind_name;
use crate::sessions::{AuthMethod, ConnectRequest};
use crate::twins::initial_twin_record;
use crate::{Hub, HubError};

/// The provisioning part: the ID scope, read once.
#[derive(Default)]
pub(crate) struct Provisioning {
    id_scope: OnceLock<String>,
}

/// What a provisioning client's CONNECT username says (the gateway parses it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisioningHello {
    pub id_scope: String,
    pub registration_id: String,
}

/// An admitted provisioning client: who it says it is, and the chain it presented.
#[derive(Debug, Clone)]
pub struct ProvisioningClient {
    pub registration_id: String,
    chain: Vec<Vec<u8>>,
    peer: SocketAddr,
}

/// The answer to one provisioning request: the status and JSON body to publish, the
/// `retry-after` to add, and whether the connection ends after it (a refusal ends it, so every
/// refused attempt costs a new connection and counts against the address's refusal budget).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisioningAnswer {
    pub status: u16,
    pub body: Vec<u8>,
    pub retry_after: Option<u32>,
    pub ends: bool,
}

/// Seconds a client is told to wait before it polls (the SDK's first poll waits 2 s anyway).
const RETRY_AFTER_SECS: u32 = 1;

/// The enrollment a registration goes through, and the device it makes.
struct Assignment {
    enrollment: EnrollmentRecord,
    auth_type: AuthType,
    thumbprint: Option<String>,
    ca_name: Option<String>,
}

fn target(registration_id: &str) -> String {
    format!("registration/{registration_id}")
}

impl ProvisioningAnswer {
    fn refused(e: &HubError) -> ProvisioningAnswer {
        let code = e.code();
        ProvisioningAnswer {
            status: code.status,
            body: json!({
                "errorCode": code.number,
                "errorName": code.name,
                "message": e.to_string(),
            })
            .to_string()
            .into_bytes(),
            retry_after: None,
            ends: true,
        }
    }
}

impl Hub {
    /// The ID scope, read from the store once per process (it never changes while serving).
    fn cached_id_scope(&self) -> Result<String, HubError> {
        if let Some(scope) = self.provisioning_part().id_scope.get() {
            return Ok(scope.clone());
        }
        let scope = self.id_scope()?;
        Ok(self
            .provisioning_part()
            .id_scope
            .get_or_init(|| scope)
            .clone())
    }

    /// Admits a provisioning client on structure: `hello` (the parsed username, or why it could
    /// not be parsed) names this hub's ID scope and the client id, which is a valid device id,
    /// and a certificate was presented. A refusal is counted and recorded like a device's
    /// before it is returned (the caller answers CONNACK 5).
    pub fn admit_provisioning(
        &self,
        hello: Result<ProvisioningHello, String>,
        req: ConnectRequest,
        peer: SocketAddr,
    ) -> Result<ProvisioningClient, Refusal> {
        let judged = self.judge_provisioning_connect(hello, &req);
        if let Err(refusal) = &judged {
            self.metrics().connect_refused(refusal.class());
            self.refuse_connection(&req.client_id, peer, &refusal.to_string());
        }
        judged?;
        Ok(ProvisioningClient {
            registration_id: req.client_id,
            chain: req.chain,
            peer,
        })
    }

    fn judge_provisioning_connect(
        &self,
        hello: Result<ProvisioningHello, String>,
        req: &ConnectRequest,
    ) -> Result<(), Refusal> {
        let client_id = req.client_id.clone();
        iothub_pki::device_id::validate_device_id(&client_id).map_err(Refusal::ClientIdInvalid)?;
        let hello = hello.map_err(|username| Refusal::ProvisioningUsername {
            username,
            client_id: client_id.clone(),
        })?;
        let scope = self
            .cached_id_scope()
            .map_err(|e| Refusal::RegistryUnavailable(e.to_string()))?;
        if hello.id_scope != scope {
            return Err(Refusal::ForeignIdScope {
                id_scope: hello.id_scope,
                client_id,
            });
        }
        if hello.registration_id != client_id {
            return Err(Refusal::ProvisioningClientId {
                named: hello.registration_id,
                client_id,
            });
        }
        if req.chain.is_empty() {
            return Err(Refusal::ProvisioningNoCertificate {
                registration_id: client_id,
            });
        }
        Ok(())
    }

    /// A request the gateway could not read (its reason): answered 400, recorded, and the
    /// connection ends.
    pub fn provisioning_request_invalid(
        &self,
        client: &ProvisioningClient,
        reason: &str,
    ) -> ProvisioningAnswer {
        let e =
            HubError::ProvisioningRequestInvalid(crate::peer_text::escaped(reason).into_owned());
        self.provisioning_refused(client, e)
    }

    fn provisioning_refused(&self, client: &ProvisioningClient, e: HubError) -> ProvisioningAnswer {
        let answer = ProvisioningAnswer::refused(&e);
        let id = &client.registration_id;
        self.refuse_connection(id, client.peer, &format!("registration refused: {e}"));
        let _ = self.refuse::<()>(&device_principal(id), "device.provision", &target(id), e);
        answer
    }

    /// A register request (`registration_id` from its body): assigns the client a device
    /// through its enrollment, or answers why not.
    pub fn register_provisioning_client(
        &self,
        client: &ProvisioningClient,
        registration_id: &str,
    ) -> ProvisioningAnswer {
        match self.register(client, registration_id) {
            Ok(record) => ProvisioningAnswer {
                status: 202,
                body: json!({ "operationId": record.operation_id, "status": "assigning" })
                    .to_string()
                    .into_bytes(),
                retry_after: Some(RETRY_AFTER_SECS),
                ends: false,
            },
            Err(e) => self.provisioning_refused(client, e),
        }
    }

    /// An operation-status poll: the registration that operation made.
    pub fn provisioning_operation_status(
        &self,
        client: &ProvisioningClient,
        operation_id: &str,
    ) -> ProvisioningAnswer {
        let id = &client.registration_id;
        let found = self
            .store()
            .get_registration(id)
            .map_err(HubError::from)
            .and_then(|r| {
                r.filter(|r| r.operation_id == operation_id).ok_or_else(|| {
                    HubError::RegistrationNotFound(format!(
                        "registration '{id}' has no operation '{operation_id}'; register again"
                    ))
                })
            });
        match found {
            Ok(record) => ProvisioningAnswer {
                status: 200,
                body: self.assigned_body(&record).to_string().into_bytes(),
                retry_after: None,
                ends: false,
            },
            Err(e) => ProvisioningAnswer::refused(&e),
        }
    }

    fn assigned_body(&self, r: &RegistrationRecord) -> serde_json::Value {
        let time = iothub_pki::pop::format_time;
        let hub = self
            .config()
            .host_names
            .first()
            .cloned()
            .unwrap_or_default();
        json!({
            "operationId": r.operation_id,
            "status": "assigned",
            "registrationState": {
                "registrationId": r.registration_id,
                "createdDateTimeUtc": time(r.created),
                "assignedHub": hub,
                "deviceId": r.device_id,
                "status": "assigned",
                "substatus": "initialAssignment",
                "lastUpdatedDateTimeUtc": time(r.updated),
                "etag": encode_etag(r.etag),
                "payload": null,
            }
        })
    }

    fn register(
        &self,
        client: &ProvisioningClient,
        body_registration_id: &str,
    ) -> Result<RegistrationRecord, HubError> {
        let id = client.registration_id.as_str();
        if body_registration_id != id {
            return Err(HubError::ProvisioningRequestInvalid(format!(
                "the request body names registration '{}' but this client is '{id}'",
                crate::peer_text::escaped(body_registration_id)
            )));
        }
        let assignment = self.assignment(client)?;
        let now = self.now();
        let enrollment = &assignment.enrollment;
        let device = crate::auto_registration::new_device_record(
            id,
            assignment.auth_type,
            assignment.thumbprint.clone(),
            now,
        )
        .map_err(HubError::Internal)?;
        let twin = enrollment
            .initial_twin
            .as_deref()
            .map(|t| initial_twin_record(id, t, now));
        let operation_id = new_operation_id()?;
        let registration = RegistrationRecord {
            registration_id: id.to_string(),
            device_id: id.to_string(),
            enrollment_kind: enrollment.kind,
            enrollment_name: enrollment.name.clone(),
            operation_id,
            etag: 0,
            created: now,
            updated: now,
        };
        let through = match &assignment.ca_name {
            Some(ca) => format!(
                "{} '{}' (CA '{ca}')",
                kind_name(enrollment.kind),
                enrollment.name
            ),
            None => format!("{} '{}'", kind_name(enrollment.kind), enrollment.name),
        };
        let audit = self.audit_entry(
            &device_principal(id),
            "device.provision",
            &target(id),
            &Ok(format!("registered through {through}")),
        );
        let (stored, created) = self
            .store()
            .provision_device(
                &registration,
                &device,
                twin.as_ref(),
                self.config().device_limit,
                &audit,
            )
            .map_err(|e| match e {
                StoreError::LimitReached { limit } => HubError::DeviceLimitReached(limit),
                other => other.into(),
            })?;
        if created {
            self.device_cache().forget(id);
        }
        Ok(stored)
    }

    /// Which enrollment admits this client: its individual enrollment if it has one (the
    /// certificate must be the enrolled one), else the group of the CA its chain ends at.
    fn assignment(&self, client: &ProvisioningClient) -> Result<Assignment, HubError> {
        let id = client.registration_id.as_str();
        if let Some(enrollment) = self
            .store()
            .get_enrollment(EnrollmentKind::Individual, id)?
        {
            return self.individual_assignment(client, enrollment);
        }
        let request = ConnectRequest {
            client_id: id.to_string(),
            username: None,
            password: None,
            chain: client.chain.clone(),
            remote: client.peer.to_string(),
        };
        let method = self
            .judge_ca_chain(&request, self.now())
            .map_err(|r| HubError::RegistrationRefused(r.to_string()))?;
        let AuthMethod::Ca { ca_name, .. } = method else {
            return Err(HubError::Internal(
                "a CA chain judged as another method".into(),
            ));
        };
        let groups: Vec<EnrollmentRecord> = self
            .store()
            .list_enrollments(EnrollmentKind::Group)?
            .into_iter()
            .filter(|g| g.ca_name.as_deref() == Some(ca_name.as_str()))
            .collect();
        let Some(group) = groups.iter().find(|g| g.enabled).or(groups.first()) else {
            return Err(HubError::NoEnrollment(format!(
                "registration '{id}' has no individual enrollment, and no enrollment group is bound to CA '{ca_name}', the CA its chain ends at (iothub dps group add NAME --ca {ca_name})"
            )));
        };
        if !group.enabled {
            return Err(HubError::EnrollmentDisabled {
                kind: kind_name(EnrollmentKind::Group),
                name: group.name.clone(),
            });
        }
        Ok(Assignment {
            enrollment: group.clone(),
            auth_type: AuthType::CertificateAuthority,
            thumbprint: None,
            ca_name: Some(ca_name),
        })
    }

    fn individual_assignment(
        &self,
        client: &ProvisioningClient,
        enrollment: EnrollmentRecord,
    ) -> Result<Assignment, HubError> {
        let id = client.registration_id.as_str();
        if !enrollment.enabled {
            return Err(HubError::EnrollmentDisabled {
                kind: kind_name(EnrollmentKind::Individual),
                name: enrollment.name,
            });
        }
        let leaf = client.chain.first().map(Vec::as_slice).unwrap_or_default();
        let info = CertInfo::from_der(leaf).map_err(|e| {
            HubError::RegistrationRefused(format!("the client certificate cannot be read: {e}"))
        })?;
        if enrollment.thumbprint.as_deref() != Some(info.thumbprint_sha256.as_str()) {
            return Err(HubError::RegistrationRefused(format!(
                "the client certificate (SHA-256 {}) is not the one enrolled for '{id}' (SHA-256 {})",
                info.thumbprint_sha256,
                enrollment.thumbprint.as_deref().unwrap_or("none")
            )));
        }
        let now = self.now();
        if !info.is_valid_at(now) {
            return Err(HubError::RegistrationRefused(format!(
                "the enrolled certificate is valid from {} to {}, not now",
                iothub_pki::pop::format_time(info.not_before),
                iothub_pki::pop::format_time(info.not_after)
            )));
        }
        Ok(Assignment {
            enrollment,
            auth_type: AuthType::SelfSigned,
            thumbprint: Some(info.thumbprint_sha256),
            ca_name: None,
        })
    }
}

/// The actor a provisioning client's audit entries name.
fn device_principal(registration_id: &str) -> Principal {
    Principal {
        policy: format!("registration:{registration_id}"),
        ..Principal::system()
    }
}

/// A fresh operation id: 32 random hex digits in Azure's dotted shape.
fn new_operation_id() -> Result<String, HubError> {
    let code = iothub_pki::pop::generate_code()
        .map_err(|_| HubError::Internal("the system random source failed".into()))?;
    let hex = code.to_ascii_lowercase();
    Ok(format!("5.{}.{}", &hex[..16], &hex[16..32]))
}
