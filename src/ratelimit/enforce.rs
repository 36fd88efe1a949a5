//! The limit phase of a request: takes its cost from every local limit of its route (the
//! first limit that refuses decides the 429) and lists the rate limit service calls its
//! global limits need. Lockouts (`count: auth_failures`) are `lockout`'s, run around
//! authentication.

use serde_json::{Map, Value};

use super::global::{self, GlobalCall};
use super::lockout::Count;
use super::{acquire, headers, key, Acquire};
use crate::authz::claim_at;
use crate::engine::{RequestCtx, RequestHead};
use crate::host::Metrics;
use crate::policy::{KeyPart, Limit, Route};
use crate::problem::Denial;

/// The longest wait a 429 announces (a day), also for a cost that can never be met.
const MAX_WAIT_MS: u64 = 86_400_000;

/// Takes one token (or the request's cost) from every local limit of the route. Allowed,
/// it answers the response headers to send (the tightest limit's `RateLimit`, with
/// `ratelimit_headers_on_allow`); the first limit that refuses answers the 429.
pub fn local_limits(
    ctx: &RequestCtx,
    route: &Route,
    claims: &Map<String, Value>,
    metrics: &mut dyn Metrics,
) -> Result<Vec<(String, String)>, Box<Denial>> {
    let policy = ctx.policy;
    let mut local = route
        .limits
        .iter()
        .filter_map(|&li| {
            policy
                .limits
                .get(li)
                .filter(|l| l.global.is_none() && l.count == Count::Requests)
        })
        .peekable();
    // A route without local limits reads no clock (a host call in Envoy).
    if local.peek().is_none() {
        return Ok(Vec::new());
    }
    let now_ms = ctx.host.clock.now_millis();
    let grpc_method = crate::grpc::call_method(ctx.req.path, ctx.req.headers);
    let mut tightest: Option<Tightest> = None;
    for limit in local {
        let bucket_key = bucket_key(limit, route, ctx.req, claims);
        let cost = limit.call_cost(ctx.req.method, grpc_method);
        let result = acquire(ctx.host.store, &limit.spec, &bucket_key, cost, now_ms);
        for _ in 0..result.cas_retries() {
            metrics.incr("apiguard.ratelimit.cas_retry");
        }
        let remaining = admit(limit, &result, metrics)?;
        // Formatted only when it will be sent: this runs on every allowed request.
        if let Some((remaining, reset_ms)) = remaining.filter(|_| policy.ratelimit_headers_on_allow)
        {
            if tightest.as_ref().is_none_or(|t| remaining < t.remaining) {
                tightest = Some(Tightest {
                    remaining,
                    ratelimit: headers::ratelimit_header(
                        &limit.spec.name,
                        remaining,
                        headers::ms_to_secs_ceil(reset_ms),
                    ),
                    policy_header: &limit.policy_header,
                });
            }
        }
    }
    Ok(tightest.map_or_else(Vec::new, |t| {
        vec![
            (headers::POLICY_HEADER.into(), t.policy_header.to_string()),
            (headers::RATELIMIT_HEADER.into(), t.ratelimit),
        ]
    }))
}

/// The allowing limit with the fewest tokens left: the one the response reports.
struct Tightest<'p> {
    remaining: u64,
    ratelimit: String,
    policy_header: &'p str,
}

/// Counts one limit's answer, and turns a refusal into its 429. Answers `(remaining,
/// reset_ms)` when the request was admitted by a bucket, `None` when admitted because the
/// store failed (`on_store_failure`).
fn admit(
    limit: &Limit,
    result: &Acquire,
    metrics: &mut dyn Metrics,
) -> Result<Option<(u64, u64)>, Box<Denial>> {
    let name = &limit.spec.name;
    match *result {
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
            Ok(Some((remaining, reset_ms)))
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
            Err(Box::new(limited(
                limit,
                remaining,
                retry_after_ms,
                reset_ms,
            )))
        }
        Acquire::StoreFailed { allowed, .. } | Acquire::TableFull { allowed, .. } => {
            metrics.incr(if matches!(result, Acquire::StoreFailed { .. }) {
                &limit.counters.store_failure
            } else {
                &limit.counters.table_full
            });
            if allowed {
                return Ok(None);
            }
            let mut d = Denial::new(
                429,
                "rate_limited",
                format!("rate limit `{name}` could not admit the request"),
            );
            d.retry_after_secs = Some(1);
            d.extensions.push(("limit", Value::String(name.clone())));
            Err(Box::new(d))
        }
    }
}

/// The 429 of a limit whose bucket refused the request.
fn limited(limit: &Limit, remaining: u64, retry_after_ms: Option<u64>, reset_ms: u64) -> Denial {
    let name = &limit.spec.name;
    let mut d = Denial::new(429, "rate_limited", format!("rate limit `{name}` exceeded"));
    // A cost that can never be met still gets a finite hint: the full window.
    let wait = retry_after_ms.unwrap_or(reset_ms.min(MAX_WAIT_MS));
    d.retry_after_secs = Some(headers::retry_after_secs(wait));
    d.headers
        .push((headers::POLICY_HEADER.into(), limit.policy_header.clone()));
    d.headers.push((
        headers::RATELIMIT_HEADER.into(),
        headers::ratelimit_header(
            name,
            remaining,
            headers::ms_to_secs_ceil(reset_ms.min(MAX_WAIT_MS)),
        ),
    ));
    d.extensions.push(("limit", Value::String(name.clone())));
    d
}

/// Counts `apiguard.client_ip.peer_from_header` once for a request whose route keys a
/// limit (local, global or lockout) on `client_ip` while Envoy took the peer from
/// `x-forwarded-for` (no `use_remote_address: true`): all such clients share one bucket,
/// which an operator must hear about.
pub fn note_peer_from_header(ctx: &RequestCtx, route: &Route, metrics: &mut dyn Metrics) {
    let keys_on_client_ip = route.limits.iter().any(|&li| {
        ctx.policy.limits.get(li).is_some_and(|limit| {
            limit
                .key
                .iter()
                .any(|part| matches!(part, KeyPart::ClientIp { .. }))
        })
    });
    if keys_on_client_ip && key::peer_is_from_header(&ctx.req.peer.address().unwrap_or_default()) {
        metrics.incr("apiguard.client_ip.peer_from_header");
    }
}

/// The bucket a request takes from: the limit's key parts, as this request spells them.
fn bucket_key(
    limit: &Limit,
    route: &Route,
    req: &RequestHead,
    claims: &Map<String, Value>,
) -> String {
    let parts: Vec<String> = limit
        .key
        .iter()
        .map(|part| match part {
            KeyPart::ClientIp { trusted_hops } => format!("ip={}", req.client_ip(*trusted_hops)),
            KeyPart::Claim(path) => format!(
                "claim={}",
                claim_at(claims, path)
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                    .unwrap_or_default()
            ),
            KeyPart::Header(h) => format!("header={}", req.joined_header(h).unwrap_or_default()),
            KeyPart::Route => format!("route={}", route.name),
            KeyPart::Constant(c) => format!("const={c}"),
        })
        .collect();
    key::compose(parts.iter())
}

/// The rate limit service calls for the route's global limits (after its local limits
/// admitted the request, so a flood is shed here without a network hop).
pub fn global_calls(
    ctx: &RequestCtx,
    route: &Route,
    claims: &Map<String, Value>,
) -> Vec<GlobalCall> {
    let req = ctx.req;
    let global_limits = route.limits.iter().filter_map(|&li| {
        let limit = ctx.policy.limits.get(li)?;
        let spec = limit.global.as_ref()?;
        (limit.count == Count::Requests).then_some((li, limit, spec))
    });
    let mut calls = Vec::new();
    for (li, limit, spec) in global_limits {
        let cost = limit.call_cost(req.method, crate::grpc::call_method(req.path, req.headers));
        if cost == 0 {
            continue; // a free request: nothing to count
        }
        let descriptor = global::descriptor(
            &limit.spec.name,
            descriptor_entries(limit, route, req, claims),
        );
        calls.push(global::call(li, spec, descriptor, cost));
    }
    calls
}

/// A global limit's key parts as rate limit descriptor entries.
fn descriptor_entries(
    limit: &Limit,
    route: &Route,
    req: &RequestHead,
    claims: &Map<String, Value>,
) -> Vec<(String, String)> {
    limit
        .key
        .iter()
        .map(|part| match part {
            KeyPart::ClientIp { trusted_hops } => {
                ("client_ip".to_string(), req.client_ip(*trusted_hops))
            }
            KeyPart::Claim(path) => (format!("claim.{path}"), global::claim_value(claims, path)),
            KeyPart::Header(h) => (
                format!("header.{h}"),
                req.joined_header(h).unwrap_or_default(),
            ),
            KeyPart::Route => ("route".to_string(), route.name.clone()),
            KeyPart::Constant(c) => ("constant".to_string(), c.clone()),
        })
        .collect()
}
