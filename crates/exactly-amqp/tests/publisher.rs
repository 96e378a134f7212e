//! `AmqpPublisher` (the outbox relay's publisher) on the real RabbitMQ: records arrive
//! with their headers, persistent; a record no queue takes and an exchange that does not
//! exist are errors naming the destination, and the publisher works again afterwards.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Broker, header_str, unique, url};
use exactly_amqp::AmqpPublisher;
use exactly_amqp::lapin::options::QueueDeclareOptions;
use exactly_amqp::lapin::types::FieldTable;
use exactly_core::OutboundRecord;
use exactly_core::publish::Publish;

#[tokio::test]
async fn records_arrive_and_refusals_are_errors_naming_the_destination() {
    let broker = Broker::connect().await;
    let queue = unique("publisher");
    let opts = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    broker.channel.queue_declare(queue.as_str().into(), opts, FieldTable::default()).await.unwrap();
    let publisher = AmqpPublisher::new(url());
    assert!(!format!("{publisher:?}").contains("guest:guest"), "no password in Debug");

    let records: Vec<OutboundRecord> = (0..3)
        .map(|i| {
            OutboundRecord::new("", format!("settled {i}"))
                .key(queue.clone())
                .header("idempotency-key", format!("k:{i}"))
        })
        .collect();
    publisher.publish(&records).await.unwrap();
    let got = broker.drain(&queue).await;
    assert_eq!(got.len(), 3);
    for (i, (props, body)) in got.iter().enumerate() {
        assert_eq!(body, format!("settled {i}").as_bytes(), "in order");
        assert_eq!(header_str(props, "idempotency-key").as_deref(), Some(format!("k:{i}").as_str()));
        assert_eq!(props.delivery_mode(), &Some(2), "persistent");
    }

    let nowhere = OutboundRecord::new("", "lost?").key(unique("no-such-queue"));
    let err = publisher.publish(&[nowhere]).await.unwrap_err();
    assert!(err.to_string().contains("no queue took it"), "{err}");
    let err = publisher.publish(&[OutboundRecord::new("no-such-exchange", "x")]).await.unwrap_err();
    assert_eq!(err.destination, "no-such-exchange", "{err}");
    // The channel the broker closed is replaced.
    publisher.publish(&records[..1]).await.unwrap();
    assert_eq!(broker.drain(&queue).await.len(), 1);
    let _ = broker.channel.queue_delete(queue.as_str().into(), Default::default()).await;
}
