//! The adapter's error type.

use std::time::Duration;

/// Errors of the AMQP adapter. Each variant names what failed; URLs are shown without
/// their password.
///
/// `Debug` prints the message and its causes on one line, as `exactly_core::error_line`.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL does not parse.
    #[error("invalid AMQP URL {url}: {reason}")]
    Url {
        /// The URL, password hidden.
        url: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A setting is invalid.
    #[error("invalid configuration: {field}: {reason}")]
    Config {
        /// The setting.
        field: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// Connecting to the broker failed.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL, password hidden.
        url: String,
        /// What lapin reported.
        #[source]
        source: lapin::Error,
    },
    /// The broker refused the connection for a reason retrying cannot fix: wrong user
    /// name or password (`ACCESS_REFUSED`), or a vhost that does not exist or the user may
    /// not use (`NOT_ALLOWED`).
    #[error("{url} refused the connection: {reason}")]
    Refused {
        /// The URL, password hidden.
        url: String,
        /// What to check, and the broker's words.
        reason: String,
    },
    /// No connection could be made at start-up within the allowed time.
    #[error("cannot connect to {url} within {waited:.1?}: {last_error} (is the broker running and the URL right?)")]
    ConnectTimeout {
        /// The URL, password hidden.
        url: String,
        /// How long it tried.
        waited: Duration,
        /// The last failure.
        last_error: String,
    },
    /// Declaring the topology failed.
    #[error("declaring {what} failed: {source}{hint}")]
    Topology {
        /// The queue or exchange.
        what: String,
        /// What lapin reported.
        #[source]
        source: lapin::Error,
        /// Advice, when the cause is known.
        hint: &'static str,
    },
    /// Consuming failed (the channel or connection broke).
    #[error("consuming from queue {queue} failed: {source}")]
    Consume {
        /// The queue.
        queue: String,
        /// What lapin reported.
        #[source]
        source: lapin::Error,
    },
    /// The broker cancelled the consumer (the queue was deleted, or the node went away).
    #[error("the broker cancelled the consumer of queue {queue}")]
    Cancelled {
        /// The queue.
        queue: String,
    },
    /// A publish (dead-letter, retry, reply) was not confirmed by the broker.
    #[error("publishing to exchange {exchange:?} with routing key {routing_key:?} failed: {reason}")]
    Publish {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// Why.
        reason: String,
    },
    /// The dedup store failed: nothing more is acknowledged; restart the consumer.
    #[error(transparent)]
    Store(#[from] exactly_core::Error),
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&exactly_core::error_line(self))
    }
}

impl Error {
    /// Whether reconnecting cannot help: the consumer stops with this error.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Error::Url { .. }
                | Error::Config { .. }
                | Error::Refused { .. }
                | Error::ConnectTimeout { .. }
                | Error::Store(_)
        ) || matches!(self, Error::Topology { hint, .. } if !hint.is_empty())
    }

    /// A failed connection attempt: [`Error::Refused`] when the broker refused the
    /// credentials or the vhost, else [`Error::Connect`].
    pub(crate) fn connect(url: &str, source: lapin::Error) -> Self {
        use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
        let refused = match source.kind() {
            lapin::ErrorKind::ProtocolError(e) => match e.kind() {
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => Some(format!(
                    "the broker refused the credentials; check the user name and password ({})",
                    e.get_message()
                )),
                AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => Some(format!(
                    "the vhost does not exist or the user may not use it; check the URL's path and the user's permissions ({})",
                    e.get_message()
                )),
                _ => None,
            },
            _ => None,
        };
        match refused {
            Some(reason) => Error::Refused { url: url.to_owned(), reason },
            None => Error::Connect { url: url.to_owned(), source },
        }
    }
}

/// The URL with its password replaced by `***`, for logs and error messages.
///
/// ```
/// assert_eq!(exactly_amqp::redact_url("amqp://guest:secret@host/%2f"), "amqp://guest:***@host/%2f");
/// ```
pub fn redact_url(url: &str) -> String {
    exactly_core::redact::url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(redact_url("amqp://guest:secret@host:5672/%2f"), "amqp://guest:***@host:5672/%2f");
        assert_eq!(redact_url("amqp://host/%2f"), "amqp://host/%2f");
        assert_eq!(redact_url("amqps://user@host"), "amqps://user@host");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
