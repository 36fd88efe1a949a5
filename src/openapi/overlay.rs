//! `--overlay`: a hand-written policy merged into the generated one, so that regenerating
//! from a new spec never loses providers, keys, limits or route tweaks.
//!
//! - Top-level fields of the overlay (providers, client_certs, limits, realm, ...) are taken
//!   as they are.
//! - `api_keys`: a set named after an apiKey scheme supplies the keys; its `from` defaults to
//!   where the scheme says the key is. Other sets are kept.
//! - `routes`: a route whose `name` is an operationId overrides that generated route field
//!   by field (`validate` per section and parameter; `public` and `providers` replace each
//!   other). Other overlay routes come first, before the generated ones.

use serde_json::{json, Map, Value};

/// Merges. `generated_keys` are the api_keys sets the spec's schemes need: (name, from).
/// Errors list the sets that have no keys in the overlay.
pub fn merge(
    routes: Vec<Value>,
    overlay: &Map<String, Value>,
    generated_keys: &[(String, Value)],
) -> Result<Map<String, Value>, Vec<String>> {
    let mut policy = Map::new();
    for (k, v) in overlay {
        if k != "routes" && k != "api_keys" {
            policy.insert(k.clone(), v.clone());
        }
    }
    let (sets, errors) = api_keys(overlay, generated_keys);
    if !errors.is_empty() {
        return Err(errors);
    }
    if !sets.is_empty() {
        policy.insert("api_keys".into(), Value::Array(sets));
    }
    policy.insert("routes".into(), Value::Array(merge_routes(routes, overlay)));
    Ok(policy)
}

fn api_keys(
    overlay: &Map<String, Value>,
    generated: &[(String, Value)],
) -> (Vec<Value>, Vec<String>) {
    let given: Vec<&Value> = overlay
        .get("api_keys")
        .and_then(Value::as_array)
        .map(|l| l.iter().collect())
        .unwrap_or_default();
    let name_of = |v: &Value| v.get("name").and_then(Value::as_str).map(String::from);
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (name, from) in generated {
        match given.iter().find(|s| name_of(s).as_deref() == Some(name)) {
            Some(Value::Object(set)) => {
                let mut set = set.clone();
                set.entry("from").or_insert_with(|| json!([from]));
                out.push(Value::Object(set));
            }
            _ => errors.push(format!(
                "apiKey scheme `{name}`: add an api_keys set named `{name}` with its keys to the overlay"
            )),
        }
    }
    for s in given {
        if !generated
            .iter()
            .any(|(n, _)| Some(n) == name_of(s).as_ref())
        {
            out.push(s.clone());
        }
    }
    (out, errors)
}

fn merge_routes(generated: Vec<Value>, overlay: &Map<String, Value>) -> Vec<Value> {
    let extra: Vec<&Value> = overlay
        .get("routes")
        .and_then(Value::as_array)
        .map(|l| l.iter().collect())
        .unwrap_or_default();
    let name = |v: &Value| v.get("name").and_then(Value::as_str).map(String::from);
    let generated_names: Vec<Option<String>> = generated.iter().map(name).collect();
    let mut out: Vec<Value> = extra
        .iter()
        .filter(|r| !generated_names.contains(&name(r)))
        .map(|r| (*r).clone())
        .collect();
    for mut route in generated {
        if let Some(Value::Object(over)) = extra
            .iter()
            .find(|r| name(r) == name(&route) && name(r).is_some())
        {
            if let Value::Object(r) = &mut route {
                override_route(r, over);
            }
        }
        out.push(route);
    }
    out
}

fn override_route(route: &mut Map<String, Value>, over: &Map<String, Value>) {
    for (k, v) in over {
        match (k.as_str(), route.get_mut(k), v) {
            ("validate", Some(Value::Object(mine)), Value::Object(theirs)) => {
                merge_validate(mine, theirs)
            }
            _ => {
                route.insert(k.clone(), v.clone());
            }
        }
    }
    if over.get("public") == Some(&Value::Bool(true)) {
        for k in ["providers", "scopes", "rules"] {
            if !over.contains_key(k) {
                route.remove(k);
            }
        }
    } else if over.contains_key("providers") && !over.contains_key("public") {
        route.remove("public");
    }
}

fn merge_validate(mine: &mut Map<String, Value>, theirs: &Map<String, Value>) {
    for (k, v) in theirs {
        match (mine.get_mut(k), v) {
            (Some(Value::Object(a)), Value::Object(b)) if k != "body" => {
                for (pk, pv) in b {
                    a.insert(pk.clone(), pv.clone());
                }
            }
            _ => {
                mine.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn overlay_fields_and_extra_routes_are_kept() {
        let routes = vec![json!({"name": "getItem", "public": true})];
        let overlay = obj(json!({"realm": "shop", "limits": [{"name": "l"}],
            "routes": [{"name": "health", "public": true}]}));
        let p = merge(routes, &overlay, &[]).unwrap();
        assert_eq!(p["realm"], json!("shop"));
        assert_eq!(p["routes"][0]["name"], json!("health"));
        assert_eq!(p["routes"][1]["name"], json!("getItem"));
    }

    #[test]
    fn routes_are_overridden_by_operation_id() {
        let routes = vec![json!({"name": "getItem", "public": true,
            "validate": {"query": {"a": {"type": "integer"}}, "body": {"required": true}}})];
        let overlay = obj(
            json!({"routes": [{"name": "getItem", "providers": ["corp"], "limits": ["l"],
            "validate": {"query": {"b": {"required": true}}, "body": {"max_bytes": 10}}}]}),
        );
        let p = merge(routes, &overlay, &[]).unwrap();
        let r = &p["routes"][0];
        assert!(r.get("public").is_none());
        assert_eq!(r["providers"], json!(["corp"]));
        assert_eq!(r["limits"], json!(["l"]));
        assert_eq!(
            r["validate"]["query"],
            json!({"a": {"type": "integer"}, "b": {"required": true}})
        );
        assert_eq!(r["validate"]["body"], json!({"max_bytes": 10}));
        assert_eq!(p["routes"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn api_key_sets_take_keys_from_the_overlay_and_from_from_the_spec() {
        let overlay = obj(
            json!({"api_keys": [{"name": "key", "keys": [{"client_id": "a", "sha256": "00"}]},
                                              {"name": "other", "keys": []}]}),
        );
        let p = merge(
            vec![],
            &overlay,
            &[("key".into(), json!({"header": "X-Key"}))],
        )
        .unwrap();
        assert_eq!(p["api_keys"][0]["from"], json!([{"header": "X-Key"}]));
        assert_eq!(p["api_keys"][1]["name"], json!("other"));
        let err = merge(
            vec![],
            &Map::new(),
            &[("key".into(), json!({"header": "X-Key"}))],
        )
        .unwrap_err();
        assert!(err[0].contains("api_keys set named `key`"));
    }
}
