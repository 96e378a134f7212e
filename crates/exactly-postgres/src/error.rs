//! PostgreSQL's errors as the store's: what may pass by itself (a restart, a lost
//! connection, a full pool, a deadlock) is `StoreUnavailable`, retried by the processor;
//! the rest (no permission, a missing table) stops the consumer with the database's words.

use exactly_core::Error;
use tokio_postgres::error::SqlState;

/// Whether the statement's failure may pass by itself.
pub(crate) fn is_transient(e: &tokio_postgres::Error) -> bool {
    let Some(code) = e.code() else {
        // Not an answer from the server: the connection failed or closed (an I/O error
        // underneath), or a value did not convert (a bug, not a passing state).
        return e.is_closed() || io_underneath(e);
    };
    let class = &code.code()[..2];
    // 08 connection exception, 53 insufficient resources, 57 operator intervention
    // (shutdown, statement timeout), 40 transaction rollback (serialization, deadlock).
    matches!(class, "08" | "53" | "57" | "40") || *code == SqlState::LOCK_NOT_AVAILABLE
}

fn io_underneath(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// A failed statement of `operation`.
pub(crate) fn db(operation: &'static str, e: tokio_postgres::Error) -> Error {
    if is_transient(&e) {
        Error::StoreUnavailable { operation, reason: one_line(&e) }
    } else {
        Error::StoreIo { operation, source: one_line(&e).into() }
    }
}

/// A connection the pool could not give.
pub(crate) fn pool(operation: &'static str, e: deadpool_postgres::PoolError) -> Error {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db(operation, e),
        deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => Error::StoreUnavailable {
            operation,
            reason: "every connection of the pool is busy (waited the connect timeout for one): \
                     a statement is stuck behind a lock, or pool_size is too small for the load"
                .into(),
        },
        other => Error::StoreUnavailable { operation, reason: format!("no database connection: {other}") },
    }
}

/// A store that could not be opened: `store` names it (URL without its password, schema).
pub(crate) fn open(store: &str, what: &str, e: tokio_postgres::Error) -> Error {
    let hint = match e.code() {
        Some(c) if *c == SqlState::INVALID_CATALOG_NAME => "; create the database, or name another in the URL",
        Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => {
            "; grant the role CREATE on the database (or create the schema as its owner)"
        }
        Some(c) if *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            "; check the user and password"
        }
        None => "; is PostgreSQL running there?",
        _ => "",
    };
    Error::StoreOpen { path: store.into(), reason: format!("cannot {what}: {}{hint}", one_line(&e)), source: None }
}

/// The error in one line: the server's message, or the connection's failure and its cause.
pub(crate) fn one_line(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.replace('\n', " ")
}
