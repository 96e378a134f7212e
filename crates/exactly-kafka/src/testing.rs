//! librdkafka's in-process mock cluster, set up for fast tests.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::Client;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::util::Timeout;

/// A mock Kafka cluster in this process (librdkafka's), with a producer for test records.
///
/// The group coordinator waits 3 s before the first join by default; this cluster does
/// not, so a consumer starts in milliseconds. Offsets commits during a rejoin are refused
/// (`RebalanceInProgress`), like a real broker.
pub struct MockKafka {
    producer: FutureProducer,
    bootstrap: String,
}

impl std::fmt::Debug for MockKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockKafka").field("bootstrap", &self.bootstrap).finish()
    }
}

impl MockKafka {
    /// A cluster of `brokers` brokers.
    pub fn new(brokers: i32) -> rdkafka::error::KafkaResult<Self> {
        let producer: FutureProducer = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.to_string())
            .set("message.timeout.ms", "30000")
            .create()?;
        no_initial_rebalance_delay(producer.client());
        let mock = producer
            .client()
            .mock_cluster()
            .ok_or(rdkafka::error::KafkaError::MockCluster(rdkafka::error::RDKafkaErrorCode::Fail))?;
        let bootstrap = mock.bootstrap_servers();
        drop(mock);
        Ok(Self { producer, bootstrap })
    }

    /// Where clients connect.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    fn mock(&self) -> rdkafka::mocking::MockCluster<'_, impl rdkafka::client::ClientContext> {
        #[allow(clippy::expect_used)]
        self.producer.client().mock_cluster().expect("the producer owns a mock cluster")
    }

    /// Creates a topic.
    pub fn create_topic(&self, name: &str, partitions: i32) -> rdkafka::error::KafkaResult<()> {
        self.mock().create_topic(name, partitions, 1)
    }

    /// Makes the next requests of an API fail with these errors, in order.
    pub fn request_errors(&self, api: RDKafkaApiKey, errors: &[RDKafkaRespErr]) {
        self.mock().request_errors(api, errors)
    }

    /// Produces a record and waits for its delivery; returns (partition, offset).
    pub async fn produce(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) -> rdkafka::error::KafkaResult<(i32, i64)> {
        let mut h = OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(Header { key: k, value: Some(*v) });
        }
        let mut rec = FutureRecord::to(topic).payload(payload).headers(h);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        let delivery = self.producer.send(rec, Timeout::After(Duration::from_secs(30))).await.map_err(|(e, _)| e)?;
        Ok((delivery.partition, delivery.offset))
    }

    /// Flushes the producer.
    pub fn flush(&self) {
        let _ = self.producer.flush(Duration::from_secs(10));
    }
}

/// Sets the mock group coordinator's initial rebalance delay to zero (3 s by default),
/// through the one librdkafka call rdkafka does not wrap.
#[allow(unsafe_code)]
fn no_initial_rebalance_delay<C: rdkafka::client::ClientContext>(client: &Client<C>) {
    // SAFETY: `client` owns a live librdkafka handle for the duration of the call;
    // rd_kafka_handle_mock_cluster returns the mock cluster it created (or null, checked),
    // which lives as long as the handle.
    unsafe {
        let mc = rdkafka::bindings::rd_kafka_handle_mock_cluster(client.native_ptr());
        if !mc.is_null() {
            rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(mc, 0);
        }
    }
}
