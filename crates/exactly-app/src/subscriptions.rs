//! Each configured subscription, built into the adapter's [`Subscription`].

use exactly_core::{Processor, Subscription};

use crate::Error;
use crate::config::{AmqpSubscription, Config, KafkaSubscription};

/// A `[kafka.<name>]` table's consumer.
pub(crate) fn kafka(
    name: &str,
    sub: &KafkaSubscription,
    config: &Config,
    processor: Processor,
) -> Result<Box<dyn Subscription>, Error> {
    let mut b = exactly_kafka::Consumer::builder(&sub.brokers, &sub.group)
        .topics(sub.topics.iter().cloned())
        .shutdown_timeout(config.shutdown_timeout);
    if let Some(n) = sub.max_in_flight {
        b = b.max_in_flight(n);
    }
    for (k, v) in &sub.librdkafka {
        b = b.set(k, v);
    }
    let consumer = b.build(processor).map_err(|e| Error::subscription("kafka", name, e))?;
    Ok(Box::new(consumer))
}

/// An `[amqp.<name>]` table's consumer.
pub(crate) fn amqp(
    name: &str,
    sub: &AmqpSubscription,
    config: &Config,
    processor: Processor,
) -> Result<Box<dyn Subscription>, Error> {
    let mut b = exactly_amqp::Consumer::builder(&sub.url, &sub.queue).shutdown_timeout(config.shutdown_timeout);
    if let Some(n) = sub.prefetch {
        b = b.prefetch(n);
    }
    let consumer = b.build(processor).map_err(|e| Error::subscription("amqp", name, e))?;
    Ok(Box::new(consumer))
}
