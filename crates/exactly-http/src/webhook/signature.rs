//! Verifying a webhook sender's signature, before anything else reads the request:
//! Standard Webhooks, Stripe and GitHub, each HMAC-SHA256 compared in constant time.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How a sender signs its webhooks, with the secret it shares with you. `Debug` never
/// shows the secret.
#[derive(Clone)]
pub struct Signature {
    scheme: Scheme,
    key: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    StandardWebhooks,
    Stripe,
    GitHub,
}

/// A secret that is not what its scheme expects.
#[derive(Debug, thiserror::Error)]
#[error("the webhook secret is not a Standard Webhooks secret (`whsec_` and base64): {0}")]
pub struct InvalidSecret(String);

/// Why a webhook was refused before it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// A header the scheme needs is missing or unreadable.
    Header(&'static str),
    /// The timestamp is further from now than the tolerance: a replay, or a clock far off.
    Stale { age_secs: i64 },
    /// No signature matches.
    Signature,
    /// The body names no event id (Stripe's `id`).
    NoEventId,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::Header(name) => write!(f, "the {name} header is missing or malformed"),
            Rejected::Stale { age_secs } => {
                write!(f, "the signature's timestamp is {age_secs} s from now, outside the tolerance")
            }
            Rejected::Signature => write!(f, "no signature matches the body with this endpoint's secret"),
            Rejected::NoEventId => write!(f, "the body names no event id"),
        }
    }
}

/// What a verified webhook is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    /// The sender's id of the event, the same on every redelivery.
    pub(crate) event_id: String,
}

impl Signature {
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`),
    /// with the endpoint's secret as the sender shows it (`whsec_` and base64).
    pub fn standard_webhooks(secret: &str) -> Result<Self, InvalidSecret> {
        let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = BASE64.decode(encoded).map_err(|e| InvalidSecret(e.to_string()))?;
        Ok(Self { scheme: Scheme::StandardWebhooks, key })
    }

    /// Stripe (`Stripe-Signature: t=<seconds>,v1=<hex>`), with the endpoint's signing
    /// secret (`whsec_...`, used as it is). The event id is the body's `id`.
    pub fn stripe(secret: impl Into<Vec<u8>>) -> Self {
        Self { scheme: Scheme::Stripe, key: secret.into() }
    }

    /// GitHub (`X-Hub-Signature-256: sha256=<hex>`), with the webhook's secret. The event id
    /// is `X-GitHub-Delivery`. GitHub signs no timestamp: replays are stopped by the id alone.
    pub fn github(secret: impl Into<Vec<u8>>) -> Self {
        Self { scheme: Scheme::GitHub, key: secret.into() }
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        // HMAC takes keys of any length.
        let mut mac = HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        for part in parts {
            mac.update(part);
        }
        mac
    }

    /// Checks the request: its signature over the body, its timestamp within `tolerance` of
    /// `now` (seconds since the epoch), and its event id.
    pub(crate) fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
        tolerance: Duration,
    ) -> Result<Verified, Rejected> {
        let header = |name: &'static str| {
            headers.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()).ok_or(Rejected::Header(name))
        };
        let fresh = |timestamp: &str, name: &'static str| {
            let at: i64 = timestamp.trim().parse().map_err(|_| Rejected::Header(name))?;
            let age_secs = now - at;
            let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
            if age_secs.abs() > tolerance { Err(Rejected::Stale { age_secs }) } else { Ok(()) }
        };
        match self.scheme {
            Scheme::StandardWebhooks => {
                let (id, timestamp) = (header("webhook-id")?, header("webhook-timestamp")?);
                let signatures = header("webhook-signature")?;
                fresh(timestamp, "webhook-timestamp")?;
                let mac = self.mac(&[id.as_bytes(), b".", timestamp.as_bytes(), b".", body]);
                let matches = signatures
                    .split_whitespace()
                    .filter_map(|s| s.strip_prefix("v1,"))
                    .filter_map(|s| BASE64.decode(s).ok())
                    .any(|sig| mac.clone().verify_slice(&sig).is_ok());
                if !matches {
                    return Err(Rejected::Signature);
                }
                Ok(Verified { event_id: id.to_owned() })
            }
            Scheme::Stripe => {
                let value = header("stripe-signature")?;
                let fields = value.split(',').filter_map(|f| f.split_once('='));
                let timestamp = fields.clone().find(|(k, _)| *k == "t").map(|(_, v)| v);
                let timestamp = timestamp.ok_or(Rejected::Header("stripe-signature"))?;
                fresh(timestamp, "stripe-signature")?;
                let mac = self.mac(&[timestamp.as_bytes(), b".", body]);
                let matches = fields
                    .filter(|(k, _)| *k == "v1")
                    .filter_map(|(_, v)| hex::decode(v).ok())
                    .any(|sig| mac.clone().verify_slice(&sig).is_ok());
                if !matches {
                    return Err(Rejected::Signature);
                }
                let event: serde_json::Value = serde_json::from_slice(body).map_err(|_| Rejected::NoEventId)?;
                let id = event.get("id").and_then(|id| id.as_str()).filter(|id| !id.is_empty());
                Ok(Verified { event_id: id.ok_or(Rejected::NoEventId)?.to_owned() })
            }
            Scheme::GitHub => {
                let signature = header("x-hub-signature-256")?;
                let sig = signature.strip_prefix("sha256=").and_then(|s| hex::decode(s).ok());
                let sig = sig.ok_or(Rejected::Header("x-hub-signature-256"))?;
                self.mac(&[body]).verify_slice(&sig).map_err(|_| Rejected::Signature)?;
                Ok(Verified { event_id: header("x-github-delivery")?.to_owned() })
            }
        }
    }

    /// The scheme's headers for `body`, signed at `timestamp`: what a sender would send
    /// (for tests, and for sending webhooks of your own).
    pub fn sign(&self, event_id: &str, timestamp: i64, body: &[u8]) -> Vec<(&'static str, String)> {
        let t = timestamp.to_string();
        match self.scheme {
            Scheme::StandardWebhooks => {
                let mac = self.mac(&[event_id.as_bytes(), b".", t.as_bytes(), b".", body]).finalize().into_bytes();
                vec![
                    ("webhook-id", event_id.to_owned()),
                    ("webhook-timestamp", t),
                    ("webhook-signature", format!("v1,{}", BASE64.encode(mac))),
                ]
            }
            Scheme::Stripe => {
                let mac = self.mac(&[t.as_bytes(), b".", body]).finalize().into_bytes();
                vec![("stripe-signature", format!("t={t},v1={}", hex::encode(mac)))]
            }
            Scheme::GitHub => {
                let mac = self.mac(&[body]).finalize().into_bytes();
                vec![
                    ("x-hub-signature-256", format!("sha256={}", hex::encode(mac))),
                    ("x-github-delivery", event_id.to_owned()),
                ]
            }
        }
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signature").field("scheme", &self.scheme).field("secret", &"<redacted>").finish()
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderName, HeaderValue};

    use super::*;

    const NOW: i64 = 1_765_000_000;
    const FIVE_MIN: Duration = Duration::from_secs(300);

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(HeaderName::from_static(name), HeaderValue::from_str(value).unwrap());
        }
        h
    }

    /// The example of the Standard Webhooks specification, verified as published.
    #[test]
    fn the_standard_webhooks_specification_example_verifies() {
        let sig = Signature::standard_webhooks("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let h = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek".into()),
            ("webhook-timestamp", "1614265330".into()),
            ("webhook-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".into()),
        ]);
        let body = br#"{"test": 2432232314}"#;
        let got = sig.verify(&h, body, 1_614_265_330, FIVE_MIN);
        assert_eq!(got, Ok(Verified { event_id: "msg_p5jXN8AQM9LWM0D4loKWxJek".into() }));
        assert_eq!(sig.verify(&h, br#"{"test": 2432232315}"#, 1_614_265_330, FIVE_MIN), Err(Rejected::Signature));
        assert!(matches!(sig.verify(&h, body, 1_614_265_330 + 301, FIVE_MIN), Err(Rejected::Stale { age_secs: 301 })));
    }

    /// GitHub's documented example: secret "It's a Secret to Everybody", body "Hello, World!".
    #[test]
    fn the_github_documentation_example_verifies() {
        let sig = Signature::github("It's a Secret to Everybody");
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let h = headers(&[("x-hub-signature-256", expected.into()), ("x-github-delivery", "d-1".into())]);
        assert_eq!(sig.verify(&h, b"Hello, World!", NOW, FIVE_MIN), Ok(Verified { event_id: "d-1".into() }));
        assert_eq!(sig.sign("d-1", NOW, b"Hello, World!")[0].1, expected);
        assert_eq!(sig.verify(&h, b"Hello, World?", NOW, FIVE_MIN), Err(Rejected::Signature));
    }

    #[test]
    fn stripe_signatures_verify_with_their_timestamp_and_the_body_id() {
        let sig = Signature::stripe("whsec_test");
        let body = br#"{"id": "evt_1", "type": "charge.succeeded"}"#;
        let h = headers(&sig.sign("", NOW, body));
        assert_eq!(sig.verify(&h, body, NOW + 10, FIVE_MIN), Ok(Verified { event_id: "evt_1".into() }));
        assert!(matches!(sig.verify(&h, body, NOW + 600, FIVE_MIN), Err(Rejected::Stale { .. })));
        assert_eq!(Signature::stripe("other").verify(&h, body, NOW, FIVE_MIN), Err(Rejected::Signature));
        // A rolled secret: Stripe sends one v1 per active secret.
        let rolled = format!("{},v1={}", h["stripe-signature"].to_str().unwrap(), "00".repeat(32));
        let h2 = headers(&[("stripe-signature", rolled)]);
        assert!(sig.verify(&h2, body, NOW, FIVE_MIN).is_ok());
        let no_id = br#"{"type": "x"}"#;
        assert_eq!(sig.verify(&headers(&sig.sign("", NOW, no_id)), no_id, NOW, FIVE_MIN), Err(Rejected::NoEventId));
    }

    #[test]
    fn missing_headers_are_named_and_the_secret_is_never_shown() {
        let sig = Signature::standard_webhooks("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(sig.verify(&HeaderMap::new(), b"{}", NOW, FIVE_MIN), Err(Rejected::Header("webhook-id")));
        assert!(!format!("{sig:?}").contains("MfKQ"));
        assert!(!format!("{:?}", Signature::github("hunter2")).contains("hunter2"));
        assert!(Signature::standard_webhooks("whsec_not base64!").is_err());
    }
}
