//! CORS preflight recognition (`bypass_cors_preflight`).
//!
//! A browser sends a preflight before a cross-origin request it may not send directly:
//! `OPTIONS`, an `Origin`, an `Access-Control-Request-Method`, no body and never a
//! credential (Fetch standard, CORS-preflight request). It cannot carry a token, so an API
//! that requires one answers it 401/403 and the browser never sends the real request.
//! Envoy's jwt_authn has `bypass_cors_preflight` for this; this is apiguard's.
//!
//! A bypass must not open a way around authentication for a real `OPTIONS` request, so a
//! request is a preflight only if it has exactly that shape, carries nothing that looks
//! like a credential, and asks for a method a route serves at that path (checked by the
//! engine); a route that lists `OPTIONS` in `match.methods` makes `OPTIONS` a real
//! operation there and is never bypassed.

/// Headers that carry credentials whatever the policy's sources: a browser never sends
/// them on a preflight, so their presence means this is not one.
const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// The method a preflight asks for, when the request has a preflight's shape: `OPTIONS`
/// without a body, one `origin`, one `access-control-request-method` holding a method
/// token, and none of the credential headers. Header names are lowercase.
pub fn requested_method<'a>(
    method: &str,
    headers: &[(&'a str, &'a str)],
    end_of_stream: bool,
) -> Option<&'a str> {
    if method != "OPTIONS" || !end_of_stream {
        return None;
    }
    if headers.iter().any(|(n, _)| CREDENTIAL_HEADERS.contains(n)) {
        return None;
    }
    single(headers, "origin").filter(|o| !o.trim().is_empty())?;
    let requested = single(headers, "access-control-request-method")?.trim();
    is_method_token(requested).then_some(requested)
}

fn single<'a>(headers: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    let mut values = headers.iter().filter(|(n, _)| *n == name).map(|(_, v)| *v);
    match (values.next(), values.next()) {
        (Some(v), None) => Some(v),
        _ => None,
    }
}

/// RFC 9110 `token`: one or more tchars.
fn is_method_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFLIGHT: [(&str, &str); 2] = [
        ("origin", "https://app.example"),
        ("access-control-request-method", "DELETE"),
    ];

    #[test]
    fn a_preflight_names_the_requested_method() {
        assert_eq!(
            requested_method("OPTIONS", &PREFLIGHT, true),
            Some("DELETE")
        );
    }

    #[test]
    fn anything_else_is_not_a_preflight() {
        let with = |extra: (&'static str, &'static str)| {
            let mut h = PREFLIGHT.to_vec();
            h.push(extra);
            h
        };
        assert_eq!(requested_method("GET", &PREFLIGHT, true), None);
        assert_eq!(requested_method("options", &PREFLIGHT, true), None);
        assert_eq!(requested_method("OPTIONS", &PREFLIGHT, false), None, "body");
        assert_eq!(requested_method("OPTIONS", &PREFLIGHT[..1], true), None);
        assert_eq!(requested_method("OPTIONS", &PREFLIGHT[1..], true), None);
        for extra in [
            ("authorization", "Bearer x"),
            ("cookie", "session=1"),
            ("proxy-authorization", "Basic x"),
            ("origin", "https://other.example"),
            ("access-control-request-method", "GET"),
        ] {
            assert_eq!(
                requested_method("OPTIONS", &with(extra), true),
                None,
                "{extra:?}"
            );
        }
        let bad = [
            ("origin", "https://a"),
            ("access-control-request-method", "DE LETE"),
        ];
        assert_eq!(requested_method("OPTIONS", &bad, true), None);
        let empty = [("origin", " "), ("access-control-request-method", "GET")];
        assert_eq!(requested_method("OPTIONS", &empty, true), None);
    }
}
