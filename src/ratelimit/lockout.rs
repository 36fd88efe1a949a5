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
//!
//! A lockout with a `global` block counts in the rate limit service instead, so a key is
//! locked on every Envoy (`global_calls`): before the credential counts, a check without
//! counting (descriptor `hits_addend` 0) reads whether the key's counter is empty; a
//! refused credential charges it instead (`hits_addend` = cost). The request waits for the
//! answer either way, so a locked key gets 429 `locked_out` whatever it presented, and a
//! valid credential is not told apart from an invalid one while the key is locked.

use serde::Deserialize;
use serde_json::Value;

use super::global::{self, CallKind, GlobalCall};
use super::{acquire, headers, key, Acquire};
use crate::engine::{Host, RequestHead};
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

/// The route's local lockouts (buckets in this Envoy).
fn lockouts<'a>(policy: &'a Policy, route: &'a Route) -> impl Iterator<Item = &'a Limit> {
    route
        .limits
        .iter()
        .filter_map(|&i| policy.limits.get(i))
        .filter(|l| l.count == Count::AuthFailures && l.global.is_none())
}

/// The rate limit service calls for the route's global lockouts: `LockoutPeek` before a
/// verdict on the credential, `LockoutCharge` after an `is_auth_failure` refusal.
pub fn global_calls(
    policy: &Policy,
    route: &Route,
    req: &RequestHead,
    kind: CallKind,
) -> Vec<GlobalCall> {
    let mut calls = Vec::new();
    for &li in &route.limits {
        let Some((limit, spec)) = policy
            .limits
            .get(li)
            .filter(|l| l.count == Count::AuthFailures)
            .and_then(|l| l.global.as_ref().map(|g| (l, g)))
        else {
            continue;
        };
        let cost = limit.cost(req.method);
        if cost == 0 {
            continue; // a method the lockout does not count
        }
        let parts = limit
            .key
            .iter()
            .filter_map(|part| match part {
                KeyPart::ClientIp { trusted_hops } => {
                    Some(("client_ip".to_string(), req.client_ip(*trusted_hops)))
                }
                KeyPart::Header(h) => Some((
                    format!("header.{h}"),
                    req.joined_header(h).unwrap_or_default(),
                )),
                KeyPart::Route => Some(("route".to_string(), route.name.clone())),
                KeyPart::Constant(c) => Some(("constant".to_string(), c.clone())),
                // Refused by the policy compiler: a failed request has no verified claims.
                KeyPart::Claim(_) => None,
            })
            .collect();
        let descriptor = global::descriptor(&limit.spec.name, parts);
        calls.push(global::lockout_call(li, spec, descriptor, kind, cost));
    }
    calls
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
/// request's key is empty refuses it. The clock is read only for a lockout (a host call).
pub fn check(policy: &Policy, route: &Route, req: &RequestHead, host: &Host) -> Option<Denial> {
    for limit in lockouts(policy, route) {
        // A take of 0 reads the refilled bucket (it never refuses).
        let remaining = match acquire(
            host.store,
            &limit.spec,
            &bucket_key(limit, route, req),
            0,
            host.clock.now_millis(),
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
pub fn record_failure(policy: &Policy, route: &Route, req: &RequestHead, host: &Host) {
    for limit in lockouts(policy, route) {
        let _ = acquire(
            host.store,
            &limit.spec,
            &bucket_key(limit, route, req),
            limit.cost(req.method),
            host.clock.now_millis(),
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
    use crate::ratelimit::global::CallKind;
    use crate::rls_proto::RateLimitRequest;
    use prost::Message;
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
    fn policy_refuses_claim_keyed_lockouts() {
        let bad = json!({
            "limits": [
                {"name": "b", "count": "auth_failures", "capacity": 1, "key": [{"claim": "sub"}]},
                {"name": "g", "count": "auth_failures", "key": [{"claim": "sub"}],
                 "global": {"cluster": "rls", "domain": "d"}}
            ],
            "routes": []
        });
        let errors = format!("{:?}", Policy::try_from(bad).err().unwrap());
        assert!(errors.contains("limits[0].key"), "{errors}");
        assert!(errors.contains("limits[1].key"), "{errors}");
    }

    fn global_engine() -> Engine {
        let policy = json!({
            "api_keys": [{"name": "keys", "keys": [{"client_id": "alice", "sha256": GOOD_SHA256}]}],
            "limits": [{"name": "guess", "count": "auth_failures",
                        "key": [{"client_ip": {"trusted_hops": 0}}, {"constant": "c"}],
                        "global": {"cluster": "rls", "domain": "apiguard"}}],
            "routes": [{"name": "api", "match": {"prefix": "/"}, "providers": ["keys"],
                        "limits": ["guess"]}]
        });
        Engine::new(Rc::new(
            Policy::try_from(policy).unwrap_or_else(|e| panic!("{e:?}")),
        ))
    }

    /// (kind, descriptor hits, entries) of the decision's one call.
    fn one_call(d: &Decision) -> (CallKind, Option<u64>, Vec<(String, String)>) {
        assert_eq!(d.global.len(), 1, "{:?}", d.global);
        let call = &d.global[0];
        let req = RateLimitRequest::decode(call.message.as_slice()).unwrap();
        assert_eq!((req.domain.as_str(), req.hits_addend), ("apiguard", 1));
        let desc = &req.descriptors[0];
        let entries = desc
            .entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect();
        (call.kind, desc.hits_addend, entries)
    }

    #[test]
    fn global_lockout_peeks_before_any_verdict_and_charges_refused_credentials() {
        let (mut e, store, clock) = (
            global_engine(),
            FakeStore::default(),
            FakeClock::at_secs(1_700_000_000),
        );
        let ip = "10.0.0.9:1000";
        let want_entries = vec![
            ("limit".to_string(), "guess".to_string()),
            ("client_ip".to_string(), "10.0.0.9".to_string()),
            ("constant".to_string(), "c".to_string()),
        ];
        // A refused credential: the 401 is decided, and the failure is charged (hits 1).
        for _ in 0..5 {
            let d = go(&mut e, &store, &clock, ip, Some("guess"));
            assert_eq!(reason(&d), "invalid_api_key");
            assert_eq!(
                one_call(&d),
                (CallKind::LockoutCharge, Some(1), want_entries.clone())
            );
        }
        // Never a local bucket: nothing was written to shared data.
        assert!(store.map.borrow().is_empty());
        // A valid key and a missing one: only a check without counting (hits 0).
        let d = go(&mut e, &store, &clock, ip, Some("good-key"));
        assert_eq!(reason(&d), "allowed");
        assert_eq!(
            one_call(&d),
            (CallKind::LockoutPeek, Some(0), want_entries.clone())
        );
        let d = go(&mut e, &store, &clock, ip, None);
        assert_eq!(reason(&d), "missing_credentials");
        assert_eq!(one_call(&d).0, CallKind::LockoutPeek);
    }
}
