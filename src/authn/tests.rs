//! `authenticate` on its own: which source's answer wins when several speak.

use super::*;
use crate::engine::test_request::TestRequest;
use crate::engine::Host;
use crate::host::fake::{Counted, FakeClock, FakeStore};
use crate::host::NoHostCrypto;
use serde_json::json;

const KEY_K: &str = "YXBpZ3VhcmQtdW5pdC10ZXN0cy1obWFjLWtleS0zMmI";
/// HS256 from PyJWT, kid "zzz" (no such key), iss https://issuer.test.
const UNKNOWN_KID: &str = "eyJhbGciOiJIUzI1NiIsImtpZCI6Inp6eiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0IiwiYXVkIjoiYXBpIiwic3ViIjoiYWxpY2UiLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6MTcwMDAwMzYwMCwic2NvcGUiOiJpdGVtczpyZWFkIn0.9bLZ_5xdLyOut_jHyV9lwgvyjPtdmOpenoieGXCuLf8";
/// sha256("k-partner-a")
const PARTNER_KEY_SHA256: &str = "e52400b859c4e56d31bbe19ffb15afe7cf79f151d5ba2232187e30d9096e22eb";
const NOW: u64 = 1_700_000_100;

/// A remote JWT provider (keys not loaded until a test installs them), an API key set and
/// a client-certificate set.
fn policy() -> Policy {
    Policy::try_from(json!({
        "providers": [{"name": "idp", "issuer": "https://issuer.test", "audiences": ["api"],
                       "jwks": {"remote": {"cluster": "idp", "uri": "http://idp/jwks.json"}}}],
        "api_keys": [{"name": "partners", "keys": [
            {"client_id": "partner-a", "sha256": PARTNER_KEY_SHA256}]}],
        "client_certs": [{"name": "mesh", "uri_sans": ["spiffe://a"]}],
        "routes": []
    }))
    .unwrap_or_else(|e| panic!("{e:?}"))
}

fn loaded(keyring: &mut Keyring) {
    let jwks = Jwks::from_value(
        &json!({"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256", "k": KEY_K}]}),
    )
    .unwrap()
    .jwks;
    keyring.set(0, Rc::new(jwks), 1);
}

const JWT: PrincipalRef = PrincipalRef::Jwt(0);
const KEYS: PrincipalRef = PrincipalRef::ApiKey(0);
const CERTS: PrincipalRef = PrincipalRef::ClientCert(0);

fn run(
    policy: &Policy,
    keyring: &mut Keyring,
    req: &TestRequest,
    accepted: &[PrincipalRef],
) -> Authentication {
    let (clock, store) = (FakeClock::at_secs(NOW), FakeStore::default());
    let host = Host {
        clock: &clock,
        crypto: &NoHostCrypto,
        store: &store,
    };
    let head = req.head();
    let (path, query) = crate::routes::split_query(head.path);
    let ctx = RequestCtx {
        policy,
        req: &head,
        path,
        query,
        host: &host,
    };
    authenticate(keyring, &ctx, accepted, &mut Counted::default())
}

fn refusal(a: &Authentication) -> (u16, &'static str) {
    match &a.result {
        Err(d) => (d.status, d.reason),
        Ok(_) => panic!("expected a refusal"),
    }
}

#[test]
fn a_refused_credential_outranks_keys_still_loading() {
    let p = policy();
    let mut keyring = Keyring::new(&p);
    let bearer = format!("Bearer {UNKNOWN_KID}");
    let req = TestRequest::get("/x")
        .header("authorization", &bearer)
        .header("x-api-key", "wrong");
    // The JWT waits for keys; the wrong API key is a refusal: the refusal is answered.
    let a = run(&p, &mut keyring, &req, &[JWT, KEYS]);
    assert_eq!(refusal(&a), (401, "invalid_api_key"));
    // The JWT alone: 503 while its keys load, with a hint when to come back.
    let a = run(&p, &mut keyring, &req, &[JWT]);
    assert_eq!(refusal(&a), (503, "jwks_unavailable"));
    assert_eq!(
        a.result.err().and_then(|d| d.retry_after_secs),
        Some(JWKS_RETRY_AFTER_SECS)
    );
}

#[test]
fn the_first_refusal_in_policy_order_is_reported() {
    let p = policy();
    let mut keyring = Keyring::new(&p);
    loaded(&mut keyring);
    let bearer = format!("Bearer {UNKNOWN_KID}");
    let req = TestRequest::get("/x")
        .header("authorization", &bearer)
        .header("x-api-key", "wrong")
        .uri_san(Some("spiffe://other"));
    let a = run(&p, &mut keyring, &req, &[KEYS, JWT, CERTS]);
    assert_eq!(refusal(&a), (401, "invalid_api_key"));
    let a = run(&p, &mut keyring, &req, &[CERTS, KEYS, JWT]);
    assert_eq!(refusal(&a), (403, "identity_not_allowed"));
    let a = run(&p, &mut keyring, &req, &[JWT, KEYS]);
    assert_eq!(refusal(&a), (401, "unknown_kid"));
    assert_eq!(a.refetch, vec![0]);
}

#[test]
fn an_unknown_kid_asks_a_refetch_even_when_another_credential_authenticates() {
    let p = policy();
    let mut keyring = Keyring::new(&p);
    loaded(&mut keyring);
    let bearer = format!("Bearer {UNKNOWN_KID}");
    let req = TestRequest::get("/x")
        .header("authorization", &bearer)
        .header("x-api-key", "k-partner-a");
    let a = run(&p, &mut keyring, &req, &[JWT, KEYS]);
    assert!(matches!(
        a.result,
        Ok(Principal::ApiKey { set: 0, key: 0, .. })
    ));
    assert_eq!(a.refetch, vec![0]);
}

#[test]
fn no_credential_is_asked_for_in_the_route_s_terms() {
    let p = policy();
    let mut keyring = Keyring::new(&p);
    let req = TestRequest::get("/x");
    let a = run(&p, &mut keyring, &req, &[KEYS]);
    assert_eq!(refusal(&a), (401, "missing_credentials"));
    let challenge = a.result.err().and_then(|d| d.www_authenticate);
    assert_eq!(challenge.as_deref(), Some("APIKey realm=\"apiguard\""));
    let a = run(&p, &mut keyring, &req, &[CERTS]);
    assert_eq!(refusal(&a), (403, "client_certificate_required"));
    let a = run(&p, &mut keyring, &req, &[CERTS, JWT]);
    // A JWT route's challenge is Bearer, even when its keys are not loaded yet.
    assert_eq!(refusal(&a), (401, "missing_credentials"));
}

#[test]
fn two_credentials_in_one_source_are_ambiguous() {
    let p = policy();
    let mut keyring = Keyring::new(&p);
    let req = TestRequest::get("/x")
        .header("x-api-key", "k-partner-a")
        .header("x-api-key", "k-partner-a");
    let a = run(&p, &mut keyring, &req, &[KEYS]);
    assert_eq!(refusal(&a), (400, "invalid_request"));
}
