//! The claim/complete protocol over an ordered key-value backend: a store one process
//! owns, its claims in memory ([`LeaseTable`]), its records and state on a
//! [`KvBackend`] (the write-ahead log over an engine, or memory).

mod admin;
pub(crate) mod backend;
mod meta;
mod protocol;

use std::fmt;

use bytes::Bytes;

pub use self::backend::Durable;
pub(crate) use self::backend::{AppliedWrite, BackendStats, KvBackend, OnDurable, WriteBatch, expiry_index_ops};
pub(crate) use self::meta::{check_format, open_meta};
use super::layout::{self, StoreKey};
use super::leases::{Ended, Entry, Held, LeaseTable};
use super::record::{Record, RecordState};
use super::{Claim, ClaimRequest, Lease};
use crate::Result;
use crate::clock::Millis;

/// A [`DedupStore`](super::DedupStore) for one process: claims in memory, records and
/// state on a key-value backend private to this crate. [`SledStore`](crate::SledStore),
/// [`MemoryStore`](super::MemoryStore) and the other local stores are this type over
/// their backends.
pub struct LocalStore<B> {
    pub(crate) backend: B,
    pub(crate) leases: std::sync::Arc<LeaseTable>,
    bucket_width: Millis,
    sweeper: crate::store::SweeperSlot,
}

/// How long a claim waits for another delivery's claim of the same key to end (its
/// handler to finish and its done-record to be durable) before it answers `Busy` and
/// lets the caller retry later.
#[cfg(not(exactly_loom))]
const HOLDER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What one look at a key found.
enum Look {
    Answer(Claim),
    /// Another delivery holds the key (until `lease_until`) or is completing it.
    Wait {
        #[cfg_attr(exactly_loom, allow(dead_code))]
        lease_until: Millis,
        ended: Ended,
    },
}

impl<B: fmt::Debug> fmt::Debug for LocalStore<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStore")
            .field("backend", &self.backend)
            .field("bucket_width_ms", &self.bucket_width)
            .finish()
    }
}

/// The default width of an expiry bucket: one hour.
pub const DEFAULT_BUCKET_WIDTH_MS: Millis = 3_600_000;

impl<B: KvBackend> LocalStore<B> {
    /// A store over a backend, with expiry buckets `bucket_width` milliseconds wide. (For
    /// this crate and its loom models: backends are private to it.)
    #[doc(hidden)]
    pub fn with_backend(backend: B, bucket_width: Millis) -> Self {
        Self {
            backend,
            leases: std::sync::Arc::new(LeaseTable::new()),
            bucket_width: bucket_width.max(1),
            sweeper: crate::store::SweeperSlot::default(),
        }
    }

    /// The backend.
    #[doc(hidden)]
    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn record(&self, key: &StoreKey) -> Result<Option<Record>> {
        self.backend.get(&layout::record_key(key))?.map(|raw| Record::decode(key, &raw)).transpose()
    }

    fn fresh(
        &self,
        attempts: u32,
        first_error: Option<String>,
        last_error: Option<String>,
        orphaned: bool,
    ) -> Result<Lease> {
        Ok(Lease { token: self.backend.next_token()?, attempts, first_error, last_error, orphaned })
    }
}

impl<B: KvBackend> LocalStore<B> {
    /// One look at the key: the answer, or what to wait for while another delivery
    /// holds it or its completion is being committed.
    async fn claim_once(&self, req: ClaimRequest<'_>) -> Result<Look> {
        let lease = {
            let mut shard = self.leases.lock(req.key);
            let lease = match shard.get_mut(req.key) {
                Some(Entry::Completing(h)) => {
                    return Ok(Look::Wait { lease_until: h.lease_until, ended: h.until_ended() });
                }
                Some(Entry::Held(h)) if h.lease_until > req.now => {
                    return Ok(Look::Wait { lease_until: h.lease_until, ended: h.until_ended() });
                }
                Some(Entry::Held(h)) => {
                    tracing::warn!(key = %req.key, token = h.token, "lease expired; taking the key over");
                    // Whoever waits for the old claim looks again (and waits for ours).
                    h.wake();
                    self.fresh(h.attempts, h.first_error.clone(), h.last_error.clone(), true)?
                }
                Some(Entry::Idle { attempts, first_error, last_error }) => {
                    self.fresh(*attempts, first_error.clone(), last_error.clone(), false)?
                }
                None => match self.record(req.key)? {
                    None => self.fresh(0, None, None, false)?,
                    Some(r) => match r.state {
                        RecordState::Done { output, emitted } => {
                            return Ok(Look::Answer(if r.fingerprint == req.fingerprint {
                                Claim::Done { output, emitted, origin: r.origin }
                            } else {
                                Claim::Conflict { stored: r.fingerprint }
                            }));
                        }
                        RecordState::DeadLettered { reason } if !req.redrive => {
                            return Ok(Look::Answer(Claim::DeadLettered { reason }));
                        }
                        RecordState::DeadLettered { .. } => self.fresh(0, None, None, false)?,
                        RecordState::InFlight { epoch, token } => {
                            tracing::warn!(key = %req.key, token, epoch, "found the claim of a crashed holder");
                            self.fresh(r.attempts, None, None, true)?
                        }
                    },
                },
            };
            shard.insert(
                req.key.clone(),
                Entry::Held(Held {
                    token: lease.token,
                    lease_until: req.lease_until,
                    attempts: lease.attempts,
                    first_error: lease.first_error.clone(),
                    last_error: lease.last_error.clone(),
                    durable: req.durable,
                    waiters: None,
                }),
            );
            lease
        };
        if req.durable {
            let record = Record {
                state: RecordState::InFlight { token: lease.token, epoch: self.backend.epoch() },
                fingerprint: req.fingerprint,
                attempts: lease.attempts,
                updated_at: req.now,
                expires_at: 0,
                origin: None,
                wrote: Vec::new(),
            };
            let batch = WriteBatch {
                ops: vec![(layout::record_key(req.key), Some(Bytes::from(record.encode()?)))],
                ..WriteBatch::default()
            };
            if let Err(e) = self.backend.commit(batch).await {
                let mut shard = self.leases.lock(req.key);
                if matches!(shard.get(req.key), Some(Entry::Held(h)) if h.token == lease.token)
                    && let Some(entry) = shard.remove(req.key)
                {
                    entry.wake();
                }
                return Err(e);
            }
        }
        Ok(Look::Answer(Claim::Acquired(lease)))
    }
}
