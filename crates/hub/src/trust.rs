//! Live trust: the set of registered CAs as an immutable in-memory snapshot, swapped atomically when
//! a CA is created, replaced, verified or deleted. Device authentication reads it without a lock or
//! a database query; after each swap every live certificate session is checked again and the ones
//! the new trust set no longer admits are closed.

use std::sync::Arc;

use iothub_pki::chain_cache::{chain_key, VerifiedChain};
use iothub_pki::device::{validate_chain_bounded, ChainError, ParsedAnchor, TrustIndex};

use crate::{Hub, HubError};

impl Hub {
    /// The current trust snapshot.
    pub fn trust(&self) -> Arc<TrustIndex> {
        self.trust.load_full()
    }

    /// Validates a device's chain against the current trust snapshot, remembering successes for
    /// as long as that snapshot stays current (see `iothub_pki::chain_cache`).
    pub fn validate_device_chain(
        &self,
        chain: &[Vec<u8>],
        now: i64,
    ) -> Result<VerifiedChain, ChainError> {
        let trust = self.trust();
        let key = chain_key(chain);
        {
            let mut cache = self
                .chain_cache
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !Arc::ptr_eq(&cache.0, &trust) {
                // Trust changed: no earlier verdict stands. (Holding the Arc keeps its address
                // from being reused by a later snapshot.)
                cache.0 = trust.clone();
                cache.1.clear();
            }
            if let Some(hit) = cache.1.get(&key, now) {
                return Ok(hit.clone());
            }
        }
        let verdict = VerifiedChain::from(&validate_chain_bounded(
            chain,
            &trust,
            now,
            self.config.max_chain_len,
        )?);
        let mut cache = self
            .chain_cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if Arc::ptr_eq(&cache.0, &trust) {
            cache.1.insert(key, verdict.clone());
        }
        Ok(verdict)
    }

    /// Rebuilds the trust snapshot from the store, then re-checks live sessions against it.
    pub fn rebuild_trust(&self) -> Result<(), HubError> {
        // A ticket taken after this caller's change landed: whatever snapshot finally stays has a
        // ticket at least this high, so it was read after the change (see `Hub::trust_tickets`).
        let (next_ticket, newest_stored) = &*self.trust_tickets;
        let ticket = next_ticket.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let versions = self.store.list_ca_versions()?;
        let anchors: Vec<ParsedAnchor> = {
            // Each CA is loaded and parsed once per version (etag), not on every rebuild: with
            // thousands of CAs, reloading them all made each CA change cost the whole registry.
            let mut memo = self
                .anchor_memo
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut next = std::collections::HashMap::with_capacity(versions.len());
            let mut anchors = Vec::with_capacity(versions.len());
            for (name, etag, _verified) in versions {
                let (etag, parsed) = match memo.remove(&name) {
                    Some((seen, parsed)) if seen == etag => (etag, parsed),
                    _ => {
                        // Changed since the last rebuild (or new): load it. Gone meanwhile:
                        // skip it (its delete rebuilds trust again).
                        let Some(r) = self.store.get_ca(&name)? else {
                            continue;
                        };
                        match ParsedAnchor::parse(&r.name, &r.der, r.is_verified) {
                            Ok(parsed) => (r.etag, parsed),
                            Err(_) => continue,
                        }
                    }
                };
                next.insert(name, (etag, parsed.clone()));
                anchors.push(parsed);
            }
            *memo = next;
            anchors
        };
        let index = Arc::new(TrustIndex::from_parsed(anchors));
        {
            let mut newest = newest_stored
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if *newest > ticket {
                // A later rebuild already stored a snapshot read after this one's.
                return Ok(());
            }
            *newest = ticket;
            self.trust.store(index);
        }
        self.revalidate_sessions();
        Ok(())
    }

    /// Rebuilds trust after a CA change; a failure is logged (the change itself has landed, and the
    /// periodic revalidation retries).
    pub(crate) fn trust_changed(&self) {
        if let Err(e) = self.rebuild_trust() {
            tracing::error!(error = %e, "could not rebuild the trust snapshot");
        }
    }
}
