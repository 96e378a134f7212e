//! One suite of tests every [`DedupStore`] must pass, written once against the trait:
//! the claim, lease, fencing, state, dead-letter, expiry and admin contract
//! ([`contract`]), and property tests of the protocol's invariants under random
//! deliveries, duplicates, failures and crashes ([`invariants`]); and one suite every
//! broker adapter must pass ([`adapter`]), written once against
//! [`Subscription`](crate::Subscription). A store gets all of its tests with one line:
//!
//! ```ignore
//! exactly_core::store_conformance_tests!(sled, exactly_core::testing::conformance::DiskSubject::new(
//!     |path| Ok(std::sync::Arc::new(exactly_core::SledStore::open(path)?))
//! ));
//! ```
//!
//! The generated tests use `#[tokio::test]` and `proptest`: the crate that expands the
//! macro needs `tokio` (with `macros` and `rt-multi-thread`) among its dev-dependencies.
//! Feature `conformance`.

pub mod adapter;
pub mod contract;
pub mod invariants;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

pub use self::contract::*;
pub use self::invariants::keeps_the_invariants;
use crate::store::DedupStore;
use crate::{MemoryStore, Result};

/// A store under test.
#[async_trait]
pub trait Subject: Send + Sync + 'static {
    /// Opens the store: the first time a new, empty one; every later time the same store
    /// again, as a process started anew opens it. Every handle of the previous open is
    /// dropped first.
    async fn open(&self) -> Arc<dyn DedupStore>;

    /// Between a drop and the next open: make the next open a restart after a crash
    /// (claims held only in the process are gone, what was made durable stays). Closing
    /// an on-disk store does that already.
    async fn crash(&self) {}

    /// Whether the store never waits for another thread or the network, so that tests may
    /// run it on tokio's paused clock.
    fn in_memory(&self) -> bool {
        false
    }
}

/// The in-memory store: a crash forgets its claims and keeps its records.
#[derive(Debug, Default)]
pub struct MemorySubject(Arc<MemoryStore>);

impl MemorySubject {
    /// A new, empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Subject for MemorySubject {
    async fn open(&self) -> Arc<dyn DedupStore> {
        self.0.clone()
    }

    async fn crash(&self) {
        self.0.simulate_crash();
    }

    fn in_memory(&self) -> bool {
        true
    }
}

/// How a [`DiskSubject`] opens its store at a path.
pub type OpenAt = fn(&Path) -> Result<Arc<dyn DedupStore>>;

/// An on-disk store in a new temporary directory, opened again at each reopen.
#[derive(Debug)]
pub struct DiskSubject {
    open: OpenAt,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl DiskSubject {
    /// A store that `open` opens (and creates) at a path.
    ///
    /// # Panics
    /// When no temporary directory can be made.
    pub fn new(open: OpenAt) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for the store under test");
        Self { open, path: dir.path().join("store"), _dir: dir }
    }
}

#[async_trait]
impl Subject for DiskSubject {
    async fn open(&self) -> Arc<dyn DedupStore> {
        (self.open)(&self.path).expect("the store under test opens")
    }
}

/// Writes the conformance suite for a store: `store_conformance_tests!(name, subject)`
/// makes a module `name` with one test per check, each on a fresh `subject` (an
/// expression that makes a [`Subject`]).
#[macro_export]
macro_rules! store_conformance_tests {
    ($name:ident, $subject:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $crate::__conformance_tests!(
                $subject;
                claims_exclude_and_duplicates_are_answered,
                an_expired_lease_is_taken_over_and_the_old_holder_fenced,
                fencing_tokens_grow_across_reopens,
                a_release_keeps_attempts_and_errors,
                state_commits_with_the_record_all_or_nothing,
                dead_letter_marks_hold_until_redriven,
                a_durable_claim_is_an_orphan_after_a_crash,
                records_state_and_meta_survive_a_reopen,
                renew_extends_only_a_held_lease,
                expired_records_are_purged_and_the_rest_kept,
                list_forget_and_import,
                batched_claims_and_completions_answer_in_order,
                writes_over_the_limits_are_dead_lettered_as_too_large,
                an_export_round_trips
            );

            #[test]
            fn keeps_the_protocol_invariants_under_random_deliveries_and_crashes() {
                $crate::testing::conformance::keeps_the_invariants(|| $subject);
            }
        }
    };
}

/// One `#[tokio::test]` per check of the contract.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($subject:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let subject = $subject;
                $crate::testing::conformance::$check(&subject).await;
            }
        )+
    };
}
