//! A dead-letter of a claimed key: the claim is held until the adapter says the
//! dead-letter destination has the message (the key is marked, so redeliveries are
//! acknowledged without a run) or that it could not be delivered (the claim is released,
//! so the message runs again). The obligation is a value, not a convention: dropped
//! without either, it is abandoned.

use super::Processor;
use super::commit::Claimed;
use crate::clock::duration_millis;
use crate::store::{Committed, Completion, FencingToken, Final, StateChanges, StoreKey};
use crate::{Fingerprint, Result};

/// What a dead-letter holds of its claim.
#[derive(Debug, Clone)]
pub(crate) struct Hold {
    key: StoreKey,
    token: FencingToken,
    fingerprint: Fingerprint,
    attempts: u32,
    reason: String,
}

impl Hold {
    pub(crate) fn of(c: &Claimed, attempts: u32, reason: &str) -> Self {
        Self {
            key: c.skey.clone(),
            token: c.lease.token,
            fingerprint: c.fingerprint,
            attempts,
            reason: reason.to_owned(),
        }
    }
}

/// A dead-letter whose claim is still held. Carry it out, then
/// [`confirm`](Self::confirm) (the destination has the message) or
/// [`abandon`](Self::abandon) (it could not be delivered). Usually reached through
/// [`Processed::confirm_dead_letter`](crate::Processed::confirm_dead_letter) and
/// [`Processed::abandon_dead_letter`](crate::Processed::abandon_dead_letter).
///
/// Dropped without either (a bug in an adapter), it is abandoned in the background and
/// an error is logged: the message runs again rather than its key staying held.
#[must_use = "confirm the dead-letter once the destination has it, or abandon it"]
#[derive(Debug)]
pub struct PendingDeadLetter {
    processor: Processor,
    hold: Option<Hold>,
}

impl PendingDeadLetter {
    pub(crate) fn new(processor: &Processor, hold: Hold) -> Self {
        Self { processor: processor.clone(), hold: Some(hold) }
    }

    /// The dead-letter destination has the message (the broker confirmed it): the key is
    /// marked dead-lettered, so redeliveries are acknowledged without a run until the
    /// message is re-driven. Acknowledge the original after this.
    pub async fn confirm(mut self) -> Result<()> {
        let Some(hold) = self.hold.take() else { return Ok(()) };
        let inner = &self.processor.inner;
        let now = inner.clock.now();
        let committed = inner
            .store
            .complete(Completion {
                key: hold.key.clone(),
                token: hold.token,
                fingerprint: hold.fingerprint,
                attempts: hold.attempts,
                now,
                origin: None,
                outcome: Final::DeadLettered { reason: hold.reason.clone() },
                expires_at: now + duration_millis(inner.retention),
                state: StateChanges::default(),
            })
            .await;
        match committed {
            Ok(Committed::Ok) => {}
            Ok(committed) => tracing::warn!(key = %hold.key, ?committed, "could not mark the key dead-lettered"),
            // The destination has the message, so acknowledging it is right; without the
            // mark a later copy runs again (and may be dead-lettered again) when its claim
            // has lapsed.
            Err(e) if e.is_transient() => {
                tracing::warn!(key = %hold.key, error = %e, "dead-lettered, but the key's mark was not recorded")
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// The dead-letter could not be delivered: the claim is released, and the
    /// unacknowledged message runs again when the broker delivers it again.
    pub async fn abandon(mut self) -> Result<()> {
        match self.hold.take() {
            Some(hold) => release(&self.processor, hold).await,
            None => Ok(()),
        }
    }
}

async fn release(p: &Processor, hold: Hold) -> Result<()> {
    p.release_claim(&hold.key, hold.token, hold.attempts, None).await
}

impl Drop for PendingDeadLetter {
    fn drop(&mut self) {
        let Some(hold) = self.hold.take() else { return };
        tracing::error!(key = %hold.key, "a dead-letter was neither confirmed nor abandoned; abandoning it (the message runs again)");
        let processor = self.processor.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = release(&processor, hold).await {
                    tracing::error!(error = %e, "releasing a dropped dead-letter's claim failed");
                }
            });
        }
    }
}
