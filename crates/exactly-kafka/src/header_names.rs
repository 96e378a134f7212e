//! Header names the adapter writes on dead-letter records.

// The names every adapter writes.
pub use exactly_core::header_names::{
    ATTEMPTS, CONSUMER, DEAD_LETTER_ID, DEAD_LETTERED_AT, FIRST_ERROR, KEY, LAST_ERROR, REASON, REDRIVE,
};

/// The topic the record was consumed from.
pub const ORIGINAL_TOPIC: &str = "x-exactly-original-topic";
/// Its partition.
pub const ORIGINAL_PARTITION: &str = "x-exactly-original-partition";
/// Its offset.
pub const ORIGINAL_OFFSET: &str = "x-exactly-original-offset";
/// Its timestamp (ms since the epoch).
pub const ORIGINAL_TIMESTAMP: &str = "x-exactly-original-timestamp";
