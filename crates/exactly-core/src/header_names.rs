//! Header names the adapters write on dead-letters, shared by every broker.

/// Dead-letter reason (`decode`, `missing-key`, `retries-exhausted`, ...).
pub const REASON: &str = "x-exactly-reason";
/// Attempts made so far.
pub const ATTEMPTS: &str = "x-exactly-attempts";
/// The first error seen.
pub const FIRST_ERROR: &str = "x-exactly-first-error";
/// The last error seen.
pub const LAST_ERROR: &str = "x-exactly-last-error";
/// The dead letter's id: the same on every copy of one dead letter (`DeadLetter::id`).
pub const DEAD_LETTER_ID: &str = "x-exactly-dead-letter-id";
/// The idempotency key, when there was one.
pub const KEY: &str = "x-exactly-key";
/// The consumer (key namespace) that dead-lettered the message.
pub const CONSUMER: &str = "x-exactly-consumer";
/// When the message was dead-lettered (ms since the epoch).
pub const DEAD_LETTERED_AT: &str = "x-exactly-dead-lettered-at";
/// On a copy re-driven from the dead-letter destination: the key's dead-letter mark is
/// cleared and the handler runs again.
pub const REDRIVE: &str = crate::REDRIVE_HEADER;
