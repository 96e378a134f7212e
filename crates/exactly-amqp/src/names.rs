//! Header names the adapter writes.

/// Dead-letter reason (`decode`, `missing-key`, `retries-exhausted`, ...).
pub const REASON: &str = "x-exactly-reason";
/// Attempts made so far (on dead-letters and on retry copies).
pub const ATTEMPTS: &str = "x-exactly-attempts";
/// The first error seen.
pub const FIRST_ERROR: &str = "x-exactly-first-error";
/// The last error seen.
pub const LAST_ERROR: &str = "x-exactly-last-error";
/// The idempotency key, when there was one.
pub const KEY: &str = "x-exactly-key";
/// The consumer (key namespace) that dead-lettered the message.
pub const CONSUMER: &str = "x-exactly-consumer";
/// When the message was dead-lettered (ms since the epoch).
pub const DEAD_LETTERED_AT: &str = "x-exactly-dead-lettered-at";
/// The exchange the message was first published to.
pub const ORIGINAL_EXCHANGE: &str = "x-exactly-original-exchange";
/// The routing key it was first published with.
pub const ORIGINAL_ROUTING_KEY: &str = "x-exactly-original-routing-key";
/// The queue it was consumed from.
pub const ORIGINAL_QUEUE: &str = "x-exactly-original-queue";
/// On a reply: `true` when it was served from the cache (a duplicate request).
pub const CACHED: &str = "x-exactly-cached";
