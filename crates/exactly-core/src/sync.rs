//! The locks of state shared between deliveries (the lease table), swapped for loom's
//! models when built with `RUSTFLAGS="--cfg exactly_loom"`, so `tests/loom.rs` can
//! explore every interleaving of claims, completions and releases of one key.

#[cfg(exactly_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(exactly_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};
