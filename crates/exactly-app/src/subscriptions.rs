//! Each configured subscription, built into the adapter's [`Subscription`]. An adapter
//! this binary was built without is a configuration error naming the feature.

use exactly_core::{Processor, Subscription};

use crate::Error;
use crate::config::{AmqpSubscription, Config, KafkaSubscription};

/// A `[kafka.<name>]` table's consumer.
#[cfg(feature = "kafka")]
pub(crate) fn kafka(
    name: &str,
    sub: &KafkaSubscription,
    config: &Config,
    processor: Processor,
) -> Result<Box<dyn Subscription>, Error> {
    use crate::config::KafkaOrdering;
    let mut b = exactly_kafka::Consumer::builder(&sub.brokers, &sub.group)
        .topics(sub.topics.iter().cloned())
        .shutdown_timeout(config.shutdown_timeout);
    if let Some(n) = sub.max_in_flight {
        b = b.max_in_flight(n);
    }
    if let Some(o) = sub.ordering {
        b = b.ordering(match o {
            KafkaOrdering::Partition => exactly_kafka::Ordering::Partition,
            KafkaOrdering::Key => exactly_kafka::Ordering::Key,
        });
    }
    if let Some(d) = sub.commit_interval {
        b = b.commit_interval(d);
    }
    if let Some(d) = sub.revoke_timeout {
        b = b.revoke_timeout(d);
    }
    if let Some(s) = &sub.dead_letter_suffix {
        b = b.dead_letter_suffix(s);
    }
    if let Some(id) = &sub.transactional {
        b = b.transactional(id);
    }
    if let Some(id) = &sub.group_instance_id {
        b = b.group_instance_id(id);
    }
    if let Some(d) = sub.unreachable_timeout {
        b = b.unreachable_timeout(d);
    }
    for (k, v) in &sub.librdkafka {
        b = b.set(k, v);
    }
    let consumer = b.build(processor).map_err(|e| Error::subscription("kafka", name, e))?;
    Ok(Box::new(consumer))
}

#[cfg(not(feature = "kafka"))]
pub(crate) fn kafka(
    name: &str,
    _sub: &KafkaSubscription,
    _config: &Config,
    _processor: Processor,
) -> Result<Box<dyn Subscription>, Error> {
    Err(without("kafka", name))
}

/// An `[amqp.<name>]` table's consumer.
#[cfg(feature = "amqp")]
pub(crate) fn amqp(
    name: &str,
    sub: &AmqpSubscription,
    config: &Config,
    processor: Processor,
) -> Result<Box<dyn Subscription>, Error> {
    let mut b = exactly_amqp::Consumer::builder(&sub.url, &sub.queue)
        .shutdown_timeout(config.shutdown_timeout)
        .topology(topology(name, &sub.topology)?);
    if let Some(n) = sub.prefetch {
        b = b.prefetch(n);
    }
    if let Some(tag) = &sub.consumer_tag {
        b = b.consumer_tag(tag);
    }
    if let Some(d) = sub.initial_connect_timeout {
        b = b.initial_connect_timeout(d);
    }
    if let Some(r) = sub.reconnect_backoff {
        b = b.reconnect_backoff(r.min, r.max);
    }
    if let Some(d) = sub.wait_in_place_up_to {
        b = b.wait_in_place_up_to(d);
    }
    let consumer = b.build(processor).map_err(|e| Error::subscription("amqp", name, e))?;
    Ok(Box::new(consumer))
}

/// `[amqp.<name>.topology]` as the adapter's [`Topology`](exactly_amqp::Topology).
#[cfg(feature = "amqp")]
fn topology(name: &str, t: &crate::config::AmqpTopology) -> Result<exactly_amqp::Topology, Error> {
    use exactly_amqp::lapin::types::{AMQPValue, LongString};

    use crate::config::QueueArgument;
    let mut out = match (t.declare, &t.dead_letter_exchange) {
        (true, _) => exactly_amqp::Topology::declare(),
        (false, Some(dlx)) => exactly_amqp::Topology::existing(dlx),
        (false, None) => {
            return Err(Error::Config(format!(
                "amqp.{name}.topology.dead_letter_exchange: with declare = false, name the existing exchange \
                 dead-letters go to"
            )));
        }
    };
    if let (true, Some(dlx)) = (t.declare, &t.dead_letter_exchange) {
        out = out.dead_letter_exchange(dlx);
    }
    if let Some(q) = &t.dead_letter_queue {
        out = out.dead_letter_queue(q);
    }
    if let Some(k) = &t.dead_letter_routing_key {
        out = out.dead_letter_routing_key(k);
    }
    if let Some(d) = &t.retry_delays {
        out = out.retry_delays(d.iter().copied());
    }
    for (k, v) in &t.queue_arguments {
        out = out.queue_argument(
            k,
            match v {
                QueueArgument::Bool(b) => AMQPValue::Boolean(*b),
                QueueArgument::Int(n) => AMQPValue::LongLongInt(*n),
                QueueArgument::Text(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            },
        );
    }
    Ok(out)
}

#[cfg(not(feature = "amqp"))]
pub(crate) fn amqp(
    name: &str,
    _sub: &AmqpSubscription,
    _config: &Config,
    _processor: Processor,
) -> Result<Box<dyn Subscription>, Error> {
    Err(without("amqp", name))
}

/// The error of a table whose adapter is not in this build.
#[cfg(any(not(feature = "kafka"), not(feature = "amqp")))]
fn without(kind: &str, name: &str) -> Error {
    Error::Config(format!(
        "{kind}.{name}: this binary was built without the {kind} adapter; enable the `{kind}` feature of `exactly`"
    ))
}
