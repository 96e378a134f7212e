//! rdkafka callbacks: rebalances, commits, statistics.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, RebalanceProtocol, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use crate::state::ConsumerState;

/// The consumer's context. The consumer state and the consumer are set right after the
/// consumer is created.
#[derive(Default)]
pub(crate) struct ConsumerHooks {
    pub(crate) state: OnceLock<Arc<ConsumerState>>,
    pub(crate) consumer: OnceLock<Weak<StreamConsumer<ConsumerHooks>>>,
}

impl ClientContext for ConsumerHooks {
    fn stats(&self, statistics: Statistics) {
        let Some(state) = self.state.get() else { return };
        // Whether any broker answers: the truth about an outage, recv errors or not.
        if statistics.brokers.values().any(|b| b.state == "UP") {
            state.stats.back_in_reach();
        } else if !statistics.brokers.is_empty() {
            state.stats.all_down();
        }
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!("exactly_kafka_consumer_lag", "topic" => topic.clone(), "partition" => partition.to_string())
                    .set(p.consumer_lag as f64);
                state.stats.set_lag(topic, *partition, p.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for ConsumerHooks {
    /// Settles the partitions before librdkafka assigns or revokes them: on assign, start
    /// from the later of the committed offset and the local watermark; on revoke, let the
    /// records in flight finish and commit them first.
    fn rebalance(&self, base: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(base.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let starts = self.state.get().map(|s| s.on_assign(base, tpl)).unwrap_or_default();
                let assigned = if cooperative { base.incremental_assign(tpl) } else { base.assign(tpl) };
                // Queues are split after the assignment (it resets them), before any fetch.
                if let (Some(s), Some(c)) = (self.state.get(), self.consumer.get().and_then(Weak::upgrade)) {
                    s.start_partitions(&c, starts);
                }
                if let Some(s) = self.state.get() {
                    s.stats.assigned.store(s.assigned().len() as u64, Ordering::Relaxed);
                    s.stats.joined.store(assigned.is_ok(), Ordering::Relaxed);
                    // librdkafka keeps a partition's pause across a revoke and a new assign
                    // (librdkafka#1849): one paused by the breaker, revoked and assigned
                    // again would stay paused for good. Resumed here unless the breaker is
                    // still open; then its end resumes every assigned partition (consumer.rs).
                    if !s.breaker_paused()
                        && let Err(e) = base.resume(tpl)
                    {
                        tracing::warn!(error = %e, "resuming the assigned partitions failed");
                    }
                }
                assigned
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if let Some(s) = self.state.get() {
                    s.on_revoke(base, tpl);
                }
                let unassigned = if cooperative { base.incremental_unassign(tpl) } else { base.unassign() };
                if let Some(s) = self.state.get() {
                    s.stats.assigned.store(s.assigned().len() as u64, Ordering::Relaxed);
                }
                unassigned
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                if !cooperative {
                    if let Some(s) = self.state.get() {
                        s.on_revoke(base, tpl);
                    }
                    base.unassign()
                } else {
                    Ok(())
                }
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "applying the rebalance failed");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                let Some(s) = self.state.get() else { return };
                let confirmed: Vec<_> = offsets
                    .elements()
                    .iter()
                    .filter_map(|e| match (e.error(), e.offset()) {
                        (Ok(()), Offset::Offset(o)) => Some(((Arc::from(e.topic()), e.partition()), o)),
                        _ => None,
                    })
                    .collect();
                s.confirm_commit(&confirmed);
            }
            Err(e) => {
                tracing::debug!(error = %e, count = offsets.count(), "an offset commit failed; it is sent again");
            }
        }
    }
}
