//! The policy compiler: raw JSON → `Policy`, or every error with its JSON path. One file per
//! compiled kind; this one parses the top level, compiles the kinds in dependency order
//! (routes name providers and limits) and assembles the result.

mod api_keys;
mod client_certs;
mod condition;
mod limit;
mod names;
mod provider;
mod route;
mod source;

use std::collections::HashSet;

use serde_json::Value;

use super::error::{ConfigError, ConfigErrors};
use super::model::*;
use super::raw::*;
use crate::routes::RouteTable;

/// Compiles a whole policy, reporting every mistake at once.
pub(super) fn compile(value: Value) -> Result<Policy, Vec<ConfigError>> {
    let mut errors = ConfigErrors::new();
    let Some(raw) = errors.parse::<RawPolicy>(value, "") else {
        return Err(errors.into_vec());
    };
    let realm = check_realm(raw.realm, &mut errors);
    let max_token_bytes = check_max_token_bytes(raw.max_token_bytes, &mut errors);
    // Providers, API-key sets and certificate sets share one namespace: routes name them.
    let mut names = HashSet::new();
    let providers = provider::compile_all(raw.providers, max_token_bytes, &mut names, &mut errors);
    let api_key_sets = api_keys::compile_all(raw.api_keys, &mut names, &mut errors);
    let cert_sets = client_certs::compile_all(raw.client_certs, &mut names, &mut errors);
    let (limits, limit_names) = limit::compile_all(raw.limits, &mut errors);
    let request_limits = raw
        .request_limits
        .and_then(|rl| errors.take_ok(crate::validate::Limits::compile(rl, "request_limits")));
    let principals = route::PrincipalNames {
        jwt: &providers,
        api_keys: &api_key_sets,
        certs: &cert_sets,
        declared: &names,
    };
    let limit_names = route::LimitNames {
        compiled: &limits,
        declared: &limit_names,
    };
    let routes = route::compile_all(raw.routes, &principals, &limit_names, &mut errors);
    if !errors.is_empty() {
        return Err(errors.into_vec());
    }
    let routes = RouteTable::new(routes);
    Ok(Policy {
        realm,
        unmatched: match raw.unmatched {
            Some(RawUnmatched::Allow) => Unmatched::Allow,
            _ => Unmatched::Deny,
        },
        deny_lookalikes: raw.lookalikes != Some(RawLookalikes::Unmatched),
        bypass_cors_preflight: raw.bypass_cors_preflight,
        known_methods: known_methods(&routes, &limits),
        method_override: match raw.method_override {
            Some(RawMethodOverride::Honor) => MethodOverride::Honor,
            _ => MethodOverride::Refuse,
        },
        owned_headers: owned_headers(&providers),
        providers,
        api_key_sets,
        cert_sets,
        limits,
        ratelimit_headers_on_allow: raw.ratelimit_headers_on_allow,
        hold_headers_for_body: raw.hold_headers_for_body,
        decision_record: raw.decision_record,
        deny_log: match raw.deny_log {
            Some(RawLogLevel::Off) => None,
            Some(level) => Some(level),
            None => Some(RawLogLevel::Info),
        },
        request_limits,
        routes,
        token_cache_size: raw.token_cache_size.unwrap_or(DEFAULT_TOKEN_CACHE_SIZE),
    })
}

/// The realm goes into `WWW-Authenticate` inside quotes.
fn check_realm(realm: Option<String>, errors: &mut ConfigErrors) -> String {
    let realm = realm.unwrap_or_else(|| DEFAULT_REALM.to_string());
    if realm.contains(['"', '\\']) || realm.chars().any(char::is_control) {
        errors.push(
            "realm",
            "must not contain quotes, backslashes or control characters",
        );
    }
    realm
}

fn check_max_token_bytes(max: Option<usize>, errors: &mut ConfigErrors) -> usize {
    let max = max.unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
    if !(512..=65536).contains(&max) {
        errors.push("max_token_bytes", "must be between 512 and 65536");
    }
    max
}

/// Every header apiguard writes from a token, sorted and deduplicated.
fn owned_headers(providers: &[Provider]) -> Vec<String> {
    let mut owned: Vec<String> = Vec::new();
    for p in providers {
        owned.extend(p.claims_to_headers.iter().map(|c| c.header.clone()));
        owned.extend(p.forward_payload_header.iter().cloned());
    }
    owned.sort();
    owned.dedup();
    owned
}

/// Standard methods plus every method a route or a cost names, upper case, deduplicated.
fn known_methods(routes: &RouteTable<Route>, limits: &[Limit]) -> Vec<String> {
    let mut known: Vec<String> = crate::routes::STANDARD_METHODS
        .iter()
        .map(|m| m.to_string())
        .chain(routes.route_methods().map(str::to_string))
        .chain(
            limits
                .iter()
                .flat_map(|l| l.cost_by_method.iter().map(|(m, _)| m.clone()))
                // gRPC method costs (`pkg.Svc/Get`) are not HTTP methods.
                .filter(|m| !m.contains('/')),
        )
        .collect();
    known.sort();
    known.dedup();
    known
}
