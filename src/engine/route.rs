//! The first phases: is the request safe to route at all (`screen`), and which route of the
//! policy serves it (`route`).

use std::borrow::Cow;

use crate::credentials::{self, Found};
use crate::host::Metrics;
use crate::hygiene;
use crate::policy::{Policy, Route, Unmatched};
use crate::problem::Denial;
use crate::routes::{unsafe_path_reason, RouteMatch};

use super::{validation_denial, RequestCtx, RequestHead};

/// Refuses what no route may see (ambiguous paths, oversized request lines or headers,
/// lower-case methods), and answers the method the upstream will act on: the one routed,
/// authorized and charged.
pub fn screen<'r>(
    policy: &Policy,
    req: &RequestHead<'r>,
    path: &str,
) -> Result<Cow<'r, str>, Box<Denial>> {
    if let Some(why) = unsafe_path_reason(path) {
        return Err(Box::new(Denial::new(400, "ambiguous_path", why)));
    }
    if let Some(limits) = &policy.request_limits {
        limits
            .check(req.path, req.headers)
            .map_err(|f| Box::new(validation_denial(&f)))?;
    }
    if let Some(d) = lookalike_method(policy, req.method) {
        return Err(Box::new(d));
    }
    hygiene::effective_method(req.method, req.headers, policy.method_override)
}

/// Where routing sent the request.
pub enum Routed<'p> {
    /// A route of the policy serves it: the phases after routing decide.
    Matched(RouteMatch<'p, Route>),
    /// It goes upstream with no further check: a CORS preflight (naming the route it asks
    /// about) or, with `unmatched: allow`, a request no route serves.
    Pass(Option<String>),
    /// It differs from a route only by spelling: refused, naming that route.
    Lookalike(String, Box<Denial>),
}

pub fn route<'p>(
    ctx: &RequestCtx<'p>,
    metrics: &mut dyn Metrics,
) -> Result<Routed<'p>, Box<Denial>> {
    let policy = ctx.policy;
    if let Some(route) = cors_preflight(ctx) {
        metrics.incr("apiguard.cors_preflight");
        return Ok(Routed::Pass(Some(route)));
    }
    if let Some(found) = policy.routes.lookup(ctx.req.method, ctx.path) {
        return Ok(Routed::Matched(found));
    }
    match policy.unmatched {
        Unmatched::Allow => Ok(match lookalike_path(policy, ctx.req.method, ctx.path) {
            Some((route, d)) => Routed::Lookalike(route, Box::new(d)),
            None => Routed::Pass(None),
        }),
        Unmatched::Deny => Err(Box::new(Denial::new(
            403,
            "no_route",
            "no route of the policy allows this request",
        ))),
    }
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

/// With `bypass_cors_preflight`, the name of the route a CORS preflight asks about, when it
/// may go upstream unauthenticated: it has a preflight's shape (`crate::cors`), presents no
/// credential of any source the policy reads (header, query or cookie), a route serves
/// the requested method at this path, and no route lists `OPTIONS` for it explicitly (an
/// API whose `OPTIONS` is a real operation keeps it authenticated).
fn cors_preflight(ctx: &RequestCtx) -> Option<String> {
    let (policy, req) = (ctx.policy, ctx.req);
    if !policy.bypass_cors_preflight {
        return None;
    }
    let requested = crate::cors::requested_method(req.method, req.headers, req.end_of_stream)?;
    let mut sources = policy
        .providers
        .iter()
        .flat_map(|p| &p.sources)
        .chain(policy.api_key_sets.iter().flat_map(|s| &s.sources));
    let presents_credential = sources.any(|source| {
        !matches!(
            credentials::extract(source, req.headers, ctx.query),
            Found::None
        )
    });
    if presents_credential || policy.routes.names_method_for("OPTIONS", ctx.path) {
        return None;
    }
    let found = policy.routes.lookup(requested, ctx.path)?;
    Some(found.route.name.clone())
}
