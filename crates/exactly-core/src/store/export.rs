//! Everything a store holds as JSON lines, and back: records, the handlers' state values
//! and the adapters' meta values (Kafka watermarks), so a store moved this way answers and
//! reads exactly as the original.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use exactly_core::store::export::{export, import};
//! use exactly_core::{DedupStore, MemoryStore, StoreKey};
//! use exactly_core::store::StateChanges;
//!
//! let from = MemoryStore::new();
//! let balance = StoreKey::state("payments", b"acct-1");
//! from.commit_state(StateChanges { reads: vec![], writes: vec![(balance.clone(), Some("42".into()))] }).await?;
//! let mut file = Vec::new();
//! export(&from, &mut file).await?;
//! let to = MemoryStore::new();
//! import(&to, &file[..]).await?;
//! assert_eq!(to.state_get(&balance).await?.as_deref(), Some(&b"42"[..]));
//! # Ok(())
//! # }
//! ```

use std::io::{BufRead, Write};

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{DedupStore, RecordView, StateChanges, StoreKey};
use crate::{Error, Result};

/// Records and state values read per page.
const PAGE: usize = 1_000;

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Entry {
    /// A key's record.
    Record(RecordView),
    /// A value a handler wrote through `ctx.state()`: its consumer (the namespace), the
    /// key it used and the value.
    State {
        /// The consumer's name.
        namespace: String,
        /// The key the handler used.
        key: Blob,
        /// The value.
        value: Blob,
    },
    /// A value an adapter keeps beside the records (a Kafka offset watermark).
    Meta {
        /// Its name.
        name: String,
        /// Its value.
        value: Blob,
    },
}

/// Bytes in an export: a JSON string when they are UTF-8 (what handlers mostly write),
/// else `{"base64": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob(pub Bytes);

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("base64", &base64::engine::general_purpose::STANDARD.encode(&self.0))?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Binary { base64: String },
        }
        match Form::deserialize(d)? {
            Form::Text(text) => Ok(Blob(Bytes::from(text))),
            Form::Binary { base64 } => base64::engine::general_purpose::STANDARD
                .decode(base64)
                .map(|b| Blob(Bytes::from(b)))
                .map_err(serde::de::Error::custom),
        }
    }
}

/// What an export or import carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counts {
    /// Records.
    pub records: u64,
    /// State values.
    pub state: u64,
    /// Meta values.
    pub meta: u64,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} records, {} state values, {} meta values", self.records, self.state, self.meta)
    }
}

/// Writes everything `store` holds to `out`, one JSON object per line: records in key
/// order, then state values, then meta values.
pub async fn export(store: &dyn DedupStore, out: &mut dyn Write) -> Result<Counts> {
    let mut counts = Counts::default();
    each_record(store, None, |r| {
        line(out, &Entry::Record(r.clone()))?;
        counts.records += 1;
        Ok::<_, Error>(true)
    })
    .await?;
    each_state(store, None, |namespace, key, value| {
        let entry = Entry::State {
            namespace: namespace.to_owned(),
            key: Blob(Bytes::copy_from_slice(key)),
            value: Blob(value.clone()),
        };
        line(out, &entry)?;
        counts.state += 1;
        Ok::<_, Error>(true)
    })
    .await?;
    for (name, value) in store.meta_list().await? {
        line(out, &Entry::Meta { name, value: Blob(value) })?;
        counts.meta += 1;
    }
    out.flush().map_err(|e| io("write the export", e))?;
    Ok(counts)
}

/// Calls `f` on every record whose key starts with `prefix` (every record when `None`),
/// in key order, a page at a time, until it returns `false`.
pub async fn each_record<E: From<Error>>(
    store: &dyn DedupStore,
    prefix: Option<&StoreKey>,
    mut f: impl FnMut(&RecordView) -> std::result::Result<bool, E>,
) -> std::result::Result<(), E> {
    let mut after: Option<StoreKey> = None;
    loop {
        let page = store.list(prefix, after.as_ref(), PAGE).await?;
        for r in &page {
            if !f(r)? {
                return Ok(());
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.key.clone()),
            _ => return Ok(()),
        }
    }
}

/// Calls `f` with the consumer, the handler's key and the value of every state value
/// whose state key starts with `prefix` (`StoreKey::state(consumer, start of key)`; every
/// value when `None`), in key order, a page at a time, until it returns `false`.
pub async fn each_state<E: From<Error>>(
    store: &dyn DedupStore,
    prefix: Option<&[u8]>,
    mut f: impl FnMut(&str, &[u8], &Bytes) -> std::result::Result<bool, E>,
) -> std::result::Result<(), E> {
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.state_list(prefix, after.as_deref(), PAGE).await?;
        for (full, value) in &page {
            let (namespace, key) = StoreKey::state_parts(full)
                .ok_or_else(|| Error::StoreCorrupt { key: format!("{full:?}"), reason: "not a state key".into() })?;
            if !f(namespace, key, value)? {
                return Ok(());
            }
        }
        match page.last() {
            Some((last, _)) if page.len() == PAGE => after = Some(last.clone()),
            _ => return Ok(()),
        }
    }
}

/// Writes every entry of an export into `store` (existing keys are overwritten) and
/// makes it durable. Lines of exports made before state was exported (bare records) are
/// read as records.
pub async fn import(store: &dyn DedupStore, input: impl BufRead) -> Result<Counts> {
    let mut counts = Counts::default();
    for (i, text) in input.lines().enumerate() {
        let text = text.map_err(|e| io("read the export", e))?;
        if text.trim().is_empty() {
            continue;
        }
        let entry = parse(&text).map_err(|e| Error::StoreIo {
            operation: "import",
            source: format!("line {}: not a line of `exactly store export`: {e}", i + 1).into(),
        })?;
        match entry {
            Entry::Record(r) => {
                store.import(r).await?;
                counts.records += 1;
            }
            Entry::State { namespace, key, value } => {
                let writes = vec![(StoreKey::state(&namespace, &key.0), Some(value.0))];
                store.commit_state(StateChanges { reads: vec![], writes }).await?;
                counts.state += 1;
            }
            Entry::Meta { name, value } => {
                store.meta_put(&name, value.0).await?;
                counts.meta += 1;
            }
        }
    }
    store.flush().await?;
    Ok(counts)
}

fn parse(text: &str) -> serde_json::Result<Entry> {
    let value: serde_json::Value = serde_json::from_str(text)?;
    if value.get("kind").is_some() {
        serde_json::from_value(value)
    } else {
        serde_json::from_value(value).map(Entry::Record)
    }
}

fn line(out: &mut dyn Write, entry: &Entry) -> Result<()> {
    serde_json::to_writer(&mut *out, entry).map_err(|e| io("write the export", e.into()))?;
    out.write_all(b"\n").map_err(|e| io("write the export", e))
}

fn io(what: &str, e: std::io::Error) -> Error {
    Error::StoreIo { operation: "export", source: format!("cannot {what}: {e}").into() }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn blobs_are_text_when_they_can_be_and_round_trip_when_not() {
        let text = serde_json::to_string(&Blob(Bytes::from_static(b"{\"n\":1}"))).unwrap();
        assert_eq!(text, r#""{\"n\":1}""#);
        let binary = Blob(Bytes::from_static(&[0, 0xff, 7]));
        let json = serde_json::to_string(&binary).unwrap();
        assert_eq!(json, r#"{"base64":"AP8H"}"#);
        assert_eq!(serde_json::from_str::<Blob>(&json).unwrap(), binary);
    }

    #[test]
    fn a_bare_record_line_of_an_older_export_is_a_record() {
        let r = RecordView::new(
            StoreKey::new("c", "k"),
            crate::store::RecordState::DeadLettered { reason: "x".into() },
            crate::Fingerprint::of(b"p"),
            1,
            2,
            3,
            None,
        );
        let old = serde_json::to_string(&r).unwrap();
        assert_eq!(parse(&old).unwrap(), Entry::Record(r));
    }
}
