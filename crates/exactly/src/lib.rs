#![doc = include_str!("../../../README.md")]

pub use exactly_core::*;

/// The RabbitMQ adapter (feature `amqp`): see [`exactly_amqp`].
#[cfg(feature = "amqp")]
pub use exactly_amqp as amqp;

/// The Kafka adapter (feature `kafka`): see [`exactly_kafka`].
#[cfg(feature = "kafka")]
pub use exactly_kafka as kafka;
