//! What one cache-missing RS256/ES256 verification costs in the module, piece by piece,
//! without the host: `cargo test --lib cost_split -- --ignored --nocapture` natively, or
//! as Wasm under wasmtime (`make unit-wasm` with the same arguments), which is what V8
//! runs in Envoy. The host's share (`verify_signature`: the call, Envoy's protobuf parse,
//! BoringSSL's DER import and verify) is what the Envoy bench measures beyond these; see
//! docs/performance.md. Timings only print; nothing is asserted about them.

#![allow(clippy::unwrap_used, clippy::panic, clippy::print_stdout)]

use super::test_vectors::{ISS, JWKS, NOW, VALID};
use super::{verify, Jwks, Rules, TokenCache};
use crate::host::HostCrypto;
use crate::hostcrypto::{decode_verify_result, encode_verify_args};
use std::hint::black_box;
use std::rc::Rc;
use std::time::Instant;

/// The module's side of a host verification, minus the crossing: encode the arguments,
/// decode a `true` answer.
struct EncodeOnly;

impl HostCrypto for EncodeOnly {
    fn verify_signature(&self, hash: &str, spki: &[u8], sig: &[u8], msg: &[u8]) -> Option<bool> {
        let args = encode_verify_args(hash, spki, sig, msg);
        black_box(&args);
        Some(decode_verify_result(&[0x08, 0x01]))
    }
}

fn per_iter(n: u32, mut f: impl FnMut(u32)) -> f64 {
    for i in 0..n / 10 {
        f(i);
    }
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    start.elapsed().as_nanos() as f64 / f64::from(n) / 1000.0
}

fn rules() -> Rules {
    Rules {
        issuer: ISS.to_string(),
        audiences: vec!["api".to_string()],
        max_token_bytes: 8192,
        ..Rules::default()
    }
}

#[test]
#[ignore = "timing report, not a check"]
fn cost_split() {
    let jwks = Jwks::parse(JWKS.as_bytes()).unwrap().jwks;
    let rules = rules();
    for alg in ["RS256", "ES256"] {
        let token = VALID.iter().find(|(a, _)| *a == alg).unwrap().1;
        verify(token, &jwks, &rules, NOW, &EncodeOnly).unwrap();
        let n = 20_000;
        let whole = per_iter(n, |_| {
            black_box(verify(black_box(token), &jwks, &rules, NOW, &EncodeOnly).is_ok());
        });
        let (signing_input, sig) = token.rsplit_once('.').unwrap();
        let sig =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
        let spki = vec![0u8; if alg == "RS256" { 294 } else { 91 }];
        let encode = per_iter(n, |_| {
            black_box(encode_verify_args(
                "sha256",
                &spki,
                &sig,
                signing_input.as_bytes(),
            ));
        });
        let kid = if alg == "RS256" { "rsa" } else { "p256" };
        let key = jwks
            .keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(kid))
            .unwrap();
        let alg_v = super::Alg::parse(alg).unwrap();
        let signature = per_iter(n, |_| {
            black_box(super::verify::signature_ok(
                key,
                alg_v,
                signing_input.as_bytes(),
                &sig,
                &EncodeOnly,
            ));
        });
        let peek = per_iter(n, |_| {
            black_box(super::peek_issuer(black_box(token)));
        });
        // A full cache (1024, the default) of distinct tokens: each insert evicts one.
        let v = Rc::new(verify(token, &jwks, &rules, NOW, &EncodeOnly).unwrap());
        let tokens: Vec<String> = (0..4096).map(|i| format!("{token}{i}")).collect();
        let mut cache = TokenCache::new(1024);
        for t in tokens.iter().take(1024) {
            cache.insert(0, 1, t, v.clone());
        }
        let insert = per_iter(n, |i| {
            let t = &tokens[(i as usize + 1024) % tokens.len()];
            cache.insert(0, 1, t, v.clone());
        });
        println!(
            "cost_split {alg} ({} B token): verify without the host call {whole:.2} µs \
             (of which the signature step without the call {signature:.2} µs, argument \
             encoding {encode:.2} µs); a JSON parse of the payload (peek_issuer) {peek:.2} µs; \
             cache insert into a full cache {insert:.2} µs",
            token.len()
        );
    }
}
