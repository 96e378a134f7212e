//! `exactly store ...`: inspection and repair of a dedup store on disk, or inspection of
//! the shared PostgreSQL store.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use exactly_core::store::{FjallStore, RecordState, RecordView, RedbStore, export};
use exactly_core::{Clock, DedupStore, SledStore, StoreKey, SystemClock};

#[derive(Args)]
pub(crate) struct StoreArgs {
    /// The store directory (what the consumer passed to `SledStore::open`).
    #[arg(long, short, env = "EXACTLY_STORE", required_unless_present = "url", conflicts_with = "url")]
    path: Option<PathBuf>,
    /// The shared PostgreSQL store instead: `postgres://user:password@host:5432/database`.
    #[arg(long, env = "EXACTLY_STORE_URL", hide_env_values = true)]
    url: Option<String>,
    /// The PostgreSQL store's schema (with --url).
    #[arg(long, requires = "url", default_value = exactly_postgres::DEFAULT_SCHEMA)]
    schema: String,
    /// The store's engine (default: what the store's identity file says; sled for a new
    /// store).
    #[arg(long, value_enum)]
    engine: Option<Engine>,
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Clone, Copy, ValueEnum)]
enum Engine {
    /// `SledStore`, the default.
    Sled,
    /// `RedbStore`.
    Redb,
    /// `FjallStore`.
    Fjall,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Counts records by consumer and state, and the size on disk (walks every record).
    Stats,
    /// Shows one key's record, with the state names its message wrote and what they hold
    /// now; exit code 3 when there is none.
    Get {
        /// The consumer name (the key namespace).
        consumer: String,
        /// The idempotency key.
        key: String,
        /// Print the record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lists records in key order.
    List {
        /// Only this consumer's keys.
        #[arg(long)]
        consumer: Option<String>,
        /// Only keys starting with this (needs --consumer).
        #[arg(long, requires = "consumer")]
        prefix: Option<String>,
        /// Only records in this state.
        #[arg(long, value_enum)]
        state: Option<StateFilter>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Removes a key's record, so its next delivery runs the handler again (a stuck
    /// in-flight claim, a wrong dead-letter mark); exit code 3 when there is none.
    Forget {
        /// The consumer name (the key namespace).
        consumer: String,
        /// The idempotency key.
        key: String,
    },
    /// Removes records whose retention has passed, bucket by bucket.
    PurgeExpired {
        /// Keys visited per pass.
        #[arg(long, default_value_t = 10_000)]
        budget: usize,
    },
    /// Reads the values handlers wrote through `ctx.state()`.
    ///
    /// Each consumer has its own namespace, its name: the name given to
    /// `Processor::builder(name, ...)`, or the subscription's name in the app's
    /// configuration. `ctx.state().get("acct-1")` in consumer `payments` is
    /// `exactly store state get payments acct-1`.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Writes everything the store holds as JSON lines (records, the handlers' state
    /// values, the Kafka watermarks), to stdout or a file.
    Export {
        /// The file to write (default stdout).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Writes what an export holds into this store (existing keys and values are
    /// overwritten).
    Import {
        /// The JSON-lines file `export` wrote.
        file: PathBuf,
    },
    /// Opens a store that an open refused as damaged, keeping every record of its log
    /// that can be read, and says what was cut. Copy the directory first.
    Repair,
}

#[derive(Subcommand)]
enum StateCommand {
    /// Shows one state value; exit code 3 when there is none.
    Get {
        /// The consumer name (the namespace).
        consumer: String,
        /// The key the handler used.
        key: String,
    },
    /// Lists state values in key order.
    List {
        /// Only this consumer's values.
        #[arg(long)]
        consumer: Option<String>,
        /// Only keys starting with this (needs --consumer).
        #[arg(long, requires = "consumer")]
        prefix: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StateFilter {
    Done,
    DeadLettered,
    InFlight,
}

/// Whether what was asked for exists (exit code 3 when not).
pub(crate) enum Found {
    Yes,
    No,
}

pub(crate) async fn run(args: StoreArgs) -> anyhow::Result<Found> {
    let path = match (&args.path, &args.url) {
        (Some(path), _) => path.clone(),
        (None, Some(url)) => return run_postgres(url, &args.schema, args.command).await,
        (None, None) => anyhow::bail!("name the store: --path DIR, or --url postgres://... for the shared store"),
    };
    if !path.exists() && !matches!(args.command, StoreCommand::Import { .. }) {
        anyhow::bail!("no store at {} (a consumer creates it on its first start)", path.display());
    }
    let engine = match (args.engine, exactly_core::store::engine_at(&path).as_deref()) {
        (Some(e), _) => e,
        (None, Some("redb")) => Engine::Redb,
        (None, Some("fjall")) => Engine::Fjall,
        (None, _) => Engine::Sled,
    };
    if let StoreCommand::Repair = args.command {
        return repair(engine, &path);
    }
    // The store's errors name its path already.
    match engine {
        Engine::Sled => on(&SledStore::open(&path)?, args.command).await,
        Engine::Redb => on(&RedbStore::open(&path)?, args.command).await,
        Engine::Fjall => on(&FjallStore::open(&path)?, args.command).await,
    }
}

/// The same commands on the shared PostgreSQL store (it repairs itself: PostgreSQL's own
/// log recovers it).
async fn run_postgres(url: &str, schema: &str, command: StoreCommand) -> anyhow::Result<Found> {
    if let StoreCommand::Repair = command {
        anyhow::bail!("repair is for a store on disk; PostgreSQL recovers the shared store from its own log");
    }
    // Importing into a new schema makes the store; every other command reads one.
    let create = matches!(command, StoreCommand::Import { .. });
    let store =
        exactly_postgres::PgStore::builder(url).schema(schema).pool_size(2).create_if_missing(create).open().await?;
    on(&store, command).await
}

/// `exactly store repair`: opens with the repair rules and reports every cut.
fn repair(engine: Engine, path: &std::path::Path) -> anyhow::Result<Found> {
    let cuts = match engine {
        Engine::Sled => SledStore::builder(path).repair()?.1,
        Engine::Redb => RedbStore::builder(path).repair()?.1,
        Engine::Fjall => FjallStore::builder(path).repair()?.1,
    };
    let mut out = std::io::stdout().lock();
    if cuts.is_empty() {
        writeln!(out, "nothing to repair: the store at {} opens as it is", path.display())?;
    }
    for c in &cuts {
        let lost = if c.acknowledged { "acknowledged work in it is lost" } else { "never acknowledged" };
        writeln!(out, "cut {} at byte {}: {} ({lost})", c.file.display(), c.offset, c.what)?;
    }
    if cuts.iter().any(|c| c.acknowledged) {
        writeln!(
            out,
            "the store opens again; messages whose records were cut were acknowledged and will not be delivered \
             again, and state values they wrote are as the next surviving write left them"
        )?;
    }
    Ok(Found::Yes)
}

async fn on(store: &dyn DedupStore, command: StoreCommand) -> anyhow::Result<Found> {
    let mut out = std::io::stdout().lock();
    let found = match command {
        StoreCommand::Stats => {
            stats(store, &mut out).await?;
            Found::Yes
        }
        StoreCommand::Get { consumer, key, json } => match store.inspect(&StoreKey::new(&consumer, &key)).await? {
            Some(r) if json => {
                writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
                Found::Yes
            }
            Some(r) => {
                describe(&r, &mut out)?;
                if !matches!(r.state, RecordState::InFlight { .. }) {
                    writeln!(out, "wrote        {}", wrote(store, &r).await?)?;
                }
                Found::Yes
            }
            None => {
                eprintln!("{consumer}:{key} is not in the store: its next delivery runs the handler");
                Found::No
            }
        },
        StoreCommand::List { consumer, prefix, state, limit, json } => {
            let prefix = consumer.as_deref().map(|c| StoreKey::new(c, prefix.as_deref().unwrap_or("")));
            let mut shown = 0;
            export::each_record(store, prefix.as_ref(), |r| {
                if state.is_none_or(|s| s == filter_of(&r.state)) {
                    if json {
                        writeln!(out, "{}", serde_json::to_string(r)?)?;
                    } else {
                        writeln!(
                            out,
                            "{}\t{}\t{} attempt(s)\t{}",
                            r.key,
                            state_name(&r.state),
                            r.attempts,
                            when(r.updated_at)
                        )?;
                    }
                    shown += 1;
                }
                Ok::<_, anyhow::Error>(shown < limit)
            })
            .await?;
            Found::Yes
        }
        StoreCommand::Forget { consumer, key } => {
            let key = StoreKey::new(&consumer, &key);
            if store.forget(&key).await? {
                store.flush().await?;
                writeln!(out, "forgot {key}: its next delivery runs the handler again")?;
                Found::Yes
            } else {
                eprintln!("{key} is not in the store");
                Found::No
            }
        }
        StoreCommand::PurgeExpired { budget } => {
            let now = SystemClock.now();
            let (mut records, mut entries) = (0, 0);
            loop {
                let report = store.purge_expired(now, budget).await?;
                records += report.records_removed;
                entries += report.index_entries;
                if !report.more {
                    break;
                }
            }
            store.flush().await?;
            writeln!(out, "removed {records} expired records ({entries} expiry-index entries)")?;
            Found::Yes
        }
        StoreCommand::State { command } => state(store, command, &mut out).await?,
        StoreCommand::Export { out: file } => {
            let counts = match &file {
                Some(f) => {
                    let file = std::fs::File::create(f).with_context(|| format!("cannot create {}", f.display()))?;
                    export::export(store, &mut std::io::BufWriter::new(file)).await?
                }
                None => export::export(store, &mut std::io::BufWriter::new(&mut out)).await?,
            };
            eprintln!("exported {counts}");
            Found::Yes
        }
        StoreCommand::Import { file } => {
            let f = std::fs::File::open(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let counts = export::import(store, std::io::BufReader::new(f))
                .await
                .with_context(|| format!("cannot import {}", file.display()))?;
            writeln!(out, "imported {counts}")?;
            Found::Yes
        }
        StoreCommand::Repair => unreachable!("handled before the store is opened"),
    };
    Ok(found)
}

/// `exactly store state ...`.
async fn state(store: &dyn DedupStore, command: StateCommand, out: &mut impl Write) -> anyhow::Result<Found> {
    match command {
        StateCommand::Get { consumer, key } => {
            match store.state_get(&StoreKey::state(&consumer, key.as_bytes())).await? {
                Some(value) => {
                    writeln!(out, "{}", shown(&value))?;
                    Ok(Found::Yes)
                }
                None => {
                    eprintln!("consumer {consumer} has no state value {key:?}");
                    Ok(Found::No)
                }
            }
        }
        StateCommand::List { consumer, prefix, limit, json } => {
            let from = consumer.as_deref().map(|c| StoreKey::state(c, prefix.as_deref().unwrap_or("").as_bytes()));
            let mut listed = 0;
            export::each_state(store, from.as_deref(), |ns, key, value| {
                if listed == limit {
                    return Ok(false);
                }
                if json {
                    let entry = export::Entry::State {
                        namespace: ns.to_owned(),
                        key: export::Blob(bytes::Bytes::copy_from_slice(key)),
                        value: export::Blob(value.clone()),
                    };
                    writeln!(out, "{}", serde_json::to_string(&entry)?)?;
                } else {
                    writeln!(out, "{ns}\t{}\t{}", String::from_utf8_lossy(key), shown(value))?;
                }
                listed += 1;
                Ok::<_, anyhow::Error>(true)
            })
            .await?;
            Ok(Found::Yes)
        }
    }
}

/// A value as text when it is short UTF-8, else its size.
fn shown(value: &[u8]) -> String {
    short_text(value, 200).map_or_else(|| format!("({} bytes; --json shows them)", value.len()), str::to_owned)
}

/// The value as text, if it is UTF-8 of at most `max` bytes.
fn short_text(value: &[u8], max: usize) -> Option<&str> {
    std::str::from_utf8(value).ok().filter(|text| text.len() <= max)
}

async fn stats(store: &dyn DedupStore, out: &mut impl Write) -> anyhow::Result<()> {
    let mut by: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    let now = SystemClock.now();
    let mut expired = 0u64;
    export::each_record(store, None, |r| {
        let counts = by.entry(r.key.namespace().to_owned()).or_default();
        counts[match filter_of(&r.state) {
            StateFilter::Done => 0,
            StateFilter::DeadLettered => 1,
            StateFilter::InFlight => 2,
        }] += 1;
        if r.expires_at != 0 && r.expires_at <= now {
            expired += 1;
        }
        Ok::<_, anyhow::Error>(true)
    })
    .await?;
    writeln!(out, "{:<24} {:>12} {:>14} {:>10}", "consumer", "done", "dead-lettered", "in-flight")?;
    let mut total = [0u64; 3];
    for (ns, c) in &by {
        writeln!(out, "{ns:<24} {:>12} {:>14} {:>10}", c[0], c[1], c[2])?;
        for i in 0..3 {
            total[i] += c[i];
        }
    }
    writeln!(out, "{:<24} {:>12} {:>14} {:>10}", "total", total[0], total[1], total[2])?;
    writeln!(out, "expired, not yet purged: {expired}")?;
    if let Some(bytes) = store.stats().disk_bytes {
        writeln!(out, "on disk: {:.1} MiB", bytes as f64 / (1024.0 * 1024.0))?;
    }
    if total[2] > 0 {
        writeln!(
            out,
            "in-flight records on disk belong to claims of a process that stopped mid-handler \
             (quarantine policy): `forget` one to run it again"
        )?;
    }
    Ok(())
}

fn filter_of(s: &RecordState) -> StateFilter {
    match s {
        RecordState::Done { .. } => StateFilter::Done,
        RecordState::DeadLettered { .. } => StateFilter::DeadLettered,
        RecordState::InFlight { .. } => StateFilter::InFlight,
    }
}

fn state_name(s: &RecordState) -> String {
    match s {
        RecordState::Done { .. } => "done".into(),
        RecordState::DeadLettered { reason } => format!("dead-lettered ({reason})"),
        RecordState::InFlight { token, epoch } => format!("in-flight (token {token}, epoch {epoch})"),
    }
}

fn when(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A value as text when it is UTF-8 of at most `max` bytes, else its size.
fn text_or_size(v: &[u8], max: usize) -> String {
    short_text(v, max).map_or_else(|| format!("{} bytes", v.len()), str::to_owned)
}

/// The state names a record's message wrote, each with what it holds now (a later
/// message may have written it since).
async fn wrote(store: &dyn DedupStore, r: &RecordView) -> anyhow::Result<String> {
    if r.wrote.is_empty() {
        return Ok("nothing".into());
    }
    let mut shown = Vec::with_capacity(r.wrote.len());
    for name in &r.wrote {
        let now = match store.state_get(&StoreKey::state(r.key.namespace(), &name.0)).await? {
            None => "none".into(),
            Some(v) => text_or_size(&v, 60),
        };
        shown.push(format!("{} (now {now})", String::from_utf8_lossy(&name.0)));
    }
    Ok(shown.join(", "))
}

fn describe(r: &RecordView, out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(out, "key          {}", r.key)?;
    writeln!(out, "state        {}", state_name(&r.state))?;
    if let RecordState::Done { output, emitted } = &r.state {
        match output {
            Some(o) => writeln!(out, "output       {}", text_or_size(o, 200))?,
            None => writeln!(out, "output       none")?,
        }
        if !emitted.is_empty() {
            let to: Vec<&str> = emitted.iter().map(|e| e.destination.as_str()).collect();
            writeln!(out, "emitted      {} record(s) to {}", emitted.len(), to.join(", "))?;
        }
    }
    writeln!(out, "attempts     {}", r.attempts)?;
    writeln!(out, "updated      {}", when(r.updated_at))?;
    writeln!(out, "expires      {}", when(r.expires_at))?;
    writeln!(out, "origin       {}", r.origin.as_deref().unwrap_or("-"))?;
    writeln!(out, "fingerprint  {}", r.fingerprint)?;
    Ok(())
}
