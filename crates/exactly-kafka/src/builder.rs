//! Configuring a [`Consumer`].

use std::fmt;
use std::time::Duration;

use exactly_core::Processor;
use rdkafka::ClientConfig;

use crate::Error;
use crate::consumer::Consumer;

/// In what order a partition's records are handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ordering {
    /// One record at a time per partition, in offset order (the default). Partitions run
    /// in parallel. A record waiting to be retried holds back its partition.
    #[default]
    Partition,
    /// Records of one partition run in parallel unless they share a record key (like
    /// Confluent's Parallel Consumer), at most `max_in_flight` at once per partition. A
    /// failing record parks only its key while it waits; the committed offset stays
    /// below it.
    Key,
}

/// Settings of a [`Consumer`]. Every one has a default; [`build`](Self::build) checks them.
#[must_use]
#[derive(Clone)]
pub struct ConsumerBuilder {
    pub(crate) brokers: String,
    pub(crate) group: String,
    pub(crate) topics: Vec<String>,
    pub(crate) settings: Vec<(String, String)>,
    pub(crate) max_in_flight: usize,
    pub(crate) commit_interval: Duration,
    pub(crate) revoke_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) dlq_suffix: String,
    pub(crate) ordering: Ordering,
    pub(crate) transactional_id: Option<String>,
    pub(crate) unreachable_timeout: Option<Duration>,
}

impl fmt::Debug for ConsumerBuilder {
    /// Settings whose name says they are secret are hidden
    /// ([`exactly_core::redact::is_secret`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings: Vec<(&str, &str)> =
            self.settings.iter().map(|(k, v)| (k.as_str(), exactly_core::redact::setting(k, v))).collect();
        f.debug_struct("ConsumerBuilder")
            .field("brokers", &exactly_core::redact::url(&self.brokers))
            .field("group", &self.group)
            .field("topics", &self.topics)
            .field("settings", &settings)
            .field("max_in_flight", &self.max_in_flight)
            .field("commit_interval", &self.commit_interval)
            .field("ordering", &self.ordering)
            .field("transactional_id", &self.transactional_id)
            .field("unreachable_timeout", &self.unreachable_timeout)
            .finish_non_exhaustive()
    }
}

impl ConsumerBuilder {
    /// The error of a client librdkafka would not create, with secret settings' values
    /// hidden from its message.
    pub(crate) fn create_error(&self, client: &'static str, e: &rdkafka::error::KafkaError) -> Error {
        create_error(client, e, &self.settings)
    }

    pub(crate) fn new(brokers: impl Into<String>, group: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            group: group.into(),
            topics: Vec::new(),
            settings: Vec::new(),
            max_in_flight: 1000,
            commit_interval: Duration::from_millis(200),
            revoke_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            dlq_suffix: ".dlq".into(),
            ordering: Ordering::default(),
            transactional_id: None,
            unreachable_timeout: None,
        }
    }

    /// Adds a topic to consume.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// Adds topics to consume.
    pub fn topics<S: Into<String>>(mut self, topics: impl IntoIterator<Item = S>) -> Self {
        self.topics.extend(topics.into_iter().map(Into::into));
        self
    }

    /// Sets any librdkafka setting (`security.protocol`, `sasl.username`,
    /// `partition.assignment.strategy`, ...) on the consumer and the producer.
    /// `enable.auto.commit` is always false: offsets are committed by `exactly`.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// Records of one partition in flight (default 1000): with [`Ordering::Partition`],
    /// records handled whose done-records are not yet durable; with [`Ordering::Key`],
    /// records running at once. When a partition reaches it, its worker stops taking
    /// records; they wait in the partition's own librdkafka queue, and librdkafka stops
    /// fetching the partition when that queue holds `queued.max.messages.kbytes` (16 MB
    /// here unless set). The poll loop and the other partitions carry on.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// How often finished offsets are committed (default 200 ms).
    pub fn commit_interval(mut self, d: Duration) -> Self {
        self.commit_interval = d;
        self
    }

    /// How long a revoke waits for the records in flight of the partitions it takes away
    /// (default 10 s); what does not finish is not committed and is consumed again by the
    /// new owner.
    pub fn revoke_timeout(mut self, d: Duration) -> Self {
        self.revoke_timeout = d;
        self
    }

    /// How long a graceful stop waits for records in flight (default 30 s).
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// Dead-letter topic of topic `t` is `t` + `suffix` (default `.dlq`).
    pub fn dead_letter_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.dlq_suffix = suffix.into();
        self
    }

    /// In what order a partition's records are handled (default [`Ordering::Partition`]).
    pub fn ordering(mut self, ordering: Ordering) -> Self {
        self.ordering = ordering;
        self
    }

    /// Consume-transform-produce in Kafka transactions: records handlers emit are produced
    /// in one transaction with the consumer offsets, and the consumer reads with
    /// `isolation.level=read_committed`. `id` must be unique per consumer process and
    /// stable across its restarts.
    pub fn transactional(mut self, id: impl Into<String>) -> Self {
        self.transactional_id = Some(id.into());
        self
    }

    /// Static group membership (KIP-345): a stable id per instance (`orders-0`, a pod's
    /// ordinal), so that an instance restarted within `session.timeout.ms` gets its
    /// partitions back without a rebalance (librdkafka's `group.instance.id`). Each
    /// instance of the group needs its own; two with one id fence each other.
    pub fn group_instance_id(self, id: impl Into<String>) -> Self {
        self.set("group.instance.id", id)
    }

    /// Give up when no broker can be reached for this long: [`run`](Consumer::run)
    /// returns [`Error::Unreachable`] (and an app exits non-zero, so its supervisor can
    /// restart or alert). Default: never; librdkafka reconnects for ever.
    pub fn unreachable_timeout(mut self, d: Duration) -> Self {
        self.unreachable_timeout = Some(d);
        self
    }

    /// Checks the settings and makes the consumer, which runs `processor` for every record.
    pub fn build(self, processor: Processor) -> Result<Consumer, Error> {
        let bad = |field: &str, reason: &str| Error::Config { field: field.into(), reason: reason.into() };
        if self.brokers.trim().is_empty() {
            return Err(bad("brokers", "must name at least one broker"));
        }
        if self.group.trim().is_empty() {
            return Err(bad("group", "must not be empty"));
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.is_empty()) {
            return Err(bad("topics", "give at least one non-empty topic"));
        }
        if self.max_in_flight == 0 {
            return Err(bad("max_in_flight", "must be at least 1"));
        }
        if self.commit_interval.is_zero() {
            return Err(bad("commit_interval", "must be greater than zero"));
        }
        if self.settings.iter().any(|(k, v)| k == "enable.auto.commit" && v == "true") {
            return Err(bad("enable.auto.commit", "exactly commits offsets itself, after the records are durable"));
        }
        Consumer::new(self, processor)
    }

    /// The librdkafka settings of the consumer.
    pub(crate) fn consumer_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "5000")
            .set("queued.max.messages.kbytes", "16384");
        if self.transactional_id.is_some() {
            c.set("isolation.level", "read_committed");
        }
        for (k, v) in &self.settings {
            c.set(k, v);
        }
        c.set("enable.auto.commit", "false");
        c
    }

    /// The librdkafka settings of the producer (dead-letters, emitted records).
    pub(crate) fn producer_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers).set("acks", "all").set("enable.idempotence", "true");
        for (k, v) in &self.settings {
            if !CONSUMER_ONLY.contains(&k.as_str()) {
                c.set(k, v);
            }
        }
        if let Some(id) = &self.transactional_id {
            c.set("transactional.id", id);
        }
        c
    }
}

/// The error of a client librdkafka would not create from `settings`: its message can
/// quote a setting's value, so secret settings' values are hidden.
pub(crate) fn create_error(
    client: &'static str,
    e: &rdkafka::error::KafkaError,
    settings: &[(String, String)],
) -> Error {
    let mut reason = e.to_string();
    for (k, v) in settings {
        if exactly_core::redact::is_secret(k) && !v.is_empty() {
            reason = reason.replace(v.as_str(), "***");
        }
    }
    Error::Create { client, reason }
}

/// librdkafka settings only a consumer takes: a producer made from a consumer's settings
/// leaves them out.
pub(crate) const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "auto.offset.reset",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "queued.max.messages.kbytes",
    "fetch.min.bytes",
    "fetch.wait.max.ms",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_instance_id_reaches_the_consumer_and_not_the_producer() {
        let b = ConsumerBuilder::new("b:9092", "g").topic("t").group_instance_id("orders-0");
        assert_eq!(b.consumer_config().get("group.instance.id"), Some("orders-0"));
        assert_eq!(b.producer_config().get("group.instance.id"), None);
    }
}
