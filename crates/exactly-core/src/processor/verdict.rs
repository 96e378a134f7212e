//! Step 5: what a failed attempt becomes, for every kind of delivery alike.

use std::hash::{BuildHasher, BuildHasherDefault};

use super::Processor;
use super::commit::Commit;
use super::dead_letter::Hold;
use crate::store::{FencingToken, StoreKey};
use crate::{Disposition, ErrorKind, HandlerError, Message, Outcome, Processed, Result, reasons};

impl Processor {
    /// A permanent failure, or the last attempt's, is dead-lettered; a transient one
    /// pauses the consumer when the breaker opens on it, else is retried with backoff. A
    /// claim is released (retry, pause) or held until the dead-letter is confirmed.
    pub(super) async fn verdict(
        &self,
        msg: &Message,
        commit: &Commit<'_>,
        attempts_before: u32,
        probe: bool,
        error: HandlerError,
    ) -> Result<Processed> {
        let inner = &*self.inner;
        let attempts = attempts_before + 1;
        let text = error.message();
        let key = commit.key();
        if error.kind() == ErrorKind::Permanent {
            self.breaker_neutral(probe);
            return Ok(self.dead_letter_after(msg, commit, attempts, error.reason(), text));
        }
        inner.metrics.retry_reason(error.reason());
        let what = key.map_or_else(|| msg.coordinates().to_string(), str::to_owned);
        let key_hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(&what);
        // Contention (runs of the same state racing) says nothing about the dependency.
        let contention = [reasons::STATE_CONFLICT, reasons::STATE_LOCK_TIMEOUT].contains(&error.reason());
        if contention {
            self.breaker_neutral(probe);
        }
        let breaker = inner.breaker.as_ref().filter(|_| !contention);
        if let Some(pause) = breaker.and_then(|b| b.failure(key_hash, probe)) {
            // The dependency is down, not this message: the attempt does not count.
            inner.metrics.breaker(2.0);
            self.release(commit, attempts_before, Some(text)).await?;
            let mut p = Processed::new(Disposition::Pause { after: pause }, Outcome::Paused, key.map(str::to_owned));
            p.attempts = attempts_before;
            return Ok(p);
        }
        if error.reason() == reasons::OVERLOADED || error.reason() == reasons::STORE_UNAVAILABLE {
            // A load-shedding layer refused it, or the shared store was out of reach: not
            // this message's fault, so the attempt does not count and neither dead-letters it.
            let after = inner.retry.delay(attempts, error.requested_retry_after());
            self.release(commit, attempts_before, Some(text)).await?;
            let mut p = Processed::new(Disposition::Retry { after }, Outcome::Retry, key.map(str::to_owned));
            p.attempts = attempts_before;
            return Ok(p);
        }
        if attempts >= inner.retry.max_attempts() {
            return Ok(self.dead_letter_after(msg, commit, attempts, reasons::RETRIES_EXHAUSTED, text));
        }
        let after = inner.retry.delay(attempts, error.requested_retry_after());
        tracing::debug!(attempts, ?after, error = %text, "transient failure; retrying later");
        self.release(commit, attempts, Some(text)).await?;
        let mut p = Processed::new(Disposition::Retry { after }, Outcome::Retry, key.map(str::to_owned));
        p.attempts = attempts;
        Ok(p)
    }

    /// Ends a claim after a failure that will be tried again.
    async fn release(&self, commit: &Commit<'_>, attempts: u32, error: Option<String>) -> Result<()> {
        let Commit::Record(c) = commit else { return Ok(()) };
        self.release_claim(&c.skey, c.lease.token, attempts, error).await
    }

    /// Releases a claim. A store out of reach keeps the claim until its lease ends; until
    /// then the key's copies are answered busy.
    pub(super) async fn release_claim(
        &self,
        key: &StoreKey,
        token: FencingToken,
        attempts: u32,
        error: Option<String>,
    ) -> Result<()> {
        match self.inner.store.release(key, token, attempts, error).await {
            Err(e) if e.is_transient() => {
                tracing::warn!(%key, error = %e, "cannot release the claim; it ends with its lease");
                Ok(())
            }
            other => other,
        }
    }

    /// A dead-letter after `attempts` attempts; a claimed key stays held until the
    /// adapter confirms or abandons it.
    fn dead_letter_after(
        &self,
        msg: &Message,
        commit: &Commit<'_>,
        attempts: u32,
        reason: &str,
        error: String,
    ) -> Processed {
        let mut p = self.dead_letter_now(msg, commit.key(), reason, error);
        if let Disposition::DeadLetter(d) = &mut p.disposition {
            d.attempts = attempts;
            if let Commit::Record(c) = commit {
                d.first_error = c.lease.first_error.clone().or_else(|| d.first_error.take());
            }
        }
        p.attempts = attempts;
        if let Commit::Record(c) = commit {
            p.set_hold(self, Hold::of(c, attempts, reason));
        }
        p
    }

    /// A dead-letter decided before any attempt (no key, a key conflict, an orphan).
    pub(super) fn dead_letter_now(&self, msg: &Message, key: Option<&str>, reason: &str, error: String) -> Processed {
        let dl = crate::DeadLetter {
            id: dead_letter_id(&self.inner.consumer, key, reason, msg.payload()),
            reason: reason.to_owned(),
            attempts: msg.delivery_count().unwrap_or(0) + 1,
            first_error: Some(error.clone()),
            last_error: Some(error),
            key: key.map(str::to_owned),
            coordinates: msg.coordinates().clone(),
        };
        let attempts = dl.attempts;
        let mut p =
            Processed::new(Disposition::DeadLetter(Box::new(dl)), Outcome::DeadLettered, key.map(str::to_owned));
        p.attempts = attempts;
        p
    }
}

/// The id of a dead letter: the same for every copy of one message dead-lettered for one
/// reason (a re-publish after a crash, a redelivery dead-lettered again), so a consumer of
/// the dead-letter destination can drop copies.
fn dead_letter_id(consumer: &str, key: Option<&str>, reason: &str, payload: &[u8]) -> String {
    let mut h = blake3::Hasher::new();
    for part in [consumer.as_bytes(), key.unwrap_or("").as_bytes(), reason.as_bytes()] {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(payload);
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    // Shown as a fingerprint is: 32 hex digits.
    crate::Fingerprint(id).to_string()
}
