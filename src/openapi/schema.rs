//! Request-body schemas: OpenAPI 3.0's JSON Schema dialect translated to JSON Schema 2020-12
//! (3.1 schemas already are 2020-12 and only get the bundling), with every `$ref` into the
//! document copied under `$defs` so that the schema stands alone in a route.
//!
//! What changes, and why:
//! - 3.0 `nullable: true` becomes a `"null"` member of `type` (and of `enum`); without a
//!   `type` it wraps the schema in `anyOf: [schema, {type: null}]`.
//! - 3.0 boolean `exclusiveMinimum`/`exclusiveMaximum` become the 2020-12 numeric forms.
//! - 3.0 ignores the siblings of a `$ref`; they are dropped (a sibling `nullable` is kept as
//!   an `anyOf` with null, the common intent).
//! - Annotations (`description`, `example`, `title`, `x-*`, ...) are dropped: they do not
//!   validate, and they are most of a large API's size.
//! - A property that is `readOnly` is removed from `required`: OpenAPI says `required` on a
//!   read-only property applies to responses only.
//! - A `pattern` the regex engine cannot compile (ECMA-262 look-arounds, back-references)
//!   is dropped with a note rather than failing the whole policy.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::pointer::{deref, lookup, ref_of};

/// Nesting of inline schemas handled; deeper parts are accepted as `true` (with a note).
const MAX_DEPTH: usize = 64;

/// Keywords that only annotate: dropped from generated schemas.
const ANNOTATIONS: &[&str] = &[
    "description",
    "title",
    "example",
    "examples",
    "externalDocs",
    "xml",
    "deprecated",
    "readOnly",
    "writeOnly",
    "default",
    "discriminator",
    "$comment",
    "nullable",
    "$schema",
    "$id",
];

/// Keywords holding a map of name -> schema.
const SCHEMA_MAPS: &[&str] = &["properties", "patternProperties", "dependentSchemas"];
/// Keywords holding one schema.
const SCHEMA_ONE: &[&str] = &[
    "items",
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
    "additionalItems",
    "contentSchema",
];
/// Keywords holding a list of schemas.
const SCHEMA_LISTS: &[&str] = &["allOf", "anyOf", "oneOf", "prefixItems"];

/// Translates one schema and the schemas it references.
pub struct Bundler<'a> {
    doc: &'a Value,
    v30: bool,
    /// `$ref` -> key under `$defs`, for every reference met so far.
    keys: BTreeMap<String, String>,
    defs: Map<String, Value>,
    pending: Vec<String>,
    /// (JSON pointer inside the schema, what is not enforced).
    pub notes: Vec<(String, String)>,
}

impl<'a> Bundler<'a> {
    pub fn new(doc: &'a Value, v30: bool) -> Self {
        Bundler {
            doc,
            v30,
            keys: BTreeMap::new(),
            defs: Map::new(),
            pending: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// The 2020-12 schema for `schema`, with the referenced schemas under `$defs`.
    pub fn bundle(mut self, schema: &Value) -> (Value, Vec<(String, String)>) {
        let mut root = self.translate(schema, "", 0);
        while let Some(reference) = self.pending.pop() {
            let key = self.keys.get(&reference).cloned().unwrap_or_default();
            let translated = match lookup(self.doc, &reference) {
                Some(target) => self.translate(target, &reference, 0),
                None => Value::Bool(true),
            };
            self.defs.insert(key, translated);
        }
        if !self.defs.is_empty() {
            if let Value::Bool(b) = root {
                root = Value::Object(Map::new());
                if !b {
                    root = serde_json::json!({"not": {}});
                }
            }
            if let Value::Object(m) = &mut root {
                let defs = std::mem::take(&mut self.defs);
                m.insert("$defs".into(), Value::Object(defs));
            }
        }
        (root, self.notes)
    }

    fn note(&mut self, at: &str, message: String) {
        self.notes.push((at.to_string(), message));
    }

    fn translate(&mut self, schema: &Value, at: &str, depth: usize) -> Value {
        let Value::Object(obj) = schema else {
            // `true`/`false` (3.1), or garbage: only booleans are schemas.
            return Value::Bool(schema.as_bool().unwrap_or(true));
        };
        if depth > MAX_DEPTH {
            self.note(
                at,
                format!("schema nested deeper than {MAX_DEPTH}: not checked"),
            );
            return Value::Bool(true);
        }
        if let Some(reference) = ref_of(schema) {
            return self.translate_ref(schema, obj, reference, at, depth);
        }
        let mut out = Map::new();
        for (k, v) in obj {
            if ANNOTATIONS.contains(&k.as_str()) || k.starts_with("x-") {
                continue;
            }
            let here = format!("{at}/{k}");
            let value = if SCHEMA_MAPS.contains(&k.as_str()) {
                self.translate_map(v, &here, depth)
            } else if SCHEMA_ONE.contains(&k.as_str()) {
                self.translate(v, &here, depth + 1)
            } else if SCHEMA_LISTS.contains(&k.as_str()) {
                self.translate_list(v, &here, depth)
            } else if k == "$defs" || k == "definitions" {
                self.translate_map(v, &here, depth)
            } else if k == "pattern" {
                match v.as_str().filter(|p| regex::Regex::new(p).is_ok()) {
                    Some(_) => v.clone(),
                    None => {
                        self.note(
                            &here,
                            "pattern not supported by the regex engine: not checked".into(),
                        );
                        continue;
                    }
                }
            } else {
                v.clone()
            };
            out.insert(k.clone(), value);
        }
        self.drop_read_only_required(obj, &mut out);
        if self.v30 {
            exclusive_bounds(obj, &mut out);
        }
        // 3.1 dropped `nullable`, but descriptions still carry it and clients (schemathesis
        // among them) honour it: accepting null too is the looser reading.
        if obj.get("nullable") == Some(&Value::Bool(true)) {
            return nullable(out);
        }
        Value::Object(out)
    }

    fn translate_ref(
        &mut self,
        schema: &Value,
        obj: &Map<String, Value>,
        reference: &str,
        at: &str,
        depth: usize,
    ) -> Value {
        if let Err(why) = deref(self.doc, schema) {
            self.note(at, format!("{why}: accepted without a check"));
            return Value::Bool(true);
        }
        let key = self.def_key(reference);
        let mut out = Map::new();
        out.insert("$ref".into(), Value::String(format!("#/$defs/{key}")));
        if !self.v30 {
            // 2020-12: siblings of `$ref` apply too.
            let rest: Map<String, Value> = obj
                .iter()
                .filter(|(k, _)| k.as_str() != "$ref" && k.as_str() != "nullable")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if let Value::Object(extra) = self.translate(&Value::Object(rest), at, depth + 1) {
                out.extend(extra);
            }
        }
        if obj.get("nullable") == Some(&Value::Bool(true)) {
            return nullable(out);
        }
        Value::Object(out)
    }

    fn translate_map(&mut self, v: &Value, at: &str, depth: usize) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(name, s)| {
                        let here = format!("{at}/{}", super::pointer::escape(name));
                        (name.clone(), self.translate(s, &here, depth + 1))
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn translate_list(&mut self, v: &Value, at: &str, depth: usize) -> Value {
        match v {
            Value::Array(list) => Value::Array(
                list.iter()
                    .enumerate()
                    .map(|(i, s)| self.translate(s, &format!("{at}/{i}"), depth + 1))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// The `$defs` key of a reference, queued for translation the first time it is met.
    /// Component schema names are kept; other pointers are flattened to `[A-Za-z0-9._-]`.
    fn def_key(&mut self, reference: &str) -> String {
        if let Some(k) = self.keys.get(reference) {
            return k.clone();
        }
        let raw = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| reference.trim_start_matches("#/"));
        let base: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut key = base.clone();
        let mut n = 1;
        while self.keys.values().any(|k| *k == key) {
            n += 1;
            key = format!("{base}_{n}");
        }
        self.keys.insert(reference.to_string(), key.clone());
        self.pending.push(reference.to_string());
        key
    }

    /// Removes read-only properties from `required` (they are never sent in requests).
    fn drop_read_only_required(&self, obj: &Map<String, Value>, out: &mut Map<String, Value>) {
        let (Some(Value::Array(required)), Some(Value::Object(props))) =
            (obj.get("required"), obj.get("properties"))
        else {
            return;
        };
        let read_only = |name: &str| {
            props
                .get(name)
                .and_then(|p| deref(self.doc, p).ok())
                .and_then(|(p, _)| p.get("readOnly"))
                == Some(&Value::Bool(true))
        };
        let kept: Vec<Value> = required
            .iter()
            .filter(|n| !n.as_str().is_some_and(read_only))
            .cloned()
            .collect();
        out.insert("required".into(), Value::Array(kept));
    }
}

/// 3.0 boolean `exclusiveMinimum: true` + `minimum: m` -> 2020-12 `exclusiveMinimum: m`.
fn exclusive_bounds(obj: &Map<String, Value>, out: &mut Map<String, Value>) {
    for (exclusive, bound) in [
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ] {
        match obj.get(exclusive) {
            Some(Value::Bool(true)) => {
                out.remove(exclusive);
                if let Some(b) = out.remove(bound) {
                    out.insert(exclusive.into(), b);
                }
            }
            Some(Value::Bool(false)) => {
                out.remove(exclusive);
            }
            _ => {}
        }
    }
}

/// A translated 3.0 schema that also accepts `null`.
fn nullable(mut out: Map<String, Value>) -> Value {
    let composite = ["$ref", "allOf", "anyOf", "oneOf", "not"]
        .iter()
        .any(|k| out.contains_key(*k));
    let has_enum = out.contains_key("enum");
    match out.get("type").cloned() {
        Some(Value::String(t)) if !composite => {
            out.insert("type".into(), serde_json::json!([t, "null"]));
            if let Some(Value::Array(values)) = out.get_mut("enum") {
                if !values.contains(&Value::Null) {
                    values.push(Value::Null);
                }
            }
            Value::Object(out)
        }
        None if !composite && !has_enum => Value::Object(out),
        _ => serde_json::json!({"anyOf": [Value::Object(out), {"type": "null"}]}),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;

    fn bundle30(doc: &Value, s: Value) -> Value {
        Bundler::new(doc, true).bundle(&s).0
    }

    #[test]
    fn nullable_becomes_a_null_type_and_enum_member() {
        let doc = json!({});
        assert_eq!(
            bundle30(
                &doc,
                json!({"type": "string", "nullable": true, "enum": ["a"]})
            ),
            json!({"type": ["string", "null"], "enum": ["a", null]})
        );
        assert_eq!(
            bundle30(
                &doc,
                json!({"allOf": [{"type": "string"}], "nullable": true})
            ),
            json!({"anyOf": [{"allOf": [{"type": "string"}]}, {"type": "null"}]})
        );
        // Without `type`, 3.0 already accepts null.
        assert_eq!(
            bundle30(&doc, json!({"nullable": true, "minLength": 1})),
            json!({"minLength": 1})
        );
    }

    #[test]
    fn boolean_exclusive_bounds_become_numbers() {
        let doc = json!({});
        assert_eq!(
            bundle30(
                &doc,
                json!({"type": "integer", "minimum": 0, "exclusiveMinimum": true,
                                  "maximum": 9, "exclusiveMaximum": false})
            ),
            json!({"type": "integer", "exclusiveMinimum": 0, "maximum": 9})
        );
    }

    #[test]
    fn annotations_and_extensions_are_dropped_but_properties_named_like_them_kept() {
        let doc = json!({});
        assert_eq!(
            bundle30(
                &doc,
                json!({"type": "object", "description": "d", "example": {"a": 1}, "x-y": 1,
                                  "properties": {"description": {"type": "string", "title": "t"}}})
            ),
            json!({"type": "object", "properties": {"description": {"type": "string"}}})
        );
    }

    #[test]
    fn refs_are_copied_under_defs_and_keep_resolving() {
        let doc = json!({"components": {"schemas": {
            "Node": {"type": "object", "properties": {"next": {"$ref": "#/components/schemas/Node"},
                                                      "tag": {"$ref": "#/components/schemas/Tag"}}},
            "Tag": {"type": "string", "nullable": true}}}});
        let out = bundle30(
            &doc,
            json!({"$ref": "#/components/schemas/Node", "description": "x"}),
        );
        assert_eq!(out["$ref"], json!("#/$defs/Node"));
        assert_eq!(
            out["$defs"]["Node"]["properties"]["next"],
            json!({"$ref": "#/$defs/Node"})
        );
        assert_eq!(out["$defs"]["Tag"], json!({"type": ["string", "null"]}));
        assert!(out.get("description").is_none());
    }

    #[test]
    fn ref_cycles_and_missing_targets_are_accepted_with_a_note() {
        let doc = json!({"components": {"schemas": {"A": {"$ref": "#/components/schemas/B"},
                                                    "B": {"$ref": "#/components/schemas/A"}}}});
        let (out, notes) = Bundler::new(&doc, true).bundle(&json!({"properties": {
            "a": {"$ref": "#/components/schemas/A"}, "m": {"$ref": "#/nope"}}}));
        assert_eq!(out, json!({"properties": {"a": true, "m": true}}));
        assert_eq!(notes.len(), 2, "{notes:?}");
    }

    #[test]
    fn read_only_properties_leave_required() {
        let doc = json!({"components": {"schemas": {"Id": {"type": "integer", "readOnly": true}}}});
        let out = bundle30(
            &doc,
            json!({"type": "object", "required": ["id", "name", "ro"],
            "properties": {"id": {"$ref": "#/components/schemas/Id"}, "name": {"type": "string"},
                           "ro": {"type": "string", "readOnly": true}}}),
        );
        assert_eq!(out["required"], json!(["name"]));
    }

    #[test]
    fn nullable_is_honoured_in_31_descriptions_too() {
        let doc = json!({"components": {"schemas": {"S": {"type": "string"}}}});
        let (out, _) = Bundler::new(&doc, false).bundle(&json!({"properties": {
            "a": {"type": "string", "nullable": true},
            "b": {"$ref": "#/components/schemas/S", "nullable": true, "maxLength": 3}}}));
        assert_eq!(out["properties"]["a"], json!({"type": ["string", "null"]}));
        assert_eq!(
            out["properties"]["b"],
            json!({"anyOf": [{"$ref": "#/$defs/S", "maxLength": 3}, {"type": "null"}]})
        );
    }

    #[test]
    fn v31_keeps_ref_siblings_and_type_arrays() {
        let doc = json!({"components": {"schemas": {"S": {"type": ["string", "null"]}}}});
        let (out, _) = Bundler::new(&doc, false)
            .bundle(&json!({"$ref": "#/components/schemas/S", "maxLength": 3}));
        assert_eq!(out["maxLength"], json!(3));
        assert_eq!(out["$defs"]["S"], json!({"type": ["string", "null"]}));
    }

    #[test]
    fn unsupported_patterns_are_dropped_with_a_note() {
        let (out, notes) =
            Bundler::new(&json!({}), true).bundle(&json!({"type": "string", "pattern": "^(?!x)"}));
        assert_eq!(out, json!({"type": "string"}));
        assert_eq!(notes[0].0, "/pattern");
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut s = json!({"type": "string"});
        for _ in 0..(MAX_DEPTH + 10) {
            s = json!({"items": s});
        }
        let (_, notes) = Bundler::new(&json!({}), true).bundle(&s);
        assert_eq!(notes.len(), 1);
    }
}
