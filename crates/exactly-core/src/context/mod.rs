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
use crate::store::{DedupStore, FencingToken, StoreTransaction};

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
    transaction: tokio::sync::Mutex<Transaction>,
}

/// The store transaction of one run: begun when the handler first asks for it, taken by
/// the commit when the run is over.
enum Transaction {
    NotBegun,
    Open(StoreTransaction),
    Finished,
}

/// What a finished run leaves to commit.
pub(crate) struct Finished {
    pub(crate) state: crate::store::StateChanges,
    pub(crate) emitted: Vec<OutboundRecord>,
    /// The store transaction the handler wrote in, if it asked for one.
    pub(crate) transaction: Option<StoreTransaction>,
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
                transaction: tokio::sync::Mutex::new(Transaction::NotBegun),
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

    /// The transaction this run's done-record will commit in, begun on first use, for a
    /// store crate's typed accessor (`exactly_postgres::PostgresContext::postgres`);
    /// `Ok(None)` if the store has none. Writes made in it commit with the done-record,
    /// the state writes and the emitted records, or not at all.
    ///
    /// # Errors
    /// The store could not begin one (transient: the message is retried), or the run is
    /// over (a handler's clone of the context used after it returned).
    pub async fn store_transaction(
        &self,
    ) -> crate::Result<Option<tokio::sync::MappedMutexGuard<'_, StoreTransaction>>> {
        let mut slot = self.inner.transaction.lock().await;
        match &*slot {
            Transaction::Open(_) => {}
            Transaction::NotBegun => match self.inner.store.begin().await? {
                Some(tx) => *slot = Transaction::Open(tx),
                None => return Ok(None),
            },
            Transaction::Finished => {
                return Err(crate::Error::StoreIo {
                    operation: "begin",
                    source: "the handler's run is over: its transaction was committed or rolled back".into(),
                });
            }
        }
        Ok(tokio::sync::MutexGuard::try_map(slot, |t| match t {
            Transaction::Open(tx) => Some(tx),
            _ => None,
        })
        .ok())
    }

    /// Takes the state changes, emitted records, transaction and locks of this run.
    pub(crate) async fn finish(&self) -> Finished {
        let tx = std::mem::take(&mut *self.inner.state.lock().await);
        let emitted = std::mem::take(&mut *self.inner.emitted.lock().unwrap_or_else(|p| p.into_inner()));
        let transaction = match std::mem::replace(&mut *self.inner.transaction.lock().await, Transaction::Finished) {
            Transaction::Open(t) => Some(t),
            _ => None,
        };
        let (state, locks) = tx.into_parts();
        Finished { state, emitted, transaction, locks, table: self.inner.locks.clone() }
    }

    /// The records emitted so far (for tests of handlers).
    pub fn emitted(&self) -> Vec<OutboundRecord> {
        self.inner.emitted.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
