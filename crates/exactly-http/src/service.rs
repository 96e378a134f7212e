//! [`IdempotencyService`]: one request through the protocol the consumers run (claim with
//! a lease, run once, record the result durably, answer repeats from the record).

use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use exactly_core::store::{Claim, ClaimRequest, Committed, Completion, FencingToken, Final, Lease, StateChanges};
use exactly_core::{Fingerprint, StoreKey, Sweeper, error_line};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use tower::{BoxError, Service};

use crate::layer::{Config, Orphans, WhenInFlight};
use crate::metrics::{Outcome, Timer};
use crate::problem::Problem;
use crate::stored::StoredResponse;

/// The dead-letter reason of a key whose request was cut off, under [`Orphans::Refuse`].
const UNKNOWN_OUTCOME: &str = "unknown-outcome";

/// The body the wrapped service gets: the buffered body of a request the layer took
/// (`Left`), or the request's own body where it passed the request through (`Right`).
pub type RequestBody<B> = Either<Full<Bytes>, B>;
/// The body of the layer's responses: the buffered, stored or refusing response (`Left`),
/// or the wrapped service's own body for a request passed through (`Right`).
pub type ResponseBody<B> = Either<Full<Bytes>, B>;

/// The service [`IdempotencyLayer`](crate::IdempotencyLayer) wraps around another.
#[derive(Clone)]
pub struct IdempotencyService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> IdempotencyService<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for IdempotencyService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyService").field("inner", &self.inner).field("config", &self.config).finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for IdempotencyService<S>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The service polled ready is the one that runs the request (tower's usual swap).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(handle(inner, self.config.clone(), req))
    }
}

/// A response of the layer's own.
fn answer<B>(response: Response<Full<Bytes>>) -> Response<ResponseBody<B>> {
    response.map(Either::Left)
}

async fn handle<S, ReqBody, ResBody>(
    mut inner: S,
    config: Arc<Config>,
    req: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let refuse = |problem: Problem| {
        Outcome::of(&problem).count(&config.namespace);
        tracing::debug!(namespace = %config.namespace, status = %problem.status(), "idempotency layer refused a request");
        Ok(answer(problem.response()))
    };
    let pass =
        async |inner: &mut S, req: Request<ReqBody>| Ok(inner.call(req.map(Either::Right)).await?.map(Either::Right));
    if !config.methods.contains(req.method()) {
        return pass(&mut inner, req).await;
    }
    let key = match crate::key::read(req.headers(), config.max_key_len, config.unquoted_keys) {
        Ok(Some(key)) => key,
        Ok(None) if !config.required => return pass(&mut inner, req).await,
        Ok(None) => return refuse(Problem::MissingKey),
        Err(problem) => return refuse(problem),
    };
    let (parts, body) = req.into_parts();
    let store_key = match &config.principal {
        None => StoreKey::new(&config.namespace, &key),
        // Hashed: the principal may be a credential, and store keys are shown to operators.
        Some(principal) => match principal(&parts) {
            Some(p) => {
                StoreKey::new(&config.namespace, &format!("{}/{key}", &blake3::hash(p.as_bytes()).to_hex()[..32]))
            }
            None => return refuse(Problem::NoPrincipal),
        },
    };
    let body = match Limited::new(body, config.max_request_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return refuse(Problem::TooLarge(config.max_request_body)),
        Err(e) => return refuse(Problem::BadBody(e.to_string())),
    };
    let fingerprint = fingerprint(&parts, &body, &config);
    config.sweeper.get_or_init(|| Sweeper::default().start(config.store.clone(), config.clock.clone()));

    let lease = match claim(&config, &store_key, fingerprint).await {
        Claimed::Run(lease) => lease,
        Claimed::Answer(response, outcome) => {
            outcome.count(&config.namespace);
            return Ok(answer(response));
        }
    };
    let held =
        Held { config: config.clone(), key: store_key, token: lease.token, attempts: lease.attempts, armed: true };
    if lease.orphaned {
        if config.orphans == Orphans::Refuse {
            tracing::error!(key = %held.key, "a request with this key was cut off (a crash, or its lease ran out): not run again until resolved");
            held.finish(fingerprint, Final::DeadLettered { reason: UNKNOWN_OUTCOME.into() }).await;
            return refuse(Problem::UnknownOutcome);
        }
        tracing::warn!(key = %held.key, "a request with this key was cut off (a crash, or its lease ran out): it runs again");
    }
    let request = Request::from_parts(parts, Either::Left(Full::new(body)));
    let ran = renewing(&held, AssertUnwindSafe(inner.call(request)).catch_unwind()).await;
    let response = match ran {
        Err(panic) => {
            held.release("the handler panicked").await;
            std::panic::resume_unwind(panic)
        }
        Ok(Err(e)) => {
            held.release("the service failed").await;
            return Err(e);
        }
        Ok(Ok(response)) => response,
    };
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).map_err(|e| e.into().to_string());
    let body = match body {
        Ok(body) => body,
        Err(why) => {
            held.release(&format!("the response body failed: {why}")).await;
            return Ok(answer(Problem::BrokenResponse(why).response()));
        }
    };
    if parts.status.is_server_error() && !config.store_server_errors {
        held.release(&format!("status {}", parts.status)).await;
        return Ok(Response::from_parts(parts, Either::Left(Full::new(body))));
    }
    let limit = config.max_stored_body.min(config.store.limits().max_value.saturating_sub(64 * 1024));
    let stored = StoredResponse::of(&parts, &body, limit);
    if stored.body_omitted() {
        tracing::warn!(key = %held.key, bytes = body.len(), limit, "the response body is over the stored limit: a repeat gets its status and headers only");
    }
    let done = Final::Done { output: Some(stored.encode()), emitted: Vec::new() };
    let outcome = if held.finish(fingerprint, done).await { Outcome::Fresh } else { Outcome::Unrecorded };
    outcome.count(&config.namespace);
    Ok(Response::from_parts(parts, Either::Left(Full::new(body))))
}

/// What a claim of the key decided.
enum Claimed {
    /// Run the request under this lease.
    Run(Lease),
    /// Answer this instead.
    Answer(Response<Full<Bytes>>, Outcome),
}

/// Claims the key: the lease to run the request under, or the answer to give instead.
async fn claim(config: &Config, key: &StoreKey, fingerprint: Fingerprint) -> Claimed {
    let waiting_until = match config.when_in_flight {
        WhenInFlight::Wait(bound) => Some(Instant::now() + bound),
        WhenInFlight::Conflict => None,
    };
    let mut pause = Duration::from_millis(5);
    loop {
        let now = config.clock.now();
        let lease_until = now + config.lease.as_millis() as u64;
        // Durable claims let a local store tell, after a restart, that a request was cut off.
        let durable = config.orphans == Orphans::Refuse;
        let req = ClaimRequest { key, fingerprint, now, lease_until, durable, redrive: false };
        let timer = Timer::start(&config.namespace, "claim");
        let claimed = config.store.claim(req).await;
        timer.stop();
        let refused = |problem: Problem| {
            let outcome = Outcome::of(&problem);
            Claimed::Answer(problem.response(), outcome)
        };
        match claimed {
            Err(e) => return refused(Problem::StoreUnavailable(error_line(&e))),
            Ok(Claim::Acquired(lease)) => return Claimed::Run(lease),
            Ok(Claim::Done { output, .. }) => {
                let replay = StoredResponse::decode(output.as_deref().unwrap_or_default()).and_then(|s| s.replay());
                return match replay {
                    Ok(response) => Claimed::Answer(response, Outcome::Replayed),
                    Err(why) => refused(Problem::Unreadable(why)),
                };
            }
            Ok(Claim::Conflict { .. }) => return refused(Problem::Mismatch),
            Ok(Claim::DeadLettered { reason }) if reason == UNKNOWN_OUTCOME => {
                return refused(Problem::UnknownOutcome);
            }
            Ok(Claim::DeadLettered { reason }) => {
                return refused(Problem::Unreadable(format!("the key was dead-lettered: {reason}")));
            }
            Ok(Claim::Busy { .. }) => match waiting_until {
                Some(until) if Instant::now() + pause < until => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                _ => return refused(Problem::InFlight { retry_after_secs: 1 }),
            },
        }
    }
}

/// Method, path, query, the chosen headers and the body: what makes two requests the same.
fn fingerprint(parts: &http::request::Parts, body: &Bytes, config: &Config) -> Fingerprint {
    let mut hasher = blake3::Hasher::new();
    let mut part = |bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    part(parts.method.as_str().as_bytes());
    part(parts.uri.path().as_bytes());
    part(parts.uri.query().unwrap_or_default().as_bytes());
    for name in &config.fingerprint_headers {
        for value in parts.headers.get_all(name) {
            part(name.as_str().as_bytes());
            part(value.as_bytes());
        }
    }
    part(body);
    let mut out = [0u8; 16];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    Fingerprint(out)
}

/// Runs `run`, renewing the lease every third of it meanwhile.
async fn renewing<F: Future>(held: &Held, run: F) -> F::Output {
    let config = &held.config;
    let mut run = pin!(run);
    loop {
        tokio::select! {
            out = &mut run => return out,
            () = tokio::time::sleep(config.lease / 3) => {
                let until = config.clock.now() + config.lease.as_millis() as u64;
                match config.store.renew(&held.key, held.token, until).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(key = %held.key, "lost its lease while running: another server may run it too"),
                    Err(e) => tracing::warn!(key = %held.key, error = %error_line(&e), "renewing the lease failed"),
                }
            }
        }
    }
}

/// A claimed key: completed, released, or (dropped mid-request: the client hung up and
/// hyper dropped the request, a timeout layer outside this one) released in the background.
struct Held {
    config: Arc<Config>,
    key: StoreKey,
    token: FencingToken,
    attempts: u32,
    armed: bool,
}

impl Held {
    /// Lets the key go so that a retry runs the request again.
    async fn release(mut self, why: &str) {
        self.armed = false;
        Outcome::Released.count(&self.config.namespace);
        if let Err(e) = self.config.store.release(&self.key, self.token, self.attempts + 1, Some(why.into())).await {
            tracing::warn!(key = %self.key, error = %error_line(&e), "releasing the key failed: it is free again when its lease ends");
        }
    }

    /// Ends the claim for good, durably: with the response to store before it is sent,
    /// or marked as cut off. Whether it was recorded (if not, the request ran all the same).
    async fn finish(mut self, fingerprint: Fingerprint, outcome: Final) -> bool {
        self.armed = false;
        let config = &self.config;
        let now = config.clock.now();
        let completion = Completion {
            key: self.key.clone(),
            token: self.token,
            fingerprint,
            attempts: self.attempts + 1,
            now,
            origin: None,
            outcome,
            expires_at: now + config.retention.as_millis() as u64,
            state: StateChanges::default(),
        };
        let timer = Timer::start(&config.namespace, "complete");
        let committed = config.store.complete(completion).await;
        timer.stop();
        match committed {
            Ok(Committed::Ok) => true,
            Ok(other) => {
                tracing::warn!(key = %self.key, outcome = ?other, "the request ran but another server took its key over: its response is not stored");
                false
            }
            Err(e) => {
                tracing::error!(key = %self.key, error = %error_line(&e), "the request ran but its response could not be stored: a repeat may run it again");
                false
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // The future was dropped mid-request: free the key now rather than when its lease
        // ends.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, key, token, attempts) =
                (self.config.store.clone(), self.key.clone(), self.token, self.attempts + 1);
            Outcome::Released.count(&self.config.namespace);
            runtime.spawn(async move {
                let _ = store.release(&key, token, attempts, Some("the request was cancelled".into())).await;
            });
        }
    }
}
