//! JWS signature algorithms (RFC 7518 §3, RFC 8037 §3.1).

use std::fmt;

/// A JWS `alg` this crate can verify. `none` is deliberately not representable.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// Which kind of key an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Hmac,
    RsaPkcs1,
    RsaPss,
    EcP256,
    EcP384,
    Ed25519,
}

impl Alg {
    /// Every supported algorithm, in a fixed order.
    pub const ALL: [Alg; 12] = [
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    /// Parses an exact, case-sensitive RFC 7518 / RFC 8037 name. `"none"` and anything
    /// unknown give `None`.
    pub fn parse(s: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == s)
    }

    /// The registered name, as it appears in a JWS header.
    pub fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    pub(crate) fn family(self) -> Family {
        match self {
            Alg::HS256 | Alg::HS384 | Alg::HS512 => Family::Hmac,
            Alg::RS256 | Alg::RS384 | Alg::RS512 => Family::RsaPkcs1,
            Alg::PS256 | Alg::PS384 | Alg::PS512 => Family::RsaPss,
            Alg::ES256 => Family::EcP256,
            Alg::ES384 => Family::EcP384,
            Alg::EdDSA => Family::Ed25519,
        }
    }

    /// Output length in bytes of the SHA-2 hash the algorithm uses (EdDSA: SHA-512).
    pub(crate) fn hash_len(self) -> usize {
        match self {
            Alg::HS256 | Alg::RS256 | Alg::PS256 | Alg::ES256 => 32,
            Alg::HS384 | Alg::RS384 | Alg::PS384 | Alg::ES384 => 48,
            Alg::HS512 | Alg::RS512 | Alg::PS512 | Alg::EdDSA => 64,
        }
    }

    /// The hash name Envoy's `verify_signature` expects.
    pub(crate) fn host_hash(self) -> &'static str {
        match self.hash_len() {
            32 => "sha256",
            48 => "sha384",
            _ => "sha512",
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_is_exact_and_round_trips() {
        for a in Alg::ALL {
            assert_eq!(Alg::parse(a.name()), Some(a));
            assert_eq!(a.to_string(), a.name());
        }
        for bad in [
            "none", "None", "NONE", "hs256", "Rs256", "ES512", "EDDSA", "Ed25519", "", " RS256",
        ] {
            assert_eq!(Alg::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn host_hash_names() {
        assert_eq!(Alg::RS256.host_hash(), "sha256");
        assert_eq!(Alg::ES384.host_hash(), "sha384");
        assert_eq!(Alg::RS512.host_hash(), "sha512");
    }
}
