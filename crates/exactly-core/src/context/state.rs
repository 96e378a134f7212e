//! Transactional state: a handler's keyed values that commit with its done-record.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Inner;
use super::locks::KeyLock;
use crate::store::StateChanges;
use crate::{HandlerError, StoreKey};

/// What one handler run read, wrote and locked.
#[derive(Debug, Default)]
pub(crate) struct StateTx {
    reads: HashMap<Vec<u8>, Option<Bytes>>,
    writes: Vec<(Vec<u8>, Option<Bytes>)>,
    locks: Vec<KeyLock>,
}

impl StateTx {
    fn pending(&self, key: &[u8]) -> Option<&Option<Bytes>> {
        self.writes.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn holds(&self, key: &[u8]) -> bool {
        self.reads.contains_key(key) || self.writes.iter().any(|(k, _)| k == key)
    }

    /// The changes to commit, and the locks to release once the commit is over.
    pub(crate) fn into_parts(self) -> (StateChanges, Vec<KeyLock>) {
        let mut writes: Vec<(Vec<u8>, Option<Bytes>)> = Vec::with_capacity(self.writes.len());
        for (k, v) in self.writes {
            match writes.iter_mut().find(|(wk, _)| *wk == k) {
                Some(slot) => slot.1 = v,
                None => writes.push((k, v)),
            }
        }
        (StateChanges { reads: self.reads.into_iter().collect(), writes }, self.locks)
    }
}

/// A handler's keyed state, in its consumer's namespace: writes commit atomically with
/// the done-record, or not at all.
///
/// The first access to a key locks it until this run's commit (or failure), so runs of
/// different messages that touch the same key (one account credited by many payments)
/// take turns, and each reads what the previous one committed. A run never has to be
/// repeated because another changed its data. Touch keys in a consistent order: two
/// runs that lock the same keys in opposite orders wait on each other until the lock
/// timeout, then fail transiently (reason `state-lock-timeout`) and are retried.
///
/// Errors are transient, except a JSON value that no longer decodes (permanent,
/// reason `state-decode`).
pub struct State<'a> {
    pub(super) inner: &'a Inner,
}

impl std::fmt::Debug for State<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("namespace", &self.inner.consumer).finish()
    }
}

impl State<'_> {
    /// The store key of a state key, if the store takes a key that long.
    fn full_key(&self, key: &[u8]) -> Result<Vec<u8>, HandlerError> {
        let max = self.inner.store.limits().max_state_key;
        if key.len() > max {
            return Err(too_large(format!(
                "state key {:?}... is {} bytes; the store takes at most {max}",
                String::from_utf8_lossy(&key[..key.len().min(40)]),
                key.len()
            )));
        }
        Ok(StoreKey::state(&self.inner.consumer, key))
    }

    /// Locks `full` for this run unless it already holds it.
    async fn acquire(&self, tx: &mut StateTx, full: &[u8]) -> Result<(), HandlerError> {
        if tx.holds(full) {
            return Ok(());
        }
        let timeout = self.inner.lock_timeout;
        match tokio::time::timeout(timeout, self.inner.locks.lock(full)).await {
            Ok(lock) => {
                tx.locks.push(lock);
                Ok(())
            }
            Err(_) => Err(lock_timeout(full, timeout)),
        }
    }

    /// Reads a value.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, HandlerError> {
        let full = self.full_key(key.as_ref())?;
        let mut tx = self.inner.state.lock().await;
        if let Some(v) = tx.pending(&full) {
            return Ok(v.clone());
        }
        if let Some(v) = tx.reads.get(&full) {
            return Ok(v.clone());
        }
        self.acquire(&mut tx, &full).await?;
        let v = self.inner.store.state_get(&full).await.map_err(crate::handler::store_error)?;
        tx.reads.insert(full, v.clone());
        Ok(v)
    }

    /// Reads a JSON value.
    pub async fn get_json<T: DeserializeOwned>(&self, key: impl AsRef<[u8]>) -> Result<Option<T>, HandlerError> {
        let key = key.as_ref();
        match self.get(key).await? {
            None => Ok(None),
            Some(raw) => serde_json::from_slice(&raw).map(Some).map_err(|e| {
                HandlerError::permanent(
                    "state-decode",
                    format!("state value {:?} is not the JSON expected: {e}", String::from_utf8_lossy(key)),
                )
            }),
        }
    }

    /// Writes a value, committed with the done-record.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl Into<Bytes>) -> Result<(), HandlerError> {
        self.write(key.as_ref(), Some(value.into())).await
    }

    /// Writes a JSON value, committed with the done-record.
    pub async fn put_json<T: Serialize + ?Sized>(&self, key: impl AsRef<[u8]>, value: &T) -> Result<(), HandlerError> {
        let raw = serde_json::to_vec(value).map_err(|e| HandlerError::permanent("state-encode", e))?;
        self.write(key.as_ref(), Some(Bytes::from(raw))).await
    }

    /// Deletes a value, committed with the done-record.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<(), HandlerError> {
        self.write(key.as_ref(), None).await
    }

    async fn write(&self, key: &[u8], value: Option<Bytes>) -> Result<(), HandlerError> {
        let full = self.full_key(key)?;
        let max = self.inner.store.limits().max_value;
        if let Some(v) = value.as_ref().filter(|v| v.len() > max) {
            return Err(too_large(format!(
                "the value of state key {:?} is {} bytes; the store takes at most {max}",
                String::from_utf8_lossy(key),
                v.len()
            )));
        }
        let mut tx = self.inner.state.lock().await;
        self.acquire(&mut tx, &full).await?;
        tx.writes.push((full, value));
        Ok(())
    }
}

/// A write the store cannot take: retrying cannot help.
pub(crate) fn too_large(what: String) -> HandlerError {
    HandlerError::permanent(crate::reasons::TOO_LARGE, what)
}

fn lock_timeout(full: &[u8], after: Duration) -> HandlerError {
    HandlerError::transient(format!(
        "waited {after:?} for the lock of state key {:?}; runs that lock several keys must lock them in the same order",
        String::from_utf8_lossy(full)
    ))
    .with_reason(crate::reasons::STATE_LOCK_TIMEOUT)
}
