//! Values between the store's types and PostgreSQL's columns.

use bytes::Bytes;
use exactly_core::store::{RecordState, RecordView};
use exactly_core::{Error, Fingerprint, Result, StoreKey};
use tokio_postgres::Row;

use crate::sql::{DEAD_LETTERED, DONE, IN_FLIGHT};

/// Milliseconds as PostgreSQL's `bigint`.
pub(crate) fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A `bigint` back to milliseconds (never negative here).
pub(crate) fn unms(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Text for a `text` column, which cannot hold NUL.
pub(crate) fn text(s: &str) -> String {
    s.replace('\0', "\u{fffd}")
}

pub(crate) fn fingerprint(raw: &[u8]) -> Fingerprint {
    let mut f = [0u8; 16];
    let n = raw.len().min(16);
    f[..n].copy_from_slice(&raw[..n]);
    Fingerprint(f)
}

/// A list column (`emitted`, `wrote`): postcard of the list, NULL for none.
pub(crate) fn encode_list<T: serde::Serialize>(items: &[T]) -> Result<Option<Vec<u8>>> {
    if items.is_empty() {
        return Ok(None);
    }
    postcard::to_stdvec(items).map(Some).map_err(|e| Error::StoreIo { operation: "encode", source: e.into() })
}

/// A list column read back; `what` names it in the error of one that does not decode.
pub(crate) fn decode_list<T: serde::de::DeserializeOwned>(
    key: &[u8],
    raw: Option<&[u8]>,
    what: &str,
) -> Result<Vec<T>> {
    match raw {
        None => Ok(Vec::new()),
        Some(raw) => postcard::from_bytes(raw).map_err(|e| Error::StoreCorrupt {
            key: StoreKey::from_bytes(key).map_or_else(|| format!("{key:?}"), |k| k.to_string()),
            reason: format!("{what}: {e}"),
        }),
    }
}

/// A record read with [`RECORD_COLUMNS`](crate::sql::RECORD_COLUMNS).
pub(crate) fn record(row: &Row) -> Result<RecordView> {
    let skey: Vec<u8> = row.get(0);
    let key = StoreKey::from_bytes(&skey)
        .ok_or_else(|| Error::StoreCorrupt { key: format!("{skey:?}"), reason: "not a store key".into() })?;
    let state_code: i16 = row.get(1);
    let token: i64 = row.get(2);
    let holder: i32 = row.get(3);
    let state = match state_code {
        IN_FLIGHT => RecordState::InFlight { token: token.unsigned_abs(), epoch: u64::from(holder.unsigned_abs()) },
        DONE => RecordState::Done {
            output: row.get::<_, Option<Vec<u8>>>(6).map(Bytes::from),
            emitted: decode_list(&skey, row.get::<_, Option<&[u8]>>(7), "emitted records")?,
        },
        DEAD_LETTERED => RecordState::DeadLettered { reason: row.get::<_, Option<String>>(8).unwrap_or_default() },
        other => {
            return Err(Error::StoreCorrupt { key: key.to_string(), reason: format!("unknown record state {other}") });
        }
    };
    let attempts: i32 = row.get(5);
    Ok(RecordView::new(
        key,
        state,
        fingerprint(row.get(4)),
        attempts.unsigned_abs(),
        unms(row.get(10)),
        unms(row.get(11)),
        row.get(9),
    )
    .with_wrote(decode_list(&skey, row.get::<_, Option<&[u8]>>(12), "state names written")?))
}

/// A record's state as `(state, output, emitted, reason)` columns.
pub(crate) type StateColumns = (i16, Option<Vec<u8>>, Option<Vec<u8>>, Option<String>);

pub(crate) fn state_columns(state: &RecordState) -> Result<StateColumns> {
    Ok(match state {
        RecordState::InFlight { .. } => (IN_FLIGHT, None, None, None),
        RecordState::Done { output, emitted } => {
            (DONE, output.as_ref().map(|o| o.to_vec()), encode_list(emitted)?, None)
        }
        RecordState::DeadLettered { reason } => (DEAD_LETTERED, None, None, Some(text(reason))),
    })
}
