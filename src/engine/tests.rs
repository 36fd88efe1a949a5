//! Engine tests with HS256 tokens minted by PyJWT (fixed vectors, iat 1700000000, exp +3600).

use super::test_request::TestRequest;
use super::*;
use crate::host::fake::{Counted, FakeClock, FakeStore};
use crate::policy::KeySource;
use serde_json::json;

const KEY_K: &str = "YXBpZ3VhcmQtdW5pdC10ZXN0cy1obWFjLWtleS0zMmI";
const READ: &str = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0IiwiYXVkIjoiYXBpIiwic3ViIjoiYWxpY2UiLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6MTcwMDAwMzYwMCwic2NvcGUiOiJpdGVtczpyZWFkIn0.QwNzbYkxLCD3v3919PVQQ2bC-KbSNigdnkEfUMr7d_Y";
const WRITE: &str = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0IiwiYXVkIjoiYXBpIiwic3ViIjoiYWxpY2UiLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6MTcwMDAwMzYwMCwic2NvcGUiOiJpdGVtczpyZWFkIGl0ZW1zOndyaXRlIiwib3JnIjp7ImlkIjoiYWNtZSJ9LCJyb2xlcyI6WyJhIiwiYiJdfQ.T6rW31BgVA0g77HFjdgiQBMoioo3frKTgf5G0HczYPg";
const OTHER_ISS: &str = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL290aGVyLnRlc3QiLCJhdWQiOiJhcGkiLCJzdWIiOiJhbGljZSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoxNzAwMDAzNjAwfQ.c139SKtPxzJxbyCiZKlHy8ueBJSUnvcgkdRWkeRdw5c";
const UNKNOWN_KID: &str = "eyJhbGciOiJIUzI1NiIsImtpZCI6Inp6eiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0IiwiYXVkIjoiYXBpIiwic3ViIjoiYWxpY2UiLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6MTcwMDAwMzYwMCwic2NvcGUiOiJpdGVtczpyZWFkIn0.9bLZ_5xdLyOut_jHyV9lwgvyjPtdmOpenoieGXCuLf8";

fn provider(extra: serde_json::Value) -> serde_json::Value {
    let mut p = json!({
        "name": "test",
        "issuer": "https://issuer.test",
        "audiences": ["api"],
        "jwks": {"inline": {"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256", "k": KEY_K}]}},
        "claims_to_headers": [{"claim": "sub", "header": "x-user"}, {"claim": "org.id", "header": "x-org"}],
    });
    if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            p.insert(k.clone(), v.clone());
        }
    }
    p
}

fn engine_with(providers: serde_json::Value) -> Engine {
    let policy = json!({
        "providers": providers,
        "routes": [
            {"name": "health", "match": {"path": "/healthz", "methods": ["GET"]}, "public": true},
            {"name": "read", "match": {"path": "/items/{id}", "methods": ["GET"]}, "providers": ["test"], "scopes": {"all_of": ["items:read"]}},
            {"name": "write", "match": {"prefix": "/items", "methods": ["POST"]}, "providers": ["test"], "scopes": {"all_of": ["items:write"]}},
        ]
    });
    let policy = Policy::try_from(policy).unwrap_or_else(|e| panic!("{e:?}"));
    Engine::new(Rc::new(policy))
}

fn engine() -> Engine {
    engine_with(json!([provider(json!({}))]))
}

fn run(
    engine: &mut Engine,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (Decision, Counted) {
    let mut m = Counted::default();
    let d = TestRequest::new(method, path)
        .headers(headers)
        .request_id("rid")
        .peer_addr("10.0.0.1:5555")
        .send(engine, &mut m);
    (d, m)
}

fn denial(d: &Decision) -> &Denial {
    match &d.verdict {
        Verdict::Deny(x) => x,
        Verdict::Allow(_) => panic!("expected a denial, got {:?}", d.verdict),
    }
}

fn allowed(d: &Decision) -> &Mutations {
    match &d.verdict {
        Verdict::Allow(m) => m,
        Verdict::Deny(x) => panic!("expected allow, got {x:?}"),
    }
}

/// The counter the glue bumps for a request the header phase finished.
fn finished_counter(d: &Decision) -> Option<String> {
    crate::outcome::after_headers(d).map(|f| crate::outcome::counter(f).into_owned())
}

#[test]
fn public_route_allows_without_token() {
    let (d, m) = run(&mut engine(), "GET", "/healthz", &[]);
    allowed(&d);
    // The finished request's counter is the caller's (the glue, through `outcome`).
    assert!(m.0.is_empty());
    assert_eq!(finished_counter(&d).as_deref(), Some("apiguard.allowed"));
}

#[test]
fn spoofed_claim_headers_are_removed_even_on_public_routes() {
    let (d, _) = run(&mut engine(), "GET", "/healthz", &[("x-user", "admin")]);
    assert_eq!(allowed(&d).remove_headers, vec!["x-user"]);
}

#[test]
fn missing_token_is_401_without_error_attribute() {
    let (d, m) = run(&mut engine(), "GET", "/items/1", &[]);
    let x = denial(&d);
    assert_eq!((x.status, x.reason), (401, "missing_credentials"));
    assert_eq!(
        x.www_authenticate.as_deref(),
        Some("Bearer realm=\"apiguard\"")
    );
    assert!(m.0.is_empty());
    assert_eq!(
        finished_counter(&d).as_deref(),
        Some("apiguard.denied.missing_credentials")
    );
}

#[test]
fn valid_token_sets_claim_headers_and_principal() {
    let auth = format!("Bearer {WRITE}");
    let (d, _) = run(
        &mut engine(),
        "GET",
        "/items/1",
        &[("authorization", &auth), ("x-org", "evil")],
    );
    let m = allowed(&d);
    // `forward` defaults to false (as jwt_authn and Istio): the token goes too.
    assert_eq!(m.remove_headers, vec!["x-org", "authorization"]);
    assert!(m.set_headers.contains(&("x-user".into(), "alice".into())));
    assert!(m.set_headers.contains(&("x-org".into(), "acme".into())));
    assert_eq!(d.principal.as_deref(), Some("alice"));
    assert_eq!(d.route.as_deref(), Some("read"));
}

#[test]
fn missing_scope_is_403_naming_the_scope() {
    let auth = format!("bearer {READ}");
    let (d, _) = run(&mut engine(), "POST", "/items", &[("authorization", &auth)]);
    let x = denial(&d);
    assert_eq!((x.status, x.reason), (403, "insufficient_scope"));
    assert_eq!(
        x.www_authenticate.as_deref(),
        Some("Bearer realm=\"apiguard\", error=\"insufficient_scope\", scope=\"items:write\"")
    );
}

#[test]
fn tampered_token_is_401_invalid_token() {
    // Flip one character in the middle of the signature (the last one may carry
    // non-canonical padding bits, which is `malformed`, not `bad_signature`).
    let mut chars: Vec<char> = READ.chars().collect();
    let i = chars.len() - 10;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let bad = format!("Bearer {}", chars.into_iter().collect::<String>());
    let (d, _) = run(&mut engine(), "GET", "/items/1", &[("authorization", &bad)]);
    let x = denial(&d);
    assert_eq!((x.status, x.reason), (401, "bad_signature"));
    assert!(x
        .www_authenticate
        .as_deref()
        .unwrap()
        .contains("error=\"invalid_token\""));
    assert!(!x.body(None).contains(READ));
}

#[test]
fn wrong_issuer_is_rejected() {
    let auth = format!("Bearer {OTHER_ISS}");
    let (d, _) = run(
        &mut engine(),
        "GET",
        "/items/1",
        &[("authorization", &auth)],
    );
    assert_eq!(denial(&d).reason, "wrong_issuer");
}

#[test]
fn duplicate_credentials_are_400() {
    let a = format!("Bearer {READ}");
    let (d, _) = run(
        &mut engine(),
        "GET",
        "/items/1",
        &[("authorization", &a), ("authorization", &a)],
    );
    let x = denial(&d);
    assert_eq!((x.status, x.reason), (400, "invalid_request"));
}

#[test]
fn unmatched_is_denied_and_ambiguous_paths_refused() {
    let (d, _) = run(&mut engine(), "GET", "/admin", &[]);
    assert_eq!(denial(&d).reason, "no_route");
    for p in ["/healthz/../items/1", "/items/%2e%2e", "/items%2F1"] {
        let (d, _) = run(&mut engine(), "GET", p, &[]);
        assert_eq!(
            (denial(&d).status, denial(&d).reason),
            (400, "ambiguous_path"),
            "{p}"
        );
    }
}

#[test]
fn cache_hit_on_repeat_and_generation_change_invalidates() {
    let mut e = engine();
    let auth = format!("Bearer {READ}");
    let (_, m1) = run(&mut e, "GET", "/items/1", &[("authorization", &auth)]);
    let (_, m2) = run(&mut e, "GET", "/items/1", &[("authorization", &auth)]);
    assert!(m1.0.contains(&"apiguard.jwt.cache_miss".to_string()));
    assert!(m2.0.contains(&"apiguard.jwt.cache_hit".to_string()));
    let keys = match &e.policy().providers[0].keys {
        KeySource::Inline(k) => k.clone(),
        KeySource::Remote(_) => unreachable!(),
    };
    e.set_keys(0, keys, 7);
    let (_, m3) = run(&mut e, "GET", "/items/1", &[("authorization", &auth)]);
    assert!(m3.0.contains(&"apiguard.jwt.cache_miss".to_string()));
}

#[test]
fn remote_provider_without_keys_is_503_and_unknown_kid_asks_refetch() {
    let remote =
        provider(json!({"jwks": {"remote": {"cluster": "idp", "uri": "http://idp/jwks.json"}}}));
    let mut e = engine_with(json!([remote]));
    let auth = format!("Bearer {READ}");
    let (d, _) = run(&mut e, "GET", "/items/1", &[("authorization", &auth)]);
    let x = denial(&d);
    assert_eq!(
        (x.status, x.reason, x.retry_after_secs),
        (503, "jwks_unavailable", Some(5))
    );

    let jwks = crate::jwt::Jwks::from_value(
        &json!({"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256", "k": KEY_K}]}),
    )
    .unwrap()
    .jwks;
    e.set_keys(0, Rc::new(jwks), 1);
    let (d, _) = run(&mut e, "GET", "/items/1", &[("authorization", &auth)]);
    allowed(&d);
    let auth = format!("Bearer {UNKNOWN_KID}");
    let (d, _) = run(&mut e, "GET", "/items/1", &[("authorization", &auth)]);
    assert_eq!(denial(&d).reason, "unknown_kid");
    assert_eq!(d.refetch, vec![0]);
}

#[test]
fn forward_false_removes_each_credential_source() {
    let p = provider(json!({"forward": false, "from": [
        {"header": "authorization", "prefix": "Bearer "}, {"query": "access_token"}, {"cookie": "session"}]}));
    let mut e = engine_with(json!([p]));
    let (d, _) = run(
        &mut e,
        "GET",
        &format!("/items/1?a=1&access_token={READ}"),
        &[
            ("cookie", "x=1; session=y"),
            ("authorization", "Bearer zzz"),
        ],
    );
    let m = allowed(&d);
    assert_eq!(m.new_path.as_deref(), Some("/items/1?a=1"));
    assert!(m.remove_headers.contains(&"authorization".to_string()));
    assert!(m.set_headers.contains(&("cookie".into(), "x=1".into())));
    // Nothing to remove costs nothing: no header removal or cookie rewrite for absent ones.
    let (d, _) = run(
        &mut e,
        "GET",
        &format!("/items/1?access_token={READ}"),
        &[("cookie", "x=1")],
    );
    let m = allowed(&d);
    assert!(m.remove_headers.is_empty() && m.set_headers.iter().all(|(h, _)| h != "cookie"));
}

#[test]
fn payload_header_forwards_the_raw_payload_segment() {
    let p = provider(json!({"forward_payload_header": "x-jwt-payload"}));
    let mut e = engine_with(json!([p]));
    let auth = format!("Bearer {READ}");
    let (d, _) = run(&mut e, "GET", "/items/1", &[("authorization", &auth)]);
    let payload = READ.split('.').nth(1).unwrap();
    assert!(allowed(&d)
        .set_headers
        .contains(&("x-jwt-payload".into(), payload.into())));
}

#[test]
fn second_provider_is_tried_by_issuer() {
    let a = provider(json!({"name": "a", "issuer": "https://other.test"}));
    let b = provider(json!({"name": "b"}));
    let policy = json!({
        "providers": [a, b],
        "routes": [{"name": "r", "match": {"prefix": "/"}, "providers": ["a", "b"]}]
    });
    let mut e = Engine::new(Rc::new(Policy::try_from(policy).unwrap()));
    let auth = format!("Bearer {READ}");
    let (d, m) = run(&mut e, "GET", "/x", &[("authorization", &auth)]);
    allowed(&d);
    assert_eq!(m.0.iter().filter(|n| n.contains("cache_miss")).count(), 1);
}

// ---- authorization: rules, API keys, client certificates ----

const PARTNER_KEY_SHA256: &str = "e52400b859c4e56d31bbe19ffb15afe7cf79f151d5ba2232187e30d9096e22eb";

fn authz_engine() -> Engine {
    let policy = json!({
        "providers": [provider(json!({}))],
        "api_keys": [{"name": "partners", "keys": [
            {"client_id": "partner-a", "sha256": PARTNER_KEY_SHA256, "scopes": ["items:read"]}]}],
        "client_certs": [{"name": "mesh", "uri_sans": ["spiffe://cluster.local/ns/shop/sa/checkout"]}],
        "routes": [
            {"name": "tenant-orders", "match": {"path": "/tenants/{tenant}/orders/{id}"}, "providers": ["test"],
             "rules": [
                {"name": "not-blocked", "effect": "deny", "when": {"claim": "blocked", "equals": true}},
                {"name": "own-tenant", "when": {"claim": "org.id", "equals_param": "tenant"}},
                {"name": "shadow-role", "mode": "audit", "when": {"claim": "roles", "contains": "auditor"}}
             ]},
            {"name": "items", "match": {"prefix": "/items"}, "providers": ["test", "partners"], "scopes": {"all_of": ["items:read"]}},
            {"name": "internal", "match": {"prefix": "/internal"}, "providers": ["mesh"]}
        ]
    });
    Engine::new(Rc::new(
        Policy::try_from(policy).unwrap_or_else(|e| panic!("{e:?}")),
    ))
}

fn run_peer(
    engine: &mut Engine,
    path: &str,
    headers: &[(&str, &str)],
    peer: Option<&str>,
) -> Decision {
    TestRequest::get(path)
        .headers(headers)
        .uri_san(peer)
        .send(engine, &mut Counted::default())
}

#[test]
fn tenant_bound_to_path_parameter() {
    let mut e = authz_engine();
    let auth = format!("Bearer {WRITE}");
    let d = run_peer(
        &mut e,
        "/tenants/acme/orders/1",
        &[("authorization", &auth)],
        None,
    );
    allowed(&d);
    assert_eq!(d.audit_denied, vec!["shadow-role"]);
    let d = run_peer(
        &mut e,
        "/tenants/globex/orders/1",
        &[("authorization", &auth)],
        None,
    );
    let x = denial(&d);
    assert_eq!((x.status, x.reason), (403, "rule_denied"));
    assert_eq!(d.rule.as_deref(), Some("own-tenant"));
    assert!(
        !x.body(None).contains("acme"),
        "the body never names the caller's claims"
    );
}

#[test]
fn api_keys_good_bad_and_scoped() {
    let mut e = authz_engine();
    let d = run_peer(&mut e, "/items/1", &[("x-api-key", "k-partner-a")], None);
    allowed(&d);
    assert_eq!(d.principal.as_deref(), Some("partner-a"));
    assert!(allowed(&d)
        .remove_headers
        .contains(&"x-api-key".to_string()));
    let d = run_peer(&mut e, "/items/1", &[("x-api-key", "k-partner-b")], None);
    let x = denial(&d);
    assert_eq!((x.status, x.reason), (401, "invalid_api_key"));
    let d = run_peer(&mut e, "/items/1", &[], None);
    assert_eq!(denial(&d).reason, "missing_credentials");
}

#[test]
fn client_certificate_identities() {
    let mut e = authz_engine();
    let d = run_peer(
        &mut e,
        "/internal/x",
        &[],
        Some("spiffe://cluster.local/ns/shop/sa/checkout"),
    );
    allowed(&d);
    assert_eq!(
        d.principal.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/checkout")
    );
    let d = run_peer(
        &mut e,
        "/internal/x",
        &[],
        Some("spiffe://cluster.local/ns/shop/sa/other"),
    );
    assert_eq!(
        (denial(&d).status, denial(&d).reason),
        (403, "identity_not_allowed")
    );
    let d = run_peer(&mut e, "/internal/x", &[], None);
    assert_eq!(
        (denial(&d).status, denial(&d).reason),
        (403, "client_certificate_required")
    );
}

// ---- rate limiting ----

#[test]
fn limits_admit_capacity_then_429_with_headers() {
    let policy = json!({
        "ratelimit_headers_on_allow": true,
        "limits": [{"name": "per-ip", "capacity": 2, "refill": {"tokens": 1, "period_seconds": 10},
                    "key": [{"client_ip": {"trusted_hops": 1}}]}],
        "routes": [{"name": "health", "match": {"path": "/healthz"}, "public": true, "limits": ["per-ip"]}]
    });
    let mut e = Engine::new(Rc::new(
        Policy::try_from(policy).unwrap_or_else(|e| panic!("{e:?}")),
    ));
    let store = FakeStore::default();
    let clock = FakeClock::at_secs(1_700_000_000);
    let mut go = |xff: &str| {
        TestRequest::get("/healthz")
            .header("x-forwarded-for", xff)
            .peer_addr("127.0.0.1:4000")
            .clock(&clock)
            .store(&store)
            .send(&mut e, &mut Counted::default())
    };
    let d = go("9.9.9.9, 1.1.1.1");
    allowed(&d);
    assert!(
        d.response_headers
            .contains(&("ratelimit".into(), "\"per-ip\";r=1;t=10".into())),
        "{:?}",
        d.response_headers
    );
    assert!(d
        .response_headers
        .contains(&("ratelimit-policy".into(), "\"per-ip\";q=2;w=20".into())));
    // A spoofed left-most entry does not pick another bucket: the trusted hop decides.
    allowed(&go("6.6.6.6, 1.1.1.1"));
    let d = go("7.7.7.7, 1.1.1.1");
    let x = denial(&d);
    assert_eq!(
        (x.status, x.reason, x.retry_after_secs),
        (429, "rate_limited", Some(10))
    );
    assert!(
        x.headers
            .contains(&("ratelimit".into(), "\"per-ip\";r=0;t=20".into())),
        "{:?}",
        x.headers
    );
    // Another client is unaffected.
    allowed(&go("9.9.9.9, 2.2.2.2"));
}

// ---- validation ----

#[test]
fn validation_head_and_body_plan() {
    let policy = json!({
        "request_limits": {"max_url_bytes": 64},
        "routes": [{"name": "create", "match": {"path": "/items", "methods": ["GET", "POST"]}, "public": true,
            "validate": {
                "query": {"limit": {"type": "integer", "minimum": 1, "maximum": 100}},
                "body": {"max_bytes": 1024, "schema": {"type": "object", "additionalProperties": false,
                         "properties": {"name": {"type": "string"}}}}}}]
    });
    let e = Engine::new(Rc::new(
        Policy::try_from(policy).unwrap_or_else(|e| panic!("{e:?}")),
    ));
    let mut e = e;
    let (d, _) = run(&mut e, "GET", "/items?limit=500", &[]);
    let x = denial(&d);
    assert_eq!(x.status, 400);
    assert!(x.body(None).contains("/limit") || x.body(None).contains("limit"));
    let (d, _) = run(&mut e, "GET", &format!("/items?x={}", "a".repeat(100)), &[]);
    assert_eq!(denial(&d).status, 414);
    let mut m = Counted::default();
    let d = TestRequest::new("POST", "/items")
        .header("content-type", "application/json")
        .header("content-length", "20")
        .end_of_stream(false)
        .at_secs(1_700_000_000)
        .send(&mut e, &mut m);
    allowed(&d);
    let check = d.body.expect("a body check is pending");
    assert_eq!(finished_counter(&d), None, "counted only after the body");
    assert!(e.on_body_end(&check, br#"{"name":"x"}"#, 12).is_ok());
    let err = e
        .on_body_end(&check, br#"{"name":"x","admin":true}"#, 25)
        .unwrap_err();
    assert_eq!((err.status, err.reason), (400, "invalid_body"));
    assert!(err.body(None).contains("additionalProperties"));
}

// ---- security review (issue 12): what reaches the upstream ----

fn engine_from(policy: serde_json::Value) -> Engine {
    Engine::new(Rc::new(
        Policy::try_from(policy).unwrap_or_else(|e| panic!("{e:?}")),
    ))
}

/// A JWT provider that forwards (header and cookie sources) and an API-key set that
/// forwards too: whatever `forward` says, only the accepted credential may go upstream.
fn forwarding_engine() -> Engine {
    engine_from(json!({
        "providers": [provider(json!({"forward": true, "from": [
            {"header": "authorization", "prefix": "Bearer "}, {"cookie": "session"}]}))],
        "api_keys": [{"name": "partners", "forward": true, "keys": [
            {"client_id": "partner-a", "sha256": PARTNER_KEY_SHA256, "scopes": ["items:read"]}]}],
        "routes": [
            {"name": "items", "match": {"prefix": "/items"}, "providers": ["test", "partners"]},
            {"name": "keys-only", "match": {"prefix": "/keys"}, "providers": ["partners"]},
        ]
    }))
}

const ALG_NONE: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0IiwiYXVkIjoiYXBpIiwic3ViIjoiYWRtaW4ifQ.";

#[test]
fn forged_token_beside_a_valid_api_key_is_removed() {
    let mut e = forwarding_engine();
    let forged = format!("Bearer {ALG_NONE}");
    for path in ["/items/1", "/keys/1"] {
        let (d, _) = run(
            &mut e,
            "GET",
            path,
            &[("authorization", &forged), ("x-api-key", "k-partner-a")],
        );
        let m = allowed(&d);
        assert_eq!(d.principal.as_deref(), Some("partner-a"), "{path}");
        assert!(m.remove_headers.contains(&"authorization".into()), "{path}");
        assert!(!m.remove_headers.contains(&"x-api-key".into()), "{path}");
    }
}

#[test]
fn rejected_header_token_beside_a_valid_cookie_token_is_removed() {
    let mut e = forwarding_engine();
    let forged = format!("Bearer {ALG_NONE}");
    let cookie = format!("theme=dark; session={WRITE}");
    let (d, _) = run(
        &mut e,
        "GET",
        "/items/1",
        &[
            ("authorization", &forged),
            ("cookie", &cookie),
            ("x_api_key", "smuggled"),
        ],
    );
    let m = allowed(&d);
    assert_eq!(d.principal.as_deref(), Some("alice"));
    assert_eq!(m.remove_headers, vec!["authorization", "x_api_key"]);
    // the accepted cookie stays (forward: true): no cookie rewrite
    assert!(m.set_headers.iter().all(|(h, _)| h != "cookie"));
}

#[test]
fn a_client_certificate_principal_forwards_no_bearer_credential() {
    let mut e = engine_from(json!({
        "providers": [provider(json!({"forward": true}))],
        "client_certs": [{"name": "mesh", "uri_sans": ["spiffe://a"]}],
        "routes": [{"name": "r", "match": {"prefix": "/"}, "providers": ["mesh", "test"]}]
    }));
    let forged = format!("Bearer {ALG_NONE}");
    let d = run_peer(
        &mut e,
        "/x",
        &[("authorization", &forged)],
        Some("spiffe://a"),
    );
    assert_eq!(allowed(&d).remove_headers, vec!["authorization"]);
    // another scheme is not a bearer credential: the upstream may use it
    let d = run_peer(
        &mut e,
        "/x",
        &[("authorization", "Basic eDp5")],
        Some("spiffe://a"),
    );
    assert!(allowed(&d).remove_headers.is_empty());
}

#[test]
fn owned_headers_are_removed_in_every_spelling() {
    let (d, _) = run(
        &mut engine(),
        "GET",
        "/healthz",
        &[
            ("x_user", "admin"),
            ("X_USER", "admin"),
            ("x_org", "acme"),
            ("x-users", "kept"),
            ("x_original_url", "/admin"),
            ("x-rewrite-url", "/admin"),
        ],
    );
    assert_eq!(
        allowed(&d).remove_headers,
        vec![
            "x_user",
            "X_USER",
            "x_org",
            "x_original_url",
            "x-rewrite-url"
        ]
    );
}

#[test]
fn method_override_is_refused_by_default() {
    let auth = format!("Bearer {WRITE}");
    let (d, m) = run(
        &mut engine(),
        "POST",
        "/items",
        &[
            ("authorization", &auth),
            ("x-http-method-override", "DELETE"),
        ],
    );
    let x = denial(&d);
    assert_eq!((x.status, x.reason), (400, "method_override"));
    assert!(m.0.is_empty());
    assert_eq!(
        finished_counter(&d).as_deref(),
        Some("apiguard.denied.method_override")
    );
}

#[test]
fn honored_method_override_is_routed_as_the_overridden_method() {
    let mut e = engine_from(json!({
        "method_override": "honor",
        "providers": [provider(json!({}))],
        "routes": [
            {"name": "write", "match": {"prefix": "/items", "methods": ["POST"]}, "providers": ["test"]},
            {"name": "read", "match": {"prefix": "/items", "methods": ["GET"]}, "providers": ["test"]},
        ]
    }));
    let auth = format!("Bearer {WRITE}");
    // DELETE has no route: refused as a DELETE would be
    let (d, _) = run(
        &mut e,
        "POST",
        "/items/1",
        &[
            ("authorization", &auth),
            ("x-http-method-override", "delete"),
        ],
    );
    assert_eq!(denial(&d).reason, "no_route");
    let (d, _) = run(
        &mut e,
        "POST",
        "/items/1",
        &[("authorization", &auth), ("x-method-override", "GET")],
    );
    allowed(&d);
    assert_eq!(d.route.as_deref(), Some("read"));
    let (d, _) = run(
        &mut e,
        "GET",
        "/items/1",
        &[("authorization", &auth), ("x-http-method", "POST")],
    );
    assert_eq!(denial(&d).reason, "method_override");
}

#[test]
fn client_ip_from_a_header_derived_peer_shares_one_bucket() {
    let mut e = engine_from(json!({
        "limits": [{"name": "per-ip", "capacity": 2, "key": [{"client_ip": {"trusted_hops": 0}}]}],
        "routes": [{"name": "p", "match": {"prefix": "/"}, "public": true, "limits": ["per-ip"]}]
    }));
    let store = FakeStore::default();
    let clock = FakeClock::at_secs(1_700_000_000);
    let mut statuses = Vec::new();
    let mut counted = Counted::default();
    for i in 0..4 {
        // What Envoy reports without use_remote_address: the spoofed XFF entry, port 0.
        let addr = format!("6.6.6.{i}:0");
        let xff = format!("6.6.6.{i}");
        let d = TestRequest::get("/x")
            .header("x-forwarded-for", &xff)
            .peer_addr(&addr)
            .clock(&clock)
            .store(&store)
            .send(&mut e, &mut counted);
        statuses.push(match d.verdict {
            Verdict::Allow(_) => 200,
            Verdict::Deny(x) => x.status,
        });
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert!(counted
        .0
        .iter()
        .any(|n| n == "apiguard.client_ip.peer_from_header"));
}

#[test]
fn a_header_derived_peer_is_counted_once_per_request_for_global_and_lockout_keys_too() {
    let mut e = engine_from(json!({
        "providers": [provider(json!({}))],
        "limits": [
            {"name": "local-ip", "capacity": 100, "key": [{"client_ip": {"trusted_hops": 0}}]},
            {"name": "global-ip", "key": [{"client_ip": {"trusted_hops": 0}}],
             "global": {"cluster": "rls", "domain": "d"}},
            {"name": "lock-ip", "capacity": 5, "count": "auth_failures",
             "key": [{"client_ip": {"trusted_hops": 0}}]}
        ],
        "routes": [
            {"name": "both", "match": {"prefix": "/both"}, "public": true,
             "limits": ["local-ip", "global-ip"]},
            {"name": "global", "match": {"prefix": "/global"}, "public": true,
             "limits": ["global-ip"]},
            {"name": "lock", "match": {"prefix": "/lock"}, "providers": ["test"],
             "limits": ["lock-ip"]},
            {"name": "none", "match": {"prefix": "/"}, "public": true}
        ]
    }));
    let store = FakeStore::default();
    let clock = FakeClock::at_secs(1_700_000_000);
    let count_for = |e: &mut Engine, path: &str, addr: &str| {
        let mut counted = Counted::default();
        TestRequest::get(path)
            .peer_addr(addr)
            .clock(&clock)
            .store(&store)
            .send(e, &mut counted);
        counted
            .0
            .iter()
            .filter(|n| *n == "apiguard.client_ip.peer_from_header")
            .count()
    };
    // Envoy without use_remote_address reports the spoofed XFF entry with port 0.
    assert_eq!(count_for(&mut e, "/both", "6.6.6.6:0"), 1);
    assert_eq!(count_for(&mut e, "/global", "6.6.6.6:0"), 1);
    assert_eq!(count_for(&mut e, "/lock", "6.6.6.6:0"), 1);
    assert_eq!(count_for(&mut e, "/other", "6.6.6.6:0"), 0);
    assert_eq!(count_for(&mut e, "/both", "10.0.0.1:51234"), 0);
}
