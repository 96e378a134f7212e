//! Between lapin's deliveries and properties and the core's messages.

use bytes::Bytes;
use exactly_core::{Coordinates, DeadLetter, HeaderValue, Headers, Message, OutboundRecord};
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, ByteArray, FieldTable, LongString, ShortString};

use crate::header_names;

/// A short string, cut at 255 bytes on a character boundary (lapin's `From` panics
/// beyond).
pub(crate) fn short(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::try_new(&s[..end]).unwrap_or_default()
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// An AMQP header value as the core sees it.
pub(crate) fn header_value(v: &AMQPValue) -> HeaderValue {
    match v {
        AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
        AMQPValue::ShortShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
        AMQPValue::Timestamp(t) => i64::try_from(*t).map(HeaderValue::Int).unwrap_or(HeaderValue::Str(t.to_string())),
        AMQPValue::Float(f) => HeaderValue::Float(f64::from(*f)),
        AMQPValue::Double(f) => HeaderValue::Float(*f),
        AMQPValue::ShortString(s) => HeaderValue::Str(s.as_str().to_owned()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => HeaderValue::Str(text.to_owned()),
            Err(_) => HeaderValue::Bytes(Bytes::copy_from_slice(s.as_bytes())),
        },
        AMQPValue::ByteArray(b) => HeaderValue::Bytes(Bytes::copy_from_slice(b.as_slice())),
        other => HeaderValue::Str(format!("{other:?}")),
    }
}

fn header<'a>(table: Option<&'a FieldTable>, name: &str) -> Option<&'a AMQPValue> {
    table.and_then(|t| t.inner().get(name))
}

fn header_str(table: Option<&FieldTable>, name: &str) -> Option<String> {
    header(table, name).and_then(|v| header_value(v).as_str().map(str::to_owned))
}

/// The message a delivery carries, with its coordinates: the queue, and the exchange and
/// routing key it was first published with (a retry copy keeps the original ones in
/// headers).
pub(crate) fn to_message(d: &Delivery, payload: Bytes, queue: &str) -> Message {
    let props = &d.properties;
    let table = props.headers().as_ref();
    let mut headers = Headers::new();
    if let Some(t) = table {
        for (k, v) in t.inner() {
            headers.append(k.as_str(), header_value(v));
        }
    }
    let exchange = header_str(table, header_names::ORIGINAL_EXCHANGE).unwrap_or_else(|| d.exchange.as_str().to_owned());
    let routing_key =
        header_str(table, header_names::ORIGINAL_ROUTING_KEY).unwrap_or_else(|| d.routing_key.as_str().to_owned());
    let mut coordinates = Coordinates::new(queue).with_route(exchange, routing_key);
    // The publish time in ms: the header RabbitMQ's message-timestamp plugin (or the
    // producer) sets, else the `timestamp` property, which AMQP gives in seconds.
    let in_ms = header(table, "timestamp_in_ms").and_then(|v| header_value(v).as_i64());
    let in_s = props.timestamp().and_then(|ts| i64::try_from(ts).ok()).map(|ts| ts.saturating_mul(1000));
    if let Some(ts) = in_ms.or(in_s) {
        coordinates = coordinates.with_timestamp_ms(ts);
    }
    let mut b = Message::builder(payload).headers(headers).coordinates(coordinates).redelivered(d.redelivered);
    if let Some(id) = props.message_id() {
        b = b.message_id(id.as_str());
    }
    if let Some(n) = header(table, header_names::ATTEMPTS).and_then(|v| header_value(v).as_i64()) {
        b = b.delivery_count(u32::try_from(n.max(0)).unwrap_or(u32::MAX));
    }
    b.build()
}

/// The original properties with headers changed by `edit`.
fn with_headers(d: &Delivery, edit: impl FnOnce(&mut FieldTable)) -> BasicProperties {
    let mut table = d.properties.headers().clone().unwrap_or_default();
    edit(&mut table);
    d.properties.clone().with_headers(table)
}

fn set_origin(t: &mut FieldTable, d: &Delivery, queue: &str) {
    if !t.contains_key(header_names::ORIGINAL_EXCHANGE) {
        t.insert(short(header_names::ORIGINAL_EXCHANGE), long(d.exchange.as_str()));
        t.insert(short(header_names::ORIGINAL_ROUTING_KEY), long(d.routing_key.as_str()));
    }
    t.insert(short(header_names::ORIGINAL_QUEUE), long(queue));
}

/// Properties of the dead-letter copy: the original ones plus why, how often, and where
/// it came from.
pub(crate) fn dead_letter_properties(
    d: &Delivery,
    dl: &DeadLetter,
    queue: &str,
    consumer: &str,
    now_ms: u64,
) -> BasicProperties {
    with_headers(d, |t| {
        t.insert(short(header_names::REASON), long(&dl.reason));
        t.insert(short(header_names::DEAD_LETTER_ID), long(&dl.id));
        t.insert(short(header_names::ATTEMPTS), AMQPValue::LongLongInt(i64::from(dl.attempts)));
        if let Some(e) = &dl.first_error {
            t.insert(short(header_names::FIRST_ERROR), long(e));
        }
        if let Some(e) = &dl.last_error {
            t.insert(short(header_names::LAST_ERROR), long(e));
        }
        if let Some(k) = &dl.key {
            t.insert(short(header_names::KEY), long(k));
        }
        t.insert(short(header_names::CONSUMER), long(consumer));
        t.insert(
            short(header_names::DEAD_LETTERED_AT),
            AMQPValue::LongLongInt(i64::try_from(now_ms).unwrap_or(i64::MAX)),
        );
        set_origin(t, d, queue);
    })
    .with_delivery_mode(2)
}

/// Properties of a retry copy: the original ones plus the attempts so far.
pub(crate) fn retry_properties(d: &Delivery, attempts: u32, queue: &str) -> BasicProperties {
    with_headers(d, |t| {
        t.insert(short(header_names::ATTEMPTS), AMQPValue::LongLongInt(i64::from(attempts)));
        set_origin(t, d, queue);
    })
    .with_delivery_mode(2)
}

/// Properties of a reply to a request.
pub(crate) fn reply_properties(d: &Delivery, cached: bool) -> BasicProperties {
    let mut table = FieldTable::default();
    table.insert(short(header_names::CACHED), AMQPValue::Boolean(cached));
    let mut p = BasicProperties::default().with_headers(table);
    if let Some(c) = d.properties.correlation_id() {
        p = p.with_correlation_id(c.clone());
    }
    if let Some(ct) = d.properties.content_type() {
        p = p.with_content_type(ct.clone());
    }
    p
}

/// Properties of a record a handler emitted.
/// An emitted record's routing key: its key, as text (empty without one).
pub(crate) fn routing_key(r: &OutboundRecord) -> String {
    r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default()
}

pub(crate) fn outbound_properties(r: &OutboundRecord) -> BasicProperties {
    let mut table = FieldTable::default();
    for (k, v) in &r.headers {
        let value = match std::str::from_utf8(v) {
            Ok(s) => long(s),
            Err(_) => AMQPValue::ByteArray(ByteArray::from(v.to_vec())),
        };
        table.insert(short(k), value);
    }
    BasicProperties::default().with_headers(table).with_delivery_mode(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_cut_safely() {
        assert_eq!(short("abc").as_str(), "abc");
        let long = "é".repeat(200);
        let s = short(&long);
        assert!(s.as_str().len() <= 255);
        assert!(s.as_str().chars().all(|c| c == 'é'));
    }

    #[test]
    fn typed_headers_map_both_ways() {
        assert_eq!(header_value(&AMQPValue::LongInt(7)), HeaderValue::Int(7));
        assert_eq!(header_value(&long("k")), HeaderValue::Str("k".into()));
        let bin = AMQPValue::LongString(LongString::from(vec![0xffu8, 0xfe]));
        assert!(matches!(header_value(&bin), HeaderValue::Bytes(_)));
        assert_eq!(header_value(&AMQPValue::Boolean(true)), HeaderValue::Bool(true));
    }

    #[test]
    fn messages_carry_id_route_and_attempts() {
        let mut t = FieldTable::default();
        t.insert(short("idempotency-key"), long("k1"));
        t.insert(short(header_names::ATTEMPTS), AMQPValue::LongLongInt(2));
        t.insert(short(header_names::ORIGINAL_EXCHANGE), long("orders"));
        t.insert(short(header_names::ORIGINAL_ROUTING_KEY), long("eu"));
        let props = BasicProperties::default().with_message_id(short("m1")).with_headers(t);
        let d = Delivery::mock(1, short(""), short("q.retry.2s"), true, b"{}".to_vec());
        let d = Delivery { properties: props, ..d };
        let m = to_message(&d, Bytes::from_static(b"{}"), "q");
        assert_eq!(m.message_id(), Some("m1"));
        assert_eq!(m.headers().get_str("idempotency-key"), Some("k1"));
        assert_eq!(m.delivery_count(), Some(2));
        assert!(m.redelivered());
        let c = m.coordinates();
        assert_eq!(
            (c.source.as_str(), c.exchange.as_deref(), c.routing_key.as_deref()),
            ("q", Some("orders"), Some("eu"))
        );
    }
}
