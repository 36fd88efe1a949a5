//! GitHub's REST API as an apiguard policy (`make openapi-bench`; the description comes from
//! `make openapi-github`): how long the import and the policy compile take natively (the
//! compile is what `on_configure` does in each Wasm VM, where it runs slower), and the
//! route lookup over its 1,223 routes, most of them under `/repos/{owner}/{repo}/...`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use apiguard::policy::Policy;
use criterion::{criterion_group, criterion_main, Criterion};

fn github_policy() -> Option<serde_json::Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/openapi/api.github.com.json");
    let text = std::fs::read_to_string(&path).ok()?;
    let spec = apiguard::openapi::parse_document(&text).unwrap();
    let overlay = serde_json::json!({});
    let t = Instant::now();
    let import = apiguard::openapi::import(&spec, Some(&overlay)).unwrap();
    println!(
        "import: {} operations -> {} routes in {:?}",
        import.operations,
        import.routes,
        t.elapsed()
    );
    Some(import.policy)
}

fn bench_github(c: &mut Criterion) {
    let Some(policy) = github_policy() else {
        eprintln!("no .cache/openapi/api.github.com.json: run `make openapi-github`");
        return;
    };
    let json = policy.to_string();
    println!("policy JSON: {} bytes", json.len());
    c.bench_function("github/policy_compile", |b| {
        b.iter(|| Policy::from_json(black_box(json.as_bytes())).unwrap())
    });
    let compiled = Policy::from_json(json.as_bytes()).unwrap();
    let mut g = c.benchmark_group("github/lookup");
    for (name, method, path) in [
        ("root", "GET", "/"),
        ("repos_issues", "GET", "/repos/octocat/hello/issues"),
        (
            "repos_comment",
            "PATCH",
            "/repos/octocat/hello/issues/comments/42",
        ),
        (
            "repos_late",
            "DELETE",
            "/repos/octocat/hello/environments/prod/deployment-branch-policies/7",
        ),
        ("users", "GET", "/users/octocat/repos"),
        ("miss", "GET", "/repos/octocat/hello/nothing/here/at/all"),
    ] {
        let found = compiled.routes.lookup(method, path).map(|m| m.index);
        println!("{name}: {method} {path} -> route {found:?}");
        g.bench_function(name, |b| {
            b.iter(|| {
                compiled
                    .routes
                    .lookup(black_box(method), black_box(path))
                    .map(|m| m.index)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_github);
criterion_main!(benches);
