//! Publishing emitted records to a broker, for an outbox's relay.

use async_trait::async_trait;

use crate::OutboundRecord;

/// Publishes records to a broker, returning once the broker has confirmed every one
/// (Kafka `acks=all` with the idempotent producer, RabbitMQ publisher confirms). A relay
/// marks records sent only after this returns `Ok`; an error, or a crash before the mark,
/// publishes them again, each copy with the same `idempotency-key` header.
///
/// The adapters implement it: `exactly_kafka::KafkaPublisher`,
/// `exactly_amqp::AmqpPublisher`.
#[async_trait]
pub trait Publish: Send + Sync + std::fmt::Debug + 'static {
    /// Publishes `records` in order and waits for the broker's confirmations.
    async fn publish(&self, records: &[OutboundRecord]) -> Result<(), PublishError>;
}

#[async_trait]
impl<P: Publish + ?Sized> Publish for std::sync::Arc<P> {
    async fn publish(&self, records: &[OutboundRecord]) -> Result<(), PublishError> {
        (**self).publish(records).await
    }
}

/// A publish that failed: the broker refused a record, or could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("cannot publish to {destination}: {reason}")]
pub struct PublishError {
    /// The topic or exchange.
    pub destination: String,
    /// What went wrong, in one line.
    pub reason: String,
}
