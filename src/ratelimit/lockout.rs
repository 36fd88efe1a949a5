//! Lockout after authentication failures: a limit with `count: auth_failures` takes a
//! token only when apiguard refuses a presented credential (401 for an invalid token or a
//! wrong API key; not a missing credential, not a 403), and while its bucket for the key
//! (client address, a header such as a username field, the route, a constant) holds less
//! than one token, every request of that key is refused with 429 `locked_out` before any
//! credential is even looked at, until the bucket refills.
//!
//! `capacity` is the number of failures allowed; `refill` sets how long the lock lasts:
//! one token comes back every `period / tokens`, and one token is enough to try again.
//! The buckets are the ordinary shared buckets (`shared::acquire`): exact across workers.

use serde::Deserialize;
use serde_json::Value;

use super::{acquire, headers, key, Acquire};
use crate::engine::RequestHead;
use crate::policy::{KeyPart, Limit, Policy, Route};
use crate::problem::Denial;

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Count {
    /// Every request the route admits (an ordinary limit).
    #[default]
    Requests,
    /// Only requests refused for a presented, invalid credential (a lockout).
    AuthFailures,
}

/// Whether a refusal counts as an authentication failure.
pub fn is_auth_failure(d: &Denial) -> bool {
    d.status == 401 && d.reason != "missing_credentials"
}

fn lockouts<'a>(policy: &'a Policy, route: &'a Route) -> impl Iterator<Item = &'a Limit> {
    route
        .limits
        .iter()
        .filter_map(|&i| policy.limits.get(i))
        .filter(|l| l.count == Count::AuthFailures)
}

/// The bucket key of a lockout limit: the parts a request without a verified identity has.
fn bucket_key(limit: &Limit, route: &Route, req: &RequestHead) -> String {
    let parts = limit.key.iter().map(|part| match part {
        KeyPart::ClientIp { trusted_hops } => format!("ip={}", req.client_ip(*trusted_hops)),
        KeyPart::Header(h) => format!("header={}", req.joined_header(h).unwrap_or_default()),
        KeyPart::Route => format!("route={}", route.name),
        KeyPart::Constant(c) => format!("const={c}"),
        // Refused by the policy compiler: a failed request has no verified claims.
        KeyPart::Claim(_) => String::new(),
    });
    key::compose(parts)
}

/// Before authentication: the first lockout limit of the route whose bucket for this
/// request's key is empty refuses it.
pub fn check(
    policy: &Policy,
    route: &Route,
    req: &RequestHead,
    store: &dyn crate::host::SharedStore,
    now_ms: u64,
) -> Option<Denial> {
    for limit in lockouts(policy, route) {
        // A take of 0 reads the refilled bucket (it never refuses).
        let remaining = match acquire(
            store,
            &limit.spec,
            &bucket_key(limit, route, req),
            0,
            now_ms,
        ) {
            Acquire::Allowed { remaining, .. } | Acquire::Limited { remaining, .. } => remaining,
            // The store failed: `on_store_failure` decides, as for any limit.
            Acquire::StoreFailed { allowed, .. } | Acquire::TableFull { allowed, .. } => {
                if allowed {
                    continue;
                }
                0
            }
        };
        if remaining == 0 {
            return Some(locked_out(limit));
        }
    }
    None
}

/// After a refusal that `is_auth_failure`: charges every lockout limit of the route.
pub fn record_failure(
    policy: &Policy,
    route: &Route,
    req: &RequestHead,
    store: &dyn crate::host::SharedStore,
    now_ms: u64,
) {
    for limit in lockouts(policy, route) {
        let _ = acquire(
            store,
            &limit.spec,
            &bucket_key(limit, route, req),
            limit.cost(req.method),
            now_ms,
        );
    }
}

fn locked_out(limit: &Limit) -> Denial {
    let spec = &limit.spec;
    let mut d = Denial::new(
        429,
        "locked_out",
        format!(
            "too many authentication failures (`{}`): try again later",
            spec.name
        ),
    );
    // One token is enough to try again: at most one refill step away (a lockout that
    // never refills still gets a finite hint, a day).
    let wait_ms = if spec.refill_tokens == 0 {
        86_400_000
    } else {
        spec.period_ms.div_ceil(spec.refill_tokens)
    };
    d.retry_after_secs = Some(headers::retry_after_secs(wait_ms));
    d.headers
        .push((headers::POLICY_HEADER.into(), limit.policy_header.clone()));
    d.extensions
        .push(("limit", Value::String(spec.name.clone())));
    d
}

#[cfg(test)]
mod tests {
    use crate::engine::test_request::TestRequest;
    use crate::engine::{Decision, Engine, Metrics, Verdict};
    use crate::host::fake::{FakeClock, FakeStore};
    use crate::policy::Policy;
    use serde_json::json;
    use std::rc::Rc;

    /// sha256("good-key")
    const GOOD_SHA256: &str = "b8ce88d57f4916859bcecb01b98b041299a759313987af89f9fc6608d7440537";

    struct NoMetrics;
    impl Metrics for NoMetrics {
        fn incr(&mut self, _: &str) {}
    }

    fn engine() -> Engine {
        let policy = json!({
            "api_keys": [{"name": "keys", "keys": [{"client_id": "alice", "sha256": GOOD_SHA256}]}],
            "limits": [{"name": "guess", "count": "auth_failures", "capacity": 3,
                        "refill": {"tokens": 1, "period_seconds": 10},
                        "key": [{"client_ip": {"trusted_hops": 0}}]}],
            "routes": [{"name": "api", "match": {"prefix": "/"}, "providers": ["keys"],
                        "limits": ["guess"]}]
        });
        Engine::new(Rc::new(
            Policy::try_from(policy).unwrap_or_else(|e| panic!("{e:?}")),
        ))
    }

    fn go(
        e: &mut Engine,
        store: &FakeStore,
        clock: &FakeClock,
        ip: &str,
        key: Option<&str>,
    ) -> Decision {
        let mut req = TestRequest::get("/x")
            .peer_addr(ip)
            .clock(clock)
            .store(store);
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        req.send(e, &mut NoMetrics)
    }

    fn reason(d: &Decision) -> &'static str {
        match &d.verdict {
            Verdict::Deny(d) => d.reason,
            Verdict::Allow(_) => "allowed",
        }
    }

    #[test]
    fn failures_lock_the_key_out_until_refill() {
        let (mut e, store, clock) = (
            engine(),
            FakeStore::default(),
            FakeClock::at_secs(1_700_000_000),
        );
        let attacker = "10.0.0.9:1000";
        // Missing credentials do not count.
        for _ in 0..5 {
            assert_eq!(
                reason(&go(&mut e, &store, &clock, attacker, None)),
                "missing_credentials"
            );
        }
        for _ in 0..3 {
            assert_eq!(
                reason(&go(&mut e, &store, &clock, attacker, Some("guess"))),
                "invalid_api_key"
            );
        }
        // Locked: even the right key is refused, with a Retry-After of one refill step.
        let d = go(&mut e, &store, &clock, attacker, Some("good-key"));
        assert_eq!(reason(&d), "locked_out");
        let Verdict::Deny(denial) = &d.verdict else {
            unreachable!()
        };
        assert_eq!((denial.status, denial.retry_after_secs), (429, Some(10)));
        // Another address is not affected.
        assert_eq!(
            reason(&go(
                &mut e,
                &store,
                &clock,
                "10.0.0.7:1000",
                Some("good-key")
            )),
            "allowed"
        );
        // One token back after 10 s: the lock lifts.
        clock.advance_millis(10_000);
        assert_eq!(
            reason(&go(&mut e, &store, &clock, attacker, Some("good-key"))),
            "allowed"
        );
    }

    #[test]
    fn policy_refuses_global_or_claim_keyed_lockouts() {
        let bad = json!({
            "limits": [
                {"name": "a", "count": "auth_failures", "key": [{"constant": "x"}],
                 "global": {"cluster": "rls", "domain": "d"}},
                {"name": "b", "count": "auth_failures", "capacity": 1, "key": [{"claim": "sub"}]}
            ],
            "routes": []
        });
        let errors = format!("{:?}", Policy::try_from(bad).err().unwrap());
        assert!(errors.contains("limits[0].count"), "{errors}");
        assert!(errors.contains("limits[1].key"), "{errors}");
    }
}
