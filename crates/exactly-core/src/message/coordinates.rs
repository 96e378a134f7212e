//! Where a message came from on its broker.

use std::fmt;

/// A message's position on its broker: Kafka topic/partition/offset, or AMQP
/// queue/exchange/routing key. Every field but `source` is optional so one type serves
/// every broker without leaking broker types into the core.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Coordinates {
    /// The Kafka topic or the AMQP queue the message was consumed from.
    pub source: String,
    /// Kafka partition.
    pub partition: Option<i32>,
    /// Kafka offset, or the in-memory broker's sequence number.
    pub offset: Option<i64>,
    /// AMQP exchange the message was published to.
    pub exchange: Option<String>,
    /// AMQP routing key.
    pub routing_key: Option<String>,
    /// Broker timestamp, in milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl Coordinates {
    /// Coordinates naming only a source (topic or queue).
    pub fn new(source: impl Into<String>) -> Self {
        Self { source: source.into(), ..Self::default() }
    }

    /// Kafka-style coordinates.
    pub fn partitioned(source: impl Into<String>, partition: i32, offset: i64) -> Self {
        Self { source: source.into(), partition: Some(partition), offset: Some(offset), ..Self::default() }
    }

    /// Sets the offset.
    pub fn with_offset(mut self, offset: i64) -> Self {
        self.offset = Some(offset);
        self
    }

    /// Sets the AMQP exchange and routing key.
    pub fn with_route(mut self, exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        self.exchange = Some(exchange.into());
        self.routing_key = Some(routing_key.into());
        self
    }

    /// Sets the broker timestamp.
    pub fn with_timestamp_ms(mut self, ts: i64) -> Self {
        self.timestamp_ms = Some(ts);
        self
    }
}

impl fmt::Display for Coordinates {
    /// `topic/partition/offset` when partitioned, `source@offset` with only an offset,
    /// else the source name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.partition, self.offset) {
            (Some(p), Some(o)) => write!(f, "{}/{}/{}", self.source, p, o),
            (None, Some(o)) => write!(f, "{}@{}", self.source, o),
            _ => f.write_str(&self.source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_position() {
        assert_eq!(Coordinates::partitioned("orders", 3, 17).to_string(), "orders/3/17");
        assert_eq!(Coordinates::new("q").with_offset(9).to_string(), "q@9");
        assert_eq!(Coordinates::new("q").to_string(), "q");
    }
}
