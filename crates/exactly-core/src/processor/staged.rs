//! A processed delivery whose done-record may not be durable yet.

use super::Processor;
use crate::{CrashPoint, Processed, Result};

/// A processed delivery whose done-record may not be durable yet.
#[derive(Debug)]
#[must_use = "wait for durable() before acknowledging"]
pub struct Staged {
    processed: Processed,
    processor: Processor,
    started: std::time::Instant,
    /// The message's publish timestamp (ms since the epoch), for its settlement age.
    published_ms: Option<i64>,
}

impl Staged {
    pub(super) fn new(
        processed: Processed,
        processor: Processor,
        started: std::time::Instant,
        published_ms: Option<i64>,
    ) -> Self {
        Self { processed, processor, started, published_ms }
    }

    /// The outcome (do not acknowledge it before [`Staged::durable`]).
    pub fn processed(&self) -> &Processed {
        &self.processed
    }

    /// Whether nothing is left to wait for.
    pub fn is_durable(&self) -> bool {
        self.processed.durable.is_none()
    }

    /// Ready once [`Staged::durable`] would find everything durable (or failed) and
    /// return without waiting. An adapter that acknowledges in order can keep its staged
    /// deliveries in a queue and poll only the oldest.
    pub fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        match self.processed.durable.as_mut() {
            Some(d) => d.poll_ready(cx),
            None => std::task::Poll::Ready(()),
        }
    }

    /// Waits until everything the processing wrote is durable, and returns the outcome.
    pub async fn durable(mut self) -> Result<Processed> {
        if let Some(d) = self.processed.durable.take() {
            d.wait().await?;
            self.processor.crash_point(CrashPoint::AfterDoneRecord, self.processed.key.as_deref())?;
        }
        let metrics = &self.processor.inner.metrics;
        metrics.processing_time(self.started.elapsed());
        metrics.settled(self.processed.outcome, self.published_ms, self.processor.inner.clock.now());
        Ok(self.processed)
    }
}
