//! Step 4: attempts of the handler, through its layers, while the lease is renewed;
//! the outcome committed, the handler run again if state it read changed meanwhile.

use bytes::Bytes;

use super::commit::{Commit, Written, stamp};
use super::layers::HandlerRequest;
use super::{BUSY_MIN, Processor};
use crate::clock::duration_millis;
use crate::store::Committed;
use crate::{Context, CrashPoint, Disposition, HandlerError, Message, OutboundRecord, Outcome, Processed, Result};

impl Processor {
    /// Runs the handler until its outcome is committed or a failure is decided.
    pub(super) async fn attempts(
        &self,
        msg: &Message,
        commit: &Commit<'_>,
        attempts_before: u32,
        probe: bool,
    ) -> Result<Processed> {
        let inner = &*self.inner;
        let key = commit.key();
        let attempt = attempts_before + 1;
        let mut conflicts = 0;
        let error = loop {
            self.crash_point(CrashPoint::BeforeHandler, key)?;
            let ctx = self.context(key, attempt, commit.token(), msg);
            let result = self.call(msg, ctx.clone(), commit).await;
            self.crash_point(CrashPoint::AfterHandler, key)?;
            let mut finished = ctx.finish().await;
            let output = match result.and_then(|o| self.fits(o, &finished.emitted)) {
                Ok(output) => output,
                Err(e) => {
                    finished.release();
                    break e;
                }
            };
            let emitted = std::mem::take(&mut finished.emitted);
            let emitted = match key {
                Some(k) => stamp(emitted, &inner.consumer, k),
                None => emitted,
            };
            let state = std::mem::take(&mut finished.state);
            let written = Written { output: output.clone(), emitted: emitted.clone(), state };
            let staged = self.commit(msg, commit, attempt, written, finished.transaction.take()).await;
            // Released as soon as the writes are applied: a later run that reads them
            // commits after them, and commits become durable in order (docs/STORE.md).
            finished.release();
            let staged = match staged {
                Ok(staged) => staged,
                // Nothing was decided: retried later, the claim released if it can be.
                Err(e) if e.is_transient() => break crate::handler::store_error(e),
                Err(e @ crate::Error::HandlerTransaction(_)) => {
                    break HandlerError::permanent(crate::reasons::TRANSACTION_FAILED, e);
                }
                Err(e) => return Err(e),
            };
            match staged.committed {
                Committed::Ok => {
                    if let Some(b) = &inner.breaker {
                        if let Some(open) = b.success(probe) {
                            inner.metrics.breaker_closed(open);
                        }
                        inner.metrics.breaker(0.0);
                    }
                    let mut p = Processed::new(Disposition::Ack, Outcome::Handled, key.map(str::to_owned));
                    p.output = output;
                    if !inner.store.keeps_outbox() {
                        p.emitted = emitted;
                    }
                    p.durable = Some(staged.durable);
                    return Ok(p);
                }
                Committed::Conflict => {
                    inner.metrics.conflict();
                    conflicts += 1;
                    if conflicts < inner.max_state_conflicts {
                        tracing::debug!(conflicts, "state changed under the handler; running it again");
                        continue;
                    }
                    break HandlerError::transient(format!("state kept changing under the handler ({conflicts} runs)"))
                        .with_reason(crate::reasons::STATE_CONFLICT);
                }
                // A position committed before (by this instance or another that had the
                // partition): the handler's transaction rolled back, the record is done.
                Committed::Fenced if matches!(commit, Commit::Position { .. }) => {
                    self.breaker_neutral(probe);
                    tracing::info!("the position was committed before; the handler's writes are rolled back");
                    inner.metrics.duplicate(crate::metrics::AnsweredBy::Watermark);
                    return Ok(Processed::new(Disposition::Ack, Outcome::Duplicate, key.map(str::to_owned)));
                }
                Committed::Fenced => {
                    self.breaker_neutral(probe);
                    tracing::warn!("the key was taken over while the handler ran; its result is discarded");
                    let retry = Disposition::Retry { after: BUSY_MIN };
                    return Ok(Processed::new(retry, Outcome::Busy, key.map(str::to_owned)));
                }
            }
        };
        self.verdict(msg, commit, attempts_before, probe, error).await
    }

    /// One call of the handler stack; a claim's lease is renewed meanwhile.
    async fn call(&self, msg: &Message, ctx: Context, commit: &Commit<'_>) -> Result<Option<Bytes>, HandlerError> {
        let inner = &*self.inner;
        let call = inner.stack.call(HandlerRequest { message: msg.clone(), context: ctx });
        let Commit::Record(claimed) = commit else { return call.await };
        tokio::pin!(call);
        // A handler that finishes on its first poll needs no heartbeat timer.
        if let Some(r) = futures_util::FutureExt::now_or_never(call.as_mut()) {
            return r;
        }
        let every = inner.lease / 3;
        let lease_ms = duration_millis(inner.lease);
        let mut lost = false;
        loop {
            tokio::select! {
                biased;
                r = &mut call => return r,
                () = tokio::time::sleep(every) => {
                    let until = inner.clock.now() + lease_ms;
                    match inner.store.renew(&claimed.skey, claimed.lease.token, until).await {
                        Ok(true) => {}
                        Ok(false) if !lost => {
                            lost = true;
                            tracing::warn!("lost the lease while the handler runs; its result will be discarded");
                        }
                        Ok(false) => {}
                        // Unknown: keep going; a lost claim shows at the completion.
                        Err(e) => tracing::warn!(error = %e, "renewing the lease failed"),
                    }
                }
            }
        }
    }

    /// The context of one attempt.
    pub(super) fn context(&self, key: Option<&str>, attempt: u32, token: u64, msg: &Message) -> Context {
        let inner = &*self.inner;
        Context::new(
            inner.consumer.clone(),
            key,
            attempt,
            token,
            msg.coordinates().clone(),
            inner.store.clone(),
            inner.locks.clone(),
            inner.lock_timeout,
        )
    }

    /// The output, if it and the emitted records fit in a done-record of the store.
    fn fits(&self, output: Option<Bytes>, emitted: &[OutboundRecord]) -> Result<Option<Bytes>, HandlerError> {
        let size = output.as_ref().map_or(0, Bytes::len)
            + emitted
                .iter()
                .map(|r| {
                    r.payload.len()
                        + r.destination.len()
                        + r.key.as_ref().map_or(0, Bytes::len)
                        + r.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
                })
                .sum::<usize>();
        let max = self.inner.store.limits().max_value;
        if size > max {
            return Err(crate::context::too_large(format!(
                "the output and emitted records are {size} bytes; the store takes at most {max}"
            )));
        }
        Ok(output)
    }
}
