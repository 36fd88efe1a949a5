//! Replays every input under `fuzz/regressions/<target>/` (crashers the fuzzers found) and
//! `fuzz/seeds/<target>/` (the starting corpora) through the very functions the cargo-fuzz
//! targets call: `fuzz/src/lib.rs` is included here as a module, so `cargo test` covers
//! them without nightly or libFuzzer. To keep a new crasher: copy it from
//! `fuzz/artifacts/<target>/` to `fuzz/regressions/<target>/`.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod fuzz_cases;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read_dir entry").path())
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.') || n.ends_with(".md"))
        })
        .collect();
    files.sort();
    files
}

/// Runs every file of `kind` through its target; reports all failures at once.
fn replay(kind: &str) -> usize {
    let mut failures = Vec::new();
    let mut count = 0;
    for (target, run) in fuzz_cases::TARGETS {
        for file in inputs(kind, target) {
            count += 1;
            let data = std::fs::read(&file).expect("read input");
            if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
                failures.push(format!("{target}: {}", file.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "inputs that fail:\n{}",
        failures.join("\n")
    );
    count
}

#[test]
fn regressions_do_not_crash() {
    replay("regressions");
}

#[test]
fn seeds_do_not_crash() {
    assert!(replay("seeds") > 0, "fuzz/seeds/ is empty");
}

/// The seeds must reach the interesting paths (valid signatures, allowed requests), or the
/// fuzzers only ever explore the rejections.
#[test]
fn seeds_reach_the_accepting_paths() {
    let seed = |target: &str, name: &str| {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/seeds")
                .join(target)
                .join(name),
        )
        .expect("seed file")
    };
    for alg in ["RS256", "ES256", "ES384", "EdDSA", "HS256"] {
        assert!(
            fuzz_cases::token_verifies(&seed("token", &format!("valid-{alg}"))),
            "{alg}"
        );
    }
    assert!(!fuzz_cases::token_verifies(&seed("token", "alg-none")));
    assert!(!fuzz_cases::token_verifies(&seed("token", "dup-keys")));
    for name in [
        "get-items",
        "get-item",
        "delete-item",
        "post-item",
        "apikey",
        "health",
    ] {
        assert!(fuzz_cases::engine_allows(&seed("engine", name)), "{name}");
    }
    for name in ["traversal", "dup-auth"] {
        assert!(!fuzz_cases::engine_allows(&seed("engine", name)), "{name}");
    }
}
