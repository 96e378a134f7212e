//! `exactly produce`: publish test messages from a JSON-lines file, with duplicates.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use exactly_amqp::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use exactly_amqp::lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use exactly_amqp::lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use exactly_kafka::rdkafka::ClientConfig;
use exactly_kafka::rdkafka::message::{Header, OwnedHeaders};
use exactly_kafka::rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use serde::Deserialize;

#[derive(Args)]
pub(crate) struct ProduceArgs {
    /// JSON lines, one message each: {"payload": "text" or any JSON, "key": "...",
    /// "idempotency_key": "...", "headers": {"name": "value"}}.
    #[arg(long, short)]
    file: PathBuf,
    /// Share of messages sent a second time right after the first (0.0 to 1.0), as a
    /// producer that retries after a lost acknowledgement would.
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Seed of the duplicate draw, to send the same stream again.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(subcommand)]
    to: Destination,
}

#[derive(Subcommand)]
enum Destination {
    /// A Kafka topic (acks=all, every delivery awaited).
    Kafka {
        /// Bootstrap servers.
        #[arg(long, env = "KAFKA_BROKERS")]
        brokers: String,
        /// The topic.
        #[arg(long)]
        topic: String,
    },
    /// A RabbitMQ exchange or queue (persistent messages, publisher confirms).
    Amqp {
        /// `amqp://user:pass@host:port/vhost`.
        #[arg(long, env = "AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        url: String,
        /// The exchange (default: the default exchange, routing to the queue named by --routing-key).
        #[arg(long, default_value = "")]
        exchange: String,
        /// The routing key (the queue, with the default exchange).
        #[arg(long)]
        routing_key: String,
    },
}

/// One line of the input.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    payload: serde_json::Value,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

impl Line {
    fn payload(&self) -> Vec<u8> {
        match &self.payload {
            serde_json::Value::String(s) => s.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        }
    }

    fn headers(&self) -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = self.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Some(k) = &self.idempotency_key {
            h.push(("idempotency-key".into(), k.clone()));
        }
        h
    }
}

fn read(file: &PathBuf) -> anyhow::Result<Vec<Line>> {
    let f = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut lines = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        lines.push(serde_json::from_str(&line).with_context(|| format!("{} line {}", file.display(), i + 1))?);
    }
    Ok(lines)
}

pub(crate) async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    anyhow::ensure!((0.0..=1.0).contains(&args.duplicates), "--duplicates must be between 0.0 and 1.0");
    let lines = read(&args.file)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    // The stream to send: each line, some of them twice.
    let stream: Vec<(&Line, bool)> = lines
        .iter()
        .flat_map(|l| {
            let again = rng.random_bool(args.duplicates);
            std::iter::once((l, false)).chain(again.then_some((l, true)))
        })
        .collect();
    let bar = ProgressBar::new(stream.len() as u64);
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} {msg}")?);
    match &args.to {
        Destination::Kafka { brokers, topic } => {
            let producer = kafka_producer(brokers)?;
            for (line, _) in &stream {
                let mut headers = OwnedHeaders::new();
                for (k, v) in line.headers() {
                    headers = headers.insert(Header { key: &k, value: Some(v.as_str()) });
                }
                let payload = line.payload();
                let mut rec = FutureRecord::to(topic).payload(&payload).headers(headers);
                if let Some(k) = &line.key {
                    rec = rec.key(k.as_str());
                }
                producer
                    .send(rec, Duration::from_secs(30))
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
                bar.inc(1);
            }
            producer.flush(Duration::from_secs(30))?;
        }
        Destination::Amqp { url, exchange, routing_key } => {
            let (conn, channel) = amqp_channel(url).await?;
            for (line, _) in &stream {
                let mut table = FieldTable::default();
                for (k, v) in line.headers() {
                    table.insert(ShortString::from(k), AMQPValue::LongString(LongString::from(v.as_str())));
                }
                let mut props = BasicProperties::default().with_delivery_mode(2).with_headers(table);
                if let Some(id) = line.idempotency_key.as_deref().or(line.key.as_deref()) {
                    props = props.with_message_id(ShortString::from(id));
                }
                let confirm = channel
                    .basic_publish(
                        ShortString::from(exchange.as_str()),
                        ShortString::from(routing_key.as_str()),
                        BasicPublishOptions::default(),
                        &line.payload(),
                        props,
                    )
                    .await?
                    .await?;
                anyhow::ensure!(confirm.is_ack(), "the broker refused a message (nack)");
                bar.inc(1);
            }
            let _ = conn.close(200, "done".into()).await;
        }
    }
    bar.finish_and_clear();
    let dups = stream.iter().filter(|(_, again)| *again).count();
    println!("sent {} messages: {} lines, {dups} of them twice", stream.len(), lines.len());
    Ok(())
}

/// A producer that waits for every replica (acks=all) and never writes a record twice.
pub(crate) fn kafka_producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .context("cannot create the Kafka producer")
}

/// A connection and a channel in publisher-confirm mode.
pub(crate) async fn amqp_channel(url: &str) -> anyhow::Result<(Connection, Channel)> {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .with_context(|| format!("cannot connect to {}", exactly_amqp::redact_url(url)))?;
    let channel = conn.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok((conn, channel))
}
