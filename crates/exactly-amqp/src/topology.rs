//! Declaring the queue, its dead-letter exchange and queue, and the retry queues.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use crate::Error;
use crate::convert::short;

/// What the consumer declares at each (re)connection.
///
/// The default declares, idempotently, for queue `q`:
/// - a durable direct exchange `q.dlx` and a durable queue `q.dlq` bound to it with
///   routing key `q`: where dead-letters go;
/// - the durable queue `q` itself, with `x-dead-letter-exchange = q.dlx` (so messages the
///   broker itself dead-letters, on a length limit or a TTL, land there too);
/// - durable retry queues `q.retry.<delay>` with `x-message-ttl = delay` whose expired
///   messages return to `q`: a retry waits in the tier of the smallest delay not shorter
///   than the one asked (one queue per tier, so a long wait never holds up a short one).
///
/// [`Topology::existing`] declares nothing and dead-letters to an exchange you name.
///
/// ```
/// use std::time::Duration;
/// use exactly_amqp::Topology;
/// let t = Topology::declare().dead_letter_exchange("errors").retry_delays([Duration::from_secs(5), Duration::from_secs(60)]);
/// # let _ = t;
/// ```
#[derive(Debug, Clone)]
pub struct Topology {
    declare: bool,
    dead_letter_exchange: Option<String>,
    dead_letter_queue: Option<String>,
    dead_letter_routing_key: Option<String>,
    retry_delays: Vec<Duration>,
    queue_arguments: Vec<(String, AMQPValue)>,
}

impl Default for Topology {
    fn default() -> Self {
        Self::declare()
    }
}

/// The default retry tiers.
pub const DEFAULT_RETRY_DELAYS: [Duration; 6] = [
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(15),
    Duration::from_secs(60),
    Duration::from_secs(300),
    Duration::from_secs(1800),
];

impl Topology {
    /// Declare the queue, the dead-letter exchange and queue, and the retry queues.
    pub fn declare() -> Self {
        Self {
            declare: true,
            dead_letter_exchange: None,
            dead_letter_queue: None,
            dead_letter_routing_key: None,
            retry_delays: DEFAULT_RETRY_DELAYS.to_vec(),
            queue_arguments: Vec::new(),
        }
    }

    /// Declare nothing: the queue and `dead_letter_exchange` must exist. Dead-letters are
    /// published there with the queue's name as routing key; retries wait in the
    /// consumer (the message stays unacknowledged meanwhile).
    pub fn existing(dead_letter_exchange: impl Into<String>) -> Self {
        Self {
            declare: false,
            dead_letter_exchange: Some(dead_letter_exchange.into()),
            retry_delays: Vec::new(),
            ..Self::declare()
        }
    }

    /// The dead-letter exchange's name (default `<queue>.dlx`).
    pub fn dead_letter_exchange(mut self, name: impl Into<String>) -> Self {
        self.dead_letter_exchange = Some(name.into());
        self
    }

    /// The dead-letter queue's name (default `<queue>.dlq`).
    pub fn dead_letter_queue(mut self, name: impl Into<String>) -> Self {
        self.dead_letter_queue = Some(name.into());
        self
    }

    /// The routing key dead-letters are published with (default: the queue's name).
    pub fn dead_letter_routing_key(mut self, key: impl Into<String>) -> Self {
        self.dead_letter_routing_key = Some(key.into());
        self
    }

    /// The retry tiers (default 2 s, 5 s, 15 s, 1 min, 5 min, 30 min). Empty: every retry
    /// waits in the consumer.
    pub fn retry_delays(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        let mut d: Vec<Duration> = delays.into_iter().filter(|d| !d.is_zero()).collect();
        d.sort();
        d.dedup();
        self.retry_delays = d;
        self
    }

    /// An extra argument for the main queue's declaration (`x-queue-type = quorum`, ...).
    pub fn queue_argument(mut self, name: impl Into<String>, value: AMQPValue) -> Self {
        self.queue_arguments.push((name.into(), value));
        self
    }

    /// Deletes what [`Topology::declare`] declares for `queue`, messages included: the
    /// queue, its retry queues, the dead-letter queue and exchange (tests, demos, teardown).
    /// Declares nothing and deletes nothing for [`Topology::existing`].
    pub async fn delete(&self, channel: &Channel, queue: &str) -> Result<(), Error> {
        let r = self.resolve(queue)?;
        if !r.declare {
            return Ok(());
        }
        let queues = std::iter::once(&r.queue).chain(r.retry.iter().map(|(_, q)| q)).chain([&r.dead_letter_queue]);
        for q in queues {
            channel
                .queue_delete(short(q), lapin::options::QueueDeleteOptions::default())
                .await
                .map_err(failed(format!("deleting queue {q}")))?;
        }
        channel
            .exchange_delete(short(&r.dead_letter_exchange), lapin::options::ExchangeDeleteOptions::default())
            .await
            .map_err(failed(format!("deleting exchange {}", r.dead_letter_exchange)))?;
        Ok(())
    }

    /// Declares, idempotently, what this topology declares for `queue`: the queue with its
    /// dead-letter arguments, the dead-letter exchange and queue, the retry queues. A
    /// consumer does it when it connects; a deployment script or a test that publishes
    /// before any consumer ran can do it first. (A topology of
    /// [`existing`](Self::existing) declares nothing.)
    pub async fn apply(&self, channel: &Channel, queue: &str) -> Result<(), Error> {
        self.resolve(queue)?.declare(channel).await
    }

    pub(crate) fn resolve(&self, queue: &str) -> Result<Resolved, Error> {
        let name = |field: &'static str, s: String| -> Result<String, Error> {
            if s.is_empty() || s.len() > 255 {
                return Err(Error::Config { field, reason: format!("{s:?} must be 1 to 255 bytes") });
            }
            Ok(s)
        };
        let dlx =
            name("dead_letter_exchange", self.dead_letter_exchange.clone().unwrap_or_else(|| format!("{queue}.dlx")))?;
        let dlq = name("dead_letter_queue", self.dead_letter_queue.clone().unwrap_or_else(|| format!("{queue}.dlq")))?;
        let retry = self
            .retry_delays
            .iter()
            .map(|d| Ok((*d, name("retry_delays", format!("{queue}.retry.{}", humane(*d)))?)))
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Resolved {
            declare: self.declare,
            queue: queue.to_owned(),
            dead_letter_exchange: dlx,
            dead_letter_queue: dlq,
            dead_letter_routing_key: self.dead_letter_routing_key.clone().unwrap_or_else(|| queue.to_owned()),
            retry,
            queue_arguments: self.queue_arguments.clone(),
        })
    }
}

fn humane(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The topology with every name decided.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub(crate) declare: bool,
    pub(crate) queue: String,
    pub(crate) dead_letter_exchange: String,
    pub(crate) dead_letter_queue: String,
    pub(crate) dead_letter_routing_key: String,
    /// (delay, queue name), shortest first.
    pub(crate) retry: Vec<(Duration, String)>,
    queue_arguments: Vec<(String, AMQPValue)>,
}

fn failed(what: String) -> impl FnOnce(lapin::Error) -> Error {
    move |source| {
        let text = source.to_string();
        let hint = if text.contains("PRECONDITION_FAILED") || text.contains("406") {
            "; it exists with other settings: delete it, or consume it as it is with Topology::existing() (in the app: [amqp.<name>.topology] declare = false)"
        } else if text.contains("ACCESS_REFUSED") || text.contains("403") {
            "; the user may not configure it: use Topology::existing() (in the app: [amqp.<name>.topology] declare = false) or grant configure permission"
        } else {
            ""
        };
        Error::Topology { what, source, hint }
    }
}

impl Resolved {
    /// The retry queue for a wait of `after`: the smallest tier not shorter, or the longest.
    pub(crate) fn retry_queue(&self, after: Duration) -> Option<&(Duration, String)> {
        self.retry.iter().find(|(d, _)| *d >= after).or_else(|| self.retry.last())
    }

    /// Declares everything, idempotently.
    pub(crate) async fn declare(&self, channel: &Channel) -> Result<(), Error> {
        if !self.declare {
            return Ok(());
        }
        let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        channel
            .exchange_declare(
                short(&self.dead_letter_exchange),
                ExchangeKind::Direct,
                ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .map_err(failed(format!("exchange {}", self.dead_letter_exchange)))?;
        channel
            .queue_declare(short(&self.dead_letter_queue), durable, FieldTable::default())
            .await
            .map_err(failed(format!("queue {}", self.dead_letter_queue)))?;
        channel
            .queue_bind(
                short(&self.dead_letter_queue),
                short(&self.dead_letter_exchange),
                short(&self.dead_letter_routing_key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(failed(format!("binding of {} to {}", self.dead_letter_queue, self.dead_letter_exchange)))?;
        let mut args = FieldTable::default();
        args.insert(
            short("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from(self.dead_letter_exchange.as_str())),
        );
        args.insert(
            short("x-dead-letter-routing-key"),
            AMQPValue::LongString(LongString::from(self.dead_letter_routing_key.as_str())),
        );
        for (k, v) in &self.queue_arguments {
            args.insert(short(k), v.clone());
        }
        channel
            .queue_declare(short(&self.queue), durable, args)
            .await
            .map_err(failed(format!("queue {}", self.queue)))?;
        for (delay, name) in &self.retry {
            let mut args = FieldTable::default();
            args.insert(
                short("x-message-ttl"),
                AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
            );
            args.insert(short("x-dead-letter-exchange"), AMQPValue::LongString(LongString::from("")));
            args.insert(
                short("x-dead-letter-routing-key"),
                AMQPValue::LongString(LongString::from(self.queue.as_str())),
            );
            channel.queue_declare(short(name), durable, args).await.map_err(failed(format!("queue {name}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_queue_and_retries_pick_a_tier() {
        let r = Topology::declare().resolve("orders").unwrap();
        assert_eq!((r.dead_letter_exchange.as_str(), r.dead_letter_queue.as_str()), ("orders.dlx", "orders.dlq"));
        assert_eq!(r.retry[0].1, "orders.retry.2s");
        assert_eq!(r.retry_queue(Duration::from_millis(2500)).unwrap().1, "orders.retry.5s");
        assert_eq!(r.retry_queue(Duration::from_secs(9999)).unwrap().1, "orders.retry.30m");
        assert!(Topology::existing("dlx").resolve("q").unwrap().retry_queue(Duration::from_secs(1)).is_none());
        assert!(Topology::declare().resolve(&"q".repeat(250)).is_err(), "derived names over 255 bytes are refused");
    }
}
