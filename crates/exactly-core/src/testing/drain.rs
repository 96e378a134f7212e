//! Driving a processor over an in-memory queue, as an adapter would.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::broker::{Delivery, MemoryBroker, MemoryConsumer, Poll};
use crate::{CrashPoint, Disposition, Error, FaultInjector, Outcome, Processor, Result};

/// How [`drain`] runs.
#[derive(Debug, Clone)]
pub struct DrainOptions {
    /// Deliveries processed at once (the prefetch).
    pub concurrency: usize,
    /// Checked at [`CrashPoint::AfterAck`]; pass the same plan as the processor's.
    pub faults: Option<Arc<dyn FaultInjector>>,
    /// Stop after this many deliveries, to simulate a consumer that stops mid-stream.
    pub max_deliveries: Option<u64>,
}

impl Default for DrainOptions {
    fn default() -> Self {
        Self { concurrency: 8, faults: None, max_deliveries: None }
    }
}

/// What [`drain`] saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Deliveries taken from the queue.
    pub deliveries: u64,
    /// Handler runs that ended done.
    pub handled: u64,
    /// Duplicates acknowledged from the cache.
    pub duplicates: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Deliveries of keys dead-lettered before.
    pub already_dead_lettered: u64,
    /// Retries scheduled (transient failures and busy keys).
    pub retries: u64,
    /// Pauses asked for by the circuit breaker.
    pub pauses: u64,
}

/// Processes `queue` until it is empty and nothing is in flight (delayed retries
/// included), carrying out each disposition as an adapter does. Use a paused tokio
/// clock (`#[tokio::test(start_paused = true)]`) so retry delays take no real time.
///
/// On an error of the processor (a store failure, an injected crash) the consumer
/// crashes (its unacknowledged messages go back to the queue) and the error is
/// returned: build a new processor, as a restarted process would, and drain again.
pub async fn drain(
    broker: &MemoryBroker,
    queue: &str,
    processor: &Processor,
    opts: DrainOptions,
) -> Result<DrainReport> {
    let consumer = Arc::new(broker.consumer(queue));
    let mut tasks: JoinSet<Result<(Outcome, u64)>> = JoinSet::new();
    let mut report = DrainReport::default();
    let concurrency = opts.concurrency.max(1);
    let result = loop {
        let limit_reached = opts.max_deliveries.is_some_and(|m| report.deliveries >= m);
        let mut wait_until = None;
        if tasks.len() < concurrency && !limit_reached {
            match consumer.poll() {
                Poll::Message(d) => {
                    report.deliveries += 1;
                    let (c, p, b, f) = (consumer.clone(), processor.clone(), broker.clone(), opts.faults.clone());
                    tasks.spawn(async move { settle(&c, &p, &b, f.as_deref(), *d).await });
                    continue;
                }
                Poll::WaitUntil(t) => wait_until = t,
            }
        }
        if tasks.is_empty() && (wait_until.is_none() || limit_reached) {
            break Ok(report);
        }
        let joined = match (tasks.is_empty(), wait_until) {
            (true, Some(t)) => {
                tokio::time::sleep_until(t).await;
                continue;
            }
            (false, Some(t)) if tasks.len() < concurrency => tokio::select! {
                j = tasks.join_next() => j,
                () = tokio::time::sleep_until(t) => continue,
            },
            _ => tasks.join_next().await,
        };
        let Some(joined) = joined else { continue };
        match joined {
            Ok(Ok((outcome, pauses))) => {
                report.pauses += pauses;
                count(&mut report, outcome);
            }
            Ok(Err(e)) => break Err(e),
            Err(join) => {
                break Err(Error::StoreIo { operation: "drain task", source: Box::new(join) });
            }
        }
    };
    if result.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        consumer.crash();
    }
    result
}

fn count(r: &mut DrainReport, o: Outcome) {
    match o {
        Outcome::Handled => r.handled += 1,
        Outcome::Duplicate => r.duplicates += 1,
        Outcome::DeadLettered => r.dead_lettered += 1,
        Outcome::AlreadyDeadLettered => r.already_dead_lettered += 1,
        Outcome::Retry | Outcome::Busy => r.retries += 1,
        Outcome::Paused => r.pauses += 1,
    }
}

/// Processes one delivery to the end, as an adapter does.
pub(super) async fn settle(
    consumer: &MemoryConsumer,
    processor: &Processor,
    broker: &MemoryBroker,
    faults: Option<&dyn FaultInjector>,
    d: Delivery,
) -> Result<(Outcome, u64)> {
    let mut pauses = 0;
    loop {
        let mut p = processor.process(d.message.clone()).await?;
        match &p.disposition {
            Disposition::Ack => {
                broker.record_outputs(p.key.as_deref(), p.output.as_ref(), &p.emitted);
                consumer.ack(d.tag);
                if faults.is_some_and(|f| f.crash_at(CrashPoint::AfterAck, p.key.as_deref())) {
                    return Err(Error::InjectedCrash(CrashPoint::AfterAck));
                }
            }
            Disposition::Retry { after } => {
                consumer.requeue(d.tag, *after);
            }
            Disposition::DeadLetter(dl) => {
                consumer.dead_letter(d.tag, (**dl).clone());
                p.confirm_dead_letter().await?;
            }
            Disposition::Pause { after } => {
                pauses += 1;
                tokio::time::sleep((*after).max(Duration::from_millis(1))).await;
                continue;
            }
        }
        return Ok((p.outcome, pauses));
    }
}
