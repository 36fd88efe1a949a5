//! Request Body Objects -> the `validate.body` rule.
//!
//! JSON media types (`application/json`, `*/*+json`) get the schema. When an operation also
//! accepts non-JSON bodies (forms, files), apiguard cannot apply a JSON schema to them, so
//! only the media types and presence are checked (noted). Wildcard media types (`*/*`,
//! `image/*`) accept any type.

use serde_json::{json, Map, Value};

use super::pointer::deref;
use super::schema::Bundler;

/// (JSON pointer suffix, what is not enforced).
pub type Notes = Vec<(String, String)>;

/// The body rule, and notes (pointer suffix relative to the request body, message).
pub fn body_rule(doc: &Value, body: &Value, v30: bool) -> (Option<Map<String, Value>>, Notes) {
    let mut notes = Vec::new();
    let required = body
        .get("required")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let Some(content) = body.get("content").and_then(Value::as_object) else {
        return (None, notes);
    };
    let types: Vec<String> = content.keys().map(|k| media_type(k)).collect();
    let mut rule = Map::new();
    rule.insert("required".into(), json!(required));
    if types.is_empty() {
        return (Some(rule), notes);
    }
    if types.iter().any(|t| t.contains('*') || !is_media_type(t)) {
        notes.push((
            "/content".into(),
            "wildcard media type: any content type accepted".into(),
        ));
        return (Some(rule), notes);
    }
    let mut unique: Vec<String> = Vec::new();
    for t in types {
        if !unique.contains(&t) {
            unique.push(t);
        }
    }
    rule.insert("content_types".into(), json!(unique));
    let all_json = unique.iter().all(|t| is_json(t));
    let schema = content
        .iter()
        .find(|(k, _)| is_json(&media_type(k)))
        .and_then(|(k, media)| media.get("schema").map(|s| (k, s)));
    match schema {
        Some((k, s)) if all_json => {
            let (translated, schema_notes) = Bundler::new(doc, v30).bundle(s);
            let at = format!("/content/{}/schema", super::pointer::escape(k));
            notes.extend(
                schema_notes
                    .into_iter()
                    .map(|(p, m)| (format!("{at}{p}"), m)),
            );
            rule.insert("schema".into(), translated);
        }
        Some(_) => notes.push((
            "/content".into(),
            "JSON schema not checked: the operation also accepts non-JSON bodies".into(),
        )),
        None => {}
    }
    for (k, media) in content {
        if !is_json(&media_type(k)) && media.get("schema").is_some() {
            notes.push((
                format!("/content/{}/schema", super::pointer::escape(k)),
                "non-JSON body schema not checked".into(),
            ));
        }
    }
    (Some(rule), notes)
}

/// A Request Body Object, `$ref`s followed.
pub fn resolve<'a>(doc: &'a Value, body: &'a Value) -> Result<&'a Value, String> {
    deref(doc, body).map(|(b, _)| b)
}

fn media_type(key: &str) -> String {
    key.split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn is_json(t: &str) -> bool {
    t == "application/json" || (t.contains('/') && t.ends_with("+json"))
}

fn is_media_type(s: &str) -> bool {
    let token = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    matches!(s.split_once('/'), Some((a, b)) if token(a) && token(b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn json_body_gets_schema_types_and_required() {
        let body = json!({"required": true, "content": {"application/json; charset=utf-8": {"schema": {"type": "object"}},
                                                        "application/merge-patch+json": {"schema": {"type": "object"}}}});
        let (rule, notes) = body_rule(&json!({}), &body, true);
        assert_eq!(
            Value::Object(rule.unwrap()),
            json!({"required": true,
            "content_types": ["application/json", "application/merge-patch+json"], "schema": {"type": "object"}})
        );
        assert!(notes.is_empty());
    }

    #[test]
    fn mixed_json_and_form_bodies_check_types_only() {
        let body = json!({"content": {"application/json": {"schema": {"type": "object"}},
                                      "application/x-www-form-urlencoded": {"schema": {"type": "object"}}}});
        let (rule, notes) = body_rule(&json!({}), &body, true);
        let rule = rule.unwrap();
        assert!(rule.get("schema").is_none());
        assert_eq!(rule["required"], json!(false));
        assert_eq!(notes.len(), 2, "{notes:?}");
    }

    #[test]
    fn wildcards_accept_any_type() {
        let (rule, notes) = body_rule(
            &json!({}),
            &json!({"required": true, "content": {"*/*": {}}}),
            true,
        );
        assert_eq!(Value::Object(rule.unwrap()), json!({"required": true}));
        assert_eq!(notes.len(), 1);
    }
}
