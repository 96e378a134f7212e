//! The handler's own transaction: `ctx.postgres()` gives a handler the transaction its
//! done-record will commit in, so its own SQL, its `ctx.state()` writes and the record
//! commit together or not at all (the inbox of MassTransit and NServiceBus).
//!
//! Such a message commits alone, in its transaction, on a connection of its own pool
//! (not grouped with others): one commit, one flush of PostgreSQL's WAL, per message.

use std::ops::Deref;

use bytes::Bytes;
use deadpool_postgres::{ClientWrapper, Object};
use exactly_core::store::{Committed, StoreTransaction};
use exactly_core::{Context, Error, HandlerError, Result};
use tokio::sync::MappedMutexGuard;

use crate::complete::{Outcome, Write};
use crate::store::Shared;

/// The reason a message is dead-lettered with when its handler asks for
/// [`postgres`](PostgresContext::postgres) on a store that is not PostgreSQL.
pub const NO_POSTGRES_STORE: &str = "no-postgres-store";

/// `ctx.postgres()`: the handler's transaction on the PostgreSQL store.
///
/// ```no_run
/// use exactly_core::{handler_fn, Context, HandlerError, Message};
/// use exactly_postgres::PostgresContext;
///
/// let handler = handler_fn(|msg: Message, ctx: Context| async move {
///     let cents: i64 = msg.decode()?;
///     let db = ctx.postgres().await?;
///     db.execute("UPDATE accounts SET balance = balance - $1 WHERE id = $2", &[&cents, &ctx.message_key()])
///         .await?;
///     Ok::<_, HandlerError>(())
/// });
/// ```
pub trait PostgresContext {
    /// The transaction this message's done-record will commit in, begun on the first
    /// call (later calls give the same one). What the handler runs in it commits with the
    /// done-record, the `ctx.state()` writes and the emitted records, or not at all: a
    /// handler error, a crash, a lease taken over by another instance or a state conflict
    /// rolls it back. It cannot be committed or rolled back by the handler (a `COMMIT` or
    /// `ROLLBACK` sent as SQL is found at the commit, and the message dead-lettered with
    /// reason `transaction-ended`).
    ///
    /// # Errors
    /// No connection could be had (transient: the message is retried), or the consumer's
    /// store is not a [`PgStore`](crate::PgStore) (permanent, reason
    /// [`NO_POSTGRES_STORE`]).
    fn postgres(&self) -> impl Future<Output = Result<PgTransaction<'_>, HandlerError>> + Send;
}

impl PostgresContext for Context {
    async fn postgres(&self) -> Result<PgTransaction<'_>, HandlerError> {
        let tx = self.store_transaction().await.map_err(|e| {
            let transient = e.is_transient();
            let err = HandlerError::transient(e);
            if transient { err.with_reason(exactly_core::reasons::STORE_UNAVAILABLE) } else { err }
        })?;
        let not_postgres = || {
            HandlerError::permanent(
                NO_POSTGRES_STORE,
                "ctx.postgres() needs the PostgreSQL store (PgStore, engine = \"postgres\"); this consumer's store \
                 has no database transaction",
            )
        };
        let tx = tx.ok_or_else(not_postgres)?;
        let tx = MappedMutexGuard::try_map(tx, |t| t.downcast_mut::<HandlerTx>()).map_err(|_| not_postgres())?;
        Ok(PgTransaction { tx })
    }
}

/// A handler's transaction on the PostgreSQL store (from [`PostgresContext::postgres`]):
/// a [`tokio_postgres::Client`] (with deadpool's `prepare_cached`) whose statements run in
/// the message's transaction. Hold it only while running statements: other clones of the
/// context wait for it.
pub struct PgTransaction<'a> {
    tx: MappedMutexGuard<'a, HandlerTx>,
}

impl std::fmt::Debug for PgTransaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTransaction").field("txid", &self.tx.txid).finish()
    }
}

impl Deref for PgTransaction<'_> {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        self.tx.conn.client()
    }
}

/// What [`PgStore::begin`](exactly_core::DedupStore::begin) hands the context.
pub(crate) struct HandlerTx {
    conn: Conn,
    /// The transaction's id when it began: another one at the commit means the handler's
    /// SQL ended it.
    txid: i64,
}

/// A pooled connection inside a transaction. Dropped without [`Conn::clean`] (a handler
/// that failed, a run cancelled), it is rolled back, then goes back to the pool; if that
/// cannot be done it is closed (PostgreSQL rolls back what a closed session left open),
/// never returned to the pool inside a transaction.
struct Conn(Option<Object>);

impl Conn {
    fn client(&self) -> &Object {
        // Present until `clean` or `drop` take it.
        self.0.as_ref().unwrap_or_else(|| unreachable!("a transaction's connection is taken only at its end"))
    }

    /// The transaction ended (committed or rolled back): back to the pool.
    fn clean(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let Some(client) = self.0.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            drop(Object::take(client));
            return;
        };
        runtime.spawn(async move {
            // Closed, not pooled, if the rollback fails (a dead connection) or the task is
            // dropped before it is answered; never handed to another `Conn`, whose drop
            // would try again (a dead connection's rollback fails at once, for ever).
            let mut closing = Closing(Some(client));
            if let Some(c) = &closing.0
                && c.batch_execute("ROLLBACK").await.is_ok()
            {
                drop(closing.0.take());
            }
        });
    }
}

/// A connection closed when dropped, never returned to the pool.
struct Closing(Option<Object>);

impl Drop for Closing {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(Object::take(client));
        }
    }
}

/// Closes a connection instead of returning it to the pool.
fn close(conn: &mut Conn) {
    drop(Closing(conn.0.take()));
}

impl Shared {
    /// Begins a handler's transaction on a connection of the transactions' pool.
    pub(crate) async fn begin(&self) -> Result<StoreTransaction> {
        let db = |e| crate::error::db("begin", e);
        let client = self.transactions.get().await.map_err(|e| crate::error::pool("begin", e))?;
        let mut conn = Conn(Some(client));
        // One round trip: the transaction and its id.
        let answer = conn.client().simple_query("BEGIN; SELECT txid_current()").await.map_err(db)?;
        let txid = answer.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|t| t.parse::<i64>().ok()),
            _ => None,
        });
        let Some(txid) = txid else {
            close(&mut conn);
            return Err(Error::StoreIo { operation: "begin", source: "txid_current() gave no transaction id".into() });
        };
        Ok(Box::new(HandlerTx { conn, txid }))
    }

    /// Commits `write` in the handler's transaction `tx`, or rolls `tx` back if it does
    /// not take effect. The meta values of a state write are positions that only move
    /// forward: one not past the stored value is fenced.
    pub(crate) async fn commit_in(&self, tx: StoreTransaction, write: Write) -> Result<Committed> {
        let HandlerTx { conn, txid } = *tx.downcast::<HandlerTx>().map_err(|_| Error::StoreIo {
            operation: "commit",
            source: "the transaction was not begun by this PostgreSQL store".into(),
        })?;
        let (write, positions) = match write {
            Write::State { state, meta } => (Write::State { state, meta: Vec::new() }, meta),
            complete => (complete, Vec::new()),
        };
        let committed = self.commit_handler_tx(&conn, txid, &write, &positions).await;
        if let Write::Complete(c) = &write {
            self.ended(1);
            if matches!(committed, Ok(Committed::Ok)) {
                self.remember(c);
            }
        }
        match committed {
            Ok(Committed::Ok) => {
                self.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                conn.clean();
                Ok(Committed::Ok)
            }
            // Rolled back when `conn` is dropped.
            Ok(other) => Ok(other),
            Err(Outcome::NotCommitted(e) | Outcome::Unknown(e)) => Err(e),
        }
    }

    async fn commit_handler_tx(
        &self,
        conn: &Conn,
        txid: i64,
        write: &Write,
        positions: &[(String, Bytes)],
    ) -> Result<Committed, Outcome> {
        let db = |e| crate::error::db("commit", e);
        let client = conn.client();
        // Before anything is written: still the transaction the handler was given, and
        // not aborted by a statement of the handler that failed.
        let stmt = client.prepare_cached("SELECT txid_current()").await.map_err(handler_tx_error)?;
        let now: i64 = client.query_one(&stmt, &[]).await.map_err(handler_tx_error)?.get(0);
        if now != txid {
            return Err(Outcome::NotCommitted(Error::HandlerTransaction(
                "the handler ended it itself (a COMMIT or ROLLBACK in its SQL), so what it wrote before may be \
                 committed without the done-record; leave committing to exactly"
                    .into(),
            )));
        }
        if !positions.is_empty() {
            let (names, values): (Vec<&str>, Vec<&[u8]>) =
                positions.iter().map(|(n, v)| (n.as_str(), v.as_ref())).unzip();
            let stmt = client.prepare_cached(&self.sql.meta_advance).await.map_err(db)?;
            if client.query(&stmt, &[&names, &values]).await.map_err(db)?.len() < names.len() {
                return Ok(Committed::Fenced);
            }
        }
        let (_, decided) = self.decide(client, &[write], Some(txid)).await?;
        let committed = decided.first().copied().unwrap_or(Committed::Fenced);
        if committed != Committed::Ok {
            return Ok(committed);
        }
        match client.batch_execute("COMMIT").await {
            Ok(()) => Ok(Committed::Ok),
            Err(e) => self.settle_lost_commit(txid, db(e)).await.map(|()| Committed::Ok),
        }
    }
}

/// A failure of the first statement after the handler's: an aborted transaction (a
/// statement of the handler failed, and the handler went on) is the handler's fault.
fn handler_tx_error(e: tokio_postgres::Error) -> Outcome {
    if e.code() == Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION) {
        return Outcome::NotCommitted(Error::HandlerTransaction(
            "a statement of the handler failed and aborted it, but the handler returned Ok; return the error \
             instead (a transient one is retried)"
                .into(),
        ));
    }
    Outcome::NotCommitted(crate::error::db("commit", e))
}
