//! Authentication: which principal a request's credentials prove, among the principal
//! sources its route accepts (JWT providers, API key sets, client-certificate sets).
//!
//! One `try_*` per kind of source, each answering with an `Attempt`; `authenticate` runs
//! them in the policy's order: the first valid credential wins, and a failure is reported
//! for the first source that saw a credential. Authorization (what the principal may do)
//! is `authz`'s job.
//!
//! `Keyring` is the worker's state behind it: every provider's current keys and the cache
//! of verified tokens.

use std::rc::Rc;

use serde_json::{Map, Value};

use crate::credentials::{self, Found};
use crate::engine::RequestCtx;
use crate::host::Metrics;
use crate::jwt::{self, Jwks, JwtError, TokenCache, Verified};
use crate::policy::{ApiKeySet, KeySource, Policy, PrincipalRef, TokenSource};
use crate::problem::Denial;

/// Seconds a client is told to wait while a provider's keys are loading.
pub const JWKS_RETRY_AFTER_SECS: u64 = 5;

/// A worker's current keys for one provider. `generation` changes whenever keys change,
/// which also invalidates cached verifications made with the old keys.
pub struct ProviderKeys {
    pub jwks: Option<Rc<Jwks>>,
    pub generation: u64,
}

/// The worker's keys for every provider (inline ones from the start, remote ones once
/// fetched) and its cache of verified tokens.
pub struct Keyring {
    keys: Vec<ProviderKeys>,
    cache: TokenCache,
}

impl Keyring {
    pub fn new(policy: &Policy) -> Keyring {
        let keys = policy
            .providers
            .iter()
            .map(|p| ProviderKeys {
                jwks: match &p.keys {
                    KeySource::Inline(jwks) => Some(jwks.clone()),
                    KeySource::Remote(_) => None,
                },
                generation: 0,
            })
            .collect();
        Keyring {
            keys,
            cache: TokenCache::new(policy.token_cache_size),
        }
    }

    /// The generation of a provider's keys, once it has any.
    pub fn generation(&self, provider: usize) -> Option<u64> {
        self.keys
            .get(provider)
            .and_then(|k| k.jwks.as_ref().map(|_| k.generation))
    }

    /// Installs freshly fetched keys for a remote provider.
    pub fn set(&mut self, provider: usize, jwks: Rc<Jwks>, generation: u64) {
        if let Some(slot) = self.keys.get_mut(provider) {
            slot.jwks = Some(jwks);
            slot.generation = generation;
        }
    }
}

/// Who authenticated, and from which of its sources (`from`) the credential came.
pub enum Principal {
    Jwt {
        provider: usize,
        verified: Rc<Verified>,
        source: usize,
    },
    ApiKey {
        set: usize,
        key: usize,
        source: usize,
    },
    ClientCert {
        claims: Map<String, Value>,
    },
}

static NO_CLAIMS: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();

impl Principal {
    pub fn claims<'a>(&'a self, policy: &'a Policy) -> &'a Map<String, Value> {
        match self {
            Principal::Jwt { verified, .. } => &verified.claims,
            Principal::ApiKey { set, key, .. } => {
                match policy.api_key_sets.get(*set).and_then(|s| s.keys.get(*key)) {
                    Some(k) => &k.claims,
                    None => NO_CLAIMS.get_or_init(Map::new),
                }
            }
            Principal::ClientCert { claims } => claims,
        }
    }

    /// Where the accepted credential came from, when its source says to forward it.
    pub fn forwarded_source<'a>(&self, policy: &'a Policy) -> Option<&'a TokenSource> {
        match *self {
            Principal::Jwt {
                provider, source, ..
            } => policy
                .providers
                .get(provider)
                .filter(|p| p.forward)
                .and_then(|p| p.sources.get(source)),
            Principal::ApiKey { set, source, .. } => policy
                .api_key_sets
                .get(set)
                .filter(|s| s.forward)
                .and_then(|s| s.sources.get(source)),
            Principal::ClientCert { .. } => None,
        }
    }

    /// The claims that grant scopes: the provider's `scope_claims`, `scope` for others.
    pub fn scope_claims<'a>(&self, policy: &'a Policy) -> &'a [String] {
        static SCOPE: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        match self {
            Principal::Jwt { provider, .. } => policy
                .providers
                .get(*provider)
                .map(|p| p.scope_claims.as_slice())
                .unwrap_or_default(),
            _ => SCOPE.get_or_init(|| vec!["scope".to_string()]),
        }
    }
}

/// What one principal source of the route made of the request.
pub enum Attempt {
    /// No credential of this kind in the request.
    Absent,
    /// A token waits for its provider's keys, which are not loaded yet.
    KeysPending,
    /// More than one credential where the source reads one.
    Ambiguous,
    /// A credential was presented and refused (the first one refused).
    Refused(Denial),
    Accepted(Principal),
}

/// The authentication phase's answer.
pub struct Authentication {
    /// The principal, or the refusal to send.
    pub result: Result<Principal, Box<Denial>>,
    /// Providers that saw an unknown `kid`: the glue asks their JWKS to be refetched.
    /// Kept whatever the result (another credential may have authenticated meanwhile).
    pub refetch: Vec<usize>,
}

/// Tries every principal source the route accepts, in policy order; the first valid
/// credential wins. Failures are reported for the most specific source that saw one.
/// The clock (`ctx.host`) is read only to judge a token's lifetime: API keys and
/// certificates need none (in Envoy each read is a host call).
pub fn authenticate(
    keyring: &mut Keyring,
    ctx: &RequestCtx,
    principals: &[PrincipalRef],
    metrics: &mut dyn Metrics,
) -> Authentication {
    let jwt_count = principals
        .iter()
        .filter(|p| matches!(p, PrincipalRef::Jwt(_)))
        .count();
    let mut tries = Tries {
        keyring,
        ctx,
        metrics,
        issuers_share_sources: jwt_count > 1,
        refetch: Vec::new(),
    };
    let result = tries.first_accepted(principals);
    Authentication {
        result,
        refetch: tries.refetch,
    }
}

/// The state of one `authenticate` call.
struct Tries<'k, 'c, 'm> {
    keyring: &'k mut Keyring,
    ctx: &'c RequestCtx<'c>,
    metrics: &'m mut dyn Metrics,
    /// More than one JWT provider may read the same header: tokens are sorted by issuer.
    issuers_share_sources: bool,
    refetch: Vec<usize>,
}

impl Tries<'_, '_, '_> {
    fn first_accepted(&mut self, principals: &[PrincipalRef]) -> Result<Principal, Box<Denial>> {
        let policy = self.ctx.policy;
        let mut refused: Option<Denial> = None;
        let mut keys_pending = false;
        for principal in principals {
            let attempt = match *principal {
                PrincipalRef::Jwt(id) => self.try_jwt(id),
                PrincipalRef::ApiKey(id) => self.try_api_key(id),
                PrincipalRef::ClientCert(id) => self.try_client_cert(id),
            };
            match attempt {
                Attempt::Accepted(p) => return Ok(p),
                Attempt::Ambiguous => {
                    return Err(Box::new(Denial::invalid_request(
                        &policy.realm,
                        "more than one credential in the request",
                    )))
                }
                Attempt::Refused(d) => {
                    refused.get_or_insert(d);
                }
                Attempt::KeysPending => keys_pending = true,
                Attempt::Absent => {}
            }
        }
        if let Some(d) = refused {
            return Err(Box::new(d));
        }
        if keys_pending {
            let mut d = Denial::new(
                503,
                "jwks_unavailable",
                "the signing keys of the token issuer are not loaded yet",
            );
            d.retry_after_secs = Some(JWKS_RETRY_AFTER_SECS);
            return Err(Box::new(d));
        }
        Err(Box::new(no_credential(policy, principals)))
    }

    /// Every source of one JWT provider, in order: the first token that verifies wins.
    fn try_jwt(&mut self, id: usize) -> Attempt {
        let policy = self.ctx.policy;
        let Some(provider) = policy.providers.get(id) else {
            return Attempt::Absent;
        };
        let ctx = self.ctx;
        first_accepted(ctx, &provider.sources, |source, token| {
            self.verify_token(id, source, token)
        })
    }

    /// One token against one provider: its issuer, the cache, then the signature.
    fn verify_token(&mut self, id: usize, source: usize, token: &str) -> Attempt {
        let policy = self.ctx.policy;
        let Some(provider) = policy.providers.get(id) else {
            return Attempt::Absent;
        };
        // Several providers may share a header: skip, without paying for a signature
        // check, tokens another issuer minted.
        if self.issuers_share_sources {
            if let Some(iss) = jwt::peek_issuer(token) {
                if iss != provider.rules.issuer {
                    return Attempt::Refused(jwt_denial(policy, &JwtError::WrongIssuer));
                }
            }
        }
        let Some(keys) = self.keyring.keys.get(id) else {
            return Attempt::Absent;
        };
        let Some(jwks) = keys.jwks.clone() else {
            return Attempt::KeysPending;
        };
        let generation = keys.generation;
        let now = self.ctx.host.clock.now_secs();
        let cache = &mut self.keyring.cache;
        if let Some(verified) = cache.get(id, generation, token, &provider.rules, now) {
            self.metrics.incr("apiguard.jwt.cache_hit");
            return Attempt::Accepted(Principal::Jwt {
                provider: id,
                verified,
                source,
            });
        }
        self.metrics.incr("apiguard.jwt.cache_miss");
        match jwt::verify(token, &jwks, &provider.rules, now, self.ctx.host.crypto) {
            Ok(v) => {
                let verified = Rc::new(v);
                cache.insert(id, generation, token, verified.clone());
                Attempt::Accepted(Principal::Jwt {
                    provider: id,
                    verified,
                    source,
                })
            }
            Err(e) => {
                if e == JwtError::UnknownKid && matches!(provider.keys, KeySource::Remote(_)) {
                    self.refetch.push(id);
                }
                Attempt::Refused(jwt_denial(policy, &e))
            }
        }
    }

    /// Every source of one API key set, in order: the first known key wins.
    fn try_api_key(&self, id: usize) -> Attempt {
        let policy = self.ctx.policy;
        let Some(set) = policy.api_key_sets.get(id) else {
            return Attempt::Absent;
        };
        first_accepted(
            self.ctx,
            &set.sources,
            |source, presented| match find_api_key(set, presented) {
                Some(key) => Attempt::Accepted(Principal::ApiKey {
                    set: id,
                    key,
                    source,
                }),
                None => {
                    let mut d = Denial::new(401, "invalid_api_key", "the API key is not valid");
                    d.www_authenticate = Some(format!("APIKey realm=\"{}\"", policy.realm));
                    Attempt::Refused(d)
                }
            },
        )
    }

    /// The client certificate Envoy verified, against one certificate set.
    fn try_client_cert(&self, id: usize) -> Attempt {
        let Some(set) = self.ctx.policy.cert_sets.get(id) else {
            return Attempt::Absent;
        };
        let peer = self.ctx.req.peer;
        let (uri_san, subject) = (peer.uri_san(), peer.subject());
        if uri_san.is_none() && subject.is_none() {
            return Attempt::Absent;
        }
        if set.admits(uri_san.as_deref(), subject.as_deref()) {
            return Attempt::Accepted(Principal::ClientCert {
                claims: cert_claims(uri_san.as_deref(), subject.as_deref()),
            });
        }
        // TLS client authentication has no HTTP challenge: a certificate Envoy accepted
        // but the route does not is a 403, not a 401.
        Attempt::Refused(Denial::new(
            403,
            "identity_not_allowed",
            "the client certificate identity is not allowed here",
        ))
    }
}

/// The refusal of a request that presented no credential any source of the route reads.
fn no_credential(policy: &Policy, principals: &[PrincipalRef]) -> Denial {
    let only_certs = principals
        .iter()
        .all(|p| matches!(p, PrincipalRef::ClientCert(_)));
    if only_certs {
        return Denial::new(
            403,
            "client_certificate_required",
            "this route requires a client certificate",
        );
    }
    let mut d = Denial::missing_credentials(&policy.realm);
    if !principals.iter().any(|p| matches!(p, PrincipalRef::Jwt(_))) {
        d.www_authenticate = Some(format!("APIKey realm=\"{}\"", policy.realm));
        d.detail = "an API key is required".into();
    }
    d
}

fn jwt_denial(policy: &Policy, e: &JwtError) -> Denial {
    Denial::invalid_token(&policy.realm, e.code(), e.description())
}

/// Compares the presented key's SHA-256 with every stored digest in constant time, so
/// neither the key nor its position in the policy leaks through timing.
fn find_api_key(set: &ApiKeySet, presented: &str) -> Option<usize> {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = None;
    for (i, key) in set.keys.iter().enumerate() {
        if bool::from(key.digest.ct_eq(&digest)) {
            found = Some(i);
        }
    }
    found
}

fn cert_claims(uri_san: Option<&str>, subject: Option<&str>) -> Map<String, Value> {
    let mut claims = Map::new();
    let id = uri_san.or(subject).unwrap_or_default();
    claims.insert("sub".into(), Value::String(id.to_string()));
    if let Some(u) = uri_san {
        claims.insert("uri_san".into(), Value::String(u.to_string()));
    }
    if let Some(s) = subject {
        claims.insert("subject".into(), Value::String(s.to_string()));
    }
    claims
}

/// Every source of one principal source (a JWT provider, an API key set), in order: the
/// first credential `check` accepts wins; otherwise the first refusal, then keys still
/// loading, then nothing found. Two credentials in one source are ambiguous.
fn first_accepted(
    ctx: &RequestCtx,
    sources: &[TokenSource],
    mut check: impl FnMut(usize, &str) -> Attempt,
) -> Attempt {
    let mut outcome = Attempt::Absent;
    for (source, from) in sources.iter().enumerate() {
        let credential = match credentials::extract(from, ctx.req.headers, ctx.query) {
            Found::None => continue,
            Found::Ambiguous => return Attempt::Ambiguous,
            Found::Token(t) => t,
        };
        match check(source, &credential) {
            accepted @ Attempt::Accepted(_) => return accepted,
            Attempt::Refused(d) if !matches!(outcome, Attempt::Refused(_)) => {
                outcome = Attempt::Refused(d)
            }
            Attempt::KeysPending if matches!(outcome, Attempt::Absent) => {
                outcome = Attempt::KeysPending
            }
            _ => {}
        }
    }
    outcome
}

#[cfg(test)]
mod tests;
