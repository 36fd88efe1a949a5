//! The `apiguard` command line: `check` validates exactly as the filter does, `token` mints
//! tokens the demo policy accepts.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]
use std::process::Command;

fn apiguard(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_apiguard"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run apiguard");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_policy_passes_check() {
    let (code, out, err) = apiguard(&["check", "envoy/demo/policy.yaml"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok"), "{out}");
    // The demo's access logs print the record: its policy turns it on.
    assert!(out.contains("decision record on"), "{out}");
}

#[test]
fn broken_policy_fails_with_every_path() {
    let dir = std::env::temp_dir().join(format!("apiguard-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broken.yaml");
    std::fs::write(
        &file,
        "providers:\n  - name: p\n    issuer: 5\n    jwks: {inline: {keys: []}}\nroutes:\n  - name: r\n    match: {path: /x}\n    providers: [nope]\n  - name: s\n    match: {prefix: /y}\n    public: true\n    bogus: 1\n",
    )
    .unwrap();
    let (code, _, err) = apiguard(&["check", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("providers[0].issuer"), "{err}");
    assert!(err.contains("routes[0].providers[0]"), "{err}");
    assert!(
        err.contains("routes[1].bogus") || err.contains("routes[1]: unknown field `bogus`"),
        "{err}"
    );
}

#[test]
fn minted_demo_tokens_verify_against_the_demo_policy() {
    use apiguard::policy::{KeySource, Policy};
    let policy = Policy::from_yaml(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/envoy/demo/policy.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    let provider = &policy.providers[0];
    let KeySource::Inline(jwks) = &provider.keys else {
        panic!("inline keys")
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for alg in ["RS256", "ES256", "ES384", "EdDSA", "HS256"] {
        let (code, out, err) = apiguard(&["token", "--alg", alg, "--scope", "items:read"]);
        assert_eq!(code, 0, "{alg}: {err}");
        let verified = apiguard::jwt::verify(
            out.trim(),
            jwks,
            &provider.rules,
            now,
            &apiguard::host::NoHostCrypto,
        );
        assert!(verified.is_ok(), "{alg}: {verified:?}");
    }
}

/// Every description kept as test data imports with the test overlay into a policy that
/// `check` accepts; the doc's worked example too.
#[test]
fn openapi_descriptions_import_into_policies_check_accepts() {
    let dir = std::env::temp_dir().join(format!("apiguard-cli-openapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "e2e/openapi/specs/spacetraders.io.json",
            "e2e/openapi/overlay.yaml",
            40,
        ),
        (
            "e2e/openapi/specs/codat.io-sync-for-commerce.json",
            "e2e/openapi/overlay.yaml",
            17,
        ),
        (
            "e2e/openapi/specs/exoapi.dev.json",
            "e2e/openapi/overlay.yaml",
            4,
        ),
        (
            "e2e/openapi/specs/storecove.com.json",
            "e2e/openapi/overlay.yaml",
            29,
        ),
        (
            "e2e/openapi/specs/fulfillment.com.yaml",
            "e2e/openapi/overlay.yaml",
            13,
        ),
        (
            "docs/examples/openapi/shop.yaml",
            "docs/examples/openapi/shop-overlay.yaml",
            5,
        ),
    ];
    for (i, (spec, overlay, ops)) in cases.iter().enumerate() {
        let (code, out, err) = apiguard(&["openapi", spec, "--overlay", overlay]);
        assert_eq!(code, 0, "{spec}: {err}");
        assert!(
            err.contains(&format!("{ops} operation(s) -> {ops} route(s)")),
            "{spec}: {err}"
        );
        let file = dir.join(format!("policy-{i}.yaml"));
        std::fs::write(&file, out).unwrap();
        let (code, out, err) = apiguard(&["check", file.to_str().unwrap()]);
        assert_eq!(code, 0, "{spec}: {out}{err}");
    }
}

#[test]
fn openapi_without_the_needed_overlay_says_what_to_add() {
    let (code, _, err) = apiguard(&["openapi", "e2e/openapi/specs/spacetraders.io.json"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("AgentToken: add a JWT provider to the overlay"),
        "{err}"
    );
}
