//! Leases with simulated workers: each worker has its own `Leases` and counts its host
//! calls; all share one `FakeStore`. An exact bucket (`Bucket`) replays what the workers
//! admitted, at the same times: it must admit every one of them (never more than the
//! limit), and at every denial it may hold at most `RECORDS * LEASE_MAX` tokens more than
//! the cost (the under-admission bound in the module doc).

#![allow(clippy::unwrap_used, clippy::panic)]

use std::cell::Cell;

use proptest::prelude::*;

use super::*;
use crate::host::fake::FakeStore;
use crate::host::{CasError, SharedStore};
use crate::ratelimit::{acquire, Acquire, Bucket};

struct Worker<'a> {
    store: &'a FakeStore,
    leases: Leases,
    calls: Cell<u32>,
}

impl<'a> Worker<'a> {
    fn new(store: &'a FakeStore) -> Self {
        Worker {
            store,
            leases: Leases::default(),
            calls: Cell::new(0),
        }
    }
}

impl SharedStore for Worker<'_> {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.calls.set(self.calls.get() + 1);
        self.store.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasError> {
        self.calls.set(self.calls.get() + 1);
        self.store.set(key, value, cas)
    }
    fn leases(&self) -> Option<&Leases> {
        Some(&self.leases)
    }
}

const BOUND: u64 = RECORDS as u64 * LEASE_MAX;

/// Replays the workers' decisions on an exact bucket; panics on an admission the exact
/// bucket refuses, or a denial while it holds `cost + BOUND` tokens or more.
struct Exact {
    rate: Rate,
    bucket: Option<Bucket>,
    admitted: u64,
}

impl Exact {
    fn new(limit: &LimitSpec) -> Self {
        Exact {
            rate: limit.rate(),
            bucket: None,
            admitted: 0,
        }
    }

    fn check(&mut self, decision: &Acquire, cost: u64, now: u64) -> Result<(), TestCaseError> {
        let rate = self.rate;
        let bucket = self.bucket.get_or_insert_with(|| Bucket::full(&rate, now));
        if decision.allowed() {
            let out = bucket.take(&rate, cost, now);
            prop_assert!(
                out.allowed,
                "admitted beyond the limit at {now} (cost {cost})"
            );
            self.admitted += cost;
        } else {
            prop_assert!(matches!(decision, Acquire::Limited { .. }), "{decision:?}");
            bucket.refill(&rate, now);
            let left = bucket.tokens(&rate);
            prop_assert!(
                left < cost.saturating_add(BOUND),
                "denied with {left} tokens in the exact bucket (cost {cost})"
            );
        }
        Ok(())
    }
}

fn huge() -> LimitSpec {
    LimitSpec::new("lease", 1_000_000_000, 1_000_000_000, 1_000)
}

#[test]
fn far_from_empty_a_lease_saves_the_shared_data_calls() {
    let store = FakeStore::default();
    let w = Worker::new(&store);
    let l = huge();
    for i in 0..650u64 {
        assert!(acquire(&w, &l, "alice", 1, 10_000 + i / 10).allowed());
    }
    // The first take creates the slot (one read, one write), the second leases 64 beside
    // its take: from then on one read and one CAS write per 65 requests.
    assert_eq!(w.calls.get(), 2 + 2 * 10);
    assert_eq!(w.leases.len(), 1);
}

#[test]
fn a_lease_ends_after_lease_ms_and_is_settled_by_the_next_take() {
    let store = FakeStore::default();
    let w = Worker::new(&store);
    let l = huge();
    assert!(acquire(&w, &l, "k", 1, 0).allowed());
    assert!(w.leases.is_empty());
    assert!(acquire(&w, &l, "k", 1, 0).allowed());
    assert_eq!(w.leases.unspent(), LEASE_MAX);
    assert!(acquire(&w, &l, "k", 1, LEASE_MS - 1).allowed());
    assert_eq!(w.calls.get(), 4);
    // Ended: the next take goes to the slot, gives back 63, takes 1 and leases again.
    assert!(acquire(&w, &l, "k", 1, LEASE_MS).allowed());
    assert_eq!(w.calls.get(), 6);
    assert_eq!(w.leases.unspent(), LEASE_MAX);
}

#[test]
fn reported_remaining_counts_the_lease() {
    let store = FakeStore::default();
    let w = Worker::new(&store);
    let l = LimitSpec::new("lease", 10_000, 1, 3_600_000);
    let remaining = |a: Acquire| match a {
        Acquire::Allowed { remaining, .. } => remaining,
        other => panic!("{other:?}"),
    };
    assert_eq!(remaining(acquire(&w, &l, "k", 1, 0)), 9_999);
    assert_eq!(remaining(acquire(&w, &l, "k", 1, 0)), 9_998);
    // Leased 64 beside the second take: the bucket has 9,934, the lease 62 after this one.
    assert_eq!(remaining(acquire(&w, &l, "k", 1, 0)), 9_997);
    assert_eq!(remaining(acquire(&w, &l, "k", 2, 0)), 9_995);
    assert_eq!(w.calls.get(), 4);
}

#[test]
fn small_buckets_quotas_and_big_costs_never_lease() {
    for (l, cost) in [
        (LimitSpec::new("small", 127, 1, 1_000), 1),
        (LimitSpec::new("quota", 1_000_000, 0, 1_000), 1),
        (huge(), LEASE_MAX + 1),
    ] {
        let store = FakeStore::default();
        let w = Worker::new(&store);
        for _ in 0..20 {
            assert!(acquire(&w, &l, "k", cost, 0).allowed());
        }
        assert!(w.leases.is_empty(), "{l:?}");
        assert_eq!(w.calls.get(), 40, "{l:?}");
    }
}

#[test]
fn the_e2e_shape_admits_exactly_capacity() {
    // 4 workers, 200 requests, capacity 50 (no refill, and an hourly refill): exact.
    for refill in [0, 1] {
        let store = FakeStore::default();
        let workers: Vec<Worker> = (0..4).map(|_| Worker::new(&store)).collect();
        let l = LimitSpec::new("burst50", 50, refill, 3_600_000);
        let admitted = (0..200u64)
            .filter(|i| acquire(&workers[(i % 4) as usize], &l, "all", 1, *i).allowed())
            .count();
        assert_eq!(admitted, 50);
    }
}

#[test]
fn an_idle_holders_record_is_dropped_after_the_grace() {
    let store = FakeStore::default();
    let (a, b) = (Worker::new(&store), Worker::new(&store));
    let l = LimitSpec::new("lease", 1_000, 1, 3_600_000);
    assert!(acquire(&a, &l, "k", 1, 0).allowed()); // creates the slot
    assert!(acquire(&a, &l, "k", 1, 0).allowed()); // and leases 15 (998 / 64)
    assert_eq!(a.leases.unspent(), 15);
    // b drains the bucket: a's 15 are not b's to take.
    let by_b = (0..1_000)
        .filter(|_| acquire(&b, &l, "k", 1, 10).allowed())
        .count();
    assert_eq!(by_b, 1_000 - 2 - 15 - b.leases.unspent() as usize);
    // a's lease ended at 1,000 ms; at 1,500 its holder settles it and gives back 15.
    assert!(acquire(&a, &l, "k", 1, 1_500).allowed());
    assert!(a.leases.is_empty());
    // Had a been idle past the grace, b would drop the record and the 15 would be gone.
}

fn limits() -> impl Strategy<Value = LimitSpec> {
    (
        prop_oneof![1u64..=200, 100u64..=5_000, 1_000_000u64..=1_000_000_000],
        prop_oneof![Just(0u64), 1u64..=10, 1u64..=100_000],
        prop_oneof![1u64..=1_000, 1_000u64..=3_600_000],
    )
        .prop_map(|(c, r, p)| LimitSpec::new("prop", c, r, p))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any workers, any order, pauses long enough for leases to end and records to be
    /// dropped: never an admission the exact bucket refuses.
    #[test]
    fn leases_never_admit_more_than_the_limit(
        limit in limits(),
        workers in 1usize..=6,
        steps in prop::collection::vec(
            (0usize..6, prop_oneof![0u64..=50, 0u64..=3_000], 0u64..=3), 1..400),
    ) {
        let store = FakeStore::default();
        let ws: Vec<Worker> = (0..workers).map(|_| Worker::new(&store)).collect();
        let mut exact = Exact::new(&limit);
        let mut now = 1_000u64;
        for (w, dt, cost) in steps {
            now += dt;
            let a = acquire(&ws[w % workers], &limit, "key", cost, now);
            if a.allowed() {
                exact.check(&a, cost, now)?;
            }
        }
    }

    /// Workers served in turn, each at least every `LEASE_MS` (no lease outlives its
    /// holder's attention): every admission exact-admissible, and no denial while the
    /// exact bucket holds `cost + RECORDS * LEASE_MAX` tokens.
    #[test]
    fn leases_under_admit_by_at_most_the_records(
        limit in limits(),
        workers in 1usize..=6,
        rounds in prop::collection::vec((0u64..=150, prop::collection::vec(0u64..=3, 6)), 1..120),
    ) {
        let store = FakeStore::default();
        let ws: Vec<Worker> = (0..workers).map(|_| Worker::new(&store)).collect();
        let mut exact = Exact::new(&limit);
        let mut now = 1_000u64;
        for (dt, costs) in rounds {
            for (w, cost) in ws.iter().zip(costs) {
                now += dt;
                let a = acquire(w, &limit, "key", cost, now);
                exact.check(&a, cost, now)?;
            }
        }
    }

    /// Below `2 * LEASE_DIVISOR` tokens left nothing is leased: every decision is the exact
    /// bucket's, whatever the workers' order.
    #[test]
    fn small_buckets_decide_exactly_with_leases_on(
        capacity in 1u64..=127,
        refill in 0u64..=5,
        workers in 1usize..=6,
        steps in prop::collection::vec((0usize..6, 0u64..=500, 0u64..=3), 1..300),
    ) {
        let limit = LimitSpec::new("small", capacity, refill, 1_000);
        let store = FakeStore::default();
        let ws: Vec<Worker> = (0..workers).map(|_| Worker::new(&store)).collect();
        let rate = limit.rate();
        let mut exact: Option<Bucket> = None;
        let mut now = 0u64;
        for (w, dt, cost) in steps {
            now += dt;
            let a = acquire(&ws[w % workers], &limit, "key", cost, now);
            let e = exact.get_or_insert_with(|| Bucket::full(&rate, now));
            prop_assert_eq!(a.allowed(), e.take(&rate, cost, now).allowed);
        }
        prop_assert!(ws.iter().all(|w| w.leases.is_empty()));
    }
}
