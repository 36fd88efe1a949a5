//! The policy exactly as users write it (JSON in Envoy, YAML `pluginConfig` in Istio).
//!
//! These structs only describe shape: every field is checked strictly (`deny_unknown_fields`)
//! and nothing here is trusted until `compile` turns it into a `Policy`.

use serde::Deserialize;
use serde_json::Value;

/// Top level. Providers and routes stay raw JSON here so that each item is parsed on its own
/// and one malformed route does not hide the errors of the others.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[serde(default)]
    pub realm: Option<String>,
    #[serde(default)]
    pub unmatched: Option<RawUnmatched>,
    /// What to do with a request that differs from a route only by case or trailing slash.
    #[serde(default)]
    pub lookalikes: Option<RawLookalikes>,
    /// Let CORS preflights for a routed method through without credentials.
    #[serde(default)]
    pub bypass_cors_preflight: bool,
    #[serde(default)]
    pub token_cache_size: Option<usize>,
    #[serde(default)]
    pub max_token_bytes: Option<usize>,
    #[serde(default)]
    pub providers: Vec<Value>,
    #[serde(default)]
    pub api_keys: Vec<Value>,
    #[serde(default)]
    pub client_certs: Vec<Value>,
    #[serde(default)]
    pub limits: Vec<Value>,
    /// Policy-wide size limits on the URL and headers (414 / 431).
    #[serde(default)]
    pub request_limits: Option<crate::validate::RawLimits>,
    /// Level of the one-line JSON record logged per denied request.
    #[serde(default)]
    pub deny_log: Option<RawLogLevel>,
    /// Hold a request's headers until its body passed validation. Needs the Envoy Wasm
    /// filter setting `allow_on_headers_stop_iteration: true`.
    #[serde(default)]
    pub hold_headers_for_body: bool,
    /// Send `RateLimit` / `RateLimit-Policy` on allowed responses too, not only on 429.
    #[serde(default)]
    pub ratelimit_headers_on_allow: bool,
    /// Write the per-request decision record to Envoy filter state, for an access log that
    /// prints it (default false: it costs a host call on every request).
    #[serde(default)]
    pub decision_record: bool,
    /// What a method-override header (`X-HTTP-Method-Override`, ...) does (default refuse).
    #[serde(default)]
    pub method_override: Option<RawMethodOverride>,
    #[serde(default)]
    pub routes: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    pub name: String,
    /// Required for a local limit; a global limit's size lives in the rate limit service.
    #[serde(default)]
    pub capacity: Option<u64>,
    #[serde(default)]
    pub refill: Option<RawRefill>,
    pub key: Vec<RawKeyPart>,
    #[serde(default)]
    pub cost: Option<RawCost>,
    #[serde(default)]
    pub max_buckets: Option<u32>,
    #[serde(default)]
    pub max_cas_retries: Option<u32>,
    #[serde(default)]
    pub on_store_failure: Option<crate::ratelimit::FailureMode>,
    #[serde(default)]
    pub on_table_full: Option<crate::ratelimit::TableFullMode>,
    /// Decided by a rate limit service instead of this Envoy's buckets.
    #[serde(default)]
    pub global: Option<RawGlobal>,
    /// `auth_failures`: a lockout (counts refused credentials, then refuses the key).
    #[serde(default)]
    pub count: Option<crate::ratelimit::lockout::Count>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGlobal {
    /// Envoy cluster (HTTP/2) of the rate limit service.
    pub cluster: String,
    pub domain: String,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub on_error: Option<crate::ratelimit::FailureMode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRefill {
    pub tokens: u64,
    #[serde(default)]
    pub period_seconds: Option<u64>,
    #[serde(default)]
    pub period_ms: Option<u64>,
}

/// One part of a bucket key. Exactly one field per part.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyPart {
    #[serde(default)]
    pub client_ip: Option<RawClientIp>,
    #[serde(default)]
    pub claim: Option<String>,
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub route: Option<bool>,
    #[serde(default)]
    pub constant: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawClientIp {
    /// Proxies in front of Envoy that append to `x-forwarded-for` (0: use the connection).
    #[serde(default)]
    pub trusted_hops: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCost {
    #[serde(default)]
    pub default: Option<u64>,
    #[serde(default)]
    pub methods: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawLogLevel {
    Off,
    Debug,
    Info,
    Warn,
}

/// `deny`: refuse lookalike requests (400); `unmatched`: treat them like any unmatched request.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawLookalikes {
    Deny,
    Unmatched,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawMethodOverride {
    Refuse,
    Honor,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawUnmatched {
    Deny,
    Allow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub name: String,
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    pub jwks: RawJwks,
    #[serde(default)]
    pub from: Option<Vec<RawTokenSource>>,
    #[serde(default)]
    pub clock_skew_seconds: Option<u64>,
    #[serde(default)]
    pub require_exp: Option<bool>,
    #[serde(default)]
    pub max_lifetime_seconds: Option<u64>,
    #[serde(default)]
    pub typ: Option<Vec<String>>,
    #[serde(default)]
    pub claims_to_headers: Vec<RawClaimHeader>,
    #[serde(default)]
    pub forward_payload_header: Option<String>,
    #[serde(default)]
    pub forward: Option<bool>,
    #[serde(default)]
    pub scope_claims: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwks {
    /// A JWKS object, or the same as a JSON string.
    #[serde(default)]
    pub inline: Option<Value>,
    #[serde(default)]
    pub remote: Option<RawRemoteJwks>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRemoteJwks {
    pub cluster: String,
    pub uri: String,
    #[serde(default)]
    pub discovery: bool,
    #[serde(default)]
    pub refresh_seconds: Option<u64>,
    #[serde(default)]
    pub retry_seconds: Option<u64>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub min_refetch_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokenSource {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaimHeader {
    pub claim: String,
    pub header: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub providers: Vec<String>,
    #[serde(default)]
    pub scopes: Option<RawScopes>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    #[serde(default)]
    pub limits: Vec<String>,
    #[serde(default)]
    pub validate: Option<crate::validate::RawValidate>,
}

/// A named set of API keys; routes name it in `providers` like a JWT provider.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKeySet {
    pub name: String,
    #[serde(default)]
    pub from: Option<Vec<RawTokenSource>>,
    #[serde(default)]
    pub forward: Option<bool>,
    pub keys: Vec<RawApiKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    pub client_id: String,
    /// Hex SHA-256 of the key: the policy never holds the key itself.
    pub sha256: String,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// Peer identities from a client certificate Envoy verified (mTLS).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientCertSet {
    pub name: String,
    #[serde(default)]
    pub uri_sans: Vec<String>,
    #[serde(default)]
    pub uri_san_prefixes: Vec<String>,
    #[serde(default)]
    pub subjects: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RawEffect {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RawMode {
    #[default]
    Enforce,
    Audit,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    #[serde(default)]
    pub effect: RawEffect,
    #[serde(default)]
    pub mode: RawMode,
    pub when: RawCondition,
}

/// One claim test, or a combination. Exactly one operator per object.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    #[serde(default)]
    pub claim: Option<String>,
    #[serde(default)]
    pub equals: Option<Value>,
    #[serde(default)]
    pub one_of: Option<Vec<Value>>,
    #[serde(default)]
    pub matches: Option<String>,
    #[serde(default)]
    pub present: Option<bool>,
    #[serde(default)]
    pub contains: Option<Value>,
    #[serde(default)]
    pub equals_param: Option<String>,
    #[serde(default)]
    pub all: Option<Vec<RawCondition>>,
    #[serde(default)]
    pub any: Option<Vec<RawCondition>>,
    #[serde(default)]
    pub not: Option<Box<RawCondition>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// A gRPC service and optionally one method, instead of `path`/`prefix`/`methods`.
    #[serde(default)]
    pub grpc: Option<RawGrpcMatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrpcMatch {
    /// Fully-qualified service name, `package.Service`.
    pub service: String,
    /// One method of it; absent: every method.
    #[serde(default)]
    pub method: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScopes {
    #[serde(default)]
    pub all_of: Vec<String>,
    #[serde(default)]
    pub any_of: Vec<String>,
}
