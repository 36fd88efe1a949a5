//! Request validation: header, query and path parameters, the body (size, media type,
//! JSON nesting, JSON Schema) and the policy-wide size limits.
//!
//! Life cycle: `RouteValidation::compile` once per policy (schemas and regexes compile
//! here, every mistake reported with its JSON path), then per request `check_head` at the
//! request headers and, only when it returns `BodyPlan::Buffer`, `check_body` on the
//! buffered body. Requests on routes without a body rule are never buffered.
//!
//! Denials never echo request values: messages come from the policy, and the only input
//! text in an error is a (truncated) name in its `pointer`.

mod body;
mod limits;
mod param;
pub mod raw;
mod text;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod security_review_tests;

use std::fmt;

use serde::Serialize;
use serde_json::Value;

pub use limits::Limits;
pub use raw::{RawBody, RawLimits, RawParam, RawParamType, RawValidate};

use body::BodyRule;
use param::{ParamRule, Section};

/// Errors listed in one denial when the route does not set `max_errors`.
pub const DEFAULT_MAX_ERRORS: usize = 10;
/// Highest `max_errors` accepted.
pub const MAX_MAX_ERRORS: usize = 100;
/// Body limit when a schema is set but `max_bytes` is not: bodies are buffered for it.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Highest `max_bytes` accepted; Envoy's own buffer limit usually binds first.
pub const MAX_MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
/// JSON nesting allowed when `max_depth` is not set.
pub const DEFAULT_MAX_DEPTH: u32 = 32;
/// Highest `max_depth` accepted. Schema validation recurses per level: with a recursive
/// `anyOf`/`$ref` schema, depth 64 was measured to fit in 256 KiB of both wasm stacks (linear
/// and engine) where depth 127 did not, against Envoy's 1 MiB; serde_json stops at 128.
pub const MAX_MAX_DEPTH: u32 = 64;

/// Configuration mistakes, each with its JSON path (`routes[3].validate.query.limit.pattern`):
/// the policy's own error type, so a policy reports validation mistakes with the rest.
pub use crate::policy::{ConfigError, ConfigErrors};

/// Why a request was refused. `reason` is the stable code the lead counts in stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// 400, 413 or 415 for route rules; 414 or 431 for the global limits.
    pub status: u16,
    pub reason: &'static str,
    pub errors: Vec<ValidationError>,
}

/// One broken rule. Holds no request value, only where it is and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidationError {
    /// `"/items/0/name"` (JSON Pointer into the body; `""` is the whole body),
    /// `"header/x-request-id"`, `"query/limit"`, `"path/id"`, `"url"`, `"headers"`.
    pub pointer: String,
    /// The rule broken: a JSON Schema keyword (`type`, `maximum`, `additionalProperties`, …)
    /// or `required`, `forbidden`, `unknown`, `repeated`, `encoding`, `contentType`,
    /// `maxBytes`, `maxDepth`, `syntax`, `duplicateKey`.
    pub rule: String,
    pub message: String,
}

impl Failure {
    fn new(status: u16, reason: &'static str, errors: Vec<ValidationError>) -> Self {
        Failure {
            status,
            reason,
            errors,
        }
    }

    fn one(status: u16, reason: &'static str, pointer: &str, rule: &str, message: &str) -> Self {
        Failure::new(
            status,
            reason,
            vec![ValidationError::new(pointer, rule, message)],
        )
    }

    /// A fixed sentence for the problem `detail`, chosen by reason (never request data).
    pub fn detail(&self) -> &'static str {
        match self.reason {
            "invalid_header" => "a request header is invalid",
            "invalid_query" => "a query parameter is invalid",
            "invalid_path_param" => "a path parameter is invalid",
            "invalid_body" => "the request body is invalid",
            "too_deep" => "the request body is nested too deeply",
            "body_too_large" => "the request body is too large",
            "unsupported_media_type" => "the request body's media type is not accepted",
            "url_too_long" => "the request URL is too long",
            "too_many_headers" => "the request has too many headers",
            "header_too_large" => "a request header is too large",
            _ => "the request is invalid",
        }
    }

    /// `errors` as a JSON array, ready to be a problem+json extension member.
    pub fn errors_json(&self) -> Value {
        serde_json::to_value(&self.errors).unwrap_or(Value::Null)
    }
}

impl ValidationError {
    fn new(pointer: &str, rule: &str, message: &str) -> Self {
        ValidationError {
            pointer: pointer.to_string(),
            rule: rule.to_string(),
            message: message.to_string(),
        }
    }
}

/// What to do with the body after `check_head` passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPlan {
    /// Nothing to check: forward the body as it streams, never buffer.
    Skip,
    /// No length was announced: let the body stream, but count it and refuse with
    /// `check_body_size` once it passes `max_bytes`.
    Limit { max_bytes: u64 },
    /// Buffer the whole body, refusing with `check_body_size` as soon as it passes
    /// `max_bytes`, then call `check_body` once on all of it.
    Buffer { max_bytes: u64 },
}

/// The compiled `validate` block of one route.
pub struct RouteValidation {
    headers: Vec<ParamRule>,
    query: Vec<ParamRule>,
    reject_unknown_query: bool,
    allow_query_name_variants: bool,
    path: Vec<ParamRule>,
    body: Option<BodyRule>,
    max_errors: usize,
}

impl fmt::Debug for RouteValidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteValidation")
            .field("headers", &self.headers.len())
            .field("query", &self.query.len())
            .field("reject_unknown_query", &self.reject_unknown_query)
            .field("path", &self.path.len())
            .field("body", &self.body.is_some())
            .field("max_errors", &self.max_errors)
            .finish()
    }
}

/// Collects errors up to the route's cap.
pub(crate) struct Errors {
    list: Vec<ValidationError>,
    cap: usize,
}

impl Errors {
    pub(crate) fn new(cap: usize) -> Self {
        Errors {
            list: Vec::new(),
            cap,
        }
    }

    pub(crate) fn push(
        &mut self,
        pointer: impl Into<String>,
        rule: &str,
        message: impl Into<String>,
    ) {
        if !self.full() {
            self.list.push(ValidationError {
                pointer: pointer.into(),
                rule: rule.to_string(),
                message: message.into(),
            });
        }
    }

    pub(crate) fn full(&self) -> bool {
        self.list.len() >= self.cap
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    pub(crate) fn into_vec(self) -> Vec<ValidationError> {
        self.list
    }
}

impl RouteValidation {
    /// Compiles a route's `validate` block. `path` is its JSON path prefix
    /// (`routes[3].validate`); `template_params` the names in the route's path template.
    /// Every mistake is returned at once, each with the JSON path of the offending field.
    pub fn compile(
        raw: RawValidate,
        path: &str,
        template_params: &[String],
    ) -> Result<RouteValidation, ConfigErrors> {
        Self::compile_with_resources(raw, path, template_params, &[])
    }

    /// `compile`, with schema documents preloaded by URL so that a body schema can `$ref`
    /// them (no schema is ever fetched). The filter passes none; the JSON-Schema-Test-Suite
    /// passes its `remotes/`. Also the hook for policy-level shared schemas.
    pub fn compile_with_resources(
        raw: RawValidate,
        path: &str,
        template_params: &[String],
        resources: &[(String, Value)],
    ) -> Result<RouteValidation, ConfigErrors> {
        let mut errors = ConfigErrors::new();
        let max_errors = match raw.max_errors {
            None => DEFAULT_MAX_ERRORS,
            Some(n) if (1..=MAX_MAX_ERRORS).contains(&n) => n,
            Some(_) => {
                errors.push(
                    format!("{path}.max_errors"),
                    format!("must be between 1 and {MAX_MAX_ERRORS}"),
                );
                DEFAULT_MAX_ERRORS
            }
        };
        let headers = param::compile_section(
            Section::Header,
            raw.headers,
            &format!("{path}.headers"),
            template_params,
            &mut errors,
        );
        let query = param::compile_section(
            Section::Query,
            raw.query,
            &format!("{path}.query"),
            template_params,
            &mut errors,
        );
        let path_rules = param::compile_section(
            Section::Path,
            raw.path,
            &format!("{path}.path"),
            template_params,
            &mut errors,
        );
        let body = raw
            .body
            .and_then(|b| BodyRule::compile(b, &format!("{path}.body"), resources, &mut errors));
        errors.into_result(RouteValidation {
            headers,
            query,
            reject_unknown_query: raw.reject_unknown_query,
            allow_query_name_variants: raw.allow_query_name_variants,
            path: path_rules,
            body,
            max_errors,
        })
    }

    /// Whether the route has a `body` rule at all (if not, `check_head` always says `Skip`).
    pub fn has_body_rule(&self) -> bool {
        self.body.is_some()
    }

    /// Checks everything known at request headers. `headers` have lowercase names;
    /// `query` is the raw query string (no `?`); `path_params` are the template values as
    /// matched (still percent-encoded); `content_length` is `Some(0)` when the headers ended
    /// the stream. Parameter errors of all kinds are reported together (400, with the reason
    /// of the first kind that failed: header, path, query), then the body's media type (415)
    /// and announced length (413).
    pub fn check_head(
        &self,
        headers: &[(&str, &str)],
        query: &str,
        path_params: &[(String, String)],
        content_type: Option<&str>,
        content_length: Option<u64>,
    ) -> Result<BodyPlan, Failure> {
        let mut errors = Errors::new(self.max_errors);
        let mut reason: Option<&'static str> = None;
        let sections = [
            (Section::Header, "invalid_header"),
            (Section::Path, "invalid_path_param"),
            (Section::Query, "invalid_query"),
        ];
        for (section, code) in sections {
            let before = errors.len();
            match section {
                Section::Header => param::check_headers(&self.headers, headers, &mut errors),
                Section::Path => param::check_path(&self.path, path_params, &mut errors),
                Section::Query => {
                    let unknown = param::Unknown {
                        reject: self.reject_unknown_query,
                        reject_variants: !self.allow_query_name_variants,
                    };
                    param::check_query(&self.query, unknown, query, &mut errors)
                }
            }
            if reason.is_none() && errors.len() > before {
                reason = Some(code);
            }
        }
        if let Some(reason) = reason {
            return Err(Failure::new(400, reason, errors.into_vec()));
        }
        match &self.body {
            None => Ok(BodyPlan::Skip),
            Some(rule) => rule.check_head(content_type, content_length),
        }
    }

    /// For a streaming or buffering body: `seen` is the byte count so far.
    pub fn check_body_size(&self, seen: u64) -> Result<(), Failure> {
        match &self.body {
            Some(rule) => rule.check_size(seen),
            None => Ok(()),
        }
    }

    /// Checks a whole buffered body: size (413), UTF-8, JSON syntax, nesting (`too_deep`),
    /// duplicate keys, then the schema (400).
    pub fn check_body(&self, body: &[u8]) -> Result<(), Failure> {
        match &self.body {
            Some(rule) => rule.check_body(body, self.max_errors),
            None => Ok(()),
        }
    }
}
