//! The queue's depth as the consumer sees it: `exactly_amqp_queue_depth{queue}`, the
//! messages ready in the queue (those delivered and not yet acknowledged are not counted),
//! read with a passive declare on a channel of its own when consuming starts and every
//! [`INTERVAL`] after.

use std::time::Duration;

use lapin::Connection;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use crate::convert::short;

/// `exactly_amqp_queue_depth`
pub const QUEUE_DEPTH: &str = "exactly_amqp_queue_depth";
/// How often the depth is read.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Reads `queue`'s depth until aborted, or until the channel fails (the connection's end
/// ends the session, which aborts this).
pub(crate) async fn watch(conn: &Connection, queue: &str) -> Option<tokio::task::JoinHandle<()>> {
    let channel = conn.create_channel().await.ok()?;
    let queue = queue.to_owned();
    Some(tokio::spawn(async move {
        let depth = metrics::gauge!(QUEUE_DEPTH, "queue" => queue.clone());
        let mut tick = tokio::time::interval(INTERVAL);
        loop {
            tick.tick().await;
            let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
            match channel.queue_declare(short(&queue), passive, FieldTable::default()).await {
                Ok(q) => depth.set(f64::from(q.message_count())),
                Err(e) => {
                    tracing::debug!(queue = %queue, error = %e, "cannot read the queue's depth");
                    return;
                }
            }
        }
    }))
}
