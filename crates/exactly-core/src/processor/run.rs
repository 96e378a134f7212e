//! Running one handler attempt: timeout, lease heartbeat, panic capture.

use std::panic::AssertUnwindSafe;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::time::Instant;

use crate::handler::SharedHandler;
use crate::{Context, HandlerError, Message};

/// Runs the handler until it finishes or `timeout` passes, calling `renew` every
/// `renew_every` meanwhile. A panic is a transient failure with reason `panic`.
pub(crate) async fn run_attempt<R: Future<Output = bool>>(
    handler: &SharedHandler,
    msg: Message,
    ctx: Context,
    timeout: Duration,
    renew_every: Duration,
    mut renew: impl FnMut() -> R,
) -> Result<Option<Bytes>, HandlerError> {
    let now = Instant::now();
    let fut = AssertUnwindSafe(handler.call(msg, ctx)).catch_unwind();
    tokio::pin!(fut);
    // A handler that finishes on its first poll (one that only stages state or computes)
    // needs no timer: arming one per message was a registration in the runtime's timer
    // wheel and its removal.
    if let Poll::Ready(r) = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        return finished(r);
    }
    let deadline = now + timeout;
    let mut next_renew = now + renew_every;
    let timer = tokio::time::sleep_until(next_renew.min(deadline));
    tokio::pin!(timer);
    let mut lost = false;
    loop {
        tokio::select! {
            biased;
            r = &mut fut => return finished(r),
            () = &mut timer => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(HandlerError::timeout(timeout));
                }
                if !renew().await && !lost {
                    lost = true;
                    tracing::warn!("lost the lease while the handler runs; its result will be discarded");
                }
                next_renew = now + renew_every;
                timer.as_mut().reset(next_renew.min(deadline));
            }
        }
    }
}

/// The handler's result, a panic as a transient failure.
fn finished(r: std::thread::Result<Result<Option<Bytes>, HandlerError>>) -> Result<Option<Bytes>, HandlerError> {
    r.unwrap_or_else(|panic| Err(HandlerError::panicked(panic_text(&panic))))
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}
