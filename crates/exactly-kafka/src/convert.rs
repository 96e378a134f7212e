//! Between rdkafka records and the core's messages.

use bytes::Bytes;
use exactly_core::{Coordinates, DeadLetter, Headers, Message, OutboundRecord};
use rdkafka::Message as _;
use rdkafka::message::{Header, Headers as _, OwnedHeaders, OwnedMessage};

use crate::header_names;

/// The message a record carries, with its topic, partition, offset and timestamp.
pub(crate) fn to_message(m: &OwnedMessage) -> Message {
    let mut headers = Headers::new();
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            headers.append(h.key, Bytes::copy_from_slice(h.value.unwrap_or_default()));
        }
    }
    let mut coordinates = Coordinates::partitioned(m.topic(), m.partition(), m.offset());
    if let Some(ts) = m.timestamp().to_millis() {
        coordinates = coordinates.with_timestamp_ms(ts);
    }
    let mut b = Message::builder(Bytes::copy_from_slice(m.payload().unwrap_or_default()))
        .headers(headers)
        .coordinates(coordinates);
    if let Some(k) = m.key() {
        b = b.key(Bytes::copy_from_slice(k));
    }
    if let Some(n) = m
        .headers()
        .and_then(|hs| hs.iter().find(|h| h.key == header_names::ATTEMPTS))
        .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse::<u32>().ok())
    {
        b = b.delivery_count(n);
    }
    b.build()
}

fn add(h: OwnedHeaders, key: &str, value: &str) -> OwnedHeaders {
    h.insert(Header { key, value: Some(value) })
}

/// The headers of a dead-letter copy: the original ones, then why, how often, and where
/// it came from.
pub(crate) fn dead_letter_headers(m: &OwnedMessage, dl: &DeadLetter, consumer: &str, now_ms: u64) -> OwnedHeaders {
    let mut h = OwnedHeaders::new();
    if let Some(orig) = m.headers() {
        for x in orig.iter() {
            h = h.insert(Header { key: x.key, value: x.value });
        }
    }
    h = add(h, header_names::REASON, &dl.reason);
    h = add(h, header_names::DEAD_LETTER_ID, &dl.id);
    h = add(h, header_names::ATTEMPTS, &dl.attempts.to_string());
    if let Some(e) = &dl.first_error {
        h = add(h, header_names::FIRST_ERROR, e);
    }
    if let Some(e) = &dl.last_error {
        h = add(h, header_names::LAST_ERROR, e);
    }
    if let Some(k) = &dl.key {
        h = add(h, header_names::KEY, k);
    }
    h = add(h, header_names::CONSUMER, consumer);
    h = add(h, header_names::DEAD_LETTERED_AT, &now_ms.to_string());
    h = add(h, header_names::ORIGINAL_TOPIC, m.topic());
    h = add(h, header_names::ORIGINAL_PARTITION, &m.partition().to_string());
    h = add(h, header_names::ORIGINAL_OFFSET, &m.offset().to_string());
    if let Some(ts) = m.timestamp().to_millis() {
        h = add(h, header_names::ORIGINAL_TIMESTAMP, &ts.to_string());
    }
    h
}

/// An emitted record as a Kafka record: its topic, key, payload and headers.
pub(crate) fn outbound_record(r: &OutboundRecord) -> rdkafka::producer::FutureRecord<'_, [u8], [u8]> {
    let rec =
        rdkafka::producer::FutureRecord::to(&r.destination).payload(r.payload.as_ref()).headers(outbound_headers(r));
    match &r.key {
        Some(k) => rec.key(k.as_ref()),
        None => rec,
    }
}

/// The headers of an emitted record.
fn outbound_headers(r: &OutboundRecord) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(r.headers.len());
    for (k, v) in &r.headers {
        h = h.insert(Header { key: k.as_str(), value: Some(v.as_ref()) });
    }
    h
}
