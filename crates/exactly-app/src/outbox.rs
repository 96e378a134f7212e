//! `store.outbox = true` on the PostgreSQL store: emitted records go through the outbox,
//! and the app runs its relay, publishing to the broker its subscriptions use.

use std::sync::Arc;

use exactly_core::publish::Publish;

use crate::Error;
use crate::config::Config;

/// The publisher of the outbox's relay: the one broker the subscriptions use (the
/// configuration's validation made sure there is one).
pub(crate) fn publisher(config: &Config) -> Result<Arc<dyn Publish>, Error> {
    if let Some(a) = config.amqp.values().next() {
        return amqp_publisher(&a.url);
    }
    match config.kafka.values().next() {
        Some(k) => kafka_publisher(&k.brokers, k.librdkafka.clone()),
        None => Err(Error::Config("store.outbox: no subscription names a broker for the relay".into())),
    }
}

#[cfg(feature = "amqp")]
fn amqp_publisher(url: &str) -> Result<Arc<dyn Publish>, Error> {
    Ok(Arc::new(exactly_amqp::AmqpPublisher::new(url)))
}

#[cfg(not(feature = "amqp"))]
fn amqp_publisher(_url: &str) -> Result<Arc<dyn Publish>, Error> {
    Err(Error::Config("store.outbox: this binary was built without the amqp adapter".into()))
}

#[cfg(feature = "kafka")]
fn kafka_publisher(
    brokers: &str,
    settings: std::collections::BTreeMap<String, String>,
) -> Result<Arc<dyn Publish>, Error> {
    let p = exactly_kafka::KafkaPublisher::with_settings(brokers, settings)
        .map_err(|e| Error::Config(format!("store.outbox: {e}")))?;
    Ok(Arc::new(p))
}

#[cfg(not(feature = "kafka"))]
fn kafka_publisher(
    _brokers: &str,
    _settings: std::collections::BTreeMap<String, String>,
) -> Result<Arc<dyn Publish>, Error> {
    Err(Error::Config("store.outbox: this binary was built without the kafka adapter".into()))
}
