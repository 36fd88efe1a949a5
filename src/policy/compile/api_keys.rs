//! API-key sets: keys held as SHA-256 digests, each with the client id and scopes that
//! rules and scope checks see.

use std::collections::HashSet;
use std::rc::Rc;

use serde_json::Value;

use super::names::check_name;
use super::source::compile_sources;
use super::ConfigErrors;
use crate::policy::raw::{RawApiKey, RawApiKeySet};
use crate::policy::{ApiKey, ApiKeySet, TokenSource};

/// `api_keys`: each set parsed strictly, its name unique among all principal sources.
pub(super) fn compile_all(
    items: Vec<Value>,
    names: &mut HashSet<String>,
    errors: &mut ConfigErrors,
) -> Vec<ApiKeySet> {
    let parsed =
        errors.parse_named::<RawApiKeySet>(items, "api_keys", "provider", names, |s| &s.name);
    parsed
        .into_iter()
        .filter_map(|(path, rs)| compile_api_keys(rs, &path, errors))
        .collect()
}

fn compile_api_keys(rs: RawApiKeySet, path: &str, errors: &mut ConfigErrors) -> Option<ApiKeySet> {
    let start = errors.len();
    check_name(&rs.name, &format!("{path}.name"), errors);
    let header = TokenSource::Header {
        name: "x-api-key".into(),
        prefix: None,
    };
    let sources = compile_sources(rs.from, header, path, "key", errors);
    let mut keys = Vec::new();
    let mut seen = HashSet::new();
    for (j, k) in rs.keys.into_iter().enumerate() {
        if let Some(key) = compile_key(k, &format!("{path}.keys[{j}]"), &mut seen, errors) {
            keys.push(key);
        }
    }
    if keys.is_empty() && errors.len() == start {
        errors.push(format!("{path}.keys"), "list at least one key");
    }
    (errors.len() == start).then(|| ApiKeySet {
        name: rs.name,
        sources,
        forward: rs.forward.unwrap_or(false),
        keys,
    })
}

/// One key; `seen` holds the digests of the set's keys so far (a repeat is a mistake).
fn compile_key(
    k: RawApiKey,
    here: &str,
    seen: &mut HashSet<[u8; 32]>,
    errors: &mut ConfigErrors,
) -> Option<ApiKey> {
    let digest = crate::percent::decode_hex::<32>(k.sha256.trim());
    match digest {
        None => errors.push(
            format!("{here}.sha256"),
            "must be 64 hex digits: the SHA-256 of the key (`printf %s KEY | sha256sum`)",
        ),
        Some(d) if !seen.insert(d) => errors.push(
            format!("{here}.sha256"),
            "the same key digest appears twice",
        ),
        Some(_) => {}
    }
    if k.client_id.is_empty() || k.client_id.chars().any(char::is_control) {
        errors.push(
            format!("{here}.client_id"),
            "must be non-empty printable text",
        );
    }
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), Value::String(k.client_id.clone()));
    claims.insert("client_id".into(), Value::String(k.client_id.clone()));
    claims.insert("scope".into(), Value::String(k.scopes.join(" ")));
    Some(ApiKey {
        digest: digest?,
        client_id: k.client_id,
        claims: Rc::new(claims),
    })
}
