//! The audit log's entries, built in one place for every operation of the service layer:
//! who acted, what, on which target, and the precise outcome or reason (never a secret).
//!
//! Owns no state: the audit log is the store's, and a change writes its entry in the same store
//! call as the change itself. Asks of others: the clock, the store (`append_audit` for refusals).

use iothub_store::NewAudit;

use crate::auth::Principal;
use crate::{Hub, HubError};

impl Hub {
    /// The audit entry of `action` on `target` (e.g. `certificate/root`) with its outcome.
    pub(crate) fn audit_entry(
        &self,
        who: &Principal,
        action: &str,
        target: &str,
        outcome: &Result<String, HubError>,
    ) -> NewAudit {
        NewAudit {
            time: self.now(),
            actor: who.policy.clone(),
            action: action.to_string(),
            target: target.to_string(),
            success: outcome.is_ok(),
            code: outcome.as_ref().err().map(|e| e.code().number.to_string()),
            detail: match outcome {
                Ok(detail) => detail.clone(),
                Err(e) => e.to_string(),
            },
        }
    }

    /// Records a refusal in the audit log, then returns it. If the audit write itself fails, the
    /// refusal is still returned (and the failure logged): the caller's answer must not change.
    pub(crate) fn refuse<T>(
        &self,
        who: &Principal,
        action: &str,
        target: &str,
        err: HubError,
    ) -> Result<T, HubError> {
        let entry = self.audit_entry(who, action, target, &Err(err.clone()));
        if let Err(e) = self.store().append_audit(&entry) {
            tracing::error!(error = %e, "could not write an audit entry for a refusal");
        }
        Err(err)
    }
}
