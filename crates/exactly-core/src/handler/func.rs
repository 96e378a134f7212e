//! Closures as handlers.

use std::fmt;
use std::future::Future;

use async_trait::async_trait;

use super::{Handler, HandlerError, IntoOutput};
use crate::{Context, Message};

/// Makes a handler of an async closure `|Message, Context| async move { ... }` returning
/// `Result<impl IntoOutput, HandlerError>`.
///
/// ```
/// use exactly_core::{handler_fn, Context, Message};
/// let handler = handler_fn(|msg: Message, ctx: Context| async move {
///     let n: u64 = msg.decode()?;
///     ctx.state().put_json("last", &n).await?;
///     Ok(())
/// });
/// # let _ = handler;
/// ```
pub fn handler_fn<F, Fut, O>(f: F) -> HandlerFn<F>
where
    F: Fn(Message, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, HandlerError>> + Send + 'static,
    O: IntoOutput,
{
    HandlerFn { f }
}

/// A handler made of a closure by [`handler_fn`].
#[derive(Clone, Copy)]
pub struct HandlerFn<F> {
    f: F,
}

impl<F> fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerFn").field("f", &std::any::type_name::<F>()).finish()
    }
}

#[async_trait]
impl<F, Fut, O> Handler for HandlerFn<F>
where
    F: Fn(Message, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, HandlerError>> + Send + 'static,
    O: IntoOutput,
{
    type Output = O;

    async fn handle(&self, msg: Message, ctx: Context) -> Result<O, HandlerError> {
        (self.f)(msg, ctx).await
    }
}
