//! Benchmarks of `exactly`. Each subcommand prints a Markdown report; `docs/PERFORMANCE.md`
//! holds the reports with the commands that made them.
//!
//! ```sh
//! cargo run --release -p exactly-bench -- store          # the store and the protocol
//! cargo run --release -p exactly-bench -- store --quick  # a short run for CI
//! cargo run --release -p exactly-bench -- amqp           # RabbitMQ on 127.0.0.1:5672
//! cargo run --release -p exactly-bench -- kafka          # the mock cluster and $EXACTLY_KAFKA_BROKER
//! cargo run --release -p exactly-bench -- dashboard      # Prometheus + the app through an outage
//! ```

mod amqp;
mod dashboard;
mod http;
mod kafka;
mod latency;
#[cfg(feature = "mq-bridge")]
mod mq_bridge;
mod naive;
mod plot;
mod report;
mod store;

use clap::{Parser, Subcommand};

/// mimalloc as Rust's allocator (the default feature `mimalloc`): the exactly variants
/// allocate a few small objects per message across threads, where the C library's malloc
/// spent a third of the runtime threads' time and stalled in `malloc_consolidate` after
/// mass frees (bench/results/performance-log.md). It is a binary's choice, so every variant in a run
/// uses the same one; librdkafka's C code keeps the C library's malloc.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The allocator the reports name.
pub(crate) const ALLOCATOR: &str = if cfg!(feature = "mimalloc") { "mimalloc" } else { "the system malloc" };

#[derive(Parser)]
#[command(about = "Benchmarks of exactly; each prints a Markdown report")]
struct Cli {
    /// Leave transparent huge pages on for the bench's process. By default the bench turns
    /// them off (`prctl(PR_SET_THP_DISABLE)`): mimalloc asks for them, and on these VMs
    /// the kernel zeroing a fresh 2 MiB page stalled a runtime thread for milliseconds,
    /// a large part of the load bench's p99 (bench/results/performance-log.md, "Huge pages").
    #[arg(long, global = true)]
    keep_huge_pages: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Group commit against flush-per-record, protocol overhead, duplicate lookups.
    Store(store::Args),
    /// RabbitMQ: a bare lapin consumer against exactly-amqp on each store.
    Amqp(amqp::Args),
    /// Kafka (mock cluster or a real broker): a bare rdkafka consumer against exactly-kafka.
    Kafka(kafka::Args),
    /// HTTP: a small axum handler with and without `IdempotencyLayer`.
    Http(http::Args),
    /// The Grafana dashboard's series through a dependency outage, from a real Prometheus
    /// scraping the app, plotted (docs/img/dashboard.svg).
    Dashboard(dashboard::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    let cli = Cli::parse();
    // The app of `dashboard` installs its own (Prometheus) recorder.
    if !matches!(cli.command, Command::Dashboard(_)) {
        latency::install();
    }
    if !cli.keep_huge_pages {
        report::huge_pages_off()?;
    }
    match cli.command {
        Command::Store(args) => store::run(args).await,
        Command::Amqp(args) => amqp::run(args).await,
        Command::Kafka(args) => kafka::run(args).await,
        Command::Dashboard(args) => dashboard::run(args).await,
        Command::Http(args) => http::run(args).await,
    }
}
