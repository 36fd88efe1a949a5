use super::*;
use serde_json::json;

const KEY_K: &str = "YXBpZ3VhcmQtdW5pdC10ZXN0cy1obWFjLWtleS0zMmI";

fn jwks() -> Value {
    json!({"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256", "k": KEY_K}]})
}

fn errors(v: Value) -> Vec<String> {
    match Policy::try_from(v) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

fn has(errs: &[String], prefix: &str) -> bool {
    errs.iter().any(|e| e.starts_with(prefix))
}

#[test]
fn minimal_policy_compiles_with_defaults() {
    let p = Policy::try_from(json!({
        "providers": [{"name": "p", "issuer": "i", "jwks": {"inline": jwks()}}],
        "routes": [{"name": "r", "match": {"prefix": "/"}, "providers": ["p"]}]
    }))
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(p.realm, "apiguard");
    assert_eq!(p.unmatched, Unmatched::Deny);
    assert!(
        !p.decision_record,
        "the record is opt-in: a host call per request"
    );
    assert!(!p.hold_headers_for_body && !p.ratelimit_headers_on_allow);
    let prov = &p.providers[0];
    assert_eq!(prov.rules.clock_skew_secs, 60);
    assert!(prov.rules.require_exp);
    assert!(!prov.forward, "tokens are not forwarded by default");
    assert_eq!(p.method_override, MethodOverride::Refuse);
    assert_eq!(
        prov.sources,
        vec![TokenSource::Header {
            name: "authorization".into(),
            prefix: Some("Bearer ".into())
        }]
    );
}

#[test]
fn inline_jwks_may_be_a_json_string() {
    let p = Policy::try_from(json!({
        "providers": [{"name": "p", "issuer": "i", "jwks": {"inline": jwks().to_string()}}],
    }));
    assert!(p.is_ok());
}

#[test]
fn every_error_is_reported_at_once_with_its_path() {
    let errs = errors(json!({
        "realm": "a\"b",
        "bogus": 1,
    }));
    // Top-level shape errors stop before item parsing.
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("bogus") || errs[0].contains("bogus"),
        "{errs:?}"
    );

    let errs = errors(json!({
        "realm": "a\"b",
        "providers": [
            {"name": "p", "issuer": 5, "jwks": {"inline": jwks()}},
            {"name": "q", "issuer": "i", "jwks": {"inline": jwks()}, "algorithms": ["RS256", "none"], "extra": true},
            {"name": "r", "issuer": "i", "jwks": {"inline": jwks(), "remote": {"cluster": "c", "uri": "http://x/j"}}},
            {"name": "s", "issuer": "i", "jwks": {"remote": {"cluster": "", "uri": "ftp://x", "timeout_ms": 5}}},
            {"name": "t", "issuer": "i", "jwks": {"inline": jwks()}, "from": [{"header": "x", "query": "y"}],
             "claims_to_headers": [{"claim": "sub", "header": "bad header"}]}
        ],
        "routes": [
            {"name": "a", "match": {"path": "/x", "prefix": "/y"}, "providers": ["nope"]},
            {"name": "b", "match": {"path": "/x/{id}", "methods": ["G3T"]}, "public": true, "scopes": {"all_of": ["s"]}},
            {"name": "c", "match": {"path": "/x"}},
            {"name": "c", "match": {"path": "/y"}, "public": true, "unknown": 1}
        ]
    }));
    for want in [
        "realm:",
        "providers[0].issuer:",
        "providers[1].extra",
        "providers[2].jwks:",
        "providers[3].jwks.remote.cluster:",
        "providers[3].jwks.remote.uri:",
        "providers[3].jwks.remote.timeout_ms:",
        "providers[4].from[0]:",
        "providers[4].claims_to_headers[0].header:",
        "routes[0].match:",
        "routes[0].providers[0]:",
        "routes[1].match.methods[0]:",
        "routes[1].scopes:",
        "routes[2].providers:",
        "routes[3].unknown",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(want) || e.contains(want)),
            "missing {want} in {errs:#?}"
        );
    }
}

/// `decision_record` is whatever the policy says; anything but a bool is refused with its
/// path.
#[test]
fn decision_record_is_opt_in() {
    let with = |record: Value| {
        Policy::try_from(json!({
            "decision_record": record,
            "routes": [{"name": "r", "match": {"prefix": "/"}, "public": true}]
        }))
    };
    let on = with(json!(true)).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(on.decision_record);
    // What `apiguard check` and the `policy loaded` log line say.
    assert_eq!(
        on.summary(),
        "0 provider(s), 1 route(s), decision record on"
    );
    let off = with(json!(false)).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(!off.decision_record);
    assert_eq!(
        off.summary(),
        "0 provider(s), 1 route(s), decision record off"
    );
    let errs = errors(json!({"decision_record": "yes"}));
    assert!(
        errs.iter().any(|e| e.contains("decision_record")),
        "{errs:?}"
    );
}

#[test]
fn unknown_algorithm_names_the_entry() {
    let errs = errors(json!({
        "providers": [{"name": "p", "issuer": "i", "jwks": {"inline": jwks()}, "algorithms": ["HS256", "none"]}]
    }));
    assert!(has(&errs, "providers[0].algorithms[1]:"), "{errs:?}");
}

#[test]
fn weak_inline_keys_are_config_errors() {
    let short = json!({"keys": [{"kty": "oct", "kid": "k", "alg": "HS256", "k": "c2hvcnQ"}]});
    let errs =
        errors(json!({"providers": [{"name": "p", "issuer": "i", "jwks": {"inline": short}}]}));
    assert!(has(&errs, "providers[0].jwks.inline:"), "{errs:?}");
}

#[test]
fn duplicate_names_are_errors() {
    let errs = errors(json!({
        "providers": [
            {"name": "p", "issuer": "i", "jwks": {"inline": jwks()}},
            {"name": "p", "issuer": "j", "jwks": {"inline": jwks()}}
        ],
        "routes": [
            {"name": "r", "match": {"path": "/a"}, "public": true},
            {"name": "r", "match": {"path": "/b"}, "public": true}
        ]
    }));
    assert!(has(&errs, "providers[1].name:"), "{errs:?}");
    assert!(has(&errs, "routes[1].name:"), "{errs:?}");
}

#[test]
fn owned_headers_collect_claim_and_payload_headers() {
    let p = Policy::try_from(json!({
        "providers": [{"name": "p", "issuer": "i", "jwks": {"inline": jwks()},
            "claims_to_headers": [{"claim": "sub", "header": "X-User"}],
            "forward_payload_header": "x-payload"}]
    }))
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(p.owned_headers, vec!["x-payload", "x-user"]);
}

// YAML parsing is native-only (the CLI); the module receives JSON.
#[cfg(not(target_arch = "wasm32"))]
#[test]
fn yaml_and_json_give_the_same_policy() {
    let yaml = format!(
        "providers:\n  - name: p\n    issuer: i\n    jwks:\n      inline: '{}'\nroutes:\n  - name: r\n    match: {{prefix: /}}\n    providers: [p]\n",
        jwks()
    );
    let p = Policy::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(p.routes.len(), 1);
}

#[test]
fn method_override_takes_refuse_or_honor() {
    let ok = Policy::try_from(json!({"method_override": "honor"})).map(|p| p.method_override);
    assert_eq!(ok.ok(), Some(MethodOverride::Honor));
    let errs = errors(json!({"method_override": "maybe"}));
    assert!(
        errs.iter().any(|e| e.starts_with("method_override")),
        "{errs:?}"
    );
}

/// Validation and the rest of the policy share one error type: a policy with mistakes in
/// both reports them all at once, each with its JSON path, in policy order.
#[test]
fn validation_and_policy_errors_are_reported_together() {
    let errs = errors(json!({
        "realm": "a\"b",
        "request_limits": {"max_headers": 0},
        "routes": [{"name": "r", "match": {"path": "/items/{id}"}, "public": true,
            "validate": {"query": {"n": {"type": "integer", "pattern": "x"}},
                "body": {"max_bytes": 0, "schema": {"type": 3}}}}]
    }));
    assert_eq!(
        errs.iter()
            .map(|e| e.split(": ").next().unwrap_or_default())
            .collect::<Vec<_>>(),
        [
            "realm",
            "request_limits.max_headers",
            "routes[0].validate.query.n.pattern",
            "routes[0].validate.body.max_bytes",
            "routes[0].validate.body.schema.type",
        ],
        "{errs:?}"
    );
}

#[test]
fn api_key_digests_are_exactly_64_hex_digits() {
    let policy = |digest: &str| json!({"api_keys": [{"name": "k", "keys": [{"sha256": digest, "client_id": "c"}]}]});
    let good = "ab".repeat(32);
    assert!(errors(policy(&good)).is_empty());
    assert!(errors(policy(&format!(" {} ", good.to_uppercase()))).is_empty());
    for bad in [
        "ab".repeat(31),
        format!("+{}", &good[1..]),
        format!("{}zz", &good[2..]),
        "é".repeat(32),
    ] {
        assert!(
            has(&errors(policy(&bad)), "api_keys[0].keys[0].sha256"),
            "{bad}"
        );
    }
}
