//! A consumer binary with two subscriptions, configured from a TOML file and the
//! environment, stopped by SIGINT/SIGTERM, with `/metrics`, `/healthz` and `/readyz`.
//!
//! ```sh
//! # RabbitMQ on 127.0.0.1:5672; the Kafka subscription uses tansu (scripts/services.sh up)
//! EXACTLY_CONFIG=examples/app.toml cargo run -p exactly-examples --features app --example app
//! curl -s localhost:9090/metrics | grep exactly_messages_total
//! ```
//!
//! `/readyz` answers `not ready: kafka.orders` until the topic `exactly-demo-app-orders`
//! exists and the group has assigned it (tansu does not create topics on first use).
//!
//! Every setting can be overridden from the environment, for example
//! `EXACTLY_HTTP__LISTEN=0.0.0.0:9100` or `EXACTLY_AMQP__PAYMENTS__PREFETCH=64`.

use exactly::app::App;
use exactly::{Context, Message, handler_fn};

#[tokio::main]
async fn main() -> Result<(), exactly::app::Error> {
    App::from_env()?
        .handler(
            "payments",
            handler_fn(|msg: Message, ctx: Context| async move {
                let p: serde_json::Value = msg.decode()?;
                tracing::info!(key = ctx.message_key(), payment = %p, "paid");
                Ok(())
            }),
        )
        .handler(
            "orders",
            handler_fn(|msg: Message, ctx: Context| async move {
                tracing::info!(key = ctx.message_key(), bytes = msg.payload().len(), "order");
                Ok(())
            }),
        )
        .run()
        .await
}
