//! An in-memory store whose writes become durable only when the test says so.

use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use crate::Result;
use crate::store::local::{AppliedWrite, BackendStats, KvBackend, OnDurable, WriteBatch};
use crate::store::{Durable, FencingToken, LocalStore, MemoryBackend};

type Waiting = (tokio::sync::oneshot::Sender<Result<()>>, Option<OnDurable>);

/// The in-memory backend, holding every write's durability until [`GatedStore::open_gate`].
#[derive(Default)]
pub struct Gated {
    inner: MemoryBackend,
    waiting: Mutex<Vec<Waiting>>,
}

impl std::fmt::Debug for Gated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gated")
    }
}

/// An in-memory store whose writes are applied at once but become durable only when the
/// test calls [`open_gate`](LocalStore::open_gate): for tests of what an adapter or a
/// handler does while a done-record is on its way to disk (a copy of the message must
/// wait, nothing may be acknowledged).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), exactly_core::Error> {
/// use exactly_core::testing::GatedStore;
/// use exactly_core::{handler_fn, Context, Message, Outcome, Processor};
///
/// let store = std::sync::Arc::new(GatedStore::default());
/// let p = Processor::builder("c", handler_fn(|_m: Message, _c: Context| async { Ok(()) }))
///     .shared_store(store.clone())
///     .build()?;
/// let staged = p.process_staged(Message::builder("x").header("idempotency-key", "k").build()).await?;
/// assert!(!staged.is_durable());
/// assert_eq!(store.open_gate(), 1);
/// assert_eq!(staged.durable().await?.outcome, Outcome::Handled);
/// # Ok(()) }
/// ```
pub type GatedStore = LocalStore<Gated>;

impl Default for LocalStore<Gated> {
    fn default() -> Self {
        LocalStore::with_backend(Gated::default(), crate::store::DEFAULT_BUCKET_WIDTH_MS)
    }
}

impl LocalStore<Gated> {
    /// Makes every write so far durable; returns how many there were.
    pub fn open_gate(&self) -> usize {
        let waiting = std::mem::take(&mut *self.backend.waiting.lock().unwrap_or_else(|p| p.into_inner()));
        let n = waiting.len();
        for (tx, on_durable) in waiting {
            if let Some(f) = on_durable {
                f(true);
            }
            let _ = tx.send(Ok(()));
        }
        n
    }
}

#[async_trait]
impl KvBackend for Gated {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.inner.get(key)
    }
    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Bytes)>> {
        self.inner.range(from, to, limit)
    }
    async fn stage(&self, batch: WriteBatch, on_durable: Option<OnDurable>) -> Result<AppliedWrite> {
        let applied = self.inner.stage(batch, None).await?.applied;
        let (tx, rx) = tokio::sync::oneshot::channel();
        if applied {
            self.waiting.lock().unwrap_or_else(|p| p.into_inner()).push((tx, on_durable));
        }
        Ok(AppliedWrite { applied, durable: Durable::pending(rx) })
    }
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn epoch(&self) -> u64 {
        self.inner.epoch()
    }
    fn next_token(&self) -> Result<FencingToken> {
        self.inner.next_token()
    }
    fn stats(&self) -> BackendStats {
        self.inner.stats()
    }
}
