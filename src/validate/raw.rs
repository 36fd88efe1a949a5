//! The `validate:` block of a route and the policy-level `limits:` block, exactly as users
//! write them. Shape only: `RouteValidation::compile` and `Limits::compile` check the meaning.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// `routes[i].validate`. Maps are ordered so that errors come out in a stable order.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawValidate {
    #[serde(default)]
    pub headers: BTreeMap<String, RawParam>,
    #[serde(default)]
    pub query: BTreeMap<String, RawParam>,
    /// Reject query parameters that `query` does not declare.
    #[serde(default)]
    pub reject_unknown_query: bool,
    /// Accept `LIMIT=` or `limit[]=` beside a `limit` rule (default false: refused, since
    /// case-insensitive or PHP/Rails-style binders read them as `limit`).
    #[serde(default)]
    pub allow_query_name_variants: bool,
    /// Route template parameters (`/items/{id}`), by name.
    #[serde(default)]
    pub path: BTreeMap<String, RawParam>,
    #[serde(default)]
    pub body: Option<RawBody>,
    /// How many errors one denial lists at most (default 10).
    #[serde(default)]
    pub max_errors: Option<usize>,
}

/// One header, query or path parameter.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawParam {
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub forbidden: bool,
    #[serde(default, rename = "type")]
    pub kind: Option<RawParamType>,
    /// Rust `regex` syntax, searched like JSON Schema `pattern`: anchor with `^…$`.
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub min_length: Option<u64>,
    #[serde(default)]
    pub max_length: Option<u64>,
    #[serde(default)]
    pub minimum: Option<f64>,
    #[serde(default)]
    pub maximum: Option<f64>,
    /// Allowed values (strings, numbers or booleans); alone, it implies `type: enum`.
    #[serde(default, rename = "enum")]
    pub allowed: Option<Vec<Value>>,
    /// Allow the header or query parameter more than once (each copy is checked).
    #[serde(default)]
    pub allow_repeated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawParamType {
    String,
    Integer,
    Number,
    Boolean,
    Uuid,
    Enum,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBody {
    /// Media types accepted (parameters such as `charset` ignored). Absent with a `schema`:
    /// `application/json` and `application/*+json`.
    #[serde(default)]
    pub content_types: Option<Vec<String>>,
    #[serde(default)]
    pub max_bytes: Option<u64>,
    #[serde(default)]
    pub max_depth: Option<u32>,
    /// A JSON Schema (draft 2020-12 unless its `$schema` says otherwise), inline.
    #[serde(default)]
    pub schema: Option<Value>,
    /// Whether an empty body is refused; default: true when a `schema` is set.
    #[serde(default)]
    pub required: Option<bool>,
    /// Accept object members whose names differ only by letter case (`amount`/`AMOUNT`).
    /// Default false: Go and ASP.NET Core bind them to one field, the last one winning.
    #[serde(default)]
    pub allow_case_variant_keys: bool,
    /// Make `format` (email, uuid, date-time, ...) an assertion; in 2020-12 it is only an
    /// annotation by default.
    #[serde(default)]
    pub format_assertion: bool,
}

/// Policy-level `limits`, checked on every request before routing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Bytes of `:path`, query included.
    #[serde(default)]
    pub max_url_bytes: Option<u64>,
    /// Number of request headers, pseudo-headers excluded.
    #[serde(default)]
    pub max_headers: Option<u64>,
    /// Bytes of one header, name plus value.
    #[serde(default)]
    pub max_header_bytes: Option<u64>,
}
