//! Purging expired records, one budget of keys a call.

use super::PurgeReport;
use super::layout::{self, EXPIRY};
use super::local::{KvBackend, WriteBatch};
use super::record::{Record, RecordState};
use crate::Result;
use crate::clock::Millis;

/// Reads the expiry index up to `now` and the records it lists, until `budget` keys are
/// looked at (a call finishes the index entry it is in): the batch that deletes those
/// still expired (each expected unchanged, so a record rewritten meanwhile stays) and
/// their index entries.
///
/// Its reads are the engine's, on the calling thread: at ten million keys most of them
/// miss the engine's cache (`bench store --only sweeper`), so the caller runs it through
/// [`crate::runtime::blocking`].
pub(super) fn collect<B: KvBackend>(
    backend: &B,
    bucket_width: Millis,
    now: Millis,
    budget: usize,
) -> Result<(WriteBatch, PurgeReport)> {
    let from = [EXPIRY];
    let mut to = vec![EXPIRY];
    to.extend_from_slice(&now.saturating_add(1).to_be_bytes());
    // Index entries list many keys each; read a few at a time until the budget of
    // keys is spent.
    let mut report = PurgeReport::default();
    let mut batch = WriteBatch::default();
    let mut visited = 0usize;
    let mut start = from.to_vec();
    'entries: loop {
        let entries = backend.range(&start, &to, 16)?;
        if entries.is_empty() {
            break;
        }
        for (index_key, value) in entries {
            if visited >= budget.max(1) {
                report.more = true;
                break 'entries;
            }
            let (bucket, keys) = layout::parse_expiry_entry(&index_key, &value)?;
            report.index_entries += 1;
            for key in keys {
                visited += 1;
                let rk = layout::record_key(&key);
                if let Some(raw) = backend.get(&rk)? {
                    let r = Record::decode(&key, &raw)?;
                    let finished = matches!(r.state, RecordState::Done { .. } | RecordState::DeadLettered { .. });
                    if finished && layout::bucket_end(r.expires_at, bucket_width) == bucket {
                        batch.expect.push((rk.clone(), Some(raw)));
                        batch.ops.push((rk, None));
                        report.records_removed += 1;
                    }
                }
            }
            start = index_key.clone();
            start.push(0);
            batch.ops.push((index_key, None));
        }
    }
    Ok((batch, report))
}
