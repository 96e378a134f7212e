//! An engine in memory for tests of the write-ahead log (`store/log/tests.rs`, and the
//! loom models in `tests/loom.rs`).
#![allow(clippy::unwrap_used, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};

use super::Engine;
use crate::Result;
use bytes::Bytes;

pub type Map = Arc<Mutex<BTreeMap<Vec<u8>, Bytes>>>;

/// A gate threads wait at while it is closed; clones share it.
#[derive(Debug, Default, Clone)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    /// Closes (or opens) the gate.
    pub fn close(&self, closed: bool) {
        *self.0.0.lock().unwrap_or_else(|e| e.into_inner()) = closed;
        self.0.1.notify_all();
    }

    /// Waits until the gate is open.
    pub fn pass(&self) {
        let mut closed = self.0.0.lock().unwrap();
        while *closed {
            closed = self.0.1.wait(closed).unwrap();
        }
    }
}

/// An engine in memory that remembers what its last checkpoint made durable, and whose
/// applies wait while it is held ([`Snapshots::hold`]); clones share the maps, so a test
/// can look at them after the log is closed.
#[derive(Debug, Default, Clone)]
pub struct Snapshots {
    /// What the engine holds now.
    pub live: Map,
    /// What its last checkpoint made durable.
    pub durable: Map,
    held: Gate,
}

impl Snapshots {
    /// Holds back (or lets go of) every apply.
    #[allow(dead_code)] // the loom checks never hold it
    pub fn hold(&self, held: bool) {
        self.held.close(held);
    }
}

impl Engine for Snapshots {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.live.lock().unwrap().get(key).cloned())
    }

    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Bytes)>> {
        let live = self.live.lock().unwrap();
        Ok(live.range(from.to_vec()..to.to_vec()).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn apply(&self, ops: &[(Vec<u8>, Option<Bytes>)]) -> Result<()> {
        self.held.pass();
        let mut live = self.live.lock().unwrap();
        for (k, v) in ops {
            match v {
                Some(v) => live.insert(k.clone(), v.clone()),
                None => live.remove(k),
            };
        }
        Ok(())
    }

    fn checkpoint(&self) -> Result<u64> {
        let copy = self.live.lock().unwrap().clone();
        *self.durable.lock().unwrap() = copy;
        Ok(1)
    }

    fn disk_bytes(&self) -> Option<u64> {
        None
    }
}
