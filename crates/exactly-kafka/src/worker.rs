//! A partition's worker: runs its records through the processor and tells the tracker
//! which are finished.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::Duration;

use bytes::Bytes;
use exactly_core::{Disposition, Staged};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use rdkafka::Message as _;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::builder::Ordering;
use crate::hooks::ConsumerHooks;
use crate::offsets::Tracker;
use crate::state::{ConsumerState, Control, TopicPartition};
use crate::{Error, convert};

pub(crate) struct Worker {
    pub(crate) state: Arc<ConsumerState>,
    pub(crate) tp: TopicPartition,
    /// The partition's own queue: librdkafka stops fetching the partition while it is full.
    pub(crate) queue: StreamPartitionQueue<ConsumerHooks>,
    /// Records of this partition that came through the main queue, taken first.
    pub(crate) spill: mpsc::UnboundedReceiver<OwnedMessage>,
    pub(crate) tracker: Arc<Tracker>,
    pub(crate) stop: CancellationToken,
    /// Records below this offset are finished already (the watermark): skipped in O(1).
    pub(crate) start: i64,
    /// Whether this assignment's anchor record was saved (see [`crate::anchor`]).
    pub(crate) anchored: bool,
    /// This partition's consume errors: logged at a readable rate.
    pub(crate) errors: crate::outage::Outage,
}

/// A record's outcome once its processing returned.
enum Step {
    /// Done; its done-record may still be on its way to disk.
    Staged(Box<Staged>),
    /// Finished for good (dead-lettered).
    Finished,
    /// The worker was stopped before the record finished: it stays uncommitted.
    Stopped,
}

impl Worker {
    pub(crate) async fn run(mut self) {
        let result = match self.state.cfg.ordering {
            Ordering::Partition => self.in_order().await,
            Ordering::Key => self.by_key().await,
        };
        if let Err(e) = result {
            let _ = self.state.control.send(Control::Fatal(e));
        }
    }

    /// The next record of the partition, the spilled ones first; `None` when the queue
    /// broke (the consumer is closing).
    async fn next(&mut self) -> Option<OwnedMessage> {
        if let Ok(m) = self.spill.try_recv() {
            return Some(m);
        }
        loop {
            tokio::select! {
                biased;
                Some(m) = self.spill.recv() => return Some(m),
                r = self.queue.recv() => match r {
                    Ok(m) => {
                        self.errors.recovered(std::time::Instant::now());
                        return Some(m.detach());
                    }
                    Err(e) => {
                        let step = self.errors.error(std::time::Instant::now(), e.to_string(), false);
                        if let Some(report) = step.report {
                            tracing::warn!(topic = %self.tp.0, partition = self.tp.1, "{report} (librdkafka retries)");
                        }
                        tokio::time::sleep(step.pause).await;
                    }
                },
            }
        }
    }

    /// A record's outcome is decided and durable: its offset may be committed.
    fn finished(&self, offset: i64) {
        self.tracker.finished(offset);
        self.state.stats.finished.fetch_add(1, AtomicOrdering::Relaxed);
    }

    /// Registers a received record; `false` if it is below the watermark (finished already).
    fn admit(&mut self, m: &OwnedMessage) -> bool {
        let offset = m.offset();
        if !self.anchored {
            // The first record of this assignment anchors the watermark to this log.
            self.anchored = true;
            let name = crate::anchor::name(&crate::state::watermark_name(&self.state.cfg.group, &self.tp.0, self.tp.1));
            let (store, value) = (self.state.processor.store().clone(), crate::anchor::Anchor::of(m).encode());
            tokio::spawn(async move {
                if let Err(e) = store.meta_put(&name, value).await {
                    tracing::warn!(error = %e, "cannot save the watermark's anchor");
                }
            });
        }
        self.tracker.received(offset);
        if offset < self.start {
            self.state.stats.skipped.fetch_add(1, AtomicOrdering::Relaxed);
            self.state.processor.answered_duplicate(exactly_core::metrics::AnsweredBy::Watermark);
            self.finished(offset);
            return false;
        }
        self.state.stats.records.fetch_add(1, AtomicOrdering::Relaxed);
        true
    }

    /// One record at a time, in offset order. The next record's handler runs while the
    /// previous done-records are still on their way to disk; each offset is finished
    /// once its record is durable, in order. The records waiting for that are a plain
    /// queue polled at its oldest (they become durable in the order they were staged),
    /// not a future boxed per record.
    async fn in_order(&mut self) -> Result<(), exactly_core::Error> {
        let mut durable: VecDeque<(i64, Box<Staged>)> = VecDeque::new();
        let stop = self.stop.clone();
        // In offset order, a record keyed by its position has the partition watermark as
        // its done-record.
        let watermark = crate::state::watermark_name(&self.state.cfg.group, &self.tp.0, self.tp.1);
        loop {
            tokio::select! {
                biased;
                () = oldest_ready(&mut durable), if !durable.is_empty() => {
                    if let Some((offset, staged)) = durable.pop_front() {
                        let _durable = staged.durable().await?;
                        self.finished(offset);
                    }
                }
                () = stop.cancelled() => break,
                m = self.next(), if durable.len() < self.state.cfg.max_in_flight => {
                    let Some(m) = m else { break };
                    let offset = m.offset();
                    if !self.admit(&m) {
                        continue;
                    }
                    match settle(&self.state, &m, &self.stop, Some(&watermark)).await? {
                        Step::Staged(s) => durable.push_back((offset, s)),
                        Step::Finished => self.finished(offset),
                        Step::Stopped => break,
                    }
                }
            }
        }
        // Records already handled become durable on their own; count them finished.
        while let Some((offset, staged)) = durable.pop_front() {
            let _durable = staged.durable().await?;
            self.finished(offset);
        }
        Ok(())
    }

    /// Records of different keys in parallel, each key in offset order.
    async fn by_key(&mut self) -> Result<(), exactly_core::Error> {
        let limit = self.state.cfg.max_in_flight;
        let mut waiting: HashMap<Option<Bytes>, VecDeque<OwnedMessage>> = HashMap::new();
        let mut running = FuturesUnordered::new();
        let run = |m: OwnedMessage, state: Arc<ConsumerState>, stop: CancellationToken| async move {
            let key = m.key().map(Bytes::copy_from_slice);
            let offset = m.offset();
            let step = match settle(&state, &m, &stop, None).await {
                Ok(Step::Staged(s)) => s.durable().await.map(|_| true),
                Ok(Step::Finished) => Ok(true),
                Ok(Step::Stopped) => Ok(false),
                Err(e) => Err(e),
            };
            (key, offset, step)
        };
        let mut stopping = false;
        let stop = self.stop.clone();
        loop {
            tokio::select! {
                biased;
                Some((key, offset, step)) = running.next(), if !running.is_empty() => {
                    if step? {
                        self.finished(offset);
                    }
                    // The next record of the same key may start now.
                    let next = waiting.get_mut(&key).and_then(VecDeque::pop_front);
                    match next {
                        Some(m) if !stopping => running.push(run(m, self.state.clone(), self.stop.clone())),
                        _ => {
                            waiting.remove(&key);
                        }
                    }
                }
                () = stop.cancelled(), if !stopping => stopping = true,
                m = self.next(), if !stopping && running.len() < limit => {
                    let Some(m) = m else { stopping = true; continue };
                    if !self.admit(&m) {
                        continue;
                    }
                    let key = m.key().map(Bytes::copy_from_slice);
                    match waiting.get_mut(&key) {
                        Some(queue) => queue.push_back(m),
                        None => {
                            waiting.insert(key, VecDeque::new());
                            running.push(run(m, self.state.clone(), self.stop.clone()));
                        }
                    }
                }
                else => break,
            }
            if stopping && running.is_empty() {
                break;
            }
        }
        Ok(())
    }
}

/// Resolves once the oldest of `queue` is durable (or failed); pending while it is empty.
fn oldest_ready(queue: &mut VecDeque<(i64, Box<Staged>)>) -> impl std::future::Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| match queue.front_mut() {
        Some((_, staged)) => staged.poll_ready(cx),
        None => std::task::Poll::Pending,
    })
}

/// Processes one record until it is staged, dead-lettered, or the worker stops. With a
/// watermark name, a record keyed by its position takes the watermark path.
async fn settle(
    state: &ConsumerState,
    m: &OwnedMessage,
    stop: &CancellationToken,
    watermark: Option<&str>,
) -> Result<Step, exactly_core::Error> {
    let span = tracing::debug_span!("kafka_record", topic = m.topic(), partition = m.partition(), offset = m.offset());
    settle_in(state, m, stop, watermark).instrument(span).await
}

async fn settle_in(
    state: &ConsumerState,
    m: &OwnedMessage,
    stop: &CancellationToken,
    watermark: Option<&str>,
) -> Result<Step, exactly_core::Error> {
    let mut msg = convert::to_message(m);
    loop {
        let staged = match watermark {
            Some(w) => state.processor.process_positioned(msg.clone(), w).await?,
            None => state.processor.process_staged(msg.clone()).await?,
        };
        // Attempts made so far travel with the message to its next try.
        msg.set_delivery_count(staged.processed().attempts);
        let wait = match &staged.processed().disposition {
            Disposition::Ack => {
                let p = staged.processed();
                if !p.emitted.is_empty() {
                    if state.txn_producer.is_some() {
                        // Produced with the offsets, in the next transaction; the record is
                        // finished only once its done-record is durable.
                        let p = staged.durable().await?;
                        state.outbox.lock().unwrap_or_else(|e| e.into_inner()).records.extend(p.emitted);
                        return Ok(Step::Finished);
                    }
                    if let Err(e) = emit(state, &p.emitted).await {
                        tracing::warn!(error = %e, "emitted records not produced; retrying the record");
                        Duration::from_secs(1)
                    } else {
                        return Ok(Step::Staged(Box::new(staged)));
                    }
                } else {
                    return Ok(Step::Staged(Box::new(staged)));
                }
            }
            Disposition::Retry { after } => *after,
            Disposition::Pause { after } => {
                state.pause_all(*after);
                *after
            }
            Disposition::DeadLetter(_) => {
                let mut p = staged.durable().await?;
                let Disposition::DeadLetter(dl) = &p.disposition else { unreachable!("checked above") };
                match dead_letter(state, m, dl).await {
                    Ok(()) => {
                        p.confirm_dead_letter().await?;
                        state.stats.dead_lettered.fetch_add(1, AtomicOrdering::Relaxed);
                        return Ok(Step::Finished);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "dead-letter not delivered; keeping the record and trying again");
                        p.abandon_dead_letter().await?;
                        Duration::from_secs(1)
                    }
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return Ok(Step::Stopped),
        }
    }
}

/// Produces the records a handler emitted and waits for their delivery.
async fn emit(state: &ConsumerState, records: &[exactly_core::OutboundRecord]) -> Result<(), Error> {
    for r in records {
        state
            .producer
            .send(convert::outbound_record(r), Timeout::After(Duration::from_secs(30)))
            .await
            .map_err(|(source, _)| Error::Produce { topic: r.destination.clone(), source })?;
    }
    Ok(())
}

/// Produces a dead-letter copy of the record, with acks=all, and waits for its delivery.
async fn dead_letter(state: &ConsumerState, m: &OwnedMessage, dl: &exactly_core::DeadLetter) -> Result<(), Error> {
    let topic = state.dlq_topic(m.topic());
    let now = state.processor.clock().now();
    let headers = convert::dead_letter_headers(m, dl, state.processor.consumer(), now);
    let mut rec = FutureRecord::to(&topic).payload(m.payload().unwrap_or_default()).headers(headers);
    if let Some(k) = m.key() {
        rec = rec.key(k);
    }
    state
        .producer
        .send(rec, Timeout::After(Duration::from_secs(30)))
        .await
        .map_err(|(source, _)| Error::Produce { topic, source })?;
    Ok(())
}
