//! JWKS parsing: every key is decoded, checked (RFC 8725 strength rules) and compiled once,
//! keeping both the pure-Rust verifier and, for the algorithms Envoy's host can verify,
//! its SubjectPublicKeyInfo DER.

use super::alg::{Alg, Family};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde_json::{Map, Value};
use std::fmt;

/// Smallest RSA modulus accepted (RFC 7518 §3.3, RFC 8725 §3.5).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted (bounds the cost of a pure-Rust verification).
pub const MAX_RSA_BITS: usize = 8192;
/// Smallest `oct` key accepted when the key does not pin an `alg`.
pub const MIN_OCT_BYTES: usize = 32;

/// A compiled JWKS, ready to verify tokens.
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    pub keys: Vec<Key>,
}

/// One verification key. `alg`, when present, pins the key to exactly that algorithm.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub alg: Option<Alg>,
    pub(crate) material: Material,
}

/// The parsed key. RSA and EC keys also keep their SPKI DER for the host's verifier.
///
/// The Wasm module verifies ES256/ES384 only through the host (Envoy's BoringSSL): the
/// pure-Rust P-256/P-384 arithmetic (~200 KB of the module) is built for native targets
/// only (the CLI, benches) and the unit tests, where it is the fallback of a host without
/// `verify_signature`.
#[derive(Clone)]
pub(crate) enum Material {
    Rsa {
        key: rsa::RsaPublicKey,
        spki: Vec<u8>,
    },
    P256 {
        #[cfg(any(not(target_arch = "wasm32"), test))]
        key: p256::ecdsa::VerifyingKey,
        spki: Vec<u8>,
    },
    P384 {
        #[cfg(any(not(target_arch = "wasm32"), test))]
        key: p384::ecdsa::VerifyingKey,
        spki: Vec<u8>,
    },
    Ed25519 {
        key: ed25519_dalek::VerifyingKey,
    },
    Oct {
        secret: Vec<u8>,
    },
}

/// The result of [`Jwks::parse`]: the usable keys, and one message per key that was not.
#[derive(Debug, Clone, Default)]
pub struct ParsedJwks {
    pub jwks: Jwks,
    pub rejected: Vec<String>,
}

impl fmt::Debug for Key {
    /// Never prints key material (an `oct` key is a secret).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kty", &self.kty())
            .finish()
    }
}

impl Key {
    /// `"RSA"`, `"EC"`, `"OKP"` or `"oct"`.
    pub fn kty(&self) -> &'static str {
        match self.material {
            Material::Rsa { .. } => "RSA",
            Material::P256 { .. } | Material::P384 { .. } => "EC",
            Material::Ed25519 { .. } => "OKP",
            Material::Oct { .. } => "oct",
        }
    }

    /// Whether this key may verify a token signed with `alg`: its kty/crv must suit the
    /// algorithm, its own `alg` (if any) must be exactly `alg`, and an `oct` key must be at
    /// least as long as the algorithm's hash.
    pub fn fits(&self, alg: Alg) -> bool {
        if self.alg.is_some_and(|pinned| pinned != alg) {
            return false;
        }
        match (&self.material, alg.family()) {
            (Material::Rsa { .. }, Family::RsaPkcs1 | Family::RsaPss) => true,
            (Material::P256 { .. }, Family::EcP256) => true,
            (Material::P384 { .. }, Family::EcP384) => true,
            (Material::Ed25519 { .. }, Family::Ed25519) => true,
            (Material::Oct { secret }, Family::Hmac) => secret.len() >= alg.hash_len(),
            _ => false,
        }
    }
}

impl Jwks {
    /// Parses a JWKS document (`{"keys":[...]}`). Unusable keys are not fatal here: each
    /// lands in `rejected` as a message naming it, e.g.
    /// `keys[2] (kid "old"): RSA modulus is 1024 bits; at least 2048 required`.
    /// Keys with `"use":"enc"` or `key_ops` without `"verify"` are skipped silently. `Err` only when the document itself is
    /// not a JWKS.
    pub fn parse(json: &[u8]) -> Result<ParsedJwks, String> {
        let v: Value =
            serde_json::from_slice(json).map_err(|e| format!("JWKS is not valid JSON: {e}"))?;
        Jwks::from_value(&v)
    }

    /// Like [`Jwks::parse`], from an already parsed JSON value.
    pub fn from_value(v: &Value) -> Result<ParsedJwks, String> {
        let obj = v
            .as_object()
            .ok_or_else(|| "JWKS must be a JSON object with a \"keys\" array".to_string())?;
        let keys = match obj.get("keys") {
            Some(Value::Array(keys)) => keys,
            Some(_) => return Err("JWKS \"keys\" must be an array".to_string()),
            None => return Err("JWKS has no \"keys\" array".to_string()),
        };
        let mut out = ParsedJwks::default();
        for (i, jwk) in keys.iter().enumerate() {
            let Some(jwk) = jwk.as_object() else {
                out.rejected.push(format!("keys[{i}]: not a JSON object"));
                continue;
            };
            match parse_key(jwk) {
                Ok(Some(key)) => out.jwks.keys.push(key),
                Ok(None) => {}
                Err(why) => out.rejected.push(format!("{}: {why}", key_label(i, jwk))),
            }
        }
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// `keys[2] (kid "old")`, or `keys[2]` when the key has no string kid.
fn key_label(i: usize, jwk: &Map<String, Value>) -> String {
    match jwk.get("kid").and_then(Value::as_str) {
        Some(kid) => {
            let short: String = kid.chars().take(64).collect();
            format!("keys[{i}] (kid {short:?})")
        }
        None => format!("keys[{i}]"),
    }
}

/// Base64url for JWK members: padding tolerated (some publishers add it), trailing bits not.
const JWK_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn member<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("\"{name}\" must be a string")),
    }
}

fn b64_member(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let s = member(jwk, name)?.ok_or_else(|| format!("missing \"{name}\""))?;
    JWK_B64
        .decode(s)
        .map_err(|_| format!("\"{name}\" is not valid base64url"))
}

/// RFC 7517 §4.3: a key whose `key_ops` are listed may be used for those operations only,
/// so one without `"verify"` (an encryption key, a signing-only entry) verifies nothing.
fn key_ops_allow_verify(jwk: &Map<String, Value>) -> Result<bool, String> {
    match jwk.get("key_ops") {
        None => Ok(true),
        Some(Value::Array(ops)) => {
            let mut verify = false;
            for op in ops {
                match op.as_str() {
                    Some(op) => verify |= op == "verify",
                    None => return Err("\"key_ops\" must be an array of strings".to_string()),
                }
            }
            Ok(verify)
        }
        Some(_) => Err("\"key_ops\" must be an array of strings".to_string()),
    }
}

/// `Ok(None)`: skipped silently (an encryption key, or `key_ops` without `verify`).
fn parse_key(jwk: &Map<String, Value>) -> Result<Option<Key>, String> {
    match member(jwk, "use")? {
        None | Some("sig") => {}
        Some("enc") => return Ok(None),
        Some(other) => {
            return Err(format!(
                "\"use\" is {other:?}; only \"sig\" keys verify tokens"
            ))
        }
    }
    if !key_ops_allow_verify(jwk)? {
        return Ok(None);
    }
    let kid = member(jwk, "kid")?.map(str::to_string);
    let alg =
        match member(jwk, "alg")? {
            None => None,
            Some(name) => Some(Alg::parse(name).ok_or_else(|| {
                format!("\"alg\" {name:?} is not a supported signature algorithm")
            })?),
        };
    let kty = member(jwk, "kty")?.ok_or_else(|| "missing \"kty\"".to_string())?;
    let material = match kty {
        "RSA" => rsa_key(jwk)?,
        "EC" => ec_key(jwk)?,
        "OKP" => okp_key(jwk)?,
        "oct" => oct_key(jwk, alg)?,
        other => return Err(format!("unsupported \"kty\" {other:?}")),
    };
    let key = Key { kid, alg, material };
    if let Some(alg) = alg {
        if !key.fits(alg) {
            return Err(format!(
                "\"alg\" {} does not match a {} key{}",
                alg.name(),
                key.kty(),
                crv_suffix(jwk)
            ));
        }
    }
    Ok(Some(key))
}

fn crv_suffix(jwk: &Map<String, Value>) -> String {
    match jwk.get("crv").and_then(Value::as_str) {
        Some(crv) => format!(" on {crv}"),
        None => String::new(),
    }
}

fn reject_private(jwk: &Map<String, Value>, members: &[&str]) -> Result<(), String> {
    match members.iter().find(|m| jwk.contains_key(**m)) {
        Some(m) => Err(format!(
            "contains private key material ({m:?}); publish only the public key"
        )),
        None => Ok(()),
    }
}

pub(crate) fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    b.get(start..).unwrap_or_default()
}

fn bit_len(be: &[u8]) -> usize {
    let be = strip_leading_zeros(be);
    match be.first() {
        Some(&top) => (be.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
        None => 0,
    }
}

fn rsa_key(jwk: &Map<String, Value>) -> Result<Material, String> {
    reject_private(jwk, &["d", "p", "q", "dp", "dq", "qi", "oth"])?;
    let n = b64_member(jwk, "n")?;
    let e = b64_member(jwk, "e")?;
    let n = strip_leading_zeros(&n);
    let e = strip_leading_zeros(&e);
    let bits = bit_len(n);
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "RSA modulus is {bits} bits; at least {MIN_RSA_BITS} required"
        ));
    }
    if bits > MAX_RSA_BITS {
        return Err(format!(
            "RSA modulus is {bits} bits; at most {MAX_RSA_BITS} supported"
        ));
    }
    if n.last().is_some_and(|b| b & 1 == 0) {
        return Err("RSA modulus is even".to_string());
    }
    if e.len() > 4 || bit_len(e) < 2 || e.last().is_some_and(|b| b & 1 == 0) {
        return Err("RSA public exponent must be odd, at least 3 and at most 32 bits".to_string());
    }
    let key = rsa::RsaPublicKey::new_with_max_size(
        rsa::BigUint::from_bytes_be(n),
        rsa::BigUint::from_bytes_be(e),
        MAX_RSA_BITS,
    )
    .map_err(|err| format!("invalid RSA key: {err}"))?;
    Ok(Material::Rsa {
        key,
        spki: rsa_spki(n, e),
    })
}

fn coordinate(
    jwk: &Map<String, Value>,
    name: &str,
    len: usize,
    crv: &str,
) -> Result<Vec<u8>, String> {
    let c = b64_member(jwk, name)?;
    if c.len() != len {
        return Err(format!(
            "\"{name}\" is {} bytes; {crv} needs exactly {len}",
            c.len()
        ));
    }
    Ok(c)
}

fn ec_key(jwk: &Map<String, Value>) -> Result<Material, String> {
    reject_private(jwk, &["d"])?;
    let crv = member(jwk, "crv")?.ok_or_else(|| "missing \"crv\"".to_string())?;
    let len = match crv {
        "P-256" => 32,
        "P-384" => 48,
        other => return Err(format!("unsupported EC \"crv\" {other:?}")),
    };
    let x = coordinate(jwk, "x", len, crv)?;
    let y = coordinate(jwk, "y", len, crv)?;
    let mut point = Vec::with_capacity(1 + 2 * len);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    let curve = if len == 32 { &P256 } else { &P384 };
    if !on_curve(curve, &x, &y) {
        return Err(format!("the {crv} point is not on the curve"));
    }
    let prefix: &[u8] = if len == 32 {
        &P256_SPKI_PREFIX
    } else {
        &P384_SPKI_PREFIX
    };
    let spki = ec_spki(prefix, &point);
    #[cfg(any(not(target_arch = "wasm32"), test))]
    let off_curve = || format!("the {crv} point is not on the curve");
    if len == 32 {
        Ok(Material::P256 {
            #[cfg(any(not(target_arch = "wasm32"), test))]
            key: p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).map_err(|_| off_curve())?,
            spki,
        })
    } else {
        Ok(Material::P384 {
            #[cfg(any(not(target_arch = "wasm32"), test))]
            key: p384::ecdsa::VerifyingKey::from_sec1_bytes(&point).map_err(|_| off_curve())?,
            spki,
        })
    }
}

/// A short-Weierstrass curve `y² = x³ - 3x + b (mod p)` (both NIST curves have a = -3),
/// big-endian.
pub(crate) struct Curve {
    p: &'static [u8],
    b: &'static [u8],
    /// The group order: ECDSA's `r` and `s` must lie in [1, n).
    pub(crate) n: &'static [u8],
}

pub(crate) const P256: Curve = Curve {
    p: &[
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff,
    ],
    b: &[
        0x5a, 0xc6, 0x35, 0xd8, 0xaa, 0x3a, 0x93, 0xe7, 0xb3, 0xeb, 0xbd, 0x55, 0x76, 0x98, 0x86,
        0xbc, 0x65, 0x1d, 0x06, 0xb0, 0xcc, 0x53, 0xb0, 0xf6, 0x3b, 0xce, 0x3c, 0x3e, 0x27, 0xd2,
        0x60, 0x4b,
    ],
    n: &[
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ],
};

pub(crate) const P384: Curve = Curve {
    p: &[
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xfe, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff,
        0xff, 0xff, 0xff,
    ],
    b: &[
        0xb3, 0x31, 0x2f, 0xa7, 0xe2, 0x3e, 0xe7, 0xe4, 0x98, 0x8e, 0x05, 0x6b, 0xe3, 0xf8, 0x2d,
        0x19, 0x18, 0x1d, 0x9c, 0x6e, 0xfe, 0x81, 0x41, 0x12, 0x03, 0x14, 0x08, 0x8f, 0x50, 0x13,
        0x87, 0x5a, 0xc6, 0x56, 0x39, 0x8d, 0x8a, 0x2e, 0xd1, 0x9d, 0x2a, 0x85, 0xc8, 0xed, 0xd3,
        0xec, 0x2a, 0xef,
    ],
    n: &[
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc7, 0x63, 0x4d, 0x81, 0xf4, 0x37,
        0x2d, 0xdf, 0x58, 0x1a, 0x0d, 0xb2, 0x48, 0xb0, 0xa7, 0x7a, 0xec, 0xec, 0x19, 0x6a, 0xcc,
        0xc5, 0x29, 0x73,
    ],
};

#[cfg(test)]
impl Curve {
    pub(crate) fn p_bytes(&self) -> &'static [u8] {
        self.p
    }
}

/// Whether `(x, y)` (big-endian, each below `p`) is a point of `curve` (SEC 1 §3.2.2.1,
/// the public-key validation P-256/P-384 crates do on import). Done with the big-integer
/// arithmetic the RSA verifier already links, so the Wasm module needs no curve crate to
/// refuse a bad key at load.
pub(crate) fn on_curve(curve: &Curve, x: &[u8], y: &[u8]) -> bool {
    use rsa::BigUint;
    let p = BigUint::from_bytes_be(curve.p);
    let (x, y) = (BigUint::from_bytes_be(x), BigUint::from_bytes_be(y));
    if x >= p || y >= p {
        return false;
    }
    let b = BigUint::from_bytes_be(curve.b);
    let three_x = (&x * 3u32) % &p;
    // x³ - 3x + b, kept non-negative by adding p before subtracting.
    let rhs = ((&x * &x % &p) * &x % &p + &p - three_x + b) % &p;
    (&y * &y) % &p == rhs
}

fn okp_key(jwk: &Map<String, Value>) -> Result<Material, String> {
    reject_private(jwk, &["d"])?;
    match member(jwk, "crv")? {
        Some("Ed25519") => {}
        Some(other) => return Err(format!("unsupported OKP \"crv\" {other:?}")),
        None => return Err("missing \"crv\"".to_string()),
    }
    let x = b64_member(jwk, "x")?;
    let x: [u8; 32] = x
        .as_slice()
        .try_into()
        .map_err(|_| format!("\"x\" is {} bytes; Ed25519 needs exactly 32", x.len()))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&x)
        .map_err(|_| "the Ed25519 point is invalid".to_string())?;
    if key.is_weak() {
        return Err("the Ed25519 key is a small-order (weak) point".to_string());
    }
    Ok(Material::Ed25519 { key })
}

fn oct_key(jwk: &Map<String, Value>, alg: Option<Alg>) -> Result<Material, String> {
    let secret = b64_member(jwk, "k")?;
    let need = match alg {
        Some(alg) if alg.family() == Family::Hmac => alg.hash_len(),
        // A non-HMAC alg on an oct key is reported by `parse_key`.
        _ => MIN_OCT_BYTES,
    };
    if secret.len() < need {
        let what = match alg {
            Some(alg) if alg.family() == Family::Hmac => alg.name(),
            _ => "an oct key without \"alg\"",
        };
        return Err(format!(
            "oct key is {} bytes; {what} requires at least {need}",
            secret.len()
        ));
    }
    Ok(Material::Oct { secret })
}

// ---- SubjectPublicKeyInfo DER, built directly (fixed shapes, no ASN.1 dependency) ----

/// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) ... }
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// SEQUENCE { SEQUENCE { id-ecPublicKey, secp384r1 }, BIT STRING (0 unused bits) ... }
const P384_SPKI_PREFIX: [u8; 23] = [
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
];
/// AlgorithmIdentifier { rsaEncryption, NULL }
const RSA_ALG_ID: [u8; 15] = [
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

fn ec_spki(prefix: &[u8], point: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + point.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(point);
    out
}

fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let significant = strip_leading_zeros(&bytes);
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
}

pub(crate) fn der_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    der_len(out, content.len());
    out.extend_from_slice(content);
}

/// A positive INTEGER from big-endian magnitude bytes without leading zeros.
pub(crate) fn der_uint(out: &mut Vec<u8>, magnitude: &[u8]) {
    let mut content = Vec::with_capacity(magnitude.len() + 1);
    if magnitude.first().is_none_or(|&b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(magnitude);
    der_tlv(out, 0x02, &content);
}

/// SubjectPublicKeyInfo of an RSA key (`n`, `e` big-endian, no leading zeros).
fn rsa_spki(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut ints = Vec::with_capacity(n.len() + e.len() + 16);
    der_uint(&mut ints, n);
    der_uint(&mut ints, e);
    let mut rsa_public_key = Vec::with_capacity(ints.len() + 5);
    der_tlv(&mut rsa_public_key, 0x30, &ints);
    let mut bits = Vec::with_capacity(rsa_public_key.len() + 1);
    bits.push(0);
    bits.extend_from_slice(&rsa_public_key);
    let mut body = RSA_ALG_ID.to_vec();
    der_tlv(&mut body, 0x03, &bits);
    let mut out = Vec::with_capacity(body.len() + 5);
    der_tlv(&mut out, 0x30, &body);
    out
}
