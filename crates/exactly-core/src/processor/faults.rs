//! Crash injection, so tests can stop processing where a real crash would.

/// A point in the processing of one message where a test can inject a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrashPoint {
    /// Claimed, handler not yet run.
    BeforeHandler,
    /// The handler ran (its external effects happened), the done-record is not written.
    AfterHandler,
    /// The done-record is durable, the broker has not been told.
    AfterDoneRecord,
    /// The broker was told (checked by the adapter or the in-memory broker).
    AfterAck,
}

/// Decides where to crash. `process` returns [`Error::InjectedCrash`](crate::Error::InjectedCrash)
/// at a point where this says yes; the caller must then behave as a crashed process:
/// acknowledge nothing, drop the processor, reopen the store.
pub trait FaultInjector: Send + Sync + std::fmt::Debug + 'static {
    /// Whether to crash at `point` while processing the message with key `key`.
    fn crash_at(&self, point: CrashPoint, key: Option<&str>) -> bool;
}
