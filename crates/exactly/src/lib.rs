#![doc = include_str!("../../../README.md")]

pub use exactly_core::*;

/// The RabbitMQ adapter (feature `amqp`): see [`exactly_amqp`].
#[cfg(feature = "amqp")]
pub use exactly_amqp as amqp;

/// Consumer binaries (feature `app`): see [`exactly_app`].
#[cfg(feature = "app")]
pub use exactly_app as app;

/// The Kafka adapter (feature `kafka`): see [`exactly_kafka`].
#[cfg(feature = "kafka")]
pub use exactly_kafka as kafka;
