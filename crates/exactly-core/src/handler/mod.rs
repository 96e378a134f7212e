//! The one trait a user implements.

mod error;
mod func;
mod output;

pub use error::{ErrorKind, HandlerError};
pub use func::{HandlerFn, handler_fn};
pub use output::{IntoOutput, Json};

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{Context, Message};

/// A store error met while handling a message, as the handler's failure: a store out of
/// reach is a retry that does not count as an attempt (reason `store-unavailable`).
pub(crate) fn store_error(e: crate::Error) -> HandlerError {
    let unavailable = e.is_transient();
    let err = HandlerError::transient(e);
    if unavailable { err.with_reason(crate::reasons::STORE_UNAVAILABLE) } else { err }
}

/// Processes one message. The framework calls it at most once per idempotency key that
/// ends done, and never again for a duplicate.
///
/// Return `Ok` with an output (`()` for none), or a [`HandlerError`] that says whether a
/// retry may help. Writes made through [`Context::state`] commit atomically with the
/// done-record, or not at all.
///
/// ```
/// use exactly_core::{async_trait, Context, Handler, HandlerError, Json, Message};
///
/// struct Charge;
///
/// #[async_trait]
/// impl Handler for Charge {
///     type Output = Json<String>;
///     async fn handle(&self, msg: Message, ctx: Context) -> Result<Self::Output, HandlerError> {
///         let cents: i64 = msg.decode()?;
///         let balance: i64 = ctx.state().get_json("balance").await?.unwrap_or(0);
///         ctx.state().put_json("balance", &(balance + cents)).await?;
///         Ok(Json(format!("charged {cents} with key {}", ctx.idempotency_key())))
///     }
/// }
/// ```
#[async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an exactly handler",
    note = "implement `exactly::Handler`, or wrap an async closure `|msg: Message, ctx: Context| async move {{ ... }}` in `exactly::handler_fn`"
)]
pub trait Handler: Send + Sync + 'static {
    /// The success value; see [`IntoOutput`].
    type Output: IntoOutput;

    /// Handles one message.
    async fn handle(&self, msg: Message, ctx: Context) -> Result<Self::Output, HandlerError>;
}

/// A handler with its output already encoded, so handlers of different output types can
/// be stored side by side.
#[async_trait]
pub(crate) trait ErasedHandler: Send + Sync + 'static {
    async fn call(&self, msg: Message, ctx: Context) -> Result<Option<Bytes>, HandlerError>;
}

#[async_trait]
impl<H: Handler> ErasedHandler for H {
    async fn call(&self, msg: Message, ctx: Context) -> Result<Option<Bytes>, HandlerError> {
        self.handle(msg, ctx).await?.into_output()
    }
}

pub(crate) type SharedHandler = Arc<dyn ErasedHandler>;
