//! Where a message's idempotency key comes from.

mod fingerprint;

pub use fingerprint::Fingerprint;

use std::fmt;
use std::sync::Arc;

use crate::{HeaderValue, Message};

/// The header `exactly` reads a key from by default.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The longest key accepted by default, in bytes (Stripe allows 255 characters).
pub const DEFAULT_MAX_KEY_LEN: usize = 512;

type KeyFn = Arc<dyn Fn(&Message) -> Option<String> + Send + Sync>;

/// One place to look for a key. A [`KeyStrategy`] tries its sources in order.
#[derive(Clone)]
#[non_exhaustive]
pub enum KeySource {
    /// A header, by name (case-insensitive). Text and integer values are accepted; any
    /// other type makes the key invalid.
    Header(String),
    /// The broker's message id (AMQP `message_id`).
    MessageId,
    /// The broker coordinates: `topic/partition/offset` on Kafka. A queue (AMQP) has no
    /// stable coordinates, so this source finds nothing there.
    Coordinates,
    /// A BLAKE3 hash of the payload. Two different messages with equal payloads are then
    /// one message: choose it only when that is what you mean.
    ContentHash,
    /// A function of your own.
    Custom(KeyFn),
}

impl KeySource {
    /// A source from a function of your own.
    pub fn custom(f: impl Fn(&Message) -> Option<String> + Send + Sync + 'static) -> Self {
        KeySource::Custom(Arc::new(f))
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Header(h) => write!(f, "Header({h:?})"),
            KeySource::MessageId => f.write_str("MessageId"),
            KeySource::Coordinates => f.write_str("Coordinates"),
            KeySource::ContentHash => f.write_str("ContentHash"),
            KeySource::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// What to do with a message none of the sources finds a key for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingKey {
    /// Send it to the dead-letter destination with reason `missing-key` (the default).
    #[default]
    DeadLetter,
    /// Run the handler without deduplication: at-least-once, every redelivery runs it
    /// again. State writes still commit atomically, but nothing stops a second run.
    ProcessUnprotected,
}

/// The outcome of looking for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLookup {
    /// A valid key.
    Found(String),
    /// No source had one.
    Missing,
    /// A source had one, but it cannot be used; the text says why.
    Invalid(String),
}

/// An ordered list of [`KeySource`]s, a limit on key length, and the [`MissingKey`]
/// policy.
///
/// The default reads the `idempotency-key` header, then the broker message id, then the
/// Kafka coordinates, and dead-letters a message with none of them.
///
/// ```
/// use exactly_core::{KeyStrategy, KeySource, KeyLookup, Message, Coordinates};
/// let s = KeyStrategy::default();
/// let m = Message::builder("{}").coordinates(Coordinates::partitioned("t", 1, 5)).build();
/// assert_eq!(s.extract(&m), KeyLookup::Found("t/1/5".into()));
///
/// let by_order = KeyStrategy::from_sources([KeySource::custom(|m| {
///     serde_json::from_slice::<serde_json::Value>(m.payload()).ok()?
///         .get("order_id")?.as_str().map(String::from)
/// })]);
/// assert_eq!(by_order.extract(&Message::new(r#"{"order_id":"A1"}"#)), KeyLookup::Found("A1".into()));
/// assert_eq!(by_order.extract(&Message::new("{}")), KeyLookup::Missing);
/// ```
#[derive(Debug, Clone)]
pub struct KeyStrategy {
    sources: Vec<KeySource>,
    on_missing: MissingKey,
    max_len: usize,
}

impl Default for KeyStrategy {
    fn default() -> Self {
        Self::from_sources([
            KeySource::Header(IDEMPOTENCY_KEY_HEADER.into()),
            KeySource::MessageId,
            KeySource::Coordinates,
        ])
    }
}

impl KeyStrategy {
    /// A strategy trying these sources in order.
    pub fn from_sources(sources: impl IntoIterator<Item = KeySource>) -> Self {
        Self { sources: sources.into_iter().collect(), on_missing: MissingKey::default(), max_len: DEFAULT_MAX_KEY_LEN }
    }

    /// Adds a source after the others.
    pub fn then(mut self, source: KeySource) -> Self {
        self.sources.push(source);
        self
    }

    /// Sets the policy for messages without a key.
    pub fn on_missing(mut self, policy: MissingKey) -> Self {
        self.on_missing = policy;
        self
    }

    /// Sets the longest key accepted, in bytes; longer keys are invalid (dead-letter
    /// reason `invalid-key`).
    pub fn max_len(mut self, bytes: usize) -> Self {
        self.max_len = bytes;
        self
    }

    /// The policy for messages without a key.
    pub fn missing_policy(&self) -> MissingKey {
        self.on_missing
    }

    /// The sources, in order.
    pub fn sources(&self) -> &[KeySource] {
        &self.sources
    }

    /// Looks for the key of a message.
    pub fn extract(&self, msg: &Message) -> KeyLookup {
        for source in &self.sources {
            let found = match source {
                KeySource::Header(name) => match msg.headers().get(name) {
                    None => None,
                    Some(v) => match header_key(v) {
                        Ok(k) => Some(k),
                        Err(why) => return KeyLookup::Invalid(format!("header {name}: {why}")),
                    },
                },
                KeySource::MessageId => msg.message_id().map(str::to_owned),
                KeySource::Coordinates => {
                    let c = msg.coordinates();
                    c.offset.map(|_| c.to_string())
                }
                KeySource::ContentHash => Some(blake3::hash(msg.payload()).to_hex().to_string()),
                KeySource::Custom(f) => f(msg),
            };
            if let Some(key) = found {
                return self.validate(key);
            }
        }
        KeyLookup::Missing
    }

    fn validate(&self, key: String) -> KeyLookup {
        if key.is_empty() {
            KeyLookup::Invalid("the key is empty".into())
        } else if key.len() > self.max_len {
            KeyLookup::Invalid(format!("the key is {} bytes, the limit is {}", key.len(), self.max_len))
        } else {
            KeyLookup::Found(key)
        }
    }
}

fn header_key(v: &HeaderValue) -> Result<String, String> {
    match v {
        HeaderValue::Str(s) => Ok(s.clone()),
        HeaderValue::Bytes(b) => {
            std::str::from_utf8(b).map(str::to_owned).map_err(|_| "the value is not valid UTF-8".to_owned())
        }
        HeaderValue::Int(i) => Ok(i.to_string()),
        other => Err(format!("expected a string, found a {}", other.type_name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Coordinates;

    #[test]
    fn header_wins_over_message_id_and_coordinates() {
        let m = Message::builder("x")
            .header("Idempotency-Key", "h")
            .message_id("m")
            .coordinates(Coordinates::partitioned("t", 0, 1))
            .build();
        assert_eq!(KeyStrategy::default().extract(&m), KeyLookup::Found("h".into()));
        let m = Message::builder("x").message_id("m").coordinates(Coordinates::partitioned("t", 0, 1)).build();
        assert_eq!(KeyStrategy::default().extract(&m), KeyLookup::Found("m".into()));
    }

    #[test]
    fn queue_without_id_has_no_key() {
        let m = Message::builder("x").coordinates(Coordinates::new("q")).build();
        assert_eq!(KeyStrategy::default().extract(&m), KeyLookup::Missing);
    }

    #[test]
    fn bad_header_values_are_invalid_not_missing() {
        let s = KeyStrategy::default();
        let bin = Message::builder("x").header("idempotency-key", vec![0xc3, 0x28]).message_id("m").build();
        assert!(matches!(s.extract(&bin), KeyLookup::Invalid(w) if w.contains("UTF-8")));
        let boolean = Message::builder("x").header("idempotency-key", true).build();
        assert!(matches!(s.extract(&boolean), KeyLookup::Invalid(w) if w.contains("boolean")));
        let int = Message::builder("x").header("idempotency-key", 42i64).build();
        assert_eq!(s.extract(&int), KeyLookup::Found("42".into()));
        let empty = Message::builder("x").header("idempotency-key", "").build();
        assert!(matches!(s.extract(&empty), KeyLookup::Invalid(_)));
    }

    #[test]
    fn long_keys_are_invalid() {
        let big = "k".repeat(64 * 1024);
        let m = Message::builder("x").header("idempotency-key", big.as_str()).build();
        assert!(matches!(KeyStrategy::default().extract(&m), KeyLookup::Invalid(w) if w.contains("65536 bytes")));
        assert_eq!(KeyStrategy::default().max_len(100_000).extract(&m), KeyLookup::Found(big));
    }

    #[test]
    fn content_hash_is_stable() {
        let s = KeyStrategy::from_sources([KeySource::ContentHash]);
        let a = s.extract(&Message::new("same"));
        assert_eq!(a, s.extract(&Message::new("same")));
        assert_ne!(a, s.extract(&Message::new("other")));
    }
}
