use super::*;
use crate::host::fake::{FakeClock, FakeStore};
use crate::host::Clock;

const JWKS_A: &[u8] = br#"{"keys":[{"kty":"oct","kid":"a","alg":"HS256","k":"YXBpZ3VhcmQtandrcy1zeW5jLXRlc3Qtc2VjcmV0LWtleS1BLTAxMjM0NTY3ODk"}]}"#;
const JWKS_B: &[u8] = br#"{"keys":[{"kty":"oct","kid":"b","alg":"HS256","k":"YXBpZ3VhcmQtandrcy1zeW5jLXRlc3Qtc2VjcmV0LWtleS1CLTAxMjM0NTY3ODk"},{"kty":"oct","kid":"weak","k":"c2hvcnQ"}]}"#;
const JWKS_DEMO: &[u8] = include_bytes!("../../envoy/demo/jwks.json");
const JWKS_EMPTY: &[u8] = br#"{"keys":[]}"#;
const JWKS_ONLY_WEAK: &[u8] = br#"{"keys":[{"kty":"oct","kid":"weak","k":"c2hvcnQ"}]}"#;

const TICK: u64 = 250;
const REFRESH: u64 = 300_000;
const RETRY: u64 = 10_000;
const TIMEOUT: u64 = 3_000;
const MIN_REFETCH: u64 = 30_000;

fn spec() -> RemoteSpec {
    RemoteSpec {
        provider: "idp".into(),
        cluster: "idp_cluster".into(),
        uri: "https://idp.example.com/keys?v=1".into(),
        discovery: false,
        refresh_ms: REFRESH,
        retry_ms: RETRY,
        timeout_ms: TIMEOUT,
        min_refetch_ms: MIN_REFETCH,
    }
}

fn discovery_spec() -> RemoteSpec {
    RemoteSpec {
        uri: "https://issuer.example.com/realms/main/".into(),
        discovery: true,
        ..spec()
    }
}

/// Several VMs of one Envoy: one store, one clock.
struct Sim {
    store: FakeStore,
    clock: FakeClock,
    vms: Vec<JwksSync>,
    /// Rotates which VM ticks first, so the lease does not always go to the same one.
    turn: u64,
}

impl Sim {
    fn new(n: u64, spec: RemoteSpec) -> Sim {
        Sim {
            store: FakeStore::default(),
            clock: FakeClock::at_secs(1_700_000_000),
            vms: (0..n)
                .map(|i| JwksSync::new(spec.clone(), 0x5eed_0000 + i))
                .collect(),
            turn: 0,
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_millis()
    }

    /// One tick on every VM; the VMs that must fetch, with their requests.
    fn tick(&mut self) -> Vec<(usize, FetchRequest)> {
        let now = self.now();
        let n = self.vms.len();
        // Deterministic pseudo-random first VM.
        self.turn = self
            .turn
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let first = (self.turn >> 33) as usize;
        let mut fetching = Vec::new();
        for k in 0..n {
            let i = (first + k) % n;
            if let Some(req) = self.vms[i].on_tick(now, &self.store) {
                fetching.push((i, req));
            }
        }
        fetching
    }

    /// Advances by one tick period, then ticks.
    fn step(&mut self) -> Vec<(usize, FetchRequest)> {
        self.clock.advance_millis(TICK);
        self.tick()
    }

    /// Ticks until some VM fetches (at most `limit_ms`); exactly one must.
    fn next_fetch(&mut self, limit_ms: u64) -> (usize, FetchRequest) {
        let start = self.now();
        loop {
            let mut got = self.step();
            assert!(got.len() <= 1, "several VMs fetched at once: {got:?}");
            if let Some(one) = got.pop() {
                return one;
            }
            assert!(
                self.now() - start <= limit_ms,
                "nobody fetched in {limit_ms} ms"
            );
        }
    }

    /// Ticks for `ms` and asserts nobody fetches.
    fn quiet_for(&mut self, ms: u64) {
        let end = self.now() + ms;
        while self.now() + TICK <= end {
            let got = self.step();
            assert!(
                got.is_empty(),
                "unexpected fetch at {}: {got:?}",
                self.now()
            );
        }
    }

    fn respond(
        &mut self,
        vm: usize,
        status: Option<u16>,
        body: Option<&[u8]>,
    ) -> (Option<FetchRequest>, Option<FetchEvent>) {
        let now = self.now();
        self.vms[vm].on_response(now, &self.store, status, body)
    }

    fn generation(&self) -> Option<u64> {
        self.vms[0].shared_generation(&self.store)
    }

    fn keys(&self) -> Option<SharedKeys> {
        self.vms[0].shared_keys(&self.store)
    }

    /// First fetch and a good answer: generation 1 is published.
    fn bootstrap(&mut self, body: &[u8]) {
        let (vm, _) = self.next_fetch(1_000);
        let (next, event) = self.respond(vm, Some(200), Some(body));
        assert_eq!(next, None);
        assert!(matches!(
            event,
            Some(FetchEvent::Published { generation: 1, .. })
        ));
    }
}

fn published(event: Option<FetchEvent>) -> (u64, usize, Vec<String>) {
    match event {
        Some(FetchEvent::Published {
            generation,
            keys,
            rejected,
        }) => (generation, keys, rejected),
        other => panic!("expected Published, got {other:?}"),
    }
}

fn failed(event: Option<FetchEvent>) -> String {
    match event {
        Some(FetchEvent::Failed { reason }) => reason,
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[test]
fn validate_uri_accepts_http_and_https_urls() {
    for ok in [
        "https://idp.example.com/keys",
        "http://idp:8080/.well-known/jwks.json",
        "HTTPS://idp.example.com/a/b?x=1&y=2",
        "https://[::1]:8443/jwks",
        "https://idp.example.com/",
    ] {
        assert_eq!(RemoteSpec::validate_uri(ok), Ok(()), "{ok}");
    }
}

#[test]
fn validate_uri_rejects_bad_urls() {
    for bad in [
        "",
        "idp.example.com/keys",
        "ftp://idp.example.com/keys",
        "https:///keys",
        "https://idp.example.com",
        "https://idp.example.com?x=1",
        "https://user:pw@idp.example.com/keys",
        "https://idp.example.com/keys#frag",
        "https://idp.example.com/k eys",
        "https://idp.example.com/kéys",
        "https://idp.example.com/keys\n",
        "https://idp/example.com\\x/keys",
        "https://idp!/keys",
        "https://idp/a|b",
        "https://idp/a{b}",
        "https://idp/\"x\"",
    ] {
        assert!(RemoteSpec::validate_uri(bad).is_err(), "{bad:?} accepted");
    }
    let long = format!("https://idp/{}", "a".repeat(5000));
    assert!(RemoteSpec::validate_uri(&long).is_err());
}

#[test]
fn request_targets_authority_and_path_with_query() {
    let mut sim = Sim::new(1, spec());
    let (_, req) = sim.next_fetch(1_000);
    assert_eq!(
        req,
        FetchRequest {
            cluster: "idp_cluster".into(),
            authority: "idp.example.com".into(),
            path: "/keys?v=1".into(),
            timeout_ms: TIMEOUT,
        }
    );
}

#[test]
fn first_tick_only_creates_the_lease() {
    let mut sim = Sim::new(4, spec());
    // Every VM starts at once and finds no lease: nobody may take it from an absent key.
    assert!(sim.tick().is_empty());
    assert!(sim
        .store
        .get(&format!("{}.lease", sim.vms[0].namespace()))
        .is_some());
    assert_eq!(sim.step().len(), 1);
}

#[test]
fn one_fetch_per_refresh_across_vms() {
    let mut sim = Sim::new(8, spec());
    let mut fetches = 0;
    let mut last_gen = 0;
    let end = sim.now() + 3 * REFRESH + 1_000;
    while sim.now() < end {
        let got = sim.step();
        assert!(got.len() <= 1);
        for (vm, _) in got {
            fetches += 1;
            let (generation, keys, _) = published(sim.respond(vm, Some(200), Some(JWKS_A)).1);
            assert_eq!(generation, last_gen + 1);
            assert_eq!(keys, 1);
            last_gen = generation;
        }
    }
    // At start, then after each of three refresh intervals.
    assert_eq!(fetches, 4);
    assert_eq!(sim.generation(), Some(4));
}

#[test]
fn no_fetch_while_another_vm_holds_the_lease() {
    let mut sim = Sim::new(3, spec());
    let (vm, _) = sim.next_fetch(1_000);
    // The holder waits for its answer; nobody else fetches meanwhile.
    sim.quiet_for(TIMEOUT);
    let (generation, _, _) = published(sim.respond(vm, Some(200), Some(JWKS_A)).1);
    assert_eq!(generation, 1);
    sim.quiet_for(REFRESH - 2 * TICK - TIMEOUT);
}

#[test]
fn lease_expires_when_the_holder_goes_silent() {
    let mut sim = Sim::new(3, spec());
    sim.bootstrap(JWKS_A);
    sim.clock.advance_millis(REFRESH);
    let silent = {
        let now = sim.now();
        let store = &sim.store;
        sim.vms
            .iter_mut()
            .position(|vm| vm.on_tick(now, store).is_some())
            .unwrap()
    };
    // The silent VM's root is gone: it never ticks or answers again.
    let mut survivors = Sim {
        store: std::mem::take(&mut sim.store),
        clock: FakeClock::default(),
        vms: sim
            .vms
            .drain(..)
            .enumerate()
            .filter(|(i, _)| *i != silent)
            .map(|(_, vm)| vm)
            .collect(),
        turn: 0,
    };
    survivors.clock.millis.set(sim.clock.now_millis());
    survivors.quiet_for(TIMEOUT + LEASE_MARGIN_MS - TICK);
    let (vm, _) = survivors.next_fetch(2 * TICK);
    let (generation, _, _) = published(survivors.respond(vm, Some(200), Some(JWKS_B)).1);
    assert_eq!(generation, 2);
    survivors.quiet_for(REFRESH - TICK);
    survivors.next_fetch(2 * TICK);
}

#[test]
fn a_vm_whose_lease_lapsed_abandons_its_call() {
    let mut sim = Sim::new(2, spec());
    sim.bootstrap(JWKS_A);
    sim.clock.advance_millis(REFRESH);
    let (holder, _) = sim.next_fetch(TICK);
    // No answer, and the glue never called on_timeout: the lease lapses.
    sim.clock.advance_millis(TIMEOUT + LEASE_MARGIN_MS);
    let got = sim.tick();
    assert_eq!(got.len(), 1);
    let (taker, _) = got[0].clone();
    if taker != holder {
        // The old call's answer arrives late: ignored, nothing published.
        assert_eq!(sim.respond(holder, Some(200), Some(JWKS_B)), (None, None));
        assert_eq!(sim.generation(), Some(1));
    }
    let (generation, _, _) = published(sim.respond(taker, Some(200), Some(JWKS_B)).1);
    assert_eq!(generation, 2);
}

#[test]
fn failures_keep_last_known_good_keys_and_retry_sooner() {
    let mut sim = Sim::new(4, spec());
    sim.bootstrap(JWKS_A);
    let good = sim.keys().unwrap();
    assert_eq!(good.jwks_json, JWKS_A);
    assert_eq!(good.generation, 1);

    sim.quiet_for(REFRESH - 2 * TICK);
    type Answer<'a> = (Option<u16>, Option<&'a [u8]>, &'a str);
    let bad: [Answer; 8] = [
        (Some(500), Some(JWKS_B), "HTTP status 500"),
        (None, None, "no response"),
        (Some(200), None, "empty body"),
        (Some(200), Some(b"<html>oops</html>"), "not valid JSON"),
        (Some(200), Some(br#"{"nokeys":1}"#), "no \"keys\""),
        (Some(200), Some(JWKS_EMPTY), "no usable key"),
        (Some(200), Some(JWKS_ONLY_WEAK), "no usable key (keys[0]"),
        (Some(304), Some(JWKS_B), "HTTP status 304"),
    ];
    for (status, body, want) in bad {
        let (vm, _) = sim.next_fetch(2 * TICK);
        let reason = failed(sim.respond(vm, status, body).1);
        assert!(reason.contains(want), "{reason:?} lacks {want:?}");
        assert_eq!(sim.keys(), Some(good.clone()));
        assert_eq!(sim.generation(), Some(1));
        // Retried after retry_ms, not after the refresh interval.
        sim.quiet_for(RETRY - TICK);
    }
    let (vm, _) = sim.next_fetch(2 * TICK);
    let (generation, keys, rejected) = published(sim.respond(vm, Some(200), Some(JWKS_B)).1);
    assert_eq!((generation, keys), (2, 1));
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0].contains("weak"), "{rejected:?}");
    // Back to the normal refresh interval.
    sim.quiet_for(REFRESH - TICK);
    sim.next_fetch(2 * TICK);
}

#[test]
fn oversized_body_is_refused() {
    let mut sim = Sim::new(1, spec());
    let (vm, _) = sim.next_fetch(1_000);
    let huge = vec![b' '; MAX_JWKS_BYTES + 1];
    let reason = failed(sim.respond(vm, Some(200), Some(&huge)).1);
    assert!(reason.contains("larger than"), "{reason}");
    assert_eq!(sim.generation(), None);
}

#[test]
fn real_jwks_publishes_all_its_keys() {
    let mut sim = Sim::new(1, spec());
    let (vm, _) = sim.next_fetch(1_000);
    let (generation, keys, rejected) = published(sim.respond(vm, Some(200), Some(JWKS_DEMO)).1);
    assert_eq!(generation, 1);
    assert_eq!(keys, Jwks::parse(JWKS_DEMO).unwrap().jwks.len());
    assert!(keys >= 2);
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(sim.keys().unwrap().jwks_json, JWKS_DEMO);
}

#[test]
fn timeout_releases_the_lease_and_retries() {
    let mut sim = Sim::new(3, spec());
    let (vm, _) = sim.next_fetch(1_000);
    sim.clock.advance_millis(TIMEOUT + 1_000);
    let now = sim.now();
    let reason = failed(sim.vms[vm].on_timeout(now, &sim.store));
    assert!(reason.contains("no response"));
    // A second timeout, or the late answer, is ignored.
    assert_eq!(sim.vms[vm].on_timeout(now, &sim.store), None);
    assert_eq!(sim.respond(vm, Some(200), Some(JWKS_A)), (None, None));
    assert_eq!(sim.generation(), None);
    sim.quiet_for(RETRY - TICK);
    let (vm, _) = sim.next_fetch(2 * TICK);
    published(sim.respond(vm, Some(200), Some(JWKS_A)).1);
}

#[test]
fn unrelated_calls_without_a_fetch_do_nothing() {
    let mut sim = Sim::new(1, spec());
    assert_eq!(sim.respond(0, Some(200), Some(JWKS_A)), (None, None));
    let now = sim.now();
    assert_eq!(sim.vms[0].on_timeout(now, &sim.store), None);
    assert_eq!(sim.generation(), None);
    assert_eq!(sim.keys(), None);
}

#[test]
fn refetch_requests_from_many_workers_cause_one_early_fetch() {
    let mut sim = Sim::new(6, spec());
    sim.bootstrap(JWKS_A);
    sim.quiet_for(60_000);
    let now = sim.now();
    let accepted = sim
        .vms
        .iter()
        .filter(|vm| vm.request_refetch(now, &sim.store))
        .count();
    assert_eq!(accepted, 1);
    let (vm, _) = sim.next_fetch(TICK);
    published(sim.respond(vm, Some(200), Some(JWKS_B)).1);
    // Consumed: no second early fetch.
    sim.quiet_for(MIN_REFETCH);

    // Rate limited process-wide: within min_refetch_ms of the last accepted request.
    for vm in &sim.vms {
        assert!(!vm.request_refetch(now + MIN_REFETCH - 1, &sim.store));
    }
    let later = sim.now();
    assert!(later >= now + MIN_REFETCH);
    assert!(sim.vms[3].request_refetch(later, &sim.store));
    assert!(!sim.vms[4].request_refetch(later + 1, &sim.store));
    let (vm, _) = sim.next_fetch(TICK);
    published(sim.respond(vm, Some(200), Some(JWKS_A)).1);
    assert_eq!(sim.generation(), Some(3));
}

#[test]
fn refetch_during_a_fetch_is_honored_after_it() {
    let min_refetch = 1_000;
    let mut sim = Sim::new(
        3,
        RemoteSpec {
            min_refetch_ms: min_refetch,
            ..spec()
        },
    );
    sim.bootstrap(JWKS_A);
    sim.quiet_for(60_000);
    let now = sim.now();
    assert!(sim.vms[0].request_refetch(now, &sim.store));
    let (vm, _) = sim.next_fetch(TICK);
    // The key rotates after this fetch started; a token with the new kid asks again
    // while the fetch is still in flight.
    sim.clock.advance_millis(min_refetch);
    let now = sim.now();
    assert!(sim.vms[2].request_refetch(now, &sim.store));
    published(sim.respond(vm, Some(200), Some(JWKS_A)).1);
    let (vm, _) = sim.next_fetch(TICK);
    published(sim.respond(vm, Some(200), Some(JWKS_B)).1);
    sim.quiet_for(MIN_REFETCH);
}

#[test]
fn refetch_is_honored_after_a_failure_too() {
    let mut sim = Sim::new(2, spec());
    let (vm, _) = sim.next_fetch(1_000);
    failed(sim.respond(vm, Some(503), Some(b"busy")).1);
    let now = sim.now() + 1;
    assert!(sim.vms[1].request_refetch(now, &sim.store));
    // Early: before retry_ms elapsed.
    sim.next_fetch(TICK);
}

#[test]
fn discovery_then_jwks() {
    let mut sim = Sim::new(3, discovery_spec());
    let (vm, req) = sim.next_fetch(1_000);
    assert_eq!(req.authority, "issuer.example.com");
    assert_eq!(req.path, "/realms/main/.well-known/openid-configuration");
    let doc = br#"{"issuer":"https://issuer.example.com/realms/main","jwks_uri":"https://keys.example.com/realms/main/certs?x=1"}"#;
    let (next, event) = sim.respond(vm, Some(200), Some(doc));
    assert_eq!(event, None);
    let next = next.unwrap();
    assert_eq!(next.cluster, "idp_cluster");
    assert_eq!(next.authority, "keys.example.com");
    assert_eq!(next.path, "/realms/main/certs?x=1");
    // Still the lease holder: nobody else starts a fetch during the second request.
    sim.quiet_for(TIMEOUT);
    let (generation, _, _) = published(sim.respond(vm, Some(200), Some(JWKS_A)).1);
    assert_eq!(generation, 1);

    // The same VM refreshes straight from the cached jwks_uri; others discover first.
    let mut cached = vec![false; sim.vms.len()];
    cached[vm] = true;
    let mut seen = [false, false];
    for _ in 0..6 {
        sim.quiet_for(REFRESH - 2 * TICK);
        let (who, req) = sim.next_fetch(2 * TICK);
        if cached[who] {
            assert_eq!(req.path, "/realms/main/certs?x=1");
            seen[0] = true;
        } else {
            assert!(req.path.ends_with(WELL_KNOWN), "{req:?}");
            seen[1] = true;
            let next = sim.respond(who, Some(200), Some(doc)).0.unwrap();
            assert_eq!(next.path, "/realms/main/certs?x=1");
            cached[who] = true;
        }
        published(sim.respond(who, Some(200), Some(JWKS_A)).1);
    }
    assert_eq!(seen, [true, true]);
}

#[test]
fn discovery_lease_is_renewed_for_the_second_request() {
    let mut sim = Sim::new(2, discovery_spec());
    let (vm, _) = sim.next_fetch(1_000);
    // The discovery answer comes late, close to the end of the first lease.
    sim.clock.advance_millis(TIMEOUT + LEASE_MARGIN_MS - 10);
    let doc = br#"{"jwks_uri":"https://issuer.example.com/certs"}"#;
    assert!(sim.respond(vm, Some(200), Some(doc)).0.is_some());
    sim.quiet_for(TIMEOUT + LEASE_MARGIN_MS - TICK);
    published(sim.respond(vm, Some(200), Some(JWKS_A)).1);
}

#[test]
fn discovery_document_path_is_kept_when_given() {
    let spec = RemoteSpec {
        uri: "https://issuer.example.com/.well-known/openid-configuration".into(),
        ..discovery_spec()
    };
    let mut sim = Sim::new(1, spec);
    assert_eq!(sim.next_fetch(1_000).1.path, WELL_KNOWN);
    let spec = RemoteSpec {
        uri: "https://issuer.example.com/".into(),
        ..discovery_spec()
    };
    let mut sim = Sim::new(1, spec);
    assert_eq!(sim.next_fetch(1_000).1.path, WELL_KNOWN);
}

#[test]
fn bad_discovery_documents_fail_and_keep_keys() {
    let mut sim = Sim::new(1, discovery_spec());
    let (vm, _) = sim.next_fetch(1_000);
    let doc = br#"{"jwks_uri":"https://issuer.example.com/certs"}"#;
    let next = sim.respond(vm, Some(200), Some(doc)).0.unwrap();
    assert_eq!(next.path, "/certs");
    published(sim.respond(vm, Some(200), Some(JWKS_A)).1);
    let good = sim.keys().unwrap();

    // The refresh uses the cached jwks_uri; its failure drops the cache, so from then on
    // every attempt starts with discovery.
    sim.quiet_for(REFRESH - 2 * TICK);
    let (vm, req) = sim.next_fetch(2 * TICK);
    assert_eq!(req.path, "/certs");
    failed(sim.respond(vm, Some(500), None).1);
    sim.quiet_for(RETRY - TICK);
    let (vm, req) = sim.next_fetch(2 * TICK);
    assert!(req.path.ends_with(WELL_KNOWN), "{req:?}");
    let reason = failed(sim.respond(vm, Some(404), None).1);
    assert_eq!(reason, "discovery: HTTP status 404");
    sim.quiet_for(RETRY - TICK);

    let bad: [(&[u8], &str); 5] = [
        (b"not json", "not valid JSON"),
        (br#"{"issuer":"x"}"#, "no \"jwks_uri\""),
        (br#"{"jwks_uri":42}"#, "no \"jwks_uri\""),
        (br#"{"jwks_uri":"ftp://x/keys"}"#, "scheme"),
        (br#"[1,2]"#, "no \"jwks_uri\""),
    ];
    for (doc, want) in bad {
        let (vm, req) = sim.next_fetch(2 * TICK);
        assert!(req.path.ends_with(WELL_KNOWN), "{req:?}");
        let (next, event) = sim.respond(vm, Some(200), Some(doc));
        assert_eq!(next, None);
        let reason = failed(event);
        assert!(reason.starts_with("discovery: "), "{reason}");
        assert!(reason.contains(want), "{reason:?} lacks {want:?}");
        assert_eq!(sim.keys(), Some(good.clone()));
        sim.quiet_for(RETRY - TICK);
    }
    // Discovery timing out is a failure too.
    let (vm, _) = sim.next_fetch(2 * TICK);
    let now = sim.now();
    assert!(failed(sim.vms[vm].on_timeout(now, &sim.store)).starts_with("discovery: "));
    assert_eq!(sim.generation(), Some(1));
}

#[test]
fn failed_jwks_fetch_rediscovers() {
    let mut sim = Sim::new(1, discovery_spec());
    let (_, req) = sim.next_fetch(1_000);
    assert!(req.path.ends_with(WELL_KNOWN));
    let doc = br#"{"jwks_uri":"https://issuer.example.com/old-certs"}"#;
    assert_eq!(
        sim.respond(0, Some(200), Some(doc)).0.unwrap().path,
        "/old-certs"
    );
    failed(sim.respond(0, Some(404), Some(b"gone")).1);
    sim.quiet_for(RETRY - TICK);
    let (_, req) = sim.next_fetch(2 * TICK);
    assert!(req.path.ends_with(WELL_KNOWN));
    let doc = br#"{"jwks_uri":"https://issuer.example.com/new-certs"}"#;
    assert_eq!(
        sim.respond(0, Some(200), Some(doc)).0.unwrap().path,
        "/new-certs"
    );
    published(sim.respond(0, Some(200), Some(JWKS_A)).1);
    // Cached now: the next refresh skips discovery.
    sim.quiet_for(REFRESH - TICK);
    assert_eq!(sim.next_fetch(2 * TICK).1.path, "/new-certs");
}

#[test]
fn generation_changes_once_per_publish_and_readers_see_it() {
    let mut sim = Sim::new(4, spec());
    assert_eq!(sim.generation(), None);
    assert_eq!(sim.keys(), None);
    let mut seen = Vec::new();
    for (i, body) in [JWKS_A, JWKS_B, JWKS_A].into_iter().enumerate() {
        let (vm, _) = sim.next_fetch(REFRESH + TICK);
        let before = sim.generation();
        failed(sim.respond(vm, Some(200), Some(JWKS_EMPTY)).1);
        assert_eq!(sim.generation(), before);
        let (vm, _) = sim.next_fetch(RETRY + TICK);
        let (generation, _, _) = published(sim.respond(vm, Some(200), Some(body)).1);
        assert_eq!(generation, i as u64 + 1);
        for reader in &sim.vms {
            assert_eq!(reader.shared_generation(&sim.store), Some(generation));
            let keys = reader.shared_keys(&sim.store).unwrap();
            assert_eq!(keys.generation, generation);
            assert_eq!(keys.fetched_at_ms, sim.now());
            assert_eq!(keys.jwks_json, body);
        }
        seen.push(generation);
    }
    assert_eq!(seen, [1, 2, 3]);
}

#[test]
fn unchanged_spec_keeps_keys_across_reloads_and_changed_spec_starts_fresh() {
    let mut sim = Sim::new(2, spec());
    sim.bootstrap(JWKS_A);
    let ns = sim.vms[0].namespace().to_string();

    // Policy reload: new VMs state (new nonces), same source: keys are there, no fetch.
    sim.vms = (0..2)
        .map(|i| JwksSync::new(spec(), 0xbeef_0000 + i))
        .collect();
    assert_eq!(sim.vms[0].namespace(), ns);
    assert_eq!(sim.generation(), Some(1));
    sim.quiet_for(60_000);

    // A changed source gets its own namespace and fetches at once.
    let changed = [
        RemoteSpec {
            uri: "https://idp.example.com/keys?v=2".into(),
            ..spec()
        },
        RemoteSpec {
            cluster: "other_cluster".into(),
            ..spec()
        },
        RemoteSpec {
            discovery: true,
            ..spec()
        },
        RemoteSpec {
            provider: "idp2".into(),
            ..spec()
        },
    ];
    for spec in changed {
        let fresh = JwksSync::new(spec, 7);
        assert_ne!(fresh.namespace(), ns);
        assert_eq!(fresh.shared_generation(&sim.store), None);
        assert_eq!(fresh.shared_keys(&sim.store), None);
    }
    // Intervals are not part of the namespace.
    let retuned = RemoteSpec {
        refresh_ms: 1,
        retry_ms: 2,
        timeout_ms: 3,
        min_refetch_ms: 4,
        ..spec()
    };
    assert_eq!(JwksSync::new(retuned, 7).namespace(), ns);

    let mut fresh = Sim {
        store: std::mem::take(&mut sim.store),
        clock: FakeClock::default(),
        vms: vec![JwksSync::new(
            RemoteSpec {
                uri: "https://idp.example.com/keys?v=2".into(),
                ..spec()
            },
            9,
        )],
        turn: 0,
    };
    fresh.clock.millis.set(sim.now());
    let (_, req) = fresh.next_fetch(1_000);
    assert_eq!(req.path, "/keys?v=2");
    let (generation, _, _) = published(fresh.respond(0, Some(200), Some(JWKS_B)).1);
    assert_eq!(generation, 1);
    // The old provider's keys are untouched.
    let old = JwksSync::new(spec(), 1);
    assert_eq!(old.shared_keys(&fresh.store).unwrap().jwks_json, JWKS_A);
}

#[test]
fn unreadable_lease_record_is_replaced() {
    let mut sim = Sim::new(2, spec());
    let key = format!("{}.lease", sim.vms[0].namespace());
    sim.store.set(&key, b"something else", None).unwrap();
    assert!(sim.tick().is_empty());
    assert!(Lease::decode(&sim.store.get(&key).unwrap().0).is_some());
    assert_eq!(sim.step().len(), 1);
}

#[test]
fn a_created_lease_cannot_be_taken_before_it_settles() {
    let mut sim = Sim::new(3, spec());
    let now = sim.now();
    // VM 2 reads "absent" first, VM 0 creates the lease, VM 1 sees it at once: too early.
    let key = format!("{}.lease", sim.vms[0].namespace());
    assert!(sim.store.get(&key).is_none());
    assert_eq!(sim.vms[0].on_tick(now, &sim.store), None);
    assert_eq!(sim.vms[1].on_tick(now + 1, &sim.store), None);
    // A refetch request does not bypass the barrier either.
    assert!(sim.vms[1].request_refetch(now + 1, &sim.store));
    assert_eq!(
        sim.vms[1].on_tick(now + LEASE_CREATE_SETTLE_MS - 1, &sim.store),
        None
    );
    // VM 2's late "create" lands: still nobody held the lease, so nothing is clobbered.
    sim.store
        .set(
            &key,
            &Lease {
                until_ms: now + LEASE_CREATE_SETTLE_MS,
                ..Lease::default()
            }
            .encode(),
            None,
        )
        .unwrap();
    let later = now + LEASE_CREATE_SETTLE_MS;
    let winners: Vec<usize> = (0..3)
        .filter(|&i| sim.vms[i].on_tick(later, &sim.store).is_some())
        .collect();
    assert_eq!(winners.len(), 1);
}

#[test]
fn records_round_trip_and_reject_other_formats() {
    let lease = Lease {
        holder: 1,
        until_ms: 2,
        next_due_ms: 3,
        last_start_ms: u64::MAX,
    };
    assert_eq!(Lease::decode(&lease.encode()), Some(lease));
    assert_eq!(Lease::decode(&lease.encode()[..35]), None);
    assert_eq!(Lease::decode(b""), None);
    assert_eq!(decode_u64(GEN_MAGIC, &encode_u64(GEN_MAGIC, 42)), Some(42));
    assert_eq!(decode_u64(GEN_MAGIC, &encode_u64(REFETCH_MAGIC, 42)), None);
    assert_eq!(decode_u64(GEN_MAGIC, b"AGG1"), None);
    let keys = decode_keys(&encode_keys(5, 6, b"{}")).unwrap();
    assert_eq!(
        keys,
        SharedKeys {
            generation: 5,
            fetched_at_ms: 6,
            jwks_json: b"{}".to_vec()
        }
    );
    assert_eq!(decode_keys(b"AGK1short"), None);
    assert_eq!(decode_keys(b"XXXX0000000000000000"), None);
}

#[test]
fn namespace_names_provider_and_hash() {
    let vm = JwksSync::new(spec(), 1);
    let ns = vm.namespace();
    let hash = ns.strip_prefix("apiguard.jwks.idp.").unwrap();
    assert_eq!(hash.len(), 16);
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(vm.spec(), &spec());
}

#[test]
fn invalid_spec_never_fetches() {
    let mut sim = Sim::new(
        2,
        RemoteSpec {
            uri: "not a uri".into(),
            ..spec()
        },
    );
    sim.quiet_for(10_000);
}
