//! The adapter conformance suite (`exactly_core::testing::conformance::adapter`) on
//! librdkafka's mock cluster.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use exactly_core::testing::conformance::adapter::BrokerHarness;
use exactly_core::{Processor, Subscription, adapter_conformance_tests, async_trait, header_names};
use exactly_kafka::Consumer;
use exactly_kafka::testing::MockKafka;

/// A mock cluster of its own per test.
struct Kafka(MockKafka);

impl Kafka {
    fn new() -> Self {
        Self(MockKafka::new(3).unwrap())
    }
}

#[async_trait]
impl BrokerHarness for Kafka {
    async fn source(&self) -> String {
        let topic = common::unique("suite");
        self.0.create_topic(&topic, 3).unwrap();
        self.0.create_topic(&format!("{topic}.dlq"), 1).unwrap();
        topic
    }

    async fn publish(&self, source: &str, messages: &[(String, Vec<u8>)]) {
        for (key, payload) in messages {
            let headers = [("idempotency-key", key.as_str())];
            self.0.produce(source, None, Some(key.as_bytes()), payload, &headers).await.unwrap();
        }
    }

    fn subscribe(&self, source: &str, processor: Processor) -> Box<dyn Subscription> {
        Box::new(
            Consumer::builder(self.0.bootstrap_servers(), format!("{source}-group"))
                .topic(source)
                .set("session.timeout.ms", "6000")
                .set("heartbeat.interval.ms", "200")
                .commit_interval(Duration::from_millis(50))
                .build(processor)
                .unwrap(),
        )
    }

    async fn dead_letters(&self, source: &str) -> Vec<(String, String)> {
        let dlq = format!("{source}.dlq");
        let read = common::read_until(self.0.bootstrap_servers(), &dlq, |got| !got.is_empty()).await;
        read.into_iter()
            .map(|(_, _, h)| {
                (
                    h.get(header_names::KEY).cloned().unwrap_or_default(),
                    h.get(header_names::REASON).cloned().unwrap_or_default(),
                )
            })
            .collect()
    }
}

adapter_conformance_tests!(mock_cluster, Kafka::new());
