//! Rate limits: the token bucket (`LimitSpec`), how its key and cost are derived per
//! request, a `global` block for a rate limit service, `count: auth_failures` lockouts.

use std::collections::HashSet;

use serde_json::Value;

use super::names::check_header_name;
use super::ConfigErrors;
use crate::policy::raw::{RawCost, RawKeyPart, RawLimit, RawRefill};
use crate::policy::{KeyPart, Limit, LimitCounters};
use crate::ratelimit::global::GlobalSpec;
use crate::ratelimit::lockout::Count;
use crate::ratelimit::{headers::policy_for, LimitSpec};

/// `limits`: the compiled ones, and every declared name (routes naming a limit that failed
/// to compile get no second error).
pub(super) fn compile_all(
    items: Vec<Value>,
    errors: &mut ConfigErrors,
) -> (Vec<Limit>, HashSet<String>) {
    let mut names = HashSet::new();
    let parsed = errors.parse_named::<RawLimit>(items, "limits", "limit", &mut names, |l| &l.name);
    let limits = parsed
        .into_iter()
        .filter_map(|(path, rl)| compile_limit(rl, &path, errors))
        .collect();
    (limits, names)
}

fn compile_limit(mut rl: RawLimit, path: &str, errors: &mut ConfigErrors) -> Option<Limit> {
    let start = errors.len();
    let count = rl.count.unwrap_or_default();
    if count == Count::AuthFailures {
        check_lockout(&rl, path, errors);
    }
    let local_fields = rl.capacity.is_some() || rl.refill.is_some();
    let refill = compile_refill(rl.refill.as_ref(), path, errors);
    let global = rl.global.take().and_then(|g| {
        let lockout = count == Count::AuthFailures;
        let compiled = crate::ratelimit::global::compile(g, local_fields, lockout);
        for (field, msg) in compiled.as_ref().err().into_iter().flatten() {
            errors.push(format!("{path}.{field}"), msg.clone());
        }
        compiled.ok()
    });
    let spec = compile_spec(&rl, refill, global.as_ref(), path, errors);
    if rl.key.is_empty() {
        errors.push(
            format!("{path}.key"),
            "list at least one key part (`constant: all` for one bucket for everyone)",
        );
    }
    let key: Vec<KeyPart> = (rl.key.into_iter().enumerate())
        .filter_map(|(j, part)| compile_key_part(part, &format!("{path}.key[{j}]"), errors))
        .collect();
    let (cost_default, cost_by_method) = compile_cost(rl.cost, path, errors);
    (errors.len() == start).then(|| Limit {
        policy_header: policy_for(&spec),
        counters: LimitCounters::new(&spec.name),
        spec,
        key,
        cost_default,
        cost_by_method,
        global,
        count,
    })
}

/// A lockout counts refused credentials, which carry no verified claims.
fn check_lockout(rl: &RawLimit, path: &str, errors: &mut ConfigErrors) {
    if rl.key.iter().any(|p| p.claim.is_some()) {
        errors.push(
            format!("{path}.key"),
            "a lockout counts refused credentials, which have no verified claims: key it by client_ip, header, route or constant",
        );
    }
}

/// The bucket: capacity, refill and the shared-table settings, validated by `LimitSpec`.
fn compile_spec(
    rl: &RawLimit,
    (refill_tokens, period_ms): (u64, u64),
    global: Option<&GlobalSpec>,
    path: &str,
    errors: &mut ConfigErrors,
) -> LimitSpec {
    let capacity = match (rl.capacity, global) {
        (Some(c), _) => c,
        // A global limit's local spec is never used: any valid value will do.
        (None, Some(_)) => 1,
        (None, None) => {
            errors.push(
                format!("{path}.capacity"),
                "required (or make the limit `global`)",
            );
            1
        }
    };
    let mut spec = LimitSpec::new(&rl.name, capacity, refill_tokens, period_ms);
    if let Some(b) = rl.max_buckets {
        spec.max_buckets = b;
    }
    if let Some(r) = rl.max_cas_retries {
        spec.max_cas_retries = r;
    }
    if let Some(m) = rl.on_store_failure {
        spec.on_store_failure = m;
    }
    if let Some(m) = rl.on_table_full {
        spec.on_table_full = m;
    }
    spec.compute_config_hash();
    for (field, msg) in spec.validate() {
        let field = if field == "period_ms" {
            "refill"
        } else {
            field
        };
        errors.push(format!("{path}.{field}"), msg);
    }
    spec
}

/// `(tokens, period in ms)`; no `refill` is a bucket that never refills.
fn compile_refill(refill: Option<&RawRefill>, path: &str, errors: &mut ConfigErrors) -> (u64, u64) {
    let Some(r) = refill else {
        return (0, 1000);
    };
    match (r.period_seconds, r.period_ms) {
        (Some(s), None) => (r.tokens, s.saturating_mul(1000)),
        (None, Some(ms)) => (r.tokens, ms),
        _ => {
            errors.push(
                format!("{path}.refill"),
                "set exactly one of `period_seconds` or `period_ms`",
            );
            (0, 1000)
        }
    }
}

fn compile_key_part(part: RawKeyPart, here: &str, errors: &mut ConfigErrors) -> Option<KeyPart> {
    let set = [
        part.client_ip.is_some(),
        part.claim.is_some(),
        part.header.is_some(),
        part.route.is_some(),
        part.constant.is_some(),
    ];
    if set.iter().filter(|b| **b).count() != 1 {
        errors.push(
            here,
            "a key part is exactly one of `client_ip`, `claim`, `header`, `route`, `constant`",
        );
        return None;
    }
    if let Some(ip) = part.client_ip {
        Some(KeyPart::ClientIp {
            trusted_hops: ip.trusted_hops,
        })
    } else if let Some(c) = part.claim {
        Some(KeyPart::Claim(c))
    } else if let Some(h) = part.header {
        check_header_name(&h, &format!("{here}.header"), errors).map(KeyPart::Header)
    } else if part.route == Some(true) {
        Some(KeyPart::Route)
    } else if let Some(c) = part.constant {
        Some(KeyPart::Constant(c))
    } else {
        errors.push(format!("{here}.route"), "must be true when present");
        None
    }
}

/// `(default cost, per-method costs)`; method keys are HTTP methods or gRPC `pkg.Svc/Method`.
fn compile_cost(
    cost: Option<RawCost>,
    path: &str,
    errors: &mut ConfigErrors,
) -> (u64, Vec<(String, u64)>) {
    let Some(c) = cost else {
        return (1, Vec::new());
    };
    let by_method = c
        .methods
        .into_iter()
        .filter_map(|(m, v)| match crate::grpc::cost_key(&m) {
            Ok(key) => Some((key, v)),
            Err(e) => {
                errors.push(format!("{path}.cost.methods.{m}"), e);
                None
            }
        })
        .collect();
    (c.default.unwrap_or(1), by_method)
}
