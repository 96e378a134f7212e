//! What a handler returns on success, and how it is cached.

use bytes::Bytes;
use serde::Serialize;

use super::HandlerError;

/// Turns a handler's success value into the bytes that are cached with the done-record
/// and sent as the reply (AMQP `reply_to`). A duplicate gets the cached bytes back
/// without running the handler: same key, same answer.
///
/// `()` caches nothing. `Bytes`, `Vec<u8>` and `String` are sent as they are; wrap any
/// `Serialize` type in [`Json`] to send JSON.
pub trait IntoOutput: Send + 'static {
    /// The bytes to cache, or `None` for no output.
    fn into_output(self) -> Result<Option<Bytes>, HandlerError>;
}

impl IntoOutput for () {
    fn into_output(self) -> Result<Option<Bytes>, HandlerError> {
        Ok(None)
    }
}

impl IntoOutput for Bytes {
    fn into_output(self) -> Result<Option<Bytes>, HandlerError> {
        Ok(Some(self))
    }
}

impl IntoOutput for Vec<u8> {
    fn into_output(self) -> Result<Option<Bytes>, HandlerError> {
        Ok(Some(Bytes::from(self)))
    }
}

impl IntoOutput for String {
    fn into_output(self) -> Result<Option<Bytes>, HandlerError> {
        Ok(Some(Bytes::from(self)))
    }
}

impl IntoOutput for &'static str {
    fn into_output(self) -> Result<Option<Bytes>, HandlerError> {
        Ok(Some(Bytes::from_static(self.as_bytes())))
    }
}

impl<T: IntoOutput> IntoOutput for Option<T> {
    fn into_output(self) -> Result<Option<Bytes>, HandlerError> {
        match self {
            Some(t) => t.into_output(),
            None => Ok(None),
        }
    }
}

/// A success value sent as JSON.
///
/// ```
/// use exactly_core::{Json, IntoOutput};
/// let out = Json(serde_json::json!({"ok": true})).into_output().unwrap();
/// assert_eq!(out.unwrap(), &br#"{"ok":true}"#[..]);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: Serialize + Send + 'static> IntoOutput for Json<T> {
    fn into_output(self) -> Result<Option<Bytes>, HandlerError> {
        serde_json::to_vec(&self.0)
            .map(|v| Some(Bytes::from(v)))
            .map_err(|e| HandlerError::permanent("encode-output", e))
    }
}
