//! Threads, channels and locks of the store's shared state (the lease table, the
//! group-commit threads), swapped for loom's models when built with
//! `RUSTFLAGS="--cfg exactly_loom"`, so `tests/loom.rs` can explore their interleavings.

#[cfg(exactly_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard, mpsc};
#[cfg(exactly_loom)]
pub(crate) use loom::thread;
#[cfg(not(exactly_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard, mpsc};
#[cfg(not(exactly_loom))]
pub(crate) use std::thread;
