//! [`AmqpPublisher`]: publishes emitted records with publisher confirms, for an outbox's
//! relay (`exactly_postgres::Relay`).

use exactly_core::OutboundRecord;
use exactly_core::async_trait;
use exactly_core::publish::{Publish, PublishError};
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::convert::{outbound_properties, routing_key, short};

/// Publishes records to RabbitMQ: each to its exchange (`destination`; `""` is the
/// default exchange) with its key as routing key, persistent, `mandatory` (a record no
/// queue takes is an error, not dropped), confirmed by the broker. Connects on first use
/// and again after a failure.
pub struct AmqpPublisher {
    url: String,
    shown_url: String,
    channel: Mutex<Option<(Connection, Channel)>>,
}

impl std::fmt::Debug for AmqpPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpPublisher").field("url", &self.shown_url).finish()
    }
}

impl AmqpPublisher {
    /// A publisher to the broker at `url` (`amqp://user:password@host:5672/vhost`).
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        let shown_url = crate::redact_url(&url);
        Self { url, shown_url, channel: Mutex::new(None) }
    }

    async fn channel(&self, slot: &mut Option<(Connection, Channel)>) -> Result<Channel, String> {
        if let Some((_, ch)) = slot.as_ref().filter(|(c, ch)| c.status().connected() && ch.status().connected()) {
            return Ok(ch.clone());
        }
        let props = ConnectionProperties::default().with_connection_name("exactly outbox relay".into());
        let conn = Connection::connect(&self.url, props)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.shown_url))?;
        let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        ch.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| e.to_string())?;
        *slot = Some((conn, ch.clone()));
        Ok(ch)
    }
}

#[async_trait]
impl Publish for AmqpPublisher {
    async fn publish(&self, records: &[OutboundRecord]) -> Result<(), PublishError> {
        let mut slot = self.channel.lock().await;
        let failed = |r: &OutboundRecord, reason: String| PublishError { destination: r.destination.clone(), reason };
        let Some(first) = records.first() else { return Ok(()) };
        let ch = self.channel(&mut slot).await.map_err(|e| failed(first, e))?;
        // Published one after another, their confirmations awaited together.
        let mut confirms = Vec::with_capacity(records.len());
        for r in records {
            let key = routing_key(r);
            let opts = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
            match ch.basic_publish(short(&r.destination), short(&key), opts, &r.payload, outbound_properties(r)).await {
                Ok(confirm) => confirms.push((r, confirm)),
                Err(e) => {
                    *slot = None;
                    return Err(failed(r, e.to_string()));
                }
            }
        }
        for (r, confirm) in confirms {
            let answer = confirm.await;
            let reason = match answer {
                Ok(Confirmation::Ack(None)) => continue,
                Ok(Confirmation::Ack(Some(returned))) => {
                    format!("no queue took it (returned: {})", returned.reply_text.as_str())
                }
                Ok(Confirmation::Nack(_)) => "the broker refused it (nack)".to_owned(),
                Ok(Confirmation::NotRequested) => "the broker did not confirm it".to_owned(),
                Err(e) => {
                    *slot = None;
                    e.to_string()
                }
            };
            return Err(failed(r, reason));
        }
        Ok(())
    }
}
