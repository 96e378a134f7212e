//! The user's handler as the innermost service, recording its duration.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use bytes::Bytes;
use tower::Service;

use super::{BoxError, HandlerRequest};
use crate::handler::SharedHandler;
use crate::metrics::ConsumerMetrics;

/// The handler, called as a service; records `exactly_handler_duration_seconds`.
#[derive(Clone)]
pub(crate) struct HandlerCall {
    handler: SharedHandler,
    metrics: ConsumerMetrics,
}

pub(crate) fn handler_service(handler: SharedHandler, metrics: ConsumerMetrics) -> HandlerCall {
    HandlerCall { handler, metrics }
}

impl Service<HandlerRequest> for HandlerCall {
    type Response = Option<Bytes>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Option<Bytes>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: HandlerRequest) -> Self::Future {
        let (handler, metrics) = (self.handler.clone(), self.metrics.clone());
        Box::pin(async move {
            let started = Instant::now();
            let result = handler.call(req.message, req.context).await;
            metrics.handler_time(started.elapsed());
            result.map_err(crate::HandlerError::into_box)
        })
    }
}
