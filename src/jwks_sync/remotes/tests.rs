use super::*;
use crate::host::fake::FakeStore;
use serde_json::json;

const NOW: u64 = 1_700_000_000_000;
const JWKS: &[u8] = br#"{"keys":[{"kty":"oct","kid":"a","alg":"HS256","k":"YXBpZ3VhcmQtandrcy1zeW5jLXRlc3Qtc2VjcmV0LWtleS1BLTAxMjM0NTY3ODk"},{"kty":"oct","kid":"weak","k":"c2hvcnQ"}]}"#;

/// An inline provider first, so the remote one is provider 1 but remote 0.
fn policy() -> Rc<Policy> {
    let remote = json!({"remote": {"cluster": "idp", "uri": "http://idp.test/jwks.json",
                                   "refresh_seconds": 300, "retry_seconds": 1, "timeout_ms": 1000}});
    let p = json!({
        "providers": [
            {"name": "inline", "issuer": "https://inline.test",
             "jwks": {"inline": {"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256",
                                           "k": "YXBpZ3VhcmQtdW5pdC10ZXN0cy1obWFjLWtleS0zMmI"}]}}},
            {"name": "idp", "issuer": "https://idp.test", "jwks": remote},
        ],
        "routes": [{"name": "r", "match": {"prefix": "/"}, "providers": ["inline", "idp"]}],
    });
    Rc::new(Policy::try_from(p).unwrap_or_else(|e| panic!("{e:?}")))
}

/// Ticks every 250 ms until the remote fetches (this VM takes the fetch lease first);
/// the fetch and the time it started.
fn first_fetch(remotes: &mut Remotes, store: &FakeStore) -> (Fetch, u64) {
    let mut now = NOW;
    loop {
        let steps = remotes.on_tick(now, store);
        assert!(steps.reports.is_empty());
        assert!(steps.fetches.len() <= 1, "{steps:?}");
        if let Some(fetch) = steps.fetches.into_iter().next() {
            return (fetch, now);
        }
        assert!(now < NOW + 5_000, "no fetch within 5 s");
        now += 250;
    }
}

#[test]
fn only_remote_providers_are_driven_and_a_tick_starts_their_fetch() {
    let mut remotes = Remotes::new(&policy(), 7);
    assert!(!remotes.is_empty());
    let store = FakeStore::default();
    let (fetch, _) = first_fetch(&mut remotes, &store);
    assert_eq!(fetch.remote, 0);
    assert_eq!(fetch.request.cluster, "idp");
    assert_eq!(
        fetch.headers(),
        vec![
            (":method", "GET"),
            (":path", "/jwks.json"),
            (":authority", "idp.test"),
            ("accept", "application/json"),
            ("user-agent", "apiguard"),
        ]
    );
}

#[test]
fn a_call_in_flight_is_not_repeated_and_fails_past_its_timeout_and_grace() {
    let mut remotes = Remotes::new(&policy(), 7);
    let store = FakeStore::default();
    let (fetch, now) = first_fetch(&mut remotes, &store);
    remotes.dispatched(42, &fetch, now);
    let deadline = now + fetch.request.timeout_ms + DEADLINE_GRACE_MS;
    assert_eq!(remotes.on_tick(deadline, &store), Steps::default());
    let steps = remotes.on_tick(deadline + 1, &store);
    assert_eq!(steps.reports.len(), 1);
    assert_eq!(steps.reports[0].counter, "apiguard.jwks.idp.fetch_failure");
    // A late answer to the expired call is no longer ours.
    assert_eq!(remotes.take(42), None);
}

#[test]
fn a_published_jwks_is_reported_and_installed_into_the_engine() {
    let policy = policy();
    let mut engine = Engine::new(policy.clone());
    let mut remotes = Remotes::new(&policy, 7);
    let store = FakeStore::default();
    remotes.install_new_keys(&store, &mut engine);
    assert_eq!(engine.keys_generation(1), None, "nothing published yet");

    let (fetch, now) = first_fetch(&mut remotes, &store);
    remotes.dispatched(9, &fetch, now);
    assert_eq!(remotes.take(8), None, "not our token");
    let remote = remotes.take(9).unwrap();
    let steps = remotes.on_response(remote, now + 5, &store, Some(200), Some(JWKS));
    assert!(steps.fetches.is_empty());
    let report = &steps.reports[0];
    assert_eq!(report.counter, "apiguard.jwks.idp.fetch_success");
    assert_eq!(report.lines[0].0, LogAt::Info);
    assert!(report.lines[0]
        .1
        .starts_with("apiguard: JWKS of `idp` published: 1 key(s)"));
    assert_eq!(
        report.lines[1].0,
        LogAt::Warn,
        "the weak key is skipped: {report:?}"
    );

    remotes.install_new_keys(&store, &mut engine);
    let generation = engine.keys_generation(1);
    assert!(generation.is_some());
    // Another VM's view of the same store installs the same generation.
    let mut other_engine = Engine::new(policy.clone());
    Remotes::new(&policy, 8).install_new_keys(&store, &mut other_engine);
    assert_eq!(other_engine.keys_generation(1), generation);
    // A VM whose tick has not come yet loads them when a request needs them.
    let mut third_engine = Engine::new(policy.clone());
    Remotes::new(&policy, 9).install_missing_keys(&store, &mut third_engine);
    assert_eq!(third_engine.keys_generation(1), generation);
}

#[test]
fn a_vm_that_has_its_keys_reads_nothing_before_a_request() {
    let policy = policy();
    let mut engine = Engine::new(policy.clone());
    let mut remotes = Remotes::new(&policy, 7);
    let store = FakeStore::default();
    remotes.install_missing_keys(&store, &mut engine);
    assert_eq!(engine.keys_generation(1), None, "nothing published yet");
    engine.set_keys(1, Rc::new(Jwks::parse(JWKS).unwrap().jwks), 41);
    // Another generation is published: a VM that has keys leaves it to its next tick.
    let (fetch, now) = first_fetch(&mut remotes, &store);
    remotes.dispatched(9, &fetch, now);
    let remote = remotes.take(9).unwrap();
    remotes.on_response(remote, now + 5, &store, Some(200), Some(JWKS));
    remotes.install_missing_keys(&store, &mut engine);
    assert_eq!(
        engine.keys_generation(1),
        Some(41),
        "keys present: the store is not read"
    );
}

#[test]
fn a_failed_response_or_dispatch_is_a_failure_report_naming_the_provider() {
    let mut remotes = Remotes::new(&policy(), 7);
    let store = FakeStore::default();
    let (fetch, now) = first_fetch(&mut remotes, &store);
    let report = remotes.dispatch_failed(&fetch, now, &store).unwrap();
    assert_eq!(report.counter, "apiguard.jwks.idp.fetch_failure");
    assert_eq!(report.lines.len(), 1);
    assert!(report.lines[0].1.contains("keeping the last good keys"));

    let mut remotes = Remotes::new(&policy(), 7);
    let store = FakeStore::default();
    let (fetch, now) = first_fetch(&mut remotes, &store);
    remotes.dispatched(1, &fetch, now);
    let steps = remotes.on_response(0, now + 5, &store, Some(503), Some(b"down"));
    assert_eq!(steps.reports[0].counter, "apiguard.jwks.idp.fetch_failure");
}

#[test]
fn the_status_header_is_a_number_or_nothing() {
    assert_eq!(parse_status(Some(b"200")), Some(200));
    assert_eq!(parse_status(Some(b"2x0")), None);
    assert_eq!(parse_status(Some(b"\xff")), None);
    assert_eq!(parse_status(None), None);
}
