//! The in-memory broker.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{Coordinates, DeadLetter, Message, OutboundRecord};

/// A message as the broker keeps it.
#[derive(Debug, Clone)]
struct Stored {
    seq: i64,
    msg: Message,
    deliveries: u32,
    not_before: Option<Instant>,
}

#[derive(Debug, Default)]
struct Queue {
    ready: VecDeque<Stored>,
    unacked: BTreeMap<u64, (u64, Stored)>,
    next_seq: i64,
    published: u64,
    acked: u64,
    dead: Vec<DeadLetterRecord>,
}

#[derive(Debug, Default)]
struct Inner {
    queues: HashMap<String, Queue>,
    next_tag: u64,
    next_consumer: u64,
    emitted: Vec<OutboundRecord>,
    replies: Vec<(String, bytes::Bytes)>,
}

/// A message in a queue's dead-letter list, with the details the processor gave.
#[derive(Debug, Clone)]
pub struct DeadLetterRecord {
    /// The message as it was delivered.
    pub message: Message,
    /// Why, how many attempts, which errors.
    pub dead_letter: DeadLetter,
}

/// Counts of one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages published.
    pub published: u64,
    /// Waiting for delivery (including delayed retries).
    pub ready: u64,
    /// Delivered and not yet acknowledged.
    pub unacked: u64,
    /// Acknowledged.
    pub acked: u64,
    /// Dead-lettered.
    pub dead_lettered: u64,
}

/// An in-memory, at-least-once broker of named queues. Cheap to clone; clones share the
/// queues.
#[derive(Debug, Clone, Default)]
pub struct MemoryBroker {
    inner: Arc<Mutex<Inner>>,
    notify: Arc<Notify>,
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a message; returns its sequence number in the queue (its "offset").
    pub fn publish(&self, queue: &str, msg: Message) -> i64 {
        let mut inner = self.lock();
        let q = inner.queues.entry(queue.to_owned()).or_default();
        let seq = q.next_seq;
        q.next_seq += 1;
        q.published += 1;
        q.ready.push_back(Stored { seq, msg, deliveries: 0, not_before: None });
        drop(inner);
        self.notify.notify_waiters();
        seq
    }

    /// A consumer of `queue`. Dropping it (or [`MemoryConsumer::crash`]) puts its
    /// unacknowledged messages back, marked redelivered.
    pub fn consumer(&self, queue: &str) -> MemoryConsumer {
        let mut inner = self.lock();
        inner.next_consumer += 1;
        let id = inner.next_consumer;
        inner.queues.entry(queue.to_owned()).or_default();
        MemoryConsumer { broker: self.clone(), queue: queue.to_owned(), id }
    }

    /// The dead-lettered messages of a queue.
    pub fn dead_letters(&self, queue: &str) -> Vec<DeadLetterRecord> {
        self.lock().queues.get(queue).map(|q| q.dead.clone()).unwrap_or_default()
    }

    /// Records handlers emitted, in publish order.
    pub fn emitted(&self) -> Vec<OutboundRecord> {
        self.lock().emitted.clone()
    }

    /// Replies sent: (key, output).
    pub fn replies(&self) -> Vec<(String, bytes::Bytes)> {
        self.lock().replies.clone()
    }

    pub(crate) fn record_outputs(&self, key: Option<&str>, output: Option<&bytes::Bytes>, emitted: &[OutboundRecord]) {
        let mut inner = self.lock();
        inner.emitted.extend_from_slice(emitted);
        if let (Some(k), Some(o)) = (key, output) {
            inner.replies.push((k.to_owned(), o.clone()));
        }
    }

    /// Counts of a queue.
    pub fn stats(&self, queue: &str) -> QueueStats {
        self.lock()
            .queues
            .get(queue)
            .map(|q| QueueStats {
                published: q.published,
                ready: q.ready.len() as u64,
                unacked: q.unacked.len() as u64,
                acked: q.acked,
                dead_lettered: q.dead.len() as u64,
            })
            .unwrap_or_default()
    }
}

/// One delivery to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The tag to acknowledge it with.
    pub tag: u64,
    /// The message, with coordinates (`queue@seq`) and the redelivered flag set.
    pub message: Message,
}

/// A consumer of one queue.
#[derive(Debug)]
pub struct MemoryConsumer {
    broker: MemoryBroker,
    queue: String,
    id: u64,
}

/// What a consumer's poll found.
#[derive(Debug)]
pub(crate) enum Poll {
    Message(Box<Delivery>),
    /// Nothing ready now; the earliest delayed message becomes ready then.
    WaitUntil(Option<Instant>),
}

impl MemoryConsumer {
    /// The queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    pub(crate) fn poll(&self) -> Poll {
        let now = Instant::now();
        let mut inner = self.broker.lock();
        inner.next_tag += 1;
        let tag = inner.next_tag;
        let Some(q) = inner.queues.get_mut(&self.queue) else {
            return Poll::WaitUntil(None);
        };
        let pos = q.ready.iter().position(|s| s.not_before.is_none_or(|t| t <= now));
        match pos.and_then(|i| q.ready.remove(i)) {
            Some(mut s) => {
                s.deliveries += 1;
                let msg = rebuild(&s, &self.queue);
                q.unacked.insert(tag, (self.id, s));
                Poll::Message(Box::new(Delivery { tag, message: msg }))
            }
            None => Poll::WaitUntil(q.ready.iter().filter_map(|s| s.not_before).min()),
        }
    }

    /// Takes the next ready message, if any, without waiting.
    pub fn try_recv(&self) -> Option<Delivery> {
        match self.poll() {
            Poll::Message(d) => Some(*d),
            Poll::WaitUntil(_) => None,
        }
    }

    /// Waits for the next message.
    pub async fn recv(&self) -> Delivery {
        loop {
            let notified = self.broker.notify.notified();
            match self.poll() {
                Poll::Message(d) => return *d,
                Poll::WaitUntil(Some(t)) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(t) => {}
                    }
                }
                Poll::WaitUntil(None) => notified.await,
            }
        }
    }

    fn take(&self, tag: u64) -> Option<Stored> {
        let mut inner = self.broker.lock();
        inner.queues.get_mut(&self.queue)?.unacked.remove(&tag).map(|(_, s)| s)
    }

    /// Acknowledges a delivery; `false` if the tag is not outstanding.
    pub fn ack(&self, tag: u64) -> bool {
        let mut inner = self.broker.lock();
        let Some(q) = inner.queues.get_mut(&self.queue) else {
            return false;
        };
        let found = q.unacked.remove(&tag).is_some();
        if found {
            q.acked += 1;
        }
        found
    }

    /// Puts a delivery back, to be delivered again after `after`.
    pub fn requeue(&self, tag: u64, after: Duration) -> bool {
        let Some(mut s) = self.take(tag) else {
            return false;
        };
        s.not_before = Some(Instant::now() + after);
        let mut inner = self.broker.lock();
        if let Some(q) = inner.queues.get_mut(&self.queue) {
            q.ready.push_back(s);
        }
        drop(inner);
        self.broker.notify.notify_waiters();
        true
    }

    /// Moves a delivery to the queue's dead-letter list.
    pub fn dead_letter(&self, tag: u64, dead_letter: DeadLetter) -> bool {
        let Some(s) = self.take(tag) else {
            return false;
        };
        let message = rebuild(&s, &self.queue);
        let mut inner = self.broker.lock();
        if let Some(q) = inner.queues.get_mut(&self.queue) {
            q.dead.push(DeadLetterRecord { message, dead_letter });
            q.acked += 1;
        }
        true
    }

    /// Crashes this consumer: every message it holds unacknowledged goes back to the
    /// front of the queue, marked redelivered.
    pub fn crash(&self) {
        let mut inner = self.broker.lock();
        if let Some(q) = inner.queues.get_mut(&self.queue) {
            let mine: Vec<u64> = q.unacked.iter().filter(|(_, (c, _))| *c == self.id).map(|(t, _)| *t).collect();
            let mut back: Vec<Stored> = mine.iter().filter_map(|t| q.unacked.remove(t).map(|(_, s)| s)).collect();
            back.sort_by_key(|s| s.seq);
            for s in back.into_iter().rev() {
                q.ready.push_front(Stored { not_before: None, ..s });
            }
        }
        drop(inner);
        self.broker.notify.notify_waiters();
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        self.crash();
    }
}

fn rebuild(s: &Stored, queue: &str) -> Message {
    let m = &s.msg;
    let mut b = Message::builder(m.payload().clone())
        .headers(m.headers().clone())
        .coordinates(Coordinates::new(queue).with_offset(s.seq))
        .redelivered(s.deliveries > 1);
    if let Some(id) = m.message_id() {
        b = b.message_id(id);
    }
    if let Some(k) = m.key() {
        b = b.key(k.clone());
    }
    if let Some(n) = m.delivery_count() {
        b = b.delivery_count(n);
    }
    b.build()
}
