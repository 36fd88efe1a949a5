//! The compiled policy: what every request reads. Built once per configuration by
//! `compile`, never changed afterwards.

use std::rc::Rc;

use serde_json::Value;

use super::raw;
use crate::authz::{Rule, ScopeRequirement};
use crate::jwks_sync::RemoteSpec;
use crate::jwt::{Jwks, Rules};
use crate::routes::RouteTable;

pub const DEFAULT_REALM: &str = "apiguard";
pub const DEFAULT_CLOCK_SKEW_SECS: u64 = 60;
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;
pub const DEFAULT_TOKEN_CACHE_SIZE: usize = 1024;

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
    /// Write `apiguard_decision` to filter state (a host call of ~3 µs per request), for an
    /// access log that prints it; off by default, as a module cannot see the access logs.
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
    pub(super) fn new(name: &str) -> Self {
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
    /// What `apiguard check` and the `policy loaded` log line say about an accepted policy:
    /// its size, and whether the access-log decision record is written (off by default
    /// since issue 14: an operator upgrading sees why the access log prints `-`).
    pub fn summary(&self) -> String {
        format!(
            "{} provider(s), {} route(s), decision record {}",
            self.providers.len(),
            self.routes.len(),
            if self.decision_record { "on" } else { "off" }
        )
    }

    pub fn provider_index(&self, name: &str) -> Option<usize> {
        self.providers.iter().position(|p| p.name == name)
    }
}
