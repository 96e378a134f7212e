//! `exactly slo rules`: the Prometheus rules and burn-rate alerts for an app's objectives.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// `exactly slo ...`
#[derive(Args)]
pub(crate) struct SloArgs {
    #[command(subcommand)]
    command: SloCommand,
}

#[derive(Subcommand)]
enum SloCommand {
    /// Print Prometheus recording rules and multi-window, multi-burn-rate alerts (fast:
    /// 1h and 5m at 14.4x the error budget; slow: 6h and 30m at 6x) for every
    /// subscription with a `[<kind>.<name>.slo]` table. They read the objectives from the
    /// app's `exactly_slo_*` metrics. Check them with `promtool check rules`.
    Rules {
        /// The app's configuration file (EXACTLY_* variables apply, as in the app).
        #[arg(long)]
        config: PathBuf,
    },
}

pub(crate) fn run(args: SloArgs) -> anyhow::Result<()> {
    match args.command {
        SloCommand::Rules { config } => {
            let config = exactly_app::Config::load(&config, true)?;
            if config.slos().next().is_none() {
                anyhow::bail!("no subscription in {} has an [<kind>.<name>.slo] table", config_name(&config));
            }
            print!("{}", exactly_app::prometheus_rules(&config));
            Ok(())
        }
    }
}

fn config_name(config: &exactly_app::Config) -> String {
    let names: Vec<String> = config
        .kafka
        .keys()
        .map(|n| format!("kafka.{n}"))
        .chain(config.amqp.keys().map(|n| format!("amqp.{n}")))
        .collect();
    format!("the configuration (subscriptions: {})", names.join(", "))
}
