//! The outbox's relay: publishes the records handlers emitted, committed with their
//! done-records, and deletes them once the broker has confirmed them.
//!
//! One relay works at a time across every instance (an advisory lock held for the
//! transaction of each pass), so records go out in the order they were written. A pass
//! takes the oldest records, publishes them, waits for the broker's confirmations, then
//! deletes them and commits. A crash, a lost connection or a failed delete after the
//! publish leaves them in the table: the next pass publishes them again, each copy with
//! the same `idempotency-key` header, which a deduplicating consumer drops.

use std::sync::Arc;
use std::time::Duration;

use exactly_core::publish::Publish;
use exactly_core::{Error, OutboundRecord, Result};

use crate::store::{PgStore, Shared};

/// What one pass of a [`Relay`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayPass {
    /// Another instance's relay holds the outbox.
    Standby,
    /// This many records were published and deleted (0: the outbox was empty).
    Published(usize),
}

/// Publishes a [`PgStore`]'s outbox (see [`PgStoreBuilder::outbox`](crate::PgStoreBuilder::outbox)).
///
/// ```no_run
/// # async fn run(store: exactly_postgres::PgStore, publisher: impl exactly_core::publish::Publish) -> exactly_core::Result<()> {
/// let relay = store.relay(publisher);
/// relay.run(async { let _ = tokio::signal::ctrl_c().await; }).await
/// # }
/// ```
///
/// Metrics (by `schema`): `exactly_outbox_published_total`, `exactly_outbox_backlog`
/// (records waiting), `exactly_outbox_lag_seconds` (age of the oldest waiting record),
/// `exactly_outbox_publish_failures_total`.
#[derive(Debug)]
pub struct Relay {
    shared: Arc<Shared>,
    publisher: Arc<dyn Publish>,
    batch: usize,
    poll: Duration,
    schema: String,
}

impl PgStore {
    /// A relay of this store's outbox, publishing with `publisher`.
    pub fn relay(&self, publisher: impl Publish) -> Relay {
        Relay {
            shared: self.shared.clone(),
            publisher: Arc::new(publisher),
            batch: 256,
            poll: Duration::from_millis(100),
            schema: self.shared.schema.clone(),
        }
    }
}

impl Relay {
    /// The most records one pass publishes (default 256).
    pub fn batch(mut self, records: usize) -> Self {
        self.batch = records.max(1);
        self
    }

    /// How long an idle relay (the outbox empty, or another instance relaying) waits
    /// before it looks again (default 100 ms): the added latency of a record's publish.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// Relays until `stop` resolves; a pass in progress finishes first. A failing
    /// database or broker is logged and tried again, backing off up to 5 s.
    pub async fn run(&self, stop: impl Future<Output = ()>) -> Result<()> {
        tokio::pin!(stop);
        let mut failures = 0u32;
        loop {
            let wait = match self.relay_once().await {
                Ok(RelayPass::Published(n)) if n == self.batch => {
                    failures = 0;
                    Duration::ZERO
                }
                Ok(_) => {
                    failures = 0;
                    self.poll
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, failures, "the outbox relay's pass failed; trying again");
                    (self.poll * 2u32.saturating_pow(failures.min(6))).min(Duration::from_secs(5))
                }
            };
            tokio::select! {
                biased;
                () = &mut stop => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass: if no other relay holds the outbox, publishes its oldest records (up to
    /// the batch), waits for the broker, deletes them and commits.
    pub async fn relay_once(&self) -> Result<RelayPass> {
        let db = |e| crate::error::db("relay the outbox", e);
        let sql = &self.shared.sql;
        let mut client = self.shared.relay.get().await.map_err(|e| crate::error::pool("relay the outbox", e))?;
        let tx = client.transaction().await.map_err(db)?;
        let lock = tx.prepare_cached(&sql.relay_lock).await.map_err(db)?;
        if !tx.query_one(&lock, &[]).await.map_err(db)?.get::<_, bool>(0) {
            return Ok(RelayPass::Standby);
        }
        let take = tx.prepare_cached(&sql.outbox_take).await.map_err(db)?;
        let limit = i64::try_from(self.batch).unwrap_or(i64::MAX);
        let rows = tx.query(&take, &[&limit]).await.map_err(db)?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.get(0);
            let raw: &[u8] = row.get(1);
            let record: OutboundRecord = postcard::from_bytes(raw).map_err(|e| Error::StoreCorrupt {
                key: format!("outbox #{id}"),
                reason: format!("the record does not decode: {e}"),
            })?;
            ids.push(id);
            records.push(record);
        }
        if !records.is_empty() {
            if let Err(e) = self.publisher.publish(&records).await {
                metrics::counter!("exactly_outbox_publish_failures_total", "schema" => self.schema.clone())
                    .increment(1);
                return Err(Error::StoreUnavailable { operation: "relay the outbox", reason: e.to_string() });
            }
            let delete = tx.prepare_cached(&sql.outbox_delete).await.map_err(db)?;
            tx.execute(&delete, &[&ids]).await.map_err(db)?;
        }
        let backlog = tx.prepare_cached(&sql.outbox_backlog).await.map_err(db)?;
        let row = tx.query_one(&backlog, &[]).await.map_err(db)?;
        let (waiting, oldest): (i64, Option<i64>) = (row.get(0), row.get(1));
        // A commit whose answer is lost publishes the records again: harmless, by their keys.
        tx.commit().await.map_err(db)?;
        let labels = [("schema", self.schema.clone())];
        metrics::counter!("exactly_outbox_published_total", &labels).increment(records.len() as u64);
        metrics::gauge!("exactly_outbox_backlog", &labels).set(waiting as f64);
        let now = u64::try_from(std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_millis())).unwrap_or(u64::MAX);
        let lag = oldest.map_or(0.0, |at| now.saturating_sub(at.unsigned_abs()) as f64 / 1000.0);
        metrics::gauge!("exactly_outbox_lag_seconds", &labels).set(lag);
        Ok(RelayPass::Published(records.len()))
    }
}
