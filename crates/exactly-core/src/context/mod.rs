//! What a handler knows about the message it handles.

mod locks;
mod outbound;
mod state;

pub(crate) use locks::StateLocks;

pub use outbound::OutboundRecord;
pub use state::State;
pub(crate) use state::{StateTx, too_large};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Coordinates;
use crate::store::{DedupStore, FencingToken};

/// The handler's view of one attempt: the idempotency key to forward downstream, the
/// attempt number, the fencing token, the coordinates, and transactional state.
///
/// Cheap to clone; clones share the same state transaction.
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    consumer: Arc<str>,
    key: String,
    /// Whether the message had a key (the key itself may be empty).
    keyed: bool,
    /// `consumer:key`, made the first time a handler asks for it.
    forwarded: std::sync::OnceLock<String>,
    attempt: u32,
    token: FencingToken,
    coordinates: Coordinates,
    store: Arc<dyn DedupStore>,
    locks: Arc<StateLocks>,
    lock_timeout: Duration,
    state: tokio::sync::Mutex<StateTx>,
    emitted: Mutex<Vec<OutboundRecord>>,
}

/// What a finished run leaves to commit.
pub(crate) struct Finished {
    pub(crate) state: crate::store::StateChanges,
    pub(crate) emitted: Vec<OutboundRecord>,
    locks: Vec<locks::KeyLock>,
    table: Arc<StateLocks>,
}

impl Finished {
    /// Releases the run's state locks; call once its commit is over.
    pub(crate) fn release(self) {
        self.table.release(self.locks);
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("consumer", &self.inner.consumer)
            .field("key", &self.inner.key)
            .field("attempt", &self.inner.attempt)
            .field("token", &self.inner.token)
            .field("coordinates", &self.inner.coordinates)
            .finish()
    }
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        consumer: Arc<str>,
        key: Option<&str>,
        attempt: u32,
        token: FencingToken,
        coordinates: Coordinates,
        store: Arc<dyn DedupStore>,
        locks: Arc<StateLocks>,
        lock_timeout: Duration,
    ) -> Self {
        let (key, keyed) = match key {
            Some(k) => (k.to_owned(), true),
            None => (String::new(), false),
        };
        Self {
            inner: Arc::new(Inner {
                consumer,
                key,
                keyed,
                forwarded: std::sync::OnceLock::new(),
                attempt,
                token,
                coordinates,
                store,
                locks,
                lock_timeout,
                state: tokio::sync::Mutex::new(StateTx::default()),
                emitted: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A context for calling a handler directly in a unit test, over a fresh in-memory
    /// store: key `key`, first attempt.
    pub fn for_test(consumer: &str, key: &str) -> Self {
        Self::new(
            consumer.into(),
            Some(key),
            1,
            1,
            Coordinates::new("test"),
            Arc::new(crate::MemoryStore::new()),
            Arc::new(StateLocks::new()),
            Duration::from_secs(5),
        )
    }

    /// The key to send to downstream APIs that deduplicate (an HTTP `Idempotency-Key`
    /// header): `consumer:key`, so two consumers of one message are two operations.
    /// Empty when the message had no key and the policy let it through unprotected.
    pub fn idempotency_key(&self) -> &str {
        let inner = &self.inner;
        inner
            .forwarded
            .get_or_init(|| if inner.keyed { format!("{}:{}", inner.consumer, inner.key) } else { String::new() })
    }

    /// The message's key, without the consumer namespace.
    pub fn message_key(&self) -> &str {
        &self.inner.key
    }

    /// The consumer (key namespace) running this handler.
    pub fn consumer(&self) -> &str {
        &self.inner.consumer
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The fencing token of this claim: larger for every later claim of the key. Pass it
    /// to a downstream store that can reject writes with a token lower than the highest
    /// it has seen, and a holder whose lease was taken over cannot overwrite its
    /// successor.
    pub fn fencing_token(&self) -> FencingToken {
        self.inner.token
    }

    /// Where the message came from.
    pub fn coordinates(&self) -> &Coordinates {
        &self.inner.coordinates
    }

    /// Transactional state, committed with the done-record.
    pub fn state(&self) -> State<'_> {
        State { inner: &self.inner }
    }

    /// Emits a record for the adapter to publish (see [`OutboundRecord`]).
    pub fn emit(&self, record: OutboundRecord) {
        self.inner.emitted.lock().unwrap_or_else(|p| p.into_inner()).push(record);
    }

    /// Takes the state changes, emitted records and locks of this run.
    pub(crate) async fn finish(&self) -> Finished {
        let tx = std::mem::take(&mut *self.inner.state.lock().await);
        let emitted = std::mem::take(&mut *self.inner.emitted.lock().unwrap_or_else(|p| p.into_inner()));
        let (state, locks) = tx.into_parts();
        Finished { state, emitted, locks, table: self.inner.locks.clone() }
    }

    /// The records emitted so far (for tests of handlers).
    pub fn emitted(&self) -> Vec<OutboundRecord> {
        self.inner.emitted.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
