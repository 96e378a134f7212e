//! The message a handler receives.

mod coordinates;
mod headers;

pub use coordinates::Coordinates;
pub use headers::{HeaderValue, Headers};

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::HandlerError;

/// One delivery from a broker, broker-neutral.
///
/// Cloning is cheap: the payload is reference-counted.
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
#[derive(Debug, Clone, Default)]
pub struct Message {
    payload: Bytes,
    headers: Headers,
    message_id: Option<String>,
    key: Option<Bytes>,
    coordinates: Coordinates,
    redelivered: bool,
    delivery_count: Option<u32>,
}

impl Message {
    /// A message with only a payload.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self { payload: payload.into(), ..Self::default() }
    }

    /// Starts building a message.
    pub fn builder(payload: impl Into<Bytes>) -> MessageBuilder {
        MessageBuilder(Self::new(payload))
    }

    /// The payload bytes.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The payload as UTF-8 text, if it is.
    pub fn payload_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The broker's message id (AMQP `message_id`), when it has one.
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }

    /// The broker's message key (the Kafka record key; AMQP has none).
    pub fn key(&self) -> Option<&Bytes> {
        self.key.as_ref()
    }

    /// Where the message came from.
    pub fn coordinates(&self) -> &Coordinates {
        &self.coordinates
    }

    /// Whether the broker says it delivered this message before (AMQP `redelivered`).
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// How many times the broker or `exactly` says this message was delivered before,
    /// when it tracks that (AMQP `x-delivery-count`, or `exactly`'s own retry header).
    pub fn delivery_count(&self) -> Option<u32> {
        self.delivery_count
    }

    /// Decodes the JSON payload. A failure is a permanent error with reason `decode`: the
    /// message goes to the dead-letter destination without retries.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_slice(&self.payload).map_err(HandlerError::decode)
    }

    /// Decodes the payload with a function of your own (protobuf, Avro, ...). A failure is
    /// a permanent error with reason `decode`.
    pub fn decode_with<T, E>(&self, decode: impl FnOnce(&[u8]) -> Result<T, E>) -> Result<T, HandlerError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        decode(&self.payload).map_err(HandlerError::decode)
    }

    /// Sets the delivery count (an adapter retrying a message in place counts its attempts
    /// this way).
    pub fn set_delivery_count(&mut self, count: u32) {
        self.delivery_count = Some(count);
    }

    /// Mutable access to the headers, for adapters and tests.
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }
}

/// Builds a [`Message`]; adapters use it to map a broker delivery.
#[derive(Debug, Clone)]
#[must_use]
pub struct MessageBuilder(Message);

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
        self.0
    }
}
