//! OpenAPI Parameter Objects -> apiguard parameter rules (`validate.headers/query/path`).
//!
//! apiguard checks one value per parameter (or each copy of a repeated one) against a type,
//! pattern, length, range and enum. What OpenAPI can say beyond that becomes a note:
//! cookie parameters, `content`-encoded parameters, object parameters, arrays in any wire
//! form but repeated `form` query parameters, formats other than `uuid`, `multipleOf`,
//! exclusive bounds on non-integers. A rule is only ever looser than the spec, never
//! stricter: a request the spec allows must not be refused.

use serde_json::{json, Map, Value};

use super::pointer::deref;

/// Where a parameter goes in `validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum In {
    Header,
    Query,
    Path,
}

impl In {
    pub fn section(self) -> &'static str {
        match self {
            In::Header => "headers",
            In::Query => "query",
            In::Path => "path",
        }
    }
}

/// One translated parameter: where, its name, the rule, and notes (pointer suffix, text).
#[derive(Debug)]
pub struct ParamOut {
    pub location: In,
    pub name: String,
    pub rule: Map<String, Value>,
    /// GitHub's `x-multi-segment: true`: a path parameter that may contain `/`.
    pub multi_segment: bool,
}

/// Header parameters OpenAPI says are ignored (they are described elsewhere).
const IGNORED_HEADERS: &[&str] = &["accept", "content-type", "authorization"];

/// Translates one (dereferenced) Parameter Object. `note` takes a pointer suffix relative to
/// the parameter and a message.
pub fn translate(
    doc: &Value,
    param: &Value,
    v30: bool,
    note: &mut dyn FnMut(&str, String),
) -> Option<ParamOut> {
    let name = param.get("name").and_then(Value::as_str)?.to_string();
    let location = match param.get("in").and_then(Value::as_str) {
        Some("header") => In::Header,
        Some("query") => In::Query,
        Some("path") => In::Path,
        Some("cookie") => {
            note("", format!("cookie parameter `{name}` is not checked"));
            return None;
        }
        other => {
            note(
                "/in",
                format!("parameter `{name}` has an unknown location {other:?}"),
            );
            return None;
        }
    };
    if location == In::Header && IGNORED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        note(
            "",
            format!("header parameter `{name}` is ignored, as OpenAPI specifies"),
        );
        return None;
    }
    let required = param
        .get("required")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut rule = Map::new();
    let schema = param.get("schema").map(|s| deref(doc, s));
    match schema {
        Some(Ok((schema, _))) => {
            let ctx = Ctx {
                location,
                v30,
                allow_empty: allow_empty(param),
            };
            let (mut r, must_be_present) = value_rule(doc, schema, param, &ctx, note);
            if required && must_be_present && location != In::Path {
                r.insert("required".into(), json!(true));
            }
            rule = r;
        }
        Some(Err(why)) => note("/schema", format!("{why}: value not checked")),
        None => {
            if param.get("content").is_some() {
                note(
                    "/content",
                    format!("content-encoded parameter `{name}`: only its presence is checked"),
                );
            }
            if required && location != In::Path {
                rule.insert("required".into(), json!(true));
            }
        }
    }
    let multi_segment = param.get("x-multi-segment") == Some(&Value::Bool(true));
    Some(ParamOut {
        location,
        name,
        rule,
        multi_segment,
    })
}

struct Ctx {
    location: In,
    v30: bool,
    allow_empty: bool,
}

fn allow_empty(param: &Value) -> bool {
    param.get("allowEmptyValue").and_then(Value::as_bool) == Some(true)
}

/// The rule for a parameter's schema, and whether a required parameter must be present
/// on the wire (an empty array or a null is sent as nothing).
fn value_rule(
    doc: &Value,
    schema: &Value,
    param: &Value,
    ctx: &Ctx,
    note: &mut dyn FnMut(&str, String),
) -> (Map<String, Value>, bool) {
    let (kind, nullable) = schema_type(schema);
    if nullable {
        note(
            "/schema",
            "nullable parameter: null is sent as absence, so it is not required".into(),
        );
    }
    if ctx.allow_empty {
        note(
            "/allowEmptyValue",
            "empty values allowed: the value is not checked".into(),
        );
        return (Map::new(), !nullable);
    }
    match kind.as_deref() {
        Some("array") => {
            let (rule, present) = array_rule(doc, schema, param, ctx, note);
            (rule, present && !nullable)
        }
        Some("object") => {
            note("/schema", "object parameter: value not checked".into());
            (Map::new(), !nullable)
        }
        _ if has_composition(schema) => {
            note(
                "/schema",
                "parameter schema with allOf/anyOf/oneOf/not: value not checked".into(),
            );
            (Map::new(), !nullable)
        }
        other => (scalar_rule(schema, other, ctx, "/schema", note), !nullable),
    }
}

fn has_composition(schema: &Value) -> bool {
    ["allOf", "anyOf", "oneOf", "not"]
        .iter()
        .any(|k| schema.get(*k).is_some())
}

/// The single non-null `type` (`None` when absent or ambiguous) and whether null is allowed.
/// `nullable` is 3.0's, but 3.1 descriptions still carry it: honoured in both.
fn schema_type(schema: &Value) -> (Option<String>, bool) {
    let nullable30 = schema.get("nullable").and_then(Value::as_bool) == Some(true);
    match schema.get("type") {
        Some(Value::String(t)) => (Some(t.clone()), nullable30 || t == "null"),
        Some(Value::Array(list)) => {
            let types: Vec<&str> = list
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect();
            let null = list.iter().any(|t| t == "null");
            match types.as_slice() {
                [one] => (Some((*one).to_string()), null),
                _ => (None, null),
            }
        }
        _ => (None, nullable30),
    }
}

/// Arrays: only `form` + `explode` query parameters (`?a=1&a=2`) arrive as separate values
/// apiguard can check one by one; the other forms join items in one value.
fn array_rule(
    doc: &Value,
    schema: &Value,
    param: &Value,
    ctx: &Ctx,
    note: &mut dyn FnMut(&str, String),
) -> (Map<String, Value>, bool) {
    let style = param
        .get("style")
        .and_then(Value::as_str)
        .unwrap_or(match ctx.location {
            In::Query => "form",
            _ => "simple",
        });
    let explode = param
        .get("explode")
        .and_then(Value::as_bool)
        .unwrap_or(style == "form");
    let min_items = schema.get("minItems").and_then(Value::as_u64).unwrap_or(0);
    if ctx.location != In::Query || style != "form" || !explode {
        note(
            "/schema",
            format!("array parameter in style `{style}` (explode {explode}): items not checked"),
        );
        return (Map::new(), min_items > 0);
    }
    if schema.get("minItems").is_some()
        || schema.get("maxItems").is_some()
        || schema.get("uniqueItems").is_some()
    {
        note(
            "/schema",
            "minItems/maxItems/uniqueItems of a query array not checked".into(),
        );
    }
    let mut rule = match schema.get("items").map(|i| deref(doc, i)) {
        Some(Ok((items, _))) => {
            let (kind, _) = schema_type(items);
            if matches!(kind.as_deref(), Some("array" | "object")) || has_composition(items) {
                note(
                    "/schema/items",
                    "nested array or object items: not checked".into(),
                );
                Map::new()
            } else {
                scalar_rule(items, kind.as_deref(), ctx, "/schema/items", note)
            }
        }
        _ => Map::new(),
    };
    rule.insert("allow_repeated".into(), json!(true));
    (rule, min_items > 0)
}

/// string / integer / number / boolean (or no type) constraints.
fn scalar_rule(
    schema: &Value,
    kind: Option<&str>,
    ctx: &Ctx,
    at: &str,
    note: &mut dyn FnMut(&str, String),
) -> Map<String, Value> {
    let mut rule = Map::new();
    match kind {
        Some("integer" | "number") => numeric(
            schema,
            kind == Some("integer"),
            ctx.v30,
            &mut rule,
            at,
            note,
        ),
        Some("boolean") => {
            rule.insert("type".into(), json!("boolean"));
        }
        _ => string(schema, &mut rule, at, note),
    }
    rule
}

fn string(
    schema: &Value,
    rule: &mut Map<String, Value>,
    at: &str,
    note: &mut dyn FnMut(&str, String),
) {
    let values: Vec<Value> = schema
        .get("enum")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter(|v| v.is_string() || v.is_number() || v.is_boolean())
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if !values.is_empty() {
        rule.insert("type".into(), json!("string"));
        rule.insert("enum".into(), Value::Array(values));
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        if regex::RegexBuilder::new(p)
            .size_limit(1 << 20)
            .build()
            .is_ok()
        {
            rule.insert("pattern".into(), json!(p));
        } else {
            note(
                &format!("{at}/pattern"),
                "pattern not supported by the regex engine: not checked".into(),
            );
        }
    }
    for (from, to) in [("minLength", "min_length"), ("maxLength", "max_length")] {
        if let Some(n) = schema.get(from).and_then(Value::as_u64) {
            rule.insert(to.into(), json!(n));
        }
    }
    match schema.get("format").and_then(Value::as_str) {
        Some("uuid") if rule.is_empty() => {
            rule.insert("type".into(), json!("uuid"));
        }
        Some(f) => note(&format!("{at}/format"), format!("format `{f}` not checked")),
        None => {}
    }
}

fn numeric(
    schema: &Value,
    integer: bool,
    v30: bool,
    rule: &mut Map<String, Value>,
    at: &str,
    note: &mut dyn FnMut(&str, String),
) {
    rule.insert(
        "type".into(),
        json!(if integer { "integer" } else { "number" }),
    );
    let values: Vec<Value> = schema
        .get("enum")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter(|v| {
                    if integer {
                        v.is_i64() || v.is_u64()
                    } else {
                        v.is_number()
                    }
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if !values.is_empty() {
        rule.insert("enum".into(), Value::Array(values));
    }
    let lower = bound(
        schema,
        "minimum",
        "exclusiveMinimum",
        v30,
        integer,
        1.0,
        at,
        note,
    );
    let upper = bound(
        schema,
        "maximum",
        "exclusiveMaximum",
        v30,
        integer,
        -1.0,
        at,
        note,
    );
    // `format: int32` / `int64` are ranges: the tighter of them and the explicit bounds.
    let (lower, upper) = match (integer, schema.get("format").and_then(Value::as_str)) {
        (true, Some("int32")) => tighter(lower, upper, -2_147_483_648.0, 2_147_483_647.0),
        // +-2^63 as floats (the nearest to i64's ends): one value looser at the top.
        (true, Some("int64")) => tighter(lower, upper, -(i64::MAX as f64), i64::MAX as f64),
        (_, Some(f)) => {
            note(&format!("{at}/format"), format!("format `{f}` not checked"));
            (lower, upper)
        }
        _ => (lower, upper),
    };
    if let Some(lo) = lower {
        rule.insert("minimum".into(), json!(lo));
    }
    if let Some(hi) = upper {
        rule.insert("maximum".into(), json!(hi));
    }
    if schema.get("multipleOf").is_some() {
        note(&format!("{at}/multipleOf"), "multipleOf not checked".into());
    }
}

fn tighter(lower: Option<f64>, upper: Option<f64>, lo: f64, hi: f64) -> (Option<f64>, Option<f64>) {
    (
        Some(lower.map_or(lo, |l| l.max(lo))),
        Some(upper.map_or(hi, |u| u.min(hi))),
    )
}

/// An inclusive bound. Exclusive bounds are exact for integers (`> 4` is `>= 5`); for
/// numbers the inclusive bound is used (looser by one value) and noted.
#[allow(clippy::too_many_arguments)]
fn bound(
    schema: &Value,
    inclusive: &str,
    exclusive: &str,
    v30: bool,
    integer: bool,
    step: f64,
    at: &str,
    note: &mut dyn FnMut(&str, String),
) -> Option<f64> {
    let plain = schema.get(inclusive).and_then(Value::as_f64);
    let excl = match schema.get(exclusive) {
        Some(Value::Bool(true)) if v30 => plain,
        Some(v) => v.as_f64(),
        None => None,
    };
    let plain = if v30 && excl.is_some() { None } else { plain };
    let excl = excl.map(|x| {
        if integer {
            if step > 0.0 {
                x.floor() + 1.0
            } else {
                x.ceil() - 1.0
            }
        } else {
            note(
                &format!("{at}/{exclusive}"),
                "exclusive bound checked as inclusive".into(),
            );
            x
        }
    });
    match (plain, excl) {
        (Some(a), Some(b)) => Some(if step > 0.0 { a.max(b) } else { a.min(b) }),
        (a, b) => a.or(b),
    }
    .filter(|b| b.is_finite())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn run(param: Value, v30: bool) -> (Option<ParamOut>, Vec<String>) {
        let doc = json!({"components": {"schemas": {"Id": {"type": "integer", "minimum": 1}}}});
        let mut notes = Vec::new();
        let out = translate(&doc, &param, v30, &mut |at, m| {
            notes.push(format!("{at}: {m}"))
        });
        (out, notes)
    }

    #[test]
    fn scalar_constraints_map_to_rule_fields() {
        let (out, notes) = run(
            json!({"name": "q", "in": "query", "required": true,
            "schema": {"type": "string", "pattern": "^a+$", "minLength": 1, "maxLength": 5}}),
            true,
        );
        let out = out.unwrap();
        assert_eq!(out.location, In::Query);
        assert_eq!(
            Value::Object(out.rule),
            json!({"required": true, "pattern": "^a+$", "min_length": 1, "max_length": 5})
        );
        assert!(notes.is_empty());
    }

    #[test]
    fn referenced_schema_and_exclusive_integer_bounds() {
        let (out, _) = run(
            json!({"name": "id", "in": "path", "required": true,
            "schema": {"$ref": "#/components/schemas/Id"}}),
            true,
        );
        assert_eq!(
            Value::Object(out.unwrap().rule),
            json!({"type": "integer", "minimum": 1.0})
        );
        let (out, _) = run(
            json!({"name": "n", "in": "query",
            "schema": {"type": "integer", "minimum": 0, "exclusiveMinimum": true, "maximum": 10, "exclusiveMaximum": true}}),
            true,
        );
        assert_eq!(
            Value::Object(out.unwrap().rule),
            json!({"type": "integer", "minimum": 1.0, "maximum": 9.0})
        );
        let (out, _) = run(
            json!({"name": "n", "in": "query",
            "schema": {"type": "integer", "exclusiveMinimum": 0.5}}),
            false,
        );
        assert_eq!(
            Value::Object(out.unwrap().rule),
            json!({"type": "integer", "minimum": 1.0})
        );
    }

    #[test]
    fn integer_formats_are_ranges() {
        let (out, notes) = run(
            json!({"name": "n", "in": "query",
            "schema": {"type": "integer", "format": "int32", "minimum": 5}}),
            true,
        );
        assert_eq!(
            Value::Object(out.unwrap().rule),
            json!({"type": "integer", "minimum": 5.0, "maximum": 2147483647.0})
        );
        assert!(notes.is_empty());
        let (out, _) = run(
            json!({"name": "n", "in": "query", "schema": {"type": "integer", "format": "int64"}}),
            true,
        );
        assert_eq!(out.unwrap().rule["minimum"], json!(-9.223372036854776e18));
    }

    #[test]
    fn number_exclusive_bound_is_loosened_with_a_note() {
        let (out, notes) = run(
            json!({"name": "n", "in": "query",
            "schema": {"type": "number", "exclusiveMaximum": 1.5}}),
            false,
        );
        assert_eq!(
            Value::Object(out.unwrap().rule),
            json!({"type": "number", "maximum": 1.5})
        );
        assert_eq!(notes.len(), 1);
    }

    #[test]
    fn exploded_query_arrays_repeat_and_check_each_item() {
        let (out, _) = run(
            json!({"name": "tag", "in": "query", "required": true,
            "schema": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}}}),
            true,
        );
        // An empty array is sent as nothing, so a required array without minItems may be absent.
        assert_eq!(
            Value::Object(out.unwrap().rule),
            json!({"type": "string", "enum": ["a", "b"], "allow_repeated": true})
        );
        let (out, notes) = run(
            json!({"name": "tag", "in": "query", "explode": false,
            "schema": {"type": "array", "minItems": 1, "items": {"type": "integer"}}, "required": true}),
            true,
        );
        assert_eq!(Value::Object(out.unwrap().rule), json!({"required": true}));
        assert!(notes[0].contains("explode false"), "{notes:?}");
    }

    #[test]
    fn unenforceable_parameters_are_noted_never_dropped_silently() {
        let (out, notes) = run(
            json!({"name": "s", "in": "cookie", "schema": {"type": "string"}}),
            true,
        );
        assert!(out.is_none() && notes[0].contains("cookie"));
        let (out, notes) = run(
            json!({"name": "f", "in": "query", "required": true,
            "content": {"application/json": {"schema": {"type": "object"}}}}),
            true,
        );
        assert_eq!(Value::Object(out.unwrap().rule), json!({"required": true}));
        assert!(notes[0].starts_with("/content"));
        let (out, notes) = run(
            json!({"name": "Accept", "in": "header", "schema": {"type": "string"}}),
            true,
        );
        assert!(out.is_none() && notes.len() == 1);
        let (_, notes) = run(
            json!({"name": "d", "in": "query", "schema": {"type": "string", "format": "date-time"}}),
            true,
        );
        assert!(notes[0].starts_with("/schema/format"));
    }

    #[test]
    fn uuid_format_and_nullable_and_empty_values() {
        let (out, _) = run(
            json!({"name": "u", "in": "header", "required": true,
            "schema": {"type": "string", "format": "uuid"}}),
            true,
        );
        assert_eq!(
            Value::Object(out.unwrap().rule),
            json!({"type": "uuid", "required": true})
        );
        let (out, _) = run(
            json!({"name": "u", "in": "query", "required": true,
            "schema": {"type": ["integer", "null"]}}),
            false,
        );
        assert_eq!(Value::Object(out.unwrap().rule), json!({"type": "integer"}));
        let (out, _) = run(
            json!({"name": "e", "in": "query", "required": true, "allowEmptyValue": true,
            "schema": {"type": "integer"}}),
            true,
        );
        assert_eq!(Value::Object(out.unwrap().rule), json!({"required": true}));
    }

    #[test]
    fn unsupported_pattern_is_noted() {
        let (out, notes) = run(
            json!({"name": "p", "in": "query", "schema": {"type": "string", "pattern": "(?<=a)b"}}),
            true,
        );
        assert!(out.unwrap().rule.is_empty());
        assert!(notes[0].starts_with("/schema/pattern"));
    }
}
