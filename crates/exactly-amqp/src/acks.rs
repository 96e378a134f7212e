//! Batching acknowledgements: one `basic.ack multiple=true` for every finished delivery
//! below the oldest one still in flight, instead of one frame per message.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::Acker;
use lapin::options::BasicAckOptions;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::consumer::Stats;

/// A finished delivery behind an unfinished one is acknowledged alone after this long,
/// so a slow message never holds the prefetch window.
const ALONE_AFTER: Duration = Duration::from_millis(5);

pub(crate) enum Event {
    /// A delivery was received: it must be finished before a multiple ack covers it.
    Delivered(u64),
    /// A delivery is finished and may be acknowledged.
    Done(u64, Acker),
    /// A delivery ended without an ack (its connection is gone).
    Dropped(u64),
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub(crate) struct Acks(mpsc::UnboundedSender<Event>);

impl Acks {
    pub(crate) fn delivered(&self, tag: u64) {
        let _ = self.0.send(Event::Delivered(tag));
    }

    pub(crate) fn done(&self, tag: u64, acker: Acker) {
        let _ = self.0.send(Event::Done(tag, acker));
    }

    pub(crate) fn dropped(&self, tag: u64) {
        let _ = self.0.send(Event::Dropped(tag));
    }
}

/// Starts the batcher of one channel. It ends, after acknowledging what it holds, when
/// every [`Acks`] is dropped.
pub(crate) fn start(stats: Arc<Stats>) -> (Acks, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Acks(tx), tokio::spawn(run(rx, stats)))
}

#[derive(Default)]
struct Batcher {
    in_flight: BTreeSet<u64>,
    finished: BTreeMap<u64, (Acker, Instant)>,
}

impl Batcher {
    fn apply(&mut self, e: Event) {
        match e {
            Event::Delivered(t) => {
                self.in_flight.insert(t);
            }
            Event::Done(t, acker) => {
                self.in_flight.remove(&t);
                self.finished.insert(t, (acker, Instant::now()));
            }
            Event::Dropped(t) => {
                self.in_flight.remove(&t);
            }
        }
    }

    /// Which finished deliveries to acknowledge now: the finished ones below the oldest
    /// unfinished (one multiple ack, at the highest of them), and those that waited too
    /// long behind an unfinished one (one ack each).
    fn plan(&self, now: Instant, everything: bool) -> Plan {
        let low = self.in_flight.first().copied().unwrap_or(u64::MAX);
        let prefix: Vec<u64> = self.finished.range(..low).map(|(t, _)| *t).collect();
        let alone = self
            .finished
            .range(low..)
            .filter(|(_, (_, at))| everything || now.duration_since(*at) >= ALONE_AFTER)
            .map(|(t, _)| *t)
            .collect();
        Plan { prefix, alone }
    }

    /// Acknowledges what [`Batcher::plan`] says.
    async fn flush(&mut self, stats: &Stats, everything: bool) {
        let Plan { prefix, alone } = self.plan(Instant::now(), everything);
        if let Some(&last) = prefix.last() {
            for t in &prefix {
                let acker = self.finished.remove(t);
                if *t == last
                    && let Some((acker, _)) = acker
                    && ack(&acker, true).await
                {
                    stats.acked.fetch_add(prefix.len() as u64, Ordering::Relaxed);
                }
            }
        }
        for t in alone {
            if let Some((acker, _)) = self.finished.remove(&t)
                && ack(&acker, false).await
            {
                stats.acked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Plan {
    prefix: Vec<u64>,
    alone: Vec<u64>,
}

async fn ack(acker: &Acker, multiple: bool) -> bool {
    match acker.ack(BasicAckOptions { multiple }).await {
        Ok(done) => done,
        Err(e) => {
            tracing::debug!(error = %e, "ack failed (connection gone?); the broker will redeliver");
            false
        }
    }
}

/// Acknowledges as soon as no more events are waiting: deliveries finished together (a
/// group commit answers many at once) share one ack without any added delay.
async fn run(mut rx: mpsc::UnboundedReceiver<Event>, stats: Arc<Stats>) {
    let mut b = Batcher::default();
    loop {
        let event = if b.finished.is_empty() {
            rx.recv().await
        } else {
            // Only deliveries finished behind an unfinished one are left: look again
            // when they have waited long enough to be acknowledged alone.
            match tokio::time::timeout(ALONE_AFTER, rx.recv()).await {
                Ok(e) => e,
                Err(_) => {
                    b.flush(&stats, false).await;
                    continue;
                }
            }
        };
        let Some(e) = event else { break };
        b.apply(e);
        while let Ok(e) = rx.try_recv() {
            b.apply(e);
        }
        b.flush(&stats, false).await;
    }
    b.flush(&stats, true).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::message::Delivery;

    fn acker() -> Acker {
        Delivery::mock(0, "".into(), "".into(), false, vec![]).acker
    }

    #[tokio::test]
    async fn the_finished_prefix_is_acked_at_once_and_stragglers_later() {
        let mut b = Batcher::default();
        for t in 1..=5 {
            b.apply(Event::Delivered(t));
        }
        for t in [1, 2, 4, 5] {
            b.apply(Event::Done(t, acker()));
        }
        let now = Instant::now();
        assert_eq!(b.plan(now, false), Plan { prefix: vec![1, 2], alone: vec![] }, "3 is unfinished: 4 and 5 wait");
        assert_eq!(b.plan(now + ALONE_AFTER, false), Plan { prefix: vec![1, 2], alone: vec![4, 5] });
        b.apply(Event::Done(3, acker()));
        assert_eq!(b.plan(now, false), Plan { prefix: vec![1, 2, 3, 4, 5], alone: vec![] });
    }

    #[tokio::test]
    async fn a_dropped_delivery_does_not_hold_back_the_others() {
        let mut b = Batcher::default();
        b.apply(Event::Delivered(1));
        b.apply(Event::Delivered(2));
        b.apply(Event::Done(2, acker()));
        b.apply(Event::Dropped(1));
        assert_eq!(b.plan(Instant::now(), false), Plan { prefix: vec![2], alone: vec![] });
    }
}
