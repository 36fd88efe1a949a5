//! Local references (`$ref: "#/components/..."`): lookup and chain following, with a bound on
//! the chain so that a cycle (`A -> B -> A`) is an error, never a loop.

use serde_json::Value;

/// Longest `$ref` chain followed before giving up (real documents use one or two hops).
pub const MAX_HOPS: usize = 32;

/// Escapes one JSON Pointer reference token (RFC 6901).
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// The value a local reference `#/a/b` points at. The fragment is percent-decoded first
/// (it is a URI fragment), then read as a JSON Pointer. `None` for external references and
/// missing targets.
pub fn lookup<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    let fragment = reference.strip_prefix('#')?;
    let pointer = crate::percent::decode_utf8(fragment)?;
    doc.pointer(&pointer)
}

/// The `$ref` string of a Reference Object, if `value` is one.
pub fn ref_of(value: &Value) -> Option<&str> {
    value.get("$ref").and_then(Value::as_str)
}

/// Follows `$ref`s from `value` to a value that is not a reference. Returns it with the last
/// reference followed (for notes), or why it cannot be resolved.
pub fn deref<'a>(doc: &'a Value, value: &'a Value) -> Result<(&'a Value, Option<&'a str>), String> {
    let mut current = value;
    let mut last = None;
    let mut seen: Vec<&str> = Vec::new();
    while let Some(reference) = ref_of(current) {
        if seen.contains(&reference) || seen.len() >= MAX_HOPS {
            return Err(format!("`$ref` cycle through {reference}"));
        }
        seen.push(reference);
        if !reference.starts_with('#') {
            return Err(format!("external `$ref` {reference} is not resolved"));
        }
        current = lookup(doc, reference).ok_or_else(|| format!("`$ref` {reference} not found"))?;
        last = Some(reference);
    }
    Ok((current, last))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn lookup_decodes_fragment_and_pointer_escapes() {
        let doc = json!({"components": {"schemas": {"a/b": 1, "c d": 2}}});
        assert_eq!(lookup(&doc, "#/components/schemas/a~1b"), Some(&json!(1)));
        assert_eq!(lookup(&doc, "#/components/schemas/c%20d"), Some(&json!(2)));
        assert_eq!(lookup(&doc, "other.yaml#/x"), None);
        assert_eq!(lookup(&doc, "#/nope"), None);
    }

    #[test]
    fn deref_follows_chains_and_stops_on_cycles() {
        let doc = json!({"a": {"$ref": "#/b"}, "b": {"$ref": "#/c"}, "c": {"type": "string"},
                         "x": {"$ref": "#/y"}, "y": {"$ref": "#/x"}, "self": {"$ref": "#/self"}});
        let (v, last) = deref(&doc, &doc["a"]).unwrap();
        assert_eq!(v, &json!({"type": "string"}));
        assert_eq!(last, Some("#/c"));
        assert!(deref(&doc, &doc["x"]).unwrap_err().contains("cycle"));
        assert!(deref(&doc, &doc["self"]).unwrap_err().contains("cycle"));
        assert!(deref(&doc, &json!({"$ref": "#/missing"}))
            .unwrap_err()
            .contains("not found"));
        assert!(deref(&doc, &json!({"$ref": "x.yaml"}))
            .unwrap_err()
            .contains("external"));
    }

    #[test]
    fn escape_round_trips_through_lookup() {
        let doc = json!({"p": {"/items/{id}": {"~x": 3}}});
        let r = format!("#/p/{}/{}", escape("/items/{id}"), escape("~x"));
        assert_eq!(lookup(&doc, &r), Some(&json!(3)));
    }
}
