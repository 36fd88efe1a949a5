//! Parse, then compile: raw policy JSON → validated `Policy`, or every error with its JSON path.

pub mod raw;

use std::collections::HashSet;
use std::fmt;
use std::rc::Rc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::authz::{
    ClaimTest, Condition, Effect, Mode, Rule, ScopeRequirement, DEFAULT_SCOPE_CLAIMS,
};
use crate::jwks_sync::RemoteSpec;
use crate::jwt::{Alg, Jwks, Rules};
use crate::routes::{CompiledRoute, PathMatch, RouteTable};
use raw::*;

pub const DEFAULT_REALM: &str = "apiguard";
pub const DEFAULT_CLOCK_SKEW_SECS: u64 = 60;
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;
pub const DEFAULT_TOKEN_CACHE_SIZE: usize = 1024;

/// One problem in a policy, located by its JSON path (`providers[0].jwks.remote.uri`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "policy: {}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// What a method-override header does (`method_override`, see `hygiene`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodOverride {
    /// 400 `method_override`: the upstream would act on a method apiguard never checked.
    Refuse,
    /// A POST is routed, authorized and charged as the method it overrides to.
    Honor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    Deny,
    Allow,
}

/// The compiled, validated policy. Built once per configuration, shared by every request.
pub struct Policy {
    pub realm: String,
    pub unmatched: Unmatched,
    /// Refuse requests that differ from a route only by case or a trailing slash.
    pub deny_lookalikes: bool,
    /// Forward CORS preflights without authentication (see `crate::cors`).
    pub bypass_cors_preflight: bool,
    /// Upper-case methods whose other spellings are refused (standard, routed, costed).
    pub known_methods: Vec<String>,
    pub method_override: MethodOverride,
    pub providers: Vec<Provider>,
    pub api_key_sets: Vec<ApiKeySet>,
    pub cert_sets: Vec<CertSet>,
    pub limits: Vec<Limit>,
    pub ratelimit_headers_on_allow: bool,
    /// Level of the per-denial log line; `None` turns it off.
    pub deny_log: Option<raw::RawLogLevel>,
    /// Pause at the headers while a body is validated (see `RawPolicy`).
    pub hold_headers_for_body: bool,
    /// Write `apiguard_decision` to filter state (a host call of ~3 µs per request).
    pub decision_record: bool,
    pub request_limits: Option<crate::validate::Limits>,
    pub routes: RouteTable<Route>,
    pub token_cache_size: usize,
    /// Every header apiguard itself writes; incoming copies are always removed.
    pub owned_headers: Vec<String>,
}

pub struct Provider {
    pub name: String,
    pub rules: Rules,
    pub keys: KeySource,
    pub sources: Vec<TokenSource>,
    pub claims_to_headers: Vec<ClaimHeader>,
    pub forward_payload_header: Option<String>,
    pub forward: bool,
    pub scope_claims: Vec<String>,
}

pub enum KeySource {
    Inline(Rc<Jwks>),
    Remote(RemoteSpec),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Lowercase header name, and a scheme prefix matched case-insensitively (RFC 7235).
    Header {
        name: String,
        prefix: Option<String>,
    },
    Query(String),
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    pub claim: String,
    pub header: String,
}

pub struct ApiKeySet {
    pub name: String,
    pub sources: Vec<TokenSource>,
    pub forward: bool,
    pub keys: Vec<ApiKey>,
}

pub struct ApiKey {
    pub digest: [u8; 32],
    pub client_id: String,
    /// What rules and scope checks see: `sub`, `client_id` and `scope`.
    pub claims: Rc<serde_json::Map<String, Value>>,
}

pub struct CertSet {
    pub name: String,
    pub uri_sans: Vec<String>,
    pub uri_san_prefixes: Vec<String>,
    pub subjects: Vec<String>,
}

impl CertSet {
    pub fn admits(&self, uri_san: Option<&str>, subject: Option<&str>) -> bool {
        uri_san.is_some_and(|u| {
            self.uri_sans.iter().any(|s| s == u)
                || self
                    .uri_san_prefixes
                    .iter()
                    .any(|p| u.starts_with(p.as_str()))
        }) || subject.is_some_and(|s| self.subjects.iter().any(|x| x == s))
    }
}

pub struct Route {
    pub name: String,
    pub access: Access,
    pub scopes: ScopeRequirement,
    pub rules: Vec<Rule>,
    /// Indexes into `Policy::limits`; every one must admit the request.
    pub limits: Vec<usize>,
    pub validation: Option<crate::validate::RouteValidation>,
}

/// A named token-bucket limit and how its bucket key and cost are derived per request.
pub struct Limit {
    pub spec: crate::ratelimit::LimitSpec,
    pub key: Vec<KeyPart>,
    pub cost_default: u64,
    pub cost_by_method: Vec<(String, u64)>,
    /// Precomputed `RateLimit-Policy` item.
    pub policy_header: String,
    /// Stat names, built once rather than formatted per request.
    pub counters: LimitCounters,
    /// Set for a limit decided by a rate limit service (`ratelimit::global`).
    pub global: Option<crate::ratelimit::global::GlobalSpec>,
    /// `AuthFailures` for a lockout (`ratelimit::lockout`).
    pub count: crate::ratelimit::lockout::Count,
}

/// `apiguard.ratelimit.<name>.<outcome>` for one limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitCounters {
    pub allowed: String,
    pub limited: String,
    pub shared_slot: String,
    pub store_failure: String,
    pub table_full: String,
}

impl LimitCounters {
    fn new(name: &str) -> Self {
        let counter = |what: &str| format!("apiguard.ratelimit.{name}.{what}");
        LimitCounters {
            allowed: counter("allowed"),
            limited: counter("limited"),
            shared_slot: counter("shared_slot"),
            store_failure: counter("store_failure"),
            table_full: counter("table_full"),
        }
    }
}

impl Limit {
    pub fn cost(&self, method: &str) -> u64 {
        self.cost_by_method
            .iter()
            .find(|(m, _)| m == method)
            .map_or(self.cost_default, |(_, c)| *c)
    }

    /// The cost of a call: its gRPC method's (`pkg.Svc/Get`) when listed, else its HTTP
    /// method's, else the default.
    pub fn call_cost(&self, method: &str, grpc_method: Option<&str>) -> u64 {
        grpc_method
            .and_then(|g| self.cost_by_method.iter().find(|(m, _)| m == g))
            .map_or_else(|| self.cost(method), |(_, c)| *c)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    ClientIp { trusted_hops: u32 },
    Claim(String),
    Header(String),
    Route,
    Constant(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Public,
    /// Principal sources in policy order; a credential from any of them is accepted.
    Principals(Vec<PrincipalRef>),
}

/// Who can authenticate on a route: indexes into the policy's provider lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalRef {
    Jwt(usize),
    ApiKey(usize),
    ClientCert(usize),
}

impl Policy {
    /// Parses the JSON the filter receives from Envoy.
    pub fn from_json(bytes: &[u8]) -> Result<Policy, Vec<ConfigError>> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            vec![ConfigError {
                path: String::new(),
                message: format!("not valid JSON: {e}"),
            }]
        })?;
        Policy::try_from(value)
    }

    /// Parses YAML (Istio `pluginConfig`, files for `apiguard check`); same schema.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_yaml(text: &str) -> Result<Policy, Vec<ConfigError>> {
        let value: Value = yaml_serde::from_str(text).map_err(|e| {
            vec![ConfigError {
                path: String::new(),
                message: format!("not valid YAML: {e}"),
            }]
        })?;
        Policy::try_from(value)
    }

    pub fn provider_index(&self, name: &str) -> Option<usize> {
        self.providers.iter().position(|p| p.name == name)
    }
}

impl TryFrom<Value> for Policy {
    type Error = Vec<ConfigError>;

    fn try_from(value: Value) -> Result<Policy, Vec<ConfigError>> {
        let mut errors = Errors::default();
        let raw: RawPolicy = errors.parse(value, "").ok_or_else(|| errors.take())?;

        let realm = raw.realm.unwrap_or_else(|| DEFAULT_REALM.to_string());
        if realm.contains(['"', '\\']) || realm.chars().any(char::is_control) {
            errors.push(
                "realm",
                "must not contain quotes, backslashes or control characters",
            );
        }
        let max_token_bytes = raw.max_token_bytes.unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
        if !(512..=65536).contains(&max_token_bytes) {
            errors.push("max_token_bytes", "must be between 512 and 65536");
        }

        // Providers, API-key sets and certificate sets share one namespace: routes name them.
        let mut names = HashSet::new();
        let mut providers = Vec::new();
        for (path, rp) in errors.parse_named::<RawProvider>(
            raw.providers,
            "providers",
            "provider",
            &mut names,
            |p| &p.name,
        ) {
            if let Some(p) = compile_provider(rp, &path, max_token_bytes, &mut errors) {
                providers.push(p);
            }
        }
        let mut api_key_sets = Vec::new();
        for (path, rs) in errors.parse_named::<RawApiKeySet>(
            raw.api_keys,
            "api_keys",
            "provider",
            &mut names,
            |s| &s.name,
        ) {
            if let Some(set) = compile_api_keys(rs, &path, &mut errors) {
                api_key_sets.push(set);
            }
        }
        let mut cert_sets = Vec::new();
        for (path, rc) in errors.parse_named::<RawClientCertSet>(
            raw.client_certs,
            "client_certs",
            "provider",
            &mut names,
            |c| &c.name,
        ) {
            if rc.uri_sans.is_empty() && rc.uri_san_prefixes.is_empty() && rc.subjects.is_empty() {
                errors.push(
                    path,
                    "list at least one of `uri_sans`, `uri_san_prefixes`, `subjects`",
                );
                continue;
            }
            cert_sets.push(CertSet {
                name: rc.name,
                uri_sans: rc.uri_sans,
                uri_san_prefixes: rc.uri_san_prefixes,
                subjects: rc.subjects,
            });
        }
        let mut limits = Vec::new();
        let mut limit_names = HashSet::new();
        for (path, rl) in
            errors.parse_named::<RawLimit>(raw.limits, "limits", "limit", &mut limit_names, |l| {
                &l.name
            })
        {
            if let Some(l) = compile_limit(rl, &path, &mut errors) {
                limits.push(l);
            }
        }
        let request_limits =
            raw.request_limits.and_then(|rl| {
                match crate::validate::Limits::compile(rl, "request_limits") {
                    Ok(l) => Some(l),
                    Err(errs) => {
                        for (p, m) in errs {
                            errors.push(p, m);
                        }
                        None
                    }
                }
            });
        let principals = PrincipalNames {
            jwt: &providers,
            api_keys: &api_key_sets,
            certs: &cert_sets,
            declared: &names,
        };

        let mut routes = Vec::new();
        let mut route_names = HashSet::new();
        for (path, rr) in
            errors.parse_named::<RawRoute>(raw.routes, "routes", "route", &mut route_names, |r| {
                &r.name
            })
        {
            if let Some(r) =
                compile_route(rr, &path, &principals, (&limits, &limit_names), &mut errors)
            {
                routes.push(r);
            }
        }

        if !errors.is_empty() {
            return Err(errors.take());
        }
        let mut owned_headers: Vec<String> = Vec::new();
        for p in &providers {
            owned_headers.extend(p.claims_to_headers.iter().map(|c| c.header.clone()));
            owned_headers.extend(p.forward_payload_header.iter().cloned());
        }
        owned_headers.sort();
        owned_headers.dedup();
        let routes = RouteTable::new(routes);
        let known_methods = known_methods(&routes, &limits);
        Ok(Policy {
            realm,
            unmatched: match raw.unmatched {
                Some(RawUnmatched::Allow) => Unmatched::Allow,
                _ => Unmatched::Deny,
            },
            deny_lookalikes: raw.lookalikes != Some(RawLookalikes::Unmatched),
            bypass_cors_preflight: raw.bypass_cors_preflight,
            known_methods,
            method_override: match raw.method_override {
                Some(RawMethodOverride::Honor) => MethodOverride::Honor,
                _ => MethodOverride::Refuse,
            },
            providers,
            api_key_sets,
            cert_sets,
            limits,
            ratelimit_headers_on_allow: raw.ratelimit_headers_on_allow,
            hold_headers_for_body: raw.hold_headers_for_body,
            decision_record: raw.decision_record.unwrap_or(true),
            deny_log: match raw.deny_log {
                Some(RawLogLevel::Off) => None,
                Some(level) => Some(level),
                None => Some(RawLogLevel::Info),
            },
            request_limits,
            routes,
            token_cache_size: raw.token_cache_size.unwrap_or(DEFAULT_TOKEN_CACHE_SIZE),
            owned_headers,
        })
    }
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

fn compile_provider(
    rp: RawProvider,
    path: &str,
    max_token_bytes: usize,
    errors: &mut Errors,
) -> Option<Provider> {
    let start = errors.len();
    if rp.name.is_empty()
        || !rp
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        errors.push(
            format!("{path}.name"),
            "must be non-empty letters, digits, `-` or `_` (it appears in stat names)",
        );
    }
    if rp.issuer.is_empty() {
        errors.push(format!("{path}.issuer"), "must not be empty");
    }
    let algorithms = rp.algorithms.map(|names| {
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
            .collect::<Vec<_>>()
    });
    let keys = match (rp.jwks.inline, rp.jwks.remote) {
        (Some(_), Some(_)) | (None, None) => {
            errors.push(
                format!("{path}.jwks"),
                "set exactly one of `inline` or `remote`",
            );
            None
        }
        (Some(inline), None) => compile_inline_jwks(inline, &format!("{path}.jwks.inline"), errors),
        (None, Some(remote)) => {
            compile_remote(remote, &rp.name, &format!("{path}.jwks.remote"), errors)
        }
    };
    let sources = match rp.from {
        None => vec![TokenSource::Header {
            name: "authorization".into(),
            prefix: Some("Bearer ".into()),
        }],
        Some(list) if list.is_empty() => {
            errors.push(
                format!("{path}.from"),
                "must name at least one token source",
            );
            Vec::new()
        }
        Some(list) => list
            .into_iter()
            .enumerate()
            .filter_map(|(j, s)| compile_source(s, &format!("{path}.from[{j}]"), errors))
            .collect(),
    };
    let mut claims_to_headers = Vec::new();
    for (j, ch) in rp.claims_to_headers.into_iter().enumerate() {
        let here = format!("{path}.claims_to_headers[{j}]");
        if ch.claim.is_empty() {
            errors.push(format!("{here}.claim"), "must not be empty");
        }
        if let Some(header) = check_header_name(&ch.header, &format!("{here}.header"), errors) {
            claims_to_headers.push(ClaimHeader {
                claim: ch.claim,
                header,
            });
        }
    }
    let forward_payload_header = rp
        .forward_payload_header
        .and_then(|h| check_header_name(&h, &format!("{path}.forward_payload_header"), errors));
    if let Some(types) = &rp.typ {
        if types.is_empty() {
            errors.push(
                format!("{path}.typ"),
                "an empty allow-list would reject every token; omit it instead",
            );
        }
    }
    if let Some(0) = rp.max_lifetime_seconds {
        errors.push(format!("{path}.max_lifetime_seconds"), "must be positive");
    }
    let scope_claims = match rp.scope_claims {
        Some(list) if list.is_empty() => {
            errors.push(
                format!("{path}.scope_claims"),
                "must name at least one claim path",
            );
            Vec::new()
        }
        Some(list) => list,
        None => DEFAULT_SCOPE_CLAIMS.iter().map(|s| s.to_string()).collect(),
    };
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

fn compile_inline_jwks(value: Value, path: &str, errors: &mut Errors) -> Option<KeySource> {
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
    errors: &mut Errors,
) -> Option<KeySource> {
    let start = errors.len();
    if r.cluster.is_empty() {
        errors.push(format!("{path}.cluster"), "must name an Envoy cluster");
    }
    if let Err(e) = RemoteSpec::validate_uri(&r.uri) {
        errors.push(format!("{path}.uri"), e);
    }
    let secs = |v: Option<u64>, default: u64, field: &str, errors: &mut Errors| {
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

fn compile_source(s: RawTokenSource, path: &str, errors: &mut Errors) -> Option<TokenSource> {
    match (s.header, s.query, s.cookie) {
        (Some(h), None, None) => {
            let name = check_header_name(&h, &format!("{path}.header"), errors)?;
            let prefix = s.prefix.filter(|p| !p.is_empty());
            Some(TokenSource::Header { name, prefix })
        }
        (None, Some(q), None) if s.prefix.is_none() && !q.is_empty() => Some(TokenSource::Query(q)),
        (None, None, Some(c)) if s.prefix.is_none() && !c.is_empty() => {
            Some(TokenSource::Cookie(c))
        }
        _ => {
            errors.push(path, "set exactly one of `header` (with optional `prefix`), `query` or `cookie`, non-empty");
            None
        }
    }
}

/// Header names apiguard may write or read: RFC 9110 tokens, stored lowercase, never a
/// pseudo-header or a hop-by-hop / routing header Envoy relies on.
fn check_header_name(name: &str, path: &str, errors: &mut Errors) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if lower.is_empty() || !lower.chars().all(is_tchar) {
        errors.push(path, format!("`{name}` is not a valid header name"));
        return None;
    }
    if [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
    ]
    .contains(&lower.as_str())
    {
        errors.push(path, format!("`{name}` is reserved"));
        return None;
    }
    Some(lower)
}

/// Every principal source a route may name, for resolving `providers` entries.
struct PrincipalNames<'a> {
    jwt: &'a [Provider],
    api_keys: &'a [ApiKeySet],
    certs: &'a [CertSet],
    /// Names declared at all, including sources that failed to compile.
    declared: &'a HashSet<String>,
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

fn compile_api_keys(rs: RawApiKeySet, path: &str, errors: &mut Errors) -> Option<ApiKeySet> {
    let start = errors.len();
    check_name(&rs.name, &format!("{path}.name"), errors);
    let sources = match rs.from {
        None => vec![TokenSource::Header {
            name: "x-api-key".into(),
            prefix: None,
        }],
        Some(list) if list.is_empty() => {
            errors.push(format!("{path}.from"), "must name at least one key source");
            Vec::new()
        }
        Some(list) => list
            .into_iter()
            .enumerate()
            .filter_map(|(j, s)| compile_source(s, &format!("{path}.from[{j}]"), errors))
            .collect(),
    };
    let mut keys = Vec::new();
    let mut seen = HashSet::new();
    for (j, k) in rs.keys.into_iter().enumerate() {
        let here = format!("{path}.keys[{j}]");
        let digest = decode_sha256_hex(&k.sha256);
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
        if let Some(digest) = digest {
            keys.push(ApiKey {
                digest,
                client_id: k.client_id,
                claims: Rc::new(claims),
            });
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

fn decode_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    crate::percent::decode_hex(hex.trim())
}

fn check_name(name: &str, path: &str, errors: &mut Errors) {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        errors.push(
            path,
            "must be non-empty letters, digits, `-` or `_` (it appears in stat names)",
        );
    }
}

fn compile_condition(
    rc: RawCondition,
    path: &str,
    params: &[String],
    errors: &mut Errors,
) -> Option<Condition> {
    let combinators = [rc.all.is_some(), rc.any.is_some(), rc.not.is_some()];
    let tests = [
        rc.equals.is_some(),
        rc.one_of.is_some(),
        rc.matches.is_some(),
        rc.present.is_some(),
        rc.contains.is_some(),
        rc.equals_param.is_some(),
    ];
    let n_comb = combinators.iter().filter(|b| **b).count();
    let n_test = tests.iter().filter(|b| **b).count();
    if n_comb + n_test != 1
        || (n_comb == 1 && rc.claim.is_some())
        || (n_test == 1 && rc.claim.is_none())
    {
        errors.push(
            path,
            "a condition is exactly one of `all`, `any`, `not`, or `claim` with one of `equals`, `one_of`, `matches`, `present`, `contains`, `equals_param`",
        );
        return None;
    }
    let list = |items: Vec<RawCondition>, key: &str, errors: &mut Errors| {
        let n = items.len();
        let out: Vec<Condition> = items
            .into_iter()
            .enumerate()
            .filter_map(|(i, c)| {
                compile_condition(c, &format!("{path}.{key}[{i}]"), params, errors)
            })
            .collect();
        (out.len() == n).then_some(out)
    };
    if let Some(items) = rc.all {
        return list(items, "all", errors).map(Condition::All);
    }
    if let Some(items) = rc.any {
        return list(items, "any", errors).map(Condition::Any);
    }
    if let Some(inner) = rc.not {
        return compile_condition(*inner, &format!("{path}.not"), params, errors)
            .map(|c| Condition::Not(Box::new(c)));
    }
    let claim = rc.claim.unwrap_or_default();
    if claim.is_empty() {
        errors.push(format!("{path}.claim"), "must not be empty");
        return None;
    }
    let test = if let Some(v) = rc.equals {
        ClaimTest::Equals(v)
    } else if let Some(vs) = rc.one_of {
        ClaimTest::OneOf(vs)
    } else if let Some(re) = rc.matches {
        match regex::RegexBuilder::new(&re).size_limit(1 << 20).build() {
            Ok(r) => ClaimTest::Matches(r),
            Err(e) => {
                errors.push(format!("{path}.matches"), format!("invalid regex: {e}"));
                return None;
            }
        }
    } else if let Some(p) = rc.present {
        ClaimTest::Present(p)
    } else if let Some(v) = rc.contains {
        ClaimTest::Contains(v)
    } else if let Some(name) = rc.equals_param {
        if !params.contains(&name) {
            errors.push(
                format!("{path}.equals_param"),
                format!("the route's path template has no parameter `{name}`"),
            );
            return None;
        }
        ClaimTest::EqualsParam(name)
    } else {
        return None;
    };
    Some(Condition::Claim { path: claim, test })
}

fn compile_limit(rl: RawLimit, path: &str, errors: &mut Errors) -> Option<Limit> {
    use crate::ratelimit::{headers::policy_for, LimitSpec};
    let start = errors.len();
    let local_fields = rl.capacity.is_some() || rl.refill.is_some();
    let count = rl.count.unwrap_or_default();
    if count == crate::ratelimit::lockout::Count::AuthFailures {
        if rl.global.is_some() {
            errors.push(
                format!("{path}.count"),
                "a lockout (`count: auth_failures`) is local: the rate limit service protocol cannot read a bucket without charging it",
            );
        }
        if rl.key.iter().any(|p| p.claim.is_some()) {
            errors.push(
                format!("{path}.key"),
                "a lockout counts refused credentials, which have no verified claims: key it by client_ip, header, route or constant",
            );
        }
    }
    let (refill_tokens, period_ms) = match rl.refill {
        None => (0, 1000),
        Some(r) => match (r.period_seconds, r.period_ms) {
            (Some(s), None) => (r.tokens, s.saturating_mul(1000)),
            (None, Some(ms)) => (r.tokens, ms),
            _ => {
                errors.push(
                    format!("{path}.refill"),
                    "set exactly one of `period_seconds` or `period_ms`",
                );
                (0, 1000)
            }
        },
    };
    let global = rl.global.and_then(|g| {
        let compiled = crate::ratelimit::global::compile(g, local_fields);
        for (field, msg) in compiled.as_ref().err().into_iter().flatten() {
            errors.push(format!("{path}.{field}"), msg.clone());
        }
        compiled.ok()
    });
    let capacity = match (rl.capacity, &global) {
        (Some(c), _) => c,
        // A global limit's local spec is never used: any valid value will do.
        (None, Some(_)) => 1,
        (None, None) => {
            errors.push(
                format!("{path}.capacity"),
                "required (or make the limit `global`)",
            );
            1
        }
    };
    let mut spec = LimitSpec::new(&rl.name, capacity, refill_tokens, period_ms);
    if let Some(b) = rl.max_buckets {
        spec.max_buckets = b;
    }
    if let Some(r) = rl.max_cas_retries {
        spec.max_cas_retries = r;
    }
    if let Some(m) = rl.on_store_failure {
        spec.on_store_failure = m;
    }
    if let Some(m) = rl.on_table_full {
        spec.on_table_full = m;
    }
    spec.compute_config_hash();
    for (field, msg) in spec.validate() {
        let field = if field == "period_ms" {
            "refill"
        } else {
            field
        };
        errors.push(format!("{path}.{field}"), msg);
    }
    if rl.key.is_empty() {
        errors.push(
            format!("{path}.key"),
            "list at least one key part (`constant: all` for one bucket for everyone)",
        );
    }
    let mut key = Vec::new();
    for (j, part) in rl.key.into_iter().enumerate() {
        let here = format!("{path}.key[{j}]");
        let set = [
            part.client_ip.is_some(),
            part.claim.is_some(),
            part.header.is_some(),
            part.route.is_some(),
            part.constant.is_some(),
        ];
        if set.iter().filter(|b| **b).count() != 1 {
            errors.push(
                here,
                "a key part is exactly one of `client_ip`, `claim`, `header`, `route`, `constant`",
            );
            continue;
        }
        if let Some(ip) = part.client_ip {
            key.push(KeyPart::ClientIp {
                trusted_hops: ip.trusted_hops,
            });
        } else if let Some(c) = part.claim {
            key.push(KeyPart::Claim(c));
        } else if let Some(h) = part.header {
            if let Some(h) = check_header_name(&h, &format!("{here}.header"), errors) {
                key.push(KeyPart::Header(h));
            }
        } else if part.route == Some(true) {
            key.push(KeyPart::Route);
        } else if let Some(c) = part.constant {
            key.push(KeyPart::Constant(c));
        } else {
            errors.push(format!("{here}.route"), "must be true when present");
        }
    }
    let (cost_default, cost_by_method) = match rl.cost {
        None => (1, Vec::new()),
        Some(c) => (
            c.default.unwrap_or(1),
            c.methods
                .into_iter()
                .filter_map(|(m, v)| match crate::grpc::cost_key(&m) {
                    Ok(key) => Some((key, v)),
                    Err(e) => {
                        errors.push(format!("{path}.cost.methods.{m}"), e);
                        None
                    }
                })
                .collect(),
        ),
    };
    (errors.len() == start).then(|| Limit {
        policy_header: policy_for(&spec),
        counters: LimitCounters::new(&spec.name),
        spec,
        key,
        cost_default,
        cost_by_method,
        global,
        count,
    })
}

fn compile_route(
    rr: RawRoute,
    path: &str,
    principals: &PrincipalNames,
    (limits, limit_names): (&[Limit], &HashSet<String>),
    errors: &mut Errors,
) -> Option<CompiledRoute<Route>> {
    let start = errors.len();
    let matcher = match &rr.matcher.grpc {
        Some(_) => crate::grpc::compile_match(&rr.matcher, rr.validate.as_ref())
            .map_err(|errs| {
                for (below, e) in errs {
                    errors.push(format!("{path}{below}"), e);
                }
            })
            .ok(),
        None => PathMatch::parse(rr.matcher.path.as_deref(), rr.matcher.prefix.as_deref())
            .map_err(|e| errors.push(format!("{path}.match"), e))
            .ok(),
    };
    let methods = rr.matcher.methods.map(|ms| {
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
    // gRPC calls are POST; `methods` next to `grpc` is an error reported above.
    let methods = match rr.matcher.grpc {
        Some(_) => Some(vec!["POST".to_string()]),
        None => methods,
    };
    let access = match (rr.public, rr.providers.is_empty()) {
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
            for (j, name) in rr.providers.iter().enumerate() {
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
    };
    let scopes = rr
        .scopes
        .map(|s| ScopeRequirement {
            all_of: s.all_of,
            any_of: s.any_of,
        })
        .unwrap_or_default();
    if !scopes.is_empty() && access == Some(Access::Public) {
        errors.push(
            format!("{path}.scopes"),
            "a public route has no principal to check scopes on",
        );
    }
    if !rr.rules.is_empty() && access == Some(Access::Public) {
        errors.push(
            format!("{path}.rules"),
            "a public route has no principal to check rules on",
        );
    }
    let params: Vec<String> = match &matcher {
        Some(PathMatch::Template(segments)) => segments
            .iter()
            .filter_map(|s| match s {
                crate::routes::Segment::Param(n) => Some(n.clone()),
                crate::routes::Segment::Literal(_) => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut rules = Vec::new();
    let mut rule_names = HashSet::new();
    for (j, raw) in rr.rules.into_iter().enumerate() {
        let here = format!("{path}.rules[{j}]");
        check_name(&raw.name, &format!("{here}.name"), errors);
        if !rule_names.insert(raw.name.clone()) {
            errors.push(
                format!("{here}.name"),
                format!("duplicate rule name `{}`", raw.name),
            );
        }
        if let Some(when) = compile_condition(raw.when, &format!("{here}.when"), &params, errors) {
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
    let validation = rr.validate.and_then(|raw| {
        match crate::validate::RouteValidation::compile(raw, &format!("{path}.validate"), &params) {
            Ok(v) => Some(v),
            Err(errs) => {
                for (p, m) in errs {
                    errors.push(p, m);
                }
                None
            }
        }
    });
    let mut route_limits = Vec::new();
    for (j, name) in rr.limits.iter().enumerate() {
        match limits.iter().position(|l| &l.spec.name == name) {
            Some(i) => route_limits.push(i),
            None if limit_names.contains(name) => {}
            None => errors.push(
                format!("{path}.limits[{j}]"),
                format!("no limit named `{name}`"),
            ),
        }
    }
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

/// Collects errors so a whole policy is reported at once.
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self) -> Vec<ConfigError> {
        std::mem::take(&mut self.0)
    }

    /// Parses every item of the list `list` strictly and checks that its name is unique in
    /// `names`; returns the items that parsed, each with its JSON path.
    fn parse_named<T: DeserializeOwned>(
        &mut self,
        items: Vec<Value>,
        list: &str,
        kind: &str,
        names: &mut HashSet<String>,
        name_of: impl Fn(&T) -> &String,
    ) -> Vec<(String, T)> {
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let path = format!("{list}[{i}]");
            let Some(parsed) = self.parse::<T>(item, &path) else {
                continue;
            };
            let name = name_of(&parsed);
            if !names.insert(name.clone()) {
                self.push(
                    format!("{path}.name"),
                    format!("duplicate {kind} name `{name}`"),
                );
            }
            out.push((path, parsed));
        }
        out
    }

    /// Deserializes one item strictly, recording the failing field's full JSON path.
    fn parse<T: DeserializeOwned>(&mut self, value: Value, base: &str) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let path = match (base.is_empty(), inner.as_str()) {
                    (_, ".") => base.to_string(),
                    (true, _) => inner,
                    (false, _) if inner.starts_with('[') => format!("{base}{inner}"),
                    (false, _) => format!("{base}.{inner}"),
                };
                self.push(path, e.into_inner().to_string());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
