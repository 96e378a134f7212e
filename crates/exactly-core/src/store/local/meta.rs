//! What every backend does when it opens: check the format, bump the epoch.

use bytes::Bytes;

use crate::store::layout;
use crate::{Error, Result};

/// The meta values the store keeps for itself (not exported: the importing store has its own).
pub(crate) const OWN: [&str; 2] = ["format", "epoch"];

pub(crate) type MetaWrites = Vec<(Vec<u8>, Bytes)>;

/// Refuses a store whose format is newer than this build reads.
pub(crate) fn check_format(get: impl Fn(&[u8]) -> Result<Option<Bytes>>, path: &std::path::Path) -> Result<()> {
    if let Some(raw) = get(&layout::meta_key("format"))? {
        let found = raw
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| Error::StoreCorrupt { key: "meta:format".into(), reason: "not a u32".into() })?;
        if found > crate::store::FORMAT_VERSION {
            return Err(Error::StoreFormat { path: path.to_owned(), found, supported: crate::store::FORMAT_VERSION });
        }
    }
    Ok(())
}

/// Checks the format version and bumps the epoch: what every backend does when it opens.
/// Returns the new epoch and the meta writes to persist.
pub(crate) fn open_meta(
    get: impl Fn(&[u8]) -> Result<Option<Bytes>>,
    path: &std::path::Path,
) -> Result<(u64, MetaWrites)> {
    check_format(&get, path)?;
    let format_key = layout::meta_key("format");
    let mut writes = Vec::new();
    // A new store, or an older one upgraded in place (its records stay readable): a build
    // older than this one now refuses it rather than misreading newer records.
    if get(&format_key)?.is_none_or(|raw| raw.as_ref() != crate::store::FORMAT_VERSION.to_be_bytes()) {
        writes.push((format_key, Bytes::copy_from_slice(&crate::store::FORMAT_VERSION.to_be_bytes())));
    }
    let epoch_key = layout::meta_key("epoch");
    let epoch = match get(&epoch_key)? {
        Some(raw) => raw.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0) + 1,
        None => 1,
    };
    writes.push((epoch_key, Bytes::copy_from_slice(&epoch.to_be_bytes())));
    Ok((epoch, writes))
}
