//! Header names the adapter writes.

// The names every adapter writes.
pub use exactly_core::header_names::{
    ATTEMPTS, CONSUMER, DEAD_LETTER_ID, DEAD_LETTERED_AT, FIRST_ERROR, KEY, LAST_ERROR, REASON, REDRIVE,
};

/// The exchange the message was first published to.
pub const ORIGINAL_EXCHANGE: &str = "x-exactly-original-exchange";
/// The routing key it was first published with.
pub const ORIGINAL_ROUTING_KEY: &str = "x-exactly-original-routing-key";
/// The queue it was consumed from.
pub const ORIGINAL_QUEUE: &str = "x-exactly-original-queue";
/// On a reply: `true` when it was served from the cache (a duplicate request).
pub const CACHED: &str = "x-exactly-cached";
