//! The handler as a tower [`Service`], and the layers around it.
//!
//! A handler call is a [`HandlerRequest`] (the message and its context) answered with its
//! encoded output, or an error. Around the handler, innermost first: the handler's
//! duration metric, its timeout, the layers the user added with
//! [`ProcessorBuilder::layer`](crate::ProcessorBuilder::layer), and panic capture, so that
//! a panic in a user's layer is caught too. All of it runs inside the
//! claim: the protocol (the claim, the lease's heartbeat, the commit of the outcome, the
//! retry and dead-letter decision) stays outside the layers.
//!
//! The stack is one service shared by every delivery of a processor: a delivery takes it,
//! waits until it is ready (`poll_ready`: a concurrency or rate limit makes it wait here,
//! while its claim is held and its lease renewed) and calls it. So layers whose services
//! are not `Clone` (tower's `RateLimit`) work as they are.

mod guard;
mod handler;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future;
use tower::util::BoxService;
use tower::{Layer, Service, ServiceExt};

use self::guard::Guard;
use self::handler::{HandlerCall, handler_service};
use crate::{Context, HandlerError, Message};

/// An error from the handler stack, as tower middleware passes it on.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a handler, and each layer around it, is called with.
#[derive(Debug, Clone)]
pub struct HandlerRequest {
    /// The message.
    pub message: Message,
    /// Its context: key, attempt, state, emitted records.
    pub context: Context,
}

/// The service a user's layer wraps: the handler with the layers added before it. Its
/// error is a [`BoxError`] holding the handler's [`HandlerError`] (see
/// [`HandlerError::into_box`]), so tower's middleware can pass it on.
pub type HandlerService = BoxService<HandlerRequest, Option<Bytes>, BoxError>;

/// A [`HandlerError`] on its way through tower middleware.
#[derive(Debug)]
struct Failed(HandlerError);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Failed {}

impl HandlerError {
    /// This error as a tower middleware error, for a layer that fails a call itself: the
    /// processor gets it back as it is (kind, reason, retry-after).
    pub fn into_box(self) -> BoxError {
        Box::new(Failed(self))
    }

    /// What the processor makes of an error out of the handler stack: a handler's error
    /// as it was; a load-shedding layer's refusal and a tower timeout, transient with
    /// reasons `overloaded` and `timeout` (retried, never lost); anything else transient.
    pub fn from_box(e: BoxError) -> Self {
        let e = match e.downcast::<Failed>() {
            Ok(failed) => return failed.0,
            Err(e) => e,
        };
        if e.is::<tower::load_shed::error::Overloaded>() {
            return HandlerError::transient(e).with_reason(crate::reasons::OVERLOADED);
        }
        if e.is::<tower::timeout::error::Elapsed>() {
            return HandlerError::transient(e).with_reason("timeout");
        }
        HandlerError::transient(e)
    }
}

/// Adds one user layer to a stack: boxed so the next can wrap it.
pub(crate) type AddLayer = Box<dyn FnOnce(HandlerService) -> HandlerService + Send + Sync>;

/// Wraps `layer` for [`ProcessorBuilder::layer`](crate::ProcessorBuilder::layer).
pub(crate) fn add<L>(layer: L) -> AddLayer
where
    L: Layer<HandlerService> + Send + Sync + 'static,
    L::Service: Service<HandlerRequest, Response = Option<Bytes>> + Send + 'static,
    <L::Service as Service<HandlerRequest>>::Error: Into<BoxError>,
    <L::Service as Service<HandlerRequest>>::Future: Send + 'static,
{
    Box::new(move |inner| BoxService::new(layer.layer(inner).map_err(Into::into)))
}

/// The stack without user layers: concrete types, no boxing per call.
type Plain = Guard<Guard<HandlerCall>>;

/// The processor's handler stack, shared by its deliveries: the handler, its metric and
/// timeout, the user's layers (if any) in the order added, the last one outermost, and
/// panic capture around all.
#[derive(Clone)]
pub(crate) enum Stack {
    /// No user layers: always ready, so each delivery calls its own copy (a few `Arc`s),
    /// with no lock between deliveries.
    Plain(Box<Plain>),
    /// With user layers: one service, taken in turn (their readiness is shared state).
    Layered(Arc<tokio::sync::Mutex<Guard<HandlerService>>>),
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stack::Plain(_) => "Stack::Plain",
            Stack::Layered(_) => "Stack::Layered",
        })
    }
}

impl Stack {
    pub(crate) fn new(
        handler: crate::handler::SharedHandler,
        timeout: std::time::Duration,
        metrics: crate::metrics::ConsumerMetrics,
        layers: Vec<AddLayer>,
    ) -> Self {
        let inner = Guard::timeout(handler_service(handler, metrics), timeout);
        if layers.is_empty() {
            return Stack::Plain(Box::new(Guard::catch_panics(inner)));
        }
        let mut svc: HandlerService = BoxService::new(inner);
        for add in layers {
            svc = add(svc);
        }
        Stack::Layered(Arc::new(tokio::sync::Mutex::new(Guard::catch_panics(svc))))
    }

    /// Calls the stack once it is ready: with layers, their readiness and the call under
    /// the stack's lock (so they go together), the call awaited without it.
    pub(crate) async fn call(&self, req: HandlerRequest) -> Result<Option<Bytes>, HandlerError> {
        let call = match self {
            Stack::Plain(plain) => future::Either::Left((**plain).clone().call(req)),
            Stack::Layered(stack) => {
                let mut svc = stack.lock().await;
                svc.ready().await.map_err(HandlerError::from_box)?;
                future::Either::Right(svc.call(req))
            }
        };
        call.await.map_err(HandlerError::from_box)
    }
}
