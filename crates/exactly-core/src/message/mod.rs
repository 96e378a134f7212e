//! The message a handler receives.

mod coordinates;
mod headers;

pub use coordinates::Coordinates;
pub use headers::{HeaderValue, Headers};

use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::HandlerError;

/// One delivery from a broker, broker-neutral.
///
/// Cloning is cheap: a message is reference-counted, and read-only once built (the
/// `&mut` methods copy it first if it is shared).
///
/// ```
/// use exactly_core::{Message, Coordinates};
/// #[derive(serde::Deserialize)]
/// struct Order { id: u64 }
///
/// let msg = Message::builder(r#"{"id": 7}"#)
///     .header("idempotency-key", "order-7")
///     .coordinates(Coordinates::partitioned("orders", 0, 42))
///     .build();
/// let order: Order = msg.decode().unwrap();
/// assert_eq!(order.id, 7);
/// assert!(Message::new("not json").decode::<Order>().is_err());
/// ```
#[derive(Clone, Default)]
pub struct Message(Arc<Parts>);

#[derive(Debug, Clone, Default)]
struct Parts {
    payload: Bytes,
    headers: Headers,
    message_id: Option<String>,
    key: Option<Bytes>,
    coordinates: Coordinates,
    redelivered: bool,
    delivery_count: Option<u32>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &*self.0;
        f.debug_struct("Message")
            .field("payload", &p.payload)
            .field("headers", &p.headers)
            .field("message_id", &p.message_id)
            .field("key", &p.key)
            .field("coordinates", &p.coordinates)
            .field("redelivered", &p.redelivered)
            .field("delivery_count", &p.delivery_count)
            .finish()
    }
}

impl Message {
    /// A message with only a payload.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self::builder(payload).build()
    }

    /// Starts building a message.
    pub fn builder(payload: impl Into<Bytes>) -> MessageBuilder {
        MessageBuilder(Parts { payload: payload.into(), ..Parts::default() })
    }

    /// The payload bytes.
    pub fn payload(&self) -> &Bytes {
        &self.0.payload
    }

    /// The payload as UTF-8 text, if it is.
    pub fn payload_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0.payload).ok()
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.0.headers
    }

    /// The broker's message id (AMQP `message_id`), when it has one.
    pub fn message_id(&self) -> Option<&str> {
        self.0.message_id.as_deref()
    }

    /// The broker's message key (the Kafka record key; AMQP has none).
    pub fn key(&self) -> Option<&Bytes> {
        self.0.key.as_ref()
    }

    /// Where the message came from.
    pub fn coordinates(&self) -> &Coordinates {
        &self.0.coordinates
    }

    /// Whether the broker says it delivered this message before (AMQP `redelivered`).
    pub fn redelivered(&self) -> bool {
        self.0.redelivered
    }

    /// How many times the broker or `exactly` says this message was delivered before,
    /// when it tracks that (AMQP `x-delivery-count`, or `exactly`'s own retry header).
    pub fn delivery_count(&self) -> Option<u32> {
        self.0.delivery_count
    }

    /// Decodes the JSON payload. A failure is a permanent error with reason `decode`: the
    /// message goes to the dead-letter destination without retries.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_slice(&self.0.payload).map_err(HandlerError::decode)
    }

    /// Decodes the payload with a function of your own (protobuf, Avro, ...). A failure is
    /// a permanent error with reason `decode`.
    pub fn decode_with<T, E>(&self, decode: impl FnOnce(&[u8]) -> Result<T, E>) -> Result<T, HandlerError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        decode(&self.0.payload).map_err(HandlerError::decode)
    }

    /// Sets the delivery count (an adapter retrying a message in place counts its attempts
    /// this way).
    pub fn set_delivery_count(&mut self, count: u32) {
        Arc::make_mut(&mut self.0).delivery_count = Some(count);
    }

    /// Mutable access to the headers, for adapters and tests.
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut Arc::make_mut(&mut self.0).headers
    }
}

/// Builds a [`Message`]; adapters use it to map a broker delivery.
#[derive(Debug, Clone)]
#[must_use]
pub struct MessageBuilder(Parts);

impl MessageBuilder {
    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<HeaderValue>) -> Self {
        self.0.headers.append(name, value);
        self
    }

    /// Replaces all headers.
    pub fn headers(mut self, headers: Headers) -> Self {
        self.0.headers = headers;
        self
    }

    /// Sets the broker message id.
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.0.message_id = Some(id.into());
        self
    }

    /// Sets the broker message key (Kafka record key).
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.0.key = Some(key.into());
        self
    }

    /// Sets the coordinates.
    pub fn coordinates(mut self, c: Coordinates) -> Self {
        self.0.coordinates = c;
        self
    }

    /// Sets the redelivered flag.
    pub fn redelivered(mut self, redelivered: bool) -> Self {
        self.0.redelivered = redelivered;
        self
    }

    /// Sets the delivery count.
    pub fn delivery_count(mut self, count: u32) -> Self {
        self.0.delivery_count = Some(count);
        self
    }

    /// Finishes the message.
    pub fn build(self) -> Message {
        Message(Arc::new(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_shares_the_message_and_a_change_copies_it() {
        let original = Message::builder("p").header("a", "1").delivery_count(1).build();
        let mut changed = original.clone();
        assert!(Arc::ptr_eq(&original.0, &changed.0), "a clone is a reference");
        changed.headers_mut().append("b", "2");
        changed.set_delivery_count(2);
        assert!(!Arc::ptr_eq(&original.0, &changed.0), "a change copies first");
        assert_eq!((original.headers().len(), original.delivery_count()), (1, Some(1)), "the original is unchanged");
        assert_eq!((changed.headers().len(), changed.delivery_count()), (2, Some(2)));
        assert_eq!(changed.payload(), original.payload());
    }
}
