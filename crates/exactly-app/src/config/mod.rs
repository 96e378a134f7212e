//! The configuration of a consumer binary: a TOML file, then environment variables.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::Error;

mod broker;
mod slo;

pub use broker::{AmqpSubscription, AmqpTopology, Backoff, KafkaOrdering, KafkaSubscription, QueueArgument};
pub use slo::Slo;

/// Everything a consumer binary is configured with.
///
/// Sources, later ones winning: the defaults, the TOML file, then environment variables
/// `EXACTLY_<SECTION>__<FIELD>` (for example `EXACTLY_STORE__PATH=/var/lib/orders`,
/// `EXACTLY_HTTP__LISTEN=0.0.0.0:9100`, `EXACTLY_SHUTDOWN_TIMEOUT=10s`; a subscription's
/// fields as `EXACTLY_KAFKA__<NAME>__BROKERS`). Only variables whose first segment names a
/// section are read; `EXACTLY_CONFIG` and other tools' `EXACTLY_*` variables are ignored.
///
/// ```toml
/// [store]
/// path = "data/store"          # engine = "redb" or "fjall" for RedbStore, FjallStore
///
/// [http]
/// listen = "127.0.0.1:9090"    # /metrics, /healthz, /readyz
///
/// [kafka.orders]               # one subscription per table; the name picks the handler
/// brokers = "127.0.0.1:9092"
/// group = "orders-service"
/// topics = ["orders"]
///
/// [amqp.payments]
/// url = "amqp://guest:guest@127.0.0.1:5672/%2f"
/// queue = "payments"
/// prefetch = 250
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The dedup store, shared by every subscription (each has its own key namespace).
    #[serde(default)]
    pub store: StoreConfig,
    /// The HTTP endpoint for metrics and health checks.
    #[serde(default)]
    pub http: HttpConfig,
    /// Logs.
    #[serde(default)]
    pub log: LogConfig,
    /// How long a stop waits for messages in flight.
    #[serde(default = "default_shutdown", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Kafka subscriptions by handler name.
    #[serde(default)]
    pub kafka: BTreeMap<String, KafkaSubscription>,
    /// RabbitMQ subscriptions by handler name.
    #[serde(default)]
    pub amqp: BTreeMap<String, AmqpSubscription>,
}

fn default_shutdown() -> Duration {
    Duration::from_secs(30)
}

/// Which store, where.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sled` (default), `redb` or `fjall` (on disk, one instance), or `postgres` (shared
    /// by every instance).
    #[serde(default)]
    pub engine: Engine,
    /// The store directory (on-disk engines).
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// The database (`postgres`): `postgres://user:password@host:5432/database`. Never
    /// logged with its password.
    #[serde(default)]
    pub url: Option<String>,
    /// The schema of the store's tables (`postgres`; default `exactly`).
    #[serde(default)]
    pub schema: Option<String>,
    /// Connections to the database (`postgres`; default 8).
    #[serde(default)]
    pub pool_size: Option<usize>,
    /// Connections for handlers' own transactions, `ctx.postgres()` (`postgres`; default 8).
    #[serde(default)]
    pub transaction_pool_size: Option<usize>,
    /// Emitted records go through the outbox table, in the done-record's transaction, and
    /// the app runs its relay to the subscriptions' broker (`postgres`; default `false`).
    #[serde(default)]
    pub outbox: bool,
    /// Whether a directory without a store gets a new, empty one (default `true`). Set it
    /// to `false` once the store is in service: a lost volume then stops the consumer at
    /// its start instead of handling again every message within the retention.
    #[serde(default = "default_true")]
    pub create_if_missing: bool,
}

fn default_true() -> bool {
    true
}

fn default_store_path() -> PathBuf {
    PathBuf::from("exactly-store")
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            engine: Engine::default(),
            path: default_store_path(),
            url: None,
            schema: None,
            pool_size: None,
            transaction_pool_size: None,
            outbox: false,
            create_if_missing: true,
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("engine", &self.engine)
            .field("path", &self.path)
            .field("url", &self.url.as_deref().map(exactly_core::redact::url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("transaction_pool_size", &self.transaction_pool_size)
            .field("outbox", &self.outbox)
            .field("create_if_missing", &self.create_if_missing)
            .finish()
    }
}

impl StoreConfig {
    /// Where the store is, for logs: its directory, or its database without the password.
    pub fn describe(&self) -> String {
        match (self.engine, &self.url) {
            (Engine::Postgres, Some(url)) => exactly_core::redact::url(url),
            _ => self.path.display().to_string(),
        }
    }
}

/// The store's engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// `SledStore`.
    #[default]
    Sled,
    /// `RedbStore`.
    Redb,
    /// `FjallStore`.
    Fjall,
    /// `PgStore`: PostgreSQL, shared by every instance.
    Postgres,
}

impl Engine {
    /// As written in the configuration, and as the feature that brings it is named.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Sled => "sled",
            Engine::Redb => "redb",
            Engine::Fjall => "fjall",
            Engine::Postgres => "postgres",
        }
    }
}

/// The HTTP endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where to listen; `/metrics` (Prometheus text), `/healthz`, `/readyz`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Serve nothing.
    #[serde(default)]
    pub disabled: bool,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: default_listen(), disabled: false }
    }
}

/// Log output.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `human` (default) or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// An env-filter directive (`exactly=debug,warn`; default `info`); `RUST_LOG` wins
    /// over it.
    #[serde(default)]
    pub filter: Option<String>,
}

/// Log format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            store: StoreConfig::default(),
            http: HttpConfig::default(),
            log: LogConfig::default(),
            shutdown_timeout: default_shutdown(),
            kafka: BTreeMap::new(),
            amqp: BTreeMap::new(),
        }
    }
}

impl Config {
    /// Reads the defaults, then `file` (when it exists, or always when `required`), then
    /// `EXACTLY_*` environment variables.
    pub fn load(file: impl AsRef<Path>, required: bool) -> Result<Self, Error> {
        let file = file.as_ref();
        if required && !file.exists() {
            return Err(Error::Config(format!("configuration file {} not found", file.display())));
        }
        Self::from_figment(
            Figment::from(Serialized::defaults(Config::default()))
                .merge(Toml::file(file))
                .merge(Env::prefixed("EXACTLY_").filter(|k| is_setting(k.as_str())).split("__")),
        )
    }

    /// Reads a TOML text over the defaults (tests, embedded configurations).
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        Self::from_figment(Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)))
    }

    fn from_figment(f: Figment) -> Result<Self, Error> {
        let config: Config = f
            .extract()
            .map_err(|e| Error::Config(e.into_iter().map(|e| field_error(&e)).collect::<Vec<_>>().join("; ")))?;
        config.validate()?;
        Ok(config)
    }

    /// Each subscription's objectives: (`kind.name`, objectives), Kafka's first.
    pub fn slos(&self) -> impl Iterator<Item = (String, &Slo)> {
        let kafka = self.kafka.iter().filter_map(|(n, k)| Some((format!("kafka.{n}"), k.slo.as_ref()?)));
        kafka.chain(self.amqp.iter().filter_map(|(n, a)| Some((format!("amqp.{n}"), a.slo.as_ref()?))))
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |field: String, why: &str| Err(Error::Config(format!("{field}: {why}")));
        if self.kafka.is_empty() && self.amqp.is_empty() {
            return bad("kafka / amqp".into(), "no subscription is configured");
        }
        for (name, k) in &self.kafka {
            if k.brokers.trim().is_empty() {
                return bad(format!("kafka.{name}.brokers"), "must name at least one broker");
            }
            if k.group.trim().is_empty() {
                return bad(format!("kafka.{name}.group"), "must not be empty");
            }
            if k.topics.is_empty() {
                return bad(format!("kafka.{name}.topics"), "must list at least one topic");
            }
        }
        for (field, slo) in self.slos() {
            if let Some(why) = slo.problem() {
                return bad(format!("{field}.slo"), why);
            }
        }
        for (name, a) in &self.amqp {
            if a.queue.trim().is_empty() {
                return bad(format!("amqp.{name}.queue"), "must not be empty");
            }
            if self.kafka.contains_key(name) {
                return bad(format!("amqp.{name}"), "a Kafka subscription has the same name (the key namespace)");
            }
        }
        if self.store.outbox {
            if self.store.engine != Engine::Postgres {
                return bad("store.outbox".into(), "the outbox needs engine = \"postgres\"");
            }
            let mut brokers = self.amqp.values().map(|a| &a.url).chain(self.kafka.values().map(|k| &k.brokers));
            let first = brokers.next();
            if (!self.amqp.is_empty() && !self.kafka.is_empty()) || brokers.any(|b| Some(b) != first) {
                return bad(
                    "store.outbox".into(),
                    "the app's relay publishes every emitted record to one broker, and these subscriptions use \
                     several; keep one broker per app, or run an exactly_postgres::Relay of your own",
                );
            }
        }
        Ok(())
    }
}

/// One configuration error as the user wrote the setting: `amqp.payments.prefetch: invalid
/// type: ... in app.toml`, or the variable's name when it came from the environment
/// (figment's own text puts its profile name, `default.`, before every key).
fn field_error(e: &figment::Error) -> String {
    let key = e.path.join(".");
    let origin = match &e.metadata {
        Some(m) if m.source.is_some() => m.source.as_ref().map(|s| format!(" in {s}")).unwrap_or_default(),
        Some(m) if m.name.contains("environment") && !e.path.is_empty() => {
            format!(" in $EXACTLY_{}", e.path.join("__").to_ascii_uppercase())
        }
        Some(m) => format!(" in {}", m.name),
        None => String::new(),
    };
    if key.is_empty() { format!("{}{origin}", e.kind) } else { format!("{key}: {}{origin}", e.kind) }
}

/// Whether an `EXACTLY_*` variable (prefix removed) is a setting: its first segment names
/// a section. Others (`EXACTLY_CONFIG`, variables of other tools) are left alone.
fn is_setting(key: &str) -> bool {
    const SECTIONS: [&str; 6] = ["store", "http", "log", "shutdown_timeout", "kafka", "amqp"];
    let first = key.split("__").next().unwrap_or_default();
    SECTIONS.iter().any(|s| first.eq_ignore_ascii_case(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_type_names_the_field_as_written() {
        let err = Config::from_toml("[amqp.p]\nurl = \"amqp://x\"\nqueue = \"q\"\nprefetch = \"lots\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("configuration: amqp.p.prefetch: invalid type"), "{text}");
        assert!(!text.contains("default."), "no profile name: {text}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail takes a closure returning its error
    fn a_wrong_variable_is_named() {
        let f = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[amqp.p]\nurl = \"amqp://x\"\nqueue = \"q\"\n"))
            .merge(Serialized::default("amqp.p.prefetch", "lots"));
        let text = Config::from_figment(f).unwrap_err().to_string();
        assert!(text.starts_with("configuration: amqp.p.prefetch: invalid type"), "{text}");
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXACTLY_AMQP__P__PREFETCH", "lots");
            let f = Figment::from(Serialized::defaults(Config::default()))
                .merge(Toml::string("[amqp.p]\nurl = \"amqp://x\"\nqueue = \"q\"\n"))
                .merge(Env::prefixed("EXACTLY_").split("__"));
            let text = Config::from_figment(f).unwrap_err().to_string();
            assert!(
                text.contains("amqp.p.prefetch: invalid type") && text.ends_with("in $EXACTLY_AMQP__P__PREFETCH"),
                "{text}"
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_fields_and_missing_subscriptions_are_refused() {
        let err = Config::from_toml("[store]\npth = \"x\"\n[amqp.p]\nurl = \"u\"\nqueue = \"q\"\n").unwrap_err();
        assert!(err.to_string().contains("pth"), "{err}");
        let err = Config::from_toml("[store]\npath = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("no subscription"), "{err}");
        let err = Config::from_toml("[kafka.o]\nbrokers = \"b\"\ngroup = \"g\"\ntopics = []\n").unwrap_err();
        assert!(err.to_string().contains("kafka.o.topics"), "{err}");
    }

    #[test]
    fn only_variables_naming_a_section_are_settings() {
        assert!(is_setting("STORE__PATH") && is_setting("shutdown_timeout") && is_setting("KAFKA__O__BROKERS"));
        assert!(!is_setting("CONFIG") && !is_setting("KAFKA_BROKER") && !is_setting("STO"));
    }

    #[test]
    fn durations_and_defaults_read() {
        let c = Config::from_toml(
            "shutdown_timeout = \"5s\"\n[amqp.p]\nurl = \"amqp://x\"\nqueue = \"q\"\n[log]\nformat = \"json\"\n",
        )
        .unwrap();
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.store.engine, Engine::Sled);
        assert_eq!(c.http.listen.port(), 9090);
    }

    #[test]
    fn each_engine_is_named_in_lowercase() {
        for (name, engine) in [("sled", Engine::Sled), ("redb", Engine::Redb), ("fjall", Engine::Fjall)] {
            let c = Config::from_toml(&format!(
                "[store]\nengine = \"{name}\"\n[amqp.p]\nurl = \"amqp://x\"\nqueue = \"q\"\n"
            ))
            .unwrap();
            assert_eq!(c.store.engine, engine);
        }
        let err =
            Config::from_toml("[store]\noutbox = true\n[amqp.p]\nurl = \"amqp://x\"\nqueue = \"q\"\n").unwrap_err();
        assert!(err.to_string().contains("store.outbox: the outbox needs engine = \"postgres\""), "{err}");
        let two = "[store]\nengine = \"postgres\"\nurl = \"postgres://db/x\"\noutbox = true\n\
                   [amqp.p]\nurl = \"amqp://a\"\nqueue = \"q\"\n[amqp.r]\nurl = \"amqp://b\"\nqueue = \"r\"\n";
        let err = Config::from_toml(two).unwrap_err();
        assert!(err.to_string().contains("store.outbox: the app's relay publishes every emitted record to one broker"));
        assert!(Config::from_toml(&two.replace("amqp://b", "amqp://a")).unwrap().store.outbox);
        let err = Config::from_toml("[store]\nengine = \"rocksdb\"\n[amqp.p]\nurl = \"amqp://x\"\nqueue = \"q\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("rocksdb"), "{err}");
    }
}
