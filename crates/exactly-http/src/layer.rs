//! [`IdempotencyLayer`]: what the layer is set up with.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use exactly_core::store::SweeperHandle;
use exactly_core::{DedupStore, SharedClock, SystemClock};
use http::request::Parts;
use http::{HeaderName, Method, header};
use tower::Layer;

use crate::service::IdempotencyService;

/// Finds the client a request comes from (see [`IdempotencyLayer::principal`]).
pub type PrincipalFn = dyn Fn(&Parts) -> Option<String> + Send + Sync;

/// What to do with a request whose key's first request is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WhenInFlight {
    /// Answer `409 Conflict` with `Retry-After` (the default, as the draft says). The local
    /// stores first wait up to a second for the first request to finish, and answer its
    /// response if it did; the PostgreSQL store answers at once.
    Conflict,
    /// Wait up to this long for the first request to finish and answer its response;
    /// `409 Conflict` if it has not by then.
    Wait(Duration),
}

/// What to do with a key whose first request was cut off: its server crashed, or its
/// lease ran out, while it ran. Its effects may or may not have happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Orphans {
    /// Run the request again (the default): right for handlers that are safe to repeat,
    /// or that pass the key on to an API honouring it.
    Rerun,
    /// Never run it again: the key answers `500` with the problem type `unknown-outcome`
    /// until an operator has found out what happened and removed it (`exactly store forget
    /// http <key>`). Claims are then made durable, so that the local stores notice a crash
    /// across a restart too.
    Refuse,
}

/// A [`tower::Layer`] that makes state-changing requests idempotent by their
/// `Idempotency-Key` header (draft-ietf-httpapi-idempotency-key-header), on any
/// [`DedupStore`]: the first request with a key runs, its response is stored durably
/// before it is sent, and a repeat gets the stored response with `Idempotent-Replayed:
/// true`. See the crate's documentation for the status codes.
///
/// ```
/// use exactly_core::MemoryStore;
/// use exactly_http::IdempotencyLayer;
///
/// let layer = IdempotencyLayer::new(MemoryStore::new())
///     // One client's key can never replay another's response.
///     .principal(|req| req.headers.get("x-api-key")?.to_str().ok().map(str::to_owned));
/// let app: axum::Router = axum::Router::new()
///     .route("/payments", axum::routing::post(|| async { "created" }))
///     .layer(layer);
/// ```
#[derive(Clone)]
pub struct IdempotencyLayer {
    pub(crate) config: Arc<Config>,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) store: Arc<dyn DedupStore>,
    pub(crate) clock: SharedClock,
    pub(crate) namespace: String,
    pub(crate) methods: Vec<Method>,
    pub(crate) required: bool,
    pub(crate) principal: Option<Arc<PrincipalFn>>,
    pub(crate) fingerprint_headers: Vec<HeaderName>,
    pub(crate) lease: Duration,
    pub(crate) retention: Duration,
    pub(crate) max_key_len: usize,
    pub(crate) unquoted_keys: bool,
    pub(crate) max_request_body: usize,
    pub(crate) max_stored_body: usize,
    pub(crate) store_server_errors: bool,
    pub(crate) when_in_flight: WhenInFlight,
    pub(crate) orphans: Orphans,
    pub(crate) sweeper: Arc<OnceLock<Arc<SweeperHandle>>>,
}

/// How long a key is remembered unless set otherwise: 24 hours, as Stripe does.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How long a running request holds its key unless renewed (it is renewed every third of
/// it while the request runs): after a crash, the key is free again this long after.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

impl IdempotencyLayer {
    /// A layer on `store`, with the defaults: POST and PATCH require the header, keys of
    /// up to 255 characters, one scope for every client (set a [`principal`](Self::principal)),
    /// 2xx and 4xx responses stored for 24 hours, 5xx not stored, request bodies up to 1 MiB.
    pub fn new(store: impl DedupStore) -> Self {
        Self::shared(Arc::new(store))
    }

    /// A layer on a store shared with consumers or other layers.
    pub fn shared(store: Arc<dyn DedupStore>) -> Self {
        Self {
            config: Arc::new(Config {
                store,
                clock: Arc::new(SystemClock),
                namespace: "http".into(),
                methods: vec![Method::POST, Method::PATCH],
                required: true,
                principal: None,
                fingerprint_headers: vec![header::CONTENT_TYPE],
                lease: DEFAULT_LEASE,
                retention: DEFAULT_RETENTION,
                max_key_len: 255,
                unquoted_keys: false,
                max_request_body: 1024 * 1024,
                max_stored_body: 1024 * 1024,
                store_server_errors: false,
                when_in_flight: WhenInFlight::Conflict,
                orphans: Orphans::Rerun,
                sweeper: Arc::default(),
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(Arc::make_mut(&mut self.config));
        self
    }

    /// The store namespace of the keys (default `http`): layers of different APIs on one
    /// store keep their keys apart by it.
    pub fn namespace(self, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        self.with(|c| c.namespace = namespace)
    }

    /// The methods the layer applies to (default POST and PATCH); others pass through.
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        let methods = methods.into_iter().collect();
        self.with(|c| c.methods = methods)
    }

    /// Whether a request of those methods without the header is refused with 400 (the
    /// default) or passes through without idempotency.
    pub fn required(self, required: bool) -> Self {
        self.with(|c| c.required = required)
    }

    /// How a request names its client (an API key, a JWT subject, a tenant header): keys
    /// are scoped by it, so one client's key never replays another's response. The value
    /// is hashed before it reaches the store, logs or metrics. `None` refuses the request
    /// with 401. Without it, every client shares one scope.
    pub fn principal(self, principal: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static) -> Self {
        self.with(|c| c.principal = Some(Arc::new(principal)))
    }

    /// Request headers that, besides the method, path, query and body, make two requests
    /// the same request (default `Content-Type`).
    pub fn fingerprint_headers(self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        let headers = headers.into_iter().collect();
        self.with(|c| c.fingerprint_headers = headers)
    }

    /// How long a running request holds its key before another server may take it over
    /// (default 30 s; renewed every third of it while the request runs).
    pub fn lease(self, lease: Duration) -> Self {
        self.with(|c| c.lease = lease)
    }

    /// How long a key and its response are kept (default 24 hours). Publish it to your
    /// API's clients: the draft asks servers to document when keys expire.
    pub fn retention(self, retention: Duration) -> Self {
        self.with(|c| c.retention = retention)
    }

    /// The longest key taken (default 255 characters).
    pub fn max_key_len(self, len: usize) -> Self {
        self.with(|c| c.max_key_len = len)
    }

    /// Also take keys sent without the quotes of a structured-field string
    /// (`Idempotency-Key: 8e03978e-40d5-...`), as Stripe does and many clients send
    /// (default: `false`, only the draft's quoted form).
    pub fn unquoted_keys(self, accept: bool) -> Self {
        self.with(|c| c.unquoted_keys = accept)
    }

    /// The largest request body buffered to fingerprint it (default 1 MiB); larger: 413.
    pub fn max_request_body(self, bytes: usize) -> Self {
        self.with(|c| c.max_request_body = bytes)
    }

    /// The largest response body stored (default 1 MiB). A larger one is sent to the first
    /// client whole; its key is done all the same (the request must not run twice), and a
    /// repeat gets its status and headers with an empty body.
    pub fn max_stored_body(self, bytes: usize) -> Self {
        self.with(|c| c.max_stored_body = bytes)
    }

    /// Whether 5xx responses are stored and replayed like the others (Stripe's choice).
    /// By default they are not: the key is released, so the client's retry runs again.
    pub fn store_server_errors(self, store: bool) -> Self {
        self.with(|c| c.store_server_errors = store)
    }

    /// What a repeat gets while the first request with its key still runs (default
    /// [`WhenInFlight::Conflict`]).
    pub fn when_in_flight(self, when: WhenInFlight) -> Self {
        self.with(|c| c.when_in_flight = when)
    }

    /// What a key whose first request was cut off by a crash gets (default
    /// [`Orphans::Rerun`]).
    pub fn on_orphan(self, orphans: Orphans) -> Self {
        self.with(|c| c.orphans = orphans)
    }

    /// The clock for leases and expiry (tests move it by hand).
    pub fn clock(self, clock: SharedClock) -> Self {
        self.with(|c| c.clock = clock)
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = IdempotencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService::new(inner, self.config.clone())
    }
}

impl fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("store", &self.store)
            .field("namespace", &self.namespace)
            .field("methods", &self.methods)
            .field("required", &self.required)
            .field("principal", &self.principal.as_ref().map(|_| "fn"))
            .field("fingerprint_headers", &self.fingerprint_headers)
            .field("lease", &self.lease)
            .field("retention", &self.retention)
            .field("max_key_len", &self.max_key_len)
            .field("unquoted_keys", &self.unquoted_keys)
            .field("max_request_body", &self.max_request_body)
            .field("max_stored_body", &self.max_stored_body)
            .field("store_server_errors", &self.store_server_errors)
            .field("when_in_flight", &self.when_in_flight)
            .field("orphans", &self.orphans)
            .finish()
    }
}
