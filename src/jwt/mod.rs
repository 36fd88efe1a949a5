//! Pure-Rust JWT (JWS compact) verification, hardened per RFC 8725.
//!
//! * [`Jwks::parse`] compiles a JWKS once: weak or malformed keys are reported, not fatal.
//! * [`verify`] checks a token end to end: size, structure, header hardening, key
//!   selection, signature (through Envoy's `verify_signature` for RS*/ES* when available,
//!   pure Rust otherwise), then claims.
//! * [`TokenCache`] remembers verified tokens per worker so a hot token skips the signature.
//!
//! Nothing here panics on input: a panic would kill the Envoy worker's VM.

mod alg;
mod cache;
mod jwk;
#[cfg(not(target_arch = "wasm32"))]
pub mod mint;
mod verify;

pub use alg::Alg;
pub use cache::TokenCache;
pub use jwk::{Jwks, Key, ParsedJwks, MAX_RSA_BITS, MIN_OCT_BYTES, MIN_RSA_BITS};
pub use verify::{peek_issuer, still_valid, verify};

use std::fmt;

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// `iss` must equal this exactly.
    pub issuer: String,
    /// Empty: `aud` is not checked. Otherwise the token's `aud` (string or array of strings)
    /// must contain at least one of these.
    pub audiences: Vec<String>,
    /// Leeway for `exp`, `nbf` and `iat` (callers default it to 60).
    pub clock_skew_secs: u64,
    /// Reject tokens without `exp`.
    pub require_exp: bool,
    /// `exp - iat` (or `exp - now` when there is no `iat`) must be at most this. A token
    /// without `exp` is then rejected with `MissingExp`.
    pub max_lifetime_secs: Option<u64>,
    /// Allow-list for the header `typ`, compared case-insensitively with any `application/`
    /// prefix ignored (RFC 7515 §4.1.9). A token without `typ` is rejected when set.
    /// `None`: unchecked.
    pub typ: Option<Vec<String>>,
    /// Allow-list of algorithms. `None`: any algorithm the key fits.
    pub algorithms: Option<Vec<Alg>>,
    /// Tokens longer than this are rejected before any parsing (callers default it to 8192).
    pub max_token_bytes: usize,
}

impl Default for Rules {
    /// Empty issuer (so every real token fails `iss`: set it), no audience check, 60 s skew,
    /// `exp` required, no lifetime bound, no `typ` check, any algorithm, 8192-byte tokens.
    fn default() -> Self {
        Rules {
            issuer: String::new(),
            audiences: Vec::new(),
            clock_skew_secs: 60,
            require_exp: true,
            max_lifetime_secs: None,
            typ: None,
            algorithms: None,
            max_token_bytes: 8192,
        }
    }
}

/// A token that passed [`verify`].
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// The token's raw payload segment (base64url), for forwarding.
    pub payload_b64: String,
    pub exp: Option<u64>,
    pub alg: Alg,
    /// The header's `kid`, if any.
    pub kid: Option<String>,
}

/// Why a token was rejected. [`JwtError::code`] is stable (stat names, problem bodies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    TooLarge,
    Malformed(&'static str),
    Encrypted,
    AlgNone,
    AlgNotAllowed,
    UnsupportedCrit,
    ForbiddenHeader(&'static str),
    UnknownKid,
    NoUsableKey,
    BadSignature,
    Expired,
    NotYetValid,
    MissingExp,
    LifetimeTooLong,
    WrongIssuer,
    WrongAudience,
    TypNotAllowed,
}

impl JwtError {
    /// Stable snake_case identifier.
    pub fn code(&self) -> &'static str {
        match self {
            JwtError::TooLarge => "too_large",
            JwtError::Malformed(_) => "malformed",
            JwtError::Encrypted => "encrypted",
            JwtError::AlgNone => "alg_none",
            JwtError::AlgNotAllowed => "alg_not_allowed",
            JwtError::UnsupportedCrit => "unsupported_crit",
            JwtError::ForbiddenHeader(_) => "forbidden_header",
            JwtError::UnknownKid => "unknown_kid",
            JwtError::NoUsableKey => "no_usable_key",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::MissingExp => "missing_exp",
            JwtError::LifetimeTooLong => "lifetime_too_long",
            JwtError::WrongIssuer => "wrong_issuer",
            JwtError::WrongAudience => "wrong_audience",
            JwtError::TypNotAllowed => "typ_not_allowed",
        }
    }

    /// Short human text, safe to send to a client (e.g. in a WWW-Authenticate
    /// `error_description`): no quotes, no backslashes, no token data.
    pub fn description(&self) -> &'static str {
        match self {
            JwtError::TooLarge => "the token is too large",
            JwtError::Malformed(_) => "the token is malformed",
            JwtError::Encrypted => "encrypted tokens are not accepted",
            JwtError::AlgNone => "unsigned tokens are not accepted",
            JwtError::AlgNotAllowed => "the token signing algorithm is not allowed",
            JwtError::UnsupportedCrit => "the token uses unsupported critical extensions",
            JwtError::ForbiddenHeader(_) => "the token header must not reference keys",
            JwtError::UnknownKid => "the token key id is unknown",
            JwtError::NoUsableKey => "no key can verify the token",
            JwtError::BadSignature => "the token signature is invalid",
            JwtError::Expired => "the token has expired",
            JwtError::NotYetValid => "the token is not yet valid",
            JwtError::MissingExp => "the token has no expiry",
            JwtError::LifetimeTooLong => "the token lifetime is too long",
            JwtError::WrongIssuer => "the token issuer is not accepted",
            JwtError::WrongAudience => "the token audience is not accepted",
            JwtError::TypNotAllowed => "the token type is not accepted",
        }
    }
}

impl fmt::Display for JwtError {
    /// For logs: the code, plus the detail for `Malformed` / `ForbiddenHeader`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::Malformed(why) => write!(f, "malformed: {why}"),
            JwtError::ForbiddenHeader(name) => write!(f, "forbidden_header: {name}"),
            other => f.write_str(other.code()),
        }
    }
}

impl std::error::Error for JwtError {}

#[cfg(test)]
#[rustfmt::skip] // generated by testdata/gen_vectors.py
mod test_vectors;
#[cfg(test)]
mod cost_split;
#[cfg(test)]
mod tests;
