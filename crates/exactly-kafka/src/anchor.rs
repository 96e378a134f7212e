//! Which log a saved watermark was made on.
//!
//! A partition's local watermark is a bare offset. Offsets are reused when a topic is
//! deleted and created again (or when a store is pointed at another cluster), and a stale
//! watermark inside the new log would make the consumer skip records it never saw. So
//! each assignment also saves an *anchor*: the offset and a fingerprint (timestamp, key,
//! payload) of the first record the worker receives. Before a watermark is trusted over
//! the broker's committed offset, the anchored record is read back: if it is not there or
//! differs, the watermark belongs to another log and is ignored.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::builder::ConsumerBuilder;

/// How long reading the anchored record back may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The store's meta name of a partition's anchor.
pub(crate) fn name(watermark_name: &str) -> String {
    format!("{watermark_name}/anchor")
}

/// A record's identity within a log: its offset and a hash of what was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Anchor {
    offset: i64,
    fingerprint: u32,
}

impl Anchor {
    /// The anchor of a record.
    pub(crate) fn of(m: &impl Message) -> Self {
        let mut h = crc32fast::Hasher::new();
        h.update(&m.timestamp().to_millis().unwrap_or(-1).to_be_bytes());
        h.update(m.key().unwrap_or_default());
        h.update(m.payload().unwrap_or_default());
        Self { offset: m.offset(), fingerprint: h.finalize() }
    }

    pub(crate) fn encode(self) -> Bytes {
        let mut v = Vec::with_capacity(12);
        v.extend_from_slice(&self.offset.to_be_bytes());
        v.extend_from_slice(&self.fingerprint.to_be_bytes());
        Bytes::from(v)
    }

    pub(crate) fn decode(raw: &[u8]) -> Option<Self> {
        let offset = i64::from_be_bytes(raw.get(..8)?.try_into().ok()?);
        let fingerprint = u32::from_be_bytes(raw.get(8..12)?.try_into().ok()?);
        Some(Self { offset, fingerprint })
    }
}

/// What reading the anchored record back found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The same record: the watermark was made on this log.
    Same,
    /// Another record, or none where there was one: another log.
    Other,
    /// It cannot be told (the record was removed by retention, the broker did not answer).
    Unknown,
}

/// Reads the record at the anchor's offset with a short-lived consumer (manual
/// assignment, no group) and compares it.
pub(crate) fn check(cfg: &ConsumerBuilder, topic: &str, partition: i32, anchor: Anchor) -> Verdict {
    let mut config = cfg.consumer_config();
    config.remove("group.instance.id");
    config.set("enable.partition.eof", "true").set("auto.offset.reset", "error").set("statistics.interval.ms", "0");
    let Ok(reader) = config.create::<BaseConsumer>() else { return Verdict::Unknown };
    match reader.fetch_watermarks(topic, partition, READ_TIMEOUT) {
        // The log ends before the anchored record: it was made on a longer log.
        Ok((_, high)) if anchor.offset >= high => return Verdict::Other,
        Ok((low, _)) if anchor.offset < low => return Verdict::Unknown,
        Ok(_) => {}
        Err(_) => return Verdict::Unknown,
    }
    let mut tpl = TopicPartitionList::new();
    if tpl.add_partition_offset(topic, partition, Offset::Offset(anchor.offset)).is_err()
        || reader.assign(&tpl).is_err()
    {
        return Verdict::Unknown;
    }
    let deadline = Instant::now() + READ_TIMEOUT;
    while Instant::now() < deadline {
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => return compare(&m, anchor),
            Some(Err(_)) => return Verdict::Unknown,
            None => {}
        }
    }
    Verdict::Unknown
}

fn compare(m: &BorrowedMessage<'_>, anchor: Anchor) -> Verdict {
    match Anchor::of(m) {
        a if a == anchor => Verdict::Same,
        // The record is gone (compaction) and the next one came: nothing to compare.
        a if a.offset != anchor.offset => Verdict::Unknown,
        _ => Verdict::Other,
    }
}
