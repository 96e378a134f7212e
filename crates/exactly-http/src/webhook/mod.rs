//! [`WebhookReceiver`]: a webhook endpoint that verifies the sender's signature before
//! anything else, drops redeliveries by the sender's event id, and forwards each event to
//! Kafka or RabbitMQ with the event id as its `idempotency-key` header, answering 2xx only
//! once the broker has confirmed it.

mod signature;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use exactly_core::publish::Publish;
use exactly_core::store::{Claim, ClaimRequest, Committed, Completion, Final, StateChanges};
use exactly_core::{DedupStore, Fingerprint, OutboundRecord, SharedClock, StoreKey, SystemClock, error_line};
use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
pub use signature::{InvalidSecret, Signature};
use tower::{BoxError, Service};

/// A tower [`Service`] for one webhook endpoint; with axum,
/// `Router::new().route_service("/webhooks/stripe", receiver)`.
///
/// For each request: the body (up to 1 MiB) is read and the signature checked (401 if it
/// does not match or its timestamp is more than 5 minutes off); the event id claimed in
/// the store (a redelivery answers 200 at once, and one still being forwarded 409); the
/// event published to the destination with headers `idempotency-key` (the event id) and
/// `content-type`, and 200 answered once the broker confirmed it. A broker that fails
/// answers 503, and the sender's redelivery forwards it again.
#[derive(Clone)]
pub struct WebhookReceiver {
    inner: Arc<Receiver>,
}

#[derive(Clone)]
struct Receiver {
    signature: Signature,
    store: Arc<dyn DedupStore>,
    publisher: Arc<dyn Publish>,
    destination: String,
    record_key: Option<String>,
    namespace: String,
    tolerance: Duration,
    max_body: usize,
    retention: Duration,
    lease: Duration,
    clock: SharedClock,
}

impl WebhookReceiver {
    /// Forwards verified events to `destination` (a Kafka topic, a RabbitMQ exchange)
    /// through `publisher`, remembering event ids in `store` for 7 days.
    pub fn forward(
        signature: Signature,
        store: Arc<dyn DedupStore>,
        publisher: Arc<dyn Publish>,
        destination: impl Into<String>,
    ) -> Self {
        Self {
            inner: Arc::new(Receiver {
                signature,
                store,
                publisher,
                destination: destination.into(),
                record_key: None,
                namespace: "webhooks".into(),
                tolerance: Duration::from_secs(300),
                max_body: 1024 * 1024,
                retention: Duration::from_secs(7 * 24 * 3600),
                lease: Duration::from_secs(30),
                clock: Arc::new(SystemClock),
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Receiver)) -> Self {
        change(Arc::make_mut(&mut self.inner));
        self
    }

    /// The store namespace of the event ids (default `webhooks`): one per sender.
    pub fn namespace(self, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        self.with(|r| r.namespace = namespace)
    }

    /// The key of every forwarded record: RabbitMQ's routing key (with the default
    /// exchange, the queue's name). By default the event id (Kafka: one event's
    /// redeliveries land on one partition).
    pub fn record_key(self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.with(|r| r.record_key = Some(key))
    }

    /// How far a signed timestamp may be from now (default 5 minutes, as Stripe and
    /// Standard Webhooks advise).
    pub fn tolerance(self, tolerance: Duration) -> Self {
        self.with(|r| r.tolerance = tolerance)
    }

    /// The largest body taken (default 1 MiB); larger: 413.
    pub fn max_body(self, bytes: usize) -> Self {
        self.with(|r| r.max_body = bytes)
    }

    /// How long event ids are remembered (default 7 days: longer than senders retry; Stripe
    /// retries for 3 days).
    pub fn retention(self, retention: Duration) -> Self {
        self.with(|r| r.retention = retention)
    }

    /// The clock for timestamps, leases and expiry (tests move it by hand).
    pub fn clock(self, clock: SharedClock) -> Self {
        self.with(|r| r.clock = clock)
    }
}

impl std::fmt::Debug for WebhookReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.inner;
        f.debug_struct("WebhookReceiver")
            .field("signature", &r.signature)
            .field("store", &r.store)
            .field("publisher", &r.publisher)
            .field("destination", &r.destination)
            .field("namespace", &r.namespace)
            .field("tolerance", &r.tolerance)
            .finish_non_exhaustive()
    }
}

impl<B> Service<Request<B>> for WebhookReceiver
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.receive(req).await) })
    }
}

/// A plain-text answer with `status`, counted under `outcome`.
fn answer(namespace: &str, status: StatusCode, outcome: &'static str, text: String) -> Response<Full<Bytes>> {
    metrics::counter!("exactly_webhook_requests_total", "namespace" => namespace.to_string(), "outcome" => outcome)
        .increment(1);
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

impl Receiver {
    async fn receive<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let ns = &self.namespace;
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, self.max_body).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<LengthLimitError>() => {
                let text = format!("the body is over {} bytes", self.max_body);
                return answer(ns, StatusCode::PAYLOAD_TOO_LARGE, "rejected", text);
            }
            Err(e) => return answer(ns, StatusCode::BAD_REQUEST, "rejected", format!("reading the body failed: {e}")),
        };
        let now = self.clock.now();
        let now_secs = i64::try_from(now / 1000).unwrap_or(i64::MAX);
        let event = match self.signature.verify(&parts.headers, &body, now_secs, self.tolerance) {
            Ok(event) => event,
            Err(rejected) => {
                tracing::warn!(namespace = %ns, reason = %rejected, "webhook refused");
                return answer(ns, StatusCode::UNAUTHORIZED, "bad_signature", format!("webhook refused: {rejected}"));
            }
        };
        let key = StoreKey::new(ns, &event.event_id);
        let fingerprint = Fingerprint::of(&body);
        let lease_until = now + self.lease.as_millis() as u64;
        let claim = ClaimRequest { key: &key, fingerprint, now, lease_until, durable: false, redrive: false };
        let lease = match self.store.claim(claim).await {
            Ok(Claim::Acquired(lease)) => lease,
            Ok(Claim::Done { .. } | Claim::DeadLettered { .. }) => {
                return answer(ns, StatusCode::OK, "duplicate", "already received".into());
            }
            Ok(Claim::Conflict { .. }) => {
                let text = format!("event {} was received before with another body", event.event_id);
                return answer(ns, StatusCode::UNPROCESSABLE_ENTITY, "mismatch", text);
            }
            Ok(Claim::Busy { .. }) => {
                return answer(ns, StatusCode::CONFLICT, "in_flight", "this event is being received: retry".into());
            }
            Err(e) => {
                let text = format!("store unavailable, retry: {}", error_line(&e));
                return answer(ns, StatusCode::SERVICE_UNAVAILABLE, "unavailable", text);
            }
        };
        let content_type = parts.headers.get(header::CONTENT_TYPE).map_or(&b"application/json"[..], |v| v.as_bytes());
        let record = OutboundRecord::new(self.destination.clone(), body)
            .key(self.record_key.clone().unwrap_or_else(|| event.event_id.clone()))
            .header("idempotency-key", event.event_id.clone())
            .header("content-type", Bytes::copy_from_slice(content_type));
        if let Err(e) = self.publisher.publish(&[record]).await {
            let why = e.to_string();
            let _ = self.store.release(&key, lease.token, lease.attempts + 1, Some(why.clone())).await;
            tracing::warn!(namespace = %ns, event = %event.event_id, error = %why, "forwarding a webhook failed");
            return answer(
                ns,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("forwarding failed, retry: {why}"),
            );
        }
        let completion = Completion {
            key,
            token: lease.token,
            fingerprint,
            attempts: lease.attempts + 1,
            now,
            origin: None,
            outcome: Final::Done { output: None, emitted: Vec::new() },
            expires_at: now + self.retention.as_millis() as u64,
            state: StateChanges::default(),
        };
        // Forwarded: 200 either way. Unrecorded, a redelivery forwards it again, and the
        // event id in its idempotency-key header makes the copy harmless downstream.
        match self.store.complete(completion).await {
            Ok(Committed::Ok) => {}
            Ok(other) => {
                tracing::warn!(namespace = %ns, event = %event.event_id, outcome = ?other, "a forwarded webhook was not recorded")
            }
            Err(e) => {
                tracing::warn!(namespace = %ns, event = %event.event_id, error = %error_line(&e), "a forwarded webhook was not recorded")
            }
        }
        answer(ns, StatusCode::OK, "forwarded", "forwarded".into())
    }
}

#[cfg(test)]
mod tests {
    use exactly_core::MemoryStore;
    use exactly_core::publish::PublishError;

    use super::*;

    #[derive(Debug)]
    struct Nowhere;

    #[exactly_core::async_trait]
    impl Publish for Nowhere {
        async fn publish(&self, _: &[OutboundRecord]) -> Result<(), PublishError> {
            Ok(())
        }
    }

    #[test]
    fn a_setting_applies_to_a_receiver_that_was_cloned() {
        let receiver =
            WebhookReceiver::forward(Signature::github("s"), Arc::new(MemoryStore::new()), Arc::new(Nowhere), "t");
        let _mounted_elsewhere = receiver.clone();
        let receiver = receiver.namespace("github").tolerance(Duration::from_secs(1));
        let shown = format!("{receiver:?}");
        assert!(shown.contains("namespace: \"github\"") && shown.contains("tolerance: 1s"), "{shown}");
    }
}
