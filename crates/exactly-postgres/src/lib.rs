//! A shared PostgreSQL store for [`exactly`](https://docs.rs/exactly): every instance of a
//! consumer claims, completes and deduplicates its keys in one database, so a duplicate
//! that reaches another instance (a RabbitMQ redelivery to whichever consumer is free, a
//! Kafka partition moved by a rebalance) is still a duplicate.
//!
//! ```no_run
//! # async fn run() -> Result<(), exactly_core::Error> {
//! use exactly_core::{handler_fn, Context, Message, Processor};
//! use exactly_postgres::PgStore;
//!
//! let store = PgStore::builder("postgres://exactly@127.0.0.1:5432/orders").schema("exactly").open().await?;
//! let handler = handler_fn(|_msg: Message, _ctx: Context| async { Ok(()) });
//! let processor = Processor::builder("orders", handler).store(store).build()?;
//! # drop(processor); Ok(()) }
//! ```
//!
//! What it keeps, in the schema it creates and migrates when it opens (docs/STORE.md, "The
//! PostgreSQL store"): one row per key in `records` (a claim with its lease, holder and
//! fencing token; then done with the cached output, or dead-lettered), the handlers'
//! state in `state`, adapters' values in `meta`, and the schema's version.
//!
//! - **One round trip per group.** Concurrent claims go out as one statement, concurrent
//!   completions as one transaction, each completion checked against its claim's fencing
//!   token, so one commit of PostgreSQL serves many messages.
//! - **Fencing tokens** come from a sequence: they grow across instances and restarts.
//! - **A crashed instance's claims** are taken over at once: each open store holds an
//!   advisory lock on its instance id for as long as it runs, and a claim whose holder's
//!   lock is gone is free (the takeover is reported as orphaned, like an expired lease).
//! - **A lost commit answer** is an unknown outcome: the transaction's fate is read back
//!   before anything is answered.
//! - **The handler's own SQL** commits with its done-record: [`PostgresContext::postgres`]
//!   (`ctx.postgres().await?`) gives the handler the transaction the record will commit
//!   in; a failure, a crash or a lost claim rolls it back.
//! - **Duplicates of keys this instance has seen done** are answered from a local cache
//!   without a round trip; the cache never answers "new".
//! - **Expiry** deletes bounded batches through an index of time buckets, one instance at a
//!   time (an advisory lock), skipping rows others hold.
//! - **The database out of reach** (restarting, connections killed, a full pool) is
//!   `Error::StoreUnavailable`: the processor retries the message and the breaker pauses
//!   the consumer until it is back; nothing is acknowledged without a committed record.

mod batch;
mod cache;
mod claim;
mod complete;
mod error;
mod liveness;
mod plain;
mod protocol;
mod relay;
mod row;
mod schema;
mod sql;
mod store;
mod transaction;

pub use relay::{Relay, RelayPass};
pub use schema::{SCHEMA_VERSION, lock_class};
pub use store::{DEFAULT_SCHEMA, PgStore, PgStoreBuilder};
pub use transaction::{NO_POSTGRES_STORE, PgTransaction, PostgresContext};
