//! `bench dashboard`: the Grafana dashboard's series through a dependency outage, plotted.
//!
//! Grafana cannot run on these machines (no Docker engine, no Debian package), so this
//! stands in for a screenshot: it runs the app (a RabbitMQ subscription with objectives)
//! under a steady load whose handler's dependency is down for a while, has a real
//! Prometheus (Debian's package) scrape it with the rules of `exactly slo rules`, then
//! asks Prometheus for the dashboard's own PromQL (docker/grafana/dashboards/exactly.json)
//! over the run and draws four of its panels.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use exactly::amqp::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use exactly::amqp::lapin::types::{AMQPValue, FieldTable};
use exactly::amqp::lapin::{BasicProperties, Connection};
use exactly::{Context, HandlerError, Message, handler_fn};

/// `bench dashboard`
#[derive(clap::Args)]
pub(crate) struct Args {
    /// How long the load runs, in seconds.
    #[arg(long, default_value_t = 240)]
    seconds: u64,
    /// Messages published per second.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// The dependency is down from this second of the run...
    #[arg(long, default_value_t = 80)]
    outage_from: u64,
    /// ...for this many seconds.
    #[arg(long, default_value_t = 30)]
    outage_for: u64,
    /// The plot.
    #[arg(long, default_value = "docs/img/dashboard.svg")]
    out: PathBuf,
    /// The dashboard whose queries are plotted.
    #[arg(long, default_value = "docker/grafana/dashboards/exactly.json")]
    dashboard: PathBuf,
}

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The panels drawn, by title.
const PANELS: [&str; 4] = [
    "Throughput by outcome",
    "Age at settlement (p50, p99) against the objective",
    "Burn rate (1h, 5m)",
    "Breaker state (0 closed, 1 half-open, 2 open)",
];

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (app_port, prometheus_port) = (free_port()?, free_port()?);
    let queue = format!("exactly-bench-dashboard-{}", std::process::id());
    let toml = format!(
        "[store]\npath = \"{}\"\n[http]\nlisten = \"127.0.0.1:{app_port}\"\n[log]\nfilter = \"warn\"\n\
         [amqp.ledger]\nurl = \"{AMQP_URL}\"\nqueue = \"{queue}\"\n\
         [amqp.ledger.slo]\nsettled_within = \"1s\"\ntarget = 0.999\ndead_letter_ratio_max = 0.01\n",
        dir.path().join("store").display()
    );
    let config = exactly::app::Config::from_toml(&toml)?;
    std::fs::write(dir.path().join("rules.yml"), exactly::app::prometheus_rules(&config))?;
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [rules.yml]\n\
             scrape_configs:\n  - job_name: exactly\n    static_configs: [{{targets: ['127.0.0.1:{app_port}']}}]\n"
        ),
    )?;
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start prometheus (apt-get install prometheus)")?;

    // The handler: a millisecond of work, failing while its dependency is down.
    let down = Arc::new(AtomicBool::new(false));
    let dependency = down.clone();
    let handler = handler_fn(move |_m: Message, _c: Context| {
        let down = dependency.load(Ordering::Relaxed);
        async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            match down {
                true => Err(HandlerError::transient("the ledger database is unreachable")),
                false => Ok(()),
            }
        }
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let app = tokio::spawn(exactly::app::App::new(config).handler("ledger", handler).run_until(stop.clone()));

    let conn = Connection::connect(AMQP_URL, Default::default()).await?;
    let channel = conn.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    exactly::amqp::Topology::declare().apply(&channel, &queue).await?;
    let started = now_s();
    let begin = Instant::now();
    let mut sent = 0u64;
    while begin.elapsed() < Duration::from_secs(args.seconds) {
        let second = begin.elapsed().as_secs();
        down.store((args.outage_from..args.outage_from + args.outage_for).contains(&second), Ordering::Relaxed);
        // Paced: the message due by now, each stamped with its publish time.
        let due = begin.elapsed().as_millis() as u64 * args.rate / 1000;
        while sent < due {
            let mut headers = FieldTable::default();
            headers.insert("timestamp_in_ms".into(), AMQPValue::LongLongInt(now_ms()));
            let props =
                BasicProperties::default().with_message_id(format!("m{sent}").as_str().into()).with_headers(headers);
            let publish =
                channel.basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), b"{}", props);
            publish.await?.await?;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    down.store(false, Ordering::Relaxed);
    // Long enough for the retried ones to settle and be scraped.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let ended = now_s();

    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&args.dashboard)?)?;
    let mut panels = Vec::new();
    for title in PANELS {
        let panel = dashboard["panels"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["title"] == title))
            .with_context(|| format!("the dashboard has no panel {title:?}"))?;
        let mut lines = Vec::new();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_default()
                .replace("$__rate_interval", "15s")
                .replace("$consumer", ".*");
            let legend = target["legendFormat"].as_str().unwrap_or_default().to_owned();
            lines.extend(query_range(prometheus_port, &expr, &legend, started, ended).await?);
        }
        panels.push((title.to_owned(), lines));
    }
    stop.cancel();
    app.await??;
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    exactly::amqp::Topology::declare().delete(&channel, &queue).await?;
    crate::plot::panels(&args.out, &panels, (args.outage_from as f64, (args.outage_from + args.outage_for) as f64))?;
    println!(
        "{sent} messages at {}/s for {} s, the dependency down from {} s for {} s: {}",
        args.rate,
        args.seconds,
        args.outage_from,
        args.outage_for,
        args.out.display()
    );
    Ok(())
}

/// One series: its legend and (seconds since the run began, value) points.
pub(crate) type Line = (String, Vec<(f64, f64)>);

/// `expr` over [start, end] every 2 s, one line per series (legend `{{label}}` filled in).
async fn query_range(port: u16, expr: &str, legend: &str, start: f64, end: f64) -> anyhow::Result<Vec<Line>> {
    let url = format!("http://127.0.0.1:{port}/api/v1/query_range");
    let params =
        [("query", expr.to_owned()), ("start", start.to_string()), ("end", end.to_string()), ("step", "2".into())];
    let body: serde_json::Value = reqwest::Client::new().get(&url).query(&params).send().await?.json().await?;
    anyhow::ensure!(body["status"] == "success", "Prometheus refused {expr}: {body}");
    let mut lines = Vec::new();
    for series in body["data"]["result"].as_array().into_iter().flatten() {
        let mut name = legend.to_owned();
        if let Some(labels) = series["metric"].as_object() {
            for (k, v) in labels {
                name = name.replace(&format!("{{{{{k}}}}}"), v.as_str().unwrap_or_default());
            }
        }
        let points = series["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let t = p[0].as_f64()?;
                let v: f64 = p[1].as_str()?.parse().ok()?;
                v.is_finite().then_some((t - start, v))
            })
            .collect();
        lines.push((name, points));
    }
    Ok(lines)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn now_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
