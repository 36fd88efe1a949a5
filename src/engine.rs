//! The per-request decision pipeline: path safety → route → authenticate → authorize.
//!
//! One `Engine` lives in each worker VM. It owns the worker's view of the keys and the
//! verified-token cache; everything it needs from Envoy comes in through `host` traits.

use std::rc::Rc;

use serde_json::Value;

use crate::authz::{claim_at, granted_scopes};
use crate::credentials::{self, Found};
use crate::host::{Clock, SignatureHost};
use crate::jwt::{self, Jwks, JwtError, TokenCache, Verified};
use crate::policy::{Access, KeySource, Policy, Provider, TokenSource, Unmatched};
use crate::problem::Denial;
use crate::routes::{split_query, unsafe_path_reason};

/// Seconds a client is told to wait while a provider's keys are loading.
pub const JWKS_RETRY_AFTER_SECS: u64 = 5;

/// The request as the filter sees it in the headers phase. Header names are lowercase.
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// `:path`, query included.
    pub path: &'a str,
    pub headers: &'a [(String, String)],
    pub request_id: Option<&'a str>,
}

/// Changes to make to an allowed request before it goes upstream.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Mutations {
    pub remove_headers: Vec<String>,
    pub set_headers: Vec<(String, String)>,
    pub new_path: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow(Mutations),
    Deny(Denial),
}

/// The verdict plus what the glue records about it.
#[derive(Debug)]
pub struct Decision {
    pub verdict: Verdict,
    pub route: Option<String>,
    /// `sub` of the authenticated token (never the token itself).
    pub principal: Option<String>,
    /// Providers that saw an unknown `kid`: the glue asks their JWKS to be refetched.
    pub refetch: Vec<usize>,
}

/// Counters the glue maps to Envoy stats.
pub trait Metrics {
    fn incr(&mut self, name: &str);
}

/// A worker's current keys for one provider. `generation` changes whenever keys change,
/// which also invalidates cached verifications made with the old keys.
pub struct ProviderKeys {
    pub jwks: Option<Rc<Jwks>>,
    pub generation: u64,
}

pub struct Engine {
    policy: Rc<Policy>,
    keys: Vec<ProviderKeys>,
    cache: TokenCache,
}

enum AuthFailure {
    Denied(Box<Denial>),
    Unavailable,
}

impl Engine {
    pub fn new(policy: Rc<Policy>) -> Engine {
        let keys = policy
            .providers
            .iter()
            .map(|p| match &p.keys {
                KeySource::Inline(jwks) => ProviderKeys {
                    jwks: Some(jwks.clone()),
                    generation: 0,
                },
                KeySource::Remote(_) => ProviderKeys {
                    jwks: None,
                    generation: 0,
                },
            })
            .collect();
        let cache = TokenCache::new(policy.token_cache_size);
        Engine {
            policy,
            keys,
            cache,
        }
    }

    pub fn policy(&self) -> &Rc<Policy> {
        &self.policy
    }

    pub fn keys_generation(&self, provider: usize) -> Option<u64> {
        self.keys
            .get(provider)
            .and_then(|k| k.jwks.as_ref().map(|_| k.generation))
    }

    /// Installs freshly fetched keys for a remote provider.
    pub fn set_keys(&mut self, provider: usize, jwks: Rc<Jwks>, generation: u64) {
        if let Some(slot) = self.keys.get_mut(provider) {
            slot.jwks = Some(jwks);
            slot.generation = generation;
        }
    }

    pub fn on_request_headers(
        &mut self,
        req: &RequestHead,
        clock: &dyn Clock,
        crypto: &dyn SignatureHost,
        metrics: &mut dyn Metrics,
    ) -> Decision {
        let decision = self.decide(req, clock, crypto, metrics);
        match &decision.verdict {
            Verdict::Allow(_) => metrics.incr("apiguard.allowed"),
            Verdict::Deny(d) => metrics.incr(&format!("apiguard.denied.{}", d.reason)),
        }
        decision
    }

    fn decide(
        &mut self,
        req: &RequestHead,
        clock: &dyn Clock,
        crypto: &dyn SignatureHost,
        metrics: &mut dyn Metrics,
    ) -> Decision {
        let policy = self.policy.clone();
        let mut decision = Decision {
            verdict: Verdict::Allow(Mutations::default()),
            route: None,
            principal: None,
            refetch: Vec::new(),
        };
        let deny = |mut d: Decision, denial: Denial| {
            d.verdict = Verdict::Deny(denial);
            d
        };

        let (path, query) = split_query(req.path);
        if let Some(why) = unsafe_path_reason(path) {
            return deny(decision, Denial::new(400, "ambiguous_path", why));
        }

        // Headers apiguard writes are never taken from the client, on any route.
        let mut mutations = Mutations {
            remove_headers: policy
                .owned_headers
                .iter()
                .filter(|h| req.headers.iter().any(|(n, _)| n == *h))
                .cloned()
                .collect(),
            ..Mutations::default()
        };

        let Some(found) = policy.routes.lookup(req.method, path) else {
            return match policy.unmatched {
                Unmatched::Allow => {
                    decision.verdict = Verdict::Allow(mutations);
                    decision
                }
                Unmatched::Deny => deny(
                    decision,
                    Denial::new(
                        403,
                        "no_route",
                        "no route of the policy allows this request",
                    ),
                ),
            };
        };
        let route = found.route;
        decision.route = Some(route.name.clone());

        let providers = match &route.access {
            Access::Public => {
                decision.verdict = Verdict::Allow(mutations);
                return decision;
            }
            Access::Providers(ids) => ids,
        };

        let now = clock.now_secs();
        let (provider_id, verified) = match self.authenticate(
            &policy,
            providers,
            req,
            query,
            now,
            crypto,
            metrics,
            &mut decision,
        ) {
            Ok(ok) => ok,
            Err(AuthFailure::Denied(d)) => return deny(decision, *d),
            Err(AuthFailure::Unavailable) => {
                let mut d = Denial::new(
                    503,
                    "jwks_unavailable",
                    "the signing keys of the token issuer are not loaded yet",
                );
                d.retry_after_secs = Some(JWKS_RETRY_AFTER_SECS);
                return deny(decision, d);
            }
        };
        let Some(provider) = policy.providers.get(provider_id) else {
            return deny(
                decision,
                Denial::new(500, "internal", "provider index out of range"),
            );
        };
        decision.principal = verified
            .claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string);

        if !route.scopes.is_empty() {
            let granted = granted_scopes(&verified.claims, &provider.scope_claims);
            if let Err(needed) = route.scopes.check(&granted) {
                return deny(decision, Denial::insufficient_scope(&policy.realm, &needed));
            }
        }

        add_upstream_headers(provider, &verified, &mut mutations);
        if !provider.forward {
            remove_credential(provider, req, path, query, &mut mutations);
        }
        decision.verdict = Verdict::Allow(mutations);
        decision
    }

    /// Tries every provider the route accepts; the first valid token wins.
    #[allow(clippy::too_many_arguments)]
    fn authenticate(
        &mut self,
        policy: &Policy,
        providers: &[usize],
        req: &RequestHead,
        query: &str,
        now: u64,
        crypto: &dyn SignatureHost,
        metrics: &mut dyn Metrics,
        decision: &mut Decision,
    ) -> Result<(usize, Rc<Verified>), AuthFailure> {
        let mut unavailable = false;
        let mut first_error: Option<JwtError> = None;
        for &id in providers {
            let Some(provider) = policy.providers.get(id) else {
                continue;
            };
            for source in &provider.sources {
                let token = match credentials::extract(source, req.headers, query) {
                    Found::None => continue,
                    Found::Ambiguous => {
                        return Err(AuthFailure::Denied(Box::new(Denial::invalid_request(
                            &policy.realm,
                            "more than one credential in the request",
                        ))))
                    }
                    Found::Token(t) => t,
                };
                // Several providers may share a header: skip, without paying for a
                // signature check, tokens another issuer minted.
                if providers.len() > 1 {
                    if let Some(iss) = jwt::peek_issuer(&token) {
                        if iss != provider.rules.issuer {
                            first_error.get_or_insert(JwtError::WrongIssuer);
                            continue;
                        }
                    }
                }
                let Some(keys) = self.keys.get(id) else {
                    continue;
                };
                let Some(jwks) = keys.jwks.clone() else {
                    unavailable = true;
                    continue;
                };
                let generation = keys.generation;
                if let Some(hit) = self.cache.get(id, generation, &token, &provider.rules, now) {
                    metrics.incr("apiguard.jwt.cache_hit");
                    return Ok((id, hit));
                }
                metrics.incr("apiguard.jwt.cache_miss");
                match jwt::verify(&token, &jwks, &provider.rules, now, crypto) {
                    Ok(v) => {
                        let v = Rc::new(v);
                        self.cache.insert(id, generation, &token, v.clone());
                        return Ok((id, v));
                    }
                    Err(e) => {
                        if e == JwtError::UnknownKid
                            && matches!(provider.keys, KeySource::Remote(_))
                        {
                            decision.refetch.push(id);
                        }
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        if unavailable {
            return Err(AuthFailure::Unavailable);
        }
        match first_error {
            Some(e) => Err(AuthFailure::Denied(Box::new(Denial::invalid_token(
                &policy.realm,
                e.code(),
                e.description(),
            )))),
            None => Err(AuthFailure::Denied(Box::new(Denial::missing_credentials(
                &policy.realm,
            )))),
        }
    }
}

fn add_upstream_headers(provider: &Provider, verified: &Verified, m: &mut Mutations) {
    for ch in &provider.claims_to_headers {
        if let Some(value) = claim_at(&verified.claims, &ch.claim).and_then(header_value) {
            m.set_headers.push((ch.header.clone(), value));
        }
    }
    if let Some(h) = &provider.forward_payload_header {
        m.set_headers
            .push((h.clone(), verified.payload_b64.clone()));
    }
}

/// A claim as a header value: strings as-is, arrays joined with `,`, other JSON compact.
/// Anything with control characters is dropped rather than risk header injection.
fn header_value(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| i.to_string())
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Null => return None,
        other => other.to_string(),
    };
    (!s.chars().any(char::is_control)).then_some(s)
}

fn remove_credential(
    provider: &Provider,
    req: &RequestHead,
    path: &str,
    query: &str,
    m: &mut Mutations,
) {
    for source in &provider.sources {
        match source {
            TokenSource::Header { name, .. } => m.remove_headers.push(name.clone()),
            TokenSource::Query(param) => {
                m.new_path = Some(credentials::path_without_query_param(path, query, param));
            }
            TokenSource::Cookie(name) => {
                match credentials::cookie_header_without(req.headers, name) {
                    Some(rest) => m.set_headers.push(("cookie".into(), rest)),
                    None => m.remove_headers.push("cookie".into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
