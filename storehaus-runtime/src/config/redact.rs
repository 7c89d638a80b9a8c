//! Cache URLs in messages: passwords replaced, and error details that could
//! repeat a piece of a URL with a password left out.

/// A redis-rs error about the cache URL `url`, for an error message. Its
/// detail can repeat a piece of the URL (an unknown `protocol=` value, say),
/// so it is left out when the URL holds a secret (when [`redact_url`]
/// changes it). Found by the `config_url` fuzz target (fuzz/).
#[cfg(feature = "redis")]
pub(crate) fn url_error(url: &str, e: &redis::RedisError) -> String {
    let text = e.to_string();
    match e.detail() {
        Some(detail) if !detail.is_empty() && redact_url(url) != url => {
            text.replace(detail, "(detail not shown: the URL holds a password)")
        }
        _ => text,
    }
}

/// Replaces every password in a cache URL with `***`: the password of
/// `scheme://user:password@host` (also without a scheme, and even when the
/// password holds unescaped `/`, `?`, `#` or `@`: everything up to the last
/// `@` is user info) and the `pass` / `password` query parameters of
/// `redis+unix://` URLs. A bare `scheme://secret@host` is redacted whole.
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    let after = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.find(':') {
                // A user name holds no `@`, `/`, `?` or `#`: one that seems
                // to is a bare password or a query followed by an `@`
                // further on (`redis://password@host/?name=a@b`,
                // `...?pass=secret&x=a:b@c`), and is redacted whole below.
                Some(colon) if !userinfo[..colon].contains(['@', '/', '?', '#']) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***");
                }
                None if userinfo.is_empty() => {}
                // `redis://password@host` is how some clients pass a bare password.
                _ => out.push_str("***"),
            }
            out.push('@');
            &rest[at + 1..]
        }
        None => rest,
    };
    let Some(q) = after.find('?') else {
        out.push_str(after);
        return out;
    };
    out.push_str(&after[..=q]);
    let query = &after[q + 1..];
    let (query, fragment) = match query.find('#') {
        Some(h) => query.split_at(h),
        None => (query, ""),
    };
    for (n, pair) in query.split('&').enumerate() {
        if n > 0 {
            out.push('&');
        }
        let name = pair.split('=').next().unwrap_or("");
        if name.eq_ignore_ascii_case("pass") || name.eq_ignore_ascii_case("password") {
            out.push_str(name);
            out.push_str("=***");
        } else {
            out.push_str(pair);
        }
    }
    out.push_str(fragment);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("redis://u:s3cret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("rediss://:s3cret@h"), "rediss://:***@h");
        assert_eq!(redact_url("redis://s3cret@h"), "redis://***@h");
        assert_eq!(redact_url("u:s3cret@h:1"), "u:***@h:1");
        assert_eq!(redact_url("redis://u:s3/c?r#e@t@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("rediss://h:1/#insecure"), "rediss://h:1/#insecure");
        assert_eq!(
            redact_url("redis+unix:///run/r.sock?db=1&pass=s3cret&user=u#x"),
            "redis+unix:///run/r.sock?db=1&pass=***&user=u#x"
        );
        assert_eq!(
            redact_url("unix:///r.sock?PASSWORD=s3cret"),
            "unix:///r.sock?PASSWORD=***"
        );
        let dbg = format!("{:?}", crate::CacheConfig::new("redis://u:s3cret@h", 1, "p"));
        assert!(!dbg.contains("s3cret"), "{dbg}");
    }

    #[test]
    #[cfg(feature = "redis")]
    fn a_url_error_repeats_no_piece_of_a_url_with_a_password() {
        let url = "redis://h/?protocol=x:s3cret@y";
        let e = redis::Client::open(url)
            .err()
            .map(|e| url_error(url, &e))
            .unwrap_or_default();
        assert!(!e.contains("s3cret"), "{e}");
        let plain = "redis://h/?protocol=nine";
        let e = redis::Client::open(plain)
            .err()
            .map(|e| url_error(plain, &e))
            .unwrap_or_default();
        assert!(
            e.is_empty() || e.contains("nine"),
            "without a password the detail is kept: {e}"
        );
    }

    #[test]
    fn a_bare_password_before_a_later_at_sign_is_redacted() {
        // Found by the `config_url` fuzz target (fuzz/): the first `:` came
        // after the password, so the password was kept as a "user name".
        assert_eq!(redact_url("redis://s3cret@h:6379/?name=a@b"), "redis://***@b");
        assert_eq!(redact_url("redis://s3cret@//a:b@h"), "redis://***@h");
        assert_eq!(redact_url("redis://me@corp:s3cret@h"), "redis://***@h");
        assert_eq!(
            redact_url("redis+unix:///r.sock?pass=s3cret&x=a:b@h"),
            "redis+unix://***@h"
        );
    }
}
