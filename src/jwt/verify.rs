//! Token verification: structure, header hardening (RFC 8725), key selection, signature,
//! claims.

use super::alg::{Alg, Family};
use super::jwk::{der_tlv, der_uint, strip_leading_zeros, Curve, Jwks, Key, Material, P256, P384};
use super::{JwtError, Rules, Verified};
use crate::host::HostCrypto;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// Header members that point at keys outside the configured JWKS. Never honoured: a token
/// carrying one is rejected.
const FORBIDDEN_HEADERS: [&str; 4] = ["jku", "x5u", "jwk", "x5c"];

/// Everything: size bound, structure, header hardening, key selection, signature, then
/// claims. `host` verifies RS*/ES* when it can (`Some`), pure Rust does the rest.
pub fn verify(
    token: &str,
    jwks: &Jwks,
    rules: &Rules,
    now_secs: u64,
    host: &dyn HostCrypto,
) -> Result<Verified, JwtError> {
    if token.len() > rules.max_token_bytes {
        return Err(JwtError::TooLarge);
    }
    let (h64, p64, s64) = split(token)?;

    let header = json_object(h64, "header is not a JSON object")?;
    let alg = header_alg(&header, rules)?;
    check_header(&header)?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(JwtError::Malformed("kid must be a string")),
    };
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(_) => return Err(JwtError::Malformed("typ must be a string")),
    };

    let claims = json_object(p64, "payload is not a JSON object")?;
    if s64.is_empty() {
        return Err(JwtError::Malformed("empty signature"));
    }
    let signature = b64(s64)?;
    // `split` guarantees `token` starts with `h64 '.' p64`.
    let signing_input = token
        .as_bytes()
        .get(..h64.len() + 1 + p64.len())
        .ok_or(JwtError::Malformed("truncated token"))?;

    check_signature(jwks, kid.as_deref(), alg, signing_input, &signature, host)?;

    let exp = check_claims(&claims, rules, now_secs)?;
    if let Some(allowed) = &rules.typ {
        let ok = typ.is_some_and(|t| {
            let t = normalize_typ(t);
            allowed.iter().any(|a| normalize_typ(a) == t)
        });
        if !ok {
            return Err(JwtError::TypNotAllowed);
        }
    }

    Ok(Verified {
        claims,
        payload_b64: p64.to_string(),
        exp,
        alg,
        kid,
    })
}

/// Cheap peek at the unverified payload's `iss`, to pick among several providers without
/// paying for a signature. `None` if undecodable.
pub fn peek_issuer(token: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Peek {
        iss: Option<String>,
    }
    // Far beyond any sane token; keeps the peek cheap whatever the caller's bound.
    if token.len() > 64 * 1024 {
        return None;
    }
    let (_, p64, _) = split(token).ok()?;
    let payload = b64(p64).ok()?;
    serde_json::from_slice::<Peek>(&payload).ok()?.iss
}

/// Re-checks only the time bound (`exp` with skew) of a cached token.
pub fn still_valid(v: &Verified, rules: &Rules, now_secs: u64) -> bool {
    v.exp
        .is_none_or(|exp| now_secs <= exp.saturating_add(rules.clock_skew_secs))
}

// ---- structure ----

/// Splits a JWS compact token into its three segments, each checked to be non-empty
/// (except the signature, checked by the caller after the header) unpadded base64url.
fn split(token: &str) -> Result<(&str, &str, &str), JwtError> {
    let dots = token.bytes().filter(|&b| b == b'.').count();
    if dots == 4 {
        return Err(JwtError::Encrypted);
    }
    if dots != 2 {
        return Err(JwtError::Malformed("a JWS must have three segments"));
    }
    let mut parts = token.splitn(3, '.');
    let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed("a JWS must have three segments"));
    };
    if h.is_empty() || p.is_empty() {
        return Err(JwtError::Malformed("empty segment"));
    }
    for seg in [h, p, s] {
        check_b64_chars(seg)?;
    }
    Ok((h, p, s))
}

fn check_b64_chars(seg: &str) -> Result<(), JwtError> {
    for b in seg.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => {}
            b'=' => return Err(JwtError::Malformed("padded base64url")),
            _ => return Err(JwtError::Malformed("invalid base64url character")),
        }
    }
    Ok(())
}

fn b64(seg: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(seg)
        .map_err(|_| JwtError::Malformed("invalid base64url"))
}

fn json_object(seg: &str, what: &'static str) -> Result<Map<String, Value>, JwtError> {
    let bytes = b64(seg)?;
    if std::str::from_utf8(&bytes).is_err() {
        return Err(JwtError::Malformed("invalid UTF-8"));
    }
    match serde_json::from_slice::<UniqueObject>(&bytes) {
        Ok(UniqueObject(map)) => Ok(map),
        Err(e) if e.to_string().starts_with(DUPLICATE) => {
            Err(JwtError::Malformed("duplicate member name"))
        }
        Err(_) => Err(JwtError::Malformed(what)),
    }
}

const DUPLICATE: &str = "duplicate member";

/// A JSON object whose top-level member names are unique. RFC 7515 §5.2 allows either
/// rejecting duplicates or taking the last one; rejecting them means no component behind
/// the filter (which receives the payload) can read a different value than we checked.
struct UniqueObject(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for UniqueObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<UniqueObject, A::Error> {
                let mut map = Map::new();
                while let Some(name) = access.next_key::<String>()? {
                    let value: Value = access.next_value()?;
                    if map.insert(name, value).is_some() {
                        return Err(serde::de::Error::custom(DUPLICATE));
                    }
                }
                Ok(UniqueObject(map))
            }
        }
        d.deserialize_map(Members)
    }
}

// ---- header ----

fn header_alg(header: &Map<String, Value>, rules: &Rules) -> Result<Alg, JwtError> {
    let name = match header.get("alg") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(JwtError::Malformed("alg must be a string")),
        None => return Err(JwtError::Malformed("missing alg")),
    };
    if name.eq_ignore_ascii_case("none") {
        return Err(JwtError::AlgNone);
    }
    let alg = Alg::parse(name).ok_or(JwtError::AlgNotAllowed)?;
    if let Some(allowed) = &rules.algorithms {
        if !allowed.contains(&alg) {
            return Err(JwtError::AlgNotAllowed);
        }
    }
    Ok(alg)
}

fn check_header(header: &Map<String, Value>) -> Result<(), JwtError> {
    // RFC 7515 §4.1.11: we understand no extension, so any `crit` (and a malformed one:
    // not an array, or empty) is rejected.
    if header.contains_key("crit") {
        return Err(JwtError::UnsupportedCrit);
    }
    // RFC 7797 unencoded payloads: only the default `b64: true` is accepted.
    match header.get("b64") {
        None | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Err(JwtError::UnsupportedCrit),
        Some(_) => return Err(JwtError::Malformed("b64 must be a boolean")),
    }
    if let Some(name) = FORBIDDEN_HEADERS.iter().find(|h| header.contains_key(**h)) {
        return Err(JwtError::ForbiddenHeader(name));
    }
    Ok(())
}

/// Lowercase, without an `application/` prefix (RFC 7515 §4.1.9).
fn normalize_typ(t: &str) -> String {
    let lower = t.to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) => rest.to_string(),
        None => lower,
    }
}

// ---- keys and signatures ----

fn check_signature(
    jwks: &Jwks,
    kid: Option<&str>,
    alg: Alg,
    input: &[u8],
    sig: &[u8],
    host: &dyn HostCrypto,
) -> Result<(), JwtError> {
    let mut candidates: Vec<&Key> = match kid {
        Some(kid) => {
            let named: Vec<&Key> = jwks
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect();
            if named.is_empty() {
                return Err(JwtError::UnknownKid);
            }
            named
        }
        None => jwks.keys.iter().collect(),
    };
    candidates.retain(|k| k.fits(alg));
    if candidates.is_empty() {
        return Err(JwtError::NoUsableKey);
    }
    if candidates
        .into_iter()
        .any(|k| signature_ok(k, alg, input, sig, host))
    {
        Ok(())
    } else {
        Err(JwtError::BadSignature)
    }
}

/// Verifies one signature with one key that [`Key::fits`] `alg`.
pub(crate) fn signature_ok(
    key: &Key,
    alg: Alg,
    input: &[u8],
    sig: &[u8],
    host: &dyn HostCrypto,
) -> bool {
    match (&key.material, alg.family()) {
        (Material::Rsa { key, spki }, Family::RsaPkcs1) => {
            if sig.len() != rsa::traits::PublicKeyParts::size(key) {
                return false;
            }
            if let Some(ok) = host.verify_signature(alg.host_hash(), spki, sig, input) {
                return ok;
            }
            let (scheme, digest) = match alg {
                Alg::RS384 => (
                    rsa::Pkcs1v15Sign::new::<Sha384>(),
                    Sha384::digest(input).to_vec(),
                ),
                Alg::RS512 => (
                    rsa::Pkcs1v15Sign::new::<Sha512>(),
                    Sha512::digest(input).to_vec(),
                ),
                _ => (
                    rsa::Pkcs1v15Sign::new::<Sha256>(),
                    Sha256::digest(input).to_vec(),
                ),
            };
            key.verify(scheme, &digest, sig).is_ok()
        }
        (Material::Rsa { key, .. }, Family::RsaPss) => {
            let (scheme, digest) = match alg {
                Alg::PS384 => (rsa::Pss::new::<Sha384>(), Sha384::digest(input).to_vec()),
                Alg::PS512 => (rsa::Pss::new::<Sha512>(), Sha512::digest(input).to_vec()),
                _ => (rsa::Pss::new::<Sha256>(), Sha256::digest(input).to_vec()),
            };
            key.verify(scheme, &digest, sig).is_ok()
        }
        (Material::P256 { spki, .. }, Family::EcP256) => {
            let Some(der) = ecdsa_der(&P256, sig) else {
                return false;
            };
            match host.verify_signature("sha256", spki, &der, input) {
                Some(ok) => ok,
                None => ec_fallback(&key.material, input, sig),
            }
        }
        (Material::P384 { spki, .. }, Family::EcP384) => {
            let Some(der) = ecdsa_der(&P384, sig) else {
                return false;
            };
            match host.verify_signature("sha384", spki, &der, input) {
                Some(ok) => ok,
                None => ec_fallback(&key.material, input, sig),
            }
        }
        (Material::Ed25519 { key }, Family::Ed25519) => {
            let Ok(s) = ed25519_dalek::Signature::from_slice(sig) else {
                return false;
            };
            key.verify_strict(input, &s).is_ok()
        }
        (Material::Oct { secret }, Family::Hmac) => hmac_ok(alg, secret, input, sig),
        _ => false,
    }
}

/// A JWS ECDSA signature (`r || s`, each as long as the curve's order, RFC 7518 §3.4) as
/// the DER `ECDSA-Sig-Value` BoringSSL verifies; `None` unless `r` and `s` are in [1, n).
pub(crate) fn ecdsa_der(curve: &Curve, sig: &[u8]) -> Option<Vec<u8>> {
    let len = curve.n.len();
    if sig.len() != 2 * len {
        return None;
    }
    let (r, s) = sig.split_at(len);
    let in_range = |v: &[u8]| v.iter().any(|&b| b != 0) && v < curve.n;
    if !in_range(r) || !in_range(s) {
        return None;
    }
    let mut ints = Vec::with_capacity(sig.len() + 6);
    der_uint(&mut ints, strip_leading_zeros(r));
    der_uint(&mut ints, strip_leading_zeros(s));
    let mut out = Vec::with_capacity(ints.len() + 3);
    der_tlv(&mut out, 0x30, &ints);
    Some(out)
}

/// Pure-Rust ECDSA for a host without `verify_signature`: native builds (CLI, tests).
#[cfg(any(not(target_arch = "wasm32"), test))]
fn ec_fallback(material: &Material, input: &[u8], sig: &[u8]) -> bool {
    use p256::ecdsa::signature::Verifier;
    match material {
        Material::P256 { key, .. } => {
            p256::ecdsa::Signature::from_slice(sig).is_ok_and(|s| key.verify(input, &s).is_ok())
        }
        Material::P384 { key, .. } => {
            p384::ecdsa::Signature::from_slice(sig).is_ok_and(|s| key.verify(input, &s).is_ok())
        }
        _ => false,
    }
}

/// The Wasm module verifies ECDSA through the host only (see [`Material`]): a host
/// without `verify_signature` refuses ES256/ES384 tokens (it logged why at first use).
#[cfg(all(target_arch = "wasm32", not(test)))]
fn ec_fallback(_: &Material, _: &[u8], _: &[u8]) -> bool {
    false
}

/// Constant-time HMAC comparison (`verify_slice` rejects a wrong length first).
fn hmac_ok(alg: Alg, secret: &[u8], input: &[u8], sig: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    fn check<M: Mac + hmac::digest::KeyInit>(secret: &[u8], input: &[u8], sig: &[u8]) -> bool {
        match <M as hmac::digest::KeyInit>::new_from_slice(secret) {
            Ok(mut mac) => {
                mac.update(input);
                mac.verify_slice(sig).is_ok()
            }
            Err(_) => false,
        }
    }
    match alg {
        Alg::HS256 => check::<Hmac<Sha256>>(secret, input, sig),
        Alg::HS384 => check::<Hmac<Sha384>>(secret, input, sig),
        Alg::HS512 => check::<Hmac<Sha512>>(secret, input, sig),
        _ => false,
    }
}

// ---- claims ----

/// A NumericDate (RFC 7519 §2): integer or float seconds. Negative values clamp to 0.
/// `round_up` for lower bounds (`nbf`, `iat`), down for `exp`: both err on rejecting.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &str,
    round_up: bool,
    not_a_number: &'static str,
) -> Result<Option<u64>, JwtError> {
    let n = match claims.get(name) {
        None => return Ok(None),
        Some(Value::Number(n)) => n,
        Some(_) => return Err(JwtError::Malformed(not_a_number)),
    };
    if let Some(u) = n.as_u64() {
        return Ok(Some(u));
    }
    if n.as_i64().is_some() {
        return Ok(Some(0));
    }
    let f = n.as_f64().unwrap_or(0.0);
    let f = if round_up { f.ceil() } else { f.floor() };
    // `as` saturates: huge values become u64::MAX, negatives and NaN become 0.
    Ok(Some(if f > 0.0 { f as u64 } else { 0 }))
}

/// Returns `exp`.
fn check_claims(
    claims: &Map<String, Value>,
    rules: &Rules,
    now: u64,
) -> Result<Option<u64>, JwtError> {
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == rules.issuer => {}
        _ => return Err(JwtError::WrongIssuer),
    }

    if !rules.audiences.is_empty() {
        let wanted = |a: &str| rules.audiences.iter().any(|w| w == a);
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => wanted(a),
            Some(Value::Array(list)) => {
                let mut found = false;
                for a in list {
                    match a {
                        Value::String(a) => found |= wanted(a),
                        _ => return Err(JwtError::Malformed("aud must be a string or strings")),
                    }
                }
                found
            }
            None => false,
            Some(_) => return Err(JwtError::Malformed("aud must be a string or strings")),
        };
        if !ok {
            return Err(JwtError::WrongAudience);
        }
    }

    let exp = numeric_date(claims, "exp", false, "exp must be a number")?;
    let nbf = numeric_date(claims, "nbf", true, "nbf must be a number")?;
    let iat = numeric_date(claims, "iat", true, "iat must be a number")?;
    let skew = rules.clock_skew_secs;

    match exp {
        None if rules.require_exp || rules.max_lifetime_secs.is_some() => {
            return Err(JwtError::MissingExp)
        }
        Some(exp) if now > exp.saturating_add(skew) => return Err(JwtError::Expired),
        _ => {}
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(skew)) {
        return Err(JwtError::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > now.saturating_add(skew)) {
        return Err(JwtError::NotYetValid);
    }
    if let (Some(max), Some(exp)) = (rules.max_lifetime_secs, exp) {
        let lifetime = exp.saturating_sub(iat.unwrap_or(now));
        if lifetime > max {
            return Err(JwtError::LifetimeTooLong);
        }
    }
    Ok(exp)
}
