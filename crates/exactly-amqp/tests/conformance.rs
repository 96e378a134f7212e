//! The adapter conformance suite (`exactly_core::testing::conformance::adapter`) on the
//! local RabbitMQ.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Mutex;

use common::{Broker, header_str, props_with_id, unique, url};
use exactly_amqp::{Consumer, Topology};
use exactly_core::testing::conformance::adapter::BrokerHarness;
use exactly_core::{Processor, Subscription, adapter_conformance_tests, async_trait, header_names};

/// The local RabbitMQ; the queues a test made are deleted when it ends.
struct Rabbit {
    broker: tokio::sync::OnceCell<Broker>,
    queues: Mutex<Vec<String>>,
    /// Dead letters taken from each dead-letter queue so far.
    dead: Mutex<HashMap<String, Vec<(String, String)>>>,
}

impl Rabbit {
    fn new() -> Self {
        Self { broker: tokio::sync::OnceCell::new(), queues: Mutex::default(), dead: Mutex::default() }
    }

    async fn broker(&self) -> &Broker {
        self.broker.get_or_init(Broker::connect).await
    }
}

#[async_trait]
impl BrokerHarness for Rabbit {
    async fn source(&self) -> String {
        let queue = unique("suite");
        // Declared before anything is published to it, as the consumer will declare it.
        Topology::declare().apply(&self.broker().await.channel, &queue).await.unwrap();
        self.queues.lock().unwrap().push(queue.clone());
        queue
    }

    async fn publish(&self, source: &str, messages: &[(String, Vec<u8>)]) {
        let broker = self.broker().await;
        for (key, payload) in messages {
            broker.publish(source, payload, props_with_id(key)).await;
        }
    }

    fn subscribe(&self, source: &str, processor: Processor) -> Box<dyn Subscription> {
        Box::new(Consumer::builder(url(), source).prefetch(16).build(processor).unwrap())
    }

    async fn dead_letters(&self, source: &str) -> Vec<(String, String)> {
        let taken = self.broker().await.drain(&format!("{source}.dlq")).await;
        let mut dead = self.dead.lock().unwrap();
        let seen = dead.entry(source.to_owned()).or_default();
        for (props, _) in taken {
            let key = header_str(&props, header_names::KEY).unwrap_or_default();
            seen.push((key, header_str(&props, header_names::REASON).unwrap_or_default()));
        }
        seen.clone()
    }
}

impl Drop for Rabbit {
    /// Deletes the test's queues (on a thread of its own: the test's runtime is ending).
    fn drop(&mut self) {
        let queues = std::mem::take(&mut *self.queues.lock().unwrap());
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let broker = Broker::connect().await;
                for q in queues {
                    broker.cleanup(&q).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

adapter_conformance_tests!(rabbitmq, Rabbit::new());
