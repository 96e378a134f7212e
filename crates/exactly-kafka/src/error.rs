//! The adapter's error type.

use rdkafka::error::KafkaError;

/// Errors of the Kafka adapter; each variant names the operation that failed.
///
/// `Debug` prints the message and its causes on one line, as `exactly_core::error_line`.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No broker could be reached for longer than
    /// [`unreachable_timeout`](crate::ConsumerBuilder::unreachable_timeout).
    #[error("Kafka brokers {brokers} unreachable for {} s (last error: {last_error}); giving up after unreachable_timeout", waited.as_secs())]
    Unreachable {
        /// The bootstrap servers, passwords hidden.
        brokers: String,
        /// How long they were unreachable.
        waited: std::time::Duration,
        /// The last consume error.
        last_error: String,
    },
    /// A setting is invalid.
    #[error("invalid configuration: {field}: {reason}")]
    Config {
        /// The setting.
        field: String,
        /// Why it is rejected.
        reason: String,
    },
    /// Creating the consumer or producer failed (librdkafka refused the settings).
    #[error("cannot create the Kafka {client}: {reason}")]
    Create {
        /// `consumer` or `producer`.
        client: &'static str,
        /// What librdkafka reported, with the values of secret settings hidden (its
        /// message can quote a setting's value).
        reason: String,
    },
    /// Subscribing to the topics failed.
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        /// The topics.
        topics: Vec<String>,
        /// What rdkafka reported.
        #[source]
        source: KafkaError,
    },
    /// Committing offsets failed.
    #[error("committing offsets failed: {source}")]
    Commit {
        /// What rdkafka reported.
        #[source]
        source: KafkaError,
    },
    /// Producing a record (dead-letter or output) failed.
    #[error("producing to topic {topic} failed: {source}")]
    Produce {
        /// The topic.
        topic: String,
        /// What rdkafka reported.
        #[source]
        source: KafkaError,
    },
    /// A Kafka transaction failed.
    #[error("the Kafka transaction failed at {step}: {source}")]
    Transaction {
        /// `init`, `begin`, `offsets`, `commit` or `abort`.
        step: &'static str,
        /// What rdkafka reported.
        #[source]
        source: KafkaError,
    },
    /// The transactional producer hit an error librdkafka calls fatal (it was fenced by
    /// another producer with the same transactional id, or the broker lost its state):
    /// the consumer stops. Outcomes are durable in the store and the offsets uncommitted,
    /// so a restarted consumer produces the outputs again in a new transaction.
    #[error("the transactional producer failed for good at {step}: {source}; restart the consumer")]
    TransactionFatal {
        /// The step that failed.
        step: &'static str,
        /// What rdkafka reported.
        #[source]
        source: KafkaError,
    },
    /// The dedup store failed: nothing more is committed; restart the consumer.
    #[error(transparent)]
    Store(#[from] exactly_core::Error),
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&exactly_core::error_line(self))
    }
}
