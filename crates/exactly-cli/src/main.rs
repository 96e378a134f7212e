//! `exactly`: the command line of the exactly framework.
//!
//! ```text
//! exactly store --path ./payments-store stats
//! exactly store --path ./payments-store get payments order-17
//! exactly store --path ./payments-store list --consumer payments --prefix order- --limit 20
//! exactly store --path ./payments-store forget payments order-17
//! exactly store --path ./payments-store purge-expired
//! exactly store --path ./payments-store export > backup.jsonl
//! exactly store --path ./new-store import backup.jsonl
//! exactly produce --file orders.jsonl --duplicates 0.1 kafka --brokers 127.0.0.1:9092 --topic orders
//! exactly produce --file payments.jsonl amqp --routing-key payments
//! exactly replay --redrive amqp --from-queue payments.dlq --routing-key payments
//! exactly replay kafka --brokers 127.0.0.1:9092 --from-topic orders --from-offset 100 --to-topic orders-replay
//! ```
//!
//! Exit codes: 0 success, 1 an error (printed on stderr), 2 a usage error, 3 the key
//! asked for is not in the store.

mod produce;
mod replay;
mod slo;
mod store;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tools for exactly's consumers: look inside a dedup store, fix a stuck key, move state,
/// produce test messages.
#[derive(Parser)]
#[command(name = "exactly", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect or repair a consumer's on-disk dedup store (the consumer must be stopped:
    /// a store open in a running consumer is refused).
    Store(store::StoreArgs),
    /// Publish test messages from a JSON-lines file to a Kafka topic or a RabbitMQ
    /// exchange/queue, optionally sending a share of them twice.
    Produce(produce::ProduceArgs),
    /// Copy a Kafka topic range into a topic, or move a queue (a dead-letter queue after a
    /// fix) back to its source, optionally marked for re-drive.
    Replay(replay::ReplayArgs),
    /// Service-level objectives: print the Prometheus rules and burn-rate alerts of an
    /// app's `[<kind>.<name>.slo]` tables.
    Slo(slo::SloArgs),
}

/// The key asked for is not in the store.
const NOT_FOUND: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Store(args) => store::run(args).await,
            Command::Produce(args) => produce::run(args).await.map(|()| store::Found::Yes),
            Command::Replay(args) => replay::run(args).await.map(|()| store::Found::Yes),
            Command::Slo(args) => slo::run(args).map(|()| store::Found::Yes),
        }
    });
    match result {
        Ok(store::Found::Yes) => ExitCode::SUCCESS,
        Ok(store::Found::No) => ExitCode::from(NOT_FOUND),
        Err(e) => {
            // One line, each cause once (a store's error and its source can both name the path).
            eprintln!("error: {}", exactly_core::error_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
