//! Shared-bucket tests: interleaved workers, slot take-over, the memory bound, modes.

use std::collections::HashMap;
#[cfg(not(target_arch = "wasm32"))]
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::shared::{commit, plan, slot_key, table_prefix, KeyHash, Plan, CREATE_CAS};
use super::*;
use crate::host::fake::FakeStore;
use crate::host::{CasError, SharedStore};

fn quota(capacity: u64) -> LimitSpec {
    LimitSpec::new("rl", capacity, 0, 1_000)
}

fn limit(capacity: u64, refill: u64, period_ms: u64, max_buckets: u32) -> LimitSpec {
    let mut l = LimitSpec::new("rl", capacity, refill, period_ms);
    l.max_buckets = max_buckets;
    l.compute_config_hash();
    l
}

fn keys_in(store: &FakeStore, limit: &LimitSpec) -> usize {
    let prefix = table_prefix(limit);
    store
        .map
        .borrow()
        .keys()
        .filter(|k| k.starts_with(&prefix))
        .count()
}

/// A key whose home slot is `home`.
fn key_at(limit: &LimitSpec, home: u32, tag: &str) -> String {
    (0..100_000)
        .map(|i| format!("{tag}{i}"))
        .find(|k| KeyHash::new(limit, k).home == home)
        .unwrap()
}

fn remaining(a: Acquire) -> u64 {
    match a {
        Acquire::Allowed { remaining, .. } | Acquire::Limited { remaining, .. } => remaining,
        other => panic!("no bucket decision: {other:?}"),
    }
}

#[test]
fn admits_capacity_then_limits() {
    let store = FakeStore::default();
    let l = limit(3, 1, 1_000, 100);
    for want in [2, 1, 0] {
        let a = acquire(&store, &l, "alice", 1, 10_000);
        assert_eq!(
            a,
            Acquire::Allowed {
                remaining: want,
                reset_ms: (3 - want) * 1_000,
                cas_retries: 0,
                shared_slot: false
            }
        );
    }
    let a = acquire(&store, &l, "alice", 1, 10_500);
    assert_eq!(
        a,
        Acquire::Limited {
            remaining: 0,
            retry_after_ms: Some(500),
            reset_ms: 2_500,
            cas_retries: 0,
            shared_slot: false
        }
    );
    assert!(!a.allowed());
    // Other keys are independent; one slot per key.
    assert!(acquire(&store, &l, "bob", 1, 10_500).allowed());
    assert!(acquire(&store, &l, "alice", 1, 11_000).allowed());
    assert_eq!(keys_in(&store, &l), 2);
    // Cost above capacity can never pass and writes nothing.
    assert!(matches!(
        acquire(&store, &l, "carol", 4, 11_000),
        Acquire::Limited {
            retry_after_ms: None,
            ..
        }
    ));
    assert_eq!(keys_in(&store, &l), 2);
}

#[test]
fn interleaved_read_read_write_write_retries_loser() {
    let store = FakeStore::default();
    let l = quota(2);
    let kh = KeyHash::new(&l, "k");
    // Slot exists: A reads, B reads, A writes, B writes → B mismatches.
    assert!(acquire(&store, &l, "k", 1, 0).allowed());
    let (Plan::Write(a), Plan::Write(b)) =
        (plan(&store, &l, &kh, 1, 0), plan(&store, &l, &kh, 1, 0))
    else {
        panic!("both should plan a take");
    };
    assert_eq!(commit(&store, &a), Ok(()));
    assert_eq!(commit(&store, &b), Err(CasError::Mismatch));
    // B re-reads and now sees the bucket empty.
    assert!(matches!(plan(&store, &l, &kh, 1, 0), Plan::Done { outcome, .. } if !outcome.allowed));
}

#[test]
fn racing_creates_lose_nothing() {
    let store = FakeStore::default();
    let l = quota(1);
    let kh = KeyHash::new(&l, "k");
    // Both read the slot absent and plan a create.
    let (Plan::Write(a), Plan::Write(b)) =
        (plan(&store, &l, &kh, 1, 0), plan(&store, &l, &kh, 1, 0))
    else {
        panic!("both should plan a take");
    };
    assert_eq!((a.cas, b.cas), (CREATE_CAS, CREATE_CAS));
    assert_eq!(commit(&store, &a), Ok(()));
    assert_eq!(commit(&store, &b), Err(CasError::Mismatch));
    assert!(!acquire(&store, &l, "k", 1, 0).allowed());
}

#[test]
fn acquire_retries_mismatch_and_reports_it() {
    /// Lets a rival worker take one token between our read and our write, `rivals` times.
    struct Contended<'a> {
        inner: &'a FakeStore,
        limit: &'a LimitSpec,
        rivals: std::cell::Cell<u32>,
    }
    impl SharedStore for Contended<'_> {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasError> {
            if self.rivals.get() > 0 {
                self.rivals.set(self.rivals.get() - 1);
                assert!(acquire(self.inner, self.limit, "k", 1, 0).allowed());
            }
            self.inner.set(key, value, cas)
        }
    }
    let inner = FakeStore::default();
    let l = quota(10);
    let store = Contended {
        inner: &inner,
        limit: &l,
        rivals: std::cell::Cell::new(3),
    };
    let a = acquire(&store, &l, "k", 1, 0);
    assert_eq!(a.cas_retries(), 3);
    assert_eq!(remaining(a), 10 - 4);

    // Retries exhausted: on_store_failure decides.
    let inner = FakeStore::default();
    let mut l = quota(10);
    l.max_cas_retries = 2;
    let store = Contended {
        inner: &inner,
        limit: &l,
        rivals: std::cell::Cell::new(100),
    };
    assert_eq!(
        acquire(&store, &l, "k", 1, 0),
        Acquire::StoreFailed {
            allowed: false,
            cas_retries: 2
        }
    );
    l.on_store_failure = FailureMode::Allow;
    let store = Contended {
        inner: &inner,
        limit: &l,
        rivals: std::cell::Cell::new(100),
    };
    assert_eq!(
        acquire(&store, &l, "k", 1, 0),
        Acquire::StoreFailed {
            allowed: true,
            cas_retries: 2
        }
    );
}

#[test]
fn host_write_failure_uses_failure_mode() {
    struct Broken;
    impl SharedStore for Broken {
        fn get(&self, _: &str) -> Option<(Vec<u8>, u32)> {
            None
        }
        fn set(&self, _: &str, _: &[u8], _: Option<u32>) -> Result<(), CasError> {
            Err(CasError::Failed)
        }
    }
    let mut l = quota(10);
    assert_eq!(
        acquire(&Broken, &l, "k", 1, 0),
        Acquire::StoreFailed {
            allowed: false,
            cas_retries: 0
        }
    );
    l.on_store_failure = FailureMode::Allow;
    assert!(acquire(&Broken, &l, "k", 1, 0).allowed());
}

#[test]
fn full_or_idle_slot_is_taken_over() {
    // One slot: keys must share it over time.
    let mut l = limit(2, 1, 1_000, 1);
    l.on_table_full = TableFullMode::Deny;
    let store = FakeStore::default();
    assert!(acquire(&store, &l, "a", 1, 0).allowed());
    // a's bucket is not full: b cannot have the slot.
    assert_eq!(
        acquire(&store, &l, "b", 1, 500),
        Acquire::TableFull {
            allowed: false,
            cas_retries: 0
        }
    );
    // After one token's refill a is full again (idle): b takes over, with a fresh bucket.
    assert_eq!(remaining(acquire(&store, &l, "b", 1, 1_000)), 1);
    assert_eq!(remaining(acquire(&store, &l, "b", 1, 1_000)), 0);
    // Now a is the stranger.
    assert!(matches!(
        acquire(&store, &l, "a", 1, 1_000),
        Acquire::TableFull { .. }
    ));
    // Idle well past a full refill: a gets a fresh full bucket.
    assert_eq!(remaining(acquire(&store, &l, "a", 2, 60_000)), 0);
    assert_eq!(keys_in(&store, &l), 1);
}

#[test]
fn own_slot_is_found_past_a_free_slot() {
    let l = limit(5, 1, 1_000, 8);
    let store = FakeStore::default();
    let x = key_at(&l, 3, "x");
    let k = key_at(&l, 3, "k");
    assert!(acquire(&store, &l, &x, 1, 0).allowed()); // x at slot 3
    assert_eq!(remaining(acquire(&store, &l, &k, 2, 0)), 3); // k probes on to slot 4
    assert_eq!(keys_in(&store, &l), 2);
    // x's bucket refills: slot 3 is free, but k must keep its own state in slot 4.
    assert_eq!(remaining(acquire(&store, &l, &k, 1, 1_000)), 3);
    assert!(store.get(&slot_key(&l, 4)).is_some());
}

#[test]
fn unusable_slot_value_is_reused() {
    let l = quota(2);
    let store = FakeStore::default();
    let home = KeyHash::new(&l, "k").home;
    store.set(&slot_key(&l, home), b"garbage", None).unwrap();
    assert_eq!(remaining(acquire(&store, &l, "k", 1, 0)), 1);
    assert_eq!(remaining(acquire(&store, &l, "k", 1, 0)), 0);
    assert_eq!(keys_in(&store, &l), 1);
}

#[test]
fn table_full_modes() {
    let mut l = limit(10, 1, 1_000, 1);
    let store = FakeStore::default();
    assert_eq!(remaining(acquire(&store, &l, "owner", 1, 0)), 9);

    l.on_table_full = TableFullMode::Deny;
    assert_eq!(
        acquire(&store, &l, "stranger", 1, 0),
        Acquire::TableFull {
            allowed: false,
            cas_retries: 0
        }
    );
    l.on_table_full = TableFullMode::Allow;
    assert_eq!(
        acquire(&store, &l, "stranger", 1, 0),
        Acquire::TableFull {
            allowed: true,
            cas_retries: 0
        }
    );
    // Neither touched the owner's bucket.
    assert_eq!(remaining(acquire(&store, &l, "owner", 1, 0)), 8);

    // share (the default): charged against the owner's live bucket.
    l.on_table_full = TableFullMode::default();
    assert_eq!(l.on_table_full, TableFullMode::Share);
    let a = acquire(&store, &l, "stranger", 3, 0);
    assert!(matches!(
        a,
        Acquire::Allowed {
            remaining: 5,
            shared_slot: true,
            ..
        }
    ));
    assert_eq!(remaining(acquire(&store, &l, "owner", 1, 0)), 4);
    // The slot still belongs to the owner.
    let b = acquire(&store, &l, "stranger", 10, 0);
    assert!(matches!(
        b,
        Acquire::Limited {
            shared_slot: true,
            ..
        }
    ));
}

#[test]
fn ten_thousand_keys_never_exceed_max_buckets() {
    for mode in [
        TableFullMode::Share,
        TableFullMode::Deny,
        TableFullMode::Allow,
    ] {
        let mut l = limit(5, 1, 60_000, 1_000);
        l.on_table_full = mode;
        let store = FakeStore::default();
        let mut table_full = 0;
        for i in 0..10_000u64 {
            let a = acquire(&store, &l, &format!("client-{i}"), 1, i);
            table_full += u32::from(matches!(a, Acquire::TableFull { .. }));
        }
        assert!(keys_in(&store, &l) <= 1_000);
        assert_eq!(store.map.borrow().len(), keys_in(&store, &l));
        if mode != TableFullMode::Share {
            assert!(table_full > 8_000, "{mode:?}: {table_full}");
        }
    }
}

#[test]
fn config_hash_namespaces_tables() {
    let base = LimitSpec::new("orders", 10, 1, 1_000);
    let store = FakeStore::default();
    assert_eq!(remaining(acquire(&store, &base, "k", 4, 0)), 6);

    // Behaviour-only changes keep the table (a reload keeps its buckets).
    let mut same = base.clone();
    same.max_cas_retries = 3;
    same.on_store_failure = FailureMode::Allow;
    same.on_table_full = TableFullMode::Deny;
    same.compute_config_hash();
    assert_eq!(same.config_hash, base.config_hash);
    assert_eq!(remaining(acquire(&store, &same, "k", 1, 0)), 5);

    // Anything that changes what a stored bucket means starts fresh.
    let variants: [fn(&mut LimitSpec); 5] = [
        |l| l.name = "orders2".into(),
        |l| l.capacity = 11,
        |l| l.refill_tokens = 2,
        |l| l.period_ms = 2_000,
        |l| l.max_buckets = 9_999,
    ];
    for change in variants {
        let mut l = base.clone();
        change(&mut l);
        l.compute_config_hash();
        assert_ne!(l.config_hash, base.config_hash);
        assert_ne!(table_prefix(&l), table_prefix(&base));
        assert_eq!(remaining(acquire(&store, &l, "k", 1, 0)), l.capacity - 1);
    }
    assert!(
        slot_key(&base, 7).starts_with(&format!("apiguard/rl/orders/{:016x}/", base.config_hash))
    );
    assert!(slot_key(&base, 7).ends_with("/7"));
}

#[test]
fn validate_reports_fields() {
    assert!(LimitSpec::new("orders.v1-a_b", 1, 0, 1)
        .validate()
        .is_empty());
    let mut bad = LimitSpec::new("a/b", 0, 1, 0);
    bad.max_buckets = 0;
    bad.max_cas_retries = 1_000;
    let fields: Vec<_> = bad.validate().into_iter().map(|(f, _)| f).collect();
    assert_eq!(
        fields,
        [
            "name",
            "capacity",
            "period_ms",
            "max_buckets",
            "max_cas_retries"
        ]
    );
    assert_eq!(FailureMode::parse("allow"), Some(FailureMode::Allow));
    assert_eq!(
        TableFullMode::parse("share").map(|m| m.as_str()),
        Some("share")
    );
    assert_eq!(TableFullMode::parse("nope"), None);
    let m: TableFullMode = serde_json::from_str("\"deny\"").unwrap();
    assert_eq!(m, TableFullMode::Deny);
}

#[test]
fn degenerate_tables_do_not_panic() {
    let mut l = LimitSpec::new("rl", 2, 1, 0);
    l.max_buckets = 0;
    l.compute_config_hash();
    let store = FakeStore::default();
    assert!(acquire(&store, &l, "k", 1, u64::MAX).allowed());
    assert!(acquire(&store, &l, "", 0, 0).allowed());
    assert_eq!(keys_in(&store, &l), 1);
}

/// Envoy's shared data, thread-safe: absent keys are created whatever the CAS, present
/// keys check a non-zero CAS, tokens come from one process-wide counter that skips 0.
#[cfg(not(target_arch = "wasm32"))]
type Entries = HashMap<String, (Vec<u8>, u32)>;

#[cfg(not(target_arch = "wasm32"))]
#[derive(Default)]
struct EnvoyStore {
    inner: Mutex<(Entries, u32)>,
}

#[cfg(not(target_arch = "wasm32"))]
impl SharedStore for EnvoyStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.inner.lock().unwrap().0.get(key).cloned()
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasError> {
        let mut guard = self.inner.lock().unwrap();
        let (map, counter) = &mut *guard;
        if let (Some(want), Some((_, have))) = (cas, map.get(key)) {
            if want != 0 && want != *have {
                return Err(CasError::Mismatch);
            }
        }
        *counter = counter.wrapping_add(1).max(1);
        map.insert(key.to_string(), (value.to_vec(), *counter));
        Ok(())
    }
}

/// 4 threads × 50 requests on one key at capacity 50, released together: what the e2e
/// test does through Envoy. Native only: wasm32-wasip1 has no threads (Envoy's workers are
/// separate VMs; the proptest below covers their interleavings on every target). Tight loops on a mutex store are far more contended than
/// real workers, yet every admission is exact.
#[cfg(not(target_arch = "wasm32"))]
fn hammer(l: LimitSpec) -> (usize, usize, u32) {
    let store = Arc::new(EnvoyStore::default());
    let l = Arc::new(l);
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (store, l, barrier) = (store.clone(), l.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                (0..50)
                    .map(|i| acquire(&*store, &l, "shared-key", 1, i))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<Acquire> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let allowed = results.iter().filter(|a| a.allowed()).count();
    let failed = results
        .iter()
        .filter(|a| matches!(a, Acquire::StoreFailed { .. }))
        .count();
    let retries = results.iter().map(|a| a.cas_retries()).sum();
    (allowed, failed, retries)
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn four_threads_two_hundred_requests_capacity_fifty() {
    let mut total_failed = 0;
    for round in 0..20 {
        // Default retries, on_store_failure deny: a give-up can only deny, and only while
        // other workers are taking (each mismatch is someone else's successful take), so
        // exactly 50 still pass.
        let (allowed, failed, _) = hammer(quota(50));
        assert_eq!(allowed, 50, "round {round}");
        total_failed += failed;
        // With enough retries nobody gives up at all.
        let mut patient = quota(50);
        patient.max_cas_retries = MAX_CAS_RETRIES_LIMIT;
        let (allowed, failed, _) = hammer(patient);
        assert_eq!((allowed, failed), (50, 0), "round {round}");
    }
    eprintln!("store failures at default retries over 20 rounds: {total_failed}");
}

/// One simulated worker: a queue of requests and maybe a plan read but not yet written.
struct Worker {
    pending: Option<Plan>,
    todo: Vec<String>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any interleaving of reads and writes across workers admits exactly `capacity` per
    /// key (no refill), starting from absent slots, so the create race is covered too.
    #[test]
    fn any_interleaving_admits_exactly_capacity(
        capacity in 1u64..8,
        workers in 2usize..5,
        keys in 1usize..4,
        per_worker in 1usize..25,
        schedule in prop::collection::vec(any::<usize>(), 0..400),
    ) {
        let l = limit(capacity, 0, 1_000, 1_000);
        let store = FakeStore::default();
        let mut ws: Vec<Worker> = (0..workers)
            .map(|w| Worker {
                pending: None,
                todo: (0..per_worker).map(|i| format!("key{}", (w + i) % keys)).collect(),
            })
            .collect();
        let mut admitted: HashMap<String, u64> = HashMap::new();
        let mut demand: HashMap<String, u64> = HashMap::new();
        for w in &ws {
            for k in &w.todo {
                *demand.entry(k.clone()).or_default() += 1;
            }
        }
        // Random steps, then round-robin until every request is decided.
        let mut steps = schedule.into_iter().chain((0..).map(|i: usize| i));
        while ws.iter().any(|w| w.pending.is_some() || !w.todo.is_empty()) {
            let w = &mut ws[steps.next().unwrap() % workers];
            let Some(key) = w.todo.last().cloned() else { continue };
            match w.pending.take() {
                None => {
                    let p = plan(&store, &l, &KeyHash::new(&l, &key), 1, 0);
                    match p {
                        Plan::Done { outcome, .. } => {
                            prop_assert!(!outcome.allowed);
                            w.todo.pop();
                        }
                        Plan::TableFull => prop_assert!(false, "table cannot be full"),
                        Plan::Write(_) => w.pending = Some(p),
                    }
                }
                Some(Plan::Write(write)) => {
                    if commit(&store, &write).is_ok() {
                        *admitted.entry(key).or_default() += 1;
                        w.todo.pop();
                    } // else: Mismatch, re-read on its next step.
                }
                Some(_) => unreachable!(),
            }
        }
        for (k, d) in demand {
            prop_assert_eq!(admitted.get(&k).copied().unwrap_or(0), d.min(capacity), "key {}", k);
        }
    }

    /// With refill, sequential takes at random times admit exactly what the bucket model
    /// says: capacity plus every token refilled, never more.
    #[test]
    fn shared_matches_local_bucket(
        capacity in 1u64..20,
        refill in 1u64..5,
        period in 1u64..2_000,
        times in prop::collection::vec(0u64..500, 1..100),
        costs in prop::collection::vec(0u64..4, 100),
    ) {
        let l = limit(capacity, refill, period, 10);
        let rate = l.rate();
        let store = FakeStore::default();
        let mut local = Bucket::full(&rate, 0);
        let mut now = 0;
        for (dt, cost) in times.into_iter().zip(costs) {
            now += dt;
            let want = local.take(&rate, cost, now);
            let got = acquire(&store, &l, "k", cost, now);
            prop_assert_eq!(got, Acquire::from_outcome_for_test(want));
        }
    }
}

impl Acquire {
    fn from_outcome_for_test(o: Outcome) -> Acquire {
        if o.allowed {
            Acquire::Allowed {
                remaining: o.remaining,
                reset_ms: o.reset_ms,
                cas_retries: 0,
                shared_slot: false,
            }
        } else {
            Acquire::Limited {
                remaining: o.remaining,
                retry_after_ms: o.retry_after_ms,
                reset_ms: o.reset_ms,
                cas_retries: 0,
                shared_slot: false,
            }
        }
    }
}
