//! The store conformance suite (`exactly_core::testing::conformance`) on every store of
//! this crate: one line each.

use std::sync::Arc;

use exactly_core::store::{FjallStore, RedbStore};
use exactly_core::testing::conformance::{DiskSubject, MemorySubject};
use exactly_core::{SledStore, store_conformance_tests};

store_conformance_tests!(memory, MemorySubject::new());
store_conformance_tests!(sled, DiskSubject::new(|p| Ok(Arc::new(SledStore::open(p)?))));
store_conformance_tests!(redb, DiskSubject::new(|p| Ok(Arc::new(RedbStore::open(p)?))));
store_conformance_tests!(fjall, DiskSubject::new(|p| Ok(Arc::new(FjallStore::open(p)?))));
