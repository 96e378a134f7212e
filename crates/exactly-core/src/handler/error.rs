//! What a handler returns when it fails.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether a failure is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The same message may succeed later (a dependency timed out, a lock was busy):
    /// retried with backoff, then dead-lettered with reason `retries-exhausted`.
    Transient,
    /// The message itself is bad (undecodable, invalid): dead-lettered at once.
    Permanent,
}

/// A handler's failure: transient or permanent, with a reason that becomes the
/// dead-letter reason.
///
/// Any `std::error::Error` converts into a *transient* `HandlerError` with `?`, the safe
/// default (retry, then dead-letter). Say [`HandlerError::permanent`] for failures that a
/// retry cannot fix. Like `anyhow::Error`, this type does not itself implement
/// `std::error::Error`, which is what makes the blanket `From` possible.
///
/// ```
/// use exactly_core::{HandlerError, ErrorKind};
/// let e = HandlerError::permanent("validation", "amount must be positive");
/// assert_eq!(e.kind(), ErrorKind::Permanent);
/// assert_eq!(e.reason(), "validation");
///
/// fn parse(s: &str) -> Result<u32, HandlerError> {
///     Ok(s.parse::<u32>()?) // ParseIntError -> transient
/// }
/// assert_eq!(parse("x").unwrap_err().kind(), ErrorKind::Transient);
/// ```
pub struct HandlerError {
    kind: ErrorKind,
    reason: Cow<'static, str>,
    source: BoxError,
    retry_after: Option<Duration>,
}

impl HandlerError {
    /// A failure worth retrying, with reason `transient`.
    pub fn transient(err: impl Into<BoxError>) -> Self {
        Self { kind: ErrorKind::Transient, reason: Cow::Borrowed("transient"), source: err.into(), retry_after: None }
    }

    /// A failure no retry can fix; `reason` becomes the dead-letter reason
    /// (for example `validation`).
    pub fn permanent(reason: impl Into<Cow<'static, str>>, err: impl Into<BoxError>) -> Self {
        Self { kind: ErrorKind::Permanent, reason: reason.into(), source: err.into(), retry_after: None }
    }

    /// The payload could not be decoded: permanent, reason `decode`.
    pub fn decode(err: impl Into<BoxError>) -> Self {
        Self::permanent("decode", err)
    }

    /// The payload decoded but is invalid: permanent, reason `validation`.
    pub fn validation(err: impl Into<BoxError>) -> Self {
        Self::permanent("validation", err)
    }

    /// Asks for the next attempt no sooner than `after` (a dependency's `Retry-After`).
    /// The retry policy's maximum delay still applies.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Replaces the reason.
    pub fn with_reason(mut self, reason: impl Into<Cow<'static, str>>) -> Self {
        self.reason = reason.into();
        self
    }

    /// Transient or permanent.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The reason, a short kebab-case word for metrics and dead-letter headers.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The requested delay before the next attempt, if any.
    pub fn requested_retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }

    /// The error as one line of text: the source and its causes joined by `: `.
    pub fn message(&self) -> String {
        let mut out = self.source.to_string();
        let mut cause = self.source.source();
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        out
    }

    pub(crate) fn timeout(after: Duration) -> Self {
        Self::transient(format!("handler timed out after {after:?}")).with_reason("timeout")
    }

    pub(crate) fn panicked(what: String) -> Self {
        Self::transient(format!("handler panicked: {what}")).with_reason("panic")
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("reason", &self.reason)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message())
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        Self::transient(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("calling the ledger")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn message_walks_the_source_chain() {
        let e: HandlerError = Outer(std::io::Error::other("connection reset")).into();
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert_eq!(e.message(), "calling the ledger: connection reset");
        assert_eq!(e.to_string(), "transient: calling the ledger: connection reset");
    }

    #[test]
    fn decode_is_permanent() {
        let e = HandlerError::decode("bad json");
        assert_eq!((e.kind(), e.reason()), (ErrorKind::Permanent, "decode"));
        let t = HandlerError::transient("x").retry_after(Duration::from_secs(3));
        assert_eq!(t.requested_retry_after(), Some(Duration::from_secs(3)));
    }
}
