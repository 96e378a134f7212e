//! How an attempt's outcome is committed: the one thing that differs between deliveries.

use bytes::Bytes;

use super::Processor;
use crate::clock::duration_millis;
use crate::store::{
    Completion, FencingToken, Final, Lease, StagedCompletion, StateChanges, StoreKey, StoreTransaction,
};
use crate::{Fingerprint, Message, OutboundRecord, Result};

/// A key held under a claim.
#[derive(Debug)]
pub(crate) struct Claimed {
    pub(crate) key: String,
    pub(crate) skey: StoreKey,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) lease: Lease,
}

/// Where the outcome of a successful attempt goes.
#[derive(Debug)]
pub(crate) enum Commit<'a> {
    /// A done-record under the claim (with the state writes), fenced by its token.
    Record(Claimed),
    /// The partition's watermark (a record keyed by its own position, handed out in
    /// order): the state writes and the next position, atomically.
    Position { key: String, watermark: &'a str, next: i64 },
    /// The state writes alone (a message without a key, let through unprotected).
    State,
    /// Nothing: the key could not be claimed (the store was out of reach); only a failure
    /// is ever decided for it.
    Unclaimed(String),
}

impl Commit<'_> {
    /// The message's key, when it has one.
    pub(crate) fn key(&self) -> Option<&str> {
        match self {
            Commit::Record(c) => Some(&c.key),
            Commit::Position { key, .. } | Commit::Unclaimed(key) => Some(key),
            Commit::State => None,
        }
    }

    /// The claim's fencing token (0 without a claim).
    pub(crate) fn token(&self) -> FencingToken {
        match self {
            Commit::Record(c) => c.lease.token,
            _ => 0,
        }
    }
}

/// What a successful attempt wrote.
pub(crate) struct Written {
    pub(crate) output: Option<Bytes>,
    pub(crate) emitted: Vec<OutboundRecord>,
    pub(crate) state: StateChanges,
}

impl Processor {
    /// Commits a successful attempt's output, emitted records and state, in the store
    /// transaction the handler wrote in, if it asked for one.
    pub(super) async fn commit(
        &self,
        msg: &Message,
        commit: &Commit<'_>,
        attempt: u32,
        written: Written,
        tx: Option<StoreTransaction>,
    ) -> Result<StagedCompletion> {
        let inner = &*self.inner;
        let store = &inner.store;
        let Written { output, emitted, state } = written;
        match commit {
            Commit::Record(c) => {
                let now = inner.clock.now();
                let completion = Completion {
                    key: c.skey.clone(),
                    token: c.lease.token,
                    fingerprint: c.fingerprint,
                    attempts: attempt,
                    now,
                    origin: origin_of(msg),
                    outcome: Final::Done { output, emitted },
                    expires_at: now + duration_millis(inner.retention),
                    state,
                };
                match tx {
                    Some(tx) => store.complete_in(tx, completion).await,
                    None => store.complete_staged(completion).await,
                }
            }
            Commit::Position { watermark, next, .. } => {
                let meta = vec![((*watermark).to_owned(), Bytes::copy_from_slice(&next.to_be_bytes()))];
                match tx {
                    Some(tx) => store.stage_state_in(tx, state, meta).await,
                    None => store.stage_state(state, meta).await,
                }
            }
            Commit::State => match tx {
                Some(tx) => store.stage_state_in(tx, state, Vec::new()).await,
                None => store.stage_state(state, Vec::new()).await,
            },
            Commit::Unclaimed(_) => Err(crate::Error::StoreUnavailable {
                operation: "complete",
                reason: "the key was never claimed".into(),
            }),
        }
    }
}

/// Whether `key` is the message's position (`topic/partition/offset`): only a key that
/// starts with the source's name can be, so others skip writing the position out.
pub(crate) fn is_position(msg: &Message, key: &str) -> bool {
    key.starts_with(msg.coordinates().source.as_str()) && origin_of(msg).is_some_and(|o| o == key)
}

/// The message's position (`topic/partition/offset`), when its broker has positions.
pub(crate) fn origin_of(msg: &Message) -> Option<String> {
    use std::fmt::Write as _;
    let c = msg.coordinates();
    c.offset?;
    // Sized for `topic/partition/offset` up front: `to_string` grows it piece by piece.
    let mut origin = String::with_capacity(c.source.len() + 32);
    write!(origin, "{c}").ok()?;
    Some(origin)
}

/// Gives each emitted record an `idempotency-key` header derived from the source key, so
/// a downstream consumer can drop the copies a redelivery publishes again.
pub(crate) fn stamp(mut emitted: Vec<OutboundRecord>, consumer: &str, key: &str) -> Vec<OutboundRecord> {
    for (i, r) in emitted.iter_mut().enumerate() {
        if r.header_value(crate::IDEMPOTENCY_KEY_HEADER).is_none() {
            r.headers.push((crate::IDEMPOTENCY_KEY_HEADER.into(), Bytes::from(format!("{consumer}:{key}:{i}"))));
        }
    }
    emitted
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
