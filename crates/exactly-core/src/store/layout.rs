//! How keys are laid out in the one ordered keyspace a backend offers.
//!
//! Everything lives in one keyspace so that a group commit is one atomic batch:
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `m` | meta name | meta value (`format`, `epoch`, adapters' watermarks) |
//! | `r` | store key | a [`Record`](super::record) |
//! | `x` | expiry bucket end (u64 BE ms) + commit id (u64 BE) | the store keys expiring in that bucket written by that commit |
//! | `s` | u16 BE namespace length + namespace + state key | the handler's state value |
//!
//! A store key is `u16 BE namespace length + namespace + key`.

use std::fmt;

use crate::Result;
use crate::clock::Millis;

pub(crate) const META: u8 = b'm';
pub(crate) const RECORD: u8 = b'r';
pub(crate) const EXPIRY: u8 = b'x';
pub(crate) const STATE: u8 = b's';

/// An idempotency key inside its consumer's namespace.
///
/// ```
/// use exactly_core::StoreKey;
/// let k = StoreKey::new("payments", "order-1");
/// assert_eq!((k.namespace(), k.key()), ("payments", "order-1"));
/// assert_ne!(k, StoreKey::new("emails", "order-1"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreKey {
    bytes: Vec<u8>,
}

impl StoreKey {
    /// A key in a namespace. Namespaces longer than 65,535 bytes are cut.
    pub fn new(namespace: &str, key: &str) -> Self {
        Self { bytes: namespaced(namespace.as_bytes(), key.as_bytes()) }
    }

    /// Decodes a key from its bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let k = Self { bytes: bytes.to_vec() };
        let (ns, key) = k.split()?;
        std::str::from_utf8(ns).ok()?;
        std::str::from_utf8(key).ok()?;
        Some(k)
    }

    /// The namespace (the consumer name).
    pub fn namespace(&self) -> &str {
        self.split().and_then(|(ns, _)| std::str::from_utf8(ns).ok()).unwrap_or("")
    }

    /// The key within the namespace.
    pub fn key(&self) -> &str {
        self.split().and_then(|(_, k)| std::str::from_utf8(k).ok()).unwrap_or("")
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The backend key of a state value of namespace `namespace`.
    pub fn state(namespace: &str, key: &[u8]) -> Vec<u8> {
        let mut out = vec![STATE];
        out.extend_from_slice(&namespaced(namespace.as_bytes(), key));
        out
    }

    /// The namespace and the handler's key of a key [`state`](Self::state) made; `None`
    /// for any other bytes.
    pub fn state_parts(state_key: &[u8]) -> Option<(&str, &[u8])> {
        let (ns, key) = split_namespaced(state_key.strip_prefix(&[STATE])?)?;
        Some((std::str::from_utf8(ns).ok()?, key))
    }

    fn split(&self) -> Option<(&[u8], &[u8])> {
        split_namespaced(&self.bytes)
    }
}

/// Serialised as `{"namespace": ..., "key": ...}` (export files, tools).
impl serde::Serialize for StoreKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("StoreKey", 2)?;
        st.serialize_field("namespace", self.namespace())?;
        st.serialize_field("key", self.key())?;
        st.end()
    }
}

impl<'de> serde::Deserialize<'de> for StoreKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        struct Parts {
            namespace: String,
            key: String,
        }
        let p = Parts::deserialize(d)?;
        Ok(StoreKey::new(&p.namespace, &p.key))
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.namespace(), self.key())
    }
}

impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The namespace and key of what [`namespaced`] made.
fn split_namespaced(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = usize::from(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]));
    Some((bytes.get(2..2 + len)?, bytes.get(2 + len..)?))
}

fn namespaced(ns: &[u8], key: &[u8]) -> Vec<u8> {
    let ns = &ns[..ns.len().min(usize::from(u16::MAX))];
    let mut out = Vec::with_capacity(2 + ns.len() + key.len());
    out.extend_from_slice(&u16::try_from(ns.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(ns);
    out.extend_from_slice(key);
    out
}

pub(crate) fn meta_key(name: &str) -> Vec<u8> {
    let mut out = vec![META];
    out.extend_from_slice(name.as_bytes());
    out
}

pub(crate) fn record_key(key: &StoreKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + key.bytes.len());
    out.push(RECORD);
    out.extend_from_slice(&key.bytes);
    out
}

/// The end of the expiry bucket holding `expires_at`: buckets are `width` wide and a
/// record is purged once its whole bucket lies in the past.
pub(crate) fn bucket_end(expires_at: Millis, width: Millis) -> Millis {
    let width = width.max(1);
    expires_at.div_ceil(width).saturating_mul(width)
}

/// The expiry-index entries of one commit: one per bucket, listing the keys that expire
/// in it, so a group commit of many records adds one index write per bucket, not one per
/// record. `commit` must be unique per commit.
pub(crate) fn expiry_entries(commit: u64, expiring: &[(Millis, StoreKey)]) -> Vec<(Vec<u8>, bytes::Bytes)> {
    let mut by_bucket: std::collections::BTreeMap<Millis, Vec<u8>> = std::collections::BTreeMap::new();
    for (bucket, key) in expiring {
        let list = by_bucket.entry(*bucket).or_default();
        list.extend_from_slice(&u32::try_from(key.bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        list.extend_from_slice(&key.bytes);
    }
    by_bucket
        .into_iter()
        .map(|(bucket, list)| {
            let mut k = Vec::with_capacity(17);
            k.push(EXPIRY);
            k.extend_from_slice(&bucket.to_be_bytes());
            k.extend_from_slice(&commit.to_be_bytes());
            (k, bytes::Bytes::from(list))
        })
        .collect()
}

/// Splits an expiry-index entry into its bucket end and the keys it lists.
pub(crate) fn parse_expiry_entry(raw_key: &[u8], value: &[u8]) -> Result<(Millis, Vec<StoreKey>)> {
    let corrupt =
        || crate::Error::StoreCorrupt { key: format!("{raw_key:?}"), reason: "bad expiry index entry".into() };
    let bucket: [u8; 8] = raw_key.get(1..9).and_then(|b| b.try_into().ok()).ok_or_else(corrupt)?;
    let mut keys = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let len: [u8; 4] = rest.get(..4).and_then(|b| b.try_into().ok()).ok_or_else(corrupt)?;
        let len = u32::from_be_bytes(len) as usize;
        let key = rest.get(4..4 + len).and_then(StoreKey::from_bytes).ok_or_else(corrupt)?;
        keys.push(key);
        rest = &rest[4 + len..];
    }
    Ok((u64::from_be_bytes(bucket), keys))
}

/// The first key after every key starting with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_key_round_trips() {
        let k = StoreKey::new("ns", "a/b/c");
        let back = StoreKey::from_bytes(k.as_bytes()).unwrap();
        assert_eq!(back, k);
        assert_eq!(back.key(), "a/b/c");
        assert!(StoreKey::from_bytes(&[0, 9, b'x']).is_none());
    }

    #[test]
    fn namespaces_do_not_collide_by_concatenation() {
        assert_ne!(StoreKey::new("ab", "c"), StoreKey::new("a", "bc"));
    }

    #[test]
    fn buckets_round_up() {
        assert_eq!(bucket_end(1, 100), 100);
        assert_eq!(bucket_end(100, 100), 100);
        assert_eq!(bucket_end(101, 100), 200);
    }

    #[test]
    fn expiry_entries_group_keys_by_bucket_and_sort_by_time() {
        let (a, b, c) = (StoreKey::new("n", "a"), StoreKey::new("n", "b"), StoreKey::new("n", "zzz"));
        let entries = expiry_entries(7, &[(200, a.clone()), (100, c.clone()), (200, b.clone())]);
        assert_eq!(entries.len(), 2);
        assert!(entries[0].0 < entries[1].0, "the earlier bucket sorts first");
        let (bucket, keys) = parse_expiry_entry(&entries[1].0, &entries[1].1).unwrap();
        assert_eq!((bucket, keys), (200, vec![a, b]));
        let (bucket, keys) = parse_expiry_entry(&entries[0].0, &entries[0].1).unwrap();
        assert_eq!((bucket, keys), (100, vec![c]));
        assert!(parse_expiry_entry(&entries[0].0, &[0, 0, 0, 9, 1]).is_err());
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"ab"), b"ac");
        assert_eq!(prefix_end(&[1, 255]), vec![2]);
    }
}
