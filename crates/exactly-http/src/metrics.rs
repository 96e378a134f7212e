//! The layer's metrics: requests by outcome, and the time the store adds to a request.

use std::time::Instant;

use crate::problem::Problem;

/// What became of a request the layer took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It ran and its response is stored.
    Fresh,
    /// A repeat, answered from the store.
    Replayed,
    /// It ran, but its response could not be stored (the store failed, or the lease was lost).
    Unrecorded,
    /// It ran and failed (5xx, a panic, an error, cancelled): its key is free again.
    Released,
    /// The first request with its key still runs: 409.
    InFlight,
    /// The key was used with another request: 422.
    Mismatch,
    /// Refused before running: no key, a malformed key, no principal, a body too large.
    Rejected,
    /// The store did not answer: 503.
    Unavailable,
    /// The stored response did not read back: 500.
    Unreadable,
    /// A crash cut off its key's first request, and such keys are not run again: 500.
    Unknown,
}

impl Outcome {
    pub(crate) fn of(problem: &Problem) -> Self {
        match problem {
            Problem::InFlight { .. } => Outcome::InFlight,
            Problem::Mismatch => Outcome::Mismatch,
            Problem::StoreUnavailable(_) => Outcome::Unavailable,
            Problem::Unreadable(_) => Outcome::Unreadable,
            Problem::BrokenResponse(_) => Outcome::Released,
            Problem::UnknownOutcome => Outcome::Unknown,
            Problem::MissingKey
            | Problem::MalformedKey(_)
            | Problem::NoPrincipal
            | Problem::TooLarge(_)
            | Problem::BadBody(_) => Outcome::Rejected,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Outcome::Fresh => "fresh",
            Outcome::Replayed => "replayed",
            Outcome::Unrecorded => "unrecorded",
            Outcome::Released => "released",
            Outcome::InFlight => "in_flight",
            Outcome::Mismatch => "mismatch",
            Outcome::Rejected => "rejected",
            Outcome::Unavailable => "unavailable",
            Outcome::Unreadable => "unreadable",
            Outcome::Unknown => "unknown_outcome",
        }
    }

    /// Counts one request in `exactly_http_requests_total`.
    pub(crate) fn count(self, namespace: &str) {
        metrics::counter!("exactly_http_requests_total", "namespace" => namespace.to_string(), "outcome" => self.label())
            .increment(1);
    }
}

/// Times one store call into `exactly_http_store_seconds{phase}`: the latency the layer adds.
pub(crate) struct Timer {
    namespace: String,
    phase: &'static str,
    started: Instant,
}

impl Timer {
    pub(crate) fn start(namespace: &str, phase: &'static str) -> Self {
        Self { namespace: namespace.to_string(), phase, started: Instant::now() }
    }

    pub(crate) fn stop(self) {
        metrics::histogram!("exactly_http_store_seconds", "namespace" => self.namespace, "phase" => self.phase)
            .record(self.started.elapsed().as_secs_f64());
    }
}
