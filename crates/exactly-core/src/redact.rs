//! Keeping secrets out of logs, `Debug` output and error messages.

/// A URL (or a comma-separated list of them, with or without a scheme) with the password
/// of each user info replaced by `***` (`amqp://guest:***@host/%2f`); anything without one
/// comes back as it is.
///
/// ```
/// use exactly_core::redact::url;
/// assert_eq!(url("amqp://guest:secret@host/%2f"), "amqp://guest:***@host/%2f");
/// assert_eq!(url("postgres://app:s3cret@db:5432/orders?sslmode=require"), "postgres://app:***@db:5432/orders?sslmode=require");
/// assert_eq!(url("kafka-1:9092,kafka-2:9092"), "kafka-1:9092,kafka-2:9092");
/// ```
pub fn url(url: &str) -> String {
    url.split(',').map(one_url).collect::<Vec<_>>().join(",")
}

fn one_url(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let hidden = if userinfo.contains(':') { format!("{user}:***") } else { user.to_owned() };
            format!("{}{}{}", &url[..start], hidden, &rest[at..])
        }
        None => url.to_owned(),
    }
}

/// Whether a setting's name says its value is a secret (`sasl.password`,
/// `ssl.key.password`, `sasl.oauthbearer.client.secret`, an API token).
pub fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "token", "credential", "key.pem", "private"].iter().any(|s| name.contains(s))
        || name.ends_with(".key")
        || name.contains("sasl.jaas")
}

/// A setting's value as it may be shown: `***` for a secret one.
pub fn setting<'a>(name: &str, value: &'a str) -> &'a str {
    if is_secret(name) { "***" } else { value }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_and_keep_the_rest() {
        assert_eq!(url("amqp://guest:secret@host:5672/%2f"), "amqp://guest:***@host:5672/%2f");
        assert_eq!(url("amqp://host/%2f"), "amqp://host/%2f");
        assert_eq!(url("amqps://user@host"), "amqps://user@host");
        assert_eq!(url("amqp://u:p@ss@host"), "amqp://u:***@host");
        assert_eq!(url("not a url"), "not a url");
        assert_eq!(url("u:p@k1:9092,k2:9092"), "u:***@k1:9092,k2:9092");
    }

    #[test]
    fn secret_settings_are_told_by_name() {
        for s in ["sasl.password", "ssl.key.password", "sasl.oauthbearer.client.secret", "ssl.key.pem", "api.token"] {
            assert!(is_secret(s), "{s}");
            assert_eq!(setting(s, "x"), "***");
        }
        for s in ["bootstrap.servers", "group.id", "session.timeout.ms", "ssl.ca.location"] {
            assert!(!is_secret(s), "{s}");
        }
    }
}
