//! Claims: one statement per group of keys.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use exactly_core::store::{Claim, ClaimRequest, Lease};
use exactly_core::{Fingerprint, Result, StoreKey};

use crate::batch::{Group, Job, fail_all};
use crate::cache;
use crate::row::{decode_list, fingerprint, ms, unms};
use crate::sql::{DEAD_LETTERED, DONE, IN_FLIGHT};
use crate::store::Shared;

/// A claim request, owned so that it can wait in the queue.
#[derive(Debug)]
pub(crate) struct ClaimJob {
    pub(crate) key: StoreKey,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) now: u64,
    pub(crate) lease_until: u64,
    pub(crate) redrive: bool,
}

impl ClaimJob {
    pub(crate) fn new(req: &ClaimRequest<'_>) -> Self {
        Self {
            key: req.key.clone(),
            fingerprint: req.fingerprint,
            now: req.now,
            lease_until: req.lease_until,
            redrive: req.redrive,
        }
    }
}

/// A statement's answers may miss a key another transaction inserted after the statement
/// began (it is neither claimed nor visible): such keys are asked again, this many times.
const MISSING_ROUNDS: usize = 5;

impl Group<ClaimJob, Claim> for Shared {
    async fn run(self: Arc<Self>, jobs: Vec<Job<ClaimJob, Claim>>) {
        // A key asked twice in one group is asked in the next round: one statement may
        // not insert or update a row twice.
        let mut rest = jobs;
        while !rest.is_empty() {
            let mut seen = HashSet::new();
            let (round, later): (Vec<_>, Vec<_>) =
                rest.into_iter().partition(|(job, _)| seen.insert(job.key.as_bytes().to_vec()));
            rest = later;
            let reqs: Vec<&ClaimJob> = round.iter().map(|(job, _)| job).collect();
            match self.claim_round(&reqs).await {
                Ok(mut answers) => {
                    for (job, tx) in round {
                        let answer = answers.remove(job.key.as_bytes()).ok_or(exactly_core::Error::StoreUnavailable {
                            operation: "claim",
                            reason: "the key's row kept changing under the claim".into(),
                        });
                        let _ = tx.send(answer);
                    }
                }
                Err(e) => fail_all(round, &e),
            }
        }
    }
}

impl Shared {
    /// Claims each key once; the answers by key.
    async fn claim_round(&self, reqs: &[&ClaimJob]) -> Result<HashMap<Vec<u8>, Claim>> {
        let client = self.pool.get().await.map_err(|e| crate::error::pool("claim", e))?;
        let db = |e| crate::error::db("claim", e);
        let redrive: Vec<&[u8]> = reqs.iter().filter(|r| r.redrive).map(|r| r.key.as_bytes()).collect();
        if !redrive.is_empty() {
            let stmt = client.prepare_cached(&self.sql.redrive).await.map_err(db)?;
            client.execute(&stmt, &[&redrive]).await.map_err(db)?;
        }
        let stmt = client.prepare_cached(&self.sql.claim).await.map_err(db)?;
        let mut answers = HashMap::with_capacity(reqs.len());
        let mut pending: Vec<&ClaimJob> = reqs.to_vec();
        pending.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
        for _ in 0..MISSING_ROUNDS {
            if pending.is_empty() {
                break;
            }
            let skeys: Vec<&[u8]> = pending.iter().map(|r| r.key.as_bytes()).collect();
            let namespaces: Vec<&str> = pending.iter().map(|r| r.key.namespace()).collect();
            let fingerprints: Vec<&[u8]> = pending.iter().map(|r| &r.fingerprint.0[..]).collect();
            let nows: Vec<i64> = pending.iter().map(|r| ms(r.now)).collect();
            let leases: Vec<i64> = pending.iter().map(|r| ms(r.lease_until)).collect();
            let rows = client
                .query(&stmt, &[&skeys, &namespaces, &fingerprints, &nows, &leases, &self.holder])
                .await
                .map_err(db)?;
            let by_key: HashMap<&[u8], &&ClaimJob> = pending.iter().map(|r| (r.key.as_bytes(), r)).collect();
            let mut acquired = 0;
            for row in &rows {
                let skey: &[u8] = row.get(1);
                let Some(req) = by_key.get(skey) else { continue };
                if let Some(claim) = self.answer(row, req)? {
                    acquired += u64::from(matches!(claim, Claim::Acquired(_)));
                    answers.insert(skey.to_vec(), claim);
                }
            }
            self.claimed(acquired);
            pending.retain(|r| !answers.contains_key(r.key.as_bytes()));
        }
        Ok(answers)
    }

    /// The answer a row gives (`None`: the row changed under the statement; ask again).
    fn answer(&self, row: &tokio_postgres::Row, req: &ClaimJob) -> Result<Option<Claim>> {
        let acquired: bool = row.get(0);
        let token: i64 = row.get(2);
        let attempts: i32 = row.get(3);
        if acquired {
            return Ok(Some(Claim::Acquired(Lease {
                token: token.unsigned_abs(),
                attempts: attempts.unsigned_abs(),
                first_error: row.get(4),
                last_error: row.get(5),
                orphaned: row.get(6),
            })));
        }
        let state: Option<i16> = row.get(7);
        Ok(match state {
            Some(DONE) => {
                let stored = fingerprint(row.get::<_, Option<&[u8]>>(8).unwrap_or_default());
                let done = cache::Done {
                    fingerprint: stored,
                    output: row.get::<_, Option<Vec<u8>>>(9).map(Bytes::from),
                    emitted: decode_list(req.key.as_bytes(), row.get(10), "emitted records")?,
                    origin: row.get(12),
                    expires_at: unms(row.get::<_, Option<i64>>(14).unwrap_or(0)),
                };
                let claim = if stored == req.fingerprint {
                    Claim::Done {
                        output: done.output.clone(),
                        emitted: done.emitted.clone(),
                        origin: done.origin.clone(),
                    }
                } else {
                    Claim::Conflict { stored }
                };
                self.cache.insert(req.key.as_bytes(), done);
                Some(claim)
            }
            Some(DEAD_LETTERED) => {
                Some(Claim::DeadLettered { reason: row.get::<_, Option<String>>(11).unwrap_or_default() })
            }
            Some(IN_FLIGHT) => Some(Claim::Busy { lease_until: unms(row.get::<_, Option<i64>>(13).unwrap_or(0)) }),
            _ => None,
        })
    }
}
