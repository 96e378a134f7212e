//! Carrying out the processor's disposition for one delivery.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use exactly_core::{Disposition, Outcome, Processed, Processor};
use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Error;
use crate::acks::Acks;
use crate::consumer::{Config, Stats};
use crate::convert::{self, short};

/// When the circuit breaker last asked to pause, shared by the deliveries of a session.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pause(Arc<Mutex<Option<Instant>>>);

impl Pause {
    fn set(&self, after: Duration) {
        let until = Instant::now() + after;
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none_or(|t| t < until) {
            *p = Some(until);
        }
    }

    pub(crate) fn until(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the deliveries of one connection share.
pub(crate) struct Session {
    pub(crate) config: Arc<Config>,
    pub(crate) processor: Processor,
    /// A channel in confirm mode, for everything the consumer publishes.
    pub(crate) publisher: Channel,
    /// Cancelled when the connection is gone: stop retrying in place.
    pub(crate) alive: CancellationToken,
    pub(crate) pause: Pause,
    pub(crate) stats: Arc<Stats>,
    pub(crate) acks: Acks,
}

impl Session {
    /// Processes one delivery until it is acknowledged, dead-lettered, requeued, or its
    /// connection is gone. An error is a store failure: the consumer must stop.
    pub(crate) async fn settle(&self, mut d: Delivery) -> Result<(), exactly_core::Error> {
        let payload = Bytes::from(std::mem::take(&mut d.data));
        let msg = convert::to_message(&d, payload.clone(), &self.config.queue);
        let span = tracing::info_span!(
            "amqp_delivery",
            queue = %self.config.queue,
            message_id = msg.message_id().unwrap_or(""),
            delivery_tag = d.delivery_tag,
            redelivered = d.redelivered,
        );
        async {
            loop {
                if self.alive.is_cancelled() {
                    self.acks.dropped(d.delivery_tag);
                    return Ok(());
                }
                let mut p = self.processor.process(msg.clone()).await?;
                let wait = match &p.disposition {
                    Disposition::Ack => {
                        if let Err(e) = self.publish_outputs(&d, &p).await {
                            tracing::warn!(error = %e, "outputs not published; leaving the message unacknowledged for redelivery");
                            self.acks.dropped(d.delivery_tag);
                            return Ok(());
                        }
                        self.ack(&d);
                        return Ok(());
                    }
                    Disposition::Retry { after } => {
                        if *after > self.config.wait_in_place_up_to
                            && let Some((tier, queue)) = self.config.topology.retry_queue(*after) {
                                match self.publish("", queue, &payload, convert::retry_properties(&d, p.attempts, &self.config.queue)).await {
                                    Ok(()) => {
                                        tracing::debug!(retry_queue = %queue, ?tier, "waiting in a retry queue");
                                        self.stats.requeued.fetch_add(1, Ordering::Relaxed);
                                        self.ack(&d);
                                        return Ok(());
                                    }
                                    Err(e) => tracing::warn!(error = %e, "retry queue publish failed; waiting in place"),
                                }
                            }
                        *after
                    }
                    Disposition::DeadLetter(dl) => {
                        let topo = &self.config.topology;
                        let props = convert::dead_letter_properties(
                            &d,
                            dl,
                            &self.config.queue,
                            self.processor.consumer(),
                            self.processor.clock().now(),
                        );
                        match self.publish(&topo.dead_letter_exchange, &topo.dead_letter_routing_key, &payload, props).await {
                            Ok(()) => {
                                p.confirm_dead_letter().await?;
                                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                                self.ack(&d);
                                return Ok(());
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "dead-letter not confirmed; keeping the message and trying again");
                                p.abandon_dead_letter().await?;
                                Duration::from_secs(1)
                            }
                        }
                    }
                    Disposition::Pause { after } => {
                        self.pause.set(*after);
                        *after
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.alive.cancelled() => {
                        self.acks.dropped(d.delivery_tag);
                        return Ok(());
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Hands the delivery to the ack batcher.
    fn ack(&self, d: &Delivery) {
        self.acks.done(d.delivery_tag, d.acker.clone());
    }

    /// Publishes the reply (to `reply_to`, with the correlation id) and the emitted
    /// records, each confirmed by the broker.
    async fn publish_outputs(&self, d: &Delivery, p: &Processed) -> Result<(), Error> {
        if let (Some(output), Some(reply_to)) = (&p.output, d.properties.reply_to()) {
            let cached = p.outcome == Outcome::Duplicate;
            self.publish("", reply_to.as_str(), output, convert::reply_properties(d, cached)).await?;
            self.stats.replies.fetch_add(1, Ordering::Relaxed);
        }
        for r in &p.emitted {
            self.publish(&r.destination, &convert::routing_key(r), &r.payload, convert::outbound_properties(r)).await?;
        }
        Ok(())
    }

    /// Publishes and waits for the broker's confirmation.
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        props: BasicProperties,
    ) -> Result<(), Error> {
        let failed = |reason: String| {
            metrics::counter!("exactly_amqp_publish_failures_total", "queue" => self.config.queue.clone()).increment(1);
            Error::Publish { exchange: exchange.to_owned(), routing_key: routing_key.to_owned(), reason }
        };
        let confirm = self
            .publisher
            .basic_publish(short(exchange), short(routing_key), BasicPublishOptions::default(), payload, props)
            .await
            .map_err(|e| failed(e.to_string()))?
            .await
            .map_err(|e| failed(e.to_string()))?;
        if confirm.is_nack() {
            return Err(failed("the broker refused it (nack)".into()));
        }
        Ok(())
    }
}
