//! Per-message latency in the broker benches: from when a consumer has a message to when
//! it may acknowledge it. The bare and hand-rolled loops time that themselves; exactly's
//! consumers report it in their `exactly_processing_duration_seconds` histogram, read
//! here through a recorder the bench installs before any processor is made.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use metrics::{Counter, Gauge, Key, KeyName, Metadata, Recorder, SharedString, Unit};

use crate::report::{histogram, record};

/// The samples of the current run.
static SAMPLES: Mutex<Option<Histogram<u64>>> = Mutex::new(None);

/// Starts a run: drops the samples of the last one.
pub(crate) fn reset() {
    *SAMPLES.lock().unwrap_or_else(|p| p.into_inner()) = Some(histogram());
}

/// Adds one message's latency to the current run.
pub(crate) fn sample(d: Duration) {
    if let Some(h) = SAMPLES.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        record(h, d);
    }
}

/// The current run's samples.
pub(crate) fn take() -> Histogram<u64> {
    SAMPLES.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_else(histogram)
}

/// Installs the recorder that feeds exactly's processing histogram into [`sample`] (and
/// drops every other metric).
pub(crate) fn install() {
    // Only fails when a recorder is installed already (a second call): nothing to do then.
    let _ = metrics::set_global_recorder(Processing);
}

struct Processing;

struct Sink;

impl metrics::HistogramFn for Sink {
    fn record(&self, seconds: f64) {
        sample(Duration::from_secs_f64(seconds.max(0.0)));
    }
}

impl Recorder for Processing {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> metrics::Histogram {
        if key.name() == exactly::metrics::PROCESSING_DURATION {
            metrics::Histogram::from_arc(Arc::new(Sink))
        } else {
            metrics::Histogram::noop()
        }
    }
}
