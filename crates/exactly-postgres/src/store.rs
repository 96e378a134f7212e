//! [`PgStore`]: the store, its builder, and what it shares with its batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use exactly_core::store::{Limits, SweeperSlot};
use exactly_core::{Error, Result};
use tokio_postgres::NoTls;

use crate::batch::Batcher;
use crate::cache::DoneCache;
use crate::claim::ClaimJob;
use crate::complete::Write;
use crate::liveness::Liveness;
use crate::sql::Sql;

/// The default schema of the store's tables.
pub const DEFAULT_SCHEMA: &str = "exactly";

/// A [`DedupStore`](exactly_core::DedupStore) in PostgreSQL, shared by every instance of
/// a consumer: a key claimed or done on one instance is claimed or done on all.
///
/// Claims and completions from concurrent deliveries go to the database in groups, one
/// statement (claims) or one transaction (completions) per group, so one commit of
/// PostgreSQL serves many messages. A completion is durable when PostgreSQL has
/// committed it. See the crate docs for what it keeps where.
pub struct PgStore {
    pub(crate) shared: Arc<Shared>,
    pub(crate) claims: Batcher<ClaimJob, exactly_core::store::Claim>,
    pub(crate) writes: Batcher<Write, exactly_core::store::Committed>,
    pub(crate) sweeper: SweeperSlot,
    _liveness: Liveness,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("store", &self.shared.name).field("instance", &self.shared.holder).finish()
    }
}

/// What the store's calls and its batches share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) pool: Pool,
    /// Connections for handlers' own transactions (`ctx.postgres()`), apart from the
    /// store's groups so that handlers holding them cannot starve the commits.
    pub(crate) transactions: Pool,
    /// The outbox relay's connection, apart: a relay waiting for a slow broker holds it
    /// inside its transaction, and must not hold one the store's groups need.
    pub(crate) relay: Pool,
    pub(crate) sql: Sql,
    /// This instance's id: the holder of its claims, locked while it runs.
    pub(crate) holder: i32,
    /// The schema's advisory-lock class.
    pub(crate) class: i32,
    pub(crate) cache: DoneCache,
    /// The URL without its password, and the schema: for errors and logs.
    pub(crate) name: String,
    /// The schema alone: the metrics' label.
    pub(crate) schema: String,
    pub(crate) max_value: usize,
    /// Emitted records go to the outbox table, for a [`Relay`](crate::Relay).
    pub(crate) outbox: bool,
    pub(crate) in_flight: AtomicU64,
    pub(crate) commits: AtomicU64,
}

impl PgStore {
    /// Opens the store at `url` (`postgres://user:password@host:5432/database`) with the
    /// default settings, creating or migrating its tables in schema `exactly`.
    pub async fn open(url: impl Into<String>) -> Result<Self> {
        Self::builder(url).open().await
    }

    /// A builder for the store at `url`.
    pub fn builder(url: impl Into<String>) -> PgStoreBuilder {
        PgStoreBuilder {
            url: url.into(),
            schema: DEFAULT_SCHEMA.to_owned(),
            pool_size: 8,
            transaction_pool_size: 8,
            max_batch: 512,
            cache_keys: 100_000,
            bucket_width: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
            create_if_missing: true,
            outbox: false,
        }
    }

    /// This instance's id among the store's sessions (the holder of its claims).
    pub fn instance(&self) -> i32 {
        self.shared.holder
    }

    /// The store's name in errors and logs: its URL without the password, and its schema.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub(crate) fn limits(&self) -> Limits {
        // A btree index entry holds at most about 2.7 KB: the state table's key (with its
        // namespace, at most 258 bytes) must fit.
        Limits::new(2048, self.shared.max_value)
    }
}

/// Settings of a [`PgStore`]; [`open`](Self::open) connects and migrates.
pub struct PgStoreBuilder {
    url: String,
    schema: String,
    pool_size: usize,
    transaction_pool_size: usize,
    max_batch: usize,
    cache_keys: usize,
    bucket_width: Duration,
    connect_timeout: Duration,
    statement_timeout: Duration,
    create_if_missing: bool,
    outbox: bool,
}

impl std::fmt::Debug for PgStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStoreBuilder")
            .field("url", &exactly_core::redact::url(&self.url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("transaction_pool_size", &self.transaction_pool_size)
            .field("max_batch", &self.max_batch)
            .field("cache_keys", &self.cache_keys)
            .field("bucket_width", &self.bucket_width)
            .field("statement_timeout", &self.statement_timeout)
            .field("create_if_missing", &self.create_if_missing)
            .field("outbox", &self.outbox)
            .finish()
    }
}

impl PgStoreBuilder {
    /// The schema of the store's tables (default `exactly`): consumers that must not see
    /// each other's keys, or a test each, use their own.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Connections to the database (default 8): claims and completions each run a group
    /// per connection at a time.
    pub fn pool_size(mut self, connections: usize) -> Self {
        self.pool_size = connections;
        self
    }

    /// Connections for handlers' own transactions (default 8), a pool apart: a handler
    /// that calls `ctx.postgres()` holds one from that call until its message commits, so
    /// at most this many such handlers run at once (the others wait for a connection, up
    /// to the connect timeout, then are retried).
    pub fn transaction_pool_size(mut self, connections: usize) -> Self {
        self.transaction_pool_size = connections;
        self
    }

    /// The most claims or completions one round trip takes (default 512).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// Done keys this instance remembers to answer duplicates without a round trip
    /// (default 100,000; 0 turns the cache off).
    pub fn cache_keys(mut self, keys: usize) -> Self {
        self.cache_keys = keys;
        self
    }

    /// Expiry buckets (default one hour): a record is purged at most this long after it
    /// expires, through an index of buckets rather than a scan.
    pub fn bucket_width(mut self, width: Duration) -> Self {
        self.bucket_width = width;
        self
    }

    /// How long connecting may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one statement may run, waiting for locks included (default 30 s; zero
    /// turns the limit off). A statement that overruns it (a row held by a stuck
    /// transaction, a server too slow to answer) fails as `StoreUnavailable`: the message
    /// is retried and the breaker pauses the consumer, instead of hanging it.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Whether an open of a schema without the store's tables creates them (default
    /// `true`). Set it to `false` once the store is in service, so that a wrong database
    /// or schema name stops the consumer instead of starting it on an empty store (which
    /// would handle again every message within the retention).
    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.create_if_missing = create;
        self
    }

    /// Whether records handlers emit (`ctx.emit`) go to the outbox table, in their
    /// done-record's transaction, for a [`Relay`](crate::Relay) to publish (default
    /// `false`: the adapter publishes them before it acknowledges the message). With the
    /// outbox, a message's records are published once its commit is, by whichever instance
    /// runs the relay, and a duplicate of the message publishes nothing.
    pub fn outbox(mut self, on: bool) -> Self {
        self.outbox = on;
        self
    }

    /// Connects, creates or migrates the schema, and starts taking claims.
    pub async fn open(self) -> Result<PgStore> {
        let redacted = exactly_core::redact::url(&self.url);
        let name = format!("{redacted} (schema {})", self.schema);
        let mut config: tokio_postgres::Config = self.url.parse().map_err(|e: tokio_postgres::Error| {
            Error::Config { field: "url".into(), reason: format!("{redacted} is not a PostgreSQL URL: {e}") }
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(self.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("exactly");
        }
        // A generic plan made while the tables were empty (a new store) scans them for
        // good; each group is planned with its own values instead.
        let ours =
            format!("-c plan_cache_mode=force_custom_plan -c statement_timeout={}", self.statement_timeout.as_millis());
        let options = match config.get_options() {
            Some(o) => format!("{o} {ours}"),
            None => ours,
        };
        config.options(&options);
        if self.pool_size == 0 || self.transaction_pool_size == 0 || self.max_batch == 0 {
            return Err(Error::Config {
                field: "pool_size / transaction_pool_size / max_batch".into(),
                reason: "must be at least 1".into(),
            });
        }
        let bucket_ms = i64::try_from(self.bucket_width.as_millis()).unwrap_or(i64::MAX).max(1);
        let quoted = crate::schema::quote(&self.schema)?;
        let class = crate::schema::lock_class(&self.schema);
        let pool_of = |size: usize, field: &str| {
            let manager =
                Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
            Pool::builder(manager)
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .create_timeout(Some(self.connect_timeout))
                .wait_timeout(Some(self.connect_timeout))
                .build()
                .map_err(|e| Error::Config { field: field.into(), reason: e.to_string() })
        };
        let pool = pool_of(self.pool_size, "pool_size")?;
        let transactions = pool_of(self.transaction_pool_size, "transaction_pool_size")?;
        // Connected only if a relay runs.
        let relay = pool_of(1, "relay")?;
        {
            let mut client = pool.get().await.map_err(|e| match e {
                deadpool_postgres::PoolError::Backend(e) => crate::error::open(&name, "connect", e),
                other => Error::StoreOpen { path: name.clone().into(), reason: other.to_string(), source: None },
            })?;
            crate::schema::migrate(&mut client, &self.schema, &quoted, class, &name, self.create_if_missing).await?;
        }
        let (holder, liveness) = crate::liveness::start(config, &quoted, class, &name).await?;
        tracing::info!(store = %name, instance = holder, "PostgreSQL store open");
        let shared = Arc::new(Shared {
            pool,
            transactions,
            relay,
            sql: Sql::new(&quoted, class, bucket_ms),
            holder,
            class,
            cache: DoneCache::new(self.cache_keys),
            name,
            schema: self.schema.clone(),
            max_value: 64 * 1024 * 1024,
            outbox: self.outbox,
            in_flight: AtomicU64::new(0),
            commits: AtomicU64::new(0),
        });
        // Claims and completions each get half the connections, at least one.
        let groups = (self.pool_size / 2).max(1);
        Ok(PgStore {
            claims: Batcher::start(shared.clone(), self.max_batch, groups),
            writes: Batcher::start(shared.clone(), self.max_batch, groups),
            shared,
            sweeper: SweeperSlot::default(),
            _liveness: liveness,
        })
    }
}

impl Shared {
    pub(crate) fn claimed(&self, n: u64) {
        self.in_flight.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn ended(&self, n: u64) {
        let _ = self.in_flight.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n)));
    }
}
