//! Message-queue consumers whose effects happen once.
//!
//! Kafka and RabbitMQ deliver every message at least once. `exactly` claims each message's
//! idempotency key in a store before your [`Handler`] runs and records it as done, durably,
//! before the broker is told; a message whose key is done is acknowledged without running
//! the handler again. Poison messages go to a dead-letter destination with their reason.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), exactly::Error> {
//! use exactly::{handler_fn, Context, MemoryStore, Message, Outcome, Processor};
//!
//! #[derive(serde::Deserialize)]
//! struct Payment { account: String, cents: i64 }
//!
//! let ledger = handler_fn(|msg: Message, ctx: Context| async move {
//!     let p: Payment = msg.decode()?; // not JSON: dead-lettered with reason "decode"
//!     let balance: i64 = ctx.state().get_json(&p.account).await?.unwrap_or(0);
//!     ctx.state().put_json(&p.account, &(balance + p.cents)).await?; // commits with the done-record
//!     Ok(())
//! });
//! // A real consumer keeps its keys on disk: `SledStore::open(dir)?`.
//! let processor = Processor::builder("ledger", ledger).store(MemoryStore::new()).build()?;
//!
//! let pay = Message::builder(r#"{"account":"alice","cents":250}"#).header("idempotency-key", "pay-1").build();
//! assert_eq!(processor.process(pay.clone()).await?.outcome, Outcome::Handled);
//! assert_eq!(processor.process(pay).await?.outcome, Outcome::Duplicate); // credited once
//! # Ok(()) }
//! ```
//!
//! A broker adapter drives the [`Processor`]: `amqp::Consumer` for RabbitMQ,
//! `kafka::Consumer` for Kafka, each a [`Subscription`]; `app::App` runs a consumer
//! binary from a configuration file; `testing::MemoryBroker` delivers at least once in
//! tests (see the features below).
//!
//! # What "once" covers
//!
//! Writes through [`Context::state`] commit in the same durable batch as the done-record:
//! exactly once. A downstream API that honours [`Context::idempotency_key`] sees each
//! effect once. Any other effect is at least once, deduplicated: a crash between the effect
//! and the durable done-record repeats it once. Keys are deduplicated within one store:
//! two instances with their own stores do not see each other's keys.
//!
//! # Handler middleware
//!
//! [`ProcessorBuilder::layer`] takes any [`tower::Layer`]: a rate limit, load shedding, a
//! tracing span of your own. Layers run inside the key's claim, so a duplicate never
//! reaches them; see [`layers`].
//!
//! # Features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `sled` | yes | `SledStore`, the embedded on-disk store |
//! | `redb`, `fjall` | no | `store::RedbStore`, `store::FjallStore`: the same store on other engines |
//! | `amqp` | no | the RabbitMQ adapter, as `exactly::amqp` |
//! | `kafka` | no | the Kafka adapter, as `exactly::kafka` |
//! | `postgres` | no | `PgStore`, shared by every instance, as `exactly::postgres` |
//! | `app` | no | consumer binaries (configuration, signals, `/metrics`), as `exactly::app` |
//! | `http` | no | `IdempotencyLayer`: `Idempotency-Key` for HTTP APIs on the same stores, as `exactly::http` |
//! | `testing` | no | the in-memory broker and fault injection, as `exactly::testing` |

/// The README's Rust examples, compiled as doctests so they keep up with the API.
#[cfg(all(doctest, feature = "amqp", feature = "kafka", feature = "app"))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

pub use exactly_core::*;

/// The RabbitMQ adapter (feature `amqp`): see [`exactly_amqp`].
#[cfg(feature = "amqp")]
pub use exactly_amqp as amqp;

/// Consumer binaries (feature `app`, with the adapters' features `amqp` and `kafka`): see
/// [`exactly_app`].
#[cfg(feature = "app")]
pub use exactly_app as app;

/// The shared PostgreSQL store (feature `postgres`): see [`exactly_postgres`].
#[cfg(feature = "postgres")]
pub use exactly_postgres as postgres;

/// `Idempotency-Key` for HTTP APIs (feature `http`): see [`exactly_http`].
#[cfg(feature = "http")]
pub use exactly_http as http;

/// The Kafka adapter (feature `kafka`): see [`exactly_kafka`].
#[cfg(feature = "kafka")]
pub use exactly_kafka as kafka;
