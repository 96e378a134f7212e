//! Header names the adapter writes on dead-letter records.

/// Dead-letter reason (`decode`, `missing-key`, `retries-exhausted`, ...).
pub const REASON: &str = "x-exactly-reason";
/// Attempts made.
pub const ATTEMPTS: &str = "x-exactly-attempts";
/// The first error seen.
pub const FIRST_ERROR: &str = "x-exactly-first-error";
/// The last error seen.
pub const LAST_ERROR: &str = "x-exactly-last-error";
/// The idempotency key, when there was one.
pub const KEY: &str = "x-exactly-key";
/// The consumer (key namespace) that dead-lettered the record.
pub const CONSUMER: &str = "x-exactly-consumer";
/// When it was dead-lettered (ms since the epoch).
pub const DEAD_LETTERED_AT: &str = "x-exactly-dead-lettered-at";
/// The topic the record was consumed from.
pub const ORIGINAL_TOPIC: &str = "x-exactly-original-topic";
/// Its partition.
pub const ORIGINAL_PARTITION: &str = "x-exactly-original-partition";
/// Its offset.
pub const ORIGINAL_OFFSET: &str = "x-exactly-original-offset";
/// Its timestamp (ms since the epoch).
pub const ORIGINAL_TIMESTAMP: &str = "x-exactly-original-timestamp";
