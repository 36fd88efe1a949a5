//! Global limits: decided by a rate limit service (RLS) speaking Envoy's
//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` (envoyproxy/ratelimit,
//! Kuadrant Limitador, `rls/` in this repository), reached through an Envoy gRPC cluster.
//!
//! The engine turns each global limit of a route into one [`GlobalCall`] (one descriptor,
//! `hits_addend` = the limit's cost); the glue dispatches them all at once, pauses the
//! request and hands each reply (or failure) back to [`interpret`], which decides:
//! admitted, 429 like a local limit, or the limit's `on_error`. Everything here is pure.
//!
//! Descriptor entries, in order: `("limit", <name>)`, then one per key part, with the same
//! values a local limit's bucket key uses: `client_ip`, `claim.<path>`, `header.<name>`,
//! `route`, `constant`. The RLS configuration matches on these (docs/operations.md).

use prost::Message;
use serde_json::{Map, Value};

use super::{headers, FailureMode};
use crate::problem::Denial;
use crate::rls_proto::{
    Code, Entry, RateLimitDescriptor, RateLimitRequest, RateLimitResponse, Unit,
};

/// Default time the request waits for the service.
pub const DEFAULT_TIMEOUT_MS: u64 = 200;
pub const MAX_TIMEOUT_MS: u64 = 10_000;
/// Retry-After sent when the service failed and `on_error: deny` refused the request.
pub const ERROR_RETRY_AFTER_SECS: u64 = 1;

/// The `global` block of a limit, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalSpec {
    /// The Envoy cluster (HTTP/2) of the rate limit service.
    pub cluster: String,
    pub domain: String,
    pub timeout_ms: u64,
    pub on_error: FailureMode,
}

/// What a call asks the service, and so how its answer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// A limit on requests: take `cost` hits; OVER_LIMIT refuses (429 `rate_limited`).
    Limit,
    /// A global lockout, before the credential counts: read the key's failure counter
    /// without counting (per-descriptor `hits_addend` 0). Nothing left (OVER_LIMIT, or
    /// `limit_remaining` 0 for a limit the service knows) is a lock: 429 `locked_out`.
    LockoutPeek,
    /// A global lockout, after apiguard refused a presented credential: count the failure
    /// (per-descriptor `hits_addend` = cost). OVER_LIMIT means the key was already locked.
    LockoutCharge,
}

/// One call to make before the request may continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalCall {
    /// Index into `Policy::limits`.
    pub limit: usize,
    pub kind: CallKind,
    pub cluster: String,
    pub timeout_ms: u64,
    /// The encoded `RateLimitRequest`.
    pub message: Vec<u8>,
}

/// What the glue got back for one call.
pub enum Reply<'a> {
    /// gRPC status OK and the response message.
    Message(&'a [u8]),
    /// Any gRPC status but OK (the host reports its timeout as DEADLINE_EXCEEDED, an
    /// unreachable cluster as UNAVAILABLE), or the call could not be dispatched.
    Failed,
}

/// What one reply means for the request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Under the limit; `RateLimit` / `RateLimit-Policy` values when the service reported
    /// the limit (sent on allowed responses when the policy asks for it).
    Allowed { headers: Vec<(String, String)> },
    /// Over the limit: the same 429 as a local limit.
    Limited(Box<Denial>),
    /// The service failed and `on_error: allow` let the request through.
    ErrorAllowed,
    /// The service failed and `on_error: deny` refused it (503).
    ErrorDenied(Box<Denial>),
}

/// One descriptor entry per key part, after the limit's name.
pub fn descriptor(name: &str, parts: Vec<(String, String)>) -> RateLimitDescriptor {
    let mut entries = Vec::with_capacity(parts.len() + 1);
    entries.push(Entry {
        key: "limit".into(),
        value: name.into(),
    });
    entries.extend(parts.into_iter().map(|(key, value)| Entry { key, value }));
    RateLimitDescriptor {
        entries,
        hits_addend: None,
    }
}

/// The call for one limit of one request.
pub fn call(
    limit: usize,
    spec: &GlobalSpec,
    descriptor: RateLimitDescriptor,
    cost: u64,
) -> GlobalCall {
    let req = RateLimitRequest {
        domain: spec.domain.clone(),
        descriptors: vec![descriptor],
        // A cost of 0 would read as 1 on the wire (the protocol's default): it is refused
        // by the policy compiler for global limits.
        hits_addend: u32::try_from(cost).unwrap_or(u32::MAX),
    };
    GlobalCall {
        limit,
        kind: CallKind::Limit,
        cluster: spec.cluster.clone(),
        timeout_ms: spec.timeout_ms,
        message: req.encode_to_vec(),
    }
}

/// The call for one global lockout of one request: a peek (hits 0) or a charge (`cost`),
/// said on the descriptor itself, where an explicit 0 means "check without counting"
/// (the request-level `hits_addend` cannot say 0: there it means 1).
pub fn lockout_call(
    limit: usize,
    spec: &GlobalSpec,
    mut descriptor: RateLimitDescriptor,
    kind: CallKind,
    cost: u64,
) -> GlobalCall {
    let hits = if kind == CallKind::LockoutCharge {
        cost.max(1)
    } else {
        0
    };
    descriptor.hits_addend = Some(hits);
    let req = RateLimitRequest {
        domain: spec.domain.clone(),
        descriptors: vec![descriptor],
        // What a service that ignores per-descriptor hits would count: one.
        hits_addend: 1,
    };
    GlobalCall {
        limit,
        kind,
        cluster: spec.cluster.clone(),
        timeout_ms: spec.timeout_ms,
        message: req.encode_to_vec(),
    }
}

/// Keeps the denial that decides the request: a lockout wins over anything (a locked key
/// is refused as such whatever else happened), otherwise the first one stays.
pub fn keep_denial(current: &mut Option<Denial>, new: Denial) {
    let locked = |d: &Denial| d.reason == LOCKED_OUT;
    match current {
        Some(c) if locked(c) || !locked(&new) => {}
        _ => *current = Some(new),
    }
}

/// The reason of a global lockout's refusal (the same as a local lockout's).
pub const LOCKED_OUT: &str = "locked_out";

/// Decides one reply. A message that does not decode, or an `overall_code` that is neither
/// OK nor OVER_LIMIT, is a failure of the service like any other.
pub fn interpret(name: &str, spec: &GlobalSpec, kind: CallKind, reply: Reply) -> Verdict {
    let resp = match reply {
        Reply::Message(bytes) => RateLimitResponse::decode(bytes).ok(),
        Reply::Failed => None,
    };
    let Some(resp) = resp else {
        return on_error(name, spec);
    };
    let status = resp
        .statuses
        .iter()
        .find(|s| s.code == Code::OverLimit as i32)
        .or(resp.statuses.first());
    let limit = status.and_then(|s| s.current_limit.as_ref());
    let remaining = status.map_or(0, |s| u64::from(s.limit_remaining));
    let reset_secs = status.and_then(|s| s.duration_until_reset).map(|d| {
        let secs = u64::try_from(d.seconds).unwrap_or(0);
        secs + u64::from(d.nanos > 0)
    });
    let mut hdrs = Vec::new();
    if let Some(l) = limit {
        // A window the protocol cannot name (`UNKNOWN`) leaves the policy header out.
        if let Some(w) = Unit::seconds(l.unit) {
            let q = u64::from(l.requests_per_unit);
            hdrs.push((
                headers::POLICY_HEADER.to_string(),
                headers::policy_header(name, q, w),
            ));
        }
        if let Some(t) = reset_secs {
            hdrs.push((
                headers::RATELIMIT_HEADER.to_string(),
                headers::ratelimit_header(name, remaining, t),
            ));
        }
    }
    let over = match Code::try_from(resp.overall_code) {
        Ok(Code::Ok) => false,
        Ok(Code::OverLimit) => true,
        _ => return on_error(name, spec),
    };
    if kind != CallKind::Limit {
        // A peek reads "nothing left" as locked: the failure that emptied the counter was
        // admitted (OK), and the key is locked from the next request on, as locally.
        let empty = kind == CallKind::LockoutPeek
            && status.is_some_and(|s| s.current_limit.is_some() && s.limit_remaining == 0);
        if !(over || empty) {
            return Verdict::Allowed {
                headers: Vec::new(),
            };
        }
        let mut d = Denial::new(
            429,
            LOCKED_OUT,
            format!("too many authentication failures (`{name}`): try again later"),
        );
        d.retry_after_secs = Some(reset_secs.unwrap_or(1).clamp(1, 86_400));
        d.headers = hdrs
            .into_iter()
            .filter(|(h, _)| h == headers::POLICY_HEADER)
            .collect();
        d.extensions
            .push(("limit", Value::String(name.to_string())));
        return Verdict::Limited(Box::new(d));
    }
    match Code::try_from(resp.overall_code) {
        Ok(Code::Ok) => Verdict::Allowed { headers: hdrs },
        Ok(Code::OverLimit) => {
            let mut d = Denial::new(429, "rate_limited", format!("rate limit `{name}` exceeded"));
            // At least 1 s: an absent or zero reset still tells the client to back off.
            d.retry_after_secs = Some(reset_secs.unwrap_or(1).clamp(1, 86_400));
            d.headers = hdrs;
            d.extensions
                .push(("limit", Value::String(name.to_string())));
            Verdict::Limited(Box::new(d))
        }
        _ => on_error(name, spec),
    }
}

fn on_error(name: &str, spec: &GlobalSpec) -> Verdict {
    match spec.on_error {
        FailureMode::Allow => Verdict::ErrorAllowed,
        FailureMode::Deny => {
            let mut d = Denial::new(
                503,
                "ratelimit_unavailable",
                format!("the rate limit service could not decide limit `{name}`"),
            );
            d.retry_after_secs = Some(ERROR_RETRY_AFTER_SECS);
            d.extensions
                .push(("limit", Value::String(name.to_string())));
            Verdict::ErrorDenied(Box::new(d))
        }
    }
}

/// A claim's value as a key part: strings as they are, anything else as JSON text,
/// absent as empty (the same rule as local bucket keys).
pub fn claim_value(claims: &Map<String, Value>, path: &str) -> String {
    crate::authz::claim_at(claims, path)
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
        .unwrap_or_default()
}

/// Compiles a limit's `global` block; errors as `(field, message)` for the policy compiler.
/// `local_fields`: the limit also sets `capacity` or `refill`, which a global limit's
/// service decides, so they are refused rather than silently ignored.
/// `lockout`: a `count: auth_failures` limit, whose `on_error` defaults to `deny`.
pub fn compile(
    raw: crate::policy::raw::RawGlobal,
    local_fields: bool,
    lockout: bool,
) -> Result<GlobalSpec, Vec<(String, String)>> {
    let mut errors = Vec::new();
    if local_fields {
        errors.push((
            "capacity".to_string(),
            "a global limit's size is configured in the rate limit service: remove `capacity` and `refill`".to_string(),
        ));
    }
    if raw.cluster.is_empty() {
        errors.push((
            "global.cluster".into(),
            "name the Envoy cluster of the rate limit service".into(),
        ));
    }
    if raw.domain.is_empty() {
        errors.push(("global.domain".into(), "must not be empty".into()));
    }
    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
        errors.push((
            "global.timeout_ms".into(),
            format!("must be between 1 and {MAX_TIMEOUT_MS}"),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(GlobalSpec {
        cluster: raw.cluster,
        domain: raw.domain,
        timeout_ms,
        // A lockout that silently stops while the service is unreachable is what an
        // attacker who can overload the service wants: it fails closed unless told
        // otherwise. A request limit fails open, like Envoy's ratelimit filter.
        on_error: raw.on_error.unwrap_or(if lockout {
            FailureMode::Deny
        } else {
            FailureMode::Allow
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_request::TestRequest;
    use crate::engine::{Decision, Engine};
    use crate::host::fake::{Counted, FakeStore};
    use crate::policy::Policy;
    use crate::rls_proto::{DescriptorStatus, Duration, RateLimit};
    use serde_json::json;
    use std::rc::Rc;

    fn spec(on_error: FailureMode) -> GlobalSpec {
        GlobalSpec {
            cluster: "rls".into(),
            domain: "apiguard".into(),
            timeout_ms: 200,
            on_error,
        }
    }

    fn response(code: Code, remaining: u32, reset: Option<i64>, unit: Unit) -> Vec<u8> {
        RateLimitResponse {
            overall_code: code as i32,
            statuses: vec![DescriptorStatus {
                code: code as i32,
                current_limit: Some(RateLimit {
                    name: String::new(),
                    requests_per_unit: 100,
                    unit: unit as i32,
                }),
                limit_remaining: remaining,
                duration_until_reset: reset.map(|seconds| Duration { seconds, nanos: 0 }),
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn over_limit_is_the_local_429_with_headers() {
        let bytes = response(Code::OverLimit, 0, Some(42), Unit::Minute);
        let Verdict::Limited(d) = interpret(
            "g",
            &spec(FailureMode::Allow),
            CallKind::Limit,
            Reply::Message(&bytes),
        ) else {
            panic!("expected 429");
        };
        assert_eq!((d.status, d.reason), (429, "rate_limited"));
        assert_eq!(d.retry_after_secs, Some(42));
        assert!(d
            .headers
            .contains(&("ratelimit-policy".into(), "\"g\";q=100;w=60".into())));
        assert!(d
            .headers
            .contains(&("ratelimit".into(), "\"g\";r=0;t=42".into())));
    }

    #[test]
    fn ok_carries_headers_and_missing_reset_still_backs_off() {
        let bytes = response(Code::Ok, 7, Some(3), Unit::Second);
        let Verdict::Allowed { headers } = interpret(
            "g",
            &spec(FailureMode::Deny),
            CallKind::Limit,
            Reply::Message(&bytes),
        ) else {
            panic!("expected allow");
        };
        assert!(headers.contains(&("ratelimit".into(), "\"g\";r=7;t=3".into())));
        // OVER_LIMIT without a reset or a known unit: Retry-After 1, no policy header.
        let bytes = response(Code::OverLimit, 0, None, Unit::Unknown);
        let Verdict::Limited(d) = interpret(
            "g",
            &spec(FailureMode::Deny),
            CallKind::Limit,
            Reply::Message(&bytes),
        ) else {
            panic!("expected 429");
        };
        assert_eq!(d.retry_after_secs, Some(1));
        assert!(d.headers.is_empty());
    }

    #[test]
    fn failures_follow_on_error() {
        let garbage = [0xff, 0xff, 0xff];
        let unknown_code = RateLimitResponse {
            overall_code: 0,
            statuses: vec![],
        }
        .encode_to_vec();
        for reply in [
            Reply::Failed,
            Reply::Message(&garbage),
            Reply::Message(&unknown_code),
        ] {
            let allow = matches!(reply, Reply::Failed);
            let _ = allow;
            match interpret("g", &spec(FailureMode::Deny), CallKind::Limit, reply) {
                Verdict::ErrorDenied(d) => {
                    assert_eq!((d.status, d.reason), (503, "ratelimit_unavailable"));
                    assert_eq!(d.retry_after_secs, Some(ERROR_RETRY_AFTER_SECS));
                }
                v => panic!("expected 503, got {v:?}"),
            }
        }
        assert_eq!(
            interpret(
                "g",
                &spec(FailureMode::Allow),
                CallKind::Limit,
                Reply::Failed
            ),
            Verdict::ErrorAllowed
        );
    }

    fn status(code: Code, remaining: u32, known: bool) -> Vec<u8> {
        RateLimitResponse {
            overall_code: code as i32,
            statuses: vec![DescriptorStatus {
                code: code as i32,
                current_limit: known.then(|| RateLimit {
                    name: String::new(),
                    requests_per_unit: 20,
                    unit: Unit::Minute as i32,
                }),
                limit_remaining: remaining,
                duration_until_reset: Some(Duration {
                    seconds: 37,
                    nanos: 0,
                }),
            }],
        }
        .encode_to_vec()
    }

    fn locked(kind: CallKind, bytes: &[u8]) -> Option<Box<Denial>> {
        match interpret(
            "guess",
            &spec(FailureMode::Deny),
            kind,
            Reply::Message(bytes),
        ) {
            Verdict::Limited(d) => Some(d),
            Verdict::Allowed { headers } => {
                // A lockout's answer never adds RateLimit headers to an allowed response.
                assert!(headers.is_empty());
                None
            }
            v => panic!("unexpected {v:?}"),
        }
    }

    #[test]
    fn lockout_peek_reads_an_empty_counter_as_locked() {
        use CallKind::{LockoutCharge, LockoutPeek};
        assert!(locked(LockoutPeek, &status(Code::Ok, 3, true)).is_none());
        let d = locked(LockoutPeek, &status(Code::Ok, 0, true)).unwrap();
        assert_eq!((d.status, d.reason), (429, LOCKED_OUT));
        assert_eq!(d.retry_after_secs, Some(37));
        assert!(d
            .headers
            .contains(&("ratelimit-policy".into(), "\"guess\";q=20;w=60".into())));
        // envoyproxy/ratelimit counts refused hits too: past the limit it answers OVER_LIMIT.
        assert!(locked(LockoutPeek, &status(Code::OverLimit, 0, true)).is_some());
        // A descriptor the service has no limit for is never locked.
        assert!(locked(LockoutPeek, &status(Code::Ok, 0, false)).is_none());
        // A charge that emptied the counter was still admitted (this failure is a 401);
        // one past it was already locked.
        assert!(locked(LockoutCharge, &status(Code::Ok, 0, true)).is_none());
        assert!(locked(LockoutCharge, &status(Code::OverLimit, 0, true)).is_some());
        // Failures follow on_error, for both.
        for kind in [LockoutPeek, LockoutCharge] {
            assert!(matches!(
                interpret("guess", &spec(FailureMode::Deny), kind, Reply::Failed),
                Verdict::ErrorDenied(_)
            ));
        }
    }

    #[test]
    fn lockout_calls_say_their_hits_on_the_descriptor() {
        let peek = lockout_call(
            3,
            &spec(FailureMode::Deny),
            descriptor("guess", vec![]),
            CallKind::LockoutPeek,
            5,
        );
        let req = RateLimitRequest::decode(peek.message.as_slice()).unwrap();
        assert_eq!((peek.limit, req.hits_addend), (3, 1));
        assert_eq!(req.descriptors[0].hits_addend, Some(0));
        let charge = lockout_call(
            3,
            &spec(FailureMode::Deny),
            descriptor("guess", vec![]),
            CallKind::LockoutCharge,
            5,
        );
        let req = RateLimitRequest::decode(charge.message.as_slice()).unwrap();
        assert_eq!(req.descriptors[0].hits_addend, Some(5));
    }

    #[test]
    fn a_lock_outranks_every_other_refusal() {
        let limited = || Denial::new(429, "rate_limited", "x");
        let lock = || Denial::new(429, LOCKED_OUT, "x");
        let mut kept = None;
        keep_denial(&mut kept, limited());
        keep_denial(&mut kept, Denial::new(503, "ratelimit_unavailable", "x"));
        assert_eq!(kept.as_ref().map(|d| d.reason), Some("rate_limited"));
        keep_denial(&mut kept, lock());
        keep_denial(&mut kept, limited());
        assert_eq!(kept.map(|d| d.reason), Some(LOCKED_OUT));
    }

    #[test]
    fn lockouts_fail_closed_by_default_request_limits_open() {
        let raw = || crate::policy::raw::RawGlobal {
            cluster: "rls".into(),
            domain: "d".into(),
            timeout_ms: None,
            on_error: None,
        };
        assert_eq!(
            compile(raw(), false, true).unwrap().on_error,
            FailureMode::Deny
        );
        assert_eq!(
            compile(raw(), false, false).unwrap().on_error,
            FailureMode::Allow
        );
    }

    fn engine(policy: serde_json::Value) -> Engine {
        Engine::new(Rc::new(
            Policy::try_from(policy).unwrap_or_else(|e| panic!("{e:?}")),
        ))
    }

    fn request(e: &mut Engine, store: &FakeStore, xff: &str, method: &str) -> (Decision, Counted) {
        let mut m = Counted(Vec::new());
        let d = TestRequest::new(method, "/login")
            .headers(&[("x-forwarded-for", xff), ("x-user", "u1")])
            .peer_addr("127.0.0.1:4000")
            .at_secs(1_700_000_000)
            .store(store)
            .send(e, &mut m);
        (d, m)
    }

    #[test]
    fn engine_builds_one_call_per_global_limit_behind_local_ones() {
        let mut e = engine(json!({
            "limits": [
                {"name": "flood", "capacity": 2, "key": [{"client_ip": {"trusted_hops": 1}}]},
                {"name": "g", "key": [{"client_ip": {"trusted_hops": 1}}, {"header": "x-user"},
                                       {"route": true}, {"constant": "c"}],
                 "cost": {"default": 1, "methods": {"POST": 5}},
                 "global": {"cluster": "rls", "domain": "apiguard", "timeout_ms": 300}}
            ],
            "routes": [{"name": "login", "match": {"path": "/login"}, "public": true,
                        "limits": ["flood", "g"]}]
        }));
        let store = FakeStore::default();
        let (d, m) = request(&mut e, &store, "9.9.9.9", "POST");
        assert_eq!(d.global.len(), 1);
        // Not counted as allowed until the service answered.
        assert!(!m.0.iter().any(|n| n == "apiguard.allowed"));
        let call = &d.global[0];
        assert_eq!((call.cluster.as_str(), call.timeout_ms), ("rls", 300));
        let req = RateLimitRequest::decode(call.message.as_slice()).unwrap();
        assert_eq!(req.domain, "apiguard");
        assert_eq!(req.hits_addend, 5);
        let entries: Vec<(&str, &str)> = req.descriptors[0]
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            entries,
            [
                ("limit", "g"),
                ("client_ip", "9.9.9.9"),
                ("header.x-user", "u1"),
                ("route", "login"),
                ("constant", "c")
            ]
        );
        // The local limit in front sheds the flood with no call at all.
        let _ = request(&mut e, &store, "9.9.9.9", "GET");
        let (d, _) = request(&mut e, &store, "9.9.9.9", "GET");
        assert!(d.global.is_empty());
        assert!(matches!(d.verdict, crate::engine::Verdict::Deny(_)));
    }

    #[test]
    fn policy_refuses_local_fields_and_bad_global_blocks() {
        let bad = json!({
            "limits": [
                {"name": "a", "capacity": 5, "key": [{"constant": "x"}],
                 "global": {"cluster": "rls", "domain": "d"}},
                {"name": "b", "key": [{"constant": "x"}],
                 "global": {"cluster": "", "domain": "", "timeout_ms": 0}},
                {"name": "c", "key": [{"constant": "x"}]}
            ],
            "routes": []
        });
        let errors = format!("{:?}", Policy::try_from(bad).err().unwrap());
        for path in [
            "limits[0].capacity",
            "limits[1].global.cluster",
            "limits[1].global.domain",
            "limits[1].global.timeout_ms",
            "limits[2].capacity",
        ] {
            assert!(errors.contains(path), "{path} missing in {errors}");
        }
    }
}
