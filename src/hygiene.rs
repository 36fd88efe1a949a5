//! Request headers the upstream must never take from the client as they came.
//!
//! Upstream frameworks read headers under more names than their exact spelling: WSGI and CGI
//! map `x-apiguard-sub`, `X_APIGUARD_SUB` and `x_apiguard_sub` all to `HTTP_X_APIGUARD_SUB`,
//! so a header apiguard owns is stripped in every spelling that normalizes to it. Rails,
//! Symfony and Laravel execute a POST carrying `X-HTTP-Method-Override: DELETE` as a DELETE,
//! and IIS-style rewrites replace the path with `X-Original-URL`: both would make the
//! upstream act on a request apiguard never authorized.

use crate::policy::MethodOverride;
use crate::problem::Denial;

/// Headers frameworks take as the request's real method (Rack::MethodOverride, Symfony
/// `Request::getMethod`, Laravel, ASP.NET, express `method-override`).
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Headers IIS URL Rewrite and Symfony (`X-Original-URL`, `X-Rewrite-URL`) take as the
/// request's real path. Always removed: their only effect on an upstream is to replace the
/// path apiguard authorized.
pub const URL_OVERRIDE_HEADERS: [&str; 2] = ["x-original-url", "x-rewrite-url"];

/// True when `name` is `canonical` once case and `_`/`-` are ignored: the spellings a
/// CGI/WSGI upstream cannot tell apart. `canonical` is lowercase with `-`.
pub fn same_header(name: &str, canonical: &str) -> bool {
    name.len() == canonical.len()
        && name.bytes().zip(canonical.bytes()).all(|(a, b)| {
            let a = if a == b'_' {
                b'-'
            } else {
                a.to_ascii_lowercase()
            };
            a == b
        })
}

/// The names, as the client sent them, of every header that spells one of `owned` or a URL
/// override: these go before the upstream, on every route.
pub fn smuggled_headers(headers: &[(&str, &str)], owned: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (name, _) in headers {
        let hit = owned.iter().any(|o| same_header(name, o))
            || URL_OVERRIDE_HEADERS.iter().any(|u| same_header(name, u));
        if hit && !out.iter().any(|n| n == name) {
            out.push((*name).to_string());
        }
    }
    out
}

/// The method the upstream will act on: the request's own, or, under
/// `method_override: honor`, the override a POST carries (upper-cased, as the frameworks
/// do). Refused (400 `method_override`) when an override is present under `refuse`, on
/// anything but a POST, when several overrides disagree, or when it is not a method token.
pub fn effective_method<'a>(
    method: &'a str,
    headers: &[(&str, &str)],
    mode: MethodOverride,
) -> Result<std::borrow::Cow<'a, str>, Box<Denial>> {
    let mut overrides = headers
        .iter()
        .filter(|(n, _)| METHOD_OVERRIDE_HEADERS.iter().any(|m| same_header(n, m)))
        .map(|(_, v)| v.trim());
    let Some(first) = overrides.next() else {
        return Ok(std::borrow::Cow::Borrowed(method));
    };
    let refuse = |detail: &str| Err(Box::new(Denial::new(400, "method_override", detail)));
    match mode {
        MethodOverride::Refuse => refuse(
            "method override headers (X-HTTP-Method-Override, X-HTTP-Method, \
             X-Method-Override) are not accepted: send the method itself",
        ),
        MethodOverride::Honor => {
            if method != "POST" {
                return refuse("only a POST may carry a method override");
            }
            if !is_token(first) {
                return refuse("the method override is not a method name");
            }
            if overrides.any(|v| !v.eq_ignore_ascii_case(first)) {
                return refuse("the request carries conflicting method overrides");
            }
            Ok(std::borrow::Cow::Owned(first.to_ascii_uppercase()))
        }
    }
}

/// An RFC 9110 `token` (what a method is), bounded in length.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_that_normalize_alike_match() {
        for n in [
            "x-apiguard-sub",
            "x_apiguard_sub",
            "X_APIGUARD_SUB",
            "X-Apiguard_Sub",
        ] {
            assert!(same_header(n, "x-apiguard-sub"), "{n}");
        }
        for n in [
            "x-apiguard-subx",
            "x-apiguard",
            "xapiguardsub",
            "x.apiguard.sub",
        ] {
            assert!(!same_header(n, "x-apiguard-sub"), "{n}");
        }
    }

    #[test]
    fn smuggled_headers_lists_every_spelling_once() {
        let owned = vec!["x-user".to_string(), "x-jwt-payload".to_string()];
        let headers = [
            ("x_user", "admin"),
            ("x-user", "admin"),
            ("x-user", "again"),
            ("x_jwt_payload", "e30"),
            ("x_original_url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x-users", "kept"),
            ("accept", "*/*"),
        ];
        assert_eq!(
            smuggled_headers(&headers, &owned),
            [
                "x_user",
                "x-user",
                "x_jwt_payload",
                "x_original_url",
                "x-rewrite-url"
            ]
        );
    }

    #[test]
    fn overrides_are_refused_by_default_in_any_spelling() {
        for name in [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
            "x_http_method_override",
        ] {
            let h = [(name, "DELETE")];
            let d = effective_method("POST", &h, MethodOverride::Refuse)
                .err()
                .map(|d| (d.status, d.reason));
            assert_eq!(d, Some((400, "method_override")), "{name}");
        }
        let none: [(&str, &str); 1] = [("accept", "*/*")];
        assert_eq!(
            effective_method("POST", &none, MethodOverride::Refuse).ok(),
            Some("POST".into())
        );
    }

    #[test]
    fn honor_takes_the_override_of_a_post_only() {
        let h = [("x-http-method-override", " delete ")];
        assert_eq!(
            effective_method("POST", &h, MethodOverride::Honor).ok(),
            Some("DELETE".into())
        );
        assert!(effective_method("GET", &h, MethodOverride::Honor).is_err());
        let conflict = [
            ("x-http-method-override", "DELETE"),
            ("x-http-method", "PUT"),
        ];
        assert!(effective_method("POST", &conflict, MethodOverride::Honor).is_err());
        let agree = [
            ("x-http-method-override", "PUT"),
            ("x_method_override", "put"),
        ];
        assert_eq!(
            effective_method("POST", &agree, MethodOverride::Honor).ok(),
            Some("PUT".into())
        );
        for bad in ["", "DEL ETE", "GET\r\nX: y", "(DELETE)"] {
            let h = [("x-http-method", bad)];
            assert!(
                effective_method("POST", &h, MethodOverride::Honor).is_err(),
                "{bad:?}"
            );
        }
    }
}
