//! Steps 1-3: the key, the breaker's admission, the claim, and the answers for a key
//! that is not acquired.

use std::time::Duration;

use super::breaker::Admit;
use super::commit::{Claimed, Commit, origin_of};
use super::dead_letter::Hold;
use super::{BUSY_MAX, BUSY_MIN, OrphanPolicy, Processor, REDRIVE_HEADER};
use crate::clock::{Millis, duration_millis};
use crate::store::{Claim, ClaimRequest, StoreKey};
use crate::{Disposition, Fingerprint, KeyLookup, Message, MissingKey, Outcome, Processed, Result, reasons};

impl Processor {
    /// The message's key: `Ok(None)` for a message let through without one; `Err` with
    /// the answer (a dead-letter) for a key that is missing or unusable.
    pub(super) fn key_of(&self, msg: &Message, key: KeyLookup) -> Result<Option<String>, Box<Processed>> {
        match key {
            KeyLookup::Found(k) => Ok(Some(k)),
            KeyLookup::Missing => match self.inner.keys.missing_policy() {
                MissingKey::ProcessUnprotected => Ok(None),
                _ => Err(Box::new(self.dead_letter_now(
                    msg,
                    None,
                    reasons::MISSING_KEY,
                    "no key source found a key".into(),
                ))),
            },
            KeyLookup::Invalid(why) => Err(Box::new(self.dead_letter_now(msg, None, reasons::INVALID_KEY, why))),
        }
    }

    /// Whether the breaker lets the message through (and as its probe); `Err` with the
    /// pause when it is open.
    pub(super) fn admit(&self, key: Option<&str>) -> Result<bool, Box<Processed>> {
        match self.inner.breaker.as_ref().map(super::CircuitBreaker::admit) {
            Some(Admit::Wait(after)) => {
                Err(Box::new(Processed::new(Disposition::Pause { after }, Outcome::Paused, key.map(str::to_owned))))
            }
            Some(Admit::Go { probe: true }) => {
                self.inner.metrics.breaker(1.0); // half-open: this message is the probe
                Ok(true)
            }
            Some(Admit::Go { probe: false }) => Ok(false),
            None => Ok(false),
        }
    }

    /// Claims the key, then runs its attempts with a done-record as the commit.
    pub(super) async fn claimed(&self, msg: &Message, key: String, probe: bool) -> Result<Processed> {
        let inner = &*self.inner;
        let skey = StoreKey::new(&inner.consumer, &key);
        let fingerprint = Fingerprint::of(msg.payload());
        let now = inner.clock.now();
        let req = self.request(msg, &skey, fingerprint, now, inner.orphans == OrphanPolicy::Quarantine);
        let claim = match self.claim_or_answer(msg, &key, req, probe).await? {
            Ok(claim) => claim,
            Err(answer) => return Ok(answer),
        };
        let lease = match claim {
            Claim::Acquired(lease) => lease,
            Claim::Conflict { stored } => return self.conflict(msg, key, (stored, fingerprint), now, probe).await,
            other => {
                self.breaker_neutral(probe);
                return Ok(self.not_claimed(other, msg, key, now));
            }
        };
        let attempts_before = lease.attempts.max(msg.delivery_count().unwrap_or(0));
        let claimed = Claimed { key, skey, fingerprint, lease };
        if claimed.lease.orphaned && inner.orphans == OrphanPolicy::Quarantine {
            self.breaker_neutral(probe);
            let why = "a previous run of this key was cut off (crash or lost lease); its effects may or may not have happened";
            let mut p = self.dead_letter_now(msg, Some(&claimed.key), reasons::UNKNOWN_OUTCOME, why.into());
            p.set_hold(self, Hold::of(&claimed, attempts_before, reasons::UNKNOWN_OUTCOME));
            return Ok(p);
        }
        self.attempts(msg, &Commit::Record(claimed), attempts_before, probe).await
    }

    /// The answer for a claim that did not acquire the key.
    fn not_claimed(&self, claim: Claim, msg: &Message, key: String, now: Millis) -> Processed {
        match claim {
            Claim::Done { output, emitted, origin } => {
                self.inner.metrics.duplicate(crate::metrics::AnsweredBy::Store);
                let mut p = Processed::new(Disposition::Ack, Outcome::Duplicate, Some(key));
                p.output = output;
                // Emitted records go out again only for a redelivery of the message that
                // emitted them (its outputs may not have been published, or its Kafka
                // transaction not committed). Another message with the same key: they went
                // out with the first one.
                // With an outbox, the relay publishes them; nothing goes out here.
                if (origin.is_none() || origin == origin_of(msg)) && !self.inner.store.keeps_outbox() {
                    p.emitted = emitted;
                }
                p
            }
            Claim::DeadLettered { .. } => Processed::new(Disposition::Ack, Outcome::AlreadyDeadLettered, Some(key)),
            Claim::Busy { lease_until } => busy(key, lease_until, now),
            Claim::Acquired(_) | Claim::Conflict { .. } => unreachable!("handled by the caller"),
        }
    }

    /// A key done for another payload: dead-letter `key-conflict` once per conflicting
    /// payload. The conflict is claimed and marked under a key of its own
    /// (`<key>#conflict-<fingerprint>`), so a redelivery of the copy is acknowledged as
    /// already dead-lettered, as a message that failed for good is.
    async fn conflict(
        &self,
        msg: &Message,
        key: String,
        (stored, fingerprint): (Fingerprint, Fingerprint),
        now: Millis,
        probe: bool,
    ) -> Result<Processed> {
        let inner = &*self.inner;
        let why = format!("key is done for a payload with fingerprint {stored}, this payload's is {fingerprint}");
        let skey = StoreKey::new(&inner.consumer, &format!("{key}#conflict-{fingerprint}"));
        let req = self.request(msg, &skey, fingerprint, now, false);
        let claim = match self.claim_or_answer(msg, &key, req, probe).await? {
            Ok(claim) => claim,
            Err(answer) => return Ok(answer),
        };
        self.breaker_neutral(probe);
        Ok(match claim {
            Claim::Acquired(lease) => {
                let mut p = self.dead_letter_now(msg, Some(&key), reasons::KEY_CONFLICT, why);
                let attempts = lease.attempts;
                let claimed = Claimed { key: key.clone(), skey, fingerprint, lease };
                p.set_hold(self, Hold::of(&claimed, attempts + 1, reasons::KEY_CONFLICT));
                p
            }
            Claim::DeadLettered { .. } => Processed::new(Disposition::Ack, Outcome::AlreadyDeadLettered, Some(key)),
            Claim::Busy { lease_until } => busy(key, lease_until, now),
            // The conflict's own key is only ever dead-lettered, under one fingerprint.
            Claim::Done { .. } | Claim::Conflict { .. } => {
                self.dead_letter_now(msg, Some(&key), reasons::KEY_CONFLICT, why)
            }
        })
    }

    /// A claim of `skey` for `msg`.
    fn request<'a>(
        &self,
        msg: &Message,
        skey: &'a StoreKey,
        fingerprint: Fingerprint,
        now: Millis,
        durable: bool,
    ) -> ClaimRequest<'a> {
        ClaimRequest {
            key: skey,
            fingerprint,
            now,
            lease_until: now + duration_millis(self.inner.lease),
            durable,
            redrive: msg.headers().get(REDRIVE_HEADER).is_some(),
        }
    }

    /// Asks the store for a claim; `Ok(Err(answer))` when the store is out of reach for
    /// now: nothing is held, and the message is retried later (or paused by the breaker),
    /// its attempts not counted.
    async fn claim_or_answer(
        &self,
        msg: &Message,
        key: &str,
        req: ClaimRequest<'_>,
        probe: bool,
    ) -> Result<Result<Claim, Processed>> {
        match self.inner.store.claim(req).await {
            Ok(claim) => Ok(Ok(claim)),
            Err(e) if e.is_transient() => {
                let unclaimed = Commit::Unclaimed(key.to_owned());
                Ok(Err(self.verdict(msg, &unclaimed, 0, probe, crate::handler::store_error(e)).await?))
            }
            Err(e) => Err(e),
        }
    }
}

/// A key another live claim holds: try again when its lease ends (within bounds).
fn busy(key: String, lease_until: Millis, now: Millis) -> Processed {
    let after = Duration::from_millis(lease_until.saturating_sub(now)).clamp(BUSY_MIN, BUSY_MAX);
    Processed::new(Disposition::Retry { after }, Outcome::Busy, Some(key))
}
