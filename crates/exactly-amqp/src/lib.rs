//! RabbitMQ (AMQP 0-9-1) adapter of [`exactly`](https://docs.rs/exactly): consumers whose
//! effects happen once, on [lapin](https://docs.rs/lapin).
//!
//! A [`Consumer`] consumes one queue with manual acknowledgements and runs each delivery
//! through an [`exactly_core::Processor`]:
//!
//! | disposition | broker operation |
//! |---|---|
//! | ack (handled, or a duplicate) | the reply to `reply_to` (cached for duplicates) and any emitted records are published and confirmed, then `basic.ack`; the done-record was durable before |
//! | retry after a delay | up to 1 s: the consumer holds the message and tries again; longer: a copy goes to the retry queue of that delay (confirmed), then `basic.ack` |
//! | dead-letter | published to the dead-letter exchange with `x-exactly-reason`, `-attempts`, `-first-error`, `-last-error`, `-key` and the original exchange, routing key and queue; confirmed; the key is marked; then `basic.ack` |
//! | pause (circuit breaker open) | the consumer stops taking deliveries (the broker sends no more than the prefetch) and tries again after the pause |
//!
//! Delivery guarantee: every message is acknowledged only after it is handled (its
//! done-record durable) or safely dead-lettered. A message delivered again (after a lost
//! connection, a crash, a requeue) is acknowledged without running the handler when its
//! key is done. A lost connection is reconnected with exponential backoff and jitter; the
//! topology is declared again.
//!
//! ```no_run
//! use exactly_core::{handler_fn, Context, Message, Processor, SledStore};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let handler = handler_fn(|msg: Message, ctx: Context| async move {
//!     let n: u64 = msg.decode()?;
//!     ctx.state().put_json("last", &n).await?;
//!     Ok(())
//! });
//! let processor = Processor::builder("counter", handler).store(SledStore::open("counter-store")?).build()?;
//! exactly_amqp::Consumer::builder("amqp://guest:guest@127.0.0.1:5672/%2f", "numbers")
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
//! | `tls` | no | `amqps://` through rustls (ring) |

mod acks;
mod builder;
mod consumer;
mod convert;
pub mod depth;
mod error;
pub mod header_names;
mod publisher;
mod settle;
mod topology;

pub use builder::ConsumerBuilder;
pub use consumer::{Consumer, ShutdownHandle, Stats};
pub use error::{Error, redact_url};
pub use publisher::AmqpPublisher;
pub use topology::{DEFAULT_RETRY_DELAYS, Topology};

pub use lapin;
