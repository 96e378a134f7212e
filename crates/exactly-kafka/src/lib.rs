//! Kafka adapter of [`exactly`](https://docs.rs/exactly): consumers whose effects happen
//! once, on [rdkafka](https://docs.rs/rdkafka).
//!
//! A [`Consumer`] joins a consumer group and runs every record through an
//! [`exactly_core::Processor`]:
//!
//! - Partitions are processed in parallel, each in offset order by default
//!   ([`Ordering::Partition`]); with [`Ordering::Key`], records of one partition run in
//!   parallel unless they share a key. A slow record holds back only its partition (or key).
//! - Offsets are committed (every 200 ms by default, `enable.auto.commit=false`) only up to
//!   the first record whose outcome is not yet durable: handled (done-record fsynced),
//!   a duplicate, or dead-lettered (delivered to `<topic>.dlq` with `x-exactly-*` headers,
//!   acks=all). The same watermark is saved in the store, so a consumer restarting after
//!   a lost commit starts from the later of the two.
//! - Each partition has its own librdkafka queue and worker: a partition whose worker
//!   falls behind stops being fetched while the poll loop and the other partitions carry
//!   on, so a slow handler never causes a `max.poll.interval.ms` eviction; the circuit
//!   breaker pauses every partition while it is open.
//! - On a revoke (eager or cooperative), the revoked partitions stop taking records, the
//!   ones in flight finish (up to 10 s), their offsets are committed, then they are let go.
//! - With [`ConsumerBuilder::transactional`], records handlers emit are produced in one
//!   Kafka transaction with the consumer offsets (consume-transform-produce).
//!
//! Delivery guarantee: a record is handled once per key within one store; a partition
//! that moves to another process with another store may see records after its last
//! committed offset handled again there. Keep the store with the partition (the same
//! instance), or use transactional state in a shared store, for effects across instances.
//!
//! ```no_run
//! use exactly_core::{handler_fn, Context, Message, Processor, SledStore};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let handler = handler_fn(|msg: Message, ctx: Context| async move {
//!     let order: serde_json::Value = msg.decode()?;
//!     ctx.state().put_json(ctx.message_key(), &order).await?;
//!     Ok(())
//! });
//! let processor = Processor::builder("orders", handler).store(SledStore::open("orders-store")?).build()?;
//! exactly_kafka::Consumer::builder("127.0.0.1:9092", "orders-service")
//!     .topic("orders")
//!     .build(processor)?
//!     .run_until_signal()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `testing` | no | [`testing::MockKafka`], librdkafka's in-process mock cluster |

mod anchor;
mod builder;
mod consumer;
mod convert;
mod error;
pub mod header_names;
mod hooks;
mod offsets;
mod outage;
mod publisher;
mod state;
#[cfg(feature = "testing")]
pub mod testing;
mod txn;
mod worker;

pub use builder::{ConsumerBuilder, Ordering};
pub use consumer::{Consumer, ShutdownHandle, Stats};
pub use error::Error;
pub use publisher::KafkaPublisher;

pub use rdkafka;
