//! Reading the `Idempotency-Key` header: one structured-field string (RFC 9651), as the
//! draft (draft-ietf-httpapi-idempotency-key-header) defines it.

use http::HeaderMap;
use sfv::{BareItem, Item, Parser};

use crate::problem::Problem;

/// The header's name.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The key a request carries: `Ok(None)` without the header.
pub(crate) fn read(headers: &HeaderMap, max_len: usize) -> Result<Option<String>, Problem> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(Problem::MalformedKey("the header appears more than once".into()));
    }
    let bad = |why: &str| Problem::MalformedKey(why.to_string());
    // Structured fields are ASCII: anything else (invalid UTF-8 included) is refused here.
    let text = value.to_str().map_err(|_| bad("it holds bytes outside visible ASCII"))?;
    let item: Item = Parser::new(text).parse().map_err(|e| bad(&format!("{e} (a string is in double quotes)")))?;
    let BareItem::String(key) = item.bare_item else {
        return Err(bad("it is not a string (a string is in double quotes)"));
    };
    let key = key.as_str();
    if key.is_empty() {
        return Err(bad("it is empty"));
    }
    if key.len() > max_len {
        return Err(Problem::MalformedKey(format!("it is {} characters long, at most {max_len} are taken", key.len())));
    }
    Ok(Some(key.to_string()))
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    use super::*;

    fn with(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(IDEMPOTENCY_KEY, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn a_quoted_string_is_the_key() {
        assert_eq!(read(&with(&[b"\"abc-1\""]), 255), Ok(Some("abc-1".into())));
        assert_eq!(read(&with(&[b"\"a \\\"q\\\"\""]), 255), Ok(Some("a \"q\"".into())));
        assert_eq!(read(&HeaderMap::new(), 255), Ok(None));
    }

    #[test]
    fn anything_else_is_malformed() {
        for bad in [&b"abc"[..], b"\"\"", b"12", b"\"unterminated", b"\"caf\xc3\xa9\"", b"\"a\", \"b\""] {
            let got = read(&with(&[bad]), 255);
            assert!(matches!(got, Err(Problem::MalformedKey(_))), "{:?}: {got:?}", String::from_utf8_lossy(bad));
        }
        assert!(matches!(read(&with(&[b"\"a\"", b"\"b\""]), 255), Err(Problem::MalformedKey(_))));
        let long = format!("\"{}\"", "k".repeat(256));
        assert!(matches!(read(&with(&[long.as_bytes()]), 255), Err(Problem::MalformedKey(m)) if m.contains("256")));
    }
}
