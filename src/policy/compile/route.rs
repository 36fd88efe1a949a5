//! Routes: what a request matches (path, prefix or gRPC service, methods), who may call
//! (public or named principal sources, scopes, rules), its limits and its validation.

use std::collections::HashSet;

use serde_json::Value;

use super::condition::compile_condition;
use super::names::check_name;
use super::ConfigErrors;
use crate::authz::{Effect, Mode, Rule, ScopeRequirement};
use crate::policy::raw::{RawEffect, RawMatch, RawMode, RawRoute, RawRule};
use crate::policy::{Access, ApiKeySet, CertSet, Limit, PrincipalRef, Provider, Route};
use crate::routes::{CompiledRoute, PathMatch, Segment};
use crate::validate::RouteValidation;

/// Every principal source a route may name, for resolving `providers` entries.
pub(super) struct PrincipalNames<'a> {
    pub jwt: &'a [Provider],
    pub api_keys: &'a [ApiKeySet],
    pub certs: &'a [CertSet],
    /// Names declared at all, including sources that failed to compile.
    pub declared: &'a HashSet<String>,
}

impl PrincipalNames<'_> {
    fn resolve(&self, name: &str) -> Option<PrincipalRef> {
        if let Some(i) = self.jwt.iter().position(|p| p.name == name) {
            return Some(PrincipalRef::Jwt(i));
        }
        if let Some(i) = self.api_keys.iter().position(|p| p.name == name) {
            return Some(PrincipalRef::ApiKey(i));
        }
        self.certs
            .iter()
            .position(|p| p.name == name)
            .map(PrincipalRef::ClientCert)
    }
}

/// The limits a route may name.
pub(super) struct LimitNames<'a> {
    pub compiled: &'a [Limit],
    /// Names declared at all, including limits that failed to compile.
    pub declared: &'a HashSet<String>,
}

/// `routes`: each one parsed strictly, its name unique among routes.
pub(super) fn compile_all(
    items: Vec<Value>,
    principals: &PrincipalNames,
    limits: &LimitNames,
    errors: &mut ConfigErrors,
) -> Vec<CompiledRoute<Route>> {
    let mut names = HashSet::new();
    let parsed = errors.parse_named::<RawRoute>(items, "routes", "route", &mut names, |r| &r.name);
    parsed
        .into_iter()
        .filter_map(|(path, rr)| compile_route(rr, &path, principals, limits, errors))
        .collect()
}

fn compile_route(
    rr: RawRoute,
    path: &str,
    principals: &PrincipalNames,
    limits: &LimitNames,
    errors: &mut ConfigErrors,
) -> Option<CompiledRoute<Route>> {
    let start = errors.len();
    let matcher = compile_matcher(&rr, path, errors);
    let methods = compile_methods(&rr.matcher, path, errors);
    let access = compile_access(rr.public, &rr.providers, principals, path, errors);
    let scopes = rr
        .scopes
        .map(|s| ScopeRequirement {
            all_of: s.all_of,
            any_of: s.any_of,
        })
        .unwrap_or_default();
    if access == Some(Access::Public) {
        check_public(!scopes.is_empty(), !rr.rules.is_empty(), path, errors);
    }
    let params = template_params(matcher.as_ref());
    let rules = compile_rules(rr.rules, path, &params, errors);
    let validation = rr.validate.and_then(|raw| {
        errors.take_ok(RouteValidation::compile(
            raw,
            &format!("{path}.validate"),
            &params,
        ))
    });
    let route_limits = resolve_limits(&rr.limits, limits, path, errors);
    if errors.len() > start {
        return None;
    }
    Some(CompiledRoute {
        methods,
        path: matcher?,
        value: Route {
            name: rr.name,
            access: access?,
            scopes,
            rules,
            limits: route_limits,
            validation,
        },
    })
}

/// A path template, a prefix, or a gRPC service (whose `validate` it also checks).
fn compile_matcher(rr: &RawRoute, path: &str, errors: &mut ConfigErrors) -> Option<PathMatch> {
    match &rr.matcher.grpc {
        Some(_) => errors.take_ok(crate::grpc::compile_match(
            &rr.matcher,
            rr.validate.as_ref(),
            path,
        )),
        None => PathMatch::parse(rr.matcher.path.as_deref(), rr.matcher.prefix.as_deref())
            .map_err(|e| errors.push(format!("{path}.match"), e))
            .ok(),
    }
}

/// Upper-case methods; gRPC calls are POST (`methods` next to `grpc` is an error
/// `compile_matcher` reports).
fn compile_methods(m: &RawMatch, path: &str, errors: &mut ConfigErrors) -> Option<Vec<String>> {
    let methods = m.methods.as_ref().map(|ms| {
        ms.iter()
            .enumerate()
            .map(|(j, m)| {
                let upper = m.to_ascii_uppercase();
                if upper.is_empty() || !upper.chars().all(|c| c.is_ascii_uppercase()) {
                    errors.push(
                        format!("{path}.match.methods[{j}]"),
                        format!("`{m}` is not an HTTP method"),
                    );
                }
                upper
            })
            .collect::<Vec<_>>()
    });
    match m.grpc {
        Some(_) => Some(vec!["POST".to_string()]),
        None => methods,
    }
}

fn compile_access(
    public: bool,
    providers: &[String],
    principals: &PrincipalNames,
    path: &str,
    errors: &mut ConfigErrors,
) -> Option<Access> {
    match (public, providers.is_empty()) {
        (true, false) => {
            errors.push(
                path,
                "a route is either `public: true` or lists `providers`, not both",
            );
            None
        }
        (false, true) => {
            errors.push(
                format!("{path}.providers"),
                "list the providers whose tokens this route accepts, or set `public: true`",
            );
            None
        }
        (true, true) => Some(Access::Public),
        (false, false) => {
            let mut ids = Vec::new();
            for (j, name) in providers.iter().enumerate() {
                match principals.resolve(name) {
                    Some(id) => ids.push(id),
                    // A provider that failed to compile already has its own error.
                    None if principals.declared.contains(name) => {}
                    None => errors.push(
                        format!("{path}.providers[{j}]"),
                        format!("no provider, api_keys or client_certs set named `{name}`"),
                    ),
                }
            }
            Some(Access::Principals(ids))
        }
    }
}

/// A public route has no principal: scopes and rules would never be checked.
fn check_public(has_scopes: bool, has_rules: bool, path: &str, errors: &mut ConfigErrors) {
    if has_scopes {
        errors.push(
            format!("{path}.scopes"),
            "a public route has no principal to check scopes on",
        );
    }
    if has_rules {
        errors.push(
            format!("{path}.rules"),
            "a public route has no principal to check rules on",
        );
    }
}

/// The parameter names of a path template (`/items/{id}` → `id`).
fn template_params(matcher: Option<&PathMatch>) -> Vec<String> {
    match matcher {
        Some(PathMatch::Template(segments)) => segments
            .iter()
            .filter_map(|s| match s {
                Segment::Param(n) => Some(n.clone()),
                Segment::Literal(_) => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn compile_rules(
    raw: Vec<RawRule>,
    path: &str,
    params: &[String],
    errors: &mut ConfigErrors,
) -> Vec<Rule> {
    let mut rules = Vec::new();
    let mut rule_names = HashSet::new();
    for (j, raw) in raw.into_iter().enumerate() {
        let here = format!("{path}.rules[{j}]");
        check_name(&raw.name, &format!("{here}.name"), errors);
        if !rule_names.insert(raw.name.clone()) {
            errors.push(
                format!("{here}.name"),
                format!("duplicate rule name `{}`", raw.name),
            );
        }
        if let Some(when) = compile_condition(raw.when, &format!("{here}.when"), params, errors) {
            rules.push(Rule {
                name: raw.name,
                effect: match raw.effect {
                    RawEffect::Allow => Effect::Allow,
                    RawEffect::Deny => Effect::Deny,
                },
                mode: match raw.mode {
                    RawMode::Enforce => Mode::Enforce,
                    RawMode::Audit => Mode::Audit,
                },
                when,
            });
        }
    }
    rules
}

/// Indexes into the policy's limits.
fn resolve_limits(
    names: &[String],
    limits: &LimitNames,
    path: &str,
    errors: &mut ConfigErrors,
) -> Vec<usize> {
    let mut out = Vec::new();
    for (j, name) in names.iter().enumerate() {
        match limits.compiled.iter().position(|l| &l.spec.name == name) {
            Some(i) => out.push(i),
            None if limits.declared.contains(name) => {}
            None => errors.push(
                format!("{path}.limits[{j}]"),
                format!("no limit named `{name}`"),
            ),
        }
    }
    out
}
