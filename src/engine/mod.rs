//! The per-request decision pipeline, in the order a request meets it:
//! screen → route → authenticate → authorize → validate → limit (`decide`).
//!
//! One `Engine` lives in each worker VM. It owns the worker's view of the keys and the
//! verified-token cache (`authn::Keyring`); everything it needs from Envoy comes in
//! through `host` traits. Each phase lives beside the data it reads: `route` (this
//! folder), `crate::authn`, `crate::authz`, `crate::validate`, `crate::ratelimit::enforce`
//! and `lockout`, `upstream` (this folder) for what an allowed request looks like upstream.

mod route;
mod upstream;

use std::rc::Rc;

use serde_json::{Map, Value};

use crate::authn::{self, Authentication, Keyring, Principal};
use crate::authz::{self, granted_scopes};
use crate::host::{Clock, HostCrypto, SharedStore};
// Moved to `authn` and `host`: kept reachable under their old paths.
pub use crate::authn::{ProviderKeys, JWKS_RETRY_AFTER_SECS};
pub use crate::host::{KnownPeer, Metrics, Peer};
use crate::hygiene;
use crate::jwt::Jwks;
use crate::policy::{Access, Policy, PrincipalRef, Route};
use crate::problem::Denial;
use crate::ratelimit::global::{CallKind, GlobalCall};
use crate::ratelimit::{enforce, lockout};
use crate::routes::{split_query, RouteMatch};
use crate::validate::{BodyPlan, Failure};
use route::Routed;

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

impl Decision {
    /// Allowed with no change, nothing recorded yet.
    pub fn allowed() -> Decision {
        Decision {
            verdict: Verdict::Allow(Mutations::default()),
            route: None,
            principal: None,
            rule: None,
            audit_denied: Vec::new(),
            refetch: Vec::new(),
            response_headers: Vec::new(),
            body: None,
            global: Vec::new(),
        }
    }
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
    pub crypto: &'a dyn HostCrypto,
    pub store: &'a dyn SharedStore,
}

/// One request on its way through the phases: what every phase may read.
pub struct RequestCtx<'a> {
    pub policy: &'a Policy,
    /// The request, its method the one the upstream will act on (`hygiene::effective_method`).
    pub req: &'a RequestHead<'a>,
    /// `req.path` before the `?`.
    pub path: &'a str,
    /// `req.path` after the `?` (empty without one).
    pub query: &'a str,
    pub host: &'a Host<'a>,
}

/// What one phase refuses with: the denial to send.
type Refusal = Box<Denial>;

pub struct Engine {
    policy: Rc<Policy>,
    keyring: Keyring,
}

impl Engine {
    pub fn new(policy: Rc<Policy>) -> Engine {
        let keyring = Keyring::new(&policy);
        Engine { policy, keyring }
    }

    pub fn policy(&self) -> &Rc<Policy> {
        &self.policy
    }

    pub fn keys_generation(&self, provider: usize) -> Option<u64> {
        self.keyring.generation(provider)
    }

    /// Installs freshly fetched keys for a remote provider.
    pub fn set_keys(&mut self, provider: usize, jwks: Rc<Jwks>, generation: u64) {
        self.keyring.set(provider, jwks, generation);
    }

    fn validation_of(&self, check: &BodyCheck) -> Option<&crate::validate::RouteValidation> {
        self.policy
            .routes
            .get(check.route)
            .and_then(|r| r.validation.as_ref())
    }

    /// Checks the body size seen so far (`Limit` and `Buffer` plans), before the end.
    pub fn on_body_progress(&self, check: &BodyCheck, seen: u64) -> Result<(), Box<Denial>> {
        let Some(v) = self.validation_of(check) else {
            return Ok(());
        };
        v.check_body_size(seen)
            .map_err(|f| Box::new(validation_denial(&f)))
    }

    /// Finishes a pending body check: the whole body for `Buffer`, its final size for `Limit`.
    /// Counting the finished request is the caller's (`outcome::counter`).
    pub fn on_body_end(
        &self,
        check: &BodyCheck,
        body: &[u8],
        seen: u64,
    ) -> Result<(), Box<Denial>> {
        let Some(v) = self.validation_of(check) else {
            return Ok(());
        };
        let result = match check.plan {
            BodyPlan::Buffer { .. } => v.check_body(body),
            _ => v.check_body_size(seen),
        };
        result.map_err(|f| Box::new(validation_denial(&f)))
    }

    pub fn on_request_headers(
        &mut self,
        req: &RequestHead,
        host: &Host,
        metrics: &mut dyn Metrics,
    ) -> Decision {
        // The allowed / denied counter is the caller's, once the request is finished
        // (`outcome::after_headers`, `outcome::counter`).
        self.decide(req, host, metrics)
    }

    fn decide(&mut self, req: &RequestHead, host: &Host, metrics: &mut dyn Metrics) -> Decision {
        let mut decision = Decision::allowed();
        decision.verdict = match self.phases(req, host, metrics, &mut decision) {
            Ok(mutations) => Verdict::Allow(mutations),
            Err(denial) => Verdict::Deny(*denial),
        };
        decision
    }

    /// screen → route → authenticate → authorize → validate → limit; the first refusal
    /// ends the request. Phases return what they found; only this function writes it into
    /// `record`, the facts the glue logs and acts on even for a denied request.
    fn phases(
        &mut self,
        req: &RequestHead,
        host: &Host,
        metrics: &mut dyn Metrics,
        record: &mut Decision,
    ) -> Result<Mutations, Refusal> {
        let policy = Rc::clone(&self.policy);
        let (path, query) = split_query(req.path);
        let method = route::screen(&policy, req, path)?;
        let req = &RequestHead {
            method: &method,
            ..*req
        };
        let ctx = RequestCtx {
            policy: &policy,
            req,
            path,
            query,
            host,
        };
        // Headers apiguard writes are never taken from the client, in any spelling an
        // upstream could read as theirs, on any route; nor are URL overrides.
        let mut mutations = Mutations {
            remove_headers: hygiene::smuggled_headers(req.headers, &policy.owned_headers),
            ..Mutations::default()
        };
        let found = match route::route(&ctx, metrics)? {
            Routed::Matched(found) => found,
            Routed::Pass(route) => {
                record.route = route;
                return Ok(mutations);
            }
            Routed::Lookalike(route, denial) => {
                record.route = Some(route);
                return Err(denial);
            }
        };
        record.route = Some(found.route.name.clone());
        if let Some(principal) = self.routed(&ctx, &found, metrics, record)? {
            upstream::for_principal(&ctx, &principal, &mut mutations);
        }
        Ok(mutations)
    }

    /// The phases of a routed request: authenticate → authorize → validate → limit. Answers
    /// the authenticated principal (`None` on a public route).
    fn routed(
        &mut self,
        ctx: &RequestCtx,
        found: &RouteMatch<Route>,
        metrics: &mut dyn Metrics,
        record: &mut Decision,
    ) -> Result<Option<Principal>, Refusal> {
        let route = found.route;
        enforce::note_peer_from_header(ctx, route, metrics);
        let principal = match &route.access {
            Access::Public => None,
            Access::Principals(accepted) => {
                let (authn, lockout_calls) = self.authenticate(ctx, route, accepted, metrics);
                record.refetch = authn.refetch;
                // Global lockouts: whatever the verdict, it waits for the service's answer.
                record.global = lockout_calls;
                Some(authn.result?)
            }
        };
        let no_claims = Map::new();
        let claims = principal
            .as_ref()
            .map_or(&no_claims, |p| p.claims(ctx.policy));
        record.principal = claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string);

        if let Some(principal) = &principal {
            let outcome = authz::evaluate(&route.rules, claims, &found.params);
            for _ in &outcome.audit_denied {
                metrics.incr("apiguard.audit_denied");
            }
            record.audit_denied = outcome.audit_denied;
            record.rule = outcome.denied_by;
            authorize(ctx, route, principal, claims, record.rule.is_some())?;
        }
        record.body = validate_head(ctx, found)?;
        record.response_headers = enforce::local_limits(ctx, route, claims, metrics)?;
        record
            .global
            .extend(enforce::global_calls(ctx, route, claims));
        Ok(principal)
    }

    /// The route's lockouts, then its principal sources; a presented credential that is
    /// refused charges the lockouts (`ratelimit::lockout`). Also answers the global
    /// lockouts' calls: a charge after such a refusal, else a check without counting.
    fn authenticate(
        &mut self,
        ctx: &RequestCtx,
        route: &Route,
        accepted: &[PrincipalRef],
        metrics: &mut dyn Metrics,
    ) -> (Authentication, Vec<GlobalCall>) {
        let (policy, req) = (ctx.policy, ctx.req);
        if let Some(d) = lockout::check(policy, route, req, ctx.host) {
            let locked = Authentication {
                result: Err(Box::new(d)),
                refetch: Vec::new(),
            };
            return (locked, Vec::new());
        }
        let authn = authn::authenticate(&mut self.keyring, ctx, accepted, metrics);
        let failed = matches!(&authn.result, Err(d) if lockout::is_auth_failure(d));
        if failed {
            lockout::record_failure(policy, route, req, ctx.host);
        }
        let kind = if failed {
            CallKind::LockoutCharge
        } else {
            CallKind::LockoutPeek
        };
        (authn, lockout::global_calls(policy, route, req, kind))
    }
}

impl Decision {}

/// An authenticated principal against the route: its enforced rules (`rule_denied`, when
/// `authz::evaluate` named one) and its scopes.
fn authorize(
    ctx: &RequestCtx,
    route: &Route,
    principal: &Principal,
    claims: &Map<String, Value>,
    rule_denied: bool,
) -> Result<(), Refusal> {
    if rule_denied {
        return Err(Box::new(Denial::new(
            403,
            "rule_denied",
            "a rule of the route denies this request",
        )));
    }
    if !route.scopes.is_empty() {
        let granted = granted_scopes(claims, principal.scope_claims(ctx.policy));
        if let Err(needed) = route.scopes.check(&granted) {
            return Err(Box::new(Denial::insufficient_scope(
                &ctx.policy.realm,
                &needed,
            )));
        }
    }
    Ok(())
}

/// The head's share of the route's validation (headers, query, path parameters, declared
/// body size and type); the body check still to run, if any.
fn validate_head(
    ctx: &RequestCtx,
    found: &RouteMatch<Route>,
) -> Result<Option<BodyCheck>, Refusal> {
    let Some(validation) = &found.route.validation else {
        return Ok(None);
    };
    let req = ctx.req;
    let content_type = req.joined_header("content-type");
    let content_length = if req.end_of_stream {
        Some(0)
    } else {
        req.joined_header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let plan = validation
        .check_head(
            req.headers,
            ctx.query,
            &found.params,
            content_type.as_deref(),
            content_length,
        )
        .map_err(|f| Box::new(validation_denial(&f)))?;
    Ok(match plan {
        BodyPlan::Skip => None,
        plan => Some(BodyCheck {
            route: found.index,
            plan,
        }),
    })
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

#[cfg(test)]
mod tests;

#[cfg(test)]
mod security_review_tests;

#[cfg(test)]
mod hostcall_tests;

#[cfg(test)]
pub(crate) mod test_request;
