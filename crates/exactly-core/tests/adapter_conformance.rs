//! The adapter conformance suite on the in-memory broker (Kafka's mock cluster and
//! RabbitMQ run it in their own crates: one line each).

use exactly_core::adapter_conformance_tests;
use exactly_core::testing::MemoryBroker;
use exactly_core::testing::conformance::adapter::BrokerHarness;
use exactly_core::{Message, Processor, Subscription, async_trait};

/// The in-memory broker.
#[derive(Default)]
struct Memory(MemoryBroker);

#[async_trait]
impl BrokerHarness for Memory {
    async fn source(&self) -> String {
        "q".into()
    }

    async fn publish(&self, source: &str, messages: &[(String, Vec<u8>)]) {
        for (key, payload) in messages {
            self.0.publish(source, Message::builder(payload.clone()).header("idempotency-key", key.as_str()).build());
        }
    }

    fn subscribe(&self, source: &str, processor: Processor) -> Box<dyn Subscription> {
        Box::new(self.0.subscription(source, processor))
    }

    async fn dead_letters(&self, source: &str) -> Vec<(String, String)> {
        self.0
            .dead_letters(source)
            .into_iter()
            .map(|d| (d.dead_letter.key.unwrap_or_default(), d.dead_letter.reason))
            .collect()
    }
}

adapter_conformance_tests!(memory, Memory::default());
