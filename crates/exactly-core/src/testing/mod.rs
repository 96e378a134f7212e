//! An in-memory broker and fault injection, for testing handlers without a broker.
//!
//! [`MemoryBroker`] delivers at least once: a message is delivered again if its consumer
//! crashes before acknowledging it, duplicates can be published on purpose, and
//! [`drain`] drives a [`Processor`](crate::Processor) over a queue the way an adapter
//! would (ack, delayed retry, dead-letter with confirmation, pause). [`CrashPlan`] stops
//! processing at the [`CrashPoint`](crate::CrashPoint)s that matter.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), exactly_core::Error> {
//! use exactly_core::{handler_fn, Context, Message, MemoryStore, Processor};
//! use exactly_core::testing::{drain, DrainOptions, MemoryBroker};
//!
//! let broker = MemoryBroker::new();
//! for id in ["a", "b", "a"] {
//!     broker.publish("jobs", Message::builder(id).message_id(id).build());
//! }
//! let p = Processor::builder("jobs", handler_fn(|_m: Message, _c: Context| async { Ok(()) }))
//!     .store(MemoryStore::new())
//!     .build()?;
//! let report = drain(&broker, "jobs", &p, DrainOptions::default()).await?;
//! assert_eq!((report.handled, report.duplicates), (2, 1));
//! assert_eq!(broker.stats("jobs").acked, 3);
//! # Ok(()) }
//! ```

mod broker;
#[cfg(feature = "conformance")]
pub mod conformance;
mod crash;
mod drain;
mod gated;
mod runs;
mod subscription;

pub use broker::{DeadLetterRecord, Delivery, MemoryBroker, MemoryConsumer, QueueStats};
pub use crash::CrashPlan;
pub use drain::{DrainOptions, DrainReport, drain};
pub use gated::{Gated, GatedStore};
pub use runs::Runs;
pub use subscription::MemorySubscription;
