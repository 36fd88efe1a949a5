//! JWT providers: issuer and claim rules, keys (inline or fetched), token sources, claims
//! forwarded as headers.

use std::collections::HashSet;
use std::rc::Rc;

use serde_json::Value;

use super::names::{check_header_name, check_name};
use super::source::compile_sources;
use super::ConfigErrors;
use crate::authz::DEFAULT_SCOPE_CLAIMS;
use crate::jwks_sync::RemoteSpec;
use crate::jwt::{Alg, Jwks, Rules};
use crate::policy::raw::{RawClaimHeader, RawJwks, RawProvider, RawRemoteJwks};
use crate::policy::{ClaimHeader, KeySource, Provider, TokenSource, DEFAULT_CLOCK_SKEW_SECS};

/// `providers`: each one parsed strictly, its name unique among all principal sources.
pub(super) fn compile_all(
    items: Vec<Value>,
    max_token_bytes: usize,
    names: &mut HashSet<String>,
    errors: &mut ConfigErrors,
) -> Vec<Provider> {
    let parsed =
        errors.parse_named::<RawProvider>(items, "providers", "provider", names, |p| &p.name);
    parsed
        .into_iter()
        .filter_map(|(path, rp)| compile_provider(rp, &path, max_token_bytes, errors))
        .collect()
}

fn compile_provider(
    rp: RawProvider,
    path: &str,
    max_token_bytes: usize,
    errors: &mut ConfigErrors,
) -> Option<Provider> {
    let start = errors.len();
    check_name(&rp.name, &format!("{path}.name"), errors);
    if rp.issuer.is_empty() {
        errors.push(format!("{path}.issuer"), "must not be empty");
    }
    let algorithms = rp
        .algorithms
        .map(|names| compile_algorithms(&names, path, errors));
    let keys = compile_keys(rp.jwks, &rp.name, &format!("{path}.jwks"), errors);
    let bearer = TokenSource::Header {
        name: "authorization".into(),
        prefix: Some("Bearer ".into()),
    };
    let sources = compile_sources(rp.from, bearer, path, "token", errors);
    let claims_to_headers = compile_claim_headers(rp.claims_to_headers, path, errors);
    let forward_payload_header = rp
        .forward_payload_header
        .and_then(|h| check_header_name(&h, &format!("{path}.forward_payload_header"), errors));
    if rp.typ.as_ref().is_some_and(Vec::is_empty) {
        errors.push(
            format!("{path}.typ"),
            "an empty allow-list would reject every token; omit it instead",
        );
    }
    if let Some(0) = rp.max_lifetime_seconds {
        errors.push(format!("{path}.max_lifetime_seconds"), "must be positive");
    }
    let scope_claims = compile_scope_claims(rp.scope_claims, path, errors);
    if errors.len() > start {
        return None;
    }
    Some(Provider {
        name: rp.name,
        rules: Rules {
            issuer: rp.issuer,
            audiences: rp.audiences,
            clock_skew_secs: rp.clock_skew_seconds.unwrap_or(DEFAULT_CLOCK_SKEW_SECS),
            require_exp: rp.require_exp.unwrap_or(true),
            max_lifetime_secs: rp.max_lifetime_seconds,
            typ: rp.typ,
            algorithms,
            max_token_bytes,
        },
        keys: keys?,
        sources,
        claims_to_headers,
        forward_payload_header,
        // Like Envoy's jwt_authn `forward` and Istio's `forwardOriginalToken`: not by default.
        forward: rp.forward.unwrap_or(false),
        scope_claims,
    })
}

fn compile_algorithms(names: &[String], path: &str, errors: &mut ConfigErrors) -> Vec<Alg> {
    names
        .iter()
        .enumerate()
        .filter_map(|(j, n)| {
            let alg = Alg::parse(n);
            if alg.is_none() {
                errors.push(
                    format!("{path}.algorithms[{j}]"),
                    format!("`{n}` is not a supported JWS algorithm (HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384, EdDSA)"),
                );
            }
            alg
        })
        .collect()
}

fn compile_keys(
    jwks: RawJwks,
    provider: &str,
    path: &str,
    errors: &mut ConfigErrors,
) -> Option<KeySource> {
    match (jwks.inline, jwks.remote) {
        (Some(inline), None) => compile_inline_jwks(inline, &format!("{path}.inline"), errors),
        (None, Some(remote)) => compile_remote(remote, provider, &format!("{path}.remote"), errors),
        _ => {
            errors.push(path, "set exactly one of `inline` or `remote`");
            None
        }
    }
}

fn compile_inline_jwks(value: Value, path: &str, errors: &mut ConfigErrors) -> Option<KeySource> {
    let parsed = match &value {
        Value::String(s) => Jwks::parse(s.as_bytes()),
        other => Jwks::from_value(other),
    };
    match parsed {
        Err(e) => {
            errors.push(path, e);
            None
        }
        Ok(p) => {
            // Inline keys are the operator's own: a weak or unusable key is a mistake to fix now.
            for msg in &p.rejected {
                errors.push(path, msg.clone());
            }
            if p.jwks.is_empty() && p.rejected.is_empty() {
                errors.push(path, "holds no signing key");
            }
            p.rejected
                .is_empty()
                .then(|| KeySource::Inline(Rc::new(p.jwks)))
        }
    }
}

fn compile_remote(
    r: RawRemoteJwks,
    provider: &str,
    path: &str,
    errors: &mut ConfigErrors,
) -> Option<KeySource> {
    let start = errors.len();
    if r.cluster.is_empty() {
        errors.push(format!("{path}.cluster"), "must name an Envoy cluster");
    }
    if let Err(e) = RemoteSpec::validate_uri(&r.uri) {
        errors.push(format!("{path}.uri"), e);
    }
    let secs = |v: Option<u64>, default: u64, field: &str, errors: &mut ConfigErrors| {
        let v = v.unwrap_or(default);
        if v == 0 {
            errors.push(format!("{path}.{field}"), "must be positive");
        }
        v
    };
    let refresh = secs(r.refresh_seconds, 300, "refresh_seconds", errors);
    let retry = secs(r.retry_seconds, 10, "retry_seconds", errors);
    let min_refetch = secs(r.min_refetch_seconds, 30, "min_refetch_seconds", errors);
    let timeout_ms = r.timeout_ms.unwrap_or(3000);
    if !(100..=60_000).contains(&timeout_ms) {
        errors.push(
            format!("{path}.timeout_ms"),
            "must be between 100 and 60000",
        );
    }
    (errors.len() == start).then(|| {
        KeySource::Remote(RemoteSpec {
            provider: provider.to_string(),
            cluster: r.cluster,
            uri: r.uri,
            discovery: r.discovery,
            refresh_ms: refresh.saturating_mul(1000),
            retry_ms: retry.saturating_mul(1000),
            timeout_ms,
            min_refetch_ms: min_refetch.saturating_mul(1000),
        })
    })
}

fn compile_claim_headers(
    raw: Vec<RawClaimHeader>,
    path: &str,
    errors: &mut ConfigErrors,
) -> Vec<ClaimHeader> {
    let mut out = Vec::new();
    for (j, ch) in raw.into_iter().enumerate() {
        let here = format!("{path}.claims_to_headers[{j}]");
        if ch.claim.is_empty() {
            errors.push(format!("{here}.claim"), "must not be empty");
        }
        if let Some(header) = check_header_name(&ch.header, &format!("{here}.header"), errors) {
            out.push(ClaimHeader {
                claim: ch.claim,
                header,
            });
        }
    }
    out
}

fn compile_scope_claims(
    raw: Option<Vec<String>>,
    path: &str,
    errors: &mut ConfigErrors,
) -> Vec<String> {
    match raw {
        Some(list) if list.is_empty() => {
            errors.push(
                format!("{path}.scope_claims"),
                "must name at least one claim path",
            );
            Vec::new()
        }
        Some(list) => list,
        None => DEFAULT_SCOPE_CLAIMS.iter().map(|s| s.to_string()).collect(),
    }
}
