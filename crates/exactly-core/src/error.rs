//! The crate's error type.

use std::path::PathBuf;

/// Errors from the store, the processor and configuration.
///
/// Each variant names the operation that failed. Handler failures are not errors of this
/// type: they are [`HandlerError`](crate::HandlerError)s that the processor turns into
/// retries or dead-letters.
///
/// `Debug` prints the message and its causes on one line (see [`error_line`]), so that
/// `fn main() -> Result<(), exactly::Error>` ends a failed run with text a person reads.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store could not be opened.
    #[error("cannot open the store at {path}: {reason}")]
    StoreOpen {
        /// The path given.
        path: PathBuf,
        /// What went wrong, and what to do about it.
        reason: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The store on disk was written by a newer version of `exactly`.
    #[error(
        "the store at {path} has format version {found}, this build reads up to {supported}; \
         upgrade exactly or point it at another store"
    )]
    StoreFormat {
        /// The path given.
        path: PathBuf,
        /// The version found on disk.
        found: u32,
        /// The newest version this build understands.
        supported: u32,
    },
    /// A read or write of the store failed.
    #[error("store {operation} failed: {source}")]
    StoreIo {
        /// The operation: `read`, `write`, `flush`, `fsync`, ...
        operation: &'static str,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store's files are damaged in a way that may have cost acknowledged records, so
    /// it was not opened (and nothing was changed on disk).
    #[error(
        "the store at {path} is damaged: {what} ({file}, byte {offset}); it was not opened, so nothing more is \
         lost. Run `exactly store --path {path} repair` to keep every record that can be read and see what was \
         cut, or restore the directory from a backup"
    )]
    StoreDamaged {
        /// The store directory.
        path: PathBuf,
        /// The damaged (or missing) file.
        file: PathBuf,
        /// Where in it.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A write is larger than the store takes.
    #[error("the store cannot take this write: {what}")]
    StoreLimit {
        /// What is over which limit.
        what: String,
    },
    /// A record in the store could not be decoded.
    #[error("store record for key {key:?} is corrupt: {reason}")]
    StoreCorrupt {
        /// The key whose record is unreadable.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An earlier write or fsync failed, so the store's durable state is unknown. Nothing
    /// more is acknowledged; restart the process to recover from what is on disk.
    #[error(
        "the store stopped accepting writes after an earlier failure ({cause}); \
         restart the consumer to recover from what is on disk"
    )]
    StorePoisoned {
        /// The failure that poisoned the store.
        cause: String,
    },
    /// The store could not be reached for now (a shared store across the network: the
    /// database restarting, a connection lost, a full pool). Nothing was decided: the
    /// processor retries the message later and pauses the consumer when it persists.
    #[error("store {operation} failed, the store is unreachable for now: {reason}")]
    StoreUnavailable {
        /// The operation: `claim`, `complete`, `read`, ...
        operation: &'static str,
        /// What went wrong, in one line.
        reason: String,
    },
    /// The store was closed.
    #[error("the store is closed")]
    StoreClosed,
    /// A configuration value is invalid.
    #[error("invalid configuration: {field}: {reason}")]
    Config {
        /// The field, as the user spells it.
        field: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A handler's store transaction cannot commit (it ended it itself, or a statement of
    /// it failed and the handler went on): the message is dead-lettered with reason
    /// `transaction-failed`.
    #[error("the handler's transaction cannot commit: {0}")]
    HandlerTransaction(String),
    /// A fault injected by a test (see the `testing` feature) stopped processing, as a
    /// crash would.
    #[error("injected crash at {0:?}")]
    InjectedCrash(crate::CrashPoint),
}

impl Error {
    /// Whether trying again later may succeed: the store was unreachable, not damaged.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::StoreUnavailable { .. })
    }

    pub(crate) fn io(operation: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::StoreIo { operation, source: Box::new(source) }
    }

    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config { field: field.into(), reason: reason.into() }
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&error_line(self))
    }
}

/// An error and its causes on one line, `what failed: why: root cause`, leaving out a
/// cause whose text the line already holds (wrappers that repeat their source).
///
/// ```
/// let e = std::io::Error::other("disk full");
/// let outer = exactly_core::Error::StoreIo { operation: "fsync", source: Box::new(e) };
/// assert_eq!(exactly_core::error_line(&outer), "store fsync failed: disk full");
/// assert_eq!(format!("{outer:?}"), "store fsync failed: disk full");
/// ```
pub fn error_line(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
