//! Configuring a [`Consumer`].

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use exactly_core::Processor;
use lapin::uri::AMQPUri;
use tokio_util::sync::CancellationToken;

use crate::consumer::{Config, Consumer};
use crate::error::redact_url;
use crate::{Error, Topology};

/// Settings of a [`Consumer`]. Every one has a default; [`build`](Self::build) checks
/// them. `Debug` shows the URL without its password.
#[derive(Clone)]
#[must_use]
pub struct ConsumerBuilder {
    url: String,
    queue: String,
    prefetch: u16,
    topology: Topology,
    consumer_tag: Option<String>,
    shutdown_timeout: Duration,
    connect_timeout: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
    wait_in_place_up_to: Duration,
}

impl std::fmt::Debug for ConsumerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("url", &redact_url(&self.url))
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("topology", &self.topology)
            .field("consumer_tag", &self.consumer_tag)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl ConsumerBuilder {
    pub(crate) fn new(url: impl Into<String>, queue: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            queue: queue.into(),
            prefetch: 250,
            topology: Topology::declare(),
            consumer_tag: None,
            shutdown_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(30),
            wait_in_place_up_to: Duration::from_secs(1),
        }
    }

    /// Unacknowledged messages the broker may send at once (`basic.qos`, default 250, as
    /// in Spring AMQP): the bound on messages processed at once. With a durable store each
    /// message holds its slot until its group commit is fsynced, so a small prefetch
    /// limits throughput to about prefetch / commit latency.
    pub fn prefetch(mut self, n: u16) -> Self {
        self.prefetch = n;
        self
    }

    /// What to declare (default [`Topology::declare`]).
    pub fn topology(mut self, topology: Topology) -> Self {
        self.topology = topology;
        self
    }

    /// The consumer tag (default `exactly-<consumer name>-<pid>`).
    pub fn consumer_tag(mut self, tag: impl Into<String>) -> Self {
        self.consumer_tag = Some(tag.into());
        self
    }

    /// How long a graceful stop waits for messages in flight (default 30 s).
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// How long to keep trying to connect at start-up before giving up with
    /// [`Error::ConnectTimeout`] (default 30 s). Once connected, a lost connection is
    /// retried for ever.
    pub fn initial_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Reconnection backoff: exponential from `min` to `max`, full jitter (default 100 ms
    /// to 30 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max;
        self
    }

    /// Retries with a delay up to this long wait in the consumer, holding the message;
    /// longer ones go through a retry queue (default 1 s).
    pub fn wait_in_place_up_to(mut self, d: Duration) -> Self {
        self.wait_in_place_up_to = d;
        self
    }

    /// Checks the settings and makes the consumer, which runs `processor` for every
    /// delivery.
    pub fn build(self, processor: Processor) -> Result<Consumer, Error> {
        let url = redact_url(&self.url);
        AMQPUri::from_str(&self.url).map_err(|reason| Error::Url { url: url.clone(), reason })?;
        if self.queue.is_empty() || self.queue.len() > 255 {
            return Err(Error::Config { field: "queue", reason: format!("{:?} must be 1 to 255 bytes", self.queue) });
        }
        if self.prefetch == 0 {
            return Err(Error::Config { field: "prefetch", reason: "must be at least 1".into() });
        }
        let reconnect = exactly_core::RetryPolicy::exponential(self.reconnect_min, self.reconnect_max, u32::MAX)
            .map_err(|e| Error::Config { field: "reconnect_backoff", reason: e.to_string() })?;
        let topology = self.topology.resolve(&self.queue)?;
        let tag =
            self.consumer_tag.unwrap_or_else(|| format!("exactly-{}-{}", processor.consumer(), std::process::id()));
        if tag.len() > 255 {
            return Err(Error::Config { field: "consumer_tag", reason: "must be at most 255 bytes".into() });
        }
        Ok(Consumer::new(
            Arc::new(Config {
                url: self.url,
                shown_url: url,
                queue: self.queue,
                prefetch: self.prefetch,
                topology,
                tag,
                shutdown_timeout: self.shutdown_timeout,
                connect_timeout: self.connect_timeout,
                reconnect,
                wait_in_place_up_to: self.wait_in_place_up_to,
            }),
            processor,
            CancellationToken::new(),
        ))
    }
}
