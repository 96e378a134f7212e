//! The core of [`exactly`](https://docs.rs/exactly): message-queue consumers whose
//! effects happen once.
//!
//! Brokers deliver at least once. This crate turns that into exactly-once *processing*:
//! each message's idempotency key is claimed before its [`Handler`] runs and recorded as
//! done, durably, before the broker is told; a redelivered message whose key is done is
//! acknowledged without running the handler again.
//!
//! Effects are exactly-once when the handler's state changes go through
//! [`Context::state`] (they commit in the same store transaction as the done-record), or
//! when the downstream system honours [`Context::idempotency_key`]. Any other side effect
//! is at-least-once with deduplication: a crash between the effect and the done-record
//! repeats it once.
//!
//! This crate has no broker code. The adapters (`exactly-kafka`, `exactly-amqp`) map
//! deliveries to [`Message`]s and [`Disposition`]s to broker operations; the
//! [`testing`] module (feature `testing`) has an in-memory broker for tests.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), exactly_core::Error> {
//! use exactly_core::{handler_fn, Context, Message, MemoryStore, Outcome, Processor};
//!
//! #[derive(serde::Deserialize)]
//! struct Credit { account: String, cents: i64 }
//!
//! let credit = handler_fn(|msg: Message, ctx: Context| async move {
//!     let c: Credit = msg.decode()?;
//!     let balance: i64 = ctx.state().get_json(&c.account).await?.unwrap_or(0);
//!     ctx.state().put_json(&c.account, &(balance + c.cents)).await?;
//!     Ok(())
//! });
//! let processor = Processor::builder("ledger", credit).store(MemoryStore::new()).build()?;
//!
//! let msg = Message::builder(r#"{"account":"alice","cents":250}"#).header("idempotency-key", "tx-1").build();
//! assert_eq!(processor.process(msg.clone()).await?.outcome, Outcome::Handled);
//! assert_eq!(processor.process(msg).await?.outcome, Outcome::Duplicate); // not credited twice
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `sled` | yes | `SledStore`, the embedded on-disk store |
//! | `testing` | no | `testing::MemoryBroker` and fault injection for handler tests |
//! | `conformance` | no | the store conformance suite (`store_conformance_tests!`), for tests of a store |

mod clock;
mod context;
mod error;
mod handler;
pub mod header_names;
mod key;
mod message;
pub mod metrics;
mod processor;
pub mod publish;
pub mod redact;
pub mod runtime;
pub mod shutdown;
pub mod store;
pub mod subscription;
mod sync;
#[cfg(feature = "testing")]
pub mod testing;

pub use async_trait::async_trait;
pub use clock::{Clock, ManualClock, Millis, SharedClock, SystemClock};
pub use context::{Context, OutboundRecord, State};
pub use error::{Error, Result, error_line};
pub use handler::{ErrorKind, Handler, HandlerError, HandlerFn, IntoOutput, Json, handler_fn};
pub use key::{
    DEFAULT_MAX_KEY_LEN, Fingerprint, IDEMPOTENCY_KEY_HEADER, KeyLookup, KeySource, KeyStrategy, MissingKey,
};
pub use message::{Coordinates, HeaderValue, Headers, Message, MessageBuilder};
pub use processor::layers;
pub use processor::layers::{HandlerRequest, HandlerService};
pub use processor::{
    BreakerConfig, BreakerState, CrashPoint, DEFAULT_LEASE, DEFAULT_RETENTION, DEFAULT_TIMEOUT, DeadLetter,
    Disposition, FaultInjector, OrphanPolicy, Outcome, PendingDeadLetter, Processed, Processor, ProcessorBuilder,
    REDRIVE_HEADER, RetryPolicy, Staged, reasons,
};
#[cfg(feature = "sled")]
pub use store::SledStore;
pub use store::{DedupStore, MemoryStore, StoreKey, Sweeper};
pub use subscription::{Subscription, SubscriptionStats, SubscriptionStatus};
/// tower, for [`ProcessorBuilder::layer`]: its middleware (with the features `util`,
/// `limit`, `load-shed` and `timeout`) works around a handler unchanged.
pub use tower;
