//! Finding a bearer credential in a request, and removing it before the upstream.

use crate::percent::decode_lenient;
use crate::policy::TokenSource;

/// What one token source found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    None,
    Token(String),
    /// The same source twice (two `Authorization` headers, `?t=a&t=b`): refused, never guessed.
    Ambiguous,
}

/// Extracts the credential of one source. `headers` have lowercase names.
pub fn extract(source: &TokenSource, headers: &[(&str, &str)], query: &str) -> Found {
    match source {
        TokenSource::Header { name, prefix } => {
            let mut values = headers.iter().filter(|(n, _)| n == name).map(|(_, v)| *v);
            let (Some(value), None) = (values.next(), values.next()) else {
                return if headers.iter().any(|(n, _)| n == name) {
                    Found::Ambiguous
                } else {
                    Found::None
                };
            };
            // Envoy joins repeated headers of some names with commas.
            if value.contains(',') {
                return Found::Ambiguous;
            }
            let token = match prefix {
                None => value.trim(),
                Some(p) => match strip_prefix_ignore_case(value, p) {
                    Some(rest) => rest.trim(),
                    // Another scheme (e.g. `Basic`) is not ours to judge.
                    None => return Found::None,
                },
            };
            if token.is_empty() {
                Found::None
            } else {
                Found::Token(token.to_string())
            }
        }
        TokenSource::Query(param) => {
            let mut hits = query_pairs(query)
                .filter(|(k, _)| k == param)
                .map(|(_, v)| v);
            match (hits.next(), hits.next()) {
                (Some(v), None) if !v.is_empty() => Found::Token(v),
                (Some(_), Some(_)) => Found::Ambiguous,
                _ => Found::None,
            }
        }
        TokenSource::Cookie(name) => {
            let mut hits = cookies(headers).filter(|(k, _)| k == name).map(|(_, v)| v);
            match (hits.next(), hits.next()) {
                (Some(v), None) if !v.is_empty() => Found::Token(v.to_string()),
                (Some(_), Some(_)) => Found::Ambiguous,
                _ => Found::None,
            }
        }
    }
}

/// True when a header value is this source's kind of credential: any value when the source
/// has no scheme prefix, else a value starting with it (`Basic ...` is not a `Bearer `
/// source's credential).
pub fn is_credential_value(source: &TokenSource, value: &str) -> bool {
    match source {
        TokenSource::Header {
            prefix: Some(p), ..
        } => strip_prefix_ignore_case(value, p).is_some(),
        _ => true,
    }
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        value.get(prefix.len()..)
    } else {
        None
    }
}

/// `k=v` pairs of a query string, percent-decoded (`+` is left alone: JWTs never hold it).
/// A malformed escape stays as written (`crate::percent`), so `t%zz` is never `t`.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (
            decode_lenient(k).into_owned(),
            decode_lenient(v).into_owned(),
        )
    })
}

fn cookies<'a>(headers: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    headers
        .iter()
        .filter(|(n, _)| *n == "cookie")
        .flat_map(|(_, v)| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
}

/// The `:path` without the query parameters `params`; `None` when none of them is there.
pub fn path_without_query_params(path: &str, query: &str, params: &[&str]) -> Option<String> {
    let is_listed = |p: &&str| {
        let name = decode_lenient(p.split_once('=').map_or(p, |(k, _)| k));
        params.iter().any(|x| *x == name)
    };
    let pairs = || query.split('&').filter(|p| !p.is_empty());
    if params.is_empty() || !pairs().any(|p| is_listed(&p)) {
        return None;
    }
    let kept: Vec<&str> = pairs().filter(|p| !is_listed(p)).collect();
    Some(if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    })
}

/// What removing some cookies does to the `cookie` header.
#[derive(Debug, PartialEq, Eq)]
pub enum CookieEdit {
    /// None of them was there.
    Unchanged,
    /// The remaining cookies, joined into one header.
    Set(String),
    /// Nothing is left.
    Remove,
}

/// The `cookie` header(s) without the cookies `names`.
pub fn cookie_header_without(headers: &[(&str, &str)], names: &[&str]) -> CookieEdit {
    if names.is_empty() || !cookies(headers).any(|(k, _)| names.contains(&k)) {
        return CookieEdit::Unchanged;
    }
    let kept: Vec<String> = cookies(headers)
        .filter(|(k, _)| !names.contains(k))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if kept.is_empty() {
        CookieEdit::Remove
    } else {
        CookieEdit::Set(kept.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        pairs.to_vec()
    }

    fn bearer() -> TokenSource {
        TokenSource::Header {
            name: "authorization".into(),
            prefix: Some("Bearer ".into()),
        }
    }

    #[test]
    fn header_prefix_is_case_insensitive() {
        for v in ["Bearer abc", "bearer abc", "BEARER abc", "Bearer  abc "] {
            assert_eq!(
                extract(&bearer(), &h(&[("authorization", v)]), ""),
                Found::Token("abc".into())
            );
        }
        assert_eq!(
            extract(&bearer(), &h(&[("authorization", "Basic abc")]), ""),
            Found::None
        );
        assert_eq!(
            extract(&bearer(), &h(&[("authorization", "Bearer ")]), ""),
            Found::None
        );
        assert_eq!(extract(&bearer(), &h(&[]), ""), Found::None);
    }

    #[test]
    fn duplicates_are_ambiguous() {
        let hs = h(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert_eq!(extract(&bearer(), &hs, ""), Found::Ambiguous);
        let hs = h(&[("authorization", "Bearer a, Bearer b")]);
        assert_eq!(extract(&bearer(), &hs, ""), Found::Ambiguous);
        assert_eq!(
            extract(&TokenSource::Query("t".into()), &[], "t=a&t=b"),
            Found::Ambiguous
        );
        let hs = h(&[("cookie", "s=a"), ("cookie", "s=b")]);
        assert_eq!(
            extract(&TokenSource::Cookie("s".into()), &hs, ""),
            Found::Ambiguous
        );
    }

    #[test]
    fn a_sign_is_no_hex_digit() {
        let pairs: Vec<_> = query_pairs("t%+1=a&u=%2B%-1").collect();
        assert_eq!(
            pairs,
            [("t%+1".into(), "a".into()), ("u".into(), "+%-1".into())]
        );
    }

    #[test]
    fn query_and_cookie_sources() {
        assert_eq!(
            extract(
                &TokenSource::Query("access_token".into()),
                &[],
                "a=1&access_token=x.y.z"
            ),
            Found::Token("x.y.z".into())
        );
        let hs = h(&[("cookie", "a=1; session=x.y.z; b=2")]);
        assert_eq!(
            extract(&TokenSource::Cookie("session".into()), &hs, ""),
            Found::Token("x.y.z".into())
        );
    }

    #[test]
    fn credential_removal() {
        assert_eq!(
            path_without_query_params("/p", "a=1&t=x&b=2", &["t"]).as_deref(),
            Some("/p?a=1&b=2")
        );
        assert_eq!(
            path_without_query_params("/p", "t=x&k=y&a=1", &["t", "k"]).as_deref(),
            Some("/p?a=1")
        );
        assert_eq!(
            path_without_query_params("/p", "t=x", &["t"]).as_deref(),
            Some("/p")
        );
        assert_eq!(path_without_query_params("/p", "a=1", &["t"]), None);
        assert_eq!(path_without_query_params("/p", "t=1", &[]), None);
        let hs = h(&[("cookie", "a=1; session=x; sid=y")]);
        assert_eq!(
            cookie_header_without(&hs, &["session", "sid"]),
            CookieEdit::Set("a=1".into())
        );
        assert_eq!(cookie_header_without(&hs, &["b"]), CookieEdit::Unchanged);
        let hs = h(&[("cookie", "session=x"), ("cookie", "sid=y")]);
        assert_eq!(
            cookie_header_without(&hs, &["session", "sid"]),
            CookieEdit::Remove
        );
    }

    #[test]
    fn credential_values_follow_the_scheme_prefix() {
        assert!(is_credential_value(&bearer(), "bearer x"));
        assert!(!is_credential_value(&bearer(), "Basic dXNlcjpwYXNz"));
        let plain = TokenSource::Header {
            name: "x-api-key".into(),
            prefix: None,
        };
        assert!(is_credential_value(&plain, "anything"));
    }

    #[test]
    fn percent_decoding_never_panics() {
        let pairs: Vec<_> = query_pairs("%41%4=%zz%&t=%e2%82%ac&%=%1").collect();
        assert_eq!(
            pairs,
            [
                ("A%4".into(), "%zz%".into()),
                ("t".into(), "€".into()),
                ("%".into(), "%1".into())
            ]
        );
    }
}
