//! gRPC: which requests are gRPC, what a denial says to a gRPC client, and `match.grpc`.
//!
//! A gRPC client reads `grpc-status` and `grpc-message`, not the HTTP status or a
//! problem+json body: a denial of a gRPC call is a trailers-only response whose status
//! code tells the client whether to retry (UNAVAILABLE) or not (RESOURCE_EXHAUSTED,
//! PERMISSION_DENIED, ...).
//!
//! apiguard writes that response whole (HTTP 200, `grpc-status`, percent-encoded
//! `grpc-message`, no body) instead of leaving it to Envoy, because Envoy decides whether
//! a local reply is gRPC from the request's content-type as it arrived: a gRPC-Web call
//! that Envoy's `grpc_web` filter converted is not gRPC to it, and the `grpc_web` filter
//! then derives `grpc-status` from the HTTP status with Envoy's generic mapping (429 →
//! UNAVAILABLE). A response that already carries `grpc-status` passes both untouched.

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

use crate::policy::raw::RawMatch;
use crate::policy::ConfigErrors;
use crate::problem::Denial;
use crate::routes::PathMatch;
use crate::validate::RawValidate;

/// gRPC status codes (grpc/doc/statuscodes.md) apiguard answers with.
pub mod code {
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// Whether a request is a gRPC call by its content-type: `application/grpc[+...]` as Envoy
/// judges it (`Grpc::Common::hasGrpcContentType`: case-sensitive, then the end or `+`),
/// or gRPC-Web `application/grpc-web[-text][+...]` reaching apiguard unconverted.
pub fn is_grpc(content_type: Option<&str>) -> bool {
    let Some(rest) = content_type.and_then(|c| c.strip_prefix("application/grpc")) else {
        return false;
    };
    let rest = rest.strip_prefix("-web").unwrap_or(rest);
    let rest = rest.strip_prefix("-text").unwrap_or(rest);
    rest.is_empty() || rest.starts_with('+')
}

/// The gRPC status a denial maps to. By HTTP status, except where the reason says more.
pub fn status_code(d: &Denial) -> i32 {
    match d.status {
        401 => code::UNAUTHENTICATED,
        // Includes `no_route`: the policy refuses the call. UNIMPLEMENTED would claim the
        // server lacks the method, which apiguard does not know.
        403 => code::PERMISSION_DENIED,
        // Rate limits and oversized messages: gRPC's own code for both (servers answer
        // RESOURCE_EXHAUSTED to a message over their size limit). Clients and Envoy retry
        // policies do not retry it by default, so a limit does not multiply load.
        429 | 413 => code::RESOURCE_EXHAUSTED,
        // The request itself is malformed: ambiguous path, invalid metadata, URL or
        // metadata too large, wrong content type. Retrying the same call cannot help.
        400 | 414 | 415 | 431 => code::INVALID_ARGUMENT,
        404 => code::UNIMPLEMENTED,
        // `jwks_unavailable`: the keys are loading; a retry is right.
        502..=504 => code::UNAVAILABLE,
        500 => code::INTERNAL,
        _ => code::UNKNOWN,
    }
}

/// At most this many bytes of `grpc-message` (before percent-encoding): a short sentence,
/// not a document.
const MAX_MESSAGE_BYTES: usize = 200;

/// `reason: detail`, plus where the first validation error is. Only apiguard's fixed
/// strings and the policy's names: never request data beyond what the problem body holds.
pub fn message(d: &Denial) -> String {
    let mut m = format!("{}: {}", d.reason, d.detail);
    let first_error = d
        .extensions
        .iter()
        .find(|(k, _)| *k == "errors")
        .and_then(|(_, v)| v.as_array())
        .and_then(|a| a.first());
    if let Some(e) = first_error {
        // A body-wide error has an empty pointer: name only what is there.
        let where_and_rule: Vec<&str> = ["pointer", "rule"]
            .iter()
            .filter_map(|k| e.get(*k).and_then(|v| v.as_str()))
            .filter(|v| !v.is_empty())
            .collect();
        if !where_and_rule.is_empty() {
            m.push_str(&format!(" ({})", where_and_rule.join(" ")));
        }
    }
    truncate(&mut m, MAX_MESSAGE_BYTES);
    m
}

fn truncate(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
}

/// Bytes the gRPC HTTP/2 spec lets through unencoded in `grpc-message`: space and visible
/// ASCII except `%` (`CONTROLS` covers 0x00-0x1F and 0x7F; non-ASCII is always encoded).
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// `grpc-message` as it goes on the wire.
pub fn percent_encode(message: &str) -> String {
    utf8_percent_encode(message, GRPC_MESSAGE).to_string()
}

/// What the glue sends for a denied gRPC call: HTTP 200, no body, these headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Also passed as the local reply's gRPC status argument, which Envoy would use if it
    /// set `grpc-status` itself.
    pub grpc_status: i32,
    /// `grpc-status`, `grpc-message`, `grpc-status-details-bin` (rich error model), and
    /// `WWW-Authenticate`, `Retry-After`, `RateLimit*`.
    pub headers: Vec<(String, String)>,
}

pub fn reply(d: &Denial) -> Reply {
    let grpc_status = status_code(d);
    let msg = message(d);
    let mut headers = vec![
        ("grpc-status".to_string(), grpc_status.to_string()),
        ("grpc-message".to_string(), percent_encode(&msg)),
        (
            "grpc-status-details-bin".to_string(),
            crate::grpc_details::status_details_bin(d, grpc_status, &msg),
        ),
    ];
    if let Some(w) = &d.www_authenticate {
        headers.push(("www-authenticate".to_string(), w.clone()));
    }
    if let Some(s) = d.retry_after_secs {
        headers.push(("retry-after".to_string(), s.to_string()));
    }
    headers.extend(d.headers.iter().cloned());
    Reply {
        grpc_status,
        headers,
    }
}

/// `match.grpc`: a service (`pkg.Svc`) and optionally one of its methods (`Get`), as the
/// path `/pkg.Svc/Get` gRPC calls use. Every gRPC call is a POST.
pub fn route_path(service: &str, method: Option<&str>) -> Result<PathMatch, String> {
    if !is_full_name(service) {
        return Err(format!(
            "`{service}` is not a gRPC service name (`package.Service`: dot-separated identifiers of letters, digits and `_`)"
        ));
    }
    match method {
        None => Ok(PathMatch::GrpcService(service.to_string())),
        Some(m) if is_identifier(m) => Ok(PathMatch::Exact(format!("/{service}/{m}"))),
        Some(m) => Err(format!(
            "`{m}` is not a gRPC method name (an identifier: letters, digits and `_`, not starting with a digit)"
        )),
    }
}

/// Checks a route whose `match` has `grpc`: the names, nothing HTTP-only beside them, and
/// no JSON body rules. `path` is the route's JSON path (`routes[2]`).
pub fn compile_match(
    m: &RawMatch,
    validate: Option<&RawValidate>,
    path: &str,
) -> Result<PathMatch, ConfigErrors> {
    let mut errors = ConfigErrors::new();
    let Some(g) = &m.grpc else {
        errors.push(format!("{path}.match.grpc"), "missing");
        return Err(errors);
    };
    if m.path.is_some() || m.prefix.is_some() || m.methods.is_some() {
        errors.push(
            format!("{path}.match"),
            "`grpc` names the call by service and method; it cannot be combined with `path`, `prefix` or `methods` (gRPC calls are POST /package.Service/Method)",
        );
    }
    let body = validate.and_then(|v| v.body.as_ref());
    let json_only = |b: &crate::validate::RawBody| {
        b.schema.is_some()
            || b.max_depth.is_some()
            || b.content_types.is_some()
            || b.allow_case_variant_keys
            || b.format_assertion
    };
    if body.is_some_and(json_only) {
        errors.push(
            format!("{path}.validate.body"),
            "a gRPC route carries protobuf messages, not JSON: `schema`, `max_depth`, `content_types`, `allow_case_variant_keys` and `format_assertion` do not apply (only `max_bytes` does; protobuf message validation is not supported)",
        );
    }
    if !is_full_name(&g.service) {
        errors.push(
            format!("{path}.match.grpc.service"),
            format!("`{}` is not a gRPC service name (`package.Service`: dot-separated identifiers of letters, digits and `_`)", g.service),
        );
    }
    if let Some(method) = g.method.as_deref().filter(|m| !is_identifier(m)) {
        errors.push(
            format!("{path}.match.grpc.method"),
            format!("`{method}` is not a gRPC method name (an identifier: letters, digits and `_`, not starting with a digit)"),
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    route_path(&g.service, g.method.as_deref()).map_err(|e| {
        errors.push(format!("{path}.match.grpc"), e);
        errors
    })
}

/// A limit's `cost.methods` key: an HTTP method (upper-cased) or a gRPC method
/// `package.Service/Method` (kept as written: gRPC names are case-sensitive).
pub fn cost_key(key: &str) -> Result<String, String> {
    match key.split_once('/') {
        None => Ok(key.to_ascii_uppercase()),
        Some((service, method)) if is_full_name(service) && is_identifier(method) => {
            Ok(key.to_string())
        }
        Some(_) => Err(format!(
            "`{key}` is neither an HTTP method nor a gRPC method `package.Service/Method`"
        )),
    }
}

/// A protobuf identifier: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A fully-qualified protobuf name: identifiers joined by `.`.
fn is_full_name(s: &str) -> bool {
    s.split('.').all(is_identifier)
}

/// Whether `path` is a call of some method of `service`: `/service/Method`, one
/// non-empty segment after the service.
pub fn is_service_call(service: &str, path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(service))
        .and_then(|p| p.strip_prefix('/'))
        .is_some_and(|m| !m.is_empty() && !m.contains('/'))
}

/// `is_service_call` with the service compared ignoring ASCII case (lookalike requests).
pub fn is_service_call_folded(service: &str, path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .is_some_and(|(s, m)| s.eq_ignore_ascii_case(service) && !m.is_empty() && !m.contains('/'))
}

/// The `pkg.Svc/Method` of a gRPC call's path, for per-method costs.
pub fn full_method(path: &str) -> Option<&str> {
    let m = path.strip_prefix('/')?;
    let (service, method) = m.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some(m)
}

/// `pkg.Svc/Method` of a gRPC (or gRPC-Web) call, None for any other request.
pub fn call_method<'a>(raw_path: &'a str, headers: &[(&str, &str)]) -> Option<&'a str> {
    let content_type = headers
        .iter()
        .find(|(n, _)| *n == "content-type")
        .map(|(_, v)| *v);
    if !is_grpc(content_type) {
        return None;
    }
    full_method(crate::routes::split_query(raw_path).0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn grpc_by_envoys_content_type_rule() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc+json",
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpc-web-text",
            "application/grpc-web-text+proto",
        ] {
            assert!(is_grpc(Some(ct)), "{ct}");
        }
        for ct in [
            "application/json",
            "application/grpcx",
            "application/grpc-webx",
            "Application/GRPC",
            // Not gRPC to Envoy either: its local reply would be plain HTTP.
            "application/grpc;charset=utf-8",
            "text/application/grpc",
        ] {
            assert!(!is_grpc(Some(ct)), "{ct}");
        }
        assert!(!is_grpc(None));
    }

    #[test]
    fn status_table() {
        let cases = [
            (401, "missing_credentials", code::UNAUTHENTICATED),
            (403, "insufficient_scope", code::PERMISSION_DENIED),
            (403, "no_route", code::PERMISSION_DENIED),
            (429, "rate_limited", code::RESOURCE_EXHAUSTED),
            (400, "invalid_header", code::INVALID_ARGUMENT),
            (400, "ambiguous_path", code::INVALID_ARGUMENT),
            (413, "body_too_large", code::RESOURCE_EXHAUSTED),
            (414, "url_too_long", code::INVALID_ARGUMENT),
            (415, "unsupported_media_type", code::INVALID_ARGUMENT),
            (431, "header_too_large", code::INVALID_ARGUMENT),
            (503, "jwks_unavailable", code::UNAVAILABLE),
            (404, "x", code::UNIMPLEMENTED),
            (418, "x", code::UNKNOWN),
        ];
        for (status, reason, want) in cases {
            assert_eq!(
                status_code(&Denial::new(status, reason, "d")),
                want,
                "{status}"
            );
        }
    }

    #[test]
    fn message_is_short_and_names_the_first_error() {
        let d = Denial::new(429, "rate_limited", "rate limit `calls` exceeded");
        assert_eq!(message(&d), "rate_limited: rate limit `calls` exceeded");
        let mut d = Denial::new(400, "invalid_header", "a request header is invalid");
        d.extensions.push((
            "errors",
            json!([{"pointer": "header/x-tenant", "rule": "required", "message": "m"},
                   {"pointer": "header/y", "rule": "pattern", "message": "m"}]),
        ));
        assert_eq!(
            message(&d),
            "invalid_header: a request header is invalid (header/x-tenant required)"
        );
        let mut d = Denial::new(413, "body_too_large", "the request body is too large");
        d.extensions.push((
            "errors",
            json!([{"pointer": "", "rule": "maxBytes", "message": "m"}]),
        ));
        assert_eq!(
            message(&d),
            "body_too_large: the request body is too large (maxBytes)"
        );
        let d = Denial::new(400, "x", "é".repeat(300));
        let m = message(&d);
        assert!(m.len() <= MAX_MESSAGE_BYTES && m.ends_with('é'));
    }

    #[test]
    fn percent_encoding_per_the_grpc_spec() {
        assert_eq!(percent_encode("a b:c`d`~"), "a b:c`d`~");
        assert_eq!(percent_encode("100%"), "100%25");
        assert_eq!(percent_encode("é\n"), "%C3%A9%0A");
    }

    #[test]
    fn replies_carry_the_status_and_the_denials_headers() {
        let mut d = Denial::missing_credentials("apiguard");
        d.retry_after_secs = Some(3);
        d.headers.push(("ratelimit".into(), "x".into()));
        let r = reply(&d);
        assert_eq!(r.grpc_status, code::UNAUTHENTICATED);
        assert_eq!(
            r.headers[..2],
            [
                ("grpc-status".to_string(), "16".to_string()),
                (
                    "grpc-message".to_string(),
                    "missing_credentials: a bearer token is required".to_string()
                )
            ]
        );
        assert!(r.headers.iter().all(|(k, _)| k != "content-type"));
        assert!(r.headers.contains(&(
            "www-authenticate".into(),
            "Bearer realm=\"apiguard\"".into()
        )));
        assert!(r.headers.contains(&("retry-after".into(), "3".into())));
        assert!(r.headers.contains(&("ratelimit".into(), "x".into())));
        let r = reply(&Denial::new(403, "no_route", "100% no"));
        assert!(r
            .headers
            .contains(&("grpc-message".into(), "no_route: 100%25 no".into())));
    }

    #[test]
    fn grpc_route_names() {
        assert_eq!(
            route_path("pkg.v1.Svc", Some("Get")).unwrap(),
            PathMatch::Exact("/pkg.v1.Svc/Get".into())
        );
        assert_eq!(
            route_path("Svc", None).unwrap(),
            PathMatch::GrpcService("Svc".into())
        );
        for bad in [
            "", "pkg.", ".Svc", "pkg..Svc", "pkg/Svc", "1pkg.Svc", "pkg.S-v",
        ] {
            assert!(route_path(bad, None).is_err(), "{bad}");
        }
        for bad in ["", "G et", "Get/x", "1Get", "*"] {
            assert!(route_path("pkg.Svc", Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_calls_are_one_method_segment() {
        assert!(is_service_call("pkg.Svc", "/pkg.Svc/Get"));
        assert!(is_service_call_folded("pkg.Svc", "/PKG.svc/Get"));
        assert!(!is_service_call_folded("pkg.Svc", "/PKG.svc/a/b"));
        for p in [
            "/pkg.Svc",
            "/pkg.Svc/",
            "/pkg.Svc/a/b",
            "/pkg.SvcX/Get",
            "/x/pkg.Svc/Get",
        ] {
            assert!(!is_service_call("pkg.Svc", p), "{p}");
        }
        assert_eq!(full_method("/pkg.Svc/Get"), Some("pkg.Svc/Get"));
        assert_eq!(full_method("/pkg.Svc/a/b"), None);
        assert_eq!(full_method("/items"), None);
        let grpc = [("content-type", "application/grpc")];
        assert_eq!(call_method("/pkg.Svc/Get", &grpc), Some("pkg.Svc/Get"));
        assert_eq!(
            call_method("/items/x", &[("content-type", "text/plain")]),
            None
        );
    }

    #[test]
    fn cost_keys() {
        assert_eq!(cost_key("post").unwrap(), "POST");
        assert_eq!(cost_key("pkg.Svc/Get").unwrap(), "pkg.Svc/Get");
        assert!(cost_key("pkg.Svc/").is_err());
        assert!(cost_key("/pkg.Svc/Get").is_err());
    }
}

#[cfg(test)]
mod policy_tests {
    //! `match.grpc` and gRPC method costs through the real policy compiler and engine.
    use crate::engine::test_request::TestRequest;
    use crate::engine::{Engine, Metrics, Verdict};
    use crate::host::fake::{FakeClock, FakeStore};
    use crate::policy::Policy;
    use serde_json::{json, Value};
    use std::rc::Rc;

    fn compile(v: Value) -> Result<Policy, Vec<String>> {
        Policy::from_json(v.to_string().as_bytes())
            .map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    fn policy() -> Value {
        json!({
            "limits": [{"name": "calls", "capacity": 10, "key": [{"constant": "all"}],
                        "cost": {"default": 1, "methods": {"demo.v1.Items/List": 5}}}],
            "routes": [
                {"name": "get", "match": {"grpc": {"service": "demo.v1.Items", "method": "Get"}},
                 "public": true, "limits": ["calls"],
                 "validate": {"headers": {"x-tenant": {"required": true}}, "body": {"max_bytes": 100}}},
                {"name": "items", "match": {"grpc": {"service": "demo.v1.Items"}},
                 "public": true, "limits": ["calls"]},
            ]
        })
    }

    #[test]
    fn grpc_routes_match_post_service_and_method() {
        let p = compile(policy()).unwrap_or_else(|e| panic!("{e:?}"));
        let at = |m: &str, path: &str| p.routes.lookup(m, path).map(|f| f.index);
        assert_eq!(at("POST", "/demo.v1.Items/Get"), Some(0));
        assert_eq!(at("POST", "/demo.v1.Items/List"), Some(1));
        assert_eq!(at("GET", "/demo.v1.Items/Get"), None);
        assert_eq!(at("POST", "/demo.v1.Items/a/b"), None);
        assert_eq!(at("POST", "/demo.v1.Items"), None);
        assert_eq!(at("POST", "/demo.v1.ItemsX/Get"), None);
    }

    #[test]
    fn grpc_config_errors_carry_json_paths() {
        let errs = compile(json!({
            "limits": [{"name": "l", "capacity": 1, "key": [{"constant": "a"}],
                        "cost": {"methods": {"pkg.Svc/": 2}}}],
            "routes": [
                {"name": "a", "match": {"grpc": {"service": "pkg..Svc", "method": "G-et"}}, "public": true},
                {"name": "b", "match": {"grpc": {"service": "pkg.Svc"}, "path": "/x"}, "public": true},
                {"name": "c", "match": {"grpc": {"service": "pkg.Svc"}}, "public": true,
                 "validate": {"body": {"schema": {"type": "object"}}}},
                {"name": "d", "match": {"grpc": {"service": "pkg.Svc", "extra": 1}}, "public": true},
                {"name": "e", "match": {"grpc": {"service": "pkg.Svc"}}, "public": true,
                 "validate": {"body": {"format_assertion": true}}},
            ]
        }))
        .err()
        .unwrap_or_default();
        let has = |prefix: &str| errs.iter().any(|e| e.starts_with(prefix));
        assert!(has("limits[0].cost.methods.pkg.Svc/"), "{errs:?}");
        assert!(has("routes[0].match.grpc.service"), "{errs:?}");
        assert!(has("routes[0].match.grpc.method"), "{errs:?}");
        assert!(has("routes[1].match:"), "{errs:?}");
        assert!(has("routes[2].validate.body"), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("protobuf")), "{errs:?}");
        assert!(has("routes[3].match.grpc"), "{errs:?}");
        assert!(has("routes[4].validate.body"), "{errs:?}");
    }

    struct NoMetrics;
    impl Metrics for NoMetrics {
        fn incr(&mut self, _: &str) {}
    }

    #[test]
    fn grpc_method_costs_and_metadata_rules() {
        let p = compile(policy()).unwrap_or_else(|e| panic!("{e:?}"));
        let mut engine = Engine::new(Rc::new(p));
        let (store, clock) = (FakeStore::default(), FakeClock::at_secs(1_700_000_000));
        let mut call = |path: &str, tenant: bool| {
            let mut req = TestRequest::new("POST", path)
                .header("content-type", "application/grpc")
                .end_of_stream(false)
                .clock(&clock)
                .store(&store);
            if tenant {
                req = req.header("x-tenant", "t");
            }
            match req.send(&mut engine, &mut NoMetrics).verdict {
                Verdict::Allow(_) => 0,
                Verdict::Deny(d) => super::status_code(&d),
            }
        };
        assert_eq!(
            call("/demo.v1.Items/Get", false),
            super::code::INVALID_ARGUMENT
        );
        // 10 tokens: List costs 5, Get 1.
        assert_eq!(call("/demo.v1.Items/List", true), 0);
        assert_eq!(call("/demo.v1.Items/Get", true), 0);
        assert_eq!(
            call("/demo.v1.Items/List", true),
            super::code::RESOURCE_EXHAUSTED
        );
        for _ in 0..4 {
            assert_eq!(call("/demo.v1.Items/Get", true), 0);
        }
        assert_eq!(
            call("/demo.v1.Items/Get", true),
            super::code::RESOURCE_EXHAUSTED
        );
    }
}
