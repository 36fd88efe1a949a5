//! Tests for the jwt module. Tokens come from `test_vectors.rs` (signed by PyJWT /
//! cryptography, see `testdata/gen_vectors.py`) or from RFC 7515 / RFC 8037; the code under
//! test never mints the tokens it verifies (except the explicit `mint` round trips).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use super::jwk::Material;
use super::test_vectors as tv;
use super::*;
use crate::host::{HostCrypto, NoHostCrypto};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::rc::Rc;

// ---------------------------------------------------------------- helpers

fn test_jwks() -> Jwks {
    let parsed = Jwks::parse(tv::JWKS.as_bytes()).unwrap();
    assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
    assert_eq!(parsed.jwks.len(), 5);
    parsed.jwks
}

fn rules() -> Rules {
    Rules {
        issuer: tv::ISS.to_string(),
        audiences: vec!["api".to_string()],
        ..Rules::default()
    }
}

fn check(token: &str) -> Result<Verified, JwtError> {
    verify(token, &test_jwks(), &rules(), tv::NOW, &NoHostCrypto)
}

fn check_with(token: &str, rules: &Rules) -> Result<Verified, JwtError> {
    verify(token, &test_jwks(), rules, tv::NOW, &NoHostCrypto)
}

fn hs(name: &str) -> &'static str {
    tv::HS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .unwrap_or_else(|| panic!("no HS vector {name}"))
}

fn valid(alg: &str) -> &'static str {
    tv::VALID
        .iter()
        .find(|(n, _)| *n == alg)
        .map(|(_, t)| *t)
        .unwrap()
}

fn segments(token: &str) -> Vec<String> {
    token.split('.').map(str::to_string).collect()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap()
}

/// Flips one bit in the middle of the signature.
fn tamper_signature(token: &str) -> String {
    let s = segments(token);
    let mut sig = unb64(&s[2]);
    let mid = sig.len() / 2;
    sig[mid] ^= 0x01;
    format!("{}.{}.{}", s[0], s[1], b64(&sig))
}

/// Replaces the payload with different claims, keeping header and signature.
fn tamper_payload(token: &str) -> String {
    let s = segments(token);
    let mut claims: Value = serde_json::from_slice(&unb64(&s[1])).unwrap();
    claims["sub"] = json!("mallory");
    format!("{}.{}.{}", s[0], b64(claims.to_string().as_bytes()), s[2])
}

/// A token with an arbitrary header (the signature is whatever `sig` is).
fn with_header(header: &Value, token: &str) -> String {
    let s = segments(token);
    format!("{}.{}.{}", b64(header.to_string().as_bytes()), s[1], s[2])
}

#[derive(Debug, Clone, PartialEq)]
struct HostCall {
    hash: String,
    spki: Vec<u8>,
    signature: Vec<u8>,
    message: Vec<u8>,
}

/// Records every call and answers `answer`.
struct RecordingHost {
    answer: Option<bool>,
    calls: RefCell<Vec<HostCall>>,
}

impl RecordingHost {
    fn new(answer: Option<bool>) -> Self {
        RecordingHost {
            answer,
            calls: RefCell::new(Vec::new()),
        }
    }
    fn calls(&self) -> Vec<HostCall> {
        self.calls.borrow().clone()
    }
}

impl HostCrypto for RecordingHost {
    fn verify_signature(&self, hash: &str, spki: &[u8], sig: &[u8], msg: &[u8]) -> Option<bool> {
        self.calls.borrow_mut().push(HostCall {
            hash: hash.to_string(),
            spki: spki.to_vec(),
            signature: sig.to_vec(),
            message: msg.to_vec(),
        });
        self.answer
    }
}

fn signing_input(token: &str) -> Vec<u8> {
    let s = segments(token);
    format!("{}.{}", s[0], s[1]).into_bytes()
}

// ---------------------------------------------------------------- every algorithm

#[test]
fn every_algorithm_verifies() {
    assert_eq!(tv::VALID.len(), Alg::ALL.len());
    for (name, token) in tv::VALID {
        let v = check(token).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(v.alg.name(), name);
        assert_eq!(v.exp, Some(tv::NOW + 300));
        assert_eq!(v.claims["sub"], "alice", "{name}");
        assert_eq!(v.payload_b64, segments(token)[1]);
        let kid = match name.get(..2).unwrap() {
            "HS" => "hmac",
            "RS" | "PS" => "rsa",
            "Ed" => "ed",
            _ if name == "ES256" => "p256",
            _ => "p384",
        };
        assert_eq!(v.kid.as_deref(), Some(kid), "{name}");
    }
}

#[test]
fn rsa_keys_of_odd_size_and_small_exponent() {
    let parsed = Jwks::parse(tv::OTHER_RSA_JWKS.as_bytes()).unwrap();
    assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
    let jwks = parsed.jwks;
    for (name, token) in tv::OTHER_RSA {
        let v = verify(token, &jwks, &rules(), tv::NOW, &NoHostCrypto)
            .unwrap_or_else(|e| panic!("{name} {token}: {e}"));
        assert_eq!(v.alg.name(), name);
        assert_eq!(
            verify(
                &tamper_signature(token),
                &jwks,
                &rules(),
                tv::NOW,
                &NoHostCrypto
            ),
            Err(JwtError::BadSignature),
            "{name}"
        );
        assert_eq!(
            verify(
                &tamper_payload(token),
                &jwks,
                &rules(),
                tv::NOW,
                &NoHostCrypto
            ),
            Err(JwtError::BadSignature),
            "{name}"
        );
    }
}

#[test]
fn every_algorithm_rejects_tampered_signature() {
    for (name, token) in tv::VALID {
        assert_eq!(
            check(&tamper_signature(token)),
            Err(JwtError::BadSignature),
            "{name}"
        );
    }
}

#[test]
fn every_algorithm_rejects_tampered_payload() {
    for (name, token) in tv::VALID {
        assert_eq!(
            check(&tamper_payload(token)),
            Err(JwtError::BadSignature),
            "{name}"
        );
    }
}

#[test]
fn every_algorithm_rejects_truncated_or_extended_signature() {
    for (name, token) in tv::VALID {
        let s = segments(token);
        let sig = unb64(&s[2]);
        let short = format!("{}.{}.{}", s[0], s[1], b64(&sig[..sig.len() - 1]));
        let mut longer = sig.clone();
        longer.push(0);
        let long = format!("{}.{}.{}", s[0], s[1], b64(&longer));
        assert_eq!(check(&short), Err(JwtError::BadSignature), "{name} short");
        assert_eq!(check(&long), Err(JwtError::BadSignature), "{name} long");
    }
}

#[test]
fn signature_of_one_alg_is_not_accepted_under_another() {
    // RS256 signature relabelled PS256 (same key), ES384 relabelled... etc.
    let cases = [
        ("RS256", "PS256"),
        ("RS256", "RS384"),
        ("PS256", "RS256"),
        ("HS256", "HS384"),
        ("HS512", "HS256"),
    ];
    for (from, to) in cases {
        let token = valid(from);
        let header: Value = serde_json::from_slice(&unb64(&segments(token)[0])).unwrap();
        let mut header = header;
        header["alg"] = json!(to);
        assert_eq!(
            check(&with_header(&header, token)),
            Err(JwtError::BadSignature),
            "{from} as {to}"
        );
    }
}

#[test]
fn alg_confusion_hs256_with_rsa_key_is_refused() {
    // Classic attack: HMAC "signed" with the RSA public key, pointing at the RSA kid.
    let token = with_header(&json!({"alg": "HS256", "kid": "rsa"}), valid("HS256"));
    assert_eq!(check(&token), Err(JwtError::NoUsableKey));
    let token = with_header(&json!({"alg": "HS256", "kid": "p256"}), valid("HS256"));
    assert_eq!(check(&token), Err(JwtError::NoUsableKey));
}

// ---------------------------------------------------------------- RFC vectors

const RFC7515_PAYLOAD_ISS: &str = "joe";
const RFC7515_EXP: u64 = 1_300_819_380;

fn rfc_rules() -> Rules {
    Rules {
        issuer: RFC7515_PAYLOAD_ISS.to_string(),
        ..Rules::default()
    }
}

#[test]
fn rfc7515_a1_hs256() {
    let jwks = Jwks::parse(
        br#"{"keys":[{"kty":"oct","k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"}]}"#,
    )
    .unwrap();
    assert!(jwks.rejected.is_empty());
    let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let v = verify(
        token,
        &jwks.jwks,
        &rfc_rules(),
        RFC7515_EXP - 100,
        &NoHostCrypto,
    )
    .unwrap();
    assert_eq!(v.alg, Alg::HS256);
    assert_eq!(v.claims["http://example.com/is_root"], true);
    assert_eq!(
        verify(
            token,
            &jwks.jwks,
            &rfc_rules(),
            RFC7515_EXP + 61,
            &NoHostCrypto
        ),
        Err(JwtError::Expired)
    );
}

const RFC7515_A2_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
const RFC7515_A2_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";

fn rfc7515_a2_jwks() -> Jwks {
    let doc = json!({"keys": [{"kty": "RSA", "n": RFC7515_A2_N, "e": "AQAB"}]});
    let parsed = Jwks::from_value(&doc).unwrap();
    assert!(parsed.rejected.is_empty());
    parsed.jwks
}

#[test]
fn rfc7515_a2_rs256() {
    let jwks = rfc7515_a2_jwks();
    let v = verify(
        RFC7515_A2_TOKEN,
        &jwks,
        &rfc_rules(),
        RFC7515_EXP,
        &NoHostCrypto,
    )
    .unwrap();
    assert_eq!(v.alg, Alg::RS256);
    assert_eq!(v.kid, None);
    assert_eq!(
        verify(
            &tamper_signature(RFC7515_A2_TOKEN),
            &jwks,
            &rfc_rules(),
            RFC7515_EXP,
            &NoHostCrypto
        ),
        Err(JwtError::BadSignature)
    );
}

const RFC7515_A3_TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";

#[test]
fn rfc7515_a3_es256() {
    let doc = json!({"keys": [{"kty": "EC", "crv": "P-256",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]});
    let jwks = Jwks::from_value(&doc).unwrap().jwks;
    assert_eq!(jwks.len(), 1);
    let v = verify(
        RFC7515_A3_TOKEN,
        &jwks,
        &rfc_rules(),
        RFC7515_EXP,
        &NoHostCrypto,
    )
    .unwrap();
    assert_eq!(v.alg, Alg::ES256);
    assert_eq!(
        verify(
            &tamper_payload(RFC7515_A3_TOKEN),
            &jwks,
            &rfc_rules(),
            RFC7515_EXP,
            &NoHostCrypto
        ),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn rfc8037_a4_ed25519() {
    let doc = json!({"keys": [{"kty": "OKP", "crv": "Ed25519",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]});
    let jwks = Jwks::from_value(&doc).unwrap().jwks;
    let token = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
    // The RFC's payload is plain text, not a claims set: the signature itself is right...
    let sig = unb64(&segments(token)[2]);
    let key = &jwks.keys[0];
    assert!(verify::signature_ok(
        key,
        Alg::EdDSA,
        &signing_input(token),
        &sig,
        &NoHostCrypto
    ));
    let mut bad = sig.clone();
    bad[10] ^= 0x80;
    assert!(!verify::signature_ok(
        key,
        Alg::EdDSA,
        &signing_input(token),
        &bad,
        &NoHostCrypto
    ));
    // ...but as a JWT it is malformed.
    assert_eq!(
        verify(token, &jwks, &rfc_rules(), 0, &NoHostCrypto),
        Err(JwtError::Malformed("payload is not a JSON object"))
    );
}

// ---------------------------------------------------------------- host crypto

fn material(jwks: &Jwks, kid: &str) -> Material {
    jwks.keys
        .iter()
        .find(|k| k.kid.as_deref() == Some(kid))
        .unwrap()
        .material
        .clone()
}

#[test]
fn spki_der_matches_openssl() {
    let jwks = test_jwks();
    match material(&jwks, "rsa") {
        Material::Rsa { spki, .. } => assert_eq!(b64(&spki), tv::RSA_SPKI_B64),
        _ => panic!("rsa"),
    }
    match material(&jwks, "p256") {
        Material::P256 { spki, .. } => assert_eq!(b64(&spki), tv::P256_SPKI_B64),
        _ => panic!("p256"),
    }
    match material(&jwks, "p384") {
        Material::P384 { spki, .. } => assert_eq!(b64(&spki), tv::P384_SPKI_B64),
        _ => panic!("p384"),
    }
}

#[test]
fn rs_and_es_go_to_the_host_first() {
    for name in ["RS256", "RS384", "RS512", "ES256", "ES384"] {
        let token = valid(name);
        // The host's answer is authoritative: "true" even for a tampered signature...
        let host = RecordingHost::new(Some(true));
        let tampered = tamper_signature(token);
        let v = verify(&tampered, &test_jwks(), &rules(), tv::NOW, &host).unwrap();
        assert_eq!(v.alg.name(), name);
        let calls = host.calls();
        assert_eq!(calls.len(), 1, "{name}");
        let call = &calls[0];
        let expected_hash = match &name[2..] {
            "256" => "sha256",
            "384" => "sha384",
            _ => "sha512",
        };
        assert_eq!(call.hash, expected_hash, "{name}");
        assert_eq!(call.message, signing_input(token), "{name}");
        let expected_spki = match name {
            "ES256" => tv::P256_SPKI_B64,
            "ES384" => tv::P384_SPKI_B64,
            _ => tv::RSA_SPKI_B64,
        };
        assert_eq!(b64(&call.spki), expected_spki, "{name}");
        if name.starts_with("RS") {
            assert_eq!(
                call.signature,
                unb64(&segments(&tampered)[2]),
                "{name}: raw RSA signature"
            );
        } else {
            assert_eq!(call.signature[0], 0x30, "{name}: DER SEQUENCE");
        }
        // ...and "false" rejects a valid one.
        let host = RecordingHost::new(Some(false));
        assert_eq!(
            verify(token, &test_jwks(), &rules(), tv::NOW, &host),
            Err(JwtError::BadSignature),
            "{name}"
        );
        assert_eq!(host.calls().len(), 1);
    }
}

#[test]
fn es256_signature_is_converted_to_der() {
    let host = RecordingHost::new(Some(true));
    verify(tv::ES256_FOR_DER, &test_jwks(), &rules(), tv::NOW, &host).unwrap();
    let calls = host.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(b64(&calls[0].signature), tv::ES256_DER_SIG_B64);
}

#[test]
fn host_unavailable_falls_back_to_pure_rust() {
    for name in ["RS256", "RS384", "RS512", "ES256", "ES384"] {
        let host = RecordingHost::new(None);
        let token = valid(name);
        assert!(
            verify(token, &test_jwks(), &rules(), tv::NOW, &host).is_ok(),
            "{name}"
        );
        assert_eq!(host.calls().len(), 1, "{name}: asked the host first");
        let host = RecordingHost::new(None);
        assert_eq!(
            verify(
                &tamper_signature(token),
                &test_jwks(),
                &rules(),
                tv::NOW,
                &host
            ),
            Err(JwtError::BadSignature),
            "{name}"
        );
        assert_eq!(host.calls().len(), 1, "{name}");
    }
}

#[test]
fn ps_eddsa_hs_never_reach_the_host() {
    for name in [
        "PS256", "PS384", "PS512", "EdDSA", "HS256", "HS384", "HS512",
    ] {
        let host = RecordingHost::new(Some(false));
        assert!(
            verify(valid(name), &test_jwks(), &rules(), tv::NOW, &host).is_ok(),
            "{name}"
        );
        assert!(host.calls().is_empty(), "{name}");
    }
}

#[test]
fn host_is_not_asked_for_a_wrong_length_signature() {
    let host = RecordingHost::new(Some(true));
    let s = segments(valid("ES256"));
    let token = format!("{}.{}.{}", s[0], s[1], b64(&[1u8; 63]));
    assert_eq!(
        verify(&token, &test_jwks(), &rules(), tv::NOW, &host),
        Err(JwtError::BadSignature)
    );
    let s = segments(valid("RS256"));
    let token = format!("{}.{}.{}", s[0], s[1], b64(&[1u8; 255]));
    assert_eq!(
        verify(&token, &test_jwks(), &rules(), tv::NOW, &host),
        Err(JwtError::BadSignature)
    );
    assert!(host.calls().is_empty());
}

// ---------------------------------------------------------------- structure and header hardening

#[test]
fn size_is_bounded_first() {
    let token = valid("RS256");
    let mut r = rules();
    r.max_token_bytes = token.len();
    assert!(check_with(token, &r).is_ok());
    r.max_token_bytes = token.len() - 1;
    assert_eq!(check_with(token, &r), Err(JwtError::TooLarge));
    // Before anything else: even garbage is TooLarge.
    assert_eq!(
        check_with(&"x".repeat(10_000), &rules()),
        Err(JwtError::TooLarge)
    );
}

#[test]
fn jwe_is_encrypted() {
    // RFC 7516 A.1 shape: five segments.
    let jwe = "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.OKOawDo13gRp2ojaHV7LFpZcgV7T6DVZKTyKOMTYUmKoTCVJRgckCL9kiMT03JGeipsEdY3mx_etLbbWSrFr05kLzcSr4qKAq7YN7e9jwQRb23nfa6c9d-StnImGyFDbSv04uVuxIp5Zms1gNxKKK2Da14B8S4rzVRltdYwam_lDp5XnZAYpQdb76FdIKLaVmqgfwX7XWRxv2322i-vDxRfqNzo_tETKzpVLzfiwQyeyPGLBIO56YJ7eObdv0je81860ppamavo35UgoRdbYaBcoh9QcfylQr66oc6vFWXRcZ_ZT2LawVCWTIy3brGPi6UklfCpIMfIjf7iGdXKHzg.48V1_ALb6US04U3b.5eym8TW_c8SuK0ltJ3rpYIzOeDQz7TALvtu6UG9oMo4vpzs9tX_EFShS8iB7j6jiSdiwkIr3ajwQzaBtQD_A.XFBoMYUZodetZdvTiFvSkQ";
    assert_eq!(check(jwe), Err(JwtError::Encrypted));
    assert_eq!(peek_issuer(jwe), None);
}

#[test]
fn wrong_segment_counts_are_malformed() {
    let s = segments(valid("HS256"));
    for bad in [
        s[0].clone(),
        format!("{}.{}", s[0], s[1]),
        format!("{}.{}.{}.{}", s[0], s[1], s[2], s[2]),
        format!("{}.{}.{}.{}.{}.{}", s[0], s[1], s[2], s[2], s[2], s[2]),
        String::new(),
    ] {
        assert_eq!(
            check(&bad),
            Err(JwtError::Malformed("a JWS must have three segments")),
            "{bad}"
        );
    }
}

#[test]
fn empty_segments_are_malformed() {
    let s = segments(valid("HS256"));
    assert_eq!(
        check(&format!(".{}.{}", s[1], s[2])),
        Err(JwtError::Malformed("empty segment"))
    );
    assert_eq!(
        check(&format!("{}..{}", s[0], s[2])),
        Err(JwtError::Malformed("empty segment"))
    );
    assert_eq!(
        check(&format!("{}.{}.", s[0], s[1])),
        Err(JwtError::Malformed("empty signature"))
    );
    assert_eq!(check(".."), Err(JwtError::Malformed("empty segment")));
}

#[test]
fn padding_and_foreign_characters_are_malformed() {
    let token = valid("HS256");
    let s = segments(token);
    // The HS256 signature (32 bytes) would take one '=' of padding.
    assert_eq!(
        check(&format!("{token}=")),
        Err(JwtError::Malformed("padded base64url"))
    );
    assert_eq!(
        check(&format!("{}=.{}.{}", s[0], s[1], s[2])),
        Err(JwtError::Malformed("padded base64url"))
    );
    for c in ['+', '/', ' ', '!', 'é', '\n'] {
        let bad = format!("{}.{}{c}.{}", s[0], s[1], s[2]);
        assert_eq!(
            check(&bad),
            Err(JwtError::Malformed("invalid base64url character")),
            "{c:?}"
        );
    }
    // Non-canonical trailing bits in the last signature character.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = *s[2].as_bytes().last().unwrap();
    let idx = alphabet.iter().position(|&c| c == last).unwrap();
    let noncanonical = alphabet[idx | 1] as char;
    let mut sig = s[2].clone();
    sig.pop();
    sig.push(noncanonical);
    assert_eq!(
        check(&format!("{}.{}.{sig}", s[0], s[1])),
        Err(JwtError::Malformed("invalid base64url"))
    );
    // A segment of impossible length (4n+1 characters: 43 + 2).
    assert_eq!(s[2].len(), 43);
    assert_eq!(
        check(&format!("{}.{}.{}AA", s[0], s[1], s[2])),
        Err(JwtError::Malformed("invalid base64url"))
    );
}

#[test]
fn non_json_header_or_payload_is_malformed() {
    let cases = [
        ("header_not_json", "header is not a JSON object"),
        ("header_array", "header is not a JSON object"),
        ("header_bad_utf8", "invalid UTF-8"),
        ("payload_not_json", "payload is not a JSON object"),
        ("payload_array", "payload is not a JSON object"),
        ("payload_bad_utf8", "invalid UTF-8"),
        ("header_duplicate", "duplicate member name"),
        ("payload_duplicate", "duplicate member name"),
    ];
    for (name, why) in cases {
        assert_eq!(check(hs(name)), Err(JwtError::Malformed(why)), "{name}");
    }
}

#[test]
fn duplicates_only_matter_at_the_top_level() {
    assert!(check(hs("nested_duplicate_ok")).is_ok());
}

#[test]
fn alg_none_in_any_case() {
    assert_eq!(check(tv::ALG_NONE), Err(JwtError::AlgNone));
    assert_eq!(check(hs("alg_none_upper")), Err(JwtError::AlgNone));
    assert_eq!(check(hs("alg_none_mixed")), Err(JwtError::AlgNone));
    // Even when "none" is (wrongly) not in an allow-list, and with a signature attached.
    let mut r = rules();
    r.algorithms = Some(vec![Alg::HS256]);
    assert_eq!(check_with(hs("alg_none_upper"), &r), Err(JwtError::AlgNone));
}

#[test]
fn alg_missing_unknown_or_not_allowed() {
    assert_eq!(
        check(hs("alg_missing")),
        Err(JwtError::Malformed("missing alg"))
    );
    assert_eq!(
        check(hs("alg_number")),
        Err(JwtError::Malformed("alg must be a string"))
    );
    assert_eq!(check(hs("alg_unknown")), Err(JwtError::AlgNotAllowed));
    assert_eq!(check(hs("alg_lowercase")), Err(JwtError::AlgNotAllowed));
    let mut r = rules();
    r.algorithms = Some(vec![Alg::RS256, Alg::ES256]);
    assert!(check_with(valid("RS256"), &r).is_ok());
    assert!(check_with(valid("ES256"), &r).is_ok());
    for name in ["HS256", "PS256", "RS384", "ES384", "EdDSA"] {
        assert_eq!(
            check_with(valid(name), &r),
            Err(JwtError::AlgNotAllowed),
            "{name}"
        );
    }
    r.algorithms = Some(Vec::new());
    assert_eq!(check_with(valid("RS256"), &r), Err(JwtError::AlgNotAllowed));
}

#[test]
fn crit_is_rejected() {
    for name in ["crit_exp", "crit_empty", "crit_string", "b64_false_crit"] {
        assert_eq!(check(hs(name)), Err(JwtError::UnsupportedCrit), "{name}");
    }
}

#[test]
fn b64_false_is_rejected() {
    assert_eq!(check(hs("b64_false")), Err(JwtError::UnsupportedCrit));
    assert_eq!(
        check(hs("b64_string")),
        Err(JwtError::Malformed("b64 must be a boolean"))
    );
    assert!(check(hs("b64_true")).is_ok());
}

#[test]
fn key_referencing_headers_are_forbidden() {
    for name in ["jku", "x5u", "jwk", "x5c"] {
        assert_eq!(
            check(hs(name)),
            Err(JwtError::ForbiddenHeader(name)),
            "{name}"
        );
    }
}

#[test]
fn kid_must_be_a_string() {
    assert_eq!(
        check(hs("kid_number")),
        Err(JwtError::Malformed("kid must be a string"))
    );
}

// ---------------------------------------------------------------- key selection

#[test]
fn unknown_kid() {
    assert_eq!(check(hs("kid_unknown")), Err(JwtError::UnknownKid));
}

#[test]
fn kid_found_but_alg_does_not_fit() {
    let token = with_header(&json!({"alg": "ES384", "kid": "p256"}), valid("ES384"));
    assert_eq!(check(&token), Err(JwtError::NoUsableKey));
    let token = with_header(&json!({"alg": "EdDSA", "kid": "rsa"}), valid("EdDSA"));
    assert_eq!(check(&token), Err(JwtError::NoUsableKey));
    // p256 pins ES256; an ES256 token is fine with it.
    assert!(check(valid("ES256")).is_ok());
}

#[test]
fn no_kid_tries_every_fitting_key() {
    assert!(check(hs("no_kid")).is_ok());
    assert!(check(tv::RS256_NO_KID).unwrap().kid.is_none());
    assert!(check(tv::ES384_NO_KID).is_ok());
    // A signature from a key not in the set.
    let other = rfc7515_a2_jwks();
    assert_eq!(
        verify(tv::RS256_NO_KID, &other, &rules(), tv::NOW, &NoHostCrypto),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn no_kid_and_no_fitting_key() {
    let only_ec = json!({"keys": [serde_json::from_str::<Value>(tv::JWKS).unwrap()["keys"][1]]});
    let jwks = Jwks::from_value(&only_ec).unwrap().jwks;
    assert_eq!(jwks.len(), 1);
    assert_eq!(
        verify(tv::RS256_NO_KID, &jwks, &rules(), tv::NOW, &NoHostCrypto),
        Err(JwtError::NoUsableKey)
    );
    let empty = Jwks::default();
    assert!(empty.is_empty());
    assert_eq!(
        verify(tv::RS256_NO_KID, &empty, &rules(), tv::NOW, &NoHostCrypto),
        Err(JwtError::NoUsableKey)
    );
}

#[test]
fn same_kid_on_several_keys_tries_each() {
    // Rotation overlap: an unrelated key shares the kid "rsa" and comes first.
    let mut doc: Value = serde_json::from_str(tv::JWKS).unwrap();
    let keys = doc["keys"].as_array_mut().unwrap();
    keys.insert(
        0,
        json!({"kty": "RSA", "kid": "rsa", "n": RFC7515_A2_N, "e": "AQAB"}),
    );
    let jwks = Jwks::from_value(&doc).unwrap().jwks;
    assert!(verify(valid("RS256"), &jwks, &rules(), tv::NOW, &NoHostCrypto).is_ok());
}

#[test]
fn key_alg_pins_the_key() {
    let mut doc: Value = serde_json::from_str(tv::JWKS).unwrap();
    doc["keys"][0]["alg"] = json!("RS256");
    let jwks = Jwks::from_value(&doc).unwrap().jwks;
    assert!(verify(valid("RS256"), &jwks, &rules(), tv::NOW, &NoHostCrypto).is_ok());
    for name in ["RS384", "PS256"] {
        assert_eq!(
            verify(valid(name), &jwks, &rules(), tv::NOW, &NoHostCrypto),
            Err(JwtError::NoUsableKey),
            "{name}"
        );
    }
}

#[test]
fn oct_key_without_alg_fits_only_hashes_it_covers() {
    let doc = json!({"keys": [{"kty": "oct", "k": b64(&[7u8; 32])}]});
    let key = &Jwks::from_value(&doc).unwrap().jwks.keys[0];
    assert!(key.fits(Alg::HS256));
    assert!(!key.fits(Alg::HS384));
    assert!(!key.fits(Alg::HS512));
    assert!(!key.fits(Alg::RS256));
    let doc = json!({"keys": [{"kty": "oct", "k": b64(&[7u8; 48])}]});
    let key = &Jwks::from_value(&doc).unwrap().jwks.keys[0];
    assert!(key.fits(Alg::HS384));
    assert!(!key.fits(Alg::HS512));
    // The 64-byte test key verifies all three (see every_algorithm_verifies); a token
    // demanding more than a key holds finds no key.
    let first_32 = b64(&unb64(tv::HMAC_SECRET_B64)[..32]);
    let short = json!({"keys": [{"kty": "oct", "kid": "hmac", "k": first_32}]});
    let jwks = Jwks::from_value(&short).unwrap().jwks;
    assert_eq!(
        verify(valid("HS512"), &jwks, &rules(), tv::NOW, &NoHostCrypto),
        Err(JwtError::NoUsableKey)
    );
}

#[test]
fn fits_follows_kty_and_crv() {
    let jwks = test_jwks();
    let key = |kid: &str| {
        jwks.keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(kid))
            .unwrap()
    };
    let fitting =
        |kid: &str| -> Vec<Alg> { Alg::ALL.into_iter().filter(|a| key(kid).fits(*a)).collect() };
    use Alg::*;
    assert_eq!(
        fitting("rsa"),
        vec![RS256, RS384, RS512, PS256, PS384, PS512]
    );
    assert_eq!(fitting("p256"), vec![ES256]);
    assert_eq!(fitting("p384"), vec![ES384]);
    assert_eq!(fitting("ed"), vec![EdDSA]);
    assert_eq!(fitting("hmac"), vec![HS256, HS384, HS512]);
    assert_eq!(key("rsa").kty(), "RSA");
    // Debug never shows key material.
    let dbg = format!("{:?}", key("hmac"));
    assert!(!dbg.contains(&tv::HMAC_SECRET_B64[..10]), "{dbg}");
}

// ---------------------------------------------------------------- claims

#[test]
fn issuer_must_match_exactly() {
    assert_eq!(check(hs("wrong_iss")), Err(JwtError::WrongIssuer));
    assert_eq!(check(hs("iss_prefix")), Err(JwtError::WrongIssuer));
    assert_eq!(check(hs("no_iss")), Err(JwtError::WrongIssuer));
}

#[test]
fn audience() {
    assert!(check(hs("aud_array")).is_ok());
    assert_eq!(check(hs("aud_wrong")), Err(JwtError::WrongAudience));
    assert_eq!(check(hs("aud_wrong_array")), Err(JwtError::WrongAudience));
    assert_eq!(check(hs("aud_missing")), Err(JwtError::WrongAudience));
    assert!(matches!(
        check(hs("aud_number")),
        Err(JwtError::Malformed(_))
    ));
    // Any configured audience will do.
    let mut r = rules();
    r.audiences = vec!["x".to_string(), "other".to_string()];
    assert!(check_with(hs("aud_wrong"), &r).is_ok());
    // No audiences configured: aud is not checked at all.
    r.audiences.clear();
    for name in ["aud_wrong", "aud_missing", "aud_number"] {
        assert!(check_with(hs(name), &r).is_ok(), "{name}");
    }
}

#[test]
fn expiry_with_skew() {
    assert_eq!(check(hs("expired")), Err(JwtError::Expired));
    assert!(check(hs("exp_in_skew")).is_ok());
    let mut r = rules();
    r.clock_skew_secs = 0;
    assert_eq!(check_with(hs("exp_in_skew"), &r), Err(JwtError::Expired));
    // Exactly at exp + skew is still valid; one second later is not.
    let token = valid("HS256");
    let jwks = test_jwks();
    assert!(verify(token, &jwks, &rules(), tv::NOW + 360, &NoHostCrypto).is_ok());
    assert_eq!(
        verify(token, &jwks, &rules(), tv::NOW + 361, &NoHostCrypto),
        Err(JwtError::Expired)
    );
    assert_eq!(check(hs("negative_exp")), Err(JwtError::Expired));
}

#[test]
fn missing_exp() {
    assert_eq!(check(hs("no_exp")), Err(JwtError::MissingExp));
    let mut r = rules();
    r.require_exp = false;
    let v = check_with(hs("no_exp"), &r).unwrap();
    assert_eq!(v.exp, None);
    // A lifetime bound needs an exp.
    r.max_lifetime_secs = Some(3600);
    assert_eq!(check_with(hs("no_exp"), &r), Err(JwtError::MissingExp));
}

#[test]
fn not_yet_valid() {
    assert_eq!(check(hs("nbf_future")), Err(JwtError::NotYetValid));
    assert!(check(hs("nbf_in_skew")).is_ok());
    assert_eq!(check(hs("iat_future")), Err(JwtError::NotYetValid));
    let mut r = rules();
    r.clock_skew_secs = 0;
    assert_eq!(
        check_with(hs("nbf_in_skew"), &r),
        Err(JwtError::NotYetValid)
    );
}

#[test]
fn lifetime_bound() {
    let mut r = rules();
    r.max_lifetime_secs = Some(3600);
    assert!(check_with(valid("HS256"), &r).is_ok(), "310 s lifetime");
    assert_eq!(
        check_with(hs("long_lifetime"), &r),
        Err(JwtError::LifetimeTooLong)
    );
    assert_eq!(
        check_with(hs("long_lifetime_no_iat"), &r),
        Err(JwtError::LifetimeTooLong)
    );
    r.max_lifetime_secs = Some(310);
    assert!(check_with(valid("HS256"), &r).is_ok(), "exactly the bound");
    r.max_lifetime_secs = Some(309);
    assert_eq!(
        check_with(valid("HS256"), &r),
        Err(JwtError::LifetimeTooLong)
    );
    // Without iat, measured from now.
    r.max_lifetime_secs = Some(86_400);
    assert!(check_with(hs("long_lifetime_no_iat"), &r).is_ok());
    r.max_lifetime_secs = None;
    assert!(check_with(hs("long_lifetime"), &r).is_ok());
}

#[test]
fn numeric_dates() {
    let v = check(hs("float_times")).unwrap();
    assert_eq!(
        v.exp,
        Some(tv::NOW + 300),
        "floats accepted, exp rounded down"
    );
    assert_eq!(
        check(hs("string_exp")),
        Err(JwtError::Malformed("exp must be a number"))
    );
    assert_eq!(
        check(hs("bool_nbf")),
        Err(JwtError::Malformed("nbf must be a number"))
    );
    assert_eq!(
        check(hs("null_iat")),
        Err(JwtError::Malformed("iat must be a number"))
    );
}

#[test]
fn typ_allow_list() {
    let mut r = rules();
    assert!(
        check_with(hs("typ_at_jwt"), &r).is_ok(),
        "typ unchecked by default"
    );
    assert_eq!(
        check_with(hs("typ_number"), &r),
        Err(JwtError::Malformed("typ must be a string"))
    );
    r.typ = Some(vec!["at+jwt".to_string()]);
    assert!(check_with(hs("typ_at_jwt"), &r).is_ok());
    assert!(
        check_with(hs("typ_app_at_jwt"), &r).is_ok(),
        "case and application/ prefix"
    );
    assert_eq!(check_with(hs("typ_jwt"), &r), Err(JwtError::TypNotAllowed));
    assert_eq!(
        check_with(valid("HS384"), &r),
        Err(JwtError::TypNotAllowed),
        "PyJWT typ JWT"
    );
    assert_eq!(
        check_with(hs("no_kid"), &r),
        Err(JwtError::TypNotAllowed),
        "no typ at all"
    );
    r.typ = Some(vec!["Application/JWT".to_string(), "at+jwt".to_string()]);
    assert!(check_with(hs("typ_jwt"), &r).is_ok());
}

#[test]
fn signature_is_checked_before_claims() {
    // An expired token with a bad signature reports the signature.
    assert_eq!(
        check(&tamper_signature(hs("expired"))),
        Err(JwtError::BadSignature)
    );
}

// ---------------------------------------------------------------- peek, still_valid, errors

#[test]
fn peek_issuer_reads_unverified_iss() {
    assert_eq!(peek_issuer(valid("RS256")).as_deref(), Some(tv::ISS));
    assert_eq!(
        peek_issuer(&tamper_signature(hs("wrong_iss"))).as_deref(),
        Some("https://evil.test")
    );
    assert_eq!(peek_issuer(hs("no_iss")), None);
    assert_eq!(peek_issuer(hs("payload_not_json")), None);
    assert_eq!(peek_issuer("not a token"), None);
    assert_eq!(peek_issuer(""), None);
    assert_eq!(peek_issuer(&format!("a.{}.b", b64(br#"{"iss":5}"#))), None);
}

#[test]
fn still_valid_checks_only_exp() {
    let v = check(valid("ES256")).unwrap();
    let r = rules();
    assert!(still_valid(&v, &r, tv::NOW));
    assert!(still_valid(&v, &r, tv::NOW + 360));
    assert!(!still_valid(&v, &r, tv::NOW + 361));
    let mut other = r.clone();
    other.issuer = "someone else".to_string();
    assert!(still_valid(&v, &other, tv::NOW), "issuer is not re-checked");
    let no_exp = Verified { exp: None, ..v };
    assert!(still_valid(&no_exp, &r, u64::MAX));
}

#[test]
fn cache_with_real_verification() {
    let mut cache = TokenCache::new(2);
    let r = rules();
    let token = valid("RS256");
    assert!(cache.get(0, 1, token, &r, tv::NOW).is_none());
    let v = Rc::new(check(token).unwrap());
    cache.insert(0, 1, token, Rc::clone(&v));
    assert_eq!(cache.get(0, 1, token, &r, tv::NOW).unwrap(), v);
    assert!(
        cache.get(0, 1, token, &r, tv::NOW + 361).is_none(),
        "evicted past exp + skew"
    );
    assert_eq!(cache.len(), 0);
}

#[test]
fn error_codes_and_descriptions() {
    let all = [
        JwtError::TooLarge,
        JwtError::Malformed("x"),
        JwtError::Encrypted,
        JwtError::AlgNone,
        JwtError::AlgNotAllowed,
        JwtError::UnsupportedCrit,
        JwtError::ForbiddenHeader("jku"),
        JwtError::UnknownKid,
        JwtError::NoUsableKey,
        JwtError::BadSignature,
        JwtError::Expired,
        JwtError::NotYetValid,
        JwtError::MissingExp,
        JwtError::LifetimeTooLong,
        JwtError::WrongIssuer,
        JwtError::WrongAudience,
        JwtError::TypNotAllowed,
    ];
    let codes: Vec<&str> = all.iter().map(JwtError::code).collect();
    assert_eq!(
        codes,
        [
            "too_large",
            "malformed",
            "encrypted",
            "alg_none",
            "alg_not_allowed",
            "unsupported_crit",
            "forbidden_header",
            "unknown_kid",
            "no_usable_key",
            "bad_signature",
            "expired",
            "not_yet_valid",
            "missing_exp",
            "lifetime_too_long",
            "wrong_issuer",
            "wrong_audience",
            "typ_not_allowed"
        ]
    );
    for e in &all {
        let d = e.description();
        assert!(!d.is_empty());
        assert!(d.chars().all(|c| c.is_ascii_graphic() || c == ' '), "{d}");
        assert!(!d.contains('"') && !d.contains('\\'), "{d}");
    }
    assert_eq!(
        JwtError::Malformed("empty segment").to_string(),
        "malformed: empty segment"
    );
    assert_eq!(JwtError::Expired.to_string(), "expired");
}

// ---------------------------------------------------------------- JWKS parsing

fn parse_one(jwk: Value) -> ParsedJwks {
    Jwks::from_value(&json!({ "keys": [jwk] })).unwrap()
}

fn rejected_one(jwk: Value) -> String {
    let parsed = parse_one(jwk);
    assert!(parsed.jwks.is_empty(), "accepted: {:?}", parsed.jwks);
    assert_eq!(parsed.rejected.len(), 1);
    parsed.rejected[0].clone()
}

fn test_jwk(kid: &str) -> Value {
    let doc: Value = serde_json::from_str(tv::JWKS).unwrap();
    doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap()
        .clone()
}

#[test]
fn jwks_document_errors() {
    assert!(Jwks::parse(b"not json").is_err());
    assert!(Jwks::parse(b"[]").is_err());
    assert!(Jwks::parse(b"{}").is_err());
    assert!(Jwks::parse(br#"{"keys":{}}"#).is_err());
    let empty = Jwks::parse(br#"{"keys":[]}"#).unwrap();
    assert!(empty.jwks.is_empty() && empty.rejected.is_empty());
}

#[test]
fn weak_rsa_key_is_rejected_with_its_name() {
    let mut doc: Value = serde_json::from_str(tv::JWKS).unwrap();
    let keys = doc["keys"].as_array_mut().unwrap();
    keys.insert(
        2,
        json!({"kty": "RSA", "kid": "old", "n": tv::RSA_1024_N, "e": "AQAB"}),
    );
    let parsed = Jwks::from_value(&doc).unwrap();
    assert_eq!(parsed.jwks.len(), 5);
    assert_eq!(
        parsed.rejected,
        vec!["keys[2] (kid \"old\"): RSA modulus is 1024 bits; at least 2048 required".to_string()]
    );
}

#[test]
fn weak_or_broken_keys_are_rejected() {
    let rsa = test_jwk("rsa");
    let p256 = test_jwk("p256");
    let p384 = test_jwk("p384");
    let ed = test_jwk("ed");
    let mut cases: Vec<(Value, &str)> = vec![
        (
            json!({"kty": "oct", "k": b64(&[1; 31])}),
            "oct key is 31 bytes; an oct key without \"alg\" requires at least 32",
        ),
        (
            json!({"kty": "oct", "alg": "HS256", "k": b64(&[1; 31])}),
            "oct key is 31 bytes; HS256 requires at least 32",
        ),
        (
            json!({"kty": "oct", "alg": "HS384", "k": b64(&[1; 32])}),
            "oct key is 32 bytes; HS384 requires at least 48",
        ),
        (
            json!({"kty": "oct", "alg": "HS512", "k": b64(&[1; 48])}),
            "oct key is 48 bytes; HS512 requires at least 64",
        ),
        (
            json!({"kty": "oct", "alg": "RS256", "k": b64(&[1; 64])}),
            "\"alg\" RS256 does not match a oct key",
        ),
        (json!({"kty": "oct"}), "missing \"k\""),
        (json!({"kty": "RSA", "e": "AQAB"}), "missing \"n\""),
        (
            json!({"kty": "RSA", "n": rsa["n"], "e": "AQ"}),
            "RSA public exponent",
        ),
        (
            json!({"kty": "RSA", "n": rsa["n"], "e": "AAAB"}),
            "RSA public exponent",
        ),
        (
            json!({"kty": "RSA", "n": rsa["n"], "e": "AQAA"}),
            "RSA public exponent",
        ),
        (
            json!({"kty": "RSA", "n": b64(&[0xfe; 256]), "e": "AQAB"}),
            "RSA modulus is even",
        ),
        (
            json!({"kty": "RSA", "n": b64(&[0xff; 1025]), "e": "AQAB"}),
            "RSA modulus is 8200 bits; at most 8192 supported",
        ),
        (
            json!({"kty": "RSA", "n": "!!", "e": "AQAB"}),
            "\"n\" is not valid base64url",
        ),
        (
            json!({"kty": "RSA", "n": 5, "e": "AQAB"}),
            "\"n\" must be a string",
        ),
        (
            json!({"kty": "RSA", "alg": "ES256", "n": rsa["n"], "e": "AQAB"}),
            "\"alg\" ES256 does not match a RSA key",
        ),
        (
            json!({"kty": "RSA", "alg": "RSA-OAEP", "n": rsa["n"], "e": "AQAB"}),
            "\"alg\" \"RSA-OAEP\" is not a supported signature algorithm",
        ),
        (
            json!({"kty": "RSA", "alg": "none", "n": rsa["n"], "e": "AQAB"}),
            "is not a supported signature algorithm",
        ),
        (
            json!({"kty": "RSA", "n": rsa["n"], "e": "AQAB", "d": "AQAB"}),
            "contains private key material (\"d\")",
        ),
        (
            json!({"kty": "EC", "crv": "P-256", "x": p256["x"], "y": p384["y"]}),
            "\"y\" is 48 bytes; P-256 needs exactly 32",
        ),
        (
            json!({"kty": "EC", "crv": "P-521", "x": p256["x"], "y": p256["y"]}),
            "unsupported EC \"crv\" \"P-521\"",
        ),
        (
            json!({"kty": "EC", "crv": "secp256k1", "x": p256["x"], "y": p256["y"]}),
            "unsupported EC \"crv\"",
        ),
        (
            json!({"kty": "EC", "x": p256["x"], "y": p256["y"]}),
            "missing \"crv\"",
        ),
        (
            json!({"kty": "EC", "crv": "P-256", "alg": "ES384", "x": p256["x"], "y": p256["y"]}),
            "\"alg\" ES384 does not match a EC key on P-256",
        ),
        (
            json!({"kty": "EC", "crv": "P-384", "alg": "ES256", "x": p384["x"], "y": p384["y"]}),
            "\"alg\" ES256 does not match a EC key on P-384",
        ),
        (
            json!({"kty": "EC", "crv": "P-256", "x": p256["x"], "y": p256["y"], "d": "AA"}),
            "private key material",
        ),
        (
            json!({"kty": "OKP", "crv": "Ed448", "x": ed["x"]}),
            "unsupported OKP \"crv\" \"Ed448\"",
        ),
        (
            json!({"kty": "OKP", "crv": "X25519", "x": ed["x"]}),
            "unsupported OKP \"crv\"",
        ),
        (
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&[1; 31])}),
            "\"x\" is 31 bytes; Ed25519 needs exactly 32",
        ),
        // The identity point: small order.
        (
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&{ let mut b = [0u8; 32]; b[0] = 1; b })}),
            "weak",
        ),
        (
            json!({"kty": "OKP", "crv": "Ed25519", "alg": "ES256", "x": ed["x"]}),
            "does not match a OKP key",
        ),
        (json!({"kty": "XYZ"}), "unsupported \"kty\" \"XYZ\""),
        (json!({"n": rsa["n"], "e": "AQAB"}), "missing \"kty\""),
        (
            json!({"kty": "RSA", "use": "other", "n": rsa["n"], "e": "AQAB"}),
            "\"use\" is \"other\"",
        ),
        (
            json!({"kty": "RSA", "kid": 5, "n": rsa["n"], "e": "AQAB"}),
            "\"kid\" must be a string",
        ),
    ];
    // Off-curve point: flip a bit of y.
    for (jwk, crv_len) in [(&p256, 32usize), (&p384, 48)] {
        let mut y = unb64(jwk["y"].as_str().unwrap());
        assert_eq!(y.len(), crv_len);
        y[crv_len - 1] ^= 1;
        let mut bad = jwk.clone();
        bad["y"] = json!(b64(&y));
        cases.push((bad, "point is not on the curve"));
    }
    for (jwk, want) in cases {
        let msg = rejected_one(jwk.clone());
        assert!(msg.starts_with("keys[0]"), "{msg}");
        assert!(msg.contains(want), "{jwk}: got {msg:?}, want {want:?}");
    }
}

#[test]
fn non_object_key_is_rejected() {
    let parsed = Jwks::from_value(&json!({"keys": ["nope", test_jwk("ed")]})).unwrap();
    assert_eq!(
        parsed.rejected,
        vec!["keys[0]: not a JSON object".to_string()]
    );
    assert_eq!(parsed.jwks.len(), 1);
}

#[test]
fn enc_keys_are_skipped_silently() {
    let mut jwk = test_jwk("rsa");
    jwk["use"] = json!("enc");
    jwk["alg"] = json!("RSA-OAEP");
    let parsed = parse_one(jwk);
    assert!(parsed.jwks.is_empty());
    assert!(parsed.rejected.is_empty());
}

#[test]
fn keys_whose_key_ops_exclude_verify_never_verify() {
    for ops in [
        json!(["encrypt"]),
        json!(["sign"]),
        json!([]),
        json!(["wrapKey"]),
    ] {
        let mut jwk = test_jwk("rsa");
        jwk["key_ops"] = ops.clone();
        let parsed = parse_one(jwk);
        assert!(parsed.jwks.is_empty(), "{ops}");
        assert!(parsed.rejected.is_empty(), "{ops}");
        assert!(verify(
            valid("RS256"),
            &parsed.jwks,
            &rules(),
            tv::NOW,
            &NoHostCrypto
        )
        .is_err());
    }
    let mut jwk = test_jwk("rsa");
    jwk["key_ops"] = json!(["sign", "verify"]);
    let parsed = parse_one(jwk);
    assert!(verify(
        valid("RS256"),
        &parsed.jwks,
        &rules(),
        tv::NOW,
        &NoHostCrypto
    )
    .is_ok());
    let mut jwk = test_jwk("rsa");
    jwk["key_ops"] = json!("verify");
    let parsed = parse_one(jwk);
    assert!(parsed.jwks.is_empty());
    assert_eq!(parsed.rejected.len(), 1);
}

#[test]
fn x5c_and_x5t_are_ignored() {
    let mut jwk = test_jwk("rsa");
    jwk["x5c"] = json!(["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]);
    jwk["x5t"] = json!("abc");
    jwk["x5t#S256"] = json!("def");
    jwk["key_ops"] = json!(["verify"]);
    let parsed = parse_one(jwk);
    assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
    let jwks = parsed.jwks;
    assert!(verify(valid("RS256"), &jwks, &rules(), tv::NOW, &NoHostCrypto).is_ok());
}

#[test]
fn jwk_members_tolerate_padding_and_leading_zeros() {
    let mut jwk = test_jwk("rsa");
    let mut n = vec![0u8];
    n.extend(unb64(jwk["n"].as_str().unwrap()));
    jwk["n"] = json!(base64::engine::general_purpose::URL_SAFE.encode(&n));
    let parsed = parse_one(jwk);
    assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
    let jwks = parsed.jwks;
    assert!(verify(valid("PS512"), &jwks, &rules(), tv::NOW, &NoHostCrypto).is_ok());
    match &jwks.keys[0].material {
        Material::Rsa { spki, .. } => assert_eq!(b64(spki), tv::RSA_SPKI_B64),
        _ => panic!("rsa"),
    }
}

#[test]
fn demo_jwks_parses_cleanly() {
    let parsed = Jwks::parse(include_bytes!("../../envoy/demo/jwks.json")).unwrap();
    assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
    let kids: Vec<_> = parsed
        .jwks
        .keys
        .iter()
        .map(|k| k.kid.clone().unwrap())
        .collect();
    assert_eq!(
        kids,
        [
            "demo-rs256",
            "demo-es256",
            "demo-es384",
            "demo-ed25519",
            "demo-hs256"
        ]
    );
    let algs: Vec<_> = parsed.jwks.keys.iter().map(|k| k.alg.unwrap()).collect();
    assert_eq!(
        algs,
        [Alg::RS256, Alg::ES256, Alg::ES384, Alg::EdDSA, Alg::HS256]
    );
}

// ---------------------------------------------------------------- minting (native only)

#[cfg(not(target_arch = "wasm32"))]
mod minting {
    use super::*;
    use crate::jwt::mint::mint;

    fn claims() -> Value {
        json!({"iss": tv::ISS, "aud": "api", "sub": "bob", "iat": tv::NOW, "exp": tv::NOW + 60})
    }

    fn demo_secret() -> Vec<u8> {
        let file = include_bytes!("../../envoy/demo/hs256.key");
        let raw = crate::jwt::mint::secret_from_key_file(file).unwrap();
        assert_eq!(raw.len(), 32);
        assert_eq!(raw, unb64(std::str::from_utf8(file).unwrap().trim()));
        raw
    }

    #[test]
    fn secret_from_key_file_decodes_base64url() {
        use crate::jwt::mint::secret_from_key_file;
        assert_eq!(secret_from_key_file(b"AQID\n").unwrap(), vec![1, 2, 3]);
        assert_eq!(secret_from_key_file(b"  AQI=\r\n").unwrap(), vec![1, 2]);
        assert!(secret_from_key_file(b"not base64!").is_err());
        assert!(secret_from_key_file(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn mint_with_demo_keys_verifies_against_demo_jwks() {
        let jwks = Jwks::parse(include_bytes!("../../envoy/demo/jwks.json"))
            .unwrap()
            .jwks;
        let secret = demo_secret();
        let cases: [(Alg, &[u8], &str); 5] = [
            (
                Alg::RS256,
                include_bytes!("../../envoy/demo/rs256.pem"),
                "demo-rs256",
            ),
            (
                Alg::ES256,
                include_bytes!("../../envoy/demo/es256.pem"),
                "demo-es256",
            ),
            (
                Alg::ES384,
                include_bytes!("../../envoy/demo/es384.pem"),
                "demo-es384",
            ),
            (
                Alg::EdDSA,
                include_bytes!("../../envoy/demo/ed25519.pem"),
                "demo-ed25519",
            ),
            (Alg::HS256, &secret, "demo-hs256"),
        ];
        for (alg, key, kid) in cases {
            let token = mint(alg, key, Some(kid), &claims()).unwrap();
            let v = verify(&token, &jwks, &rules(), tv::NOW, &NoHostCrypto)
                .unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(v.alg, alg);
            assert_eq!(v.kid.as_deref(), Some(kid));
            assert_eq!(v.claims["sub"], "bob");
            let header: Value = serde_json::from_slice(&unb64(&segments(&token)[0])).unwrap();
            assert_eq!(header, json!({"alg": alg.name(), "typ": "JWT", "kid": kid}));
        }
    }

    #[test]
    fn mint_with_pkcs1_and_sec1_pems() {
        let jwks = test_jwks();
        let cases = [
            (Alg::RS256, tv::RSA_PKCS1_PEM, "rsa"),
            (Alg::RS384, tv::RSA_PKCS1_PEM, "rsa"),
            (Alg::RS512, tv::RSA_PKCS1_PEM, "rsa"),
            (Alg::ES256, tv::P256_SEC1_PEM, "p256"),
            (Alg::ES384, tv::P384_SEC1_PEM, "p384"),
        ];
        for (alg, pem, kid) in cases {
            let token = mint(alg, pem.as_bytes(), Some(kid), &claims()).unwrap();
            assert!(
                verify(&token, &jwks, &rules(), tv::NOW, &NoHostCrypto).is_ok(),
                "{alg}"
            );
        }
        // HS384/HS512 with the 64-byte test secret; no kid in the header.
        let secret = unb64(tv::HMAC_SECRET_B64);
        for alg in [Alg::HS384, Alg::HS512] {
            let token = mint(alg, &secret, None, &claims()).unwrap();
            let v = verify(&token, &jwks, &rules(), tv::NOW, &NoHostCrypto).unwrap();
            assert_eq!(v.kid, None);
        }
    }

    #[test]
    fn mint_errors() {
        let es256 = include_bytes!("../../envoy/demo/es256.pem");
        assert!(mint(
            Alg::PS256,
            include_bytes!("../../envoy/demo/rs256.pem"),
            None,
            &claims()
        )
        .is_err());
        assert!(
            mint(Alg::ES384, es256, None, &claims()).is_err(),
            "wrong curve"
        );
        assert!(mint(Alg::RS256, es256, None, &claims()).is_err(), "not RSA");
        assert!(
            mint(Alg::EdDSA, es256, None, &claims()).is_err(),
            "not Ed25519"
        );
        assert!(
            mint(Alg::HS256, &[1; 31], None, &claims()).is_err(),
            "short secret"
        );
        assert!(
            mint(Alg::HS256, &[1; 32], None, &json!([1])).is_err(),
            "claims not an object"
        );
        assert!(mint(Alg::ES256, b"garbage", None, &claims()).is_err());
    }
}

// ------------------------------------------- ECDSA without the curve crates (Wasm)

/// The hand-built DER of `ecdsa_der` is what the p256/p384 crates produce, including
/// `r`/`s` with a leading zero byte or the high bit set, and out-of-range values are
/// refused as `Signature::from_slice` refuses them.
#[test]
fn ecdsa_der_matches_the_curve_crates() {
    use super::jwk::{P256, P384};
    use super::verify::ecdsa_der;
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as u8
    };
    for round in 0..400 {
        let mut sig256: Vec<u8> = (0..64).map(|_| next()).collect();
        let mut sig384: Vec<u8> = (0..96).map(|_| next()).collect();
        match round % 4 {
            0 => {
                sig256[0] = 0;
                sig384[48] = 0;
            }
            1 => {
                sig256[32] = 0x80;
                sig384[0] = 0x7f;
            }
            2 => {
                sig256[..31].fill(0);
                sig384[48..95].fill(0);
            }
            _ => {}
        }
        let want = p256::ecdsa::Signature::from_slice(&sig256)
            .ok()
            .map(|s| s.to_der().as_bytes().to_vec());
        assert_eq!(ecdsa_der(&P256, &sig256), want, "{sig256:02x?}");
        let want = p384::ecdsa::Signature::from_slice(&sig384)
            .ok()
            .map(|s| s.to_der().as_bytes().to_vec());
        assert_eq!(ecdsa_der(&P384, &sig384), want, "{sig384:02x?}");
    }
    // Zero, n itself and all-ones are refused; n - 1 is accepted.
    let n256 = P256.n.to_vec();
    let mut n_minus_1 = n256.clone();
    *n_minus_1.last_mut().unwrap() -= 1;
    for (r, ok) in [
        (vec![0u8; 32], false),
        (n256.clone(), false),
        (vec![0xff; 32], false),
        (n_minus_1, true),
    ] {
        let sig = [r.as_slice(), &[1u8; 32]].concat();
        assert_eq!(ecdsa_der(&P256, &sig).is_some(), ok, "{r:02x?}");
    }
    assert_eq!(ecdsa_der(&P256, &[1u8; 63]), None);
}

/// `on_curve` (big-integer arithmetic, the Wasm module's key check) agrees with the
/// p256/p384 crates on the test keys and on points moved off the curve.
#[test]
fn on_curve_agrees_with_the_curve_crates() {
    use super::jwk::{on_curve, P256, P384};
    for (name, curve, len) in [("p256", &P256, 32usize), ("p384", &P384, 48)] {
        let jwk = test_jwk(name);
        let x = unb64(jwk["x"].as_str().unwrap());
        let y = unb64(jwk["y"].as_str().unwrap());
        assert!(on_curve(curve, &x, &y), "{name}");
        for i in 0..len {
            let mut y2 = y.clone();
            y2[i] ^= 0x10;
            let mut point = vec![4u8];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y2);
            let crate_says = if len == 32 {
                p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).is_ok()
            } else {
                p384::ecdsa::VerifyingKey::from_sec1_bytes(&point).is_ok()
            };
            assert_eq!(on_curve(curve, &x, &y2), crate_says, "{name} byte {i}");
        }
        // Coordinates at or above p are refused even if they reduce onto the curve.
        assert!(!on_curve(curve, curve.p_bytes(), &y), "{name}");
    }
}
