//! `[kafka.<name>]` and `[amqp.<name>]`: one table per subscription, each field named as
//! the adapter's builder method it sets.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A Kafka subscription: see `exactly_kafka::ConsumerBuilder`, whose methods the fields
/// are named after. `Debug` hides secret librdkafka settings (`sasl.password`,
/// `ssl.key.password`, ...).
///
/// ```toml
/// [kafka.orders]
/// brokers = "127.0.0.1:9092"
/// group = "orders-service"
/// topics = ["orders"]
/// max_in_flight = 1000
/// ordering = "partition"        # or "key"
/// commit_interval = "200ms"
/// revoke_timeout = "10s"
/// dead_letter_suffix = ".dlq"
/// # transactional = "orders-1"  # consume-transform-produce in Kafka transactions
/// group_instance_id = "orders-0" # static membership: fast restarts (set per instance)
/// unreachable_timeout = "5m"     # exit non-zero when no broker answers this long
/// librdkafka = { "security.protocol" = "plaintext" }
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSubscription {
    /// Bootstrap servers.
    pub brokers: String,
    /// Consumer group.
    pub group: String,
    /// Topics.
    pub topics: Vec<String>,
    /// Records in flight per partition.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// `partition` (one record at a time per partition, the default) or `key`.
    #[serde(default)]
    pub ordering: Option<KafkaOrdering>,
    /// How often finished offsets are committed.
    #[serde(default, with = "humantime_serde")]
    pub commit_interval: Option<Duration>,
    /// How long a revoke waits for the records in flight.
    #[serde(default, with = "humantime_serde")]
    pub revoke_timeout: Option<Duration>,
    /// The dead-letter topic of topic `t` is `t` + this.
    #[serde(default)]
    pub dead_letter_suffix: Option<String>,
    /// A transactional id, unique per process and stable across its restarts: emitted
    /// records and offsets commit in one Kafka transaction.
    #[serde(default)]
    pub transactional: Option<String>,
    /// Static group membership: this instance's stable id (`group.instance.id`), so a
    /// restart within the session timeout gets its partitions back without a rebalance.
    #[serde(default)]
    pub group_instance_id: Option<String>,
    /// Exit with an error when no broker answers for this long (default: never).
    #[serde(default, with = "humantime_serde")]
    pub unreachable_timeout: Option<Duration>,
    /// Any librdkafka setting.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
    /// Service-level objectives (`[<kind>.<name>.slo]`; none by default).
    #[serde(default)]
    pub slo: Option<super::Slo>,
}

/// In what order a partition's records are handled (`exactly_kafka::Ordering`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaOrdering {
    /// One record at a time per partition, in offset order.
    Partition,
    /// Records of one partition in parallel unless they share a record key.
    Key,
}

/// A RabbitMQ subscription: see `exactly_amqp::ConsumerBuilder`, whose methods the fields
/// are named after. `Debug` shows the URL without its password.
///
/// ```toml
/// [amqp.payments]
/// url = "amqp://guest:guest@127.0.0.1:5672/%2f"
/// queue = "payments"
/// prefetch = 250
/// consumer_tag = "payments-1"
/// initial_connect_timeout = "30s"
/// reconnect_backoff = { min = "100ms", max = "30s" }
/// wait_in_place_up_to = "1s"
///
/// [amqp.payments.topology]       # default: declare the queue, its .dlx/.dlq and retry queues
/// declare = false                # the queue exists: declare nothing (Topology::existing)
/// dead_letter_exchange = "payments.errors"
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSubscription {
    /// `amqp://user:pass@host:port/vhost`.
    pub url: String,
    /// The queue.
    pub queue: String,
    /// `basic.qos` prefetch.
    #[serde(default)]
    pub prefetch: Option<u16>,
    /// The consumer tag.
    #[serde(default)]
    pub consumer_tag: Option<String>,
    /// How long to keep trying to connect at start-up.
    #[serde(default, with = "humantime_serde")]
    pub initial_connect_timeout: Option<Duration>,
    /// Reconnection backoff bounds.
    #[serde(default)]
    pub reconnect_backoff: Option<Backoff>,
    /// Retries with a delay up to this long wait in the consumer; longer ones go through a
    /// retry queue.
    #[serde(default, with = "humantime_serde")]
    pub wait_in_place_up_to: Option<Duration>,
    /// What to declare.
    #[serde(default)]
    pub topology: AmqpTopology,
    /// Service-level objectives (`[<kind>.<name>.slo]`; none by default).
    #[serde(default)]
    pub slo: Option<super::Slo>,
}

/// Exponential backoff bounds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// The first delay's ceiling.
    #[serde(with = "humantime_serde")]
    pub min: Duration,
    /// The largest delay.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

/// `[amqp.<name>.topology]`: `exactly_amqp::Topology`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpTopology {
    /// Declare the queue, its dead-letter exchange and queue, and the retry queues
    /// (default); `false`: they exist, declare nothing, and dead-letter to
    /// `dead_letter_exchange` (required then).
    #[serde(default = "super::default_true")]
    pub declare: bool,
    /// The dead-letter exchange (default `<queue>.dlx`).
    #[serde(default)]
    pub dead_letter_exchange: Option<String>,
    /// The dead-letter queue (default `<queue>.dlq`).
    #[serde(default)]
    pub dead_letter_queue: Option<String>,
    /// The routing key of dead-letters (default: the queue's name).
    #[serde(default)]
    pub dead_letter_routing_key: Option<String>,
    /// The retry tiers (default 2s, 5s, 15s, 1m, 5m, 30m); `[]`: every retry waits in the
    /// consumer.
    #[serde(default, with = "durations")]
    pub retry_delays: Option<Vec<Duration>>,
    /// Extra arguments of the queue's declaration (`{ "x-queue-type" = "quorum" }`):
    /// strings, integers and booleans.
    #[serde(default)]
    pub queue_arguments: BTreeMap<String, QueueArgument>,
}

impl Default for AmqpTopology {
    fn default() -> Self {
        Self {
            declare: true,
            dead_letter_exchange: None,
            dead_letter_queue: None,
            dead_letter_routing_key: None,
            retry_delays: None,
            queue_arguments: BTreeMap::new(),
        }
    }
}

/// A queue argument's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum QueueArgument {
    /// `true` / `false`.
    Bool(bool),
    /// A number.
    Int(i64),
    /// A string.
    Text(String),
}

impl std::fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let librdkafka: BTreeMap<&str, &str> =
            self.librdkafka.iter().map(|(k, v)| (k.as_str(), exactly_core::redact::setting(k, v))).collect();
        f.debug_struct("KafkaSubscription")
            .field("brokers", &exactly_core::redact::url(&self.brokers))
            .field("group", &self.group)
            .field("topics", &self.topics)
            .field("max_in_flight", &self.max_in_flight)
            .field("ordering", &self.ordering)
            .field("transactional", &self.transactional)
            .field("group_instance_id", &self.group_instance_id)
            .field("librdkafka", &librdkafka)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AmqpSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSubscription")
            .field("url", &exactly_core::redact::url(&self.url))
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("consumer_tag", &self.consumer_tag)
            .field("topology", &self.topology)
            .finish_non_exhaustive()
    }
}

/// `Option<Vec<Duration>>` as humantime strings (`["5s", "1m"]`).
mod durations {
    use std::time::Duration;

    use humantime_serde::Serde;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Option<Vec<Duration>>, s: S) -> Result<S::Ok, S::Error> {
        let v: Option<Vec<Serde<Duration>>> = v.as_ref().map(|v| v.iter().copied().map(Serde::from).collect());
        v.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Duration>>, D::Error> {
        let v: Option<Vec<Serde<Duration>>> = Deserialize::deserialize(d)?;
        Ok(v.map(|v| v.into_iter().map(Serde::into_inner).collect()))
    }
}
