//! Header, query and path parameter rules.
//!
//! `pattern` is searched, not matched whole, like JSON Schema's `pattern` (and OpenAPI's),
//! so one regex means the same in `query` and in `body.schema`: anchor it with `^…$` to
//! constrain the whole value. Patterns use the `regex` crate (linear time, no
//! backtracking), the engine boon already brings for schema patterns.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use regex::{Regex, RegexBuilder};
use serde_json::Value;

use super::raw::{RawParam, RawParamType};
use super::text::{clip, is_token, pointer_token, MAX_ECHO_CHARS};
use super::{ConfigErrors, Errors};
use crate::percent;

/// Compiled size cap for one parameter pattern: config errors instead of memory blow-ups.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Header,
    Query,
    Path,
}

impl Section {
    fn pointer_prefix(self) -> &'static str {
        match self {
            Section::Header => "header",
            Section::Query => "query",
            Section::Path => "path",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Integer,
    Number,
    Boolean,
    Uuid,
    Enum,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Integer => "integer",
            Kind::Number => "number",
            Kind::Boolean => "boolean",
            Kind::Uuid => "uuid",
            Kind::Enum => "enum",
        }
    }

    fn is_numeric(self) -> bool {
        matches!(self, Kind::Integer | Kind::Number)
    }

    fn is_text(self) -> bool {
        matches!(self, Kind::String | Kind::Enum)
    }
}

/// A parameter value after its type check.
#[derive(Debug, Clone, Copy)]
enum Typed {
    Text,
    Int(i64),
    Float(f64),
    Other,
}

enum Allowed {
    Any,
    Strings(Vec<String>),
    Numbers(Vec<f64>),
}

pub(crate) struct ParamRule {
    name: String,
    pointer: String,
    required: bool,
    forbidden: bool,
    allow_repeated: bool,
    kind: Kind,
    pattern: Option<Regex>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    allowed: Allowed,
}

pub(crate) fn compile_section(
    section: Section,
    raw: BTreeMap<String, RawParam>,
    path: &str,
    template_params: &[String],
    errors: &mut ConfigErrors,
) -> Vec<ParamRule> {
    let mut rules: Vec<ParamRule> = Vec::new();
    for (name, param) in raw {
        let here = format!("{path}.{name}");
        let name = match section {
            Section::Header => {
                let lower = name.to_ascii_lowercase();
                if !is_token(&lower) {
                    errors.push(here, "is not a valid header name");
                    continue;
                }
                lower
            }
            Section::Query => {
                if name.is_empty() {
                    errors.push(here, "a query parameter name cannot be empty");
                    continue;
                }
                name
            }
            Section::Path => {
                if !template_params.contains(&name) {
                    errors.push(
                        here,
                        format!("the route path has no template parameter {{{name}}}"),
                    );
                    continue;
                }
                name
            }
        };
        if rules.iter().any(|r| r.name == name) {
            errors.push(here, "is declared twice (header names ignore case)");
            continue;
        }
        if let Some(rule) = compile_param(section, name, param, &here, errors) {
            rules.push(rule);
        }
    }
    rules
}

fn compile_param(
    section: Section,
    name: String,
    mut raw: RawParam,
    here: &str,
    errors: &mut ConfigErrors,
) -> Option<ParamRule> {
    let before = errors.len();
    let mut err = |field: &str, msg: String| {
        let at = if field.is_empty() {
            here.to_string()
        } else {
            format!("{here}.{field}")
        };
        errors.push(at, msg);
    };
    check_presence(section, &raw, &mut err);
    let kind = param_kind(&raw);
    let allowed = match raw.allowed.take() {
        None => {
            if kind == Kind::Enum {
                err("type", "type enum needs an `enum` list of values".into());
            }
            Allowed::Any
        }
        Some(list) => compile_allowed(kind, list, &mut err),
    };
    let pattern = raw
        .pattern
        .as_deref()
        .and_then(|p| compile_pattern(p, kind, &mut err));
    check_lengths(&raw, kind, &mut err);
    check_bounds(&raw, kind, &mut err);
    if errors.len() > before {
        return None;
    }
    let pointer = format!("{}/{}", section.pointer_prefix(), pointer_token(&name));
    Some(ParamRule {
        name,
        pointer,
        // Template parameters are there whenever the route matched.
        required: raw.required || section == Section::Path,
        forbidden: raw.forbidden,
        allow_repeated: raw.allow_repeated,
        kind,
        pattern,
        min_length: raw.min_length,
        max_length: raw.max_length,
        minimum: raw.minimum,
        maximum: raw.maximum,
        allowed,
    })
}

/// `forbidden` and `allow_repeated`: a path parameter is always there, once; a forbidden
/// parameter takes no other rule.
fn check_presence(section: Section, raw: &RawParam, err: &mut impl FnMut(&str, String)) {
    if section == Section::Path {
        if raw.forbidden {
            err("forbidden", "a path parameter is always present".into());
        }
        if raw.allow_repeated {
            err("allow_repeated", "a path parameter appears once".into());
        }
    }
    if !raw.forbidden {
        return;
    }
    if raw.required {
        err("forbidden", "cannot be both required and forbidden".into());
    }
    let constrained = raw.kind.is_some()
        || raw.pattern.is_some()
        || raw.min_length.is_some()
        || raw.max_length.is_some()
        || raw.minimum.is_some()
        || raw.maximum.is_some()
        || raw.allowed.is_some()
        || raw.allow_repeated;
    if constrained {
        err(
            "forbidden",
            "a forbidden parameter takes no other rule".into(),
        );
    }
}

/// `type`, or `enum` when only an `enum` list is given, else `string`.
fn param_kind(raw: &RawParam) -> Kind {
    match (raw.kind, &raw.allowed) {
        (Some(RawParamType::String), _) => Kind::String,
        (Some(RawParamType::Integer), _) => Kind::Integer,
        (Some(RawParamType::Number), _) => Kind::Number,
        (Some(RawParamType::Boolean), _) => Kind::Boolean,
        (Some(RawParamType::Uuid), _) => Kind::Uuid,
        (Some(RawParamType::Enum), _) | (None, Some(_)) => Kind::Enum,
        (None, None) => Kind::String,
    }
}

fn compile_pattern(p: &str, kind: Kind, err: &mut impl FnMut(&str, String)) -> Option<Regex> {
    if !kind.is_text() {
        err(
            "pattern",
            format!("applies to strings, not to type {}", kind.name()),
        );
    }
    match RegexBuilder::new(p).size_limit(PATTERN_SIZE_LIMIT).build() {
        Ok(re) => Some(re),
        Err(e) => {
            err("pattern", one_line(&e.to_string()));
            None
        }
    }
}

/// `min_length` / `max_length`: strings only, in order.
fn check_lengths(raw: &RawParam, kind: Kind, err: &mut impl FnMut(&str, String)) {
    if (raw.min_length.is_some() || raw.max_length.is_some()) && !kind.is_text() {
        let field = if raw.min_length.is_some() {
            "min_length"
        } else {
            "max_length"
        };
        err(
            field,
            format!("applies to strings, not to type {}", kind.name()),
        );
    }
    if let (Some(lo), Some(hi)) = (raw.min_length, raw.max_length) {
        if lo > hi {
            err("min_length", "must not exceed max_length".into());
        }
    }
}

/// `minimum` / `maximum`: numbers only, finite, in order.
fn check_bounds(raw: &RawParam, kind: Kind, err: &mut impl FnMut(&str, String)) {
    for (field, bound) in [("minimum", raw.minimum), ("maximum", raw.maximum)] {
        if let Some(b) = bound {
            if !kind.is_numeric() {
                err(
                    field,
                    format!("applies to integer and number, not to type {}", kind.name()),
                );
            } else if !b.is_finite() {
                err(field, "must be a finite number".into());
            }
        }
    }
    if let (Some(lo), Some(hi)) = (raw.minimum, raw.maximum) {
        if lo > hi {
            err("minimum", "must not exceed maximum".into());
        }
    }
}

fn compile_allowed(kind: Kind, list: Vec<Value>, err: &mut impl FnMut(&str, String)) -> Allowed {
    if list.is_empty() {
        err("enum", "must list at least one value".into());
        return Allowed::Any;
    }
    let mut strings = Vec::new();
    let mut numbers = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let field = format!("enum[{i}]");
        let text = match item {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                err(&field, "must be a string, number or boolean".into());
                continue;
            }
        };
        match typed(kind, &text) {
            Some(Typed::Int(n)) => numbers.push(n as f64),
            Some(Typed::Float(f)) => numbers.push(f),
            Some(_) => strings.push(text),
            None => err(&field, format!("is not a valid {}", kind.name())),
        }
    }
    if kind.is_numeric() {
        Allowed::Numbers(numbers)
    } else {
        Allowed::Strings(strings)
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `Some` when `v` is a valid value of `kind`.
fn typed(kind: Kind, v: &str) -> Option<Typed> {
    match kind {
        Kind::String | Kind::Enum => Some(Typed::Text),
        // Beyond i64 an integer is still an integer (JSON Schema and OpenAPI put no range
        // on `integer`); it is compared with bounds as a float.
        Kind::Integer => parse_integer(v)
            .map(Typed::Int)
            .or_else(|| big_integer(v).map(Typed::Float)),
        Kind::Number => parse_number(v).map(Typed::Float),
        Kind::Boolean => matches!(v, "true" | "false").then_some(Typed::Other),
        Kind::Uuid => is_uuid(v).then_some(Typed::Other),
    }
}

/// Decimal, optional `-`, no `+`, no leading zeros, within i64.
fn parse_integer(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// An integer in the grammar of `parse_integer` that does not fit in i64, as a float.
fn big_integer(s: &str) -> Option<f64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let grammar =
        digits.len() > 1 && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0');
    grammar
        .then(|| s.parse::<f64>().ok())
        .flatten()
        .filter(|f| f.is_finite())
}

/// The JSON number grammar (no `inf`, `NaN`, `+1`, `.5`), finite after parsing.
fn parse_number(s: &str) -> Option<f64> {
    let mut it = s.bytes().peekable();
    if it.peek() == Some(&b'-') {
        it.next();
    }
    match it.next() {
        Some(b'0') => {}
        Some(b'1'..=b'9') => while it.next_if(u8::is_ascii_digit).is_some() {},
        _ => return None,
    }
    if it.next_if_eq(&b'.').is_some() {
        it.next_if(u8::is_ascii_digit)?;
        while it.next_if(u8::is_ascii_digit).is_some() {}
    }
    if it.next_if(|b| *b == b'e' || *b == b'E').is_some() {
        let _ = it.next_if(|b| *b == b'+' || *b == b'-');
        it.next_if(u8::is_ascii_digit)?;
        while it.next_if(u8::is_ascii_digit).is_some() {}
    }
    if it.next().is_some() {
        return None;
    }
    s.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// `8-4-4-4-12` hex digits, any case, any version.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Exact comparison of an integer with a float bound (no rounding of either).
fn cmp_int_float(i: i64, f: f64) -> Ordering {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f >= TWO_63 {
        return Ordering::Less;
    }
    if f < -TWO_63 {
        return Ordering::Greater;
    }
    let whole = f.trunc();
    match i.cmp(&(whole as i64)) {
        Ordering::Equal => 0.0_f64.partial_cmp(&(f - whole)).unwrap_or(Ordering::Equal),
        other => other,
    }
}

fn cmp_num(v: Typed, bound: f64) -> Option<Ordering> {
    match v {
        Typed::Int(i) => Some(cmp_int_float(i, bound)),
        Typed::Float(f) => f.partial_cmp(&bound),
        _ => None,
    }
}

impl ParamRule {
    /// All copies of this parameter in the request.
    fn check_all(&self, values: &[&str], errors: &mut Errors) {
        if values.is_empty() {
            if self.required {
                errors.push(self.pointer.clone(), "required", "is required");
            }
            return;
        }
        if self.forbidden {
            errors.push(self.pointer.clone(), "forbidden", "is not allowed");
            return;
        }
        if values.len() > 1 && !self.allow_repeated {
            errors.push(self.pointer.clone(), "repeated", "must appear at most once");
            return;
        }
        for v in values {
            self.check_value(v, errors);
        }
    }

    fn check_value(&self, v: &str, errors: &mut Errors) {
        let Some(t) = typed(self.kind, v) else {
            let msg = format!("must be a valid {}", self.kind.name());
            errors.push(self.pointer.clone(), "type", msg);
            return;
        };
        let listed = match &self.allowed {
            Allowed::Any => true,
            Allowed::Strings(list) => list.iter().any(|a| a == v),
            Allowed::Numbers(list) => list.iter().any(|a| cmp_num(t, *a) == Some(Ordering::Equal)),
        };
        if !listed {
            let msg = "must be one of the allowed values";
            errors.push(self.pointer.clone(), "enum", msg);
        }
        if let Some(re) = &self.pattern {
            if !re.is_match(v) {
                let msg = format!("must match {}", clip(re.as_str(), MAX_ECHO_CHARS));
                errors.push(self.pointer.clone(), "pattern", msg);
            }
        }
        if self.min_length.is_some() || self.max_length.is_some() {
            let n = v.chars().count() as u64;
            if let Some(lo) = self.min_length.filter(|lo| n < *lo) {
                let msg = format!("must be at least {lo} characters long");
                errors.push(self.pointer.clone(), "minLength", msg);
            }
            if let Some(hi) = self.max_length.filter(|hi| n > *hi) {
                let msg = format!("must be at most {hi} characters long");
                errors.push(self.pointer.clone(), "maxLength", msg);
            }
        }
        if let Some(lo) = self.minimum {
            if cmp_num(t, lo) == Some(Ordering::Less) {
                errors.push(self.pointer.clone(), "minimum", format!("must be >= {lo}"));
            }
        }
        if let Some(hi) = self.maximum {
            if cmp_num(t, hi) == Some(Ordering::Greater) {
                errors.push(self.pointer.clone(), "maximum", format!("must be <= {hi}"));
            }
        }
    }
}

pub(crate) fn check_headers(rules: &[ParamRule], headers: &[(&str, &str)], errors: &mut Errors) {
    for rule in rules {
        let values: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| *n == rule.name)
            .map(|(_, v)| *v)
            .collect();
        rule.check_all(&values, errors);
    }
}

pub(crate) fn check_path(rules: &[ParamRule], params: &[(String, String)], errors: &mut Errors) {
    for rule in rules {
        let raw = params.iter().find(|(n, _)| *n == rule.name);
        match raw.map(|(_, v)| percent::decode_utf8(v)) {
            None => rule.check_all(&[], errors),
            Some(None) => errors.push(
                rule.pointer.clone(),
                "encoding",
                "is not valid percent-encoded UTF-8",
            ),
            Some(Some(v)) => rule.check_all(&[v.as_ref()], errors),
        }
    }
}

/// What to do with query parameters no rule names exactly.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unknown {
    /// `reject_unknown_query`: refuse every one.
    pub reject: bool,
    /// Refuse other spellings of a ruled name (`LIMIT`, `limit[]`).
    pub reject_variants: bool,
}

/// The name a lenient binder would read: PHP, Rails and qs turn `limit[]` / `limit[0]` into
/// `limit`; ASP.NET Core and others match names case-insensitively.
fn binder_name(name: &str) -> String {
    let base = match name.split_once('[') {
        Some((base, _)) if name.ends_with(']') && !base.is_empty() => base,
        _ => name,
    };
    base.to_uppercase().to_lowercase()
}

/// `LIMIT=-1` beside a `limit` rule: the rule saw no value (or a good one) while the
/// application may bind the variant. Refused; `reject_unknown_query` refuses them anyway.
fn check_variants(rule: &ParamRule, pairs: &[(String, String)], errors: &mut Errors) {
    let canonical = binder_name(&rule.name);
    let variant = pairs
        .iter()
        .any(|(k, _)| *k != rule.name && binder_name(k) == canonical);
    if variant {
        errors.push(
            rule.pointer.clone(),
            "nameVariant",
            "is also sent under another spelling (letter case or a [] suffix)",
        );
    }
}

pub(crate) fn check_query(rules: &[ParamRule], unknown: Unknown, query: &str, errors: &mut Errors) {
    let reject_unknown = unknown.reject;
    if rules.is_empty() && !reject_unknown {
        return;
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut malformed = false;
    for piece in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
        match (percent::decode_form(k), percent::decode_form(v)) {
            (Some(k), Some(v)) => pairs.push((k, v)),
            _ => malformed = true,
        }
    }
    if malformed {
        // Undecodable pairs cannot be matched to rules, so they are refused outright.
        let msg = "holds a parameter that is not valid percent-encoded UTF-8";
        errors.push("query", "encoding", msg);
    }
    for rule in rules {
        let values: Vec<&str> = pairs
            .iter()
            .filter(|(k, _)| *k == rule.name)
            .map(|(_, v)| v.as_str())
            .collect();
        rule.check_all(&values, errors);
        if unknown.reject_variants && !reject_unknown {
            check_variants(rule, &pairs, errors);
        }
    }
    if reject_unknown {
        let mut reported: Vec<&str> = Vec::new();
        for (k, _) in &pairs {
            if errors.full() {
                break;
            }
            if rules.iter().all(|r| r.name != *k) && !reported.contains(&k.as_str()) {
                reported.push(k);
                let pointer = format!("query/{}", pointer_token(&clip(k, MAX_ECHO_CHARS)));
                errors.push(pointer, "unknown", "is not an accepted query parameter");
            }
        }
    }
}
