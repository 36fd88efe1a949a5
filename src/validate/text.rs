//! Small text helpers shared by the validators.

/// The longest piece of request text (a name) that ever goes into an error.
pub(crate) const MAX_ECHO_CHARS: usize = 64;

/// At most `max` characters of `s`, control characters dropped, `…` when cut.
pub(crate) fn clip(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().filter(|c| !c.is_control()).enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out
}

/// RFC 9110 `token` (header names, media type parts).
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The media type of a `Content-Type` value: parameters dropped, lowercase.
pub(crate) fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Whether `s` is `type/subtype` made of tokens.
pub(crate) fn is_media_type(s: &str) -> bool {
    match s.split_once('/') {
        Some((t, sub)) => is_token(t) && is_token(sub),
        None => false,
    }
}

/// Escapes one JSON Pointer reference token (RFC 6901).
pub(crate) fn pointer_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}
