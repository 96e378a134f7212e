//! Choosing where to crash.

use std::collections::HashMap;
use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{CrashPoint, FaultInjector};

#[derive(Debug)]
enum Plan {
    Nth { point: CrashPoint, nth: u64, seen: u64 },
    Random { rng: Box<StdRng>, probability: f64 },
    Never,
}

/// A [`FaultInjector`] that crashes once at the n-th visit of a point, or at random
/// points with a seeded generator (so a failing run can be replayed).
///
/// ```
/// use exactly_core::{CrashPoint, FaultInjector};
/// use exactly_core::testing::CrashPlan;
/// let plan = CrashPlan::nth(CrashPoint::AfterHandler, 2);
/// assert!(!plan.crash_at(CrashPoint::AfterHandler, None));
/// assert!(plan.crash_at(CrashPoint::AfterHandler, None));
/// assert!(!plan.crash_at(CrashPoint::AfterHandler, None), "only once");
/// ```
#[derive(Debug)]
pub struct CrashPlan {
    plan: Mutex<Plan>,
    crashes: Mutex<HashMap<CrashPoint, u64>>,
}

impl CrashPlan {
    /// Crash the `nth` time (from 1) `point` is reached, then never again.
    pub fn nth(point: CrashPoint, nth: u64) -> Self {
        Self::with(Plan::Nth { point, nth, seen: 0 })
    }

    /// Crash at each point with `probability`, drawn from a generator seeded with `seed`.
    pub fn random(seed: u64, probability: f64) -> Self {
        Self::with(Plan::Random { rng: Box::new(StdRng::seed_from_u64(seed)), probability })
    }

    /// Never crash.
    pub fn never() -> Self {
        Self::with(Plan::Never)
    }

    fn with(plan: Plan) -> Self {
        Self { plan: Mutex::new(plan), crashes: Mutex::new(HashMap::new()) }
    }

    /// Stops crashing.
    pub fn disarm(&self) {
        *self.plan.lock().unwrap_or_else(|p| p.into_inner()) = Plan::Never;
    }

    /// Crashes injected so far, per point.
    pub fn crashes(&self) -> HashMap<CrashPoint, u64> {
        self.crashes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl FaultInjector for CrashPlan {
    fn crash_at(&self, point: CrashPoint, _key: Option<&str>) -> bool {
        let crash = match &mut *self.plan.lock().unwrap_or_else(|p| p.into_inner()) {
            Plan::Nth { point: p, nth, seen } if *p == point => {
                *seen += 1;
                *seen == *nth
            }
            Plan::Random { rng, probability } => rng.random_bool(probability.clamp(0.0, 1.0)),
            _ => false,
        };
        if crash {
            *self.crashes.lock().unwrap_or_else(|p| p.into_inner()).entry(point).or_default() += 1;
        }
        crash
    }
}
