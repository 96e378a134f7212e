//! The record kept per key, and its versioned encoding.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::export::Blob;
use crate::clock::Millis;
use crate::{Error, Fingerprint, OutboundRecord, Result, StoreKey};

/// The on-disk format version this build writes and the newest it reads. A store whose
/// `format` meta value is higher refuses to open ([`Error::StoreFormat`]); an older store
/// is upgraded in place when it opens (its records stay readable as they are).
///
/// Version 2: records list the state names their message wrote.
pub const FORMAT_VERSION: u32 = 2;

/// The version byte in front of each encoded record.
const RECORD_VERSION: u8 = 2;

/// The state of a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RecordState {
    /// A claim written to disk before its handler ran (only for handlers whose orphan
    /// policy is quarantine). Found after a restart, it means the holder crashed.
    InFlight {
        /// The claim's fencing token.
        token: u64,
        /// The store epoch (one per open) of the holder.
        epoch: u64,
    },
    /// Handled; duplicates are acknowledged with the cached output.
    Done {
        /// The cached output.
        output: Option<Bytes>,
        /// Records the handler emitted.
        emitted: Vec<OutboundRecord>,
    },
    /// Sent to the dead-letter destination; redeliveries are acknowledged without a run
    /// until the message is re-driven.
    DeadLettered {
        /// Why.
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) state: RecordState,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) attempts: u32,
    pub(crate) updated_at: Millis,
    pub(crate) expires_at: Millis,
    /// Where the message that wrote it came from (`topic/partition/offset`), when its
    /// broker has positions: a redelivery of that very message is told from another
    /// message with the same key.
    pub(crate) origin: Option<String>,
    /// The state names (in the key's namespace) its message wrote or deleted, in the
    /// order written. Last, so a version-1 record is this one without it.
    pub(crate) wrote: Vec<Bytes>,
}

impl Record {
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        // Room for a done-record without emitted records in one allocation (postcard
        // would otherwise grow the vector a byte at a time from empty).
        let output = match &self.state {
            RecordState::Done { output, .. } => output.as_ref().map_or(0, Bytes::len),
            _ => 0,
        };
        let names: usize = self.wrote.iter().map(|n| n.len() + 1).sum();
        let mut buf = Vec::with_capacity(96 + output + names + self.origin.as_ref().map_or(0, String::len));
        buf.push(RECORD_VERSION);
        postcard::to_extend(self, buf).map_err(|e| Error::io("encode record", e))
    }

    pub(crate) fn decode(key: &StoreKey, raw: &[u8]) -> Result<Self> {
        let corrupt = |reason: String| Error::StoreCorrupt { key: key.to_string(), reason };
        match raw.split_first() {
            Some((&RECORD_VERSION, body)) => postcard::from_bytes(body).map_err(|e| corrupt(e.to_string())),
            // Version 1 lacked only the last field: postcard writes fields in order with no
            // framing, so an empty `wrote` (a zero length) appended makes it a version 2.
            Some((1, body)) => {
                let mut v2 = Vec::with_capacity(body.len() + 1);
                v2.extend_from_slice(body);
                v2.push(0);
                postcard::from_bytes(&v2).map_err(|e| corrupt(e.to_string()))
            }
            Some((v, _)) => Err(corrupt(format!("record version {v}, this build reads 1 to {RECORD_VERSION}"))),
            None => Err(corrupt("empty record".into())),
        }
    }

    pub(crate) fn view(self, key: StoreKey) -> RecordView {
        RecordView {
            key,
            state: self.state,
            fingerprint: self.fingerprint,
            attempts: self.attempts,
            updated_at: self.updated_at,
            expires_at: self.expires_at,
            origin: self.origin,
            wrote: self.wrote.into_iter().map(Blob).collect(),
        }
    }
}

/// A key's record, as shown by inspection tools and written by `exactly store export`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RecordView {
    /// The key.
    pub key: StoreKey,
    /// In flight, done or dead-lettered.
    pub state: RecordState,
    /// The fingerprint of the payload.
    pub fingerprint: Fingerprint,
    /// Attempts made.
    pub attempts: u32,
    /// When the record was written (ms since the epoch).
    pub updated_at: Millis,
    /// When it may be purged (ms since the epoch; 0 for in-flight claims).
    pub expires_at: Millis,
    /// Where the message that wrote it came from, when known.
    pub origin: Option<String>,
    /// The names its message wrote or deleted through `ctx.state()` (in the key's
    /// namespace, the consumer's), in the order written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wrote: Vec<Blob>,
}

impl RecordView {
    /// A record as a store outside this crate reads it back.
    pub fn new(
        key: StoreKey,
        state: RecordState,
        fingerprint: Fingerprint,
        attempts: u32,
        updated_at: Millis,
        expires_at: Millis,
        origin: Option<String>,
    ) -> Self {
        Self { key, state, fingerprint, attempts, updated_at, expires_at, origin, wrote: Vec::new() }
    }

    /// The same record, listing the state names its message wrote.
    #[must_use]
    pub fn with_wrote(mut self, wrote: Vec<Bytes>) -> Self {
        self.wrote = wrote.into_iter().map(Blob).collect();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_a_version_byte() {
        let key = StoreKey::new("n", "k");
        let r = Record {
            state: RecordState::Done { output: Some(Bytes::from_static(b"ok")), emitted: vec![] },
            fingerprint: Fingerprint::of(b"p"),
            attempts: 2,
            updated_at: 5,
            expires_at: 10,
            origin: Some("t/0/7".into()),
            wrote: vec![Bytes::from_static(b"total"), Bytes::from_static(b"last")],
        };
        let raw = r.encode().unwrap();
        assert_eq!(raw[0], RECORD_VERSION);
        assert_eq!(Record::decode(&key, &raw).unwrap(), r);
    }

    /// What version 1 wrote (the fields up to `origin`), as a store written by it holds.
    #[derive(Serialize)]
    struct RecordV1 {
        state: RecordState,
        fingerprint: Fingerprint,
        attempts: u32,
        updated_at: Millis,
        expires_at: Millis,
        origin: Option<String>,
    }

    #[test]
    fn version_1_records_read_as_writing_no_state() {
        let key = StoreKey::new("n", "k");
        let state = RecordState::Done { output: Some(Bytes::from_static(b"ok")), emitted: vec![] };
        let v1 = RecordV1 {
            state: state.clone(),
            fingerprint: Fingerprint::of(b"p"),
            attempts: 1,
            updated_at: 5,
            expires_at: 10,
            origin: None,
        };
        let mut raw = vec![1u8];
        raw.extend(postcard::to_stdvec(&v1).unwrap());
        let r = Record::decode(&key, &raw).unwrap();
        assert_eq!((r.state, r.attempts, r.expires_at, r.wrote), (state, 1, 10, vec![]));
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors() {
        let key = StoreKey::new("n", "k");
        assert!(
            matches!(Record::decode(&key, &[9, 1, 2]), Err(Error::StoreCorrupt { reason, .. }) if reason.contains("version 9, this build reads 1 to 2"))
        );
        assert!(Record::decode(&key, &[]).is_err());
        assert!(Record::decode(&key, &[RECORD_VERSION, 0xff, 0xff]).is_err());
    }
}
