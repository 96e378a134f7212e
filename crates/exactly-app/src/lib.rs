//! Consumer binaries for [`exactly`](https://docs.rs/exactly): configuration from a TOML
//! file and the environment, several subscriptions in one process, SIGINT/SIGTERM handling,
//! Prometheus `/metrics` and `/healthz` + `/readyz`.
//!
//! ```no_run
//! use exactly_core::{handler_fn, Context, Message};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), exactly_app::Error> {
//!     exactly_app::App::from_env()?            // exactly.toml (or $EXACTLY_CONFIG), then EXACTLY_* variables
//!         .handler("orders", handler_fn(|m: Message, _c: Context| async move {
//!             let _order: serde_json::Value = m.decode()?;
//!             Ok(())
//!         }))
//!         .run()                                // until SIGINT/SIGTERM
//!         .await
//! }
//! ```
//!
//! Each `[kafka.<name>]` or `[amqp.<name>]` table of the configuration is a subscription
//! run by the handler registered under `<name>`, which is also its key namespace. See
//! [`Config`] for every setting.
//!
//! Stopping: the first SIGINT or SIGTERM stops taking messages, lets those in flight finish
//! (up to `shutdown_timeout`), flushes the store, commits offsets and acks, and returns
//! `Ok`. A second signal exits the process at once with status 130: nothing acknowledged is
//! lost (a message is acknowledged only after its done-record is durable), and what was not
//! acknowledged is delivered again.

mod config;
mod http;
mod outbox;
mod runner;
mod slo;
mod subscriptions;
mod telemetry;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use config::{
    AmqpSubscription, AmqpTopology, Backoff, Config, Engine, HttpConfig, KafkaOrdering, KafkaSubscription, LogConfig,
    LogFormat, QueueArgument, Slo, StoreConfig,
};
use exactly_core::{DedupStore, Handler, Processor, ProcessorBuilder, SledStore, Subscription};
pub use slo::prometheus_rules;

/// What can stop an app.
///
/// `Debug` prints the message and its causes on one line, so that
/// `fn main() -> Result<(), exactly::app::Error>` ends a failed start with
/// `Error: subscription amqp.payments: cannot connect to amqp://guest:***@...: Connection refused`
/// and exit code 1.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is wrong; the message names the field.
    #[error("configuration: {0}")]
    Config(String),
    /// The store could not be opened or flushed.
    #[error("store: {0}")]
    Store(#[from] exactly_core::Error),
    /// A subscription could not start, or stopped on an error it cannot recover from.
    #[error("subscription {name}: {source}")]
    Subscription {
        /// The subscription, as its table is named (`kafka.orders`, `amqp.payments`).
        name: String,
        /// Why: the adapter's error.
        #[source]
        source: exactly_core::subscription::SubscriptionError,
    },
    /// The HTTP endpoint could not listen.
    #[error("http endpoint on {addr}: {source}")]
    Http {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&exactly_core::error_line(self))
    }
}

/// A relay of the store's outbox, made once the publisher is known.
type MakeRelay = Box<dyn FnOnce(Arc<dyn exactly_core::publish::Publish>) -> Relay + Send>;

#[cfg(feature = "postgres")]
type Relay = exactly_postgres::Relay;
#[cfg(not(feature = "postgres"))]
type Relay = std::convert::Infallible;

/// The configured store, and its outbox's relay when `store.outbox` is on.
async fn open_store(cfg: &StoreConfig) -> Result<(Arc<dyn DedupStore>, Option<MakeRelay>), Error> {
    let create = cfg.create_if_missing;
    let without = |engine: &str| {
        Error::Config(format!(
            "store.engine: this binary was built without the {engine} store; enable the `{engine}` feature of `exactly`"
        ))
    };
    let local: Arc<dyn DedupStore> = match cfg.engine {
        Engine::Sled => Arc::new(SledStore::builder(&cfg.path).create_if_missing(create).open()?),
        #[cfg(feature = "redb")]
        Engine::Redb => Arc::new(exactly_core::store::RedbStore::builder(&cfg.path).create_if_missing(create).open()?),
        #[cfg(feature = "fjall")]
        Engine::Fjall => {
            Arc::new(exactly_core::store::FjallStore::builder(&cfg.path).create_if_missing(create).open()?)
        }
        #[cfg(feature = "postgres")]
        Engine::Postgres => {
            let url = cfg.url.clone().ok_or_else(|| {
                Error::Config("store.url: engine = \"postgres\" needs the database's URL (EXACTLY_STORE__URL)".into())
            })?;
            let mut b = exactly_postgres::PgStore::builder(url).create_if_missing(create);
            if let Some(schema) = &cfg.schema {
                b = b.schema(schema);
            }
            if let Some(n) = cfg.pool_size {
                b = b.pool_size(n);
            }
            if let Some(n) = cfg.transaction_pool_size {
                b = b.transaction_pool_size(n);
            }
            let store = Arc::new(b.outbox(cfg.outbox).open().await?);
            let relay: Option<MakeRelay> = match cfg.outbox {
                true => {
                    let s = store.clone();
                    Some(Box::new(move |publisher| s.relay(publisher)))
                }
                false => None,
            };
            return Ok((store, relay));
        }
        #[allow(unreachable_patterns)]
        other => return Err(without(other.name())),
    };
    Ok((local, None))
}

impl Error {
    #[cfg_attr(not(any(feature = "kafka", feature = "amqp")), allow(dead_code))]
    fn subscription(kind: &str, name: &str, source: impl Into<exactly_core::subscription::SubscriptionError>) -> Self {
        Error::Subscription { name: format!("{kind}.{name}"), source: source.into() }
    }
}

/// Makes a subscription's processor on the store, with its settlement objective if any.
type MakeProcessor =
    Box<dyn FnOnce(Arc<dyn DedupStore>, Option<Duration>) -> Result<Processor, exactly_core::Error> + Send>;

/// A consumer application: a configuration and the handlers its subscriptions name.
pub struct App {
    config: Config,
    handlers: BTreeMap<String, MakeProcessor>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("config", &self.config).field("handlers", &self.handlers.keys()).finish()
    }
}

impl App {
    /// An app with this configuration.
    pub fn new(config: Config) -> Self {
        Self { config, handlers: BTreeMap::new() }
    }

    /// Reads the configuration from `$EXACTLY_CONFIG` (which must exist when set) or
    /// `exactly.toml` (optional), then `EXACTLY_*` environment variables.
    pub fn from_env() -> Result<Self, Error> {
        let config = match std::env::var_os("EXACTLY_CONFIG") {
            Some(path) => Config::load(path, true)?,
            None => Config::load("exactly.toml", false)?,
        };
        Ok(Self::new(config))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Registers the handler of the subscription named `name` (also its key namespace),
    /// with the processor's defaults.
    pub fn handler<H: Handler>(self, name: &str, handler: H) -> Self {
        self.handler_with(name, handler, |b| b)
    }

    /// Registers a handler and adjusts its processor (retry policy, timeout, keys...).
    pub fn handler_with<H: Handler>(
        mut self,
        name: &str,
        handler: H,
        configure: impl FnOnce(ProcessorBuilder) -> ProcessorBuilder + Send + 'static,
    ) -> Self {
        let owned = name.to_owned();
        self.handlers.insert(
            name.to_owned(),
            Box::new(move |store, objective| {
                let builder = Processor::builder(owned, handler).shared_store(store);
                let builder = match objective {
                    Some(d) => builder.settlement_objective(d),
                    None => builder,
                };
                configure(builder).build()
            }),
        );
        self
    }

    /// Runs every subscription until SIGINT/SIGTERM (or until one fails), then stops
    /// gracefully. Sets up logging and the metrics recorder unless the program already did.
    pub async fn run(self) -> Result<(), Error> {
        let stop = tokio_util::sync::CancellationToken::new();
        let cancel = stop.clone();
        let signals = tokio::spawn(exactly_core::shutdown::stop_on_signals(move || cancel.cancel()));
        let result = self.run_until(stop).await;
        signals.abort();
        result
    }

    /// Runs every subscription until `stop` is cancelled (or one fails), then stops
    /// gracefully; no signal handling. For tests and programs with their own signals.
    pub async fn run_until(self, stop: tokio_util::sync::CancellationToken) -> Result<(), Error> {
        telemetry::init_logs(&self.config.log);
        let metrics = telemetry::init_metrics();
        let Self { config, mut handlers } = self;

        // The port first: a taken port stops the start before any message is taken.
        let listener = match config.http.disabled {
            true => None,
            false => Some(http::bind(config.http.listen).await?),
        };
        let (store, relay) = open_store(&config.store).await?;
        let publisher = relay.is_some().then(|| outbox::publisher(&config)).transpose()?;
        let mut take = |kind: &str, name: &str, slo: Option<&Slo>| {
            let make = handlers.remove(name).ok_or_else(|| {
                Error::Config(format!("{kind}.{name}: no handler is registered under {name:?} (App::handler)"))
            })?;
            let objective = slo.map(|s| s.settled_within);
            make(store.clone(), objective).map_err(|e| Error::Config(format!("{kind}.{name}: {e}")))
        };
        slo::export(&config);

        // Every subscription is built before any starts: a bad one stops the start cleanly.
        let mut subscriptions: Vec<(String, Box<dyn Subscription>)> = Vec::new();
        for (name, sub) in &config.kafka {
            let s = subscriptions::kafka(name, sub, &config, take("kafka", name, sub.slo.as_ref())?)?;
            subscriptions.push((format!("kafka.{name}"), s));
        }
        for (name, sub) in &config.amqp {
            let s = subscriptions::amqp(name, sub, &config, take("amqp", name, sub.slo.as_ref())?)?;
            subscriptions.push((format!("amqp.{name}"), s));
        }
        for name in handlers.keys() {
            tracing::warn!(handler = %name, "a handler is registered but no subscription names it");
        }
        // One sweeper for the store, whatever the number of subscriptions.
        let _sweeper = exactly_core::Sweeper::default().start(store.clone(), Arc::new(exactly_core::SystemClock));
        let (mut running, probes) = runner::Running::start(subscriptions);
        // The relay runs until the subscriptions have drained: what they emitted last goes
        // out too (or stays in the outbox for the next start, or another instance's relay).
        let relay_stop = tokio_util::sync::CancellationToken::new();
        let relaying = relay.zip(publisher).map(|(make, publisher)| {
            let (relay, stop) = (make(publisher), relay_stop.clone());
            tokio::spawn(async move { run_relay(relay, stop).await })
        });
        let server = listener.map(|l| http::serve(l, metrics, probes, stop.clone()));
        let gauges = tokio::spawn(telemetry::store_gauges(store.clone()));
        tracing::info!(kafka = config.kafka.len(), amqp = config.amqp.len(), store = %config.store.describe(), "exactly app running");

        let failed = running.until_stopped(&stop).await;
        let first_error = running.drain(config.shutdown_timeout + Duration::from_secs(5), failed).await;
        gauges.abort();
        relay_stop.cancel();
        if let Some(r) = relaying {
            let _ = r.await;
        }
        store.flush().await?;
        stop.cancel();
        if let Some(s) = server {
            let _ = s.await;
        }
        tracing::info!("stopped");
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(feature = "postgres")]
async fn run_relay(relay: Relay, stop: tokio_util::sync::CancellationToken) {
    if let Err(e) = relay.run(stop.cancelled()).await {
        tracing::error!(error = %e, "the outbox relay stopped");
    }
}

#[cfg(not(feature = "postgres"))]
async fn run_relay(relay: Relay, _stop: tokio_util::sync::CancellationToken) {
    match relay {}
}
