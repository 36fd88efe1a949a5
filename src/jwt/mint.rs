//! Token minting for the CLI (`apiguard token`) and tests. Native builds only: the filter
//! never signs, so none of this (nor the PEM / private-key code it pulls in) is in the
//! wasm module.

use super::Alg;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

/// Loads an EC private key (PKCS#8 or SEC1 PEM) with the curve crate `$krate`.
macro_rules! ec_secret {
    ($krate:ident, $pem:expr) => {{
        use $krate::pkcs8::DecodePrivateKey;
        let pem: &str = $pem;
        if let Some(block) = pem_block(pem, "PRIVATE KEY") {
            $krate::SecretKey::from_pkcs8_pem(block)
                .map_err(|e| format!("not a PKCS#8 EC private key on the right curve: {e}"))
        } else if let Some(block) = pem_block(pem, "EC PRIVATE KEY") {
            $krate::SecretKey::from_sec1_pem(block)
                .map_err(|e| format!("not a SEC1 EC private key on the right curve: {e}"))
        } else {
            Err(
                "expected an EC private key PEM (BEGIN PRIVATE KEY or BEGIN EC PRIVATE KEY)"
                    .to_string(),
            )
        }
    }};
}

/// Signs `claims` (a JSON object) as a compact JWS with header `{"alg","typ":"JWT","kid"}`.
///
/// `private_key_pem_or_secret`:
/// * RS256/RS384/RS512: an RSA private key, PKCS#8 (`PRIVATE KEY`) or PKCS#1
///   (`RSA PRIVATE KEY`) PEM;
/// * ES256/ES384: an EC private key on the matching curve, PKCS#8 or SEC1
///   (`EC PRIVATE KEY`) PEM;
/// * EdDSA: an Ed25519 private key, PKCS#8 PEM;
/// * HS256/HS384/HS512: the raw secret bytes (decode a base64url key file first), at least
///   as long as the hash.
///
/// PS* is not supported (it needs a random salt).
pub fn mint(
    alg: Alg,
    private_key_pem_or_secret: &[u8],
    kid: Option<&str>,
    claims: &Value,
) -> Result<String, String> {
    if !claims.is_object() {
        return Err("claims must be a JSON object".to_string());
    }
    let mut header = json!({ "alg": alg.name(), "typ": "JWT" });
    if let (Some(kid), Some(h)) = (kid, header.as_object_mut()) {
        h.insert("kid".to_string(), Value::String(kid.to_string()));
    }
    let header = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    let payload = serde_json::to_vec(claims).map_err(|e| e.to_string())?;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = sign(alg, private_key_pem_or_secret, input.as_bytes())?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// The raw secret held by an HMAC key file such as `envoy/demo/hs256.key`: one line of
/// base64url (padding and surrounding whitespace tolerated), the same string as the JWK's
/// `k`. [`mint`] takes raw secret bytes, so decode a key file with this first.
pub fn secret_from_key_file(contents: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(contents)
        .map_err(|_| "the secret file is not base64url text".to_string())?
        .trim()
        .trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| "the secret file is not one line of base64url".to_string())
}

fn sign(alg: Alg, key: &[u8], input: &[u8]) -> Result<Vec<u8>, String> {
    match alg {
        Alg::HS256 | Alg::HS384 | Alg::HS512 => hmac_sign(alg, key, input),
        Alg::RS256 | Alg::RS384 | Alg::RS512 => rsa_sign(alg, pem_text(key)?, input),
        Alg::ES256 => {
            use p256::ecdsa::signature::Signer;
            let secret = ec_secret!(p256, pem_text(key)?)?;
            let sig: p256::ecdsa::Signature = p256::ecdsa::SigningKey::from(secret).sign(input);
            Ok(sig.to_bytes().to_vec())
        }
        Alg::ES384 => {
            use p384::ecdsa::signature::Signer;
            let secret = ec_secret!(p384, pem_text(key)?)?;
            let sig: p384::ecdsa::Signature = p384::ecdsa::SigningKey::from(secret).sign(input);
            Ok(sig.to_bytes().to_vec())
        }
        Alg::EdDSA => {
            use ed25519_dalek::pkcs8::DecodePrivateKey;
            use ed25519_dalek::Signer;
            let pem = pem_block(pem_text(key)?, "PRIVATE KEY")
                .ok_or("expected an Ed25519 PKCS#8 PEM (BEGIN PRIVATE KEY)")?;
            let sk = ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
                .map_err(|e| format!("not an Ed25519 PKCS#8 private key: {e}"))?;
            Ok(sk.sign(input).to_bytes().to_vec())
        }
        Alg::PS256 | Alg::PS384 | Alg::PS512 => {
            Err(format!("minting {} is not supported", alg.name()))
        }
    }
}

fn hmac_sign(alg: Alg, secret: &[u8], input: &[u8]) -> Result<Vec<u8>, String> {
    use hmac::{Hmac, Mac};
    if secret.len() < alg.hash_len() {
        return Err(format!(
            "{} needs a secret of at least {} bytes; got {}",
            alg.name(),
            alg.hash_len(),
            secret.len()
        ));
    }
    let bad_key = |_| "invalid HMAC key".to_string();
    Ok(match alg {
        Alg::HS384 => {
            let mut mac = Hmac::<sha2::Sha384>::new_from_slice(secret).map_err(bad_key)?;
            mac.update(input);
            mac.finalize().into_bytes().to_vec()
        }
        Alg::HS512 => {
            let mut mac = Hmac::<sha2::Sha512>::new_from_slice(secret).map_err(bad_key)?;
            mac.update(input);
            mac.finalize().into_bytes().to_vec()
        }
        _ => {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).map_err(bad_key)?;
            mac.update(input);
            mac.finalize().into_bytes().to_vec()
        }
    })
}

fn rsa_sign(alg: Alg, pem: &str, input: &[u8]) -> Result<Vec<u8>, String> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::signature::{SignatureEncoding, Signer};
    let key = if let Some(block) = pem_block(pem, "PRIVATE KEY") {
        rsa::RsaPrivateKey::from_pkcs8_pem(block)
            .map_err(|e| format!("not an RSA PKCS#8 private key: {e}"))?
    } else if let Some(block) = pem_block(pem, "RSA PRIVATE KEY") {
        rsa::RsaPrivateKey::from_pkcs1_pem(block)
            .map_err(|e| format!("not an RSA PKCS#1 private key: {e}"))?
    } else {
        return Err(
            "expected an RSA private key PEM (BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)"
                .to_string(),
        );
    };
    let bits = rsa::traits::PublicKeyParts::size(&key) * 8;
    if bits < super::MIN_RSA_BITS {
        return Err(format!(
            "RSA key is {bits} bits; at least {} required",
            super::MIN_RSA_BITS
        ));
    }
    let sig = match alg {
        Alg::RS384 => rsa::pkcs1v15::SigningKey::<sha2::Sha384>::new(key)
            .sign(input)
            .to_vec(),
        Alg::RS512 => rsa::pkcs1v15::SigningKey::<sha2::Sha512>::new(key)
            .sign(input)
            .to_vec(),
        _ => rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key)
            .sign(input)
            .to_vec(),
    };
    Ok(sig)
}

fn pem_text(key: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(key).map_err(|_| "the key file is not PEM text".to_string())
}

/// The `-----BEGIN {label}-----` ... `-----END {label}-----` block of a PEM file that may
/// hold several (e.g. `EC PARAMETERS` before `EC PRIVATE KEY`).
fn pem_block<'a>(pem: &'a str, label: &str) -> Option<&'a str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)?;
    let rest = pem.get(start..)?;
    let stop = rest.find(&end)? + end.len();
    rest.get(..stop)
}
