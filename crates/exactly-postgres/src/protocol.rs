//! [`DedupStore`] for [`PgStore`].

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use exactly_core::store::{
    Claim, ClaimRequest, Committed, Completion, DedupStore, Durable, FencingToken, Limits, PurgeReport, RecordView,
    StagedCompletion, StateChanges, StoreKey, StoreStats, StoreTransaction, SweeperSlot,
};
use exactly_core::{Millis, Result};

use crate::claim::ClaimJob;
use crate::complete::Write;
use crate::row::{encode_list, ms, state_columns, text};
use crate::store::PgStore;

/// How long a claim waits for another live holder of its key to finish, asking again
/// with growing pauses, before it answers busy (as the local stores wait for theirs).
const HOLDER_WAIT: Duration = Duration::from_secs(1);

#[async_trait]
impl DedupStore for PgStore {
    async fn claim(&self, req: ClaimRequest<'_>) -> Result<Claim> {
        if !req.redrive
            && let Some(answer) = self.shared.cache.answer(req.key.as_bytes(), req.fingerprint, req.now)
        {
            return Ok(answer);
        }
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            let claim = self.claims.call(ClaimJob::new(&req)).await?;
            if !matches!(claim, Claim::Busy { .. }) || started.elapsed() + pause > HOLDER_WAIT {
                return Ok(claim);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    async fn claim_many(&self, reqs: &[ClaimRequest<'_>]) -> Result<Vec<Claim>> {
        futures_util::future::try_join_all(reqs.iter().map(|r| self.claims.call(ClaimJob::new(r)))).await
    }

    async fn renew(&self, key: &StoreKey, token: FencingToken, lease_until: Millis) -> Result<bool> {
        let client = self.shared.pool.get().await.map_err(|e| crate::error::pool("renew", e))?;
        let token = i64::try_from(token).unwrap_or(i64::MAX);
        let db = |e| crate::error::db("renew", e);
        let stmt = client.prepare_cached(&self.shared.sql.renew).await.map_err(db)?;
        let n = client.execute(&stmt, &[&key.as_bytes(), &token, &ms(lease_until)]).await.map_err(db)?;
        Ok(n == 1)
    }

    async fn release(&self, key: &StoreKey, token: FencingToken, attempts: u32, error: Option<String>) -> Result<()> {
        let client = self.shared.pool.get().await.map_err(|e| crate::error::pool("release", e))?;
        let token = i64::try_from(token).unwrap_or(i64::MAX);
        let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
        let error = error.as_deref().map(text);
        let db = |e| crate::error::db("release", e);
        let stmt = client.prepare_cached(&self.shared.sql.release).await.map_err(db)?;
        let n = client.execute(&stmt, &[&key.as_bytes(), &token, &attempts, &error]).await.map_err(db)?;
        self.shared.ended(n);
        Ok(())
    }

    async fn complete_staged(&self, completion: Completion) -> Result<StagedCompletion> {
        let committed = self.writes.call(Write::Complete(completion)).await?;
        // Committed means committed by PostgreSQL: durable already.
        Ok(StagedCompletion { committed, durable: Durable::ready() })
    }

    async fn complete_many(&self, completions: Vec<Completion>) -> Result<Vec<StagedCompletion>> {
        futures_util::future::try_join_all(completions.into_iter().map(|c| self.complete_staged(c))).await
    }

    async fn commit_state(&self, state: StateChanges) -> Result<Committed> {
        if state.writes.is_empty() {
            return Ok(Committed::Ok);
        }
        self.writes.call(Write::State { state, meta: Vec::new() }).await
    }

    async fn stage_state(&self, state: StateChanges, meta: Vec<(String, Bytes)>) -> Result<StagedCompletion> {
        if state.writes.is_empty() && meta.is_empty() {
            return Ok(StagedCompletion { committed: Committed::Ok, durable: Durable::ready() });
        }
        let committed = self.writes.call(Write::State { state, meta }).await?;
        Ok(StagedCompletion { committed, durable: Durable::ready() })
    }

    async fn begin(&self) -> Result<Option<StoreTransaction>> {
        self.shared.begin().await.map(Some)
    }

    async fn complete_in(&self, tx: StoreTransaction, completion: Completion) -> Result<StagedCompletion> {
        let committed = self.shared.commit_in(tx, Write::Complete(completion)).await?;
        Ok(StagedCompletion { committed, durable: Durable::ready() })
    }

    async fn stage_state_in(
        &self,
        tx: StoreTransaction,
        state: StateChanges,
        meta: Vec<(String, Bytes)>,
    ) -> Result<StagedCompletion> {
        let committed = self.shared.commit_in(tx, Write::State { state, meta }).await?;
        Ok(StagedCompletion { committed, durable: Durable::ready() })
    }

    async fn state_get(&self, state_key: &[u8]) -> Result<Option<Bytes>> {
        self.get_value(&self.shared.sql.state_get, state_key).await
    }

    async fn state_list(
        &self,
        prefix: Option<&[u8]>,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>> {
        // Every state key starts with the state prefix byte, which the namespace's prefix
        // of an empty namespace is.
        let every = StoreKey::state("", b"");
        let from = prefix.unwrap_or(&every[..1]);
        let upper = upper_bound(from);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.shared.pool.get().await.map_err(|e| crate::error::pool("read", e))?;
        let rows = client
            .query(&self.shared.sql.state_list, &[&from, &upper, &after, &limit])
            .await
            .map_err(|e| crate::error::db("read", e))?;
        Ok(rows.iter().map(|r| (r.get::<_, Vec<u8>>(0), Bytes::from(r.get::<_, Vec<u8>>(1)))).collect())
    }

    async fn meta_get(&self, name: &str) -> Result<Option<Bytes>> {
        self.get_value(&self.shared.sql.meta_get, name).await
    }

    async fn meta_list(&self) -> Result<Vec<(String, Bytes)>> {
        let client = self.shared.pool.get().await.map_err(|e| crate::error::pool("read", e))?;
        let rows = client.query(&self.shared.sql.meta_list, &[]).await.map_err(|e| crate::error::db("read", e))?;
        Ok(rows.iter().map(|r| (r.get::<_, String>(0), Bytes::from(r.get::<_, Vec<u8>>(1)))).collect())
    }

    async fn meta_put(&self, name: &str, value: Bytes) -> Result<()> {
        let client = self.shared.pool.get().await.map_err(|e| crate::error::pool("write", e))?;
        let db = |e| crate::error::db("write", e);
        let stmt = client.prepare_cached(&self.shared.sql.meta_put).await.map_err(db)?;
        client.execute(&stmt, &[&vec![name], &vec![value.as_ref()]]).await.map_err(db)?;
        Ok(())
    }

    async fn purge_expired(&self, now: Millis, budget: usize) -> Result<PurgeReport> {
        self.purge(now, budget).await
    }

    async fn inspect(&self, key: &StoreKey) -> Result<Option<RecordView>> {
        let client = self.shared.pool.get().await.map_err(|e| crate::error::pool("read", e))?;
        let row = client
            .query_opt(&self.shared.sql.inspect, &[&key.as_bytes()])
            .await
            .map_err(|e| crate::error::db("read", e))?;
        row.as_ref().map(crate::row::record).transpose()
    }

    async fn list(&self, prefix: Option<&StoreKey>, after: Option<&StoreKey>, limit: usize) -> Result<Vec<RecordView>> {
        let from: &[u8] = prefix.map_or(&[], StoreKey::as_bytes);
        let upper = prefix.and_then(|p| upper_bound(p.as_bytes()));
        let after = after.map(StoreKey::as_bytes);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.shared.pool.get().await.map_err(|e| crate::error::pool("read", e))?;
        let rows = client
            .query(&self.shared.sql.list, &[&from, &upper, &after, &limit])
            .await
            .map_err(|e| crate::error::db("read", e))?;
        rows.iter().map(crate::row::record).collect()
    }

    async fn forget(&self, key: &StoreKey) -> Result<bool> {
        self.shared.cache.remove(key.as_bytes());
        let client = self.shared.pool.get().await.map_err(|e| crate::error::pool("forget", e))?;
        let rows = client
            .query(&self.shared.sql.forget, &[&key.as_bytes()])
            .await
            .map_err(|e| crate::error::db("forget", e))?;
        Ok(!rows.is_empty())
    }

    async fn import(&self, record: RecordView) -> Result<()> {
        let (state, output, emitted, reason) = state_columns(&record.state)?;
        let (token, holder) = match record.state {
            exactly_core::store::RecordState::InFlight { token, epoch } => {
                (i64::try_from(token).unwrap_or(i64::MAX), i32::try_from(epoch).unwrap_or(0))
            }
            _ => (0, 0),
        };
        let attempts = i32::try_from(record.attempts).unwrap_or(i32::MAX);
        let origin = record.origin.as_deref().map(text);
        let wrote: Vec<Bytes> = record.wrote.iter().map(|b| b.0.clone()).collect();
        let wrote = encode_list(&wrote)?;
        let client = self.shared.pool.get().await.map_err(|e| crate::error::pool("import", e))?;
        client
            .execute(
                &self.shared.sql.import,
                &[
                    &record.key.as_bytes(),
                    &record.key.namespace(),
                    &state,
                    &token,
                    &holder,
                    &&record.fingerprint.0[..],
                    &attempts,
                    &output,
                    &emitted,
                    &reason,
                    &origin,
                    &ms(record.updated_at),
                    &ms(record.expires_at),
                    &wrote,
                ],
            )
            .await
            .map_err(|e| crate::error::db("import", e))?;
        self.shared.cache.remove(record.key.as_bytes());
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        // Every answer given was committed before it was given.
        Ok(())
    }

    fn stats(&self) -> StoreStats {
        use std::sync::atomic::Ordering::Relaxed;
        StoreStats {
            in_flight: self.shared.in_flight.load(Relaxed),
            commits: self.shared.commits.load(Relaxed),
            ..StoreStats::default()
        }
    }

    fn keeps_outbox(&self) -> bool {
        self.shared.outbox
    }

    fn limits(&self) -> Limits {
        PgStore::limits(self)
    }

    fn sweeper_slot(&self) -> Option<&SweeperSlot> {
        Some(&self.sweeper)
    }
}

impl PgStore {
    async fn get_value<K>(&self, sql: &str, key: K) -> Result<Option<Bytes>>
    where
        K: tokio_postgres::types::ToSql + Sync,
    {
        // Prepared once per connection: a handler's state reads are on the message's path.
        let client = self.shared.pool.get().await.map_err(|e| crate::error::pool("read", e))?;
        let db = |e| crate::error::db("read", e);
        let stmt = client.prepare_cached(sql).await.map_err(db)?;
        let row = client.query_opt(&stmt, &[&key]).await.map_err(db)?;
        Ok(row.map(|r| Bytes::from(r.get::<_, Vec<u8>>(0))))
    }

    /// One bounded purge, by one instance at a time: the others find the sweeper's lock
    /// taken and leave it to the holder.
    async fn purge(&self, now: Millis, budget: usize) -> Result<PurgeReport> {
        let db = |e| crate::error::db("purge", e);
        let mut client = self.shared.pool.get().await.map_err(|e| crate::error::pool("purge", e))?;
        let tx = client.transaction().await.map_err(db)?;
        let class = self.shared.class;
        let mine: bool = tx.query_one("SELECT pg_try_advisory_xact_lock($1, 1)", &[&class]).await.map_err(db)?.get(0);
        if !mine {
            return Ok(PurgeReport::default());
        }
        let limit = i64::try_from(budget).unwrap_or(i64::MAX);
        let purged = tx.query(&self.shared.sql.purge, &[&ms(now), &limit]).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        for row in &purged {
            self.shared.cache.remove(row.get(0));
        }
        let removed = u64::try_from(purged.len()).unwrap_or(u64::MAX);
        Ok(PurgeReport {
            index_entries: removed,
            records_removed: removed,
            more: removed >= u64::try_from(budget).unwrap_or(0),
        })
    }
}

/// The smallest key above every key that starts with `prefix` (`None`: there is none).
fn upper_bound(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last < u8::MAX {
            upper.push(last + 1);
            return Some(upper);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::upper_bound;

    #[test]
    fn upper_bounds_cover_every_key_with_the_prefix() {
        assert_eq!(upper_bound(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(upper_bound(&[1, 0xff]), Some(vec![2]));
        assert_eq!(upper_bound(&[0xff, 0xff]), None);
        assert_eq!(upper_bound(b""), None);
    }
}
