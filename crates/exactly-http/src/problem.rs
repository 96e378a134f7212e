//! The layer's own answers: `application/problem+json` bodies (RFC 9457), one per way a
//! request can be refused, each naming what to change.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// Where each problem type is explained.
const DOCS: &str = "https://github.com/exactly-rs/exactly/blob/main/docs/HTTP.md";

/// Why the layer answered a request itself instead of running it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Problem {
    /// The method requires the header and the request has none.
    MissingKey,
    /// The header is not one structured-field string of printable ASCII, or too long.
    MalformedKey(String),
    /// The layer's principal function found no client to scope the key to.
    NoPrincipal,
    /// The request body is larger than the layer buffers to fingerprint it.
    TooLarge(usize),
    /// The request body could not be read.
    BadBody(String),
    /// The first request with this key is still running.
    InFlight { retry_after_secs: u64 },
    /// The key was used before with another request.
    Mismatch,
    /// The store did not answer; nothing ran.
    StoreUnavailable(String),
    /// The stored response of the key cannot be read back.
    Unreadable(String),
    /// The response's body could not be read after the request ran.
    BrokenResponse(String),
    /// A server stopped while running the key's first request, and the layer does not run
    /// such requests again ([`Orphans::Refuse`](crate::Orphans::Refuse)).
    UnknownOutcome,
}

impl Problem {
    /// The status, the anchor in docs/HTTP.md, the title and the detail.
    fn parts(&self) -> (StatusCode, &'static str, &'static str, String) {
        match self {
            Problem::MissingKey => (
                StatusCode::BAD_REQUEST,
                "missing-key",
                "Idempotency-Key is missing",
                "this operation requires an Idempotency-Key header: send a unique string, e.g. \
                 Idempotency-Key: \"8e03978e-40d5-43e8-bc93-6894a57f9324\", and the same one on retries"
                    .into(),
            ),
            Problem::MalformedKey(why) => (
                StatusCode::BAD_REQUEST,
                "malformed-key",
                "Idempotency-Key is malformed",
                format!("the Idempotency-Key header must be one quoted structured-field string: {why}"),
            ),
            Problem::NoPrincipal => (
                StatusCode::UNAUTHORIZED,
                "no-principal",
                "No client to scope the Idempotency-Key to",
                "the request carries no credentials the server scopes idempotency keys by".into(),
            ),
            Problem::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "Request body too large",
                format!("an idempotent request's body is at most {limit} bytes here"),
            ),
            Problem::BadBody(why) => (
                StatusCode::BAD_REQUEST,
                "bad-body",
                "Request body unreadable",
                format!("reading the body failed: {why}"),
            ),
            Problem::InFlight { .. } => (
                StatusCode::CONFLICT,
                "in-flight",
                "A request with this Idempotency-Key is in progress",
                "the first request with this key has not finished: retry after a moment".into(),
            ),
            Problem::Mismatch => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "mismatch",
                "Idempotency-Key reused with another request",
                "this key was used with a different method, path, body or headers: use a new key \
                 for a new request"
                    .into(),
            ),
            Problem::StoreUnavailable(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "Idempotency store unavailable",
                format!("nothing ran; retry with the same key: {why}"),
            ),
            Problem::Unreadable(why) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "unreadable",
                "Stored response unreadable",
                format!("the request ran before, but its stored response cannot be read: {why}"),
            ),
            Problem::BrokenResponse(why) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "broken-response",
                "Response failed",
                format!("the response's body failed; retry with the same key: {why}"),
            ),
            Problem::UnknownOutcome => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "unknown-outcome",
                "Outcome unknown",
                "a server stopped while running the first request with this key; it is not run \
                 again until the service's operators have resolved it"
                    .into(),
            ),
        }
    }

    /// The status this problem answers with.
    pub(crate) fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The response: a problem+json body, with `Retry-After` where waiting helps.
    pub(crate) fn response(&self) -> Response<Full<Bytes>> {
        let (status, anchor, title, detail) = self.parts();
        let body = serde_json::json!({
            "type": format!("{DOCS}#{anchor}"),
            "title": title,
            "status": status.as_u16(),
            "detail": detail,
        });
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        let retry_after = match self {
            Problem::InFlight { retry_after_secs } => Some(*retry_after_secs),
            Problem::StoreUnavailable(_) => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
