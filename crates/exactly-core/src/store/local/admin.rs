//! What operators do to a store: list records, state and meta values, forget and import
//! records.

use bytes::Bytes;

use super::{KvBackend, LocalStore, WriteBatch};
use crate::store::RecordView;
use crate::store::layout::{self, StoreKey};
use crate::store::record::Record;
use crate::{Error, Result};

impl<B: KvBackend> LocalStore<B> {
    /// Lists records whose namespaced key starts with `prefix` (namespace then key), in
    /// key order, at most `limit`, starting after `after` when given.
    pub(super) fn list_prefix(
        &self,
        prefix: &StoreKey,
        after: Option<&StoreKey>,
        limit: usize,
    ) -> Result<Vec<RecordView>> {
        self.list_range(layout::record_key(prefix), after, limit)
    }

    /// Lists records of every namespace, in key order, at most `limit`, starting after
    /// `after` when given.
    pub(super) fn list_all(&self, after: Option<&StoreKey>, limit: usize) -> Result<Vec<RecordView>> {
        self.list_range(vec![layout::RECORD], after, limit)
    }

    fn list_range(&self, start: Vec<u8>, after: Option<&StoreKey>, limit: usize) -> Result<Vec<RecordView>> {
        self.page(start, after.map(layout::record_key), limit)?
            .into_iter()
            .map(|(raw_key, raw)| {
                let key = StoreKey::from_bytes(&raw_key[1..]).ok_or_else(|| Error::StoreCorrupt {
                    key: format!("{raw_key:?}"),
                    reason: "bad record key".into(),
                })?;
                Ok(Record::decode(&key, &raw)?.view(key))
            })
            .collect()
    }

    /// State values whose state key starts with `prefix` (every one when `None`) in key
    /// order, after `after`.
    pub(super) fn list_state(
        &self,
        prefix: Option<&[u8]>,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>> {
        let start = prefix.map_or_else(|| vec![layout::STATE], <[u8]>::to_vec);
        self.page(start, after.map(<[u8]>::to_vec), limit)
    }

    /// At most `limit` entries whose backend key starts with `start`, in key order, after
    /// the backend key `after` when given.
    fn page(&self, start: Vec<u8>, after: Option<Vec<u8>>, limit: usize) -> Result<Vec<(Vec<u8>, Bytes)>> {
        let end = layout::prefix_end(&start);
        let from = match after {
            Some(mut k) => {
                k.push(0);
                k.max(start)
            }
            None => start,
        };
        self.backend.range(&from, &end, limit)
    }

    /// Adapters' meta values: every meta value but the store's own bookkeeping.
    pub(super) fn list_meta(&self) -> Result<Vec<(String, Bytes)>> {
        let start = vec![layout::META];
        let end = layout::prefix_end(&start);
        let mut out = Vec::new();
        for (raw, value) in self.backend.range(&start, &end, usize::MAX)? {
            let name = String::from_utf8_lossy(&raw[1..]).into_owned();
            if !super::meta::OWN.contains(&name.as_str()) {
                out.push((name, value));
            }
        }
        Ok(out)
    }

    /// Removes a key's record and any claim on it, so its next delivery runs the handler
    /// again. For operators fixing a stuck or wrongly recorded key.
    pub(super) async fn forget_key(&self, key: &StoreKey) -> Result<bool> {
        if let Some(entry) = self.leases.lock(key).remove(key) {
            entry.wake();
        }
        let rk = layout::record_key(key);
        let existed = self.backend.get(&rk)?.is_some();
        if existed {
            self.backend.commit(WriteBatch { ops: vec![(rk, None)], ..WriteBatch::default() }).await?;
        }
        Ok(existed)
    }

    /// Writes a record as given (for importing an exported store).
    pub(super) async fn import_record(&self, view: RecordView) -> Result<()> {
        let key = view.key.clone();
        let record = Record {
            state: view.state,
            fingerprint: view.fingerprint,
            attempts: view.attempts,
            updated_at: view.updated_at,
            expires_at: view.expires_at,
            origin: view.origin,
            wrote: view.wrote.into_iter().map(|b| b.0).collect(),
        };
        let ops = vec![(layout::record_key(&key), Some(Bytes::from(record.encode()?)))];
        let expiring = if record.expires_at > 0 {
            vec![(layout::bucket_end(record.expires_at, self.bucket_width), key)]
        } else {
            vec![]
        };
        self.backend.commit(WriteBatch { ops, expiring, ..WriteBatch::default() }).await?;
        Ok(())
    }
}
