//! Message headers, broker-neutral.

use bytes::Bytes;

/// One header value. Kafka headers are bytes; AMQP headers are typed, so an adapter maps
/// them to the nearest variant.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum HeaderValue {
    /// Text.
    Str(String),
    /// Raw bytes (Kafka headers, AMQP byte arrays).
    Bytes(Bytes),
    /// A signed integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl HeaderValue {
    /// The value as text: a `Str`, or `Bytes` that are valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::Str(s) => Some(s),
            HeaderValue::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value as bytes: `Str` and `Bytes` only.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            HeaderValue::Str(s) => Some(s.as_bytes()),
            HeaderValue::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an integer: an `Int`, or text holding a decimal integer.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            HeaderValue::Int(i) => Some(*i),
            other => other.as_str().and_then(|s| s.trim().parse().ok()),
        }
    }

    /// A short name of the variant, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            HeaderValue::Str(_) => "string",
            HeaderValue::Bytes(_) => "bytes",
            HeaderValue::Int(_) => "integer",
            HeaderValue::Float(_) => "float",
            HeaderValue::Bool(_) => "boolean",
        }
    }

    /// The value encoded as bytes, the way a byte-only transport (Kafka) carries it.
    pub fn to_bytes(&self) -> Bytes {
        match self {
            HeaderValue::Str(s) => Bytes::copy_from_slice(s.as_bytes()),
            HeaderValue::Bytes(b) => b.clone(),
            HeaderValue::Int(i) => Bytes::from(i.to_string()),
            HeaderValue::Float(f) => Bytes::from(f.to_string()),
            HeaderValue::Bool(b) => Bytes::from(b.to_string()),
        }
    }
}

impl From<&str> for HeaderValue {
    fn from(s: &str) -> Self {
        HeaderValue::Str(s.to_owned())
    }
}
impl From<String> for HeaderValue {
    fn from(s: String) -> Self {
        HeaderValue::Str(s)
    }
}
impl From<Bytes> for HeaderValue {
    fn from(b: Bytes) -> Self {
        HeaderValue::Bytes(b)
    }
}
impl From<Vec<u8>> for HeaderValue {
    fn from(b: Vec<u8>) -> Self {
        HeaderValue::Bytes(Bytes::from(b))
    }
}
impl From<i64> for HeaderValue {
    fn from(i: i64) -> Self {
        HeaderValue::Int(i)
    }
}
impl From<u32> for HeaderValue {
    fn from(i: u32) -> Self {
        HeaderValue::Int(i64::from(i))
    }
}
impl From<bool> for HeaderValue {
    fn from(b: bool) -> Self {
        HeaderValue::Bool(b)
    }
}

/// An ordered list of headers. Lookups by name ignore ASCII case, like HTTP headers;
/// brokers allow repeated names, and [`Headers::get`] returns the first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Headers(Vec<(String, HeaderValue)>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// The first value under `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&HeaderValue> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// The first value under `name` as text.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(HeaderValue::as_str)
    }

    /// Appends a header, keeping any earlier one of the same name.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<HeaderValue>) {
        self.0.push((name.into(), value.into()));
    }

    /// Sets a header, replacing every earlier one of the same name.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<HeaderValue>) {
        let name = name.into();
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
        self.0.push((name, value.into()));
    }

    /// Removes every header of that name; returns whether any was there.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        before != self.0.len()
    }

    /// Iterates over the headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &HeaderValue)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// The number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<String>, V: Into<HeaderValue>> FromIterator<(K, V)> for Headers {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        Self(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_ignores_case_and_insert_replaces() {
        let mut h = Headers::new();
        h.append("Idempotency-Key", "a");
        h.append("idempotency-key", "b");
        assert_eq!(h.get_str("IDEMPOTENCY-KEY"), Some("a"));
        h.insert("idempotency-key", "c");
        assert_eq!(h.len(), 1);
        assert_eq!(h.get_str("Idempotency-Key"), Some("c"));
        assert!(h.remove("IDEMPOTENCY-key"));
        assert!(h.is_empty());
    }

    #[test]
    fn typed_values_convert() {
        assert_eq!(HeaderValue::Int(42).as_i64(), Some(42));
        assert_eq!(HeaderValue::from("17").as_i64(), Some(17));
        assert_eq!(HeaderValue::from(vec![0xff, 0xfe]).as_str(), None);
        assert_eq!(HeaderValue::Bool(true).as_str(), None);
        assert_eq!(HeaderValue::Int(3).to_bytes(), Bytes::from_static(b"3"));
    }
}
