//! [`KafkaPublisher`]: produces emitted records with `acks=all` and the idempotent
//! producer, for an outbox's relay (`exactly_postgres::Relay`).

use std::time::Duration;

use exactly_core::OutboundRecord;
use exactly_core::async_trait;
use exactly_core::publish::{Publish, PublishError};
use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;
use rdkafka::util::Timeout;

use crate::convert::outbound_record;

/// Produces records to Kafka: each to its topic (`destination`) with its key and headers,
/// `acks=all`, `enable.idempotence=true`, and waits for every delivery report.
pub struct KafkaPublisher {
    producer: FutureProducer,
    brokers: String,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher").field("brokers", &self.brokers).finish()
    }
}

impl KafkaPublisher {
    /// A producer to `brokers` (`host:9092,...`) with default settings.
    pub fn new(brokers: impl Into<String>) -> Result<Self, crate::Error> {
        Self::with_settings(brokers, std::iter::empty::<(String, String)>())
    }

    /// A producer to `brokers` with librdkafka settings of yours (security, timeouts; a
    /// consumer's settings can be given whole: those only a consumer takes are left out);
    /// `acks` and `enable.idempotence` stay as above.
    pub fn with_settings(
        brokers: impl Into<String>,
        settings: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>,
    ) -> Result<Self, crate::Error> {
        let brokers = brokers.into();
        let settings: Vec<(String, String)> = settings
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(k, _)| !crate::builder::CONSUMER_ONLY.contains(&k.as_str()))
            .collect();
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &brokers);
        for (k, v) in &settings {
            c.set(k, v);
        }
        c.set("acks", "all").set("enable.idempotence", "true");
        let producer = c.create().map_err(|e| crate::builder::create_error("producer", &e, &settings))?;
        Ok(Self { producer, brokers })
    }
}

#[async_trait]
impl Publish for KafkaPublisher {
    async fn publish(&self, records: &[OutboundRecord]) -> Result<(), PublishError> {
        // Queued one after another (the idempotent producer keeps their order per
        // partition), their delivery reports awaited together.
        let sends =
            records.iter().map(|r| self.producer.send(outbound_record(r), Timeout::After(Duration::from_secs(30))));
        let reports = futures_util::future::join_all(sends).await;
        for (r, report) in records.iter().zip(reports) {
            if let Err((e, _)) = report {
                return Err(PublishError { destination: r.destination.clone(), reason: e.to_string() });
            }
        }
        Ok(())
    }
}
