//! What the polling loop, the rebalance callback and the partition workers share.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use exactly_core::{OutboundRecord, Processor};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::builder::ConsumerBuilder;
use crate::hooks::ConsumerHooks;
use crate::offsets::Tracker;
use crate::{Error, Stats};

/// A topic and partition.
pub(crate) type TopicPartition = (Arc<str>, i32);

/// Messages from the workers to the polling loop.
pub(crate) enum Control {
    /// The store failed: stop.
    Fatal(exactly_core::Error),
}

/// Where an assigned partition starts: the later of Kafka's committed offset and the
/// store's watermark (`from`), and Kafka's committed offset.
pub(crate) struct Start {
    pub(crate) tp: TopicPartition,
    pub(crate) from: Option<i64>,
    pub(crate) committed: Option<i64>,
}

/// One assigned partition.
pub(crate) struct AssignedPartition {
    /// Records of this partition that arrived on the consumer's main queue instead of the
    /// partition's own (fetched before its queue was split): the worker takes them first.
    spill: mpsc::UnboundedSender<OwnedMessage>,
    pub(crate) tracker: Arc<Tracker>,
    pub(crate) stop: CancellationToken,
    pub(crate) task: Option<JoinHandle<()>>,
    /// The offset last committed (the next to consume).
    committed: Option<i64>,
}

/// Records produced in the transaction of the next commit, and the lock that keeps them
/// in step with the offsets it commits.
#[derive(Default)]
pub(crate) struct Outbox {
    pub(crate) records: Vec<OutboundRecord>,
}

pub(crate) struct ConsumerState {
    pub(crate) cfg: ConsumerBuilder,
    pub(crate) processor: Processor,
    /// Dead-letters, and emitted records when not transactional.
    pub(crate) producer: FutureProducer,
    /// Emitted records and offsets, when transactional.
    pub(crate) txn_producer: Option<FutureProducer>,
    pub(crate) outbox: Mutex<Outbox>,
    partitions: Mutex<HashMap<TopicPartition, AssignedPartition>>,
    pub(crate) control: mpsc::UnboundedSender<Control>,
    pub(crate) runtime: tokio::runtime::Handle,
    pause_until: Mutex<Option<Instant>>,
    pub(crate) stats: Arc<Stats>,
    /// The [`Consumer`](crate::Consumer) is gone (finished, or dropped without a graceful
    /// stop): a revoke at librdkafka's close must not wait for anything.
    pub(crate) closing: std::sync::atomic::AtomicBool,
}

/// The store's meta name of a partition's watermark: the next offset to consume.
pub(crate) fn watermark_name(group: &str, topic: &str, partition: i32) -> String {
    format!("kafka/{group}/{topic}/{partition}")
}

impl ConsumerState {
    pub(crate) fn new(
        cfg: ConsumerBuilder,
        processor: Processor,
        producer: FutureProducer,
        txn_producer: Option<FutureProducer>,
        control: mpsc::UnboundedSender<Control>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            cfg,
            processor,
            producer,
            txn_producer,
            outbox: Mutex::default(),
            partitions: Mutex::default(),
            control,
            runtime: tokio::runtime::Handle::current(),
            pause_until: Mutex::default(),
            stats,
            closing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn partitions(&self) -> MutexGuard<'_, HashMap<TopicPartition, AssignedPartition>> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn dlq_topic(&self, topic: &str) -> String {
        format!("{topic}{}", self.cfg.dlq_suffix)
    }

    /// The local watermark of a partition: the next offset to consume, as far as this
    /// store knows.
    fn watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        let name = watermark_name(&self.cfg.group, topic, partition);
        let raw = exactly_core::runtime::block_on(self.processor.store().meta_get(&name))?.ok()??;
        raw.get(..8).and_then(|b| b.try_into().ok()).map(i64::from_be_bytes)
    }

    /// A record that came on the consumer's main queue: its partition's worker takes it
    /// (ahead of its own queue). Records of partitions no longer assigned are dropped:
    /// their new owner consumes them.
    pub(crate) fn route(&self, m: OwnedMessage) {
        let tp: TopicPartition = (Arc::from(m.topic()), m.partition());
        if let Some(partition) = self.partitions().get(&tp) {
            tracing::debug!(topic = %tp.0, partition = tp.1, offset = m.offset(), "record on the main queue");
            let _ = partition.spill.send(m);
        }
    }

    /// The offsets to commit: each partition's finished prefix, where it moved.
    fn to_commit(&self, partitions: &HashMap<TopicPartition, AssignedPartition>) -> Vec<(TopicPartition, i64)> {
        partitions
            .iter()
            .filter_map(|(tp, p)| {
                let next = p.tracker.committable()?;
                (p.committed.is_none_or(|c| next > c)).then(|| (tp.clone(), next))
            })
            .collect()
    }

    /// Records the new watermarks in the store, then commits them to Kafka.
    pub(crate) async fn commit(&self, consumer: &dyn Committer, mode: CommitMode) -> Result<(), Error> {
        let (offsets, records) = {
            // Taking the outbox and the offsets together keeps them in step: an offset is
            // committed in the same transaction as the records it emitted.
            let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
            let offsets = self.to_commit(&self.partitions());
            (offsets, std::mem::take(&mut outbox.records))
        };
        if offsets.is_empty() && records.is_empty() {
            return Ok(());
        }
        self.save_watermarks(&offsets).await?;
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &offsets {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
        }
        let committed = match &self.txn_producer {
            None => consumer.commit_offsets(&tpl, mode),
            Some(producer) => {
                let result = crate::txn::commit(producer, consumer, &tpl, &records).await;
                if result.is_err() {
                    self.stats.transaction_aborts.fetch_add(1, Ordering::Relaxed);
                    // Nothing of this transaction counts: emit the records again next time.
                    self.outbox.lock().unwrap_or_else(|p| p.into_inner()).records.splice(0..0, records);
                }
                result
            }
        };
        match committed {
            Ok(()) => {
                // An asynchronous commit is only sent: the commit callback confirms it
                // (until then the same offsets are sent again at each tick).
                if matches!(mode, CommitMode::Sync) || self.txn_producer.is_some() {
                    self.confirm_commit(&offsets);
                }
                Ok(())
            }
            Err(e @ Error::TransactionFatal { .. }) => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "offset commit failed; will try again (the local watermark is saved)");
                Ok(())
            }
        }
    }

    /// The broker accepted these offsets.
    pub(crate) fn confirm_commit(&self, offsets: &[(TopicPartition, i64)]) {
        let mut partitions = self.partitions();
        for (tp, next) in offsets {
            if let Some(p) = partitions.get_mut(tp) {
                p.committed = Some(p.committed.map_or(*next, |c| c.max(*next)));
            }
        }
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
    }

    async fn save_watermarks(&self, offsets: &[(TopicPartition, i64)]) -> Result<(), Error> {
        let store = self.processor.store();
        let names: Vec<(String, Bytes)> = offsets
            .iter()
            .map(|((topic, partition), next)| {
                (watermark_name(&self.cfg.group, topic, *partition), Bytes::copy_from_slice(&next.to_be_bytes()))
            })
            .collect();
        let writes = names.iter().map(|(name, value)| store.meta_put(name, value.clone()));
        for r in futures_util::future::join_all(writes).await {
            r?;
        }
        Ok(())
    }

    /// Partitions about to be assigned: start each from the later of the committed offset
    /// and the local watermark. Returns where each starts, for [`ConsumerState::start_partitions`].
    pub(crate) fn on_assign(&self, base: &BaseConsumer<ConsumerHooks>, tpl: &mut TopicPartitionList) -> Vec<Start> {
        let list: Vec<(String, i32)> = tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
        let committed = base.committed_offsets(tpl.clone(), Duration::from_secs(10)).ok();
        let mut starts = Vec::with_capacity(list.len());
        for (topic, partition) in &list {
            let kafka =
                committed.as_ref().and_then(|c| c.find_partition(topic, *partition)).and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            let mut local = self.watermark(topic, *partition);
            if let Some(l) = local.filter(|l| kafka.is_none_or(|k| *l > k)) {
                // A watermark past the end of the log was not made on this log: the topic
                // was deleted and created again, or the store was used with another
                // cluster. Starting there would skip records; ignore it.
                if let Ok((_, high)) = base.fetch_watermarks(topic, *partition, Duration::from_secs(10))
                    && l > high
                {
                    tracing::warn!(
                        topic,
                        partition,
                        local = l,
                        end = high,
                        "the local watermark is past the end of the partition (topic recreated, or another cluster); ignoring it"
                    );
                    local = None;
                }
            }
            if let Some(l) = local.filter(|l| kafka.is_none_or(|k| *l > k)) {
                // Inside the log, the watermark may still be another log's: check the
                // record it was anchored to.
                let name = crate::anchor::name(&watermark_name(&self.cfg.group, topic, *partition));
                let anchor = exactly_core::runtime::block_on(self.processor.store().meta_get(&name))
                    .and_then(Result::ok)
                    .flatten();
                if let Some(anchor) = anchor.as_deref().and_then(crate::anchor::Anchor::decode) {
                    let verdict = crate::anchor::check(&self.cfg, topic, *partition, anchor);
                    if verdict == crate::anchor::Verdict::Other {
                        tracing::warn!(
                            topic,
                            partition,
                            local = l,
                            "the local watermark was made on another log (the record it is anchored to is not there: topic recreated, or another cluster); ignoring it"
                        );
                        local = None;
                    } else if verdict == crate::anchor::Verdict::Unknown {
                        tracing::info!(
                            topic,
                            partition,
                            "the local watermark's anchor record cannot be read back (retention, broker); trusting the watermark"
                        );
                    }
                }
            }
            if let Some(l) = local.filter(|l| kafka.is_none_or(|k| *l > k)) {
                tracing::info!(topic, partition, local = l, kafka = ?kafka, "the local watermark is ahead of the committed offset; starting there");
                let _ = tpl.set_partition_offset(topic, *partition, Offset::Offset(l));
            }
            starts.push(Start {
                tp: (Arc::from(topic.as_str()), *partition),
                from: local.max(kafka),
                committed: kafka,
            });
        }
        tracing::info!(partitions = ?list, "partitions assigned");
        starts
    }

    /// Partitions assigned: give each its own queue and a worker.
    pub(crate) fn start_partitions(
        self: &Arc<Self>,
        consumer: &Arc<StreamConsumer<ConsumerHooks>>,
        starts: Vec<Start>,
    ) {
        for Start { tp, from: start, committed } in starts {
            let Some(queue) = consumer.split_partition_queue(&tp.0, tp.1) else {
                tracing::error!(topic = %tp.0, partition = tp.1, "cannot split the partition's queue; its records come through the main queue");
                continue;
            };
            let (spill_tx, spill) = mpsc::unbounded_channel();
            let tracker = Arc::new(Tracker::default());
            // Started past Kafka's committed offset (from the store's watermark, which an
            // instance sharing the store may have saved before its commit was lost): that
            // start is committable at once, or the group's lag stays until a new record.
            if let Some(from) = start.filter(|f| committed.is_none_or(|c| *f > c)) {
                tracker.start_at(from);
            }
            let stop = CancellationToken::new();
            let worker = crate::worker::Worker {
                state: self.clone(),
                tp: tp.clone(),
                queue,
                spill,
                tracker: tracker.clone(),
                stop: stop.clone(),
                start: start.unwrap_or(i64::MIN),
                anchored: false,
                errors: crate::outage::Outage::default(),
            };
            let task = self.runtime.spawn(worker.run());
            let partition = AssignedPartition { spill: spill_tx, tracker, stop, task: Some(task), committed };
            if let Some(old) = self.partitions().insert(tp, partition) {
                old.stop.cancel();
            }
        }
    }

    /// Partitions revoked: stop their workers, let the records in flight finish (up to
    /// the revoke timeout), commit what finished, then let them go.
    pub(crate) fn on_revoke(self: &Arc<Self>, base: &BaseConsumer<ConsumerHooks>, tpl: &TopicPartitionList) {
        let revoked: Vec<TopicPartition> =
            tpl.elements().iter().map(|e| (Arc::from(e.topic()), e.partition())).collect();
        tracing::info!(partitions = ?revoked, "partitions revoked; finishing records in flight");
        let mut tasks = Vec::new();
        let mut stopped = HashMap::new();
        {
            let mut partitions = self.partitions();
            for tp in &revoked {
                if let Some(mut p) = partitions.remove(tp) {
                    p.stop.cancel();
                    tasks.extend(p.task.take());
                    stopped.insert(tp.clone(), p);
                }
            }
        }
        let finish = async {
            let _ = tokio::time::timeout(self.cfg.revoke_timeout, futures_util::future::join_all(tasks)).await;
            let offsets = self.to_commit(&stopped);
            if offsets.is_empty() {
                return;
            }
            if let Err(e) = self.save_watermarks(&offsets).await {
                tracing::error!(error = %e, "cannot save watermarks at revoke");
            }
            let mut list = TopicPartitionList::new();
            for ((topic, partition), next) in &offsets {
                let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*next));
            }
            if self.txn_producer.is_none()
                && let Err(e) = base.commit(&list, CommitMode::Sync)
            {
                tracing::warn!(error = %e, "commit at revoke failed; the new owner may see these records again");
            }
        };
        if self.closing.load(Ordering::Relaxed) {
            // librdkafka closes the consumer when the last handle is dropped, possibly in
            // a task being cancelled or a runtime shutting down: nothing may be left to
            // drive the wait. What is not committed is delivered again.
            tracing::debug!("consumer closing: revoking without waiting for records in flight");
            return;
        }
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| self.runtime.block_on(finish));
            }
            _ => tracing::warn!(
                "revoke without waiting for records in flight: run the consumer on a multi-threaded tokio runtime"
            ),
        }
    }

    /// Stops every worker and waits for them (graceful shutdown).
    pub(crate) async fn stop_all(&self, within: Duration) {
        let tasks: Vec<JoinHandle<()>> = {
            let mut partitions = self.partitions();
            partitions
                .values_mut()
                .filter_map(|p| {
                    p.stop.cancel();
                    p.task.take()
                })
                .collect()
        };
        if tokio::time::timeout(within, futures_util::future::join_all(tasks)).await.is_err() {
            tracing::warn!("shutdown timeout: abandoning records in flight (they are not committed)");
        }
    }

    /// The circuit breaker asked every partition to pause for `after`.
    pub(crate) fn pause_all(&self, after: Duration) {
        let until = Instant::now() + after;
        let mut p = self.pause_until.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none_or(|t| t < until) {
            *p = Some(until);
        }
    }

    pub(crate) fn breaker_paused(&self) -> bool {
        self.pause_until.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|t| t > Instant::now())
    }

    /// Every assigned partition.
    pub(crate) fn assigned(&self) -> Vec<TopicPartition> {
        self.partitions().keys().cloned().collect()
    }
}

/// Committing offsets.
pub(crate) trait Committer: Sync {
    fn commit_offsets(&self, tpl: &TopicPartitionList, mode: CommitMode) -> Result<(), Error>;
    fn group_metadata(&self) -> Option<rdkafka::consumer::ConsumerGroupMetadata>;
}
