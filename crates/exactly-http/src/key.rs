//! Reading the `Idempotency-Key` header: one structured-field string (RFC 9651), as the
//! draft (draft-ietf-httpapi-idempotency-key-header) defines it.

use http::HeaderMap;
use sfv::{BareItem, Item, Parser};

use crate::problem::Problem;

/// The header's name.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The key a request carries: `Ok(None)` without the header. With `unquoted`, a value that
/// is not a structured-field string is taken as it is (Stripe's form).
pub(crate) fn read(headers: &HeaderMap, max_len: usize, unquoted: bool) -> Result<Option<String>, Problem> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(Problem::MalformedKey("the header appears more than once".into()));
    }
    let bad = |why: &str| Problem::MalformedKey(why.to_string());
    // Structured fields are ASCII: anything else (invalid UTF-8 included) is refused here.
    let text = value.to_str().map_err(|_| bad("it holds bytes outside visible ASCII"))?;
    let key = match Parser::new(text).parse::<Item>() {
        Ok(Item { bare_item: BareItem::String(key), .. }) => key.as_str().to_owned(),
        _ if unquoted => text.trim().to_owned(),
        Ok(_) => return Err(bad("it is not a string (a string is in double quotes)")),
        Err(e) => return Err(bad(&format!("{e} (a string is in double quotes)"))),
    };
    if key.is_empty() {
        return Err(bad("it is empty"));
    }
    if key.len() > max_len {
        return Err(Problem::MalformedKey(format!("it is {} characters long, at most {max_len} are taken", key.len())));
    }
    Ok(Some(key))
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
        assert_eq!(read(&with(&[b"\"abc-1\""]), 255, false), Ok(Some("abc-1".into())));
        assert_eq!(read(&with(&[b"\"a \\\"q\\\"\""]), 255, false), Ok(Some("a \"q\"".into())));
        assert_eq!(read(&HeaderMap::new(), 255, false), Ok(None));
    }

    #[test]
    fn anything_else_is_malformed() {
        for bad in [&b"abc"[..], b"\"\"", b"12", b"\"unterminated", b"\"caf\xc3\xa9\"", b"\"a\", \"b\""] {
            let got = read(&with(&[bad]), 255, false);
            assert!(matches!(got, Err(Problem::MalformedKey(_))), "{:?}: {got:?}", String::from_utf8_lossy(bad));
        }
        assert!(matches!(read(&with(&[b"\"a\"", b"\"b\""]), 255, false), Err(Problem::MalformedKey(_))));
        let long = format!("\"{}\"", "k".repeat(256));
        assert!(
            matches!(read(&with(&[long.as_bytes()]), 255, false), Err(Problem::MalformedKey(m)) if m.contains("256"))
        );
    }

    #[test]
    fn unquoted_keys_are_taken_as_they_are_when_asked() {
        let uuid = b"8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert!(read(&with(&[uuid]), 255, false).is_err());
        assert_eq!(read(&with(&[uuid]), 255, true), Ok(Some(String::from_utf8(uuid.to_vec()).unwrap())));
        assert_eq!(read(&with(&[b"\"quoted\""]), 255, true), Ok(Some("quoted".into())));
        assert!(read(&with(&[b"caf\xc3\xa9"]), 255, true).is_err(), "still ASCII only");
        assert!(read(&with(&[&[b'k'; 256][..]]), 255, true).is_err(), "still bounded");
    }
}
