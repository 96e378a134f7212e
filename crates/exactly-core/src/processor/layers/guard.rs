//! What the processor itself puts around the handler: a timeout (a call that runs longer
//! fails transiently with reason `timeout`) and panic capture (a handler or a layer that
//! panics fails transiently with reason `panic`; the process and the other deliveries go
//! on).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::Service;

use super::BoxError;
use crate::HandlerError;

/// A service with a timeout on each call, or with panics caught.
#[derive(Clone)]
pub(crate) struct Guard<S> {
    inner: S,
    /// `Some`: fail a call not finished after it. `None`: catch panics.
    timeout: Option<Duration>,
}

impl<S> Guard<S> {
    pub(crate) fn timeout(inner: S, after: Duration) -> Self {
        Self { inner, timeout: Some(after) }
    }

    pub(crate) fn catch_panics(inner: S) -> Self {
        Self { inner, timeout: None }
    }
}

impl<S, R> Service<R> for Guard<S>
where
    S: Service<R, Error = BoxError>,
    S::Future: Unpin,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Guarded<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.timeout.is_some() {
            return self.inner.poll_ready(cx);
        }
        std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.poll_ready(cx)))
            .unwrap_or_else(|p| Poll::Ready(Err(panicked(&*p))))
    }

    fn call(&mut self, req: R) -> Self::Future {
        let Some(after) = self.timeout else {
            return match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
                Ok(fut) => Guarded::Catching(fut),
                Err(p) => Guarded::Panicked(Some(panicked(&*p))),
            };
        };
        Guarded::Timed { fut: self.inner.call(req), after, sleep: None }
    }
}

/// A guarded call.
pub(crate) enum Guarded<F> {
    /// With its timer, armed at the first poll that finds the call pending: a handler
    /// that finishes on its first poll (one that only stages state) costs no timer.
    Timed { fut: F, after: Duration, sleep: Option<Pin<Box<tokio::time::Sleep>>> },
    /// With panics caught.
    Catching(F),
    /// `call` itself panicked.
    Panicked(Option<BoxError>),
}

impl<F, T> Future for Guarded<F>
where
    F: Future<Output = Result<T, BoxError>> + Unpin,
{
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            Guarded::Timed { fut, after, sleep } => {
                if let Poll::Ready(r) = Pin::new(fut).poll(cx) {
                    return Poll::Ready(r);
                }
                let after = *after;
                let sleep = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
                sleep.as_mut().poll(cx).map(|()| Err(HandlerError::timeout(after).into_box()))
            }
            Guarded::Catching(fut) => std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut *fut).poll(cx)))
                .unwrap_or_else(|p| Poll::Ready(Err(panicked(&*p)))),
            Guarded::Panicked(e) => Poll::Ready(Err(e
                .take()
                .unwrap_or_else(|| HandlerError::panicked("a panicked call polled again".into()).into_box()))),
        }
    }
}

fn panicked(p: &(dyn Any + Send)) -> BoxError {
    let what = if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    };
    HandlerError::panicked(what).into_box()
}
