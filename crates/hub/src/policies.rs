//! Shared access policies as Azure IoT Hub has them: list and show (names and rights, no keys),
//! keys, create or change rights, delete, and rotate one key.
//!
//! Who may do what: reading names and rights needs RegistryRead. Reading keys and every change
//! need all four rights (owner level): in Azure these are management-plane operations that only
//! the hub's owner performs, and a policy that could mint or read another policy's keys holds, in
//! effect, every right. A portal session never reads keys nor changes policies, whatever its
//! rights: a stolen browser session must not turn into a lasting credential.
//!
//! Rotation and deletion take effect at once: tokens are stateless, so each request checks the
//! keys held in memory (reloaded under the write lock before the change returns), and the live
//! things made with a key (event streams, portal sessions) re-check their `Credential` through
//! `Hub::refresh_principal` whenever the policies change.
//!
//! Owns: `Policies` — the in-memory copy of the policies (read on every request), the lock
//! that serialises policy changes, and the epoch that moves on each. Asks of others: the store
//! (each change, with its audit entry, in one call; then the list reloaded), `authorize` and
//! `refuse` (`auth`, `audit`). `auth` reads the copy through `Policies::read`.

use iothub_pki::policy::{format_rights, parse_rights, validate_policy_name, KeySlot, Right};
use std::sync::{Mutex, MutexGuard, RwLock};

use iothub_store::{PolicyChange, PolicyRecord, StoreError};
use tokio::sync::watch;

use crate::auth::Credential;
use crate::{Hub, HubError, Principal};

/// Azure's quota of shared access policies per hub (the built-in ones included).
pub const POLICY_LIMIT: u64 = 16;

/// The built-in owner policy: it keeps every right and cannot be deleted.
pub const OWNER_POLICY: &str = "iothubowner";

/// The policies part of the hub (see the module comment).
pub(crate) struct Policies {
    /// Policies are read on every request; they change only through the service layer, which
    /// refreshes this copy.
    held: RwLock<Vec<PolicyRecord>>,
    /// Serialises policy changes, so that the copy above is reloaded in the order of the writes.
    writes: Mutex<()>,
    /// Moves on every policy change: live streams re-check their credential.
    epoch: watch::Sender<u64>,
}

impl Policies {
    pub(crate) fn new(held: Vec<PolicyRecord>) -> Policies {
        Policies {
            held: RwLock::new(held),
            writes: Mutex::new(()),
            epoch: watch::channel(0).0,
        }
    }

    /// `f` over the held policies, under the read lock; None if the lock is poisoned.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&[PolicyRecord]) -> T) -> Option<T> {
        self.held.read().ok().map(|held| f(&held))
    }

    /// Replaces the held copy with `all`, as just read from the store.
    pub(crate) fn replace(&self, all: Vec<PolicyRecord>) -> Result<(), HubError> {
        *self
            .held
            .write()
            .map_err(|_| HubError::Internal("policy lock poisoned".into()))? = all;
        Ok(())
    }

    /// Held by the caller for the whole of one policy change.
    fn writing(&self) -> MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn poisoned() -> HubError {
    HubError::Internal("policy lock poisoned".into())
}

/// A policy without its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyView {
    pub name: String,
    pub rights: Vec<String>,
}

impl PolicyView {
    fn of(p: &PolicyRecord) -> PolicyView {
        PolicyView {
            name: p.name.clone(),
            rights: p.rights.clone(),
        }
    }
}

fn target(name: &str) -> String {
    format!("policy/{name}")
}

const PORTAL_NO_KEYS: &str = "policy keys are not shown to portal sessions, and a portal session does not change policies: use the CLI on the hub's machine ('iothub policy show NAME --keys', 'iothub policy ...')";

impl Hub {
    /// Refuses (audited) unless `who` may read keys and change policies: owner level, and not a
    /// portal session.
    fn require_policy_admin(
        &self,
        who: &Principal,
        action: &str,
        name: &str,
    ) -> Result<(), HubError> {
        if who.portal {
            return self.refuse(
                who,
                action,
                &target(name),
                HubError::PortalRefused(PORTAL_NO_KEYS.into()),
            );
        }
        for right in Right::ALL {
            self.authorize(
                who,
                right,
                "read keys of or change shared access policies",
                &target(name),
            )?;
        }
        Ok(())
    }

    fn find_policy(&self, name: &str) -> Result<Option<PolicyRecord>, HubError> {
        self.policies()
            .read(|held| held.iter().find(|p| p.name == name).cloned())
            .ok_or_else(poisoned)
    }

    /// The policies without their keys.
    pub fn list_policies(&self, who: &Principal) -> Result<Vec<(String, Vec<String>)>, HubError> {
        self.authorize(
            who,
            Right::RegistryRead,
            "list shared access policies",
            "policies",
        )?;
        self.policies()
            .read(|held| {
                held.iter()
                    .map(|p| (p.name.clone(), p.rights.clone()))
                    .collect()
            })
            .ok_or_else(poisoned)
    }

    /// One policy without its keys.
    pub fn get_policy(&self, who: &Principal, name: &str) -> Result<PolicyView, HubError> {
        self.authorize(
            who,
            Right::RegistryRead,
            "read shared access policies",
            &target(name),
        )?;
        match self.find_policy(name)? {
            Some(p) => Ok(PolicyView::of(&p)),
            None => Err(HubError::PolicyNotFound(name.to_string())),
        }
    }

    /// A policy with its keys: owner level only, never a portal session.
    pub fn policy_keys(&self, who: &Principal, name: &str) -> Result<PolicyRecord, HubError> {
        self.require_policy_admin(who, "policy.listKeys", name)?;
        self.find_policy(name)?
            .ok_or_else(|| HubError::PolicyNotFound(name.to_string()))
    }

    /// Every policy with its keys (the management API's `listkeys`): as `policy_keys`.
    pub fn all_policy_keys(&self, who: &Principal) -> Result<Vec<PolicyRecord>, HubError> {
        self.require_policy_admin(who, "policy.listKeys", "*")?;
        self.policies()
            .read(<[PolicyRecord]>::to_vec)
            .ok_or_else(poisoned)
    }

    /// The owner policy (for the local connection string); the hub reads it itself.
    pub fn owner_policy(&self) -> Result<PolicyRecord, HubError> {
        self.policy_keys(&Principal::system(), OWNER_POLICY)
    }

    /// The owner's primary key as a credential: what the login link printed by `iothub serve`
    /// stands for (the connection string in the data directory holds that key).
    pub fn owner_credential(&self) -> Result<Credential, HubError> {
        Ok(Credential::of(&self.owner_policy()?, KeySlot::Primary))
    }

    /// Checks that `who` may create a portal login link (owner level, not itself a portal
    /// session; audited when refused) and returns the credential the link, and every session
    /// opened with it, will stand for.
    pub fn authorize_portal_link(&self, who: &Principal) -> Result<Credential, HubError> {
        const ACTION: &str = "portal.createLink";
        if who.portal {
            return self.refuse(
                who,
                ACTION,
                "portal-links",
                HubError::PortalRefused(
                    "a portal session cannot create login links; run 'iothub portal-link' on the hub's machine".into(),
                ),
            );
        }
        for right in Right::ALL {
            self.authorize(who, right, "create portal login links", "portal-links")?;
        }
        who.credential.clone().ok_or_else(|| {
            HubError::Internal("a login link needs a credential to stand for".into())
        })
    }

    /// A receiver that changes whenever a policy is created, changed, rotated or deleted.
    pub fn watch_policies(&self) -> tokio::sync::watch::Receiver<u64> {
        self.policies().epoch.subscribe()
    }

    /// Creates policy `name` with `rights` (a comma-separated list, as Azure writes it) and fresh
    /// keys, or sets the rights of an existing one (its keys stay). Returns it and whether it was
    /// created. `iothubowner` keeps every right.
    pub fn put_policy(
        &self,
        who: &Principal,
        name: &str,
        rights: &str,
    ) -> Result<(PolicyView, bool), HubError> {
        const ACTION: &str = "policy.put";
        self.require_policy_admin(who, ACTION, name)?;
        let run = || -> Result<(PolicyView, bool), HubError> {
            validate_policy_name(name)?;
            let rights: Vec<String> = parse_rights(rights)?
                .into_iter()
                .map(|r| r.name().to_string())
                .collect();
            if name == OWNER_POLICY && rights.len() != Right::ALL.len() {
                return Err(HubError::OwnerPolicyProtected(format!(
                    "the built-in policy '{OWNER_POLICY}' keeps every right (RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect); asked for {}. Create another policy with fewer rights instead",
                    format_rights(&rights)
                )));
            }
            let _writes = self.policies().writing();
            let (change, created, detail) = match self.find_policy(name)? {
                Some(_) => (
                    PolicyChange::SetRights {
                        name: name.to_string(),
                        rights: rights.clone(),
                    },
                    false,
                    format!("rights set to {}", format_rights(&rights)),
                ),
                None => {
                    let key = || {
                        iothub_pki::sas::generate_key().map_err(|_| {
                            HubError::Internal("the system random source failed".into())
                        })
                    };
                    (
                        PolicyChange::Create {
                            record: PolicyRecord {
                                name: name.to_string(),
                                primary_key: key()?,
                                secondary_key: key()?,
                                rights: rights.clone(),
                            },
                            limit: POLICY_LIMIT,
                        },
                        true,
                        format!("created with rights {}", format_rights(&rights)),
                    )
                }
            };
            let stored = self.write_policy(who, ACTION, name, &change, detail)?;
            let stored = stored.ok_or_else(|| HubError::PolicyNotFound(name.to_string()))?;
            Ok((PolicyView::of(&stored), created))
        };
        run().or_else(|e| self.refuse(who, ACTION, &target(name), e))
    }

    /// Deletes a policy: every token signed with its keys is refused from now on, and the streams
    /// and portal sessions made with them end. `iothubowner` cannot be deleted.
    pub fn delete_policy(&self, who: &Principal, name: &str) -> Result<(), HubError> {
        const ACTION: &str = "policy.delete";
        self.require_policy_admin(who, ACTION, name)?;
        let run = || -> Result<(), HubError> {
            validate_policy_name(name)?;
            if name == OWNER_POLICY {
                return Err(HubError::OwnerPolicyProtected(format!(
                    "the built-in policy '{OWNER_POLICY}' cannot be deleted: it is the credential of last resort. Rotate its keys instead ('iothub policy rotate {OWNER_POLICY} --key primary|secondary')"
                )));
            }
            let _writes = self.policies().writing();
            if self.find_policy(name)?.is_none() {
                return Err(HubError::PolicyNotFound(name.to_string()));
            }
            let change = PolicyChange::Delete {
                name: name.to_string(),
            };
            self.write_policy(who, ACTION, name, &change, "deleted".into())?;
            Ok(())
        };
        run().or_else(|e| self.refuse(who, ACTION, &target(name), e))
    }

    /// Replaces one key of a policy (`key`: "primary" or "secondary") with 32 fresh random bytes;
    /// the old key stops working at once. Returns the policy with its keys.
    pub fn rotate_policy_key(
        &self,
        who: &Principal,
        name: &str,
        key: &str,
    ) -> Result<PolicyRecord, HubError> {
        const ACTION: &str = "policy.rotateKey";
        self.require_policy_admin(who, ACTION, name)?;
        let run = || -> Result<PolicyRecord, HubError> {
            validate_policy_name(name)?;
            let slot = KeySlot::parse(key).map_err(HubError::InvalidArgument)?;
            let _writes = self.policies().writing();
            if self.find_policy(name)?.is_none() {
                return Err(HubError::PolicyNotFound(name.to_string()));
            }
            let new_key = iothub_pki::sas::generate_key()
                .map_err(|_| HubError::Internal("the system random source failed".into()))?;
            let change = PolicyChange::SetKey {
                name: name.to_string(),
                secondary: slot == KeySlot::Secondary,
                key: new_key,
            };
            // The audit entry says which key was replaced, never either key.
            let detail = format!("{} key replaced", slot.name());
            self.write_policy(who, ACTION, name, &change, detail)?
                .ok_or_else(|| HubError::PolicyNotFound(name.to_string()))
        };
        run().or_else(|e| self.refuse(who, ACTION, &target(name), e))
    }

    /// One policy change: the store call (precondition + audit entry in one transaction), then the
    /// in-memory copy reloaded and the epoch moved, all before the caller gets its answer, so
    /// that the next request already sees the change. The caller holds `Policies::writing`.
    fn write_policy(
        &self,
        who: &Principal,
        action: &str,
        name: &str,
        change: &PolicyChange,
        detail: String,
    ) -> Result<Option<PolicyRecord>, HubError> {
        let audit = self.audit_entry(who, action, &target(name), &Ok(detail));
        let stored = self
            .store()
            .change_policy(change, &audit)
            .map_err(|e| match e {
                StoreError::LimitReached { limit } => HubError::PolicyLimitReached(limit),
                StoreError::NotFound => HubError::PolicyNotFound(name.to_string()),
                StoreError::AlreadyExists => HubError::Internal(format!(
                "policy '{name}' was created by another writer of the database meanwhile; retry"
            )),
                other => HubError::from(other),
            })?;
        let all = self.store().list_policies()?;
        self.policies().replace(all)?;
        self.policies().epoch.send_modify(|e| *e += 1);
        Ok(stored)
    }
}
