//! The positional fast path: records handed out in position order (a Kafka partition in
//! offset order) whose key is their position use the partition watermark as their
//! done-record.

use super::*;

impl Processor {
    /// Processes a message whose broker keeps positions and hands them out in order (a
    /// Kafka partition in offset order). When the message's key is its position
    /// (`topic/partition/offset`, the default key of a Kafka record without an
    /// idempotency-key header), its done-record is the partition's watermark, stored under
    /// the meta name `watermark` as the next offset (i64 BE): no per-record lookup or record
    /// is needed, and any state writes commit atomically with the new watermark. Retries
    /// count attempts through [`Message::delivery_count`]. Any other key takes the
    /// ordinary path ([`Processor::process_staged`]).
    pub async fn process_positioned(&self, msg: Message, watermark: &str) -> Result<Staged> {
        let started = std::time::Instant::now();
        let position = match self.inner.keys.extract(&msg) {
            // Only a key that starts with the source's name can be the position: others
            // (an idempotency-key header) skip writing the position out.
            KeyLookup::Found(k)
                if k.starts_with(msg.coordinates().source.as_str()) && origin_of(&msg).is_some_and(|o| o == k) =>
            {
                k
            }
            other => return self.process_keyed(msg, other).await,
        };
        let span = tracing::debug_span!("message", consumer = %self.inner.consumer, key = %position, outcome = tracing::field::Empty);
        let processed = self.positioned(msg, &position, watermark).instrument(span.clone()).await?;
        span.record("outcome", processed.outcome.as_str());
        self.inner.metrics.outcome(processed.outcome);
        if let Some(dl) = processed.dead_letter() {
            self.inner.metrics.dead_letter(&dl.reason);
            tracing::warn!(parent: &span, reason = %dl.reason, attempts = dl.attempts, error = ?dl.last_error, "dead-lettering");
        }
        Ok(Staged { processed, processor: self.clone(), started })
    }

    async fn positioned(&self, msg: Message, position: &str, watermark: &str) -> Result<Processed> {
        let inner = &*self.inner;
        let probe = match inner.breaker.as_ref().map(CircuitBreaker::admit) {
            Some(Admit::Wait(after)) => {
                return Ok(Processed::new(Disposition::Pause { after }, Outcome::Paused, Some(position.to_owned())));
            }
            Some(Admit::Go { probe }) => probe,
            None => false,
        };
        let attempts_before = msg.delivery_count().unwrap_or(0);
        let next = msg.coordinates().offset.unwrap_or(0).saturating_add(1);
        let mut conflicts = 0;
        loop {
            self.crash_point(CrashPoint::BeforeHandler, Some(position))?;
            let ctx = self.context(Some(position), attempts_before + 1, 0, &msg);
            let started = Instant::now();
            let result =
                run::run_attempt(&inner.handler, msg.clone(), ctx.clone(), inner.timeout, inner.timeout, || async {
                    true
                })
                .await;
            inner.metrics.handler_time(started.elapsed());
            self.crash_point(CrashPoint::AfterHandler, Some(position))?;
            let mut finished = ctx.finish().await;
            let result = result.and_then(|output| self.fits(output, &finished.emitted));
            let output = match result {
                Ok(output) => output,
                Err(e) => {
                    finished.release();
                    return self.positioned_failure(&msg, position, attempts_before, probe, e);
                }
            };
            let state = std::mem::take(&mut finished.state);
            let emitted = stamp(std::mem::take(&mut finished.emitted), &inner.consumer, position);
            let meta = vec![(watermark.to_owned(), Bytes::copy_from_slice(&next.to_be_bytes()))];
            let staged = inner.store.stage_state(state, meta).await;
            finished.release();
            let staged = staged?;
            if staged.committed == Committed::Conflict {
                inner.metrics.conflict();
                conflicts += 1;
                if conflicts < inner.max_state_conflicts {
                    continue;
                }
                let e = HandlerError::transient("state kept changing under the handler").with_reason("state-conflict");
                return self.positioned_failure(&msg, position, attempts_before, probe, e);
            }
            if let Some(b) = &inner.breaker {
                b.success(probe);
            }
            let mut p = Processed::new(Disposition::Ack, Outcome::Handled, Some(position.to_owned()));
            p.output = output;
            p.emitted = emitted;
            p.durable = Some(staged.durable);
            return Ok(p);
        }
    }

    /// A failed attempt of a positioned message: no claim to release, no mark to keep
    /// (once past it, the watermark never hands it out again).
    fn positioned_failure(
        &self,
        msg: &Message,
        position: &str,
        attempts_before: u32,
        probe: bool,
        error: HandlerError,
    ) -> Result<Processed> {
        let inner = &*self.inner;
        let attempts = attempts_before + 1;
        let key = Some(position.to_owned());
        if error.kind() == ErrorKind::Permanent {
            self.breaker_neutral(probe);
            let mut p = self.dead_letter_now(msg, Some(position), error.reason(), error.message());
            if let Disposition::DeadLetter(d) = &mut p.disposition {
                d.attempts = attempts;
            }
            p.attempts = attempts;
            return Ok(p);
        }
        inner.metrics.retry_reason(error.reason());
        let key_hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(position);
        if let Some(pause) = inner.breaker.as_ref().and_then(|b| b.failure(key_hash, probe)) {
            let mut p = Processed::new(Disposition::Pause { after: pause }, Outcome::Paused, key);
            p.attempts = attempts_before;
            return Ok(p);
        }
        if attempts >= inner.retry.max_attempts() {
            let mut p = self.dead_letter_now(msg, Some(position), reasons::RETRIES_EXHAUSTED, error.message());
            if let Disposition::DeadLetter(d) = &mut p.disposition {
                d.attempts = attempts;
            }
            p.attempts = attempts;
            return Ok(p);
        }
        let after = inner.retry.delay(attempts, error.requested_retry_after());
        let mut p = Processed::new(Disposition::Retry { after }, Outcome::Retry, key);
        p.attempts = attempts;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use crate::message::Coordinates;
    use crate::store::{DedupStore, MemoryStore, StoreKey};
    use crate::{Context, Message, Outcome, Processor, handler_fn};

    #[tokio::test]
    async fn only_a_key_that_is_the_position_takes_the_watermark() {
        let store = std::sync::Arc::new(MemoryStore::new());
        let handler = handler_fn(|_m: Message, _c: Context| async { Ok(()) });
        let p = Processor::builder("c", handler).shared_store(store.clone()).build().unwrap();
        let at = |offset| Coordinates::partitioned("orders", 0, offset);
        // No key header: the key is the position, and the watermark is its done-record.
        let m = Message::builder("a").coordinates(at(5)).build();
        let done = p.process_positioned(m, "wm").await.unwrap().durable().await.unwrap();
        assert_eq!(done.outcome, Outcome::Handled);
        assert!(store.inspect(&StoreKey::new("c", "orders/0/5")).await.unwrap().is_none(), "no record for a position");
        assert_eq!(store.meta_get("wm").await.unwrap().unwrap().as_ref(), 6i64.to_be_bytes());
        // A key that starts like the position but is not it: an ordinary done-record.
        for key in ["orders-9", "orders/0/6x", "orders/0/5"] {
            let m = Message::builder("b").header("idempotency-key", key).coordinates(at(6)).build();
            let done = p.process_positioned(m, "wm").await.unwrap().durable().await.unwrap();
            assert_eq!(done.outcome, Outcome::Handled, "{key}");
            assert!(store.inspect(&StoreKey::new("c", key)).await.unwrap().is_some(), "{key} has its record");
        }
        assert_eq!(store.meta_get("wm").await.unwrap().unwrap().as_ref(), 6i64.to_be_bytes(), "the watermark stays");
    }
}
