//! A response as the store keeps it, and the replay built from it.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::{Deserialize, Serialize};

/// The header a replayed response carries.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// Headers about the connection or this one transmission, never replayed.
const NOT_STORED: [HeaderName; 9] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::DATE,
    header::CONTENT_LENGTH,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Status, headers and body of a response that ran; what repeats of its key get back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredResponse {
    status: u16,
    headers: Vec<(String, Bytes)>,
    body: Bytes,
    /// The body was larger than the layer stores: a replay has the status and headers only.
    body_omitted: bool,
}

impl StoredResponse {
    /// What to keep of a response whose body is `body`; bodies over `max_body` bytes are
    /// left out.
    pub(crate) fn of(parts: &http::response::Parts, body: &Bytes, max_body: usize) -> Self {
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| !NOT_STORED.contains(name) && name.as_str() != "keep-alive")
            .map(|(name, value)| (name.as_str().to_string(), Bytes::copy_from_slice(value.as_bytes())))
            .collect();
        let body_omitted = body.len() > max_body;
        let body = if body_omitted { Bytes::new() } else { body.clone() };
        Self { status: parts.status.as_u16(), headers, body, body_omitted }
    }

    /// The bytes the store keeps.
    pub(crate) fn encode(&self) -> Bytes {
        // A Vec of plain fields always encodes.
        Bytes::from(postcard::to_stdvec(self).unwrap_or_default())
    }

    /// Reads back what [`encode`](Self::encode) wrote.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("it does not decode: {e}"))
    }

    /// Whether the body was left out.
    pub(crate) fn body_omitted(&self) -> bool {
        self.body_omitted
    }

    /// The replay: the stored response with `Idempotent-Replayed: true`.
    pub(crate) fn replay(&self) -> Result<Response<Full<Bytes>>, String> {
        let mut response = Response::new(Full::new(self.body.clone()));
        *response.status_mut() =
            StatusCode::from_u16(self.status).map_err(|_| format!("status {} is not a status", self.status))?;
        let headers = response.headers_mut();
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("header {name:?} is not a name"))?;
            let value = HeaderValue::from_bytes(value).map_err(|_| format!("header {name} has a bad value"))?;
            headers.append(name, value);
        }
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_round_trips_without_its_transmission_headers() {
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = StatusCode::CREATED;
        parts.headers.insert(header::LOCATION, HeaderValue::from_static("/payments/7"));
        parts.headers.append(header::SET_COOKIE, HeaderValue::from_static("a=1"));
        parts.headers.append(header::SET_COOKIE, HeaderValue::from_static("b=2"));
        parts.headers.insert(header::DATE, HeaderValue::from_static("Tue, 08 Dec 2026 00:00:00 GMT"));
        parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        let stored = StoredResponse::of(&parts, &Bytes::from_static(b"ok"), 1024);
        let again = StoredResponse::decode(&stored.encode()).unwrap();
        assert_eq!(again, stored);
        let replay = again.replay().unwrap();
        assert_eq!(replay.status(), StatusCode::CREATED);
        assert_eq!(replay.headers()[header::LOCATION], "/payments/7");
        assert_eq!(replay.headers().get_all(header::SET_COOKIE).iter().count(), 2);
        assert!(replay.headers().get(header::DATE).is_none());
        assert_eq!(replay.headers()[IDEMPOTENT_REPLAYED], "true");
    }

    #[test]
    fn a_body_over_the_limit_is_left_out() {
        let (parts, ()) = Response::new(()).into_parts();
        let stored = StoredResponse::of(&parts, &Bytes::from(vec![0u8; 11]), 10);
        assert!(stored.body_omitted());
        assert!(StoredResponse::decode(&stored.encode()).unwrap().body.is_empty());
    }
}
