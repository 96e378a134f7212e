//! `[amqp.<name>.slo]` / `[kafka.<name>.slo]`: a subscription's service-level objectives.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A subscription's objectives. The app exports them as metrics (`exactly_slo_*`), and
/// `exactly slo rules --config app.toml` prints the Prometheus rules and burn-rate alerts
/// that read them.
///
/// ```toml
/// [amqp.payments.slo]
/// settled_within = "5s"          # a message is settled this soon after it was published...
/// target = 0.999                 # ...for 99.9% of them (the error budget: 0.1%)
/// dead_letter_ratio_max = 0.001  # and at most 0.1% of settled messages are dead-lettered
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// How soon after its publish timestamp a message should be settled (handled,
    /// answered as a duplicate, or dead-lettered).
    #[serde(with = "humantime_serde")]
    pub settled_within: Duration,
    /// The share of settled messages that must be settled within that time (0 < target < 1).
    pub target: f64,
    /// The largest share of settled messages that may be dead-lettered (0 < ratio < 1).
    #[serde(default)]
    pub dead_letter_ratio_max: Option<f64>,
}

impl Slo {
    /// Why the objectives are unusable, if they are.
    pub(crate) fn problem(&self) -> Option<&'static str> {
        let share = |x: f64| x > 0.0 && x < 1.0;
        if self.settled_within.is_zero() {
            return Some("settled_within must be greater than zero");
        }
        if !share(self.target) {
            return Some("target must be between 0 and 1, such as 0.999");
        }
        if self.dead_letter_ratio_max.is_some_and(|r| !share(r)) {
            return Some("dead_letter_ratio_max must be between 0 and 1, such as 0.001");
        }
        None
    }
}
