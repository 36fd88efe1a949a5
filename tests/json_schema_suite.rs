//! The official JSON-Schema-Test-Suite, draft 2020-12, run through body validation exactly
//! as the filter runs it: `RouteValidation::compile_with_resources` on a `body.schema`, then
//! `check_body` on each case's data serialized to bytes.
//!
//! The suite comes from `scripts/fetch-json-schema-suite.sh` (`make unit` runs it) into
//! `target/json-schema-suite`, or from `JSON_SCHEMA_SUITE_DIR` (a folder holding
//! `tests/draft2020-12/` and `remotes/`, like an upstream checkout). A missing suite fails:
//! CI must never pass by skipping it.
//!
//! Skipped: `tests/draft2020-12/optional/` — behaviour the spec leaves optional (format
//! assertion, bignum, ECMA-262 regex dialect, non-BMP, float overflow, ...); the filter keeps
//! `format` an annotation as 2020-12 specifies by default.

// A test harness may panic; the lints guard the filter itself.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use apiguard::validate::{RawValidate, RouteValidation, MAX_MAX_BODY_BYTES, MAX_MAX_DEPTH};

/// Passing cases measured with boon 0.6.1 on the suite in jsonschema 4.23.0. Fewer fails.
const PASS_FLOOR: usize = 1245;

/// Remote documents are served (in the suite's harness) from here.
const REMOTES_BASE: &str = "http://localhost:1234/";

fn suite_dir() -> PathBuf {
    match std::env::var_os("JSON_SCHEMA_SUITE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/json-schema-suite"),
    }
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `remotes/`, keyed by the URL the suite's tests use for it.
fn remotes(dir: &Path, rel: &str, out: &mut Vec<(String, Value)>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            remotes(&path, &format!("{rel}{name}/"), out);
        } else if name.ends_with(".json") {
            out.push((format!("{REMOTES_BASE}{rel}{name}"), read_json(&path)));
        }
    }
}

fn compile(schema: &Value, resources: &[(String, Value)]) -> Result<RouteValidation, String> {
    let raw: RawValidate = serde_json::from_value(json!({"body": {
        "schema": schema,
        "max_depth": MAX_MAX_DEPTH,
        "max_bytes": MAX_MAX_BODY_BYTES,
    }}))
    .map_err(|e| e.to_string())?;
    catch_unwind(|| RouteValidation::compile_with_resources(raw, "suite", &[], resources))
        .map_err(|_| "compile panicked".to_string())?
        .map_err(|errors| format!("{errors:?}"))
}

#[test]
fn json_schema_test_suite_draft2020_12() {
    let root = suite_dir();
    let tests_dir = root.join("tests/draft2020-12");
    assert!(
        tests_dir.is_dir() && root.join("remotes").is_dir(),
        "JSON-Schema-Test-Suite not found at {}: run scripts/fetch-json-schema-suite.sh \
         or set JSON_SCHEMA_SUITE_DIR",
        root.display()
    );
    let mut resources = Vec::new();
    remotes(&root.join("remotes"), "", &mut resources);

    let mut files: Vec<PathBuf> = fs::read_dir(&tests_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let (mut passed, mut total) = (0usize, 0usize);
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            skipped.push(format!(
                "{name}/ (optional behaviour: format assertion, bignum, ECMA-262 regex, ...)"
            ));
            continue;
        }
        let (mut file_passed, mut file_total) = (0, 0);
        for group in read_json(path).as_array().unwrap() {
            let group_name = group["description"].as_str().unwrap_or("?");
            let cases = group["tests"].as_array().unwrap();
            let compiled = compile(&group["schema"], &resources);
            for case in cases {
                let description = case["description"].as_str().unwrap_or("?");
                let want = case["valid"].as_bool().unwrap();
                let body = serde_json::to_vec(&case["data"]).unwrap();
                let outcome = match &compiled {
                    Err(e) => Err(format!("schema did not compile: {e}")),
                    Ok(v) => match catch_unwind(AssertUnwindSafe(|| v.check_body(&body))) {
                        Err(_) => Err("check_body panicked".to_string()),
                        Ok(result) if result.is_ok() == want => Ok(()),
                        Ok(result) => Err(format!("want valid={want}, got {result:?}")),
                    },
                };
                file_total += 1;
                match outcome {
                    Ok(()) => file_passed += 1,
                    Err(why) => {
                        failures.push(format!("{name} / {group_name} / {description}: {why}"))
                    }
                }
            }
        }
        println!("{name}: {file_passed}/{file_total}");
        passed += file_passed;
        total += file_total;
    }
    for f in &failures {
        println!("FAILED {f}");
    }
    for s in &skipped {
        println!("SKIPPED {s}");
    }
    println!(
        "JSON-Schema-Test-Suite draft2020-12: {passed}/{total} cases pass (floor {PASS_FLOOR})"
    );
    assert!(
        total > 1000,
        "only {total} cases found in {}",
        tests_dir.display()
    );
    assert!(
        passed >= PASS_FLOOR,
        "{passed}/{total} cases pass, fewer than the measured {PASS_FLOOR}"
    );
}
