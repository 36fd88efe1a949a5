//! The per-request decision pipeline: path safety → route → authenticate → authorize.
//!
//! One `Engine` lives in each worker VM. It owns the worker's view of the keys and the
//! verified-token cache; everything it needs from Envoy comes in through `host` traits.

use crate::ratelimit::lockout::{self, Count};
use std::rc::Rc;

use serde_json::{Map, Value};

use crate::authz::{self, claim_at, granted_scopes};
use crate::credentials::{self, Found};
use crate::host::{Clock, SharedStore, SignatureHost};
// The host traits lived here first: kept reachable under their old paths.
pub use crate::host::{KnownPeer, Metrics, Peer};
use crate::hygiene;
use crate::jwt::{self, Jwks, JwtError, TokenCache, Verified};
use crate::policy::{
    Access, ApiKeySet, KeyPart, KeySource, Policy, PrincipalRef, Provider, Route, TokenSource,
    Unmatched,
};
use crate::problem::Denial;
use crate::routes::{split_query, unsafe_path_reason};
use crate::validate::{BodyPlan, Failure};

/// Seconds a client is told to wait while a provider's keys are loading.
pub const JWKS_RETRY_AFTER_SECS: u64 = 5;

/// The request as the filter sees it in the headers phase. Header names are lowercase.
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// `:path`, query included.
    pub path: &'a str,
    /// Lowercase names (as Envoy hands them over), values as received, borrowed from the
    /// host's header buffer.
    pub headers: &'a [(&'a str, &'a str)],
    pub request_id: Option<&'a str>,
    /// The downstream connection, asked only when a rule needs it.
    pub peer: &'a dyn Peer,
    /// The headers ended the stream: there is no body.
    pub end_of_stream: bool,
}

impl RequestHead<'_> {
    /// All values of a header joined with `,` (how `x-forwarded-for` lists combine).
    pub fn joined_header(&self, name: &str) -> Option<String> {
        joined_header(self.headers, name)
    }

    /// The address a `client_ip` key part names: the TCP peer, or the entry `trusted_hops`
    /// proxies in front of Envoy wrote into `x-forwarded-for` (`ratelimit::key::client_ip`).
    pub fn client_ip(&self, trusted_hops: u32) -> String {
        let xff = self.joined_header("x-forwarded-for");
        let peer = self.peer.address().unwrap_or_default();
        crate::ratelimit::key::client_ip(xff.as_deref(), trusted_hops, &peer)
    }
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
    /// The enforced rule that denied the request.
    pub rule: Option<String>,
    /// Audit-mode rules that would have denied it.
    pub audit_denied: Vec<String>,
    /// Providers that saw an unknown `kid`: the glue asks their JWKS to be refetched.
    pub refetch: Vec<usize>,
    /// Headers for the response of an allowed request (`RateLimit`, `RateLimit-Policy`).
    pub response_headers: Vec<(String, String)>,
    /// Set when the body still has to be checked before the request may go upstream.
    pub body: Option<BodyCheck>,
    /// Rate limit service calls to make (global limits) before the request may continue.
    pub global: Vec<crate::ratelimit::global::GlobalCall>,
}

/// A pending body check: which route's rules, and whether to buffer or only count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyCheck {
    pub route: usize,
    pub plan: BodyPlan,
}

/// The host services a decision may use.
pub struct Host<'a> {
    pub clock: &'a dyn Clock,
    pub crypto: &'a dyn SignatureHost,
    pub store: &'a dyn SharedStore,
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

    fn validation_of(&self, check: &BodyCheck) -> Option<&crate::validate::RouteValidation> {
        self.policy
            .routes
            .get(check.route)
            .and_then(|r| r.validation.as_ref())
    }

    /// Checks the body size seen so far (`Limit` and `Buffer` plans), before the end.
    pub fn on_body_progress(
        &self,
        check: &BodyCheck,
        seen: u64,
        metrics: &mut dyn Metrics,
    ) -> Result<(), Box<Denial>> {
        let Some(v) = self.validation_of(check) else {
            return Ok(());
        };
        v.check_body_size(seen).map_err(|f| {
            let d = validation_denial(&f);
            metrics.incr(&format!("apiguard.denied.{}", d.reason));
            Box::new(d)
        })
    }

    /// Finishes a pending body check: the whole body for `Buffer`, its final size for `Limit`.
    pub fn on_body_end(
        &self,
        check: &BodyCheck,
        body: &[u8],
        seen: u64,
        metrics: &mut dyn Metrics,
    ) -> Result<(), Box<Denial>> {
        let Some(v) = self.validation_of(check) else {
            metrics.incr("apiguard.allowed");
            return Ok(());
        };
        let result = match check.plan {
            BodyPlan::Buffer { .. } => v.check_body(body),
            _ => v.check_body_size(seen),
        };
        match result {
            Ok(()) => {
                metrics.incr("apiguard.allowed");
                Ok(())
            }
            Err(f) => {
                let d = validation_denial(&f);
                metrics.incr(&format!("apiguard.denied.{}", d.reason));
                Err(Box::new(d))
            }
        }
    }

    pub fn on_request_headers(
        &mut self,
        req: &RequestHead,
        host: &Host,
        metrics: &mut dyn Metrics,
    ) -> Decision {
        let decision = self.decide(req, host.clock, host.crypto, host.store, metrics);
        match &decision.verdict {
            // A request whose body or global limits are still to be checked is counted
            // when that is done.
            Verdict::Allow(_) if decision.body.is_some() || !decision.global.is_empty() => {}
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
        store: &dyn SharedStore,
        metrics: &mut dyn Metrics,
    ) -> Decision {
        let policy = self.policy.clone();
        let mut decision = Decision {
            verdict: Verdict::Allow(Mutations::default()),
            route: None,
            principal: None,
            rule: None,
            audit_denied: Vec::new(),
            refetch: Vec::new(),
            response_headers: Vec::new(),
            body: None,
            global: Vec::new(),
        };
        let deny = |mut d: Decision, denial: Denial| {
            d.verdict = Verdict::Deny(denial);
            d
        };

        let (path, query) = split_query(req.path);
        if let Some(why) = unsafe_path_reason(path) {
            return deny(decision, Denial::new(400, "ambiguous_path", why));
        }
        if let Some(limits) = &policy.request_limits {
            if let Err(f) = limits.check(req.path, req.headers) {
                return deny(decision, validation_denial(&f));
            }
        }

        if let Some(d) = lookalike_method(&policy, req.method) {
            return deny(decision, d);
        }

        // The method the upstream will act on is the one routed, authorized and charged.
        let method =
            match hygiene::effective_method(req.method, req.headers, policy.method_override) {
                Ok(m) => m,
                Err(d) => return deny(decision, *d),
            };
        let req = &RequestHead {
            method: &method,
            ..*req
        };

        // Headers apiguard writes are never taken from the client, in any spelling an
        // upstream could read as theirs, on any route; nor are URL overrides.
        let mut mutations = Mutations {
            remove_headers: hygiene::smuggled_headers(req.headers, &policy.owned_headers),
            ..Mutations::default()
        };

        if let Some(route) = cors_preflight(&policy, req, path, query) {
            metrics.incr("apiguard.cors_preflight");
            decision.route = Some(route);
            decision.verdict = Verdict::Allow(mutations);
            return decision;
        }

        let Some(found) = policy.routes.lookup(req.method, path) else {
            return match policy.unmatched {
                Unmatched::Allow => match lookalike_path(&policy, req.method, path) {
                    Some((route, d)) => {
                        decision.route = Some(route);
                        deny(decision, d)
                    }
                    None => {
                        decision.verdict = Verdict::Allow(mutations);
                        decision
                    }
                },
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

        let now = clock.now_secs();
        if matches!(route.access, Access::Principals(_)) {
            if let Some(d) = lockout::check(&policy, route, req, store, clock.now_millis()) {
                return deny(decision, d);
            }
        }
        let principal = match &route.access {
            Access::Public => None,
            Access::Principals(principals) => match self.authenticate(
                &policy,
                principals,
                req,
                query,
                now,
                crypto,
                metrics,
                &mut decision,
            ) {
                Ok(p) => Some(p),
                Err(AuthFailure::Denied(d)) => {
                    if lockout::is_auth_failure(&d) {
                        lockout::record_failure(&policy, route, req, store, clock.now_millis());
                    }
                    return deny(decision, *d);
                }
                Err(AuthFailure::Unavailable) => {
                    let mut d = Denial::new(
                        503,
                        "jwks_unavailable",
                        "the signing keys of the token issuer are not loaded yet",
                    );
                    d.retry_after_secs = Some(JWKS_RETRY_AFTER_SECS);
                    return deny(decision, d);
                }
            },
        };
        let no_claims = Map::new();
        let claims = principal.as_ref().map_or(&no_claims, |p| p.claims(&policy));
        decision.principal = claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string);

        if let Some(principal) = &principal {
            let outcome = authz::evaluate(&route.rules, claims, &found.params);
            for rule in &outcome.audit_denied {
                metrics.incr("apiguard.audit_denied");
                decision.audit_denied.push(rule.clone());
            }
            if let Some(rule) = outcome.denied_by {
                decision.rule = Some(rule);
                return deny(
                    decision,
                    Denial::new(
                        403,
                        "rule_denied",
                        "a rule of the route denies this request",
                    ),
                );
            }
            if !route.scopes.is_empty() {
                let granted = granted_scopes(claims, principal.scope_claims(&policy));
                if let Err(needed) = route.scopes.check(&granted) {
                    return deny(decision, Denial::insufficient_scope(&policy.realm, &needed));
                }
            }
        }

        if let Some(validation) = &route.validation {
            let content_type = joined_header(req.headers, "content-type");
            let content_length = if req.end_of_stream {
                Some(0)
            } else {
                joined_header(req.headers, "content-length")
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            match validation.check_head(
                req.headers,
                query,
                &found.params,
                content_type.as_deref(),
                content_length,
            ) {
                Err(f) => return deny(decision, validation_denial(&f)),
                Ok(BodyPlan::Skip) => {}
                Ok(plan) => {
                    decision.body = Some(BodyCheck {
                        route: found.index,
                        plan,
                    })
                }
            }
        }

        if let Err(d) = apply_limits(
            &policy,
            route,
            req,
            claims,
            clock.now_millis(),
            store,
            metrics,
            &mut decision,
        ) {
            return deny(decision, *d);
        }
        decision.global = global_calls(&policy, route, req, claims);

        let Some(principal) = principal else {
            decision.verdict = Verdict::Allow(mutations);
            return decision;
        };
        if let Principal::Jwt {
            provider, verified, ..
        } = &principal
        {
            if let Some(provider) = policy.providers.get(*provider) {
                add_upstream_headers(provider, verified, &mut mutations);
            }
        }
        strip_credentials(
            &policy,
            principal.forwarded_source(&policy),
            req,
            (path, query),
            &mut mutations,
        );
        decision.verdict = Verdict::Allow(mutations);
        decision
    }

    /// Tries every principal source the route accepts, in policy order; the first valid
    /// credential wins. Failures are reported for the most specific source that saw one.
    #[allow(clippy::too_many_arguments)]
    fn authenticate(
        &mut self,
        policy: &Policy,
        principals: &[PrincipalRef],
        req: &RequestHead,
        query: &str,
        now: u64,
        crypto: &dyn SignatureHost,
        metrics: &mut dyn Metrics,
        decision: &mut Decision,
    ) -> Result<Principal, AuthFailure> {
        let mut unavailable = false;
        let mut failure: Option<Denial> = None;
        let jwt_count = principals
            .iter()
            .filter(|p| matches!(p, PrincipalRef::Jwt(_)))
            .count();
        let ambiguous = || {
            AuthFailure::Denied(Box::new(Denial::invalid_request(
                &policy.realm,
                "more than one credential in the request",
            )))
        };
        for principal in principals {
            match *principal {
                PrincipalRef::Jwt(id) => {
                    let Some(provider) = policy.providers.get(id) else {
                        continue;
                    };
                    for (si, source) in provider.sources.iter().enumerate() {
                        let token = match credentials::extract(source, req.headers, query) {
                            Found::None => continue,
                            Found::Ambiguous => return Err(ambiguous()),
                            Found::Token(t) => t,
                        };
                        // Several providers may share a header: skip, without paying for a
                        // signature check, tokens another issuer minted.
                        if jwt_count > 1 {
                            if let Some(iss) = jwt::peek_issuer(&token) {
                                if iss != provider.rules.issuer {
                                    failure.get_or_insert_with(|| {
                                        jwt_denial(policy, &JwtError::WrongIssuer)
                                    });
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
                        if let Some(hit) =
                            self.cache.get(id, generation, &token, &provider.rules, now)
                        {
                            metrics.incr("apiguard.jwt.cache_hit");
                            return Ok(Principal::Jwt {
                                provider: id,
                                verified: hit,
                                source: si,
                            });
                        }
                        metrics.incr("apiguard.jwt.cache_miss");
                        match jwt::verify(&token, &jwks, &provider.rules, now, crypto) {
                            Ok(v) => {
                                let v = Rc::new(v);
                                self.cache.insert(id, generation, &token, v.clone());
                                return Ok(Principal::Jwt {
                                    provider: id,
                                    verified: v,
                                    source: si,
                                });
                            }
                            Err(e) => {
                                if e == JwtError::UnknownKid
                                    && matches!(provider.keys, KeySource::Remote(_))
                                {
                                    decision.refetch.push(id);
                                }
                                failure.get_or_insert_with(|| jwt_denial(policy, &e));
                            }
                        }
                    }
                }
                PrincipalRef::ApiKey(id) => {
                    let Some(set) = policy.api_key_sets.get(id) else {
                        continue;
                    };
                    for (si, source) in set.sources.iter().enumerate() {
                        let presented = match credentials::extract(source, req.headers, query) {
                            Found::None => continue,
                            Found::Ambiguous => return Err(ambiguous()),
                            Found::Token(t) => t,
                        };
                        match find_api_key(set, &presented) {
                            Some(key) => {
                                return Ok(Principal::ApiKey {
                                    set: id,
                                    key,
                                    source: si,
                                })
                            }
                            None => {
                                failure.get_or_insert_with(|| {
                                    let mut d = Denial::new(
                                        401,
                                        "invalid_api_key",
                                        "the API key is not valid",
                                    );
                                    d.www_authenticate =
                                        Some(format!("APIKey realm=\"{}\"", policy.realm));
                                    d
                                });
                            }
                        }
                    }
                }
                PrincipalRef::ClientCert(id) => {
                    let Some(set) = policy.cert_sets.get(id) else {
                        continue;
                    };
                    let (uri_san, subject) = (req.peer.uri_san(), req.peer.subject());
                    if uri_san.is_none() && subject.is_none() {
                        continue;
                    }
                    if set.admits(uri_san.as_deref(), subject.as_deref()) {
                        return Ok(Principal::ClientCert {
                            claims: cert_claims(uri_san.as_deref(), subject.as_deref()),
                        });
                    }
                    // TLS client authentication has no HTTP challenge: a certificate
                    // Envoy accepted but the route does not is a 403, not a 401.
                    failure.get_or_insert_with(|| {
                        Denial::new(
                            403,
                            "identity_not_allowed",
                            "the client certificate identity is not allowed here",
                        )
                    });
                }
            }
        }
        if let Some(d) = failure {
            return Err(AuthFailure::Denied(Box::new(d)));
        }
        if unavailable {
            return Err(AuthFailure::Unavailable);
        }
        let only_certs = principals
            .iter()
            .all(|p| matches!(p, PrincipalRef::ClientCert(_)));
        if only_certs {
            return Err(AuthFailure::Denied(Box::new(Denial::new(
                403,
                "client_certificate_required",
                "this route requires a client certificate",
            ))));
        }
        let mut d = Denial::missing_credentials(&policy.realm);
        if jwt_count == 0 {
            d.www_authenticate = Some(format!("APIKey realm=\"{}\"", policy.realm));
            d.detail = "an API key is required".into();
        }
        Err(AuthFailure::Denied(Box::new(d)))
    }
}

/// Takes one token (or the route's cost) from every limit of the route; the first limit
/// that refuses decides the 429. Allowed requests report the tightest limit.
#[allow(clippy::too_many_arguments)]
fn apply_limits(
    policy: &Policy,
    route: &Route,
    req: &RequestHead,
    claims: &Map<String, Value>,
    now_ms: u64,
    store: &dyn SharedStore,
    metrics: &mut dyn Metrics,
    decision: &mut Decision,
) -> Result<(), Box<Denial>> {
    use crate::ratelimit::{acquire, headers, key, Acquire};
    let mut tightest: Option<(u64, String, &str)> = None;
    let grpc_method = crate::grpc::call_method(req.path, req.headers);
    for &li in &route.limits {
        let Some(limit) = policy
            .limits
            .get(li)
            .filter(|l| l.global.is_none() && l.count == Count::Requests)
        else {
            continue;
        };
        let name = &limit.spec.name;
        let parts: Vec<String> = limit
            .key
            .iter()
            .map(|part| match part {
                KeyPart::ClientIp { trusted_hops } => {
                    let peer = req.peer.address().unwrap_or_default();
                    if key::peer_is_from_header(&peer) {
                        // Envoy lacks `use_remote_address: true`: such clients share a bucket.
                        metrics.incr("apiguard.client_ip.peer_from_header");
                    }
                    format!("ip={}", req.client_ip(*trusted_hops))
                }
                KeyPart::Claim(path) => format!(
                    "claim={}",
                    claim_at(claims, path)
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                        .unwrap_or_default()
                ),
                KeyPart::Header(h) => format!(
                    "header={}",
                    joined_header(req.headers, h).unwrap_or_default()
                ),
                KeyPart::Route => format!("route={}", route.name),
                KeyPart::Constant(c) => format!("const={c}"),
            })
            .collect();
        let bucket_key = key::compose(parts.iter());
        let result = acquire(
            store,
            &limit.spec,
            &bucket_key,
            limit.call_cost(req.method, grpc_method),
            now_ms,
        );
        for _ in 0..result.cas_retries() {
            metrics.incr("apiguard.ratelimit.cas_retry");
        }
        match result {
            Acquire::Allowed {
                remaining,
                reset_ms,
                shared_slot,
                ..
            } => {
                metrics.incr(&limit.counters.allowed);
                if shared_slot {
                    metrics.incr(&limit.counters.shared_slot);
                }
                // Formatted only when it will be sent: this runs on every allowed request.
                if policy.ratelimit_headers_on_allow
                    && tightest.as_ref().is_none_or(|(r, _, _)| remaining < *r)
                {
                    let reset = headers::ratelimit_header(
                        name,
                        remaining,
                        headers::ms_to_secs_ceil(reset_ms),
                    );
                    tightest = Some((remaining, reset, &limit.policy_header));
                }
            }
            Acquire::Limited {
                remaining,
                retry_after_ms,
                reset_ms,
                shared_slot,
                ..
            } => {
                metrics.incr(&limit.counters.limited);
                if shared_slot {
                    metrics.incr(&limit.counters.shared_slot);
                }
                let mut d =
                    Denial::new(429, "rate_limited", format!("rate limit `{name}` exceeded"));
                // A cost that can never be met still gets a finite hint: the full window.
                let wait = retry_after_ms.unwrap_or(reset_ms.min(86_400_000));
                d.retry_after_secs = Some(headers::retry_after_secs(wait));
                d.headers
                    .push((headers::POLICY_HEADER.into(), limit.policy_header.clone()));
                d.headers.push((
                    headers::RATELIMIT_HEADER.into(),
                    headers::ratelimit_header(
                        name,
                        remaining,
                        headers::ms_to_secs_ceil(reset_ms.min(86_400_000)),
                    ),
                ));
                d.extensions.push(("limit", Value::String(name.clone())));
                return Err(Box::new(d));
            }
            Acquire::StoreFailed { allowed, .. } | Acquire::TableFull { allowed, .. } => {
                metrics.incr(if matches!(result, Acquire::StoreFailed { .. }) {
                    &limit.counters.store_failure
                } else {
                    &limit.counters.table_full
                });
                if !allowed {
                    let mut d = Denial::new(
                        429,
                        "rate_limited",
                        format!("rate limit `{name}` could not admit the request"),
                    );
                    d.retry_after_secs = Some(1);
                    d.extensions.push(("limit", Value::String(name.clone())));
                    return Err(Box::new(d));
                }
            }
        }
    }
    if policy.ratelimit_headers_on_allow {
        if let Some((_, ratelimit, policy_header)) = tightest {
            decision
                .response_headers
                .push((headers::POLICY_HEADER.into(), policy_header.to_string()));
            decision
                .response_headers
                .push((headers::RATELIMIT_HEADER.into(), ratelimit));
        }
    }
    Ok(())
}

/// A lower-case spelling of a known method (HTTP/2 `:method delete`): RFC 9110 makes it
/// another method, which no route names, while many servers treat it as `DELETE`.
fn lookalike_method(policy: &Policy, method: &str) -> Option<Denial> {
    let known = policy.known_methods.iter().map(String::as_str);
    (policy.deny_lookalikes && crate::routes::is_noncanonical_method(method, known)).then(|| {
        Denial::new(
            400,
            "noncanonical_method",
            "methods are case-sensitive: send the method in upper case",
        )
    })
}

/// An unmatched request that differs from a route only by letter case or a trailing slash
/// (`/ADMIN`, `/items/42/`): many upstreams would serve it as that route, so with
/// `unmatched: allow` it is refused rather than let through unchecked.
fn lookalike_path(policy: &Policy, method: &str, path: &str) -> Option<(String, Denial)> {
    if !policy.deny_lookalikes {
        return None;
    }
    let route = policy.routes.lookalike(method, path)?;
    let d = Denial::new(
        400,
        "noncanonical_path",
        "the path differs from a route only by letter case or a trailing slash",
    );
    Some((route.name.clone(), d))
}

/// The rate limit service calls for the route's global limits (after its local limits
/// admitted the request, so a flood is shed here without a network hop).
fn global_calls(
    policy: &Policy,
    route: &Route,
    req: &RequestHead,
    claims: &Map<String, Value>,
) -> Vec<crate::ratelimit::global::GlobalCall> {
    use crate::ratelimit::global;
    let mut calls = Vec::new();
    for &li in &route.limits {
        let Some((limit, spec)) = policy
            .limits
            .get(li)
            .filter(|l| l.count == Count::Requests)
            .and_then(|l| l.global.as_ref().map(|g| (l, g)))
        else {
            continue;
        };
        let parts = limit
            .key
            .iter()
            .map(|part| match part {
                KeyPart::ClientIp { trusted_hops } => {
                    ("client_ip".to_string(), req.client_ip(*trusted_hops))
                }
                KeyPart::Claim(path) => {
                    (format!("claim.{path}"), global::claim_value(claims, path))
                }
                KeyPart::Header(h) => (
                    format!("header.{h}"),
                    joined_header(req.headers, h).unwrap_or_default(),
                ),
                KeyPart::Route => ("route".to_string(), route.name.clone()),
                KeyPart::Constant(c) => ("constant".to_string(), c.clone()),
            })
            .collect();
        let cost = limit.call_cost(req.method, crate::grpc::call_method(req.path, req.headers));
        if cost == 0 {
            continue; // a free request: nothing to count
        }
        let descriptor = global::descriptor(&limit.spec.name, parts);
        calls.push(global::call(li, spec, descriptor, cost));
    }
    calls
}

/// With `bypass_cors_preflight`, the name of the route a CORS preflight asks about, when it
/// may go upstream unauthenticated: it has a preflight's shape (`crate::cors`), presents no
/// credential of any source the policy reads (header, query or cookie), a route serves
/// the requested method at this path, and no route lists `OPTIONS` for it explicitly (an
/// API whose `OPTIONS` is a real operation keeps it authenticated).
fn cors_preflight(policy: &Policy, req: &RequestHead, path: &str, query: &str) -> Option<String> {
    if !policy.bypass_cors_preflight {
        return None;
    }
    let requested = crate::cors::requested_method(req.method, req.headers, req.end_of_stream)?;
    let sources = policy
        .providers
        .iter()
        .flat_map(|p| &p.sources)
        .chain(policy.api_key_sets.iter().flat_map(|s| &s.sources));
    for source in sources {
        if !matches!(
            credentials::extract(source, req.headers, query),
            Found::None
        ) {
            return None;
        }
    }
    if policy.routes.names_method_for("OPTIONS", path) {
        return None;
    }
    let found = policy.routes.lookup(requested, path)?;
    Some(found.route.name.clone())
}

/// All values of a header joined with `,` (how `x-forwarded-for` lists combine).
fn joined_header(headers: &[(&str, &str)], name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

fn validation_denial(f: &Failure) -> Denial {
    let mut d = Denial::new(f.status, f.reason, f.detail());
    if !f.errors.is_empty() {
        d.extensions.push(("errors", f.errors_json()));
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

/// Who authenticated, and from which of its sources (`from`) the credential came.
enum Principal {
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
    fn claims<'a>(&'a self, policy: &'a Policy) -> &'a Map<String, Value> {
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
    fn forwarded_source<'a>(&self, policy: &'a Policy) -> Option<&'a TokenSource> {
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

    fn scope_claims<'a>(&self, policy: &'a Policy) -> &'a [String] {
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

/// Removes every credential the policy reads (any provider's or key set's source, not only
/// the route's) except `kept`, the one that authenticated when its source forwards it. A
/// forged token beside a valid API key, or an expired header token beside a valid cookie,
/// never reaches the upstream, whatever `forward` says: the upstream sees only what
/// apiguard accepted. Header credentials go in every spelling a CGI/WSGI upstream reads as
/// the same header. Only credentials present in the request cost a host call.
fn strip_credentials(
    policy: &Policy,
    kept: Option<&TokenSource>,
    req: &RequestHead,
    (path, query): (&str, &str),
    m: &mut Mutations,
) {
    let sources = policy
        .providers
        .iter()
        .flat_map(|p| p.sources.iter())
        .chain(policy.api_key_sets.iter().flat_map(|s| s.sources.iter()));
    let (mut params, mut cookies): (Vec<&str>, Vec<&str>) = (Vec::new(), Vec::new());
    for source in sources {
        match source {
            TokenSource::Header { name, .. } => {
                let kept_name = match kept {
                    Some(TokenSource::Header { name: k, .. }) => Some(k.as_str()),
                    _ => None,
                };
                for (h, v) in req.headers {
                    let strip = kept_name != Some(*h)
                        && hygiene::same_header(h, name)
                        && credentials::is_credential_value(source, v)
                        && !m.remove_headers.iter().any(|r| r == h);
                    if strip {
                        m.remove_headers.push((*h).to_string());
                    }
                }
            }
            TokenSource::Query(p) if kept != Some(source) => params.push(p),
            TokenSource::Cookie(c) if !matches!(kept, Some(TokenSource::Cookie(k)) if k == c) => {
                cookies.push(c)
            }
            _ => {}
        }
    }
    if let Some(new_path) = credentials::path_without_query_params(path, query, &params) {
        m.new_path = Some(new_path);
    }
    match credentials::cookie_header_without(req.headers, &cookies) {
        credentials::CookieEdit::Unchanged => {}
        credentials::CookieEdit::Set(rest) => m.set_headers.push(("cookie".into(), rest)),
        credentials::CookieEdit::Remove => m.remove_headers.push("cookie".into()),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod security_review_tests;

#[cfg(test)]
mod hostcall_tests;

#[cfg(test)]
pub(crate) mod test_request;
