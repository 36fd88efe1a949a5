//! Names the policy gives and header names it reads or writes.

use super::ConfigErrors;

/// Provider, set and rule names appear in stat names: letters, digits, `-`, `_`.
pub(super) fn check_name(name: &str, path: &str, errors: &mut ConfigErrors) {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        errors.push(
            path,
            "must be non-empty letters, digits, `-` or `_` (it appears in stat names)",
        );
    }
}

/// Header names apiguard may write or read: RFC 9110 tokens, stored lowercase, never a
/// pseudo-header or a hop-by-hop / routing header Envoy relies on.
pub(super) fn check_header_name(
    name: &str,
    path: &str,
    errors: &mut ConfigErrors,
) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if lower.is_empty() || !lower.chars().all(is_tchar) {
        errors.push(path, format!("`{name}` is not a valid header name"));
        return None;
    }
    if [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
    ]
    .contains(&lower.as_str())
    {
        errors.push(path, format!("`{name}` is reserved"));
        return None;
    }
    Some(lower)
}
