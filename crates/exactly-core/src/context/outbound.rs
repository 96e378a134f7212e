//! Records a handler emits for the adapter to publish.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A record a handler emits with [`Context::emit`](crate::Context::emit): a Kafka topic
/// or an AMQP exchange (`destination`), optional key, payload and headers.
///
/// Emitted records are kept in the done-record, published by the adapter before the
/// source message is acknowledged, and published again when a duplicate of the source
/// arrives. Each carries an `idempotency-key` header derived from the source key, so a
/// downstream `exactly` consumer drops the copies. With the Kafka adapter in
/// transactional mode they are produced in the same transaction as the consumer offsets.
///
/// ```
/// use exactly_core::OutboundRecord;
/// let r = OutboundRecord::new("receipts", r#"{"ok":true}"#).key("acct-1").header("kind", "receipt");
/// assert_eq!(r.destination, "receipts");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OutboundRecord {
    /// Kafka topic, or AMQP exchange.
    pub destination: String,
    /// Kafka record key, or AMQP routing key.
    pub key: Option<Bytes>,
    /// The payload.
    pub payload: Bytes,
    /// Headers.
    pub headers: Vec<(String, Bytes)>,
}

impl OutboundRecord {
    /// A record for `destination`.
    pub fn new(destination: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self { destination: destination.into(), key: None, payload: payload.into(), headers: Vec::new() }
    }

    /// Sets the key (Kafka record key; AMQP routing key).
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The value of a header.
    pub fn header_value(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }
}
