//! `KafkaPublisher` (the outbox relay's producer) on librdkafka's mock cluster: records go
//! out with their keys and headers, in order, and a broker that refuses them is an error
//! naming the topic, not a silent success.
#![allow(clippy::unwrap_used)]

mod common;

use common::{read_all, unique};
use exactly_core::OutboundRecord;
use exactly_core::publish::Publish;
use exactly_kafka::KafkaPublisher;
use exactly_kafka::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use exactly_kafka::testing::MockKafka;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_go_out_with_their_keys_and_headers_in_order() {
    let kafka = MockKafka::new(1).unwrap();
    let topic = unique("settled");
    kafka.create_topic(&topic, 1).unwrap();
    let publisher =
        KafkaPublisher::with_settings(kafka.bootstrap_servers(), [("group.id", "ignored: consumer only")]).unwrap();
    let records: Vec<OutboundRecord> = (0..5)
        .map(|i| {
            OutboundRecord::new(&topic, format!("settled {i}"))
                .key(format!("acct-{i}"))
                .header("idempotency-key", format!("payments:pay-{i}:0"))
        })
        .collect();
    publisher.publish(&records).await.unwrap();
    let read = read_all(kafka.bootstrap_servers(), &topic, 5).await;
    for (i, (key, payload, headers)) in read.iter().enumerate() {
        assert_eq!(payload, format!("settled {i}").as_bytes(), "in order");
        assert_eq!(key.as_deref(), Some(format!("acct-{i}").as_bytes()));
        assert_eq!(headers.get("idempotency-key").map(String::as_str), Some(format!("payments:pay-{i}:0").as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_is_an_error_naming_its_topic() {
    let kafka = MockKafka::new(1).unwrap();
    let topic = unique("refused");
    kafka.create_topic(&topic, 1).unwrap();
    let publisher = KafkaPublisher::with_settings(kafka.bootstrap_servers(), [("message.timeout.ms", "3000")]).unwrap();
    let refusal = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 20];
    kafka.request_errors(RDKafkaApiKey::Produce, &refusal);
    let err = publisher.publish(&[OutboundRecord::new(&topic, "x")]).await.unwrap_err();
    assert_eq!(err.destination, topic);
    assert!(err.to_string().starts_with(&format!("cannot publish to {topic}: ")), "{err}");
}
