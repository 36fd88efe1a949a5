//! Security requirements -> route access (`public`, `providers`, `scopes`).
//!
//! OpenAPI: an operation's `security` (else the document's) is a list of alternatives; each
//! alternative names schemes that must all be satisfied, with scopes. apiguard: a route
//! accepts any one of its `providers` and checks one scope requirement. The mapping:
//! - no requirement, `security: []`, or an empty alternative `{}` -> `public: true`;
//! - oauth2 / openIdConnect / http bearer -> the overlay's JWT provider named after the
//!   scheme, else every JWT provider of the overlay;
//! - apiKey in a header or query -> an `api_keys` set named after the scheme (its keys
//!   come from the overlay);
//! - mutualTLS -> the overlay's `client_certs` set named after the scheme;
//! - an alternative apiguard cannot check (http basic, apiKey in a cookie, no provider)
//!   makes the route public with a note: refusing it would lock out the clients that use it;
//! - an alternative with several schemes is checked on its first checkable one (noted);
//! - scopes: one alternative -> `all_of`; alternatives of one scope each -> `any_of`;
//!   otherwise the scopes common to all alternatives (noted).

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::pointer::deref;

/// What a scheme name resolves to in the generated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Names of principal sources (JWT providers, an api_keys set, a client_certs set).
    Principals(Vec<String>),
    /// Cannot be checked by apiguard, with why.
    Unsupported(String),
}

/// Scheme names -> targets, from `components.securitySchemes` and the overlay.
pub struct Schemes<'a> {
    doc: &'a Value,
    jwt_providers: Vec<String>,
    client_certs: Vec<String>,
    /// api_keys sets the policy needs: (name, `from` entry).
    pub api_key_sets: Vec<(String, Value)>,
    /// Schemes used by an operation that the overlay must provide something for.
    pub missing: BTreeSet<String>,
}

/// The name a scheme gets in the policy: letters, digits, `-` and `_`.
pub fn policy_name(scheme: &str) -> String {
    scheme
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl<'a> Schemes<'a> {
    pub fn new(doc: &'a Value, overlay: &Map<String, Value>) -> Self {
        let names = |key: &str| -> Vec<String> {
            overlay
                .get(key)
                .and_then(Value::as_array)
                .map(|l| {
                    l.iter()
                        .filter_map(|p| p.get("name")?.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        Schemes {
            doc,
            jwt_providers: names("providers"),
            client_certs: names("client_certs"),
            api_key_sets: Vec::new(),
            missing: BTreeSet::new(),
        }
    }

    /// Resolves a scheme name used by an operation.
    pub fn target(&mut self, scheme: &str) -> Target {
        let def = self
            .doc
            .pointer("/components/securitySchemes")
            .and_then(|s| s.get(scheme))
            .map(|d| deref(self.doc, d));
        let def = match def {
            Some(Ok((d, _))) => d,
            Some(Err(why)) => return Target::Unsupported(why),
            None => return Target::Unsupported(format!("no security scheme `{scheme}`")),
        };
        let name = policy_name(scheme);
        let kind = def.get("type").and_then(Value::as_str).unwrap_or_default();
        let http = def
            .get("scheme")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase();
        match kind {
            "oauth2" | "openIdConnect" => self.jwt(scheme, &name),
            "http" if http == "bearer" => self.jwt(scheme, &name),
            "http" => Target::Unsupported(format!("http `{http}` authentication")),
            "apiKey" => self.api_key(def, scheme, name),
            "mutualTLS" if self.client_certs.contains(&name) => Target::Principals(vec![name]),
            "mutualTLS" => {
                self.missing.insert(format!(
                    "{scheme}: add a client_certs set named `{name}` to the overlay"
                ));
                Target::Unsupported("mutualTLS without a client_certs set".into())
            }
            other => Target::Unsupported(format!("security scheme type `{other}`")),
        }
    }

    fn jwt(&mut self, scheme: &str, name: &str) -> Target {
        if self.jwt_providers.iter().any(|p| p == name) {
            return Target::Principals(vec![name.to_string()]);
        }
        if self.jwt_providers.is_empty() {
            self.missing.insert(format!(
                "{scheme}: add a JWT provider to the overlay (named `{name}` to use it for this scheme only)"
            ));
            return Target::Unsupported("no JWT provider".into());
        }
        Target::Principals(self.jwt_providers.clone())
    }

    fn api_key(&mut self, def: &Value, scheme: &str, name: String) -> Target {
        let key_name = def.get("name").and_then(Value::as_str).unwrap_or_default();
        let from = match def.get("in").and_then(Value::as_str) {
            Some("header") => json!({"header": key_name}),
            Some("query") => json!({"query": key_name}),
            other => {
                return Target::Unsupported(format!("apiKey in {other:?} (scheme `{scheme}`)"))
            }
        };
        if !self.api_key_sets.iter().any(|(n, _)| *n == name) {
            self.api_key_sets.push((name.clone(), from));
        }
        Target::Principals(vec![name])
    }
}

/// The route's access fields, and notes.
pub fn route_access(
    requirements: Option<&Value>,
    schemes: &mut Schemes<'_>,
    notes: &mut Vec<String>,
) -> Map<String, Value> {
    let alternatives: Vec<&Map<String, Value>> = requirements
        .and_then(Value::as_array)
        .map(|l| l.iter().filter_map(Value::as_object).collect())
        .unwrap_or_default();
    let public = || {
        let mut m = Map::new();
        m.insert("public".into(), json!(true));
        m
    };
    if alternatives.is_empty() || alternatives.iter().any(|a| a.is_empty()) {
        return public();
    }
    let mut providers: Vec<String> = Vec::new();
    let mut scope_sets: Vec<Vec<String>> = Vec::new();
    for alt in &alternatives {
        match checked_scheme(alt, schemes, notes) {
            Some((names, scopes)) => {
                for n in names {
                    if !providers.contains(&n) {
                        providers.push(n);
                    }
                }
                scope_sets.push(scopes);
            }
            None => {
                notes.push("an alternative apiguard cannot check: the route is public, authentication is left to the upstream".into());
                return public();
            }
        }
    }
    let mut m = Map::new();
    m.insert("providers".into(), json!(providers));
    if let Some(scopes) = scope_requirement(&scope_sets, notes) {
        m.insert("scopes".into(), scopes);
    }
    m
}

/// The first scheme of an alternative that apiguard can check, with its scopes.
fn checked_scheme(
    alt: &Map<String, Value>,
    schemes: &mut Schemes<'_>,
    notes: &mut Vec<String>,
) -> Option<(Vec<String>, Vec<String>)> {
    let mut chosen = None;
    for (scheme, scopes) in alt {
        match schemes.target(scheme) {
            Target::Principals(names) if chosen.is_none() => {
                let scopes = scopes
                    .as_array()
                    .map(|l| {
                        l.iter()
                            .filter_map(Value::as_str)
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default();
                chosen = Some((names, scopes));
            }
            Target::Principals(_) => notes.push(format!(
                "scheme `{scheme}` required together with another: only the first is checked"
            )),
            Target::Unsupported(why) => notes.push(format!("scheme `{scheme}` not checked: {why}")),
        }
    }
    if chosen.is_some() && alt.len() > 1 {
        notes.push("an alternative requires several schemes: apiguard checks one".into());
    }
    chosen
}

fn scope_requirement(sets: &[Vec<String>], notes: &mut Vec<String>) -> Option<Value> {
    if sets.iter().any(Vec::is_empty) {
        return None;
    }
    let first = sets.first()?;
    if sets.iter().all(|s| s == first) {
        return Some(json!({"all_of": first}));
    }
    if sets.iter().all(|s| s.len() == 1) {
        let any: BTreeSet<&String> = sets.iter().flatten().collect();
        return Some(json!({"any_of": any}));
    }
    let common: Vec<&String> = first
        .iter()
        .filter(|s| sets.iter().all(|o| o.contains(s)))
        .collect();
    notes.push(
        "alternatives with different scope sets: only the scopes common to all are required".into(),
    );
    (!common.is_empty()).then(|| json!({"all_of": common}))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn doc() -> Value {
        json!({"components": {"securitySchemes": {
            "oauth": {"type": "oauth2", "flows": {}},
            "bearer": {"type": "http", "scheme": "Bearer"},
            "basic": {"type": "http", "scheme": "basic"},
            "key": {"type": "apiKey", "in": "header", "name": "X-Key"},
            "qkey": {"type": "apiKey", "in": "query", "name": "k"},
            "ckey": {"type": "apiKey", "in": "cookie", "name": "c"}}}})
    }

    fn access(doc: &Value, overlay: Value, req: Value) -> (Value, Vec<String>, Vec<String>) {
        let overlay = overlay.as_object().cloned().unwrap_or_default();
        let mut schemes = Schemes::new(doc, &overlay);
        let mut notes = Vec::new();
        let m = route_access(Some(&req), &mut schemes, &mut notes);
        (
            Value::Object(m),
            notes,
            schemes.missing.into_iter().collect(),
        )
    }

    #[test]
    fn empty_requirements_are_public() {
        let d = doc();
        assert_eq!(access(&d, json!({}), json!([])).0, json!({"public": true}));
        assert_eq!(
            access(&d, json!({}), json!([{}, {"key": []}])).0,
            json!({"public": true})
        );
        let mut s = Schemes::new(&d, &Map::new());
        assert_eq!(route_access(None, &mut s, &mut Vec::new()), public_map());
    }

    fn public_map() -> Map<String, Value> {
        json!({"public": true}).as_object().cloned().unwrap()
    }

    #[test]
    fn oauth_scopes_and_bearer_use_overlay_providers() {
        let d = doc();
        let overlay = json!({"providers": [{"name": "corp"}, {"name": "oauth"}]});
        let (m, _, _) = access(&d, overlay.clone(), json!([{"oauth": ["read", "write"]}]));
        assert_eq!(
            m,
            json!({"providers": ["oauth"], "scopes": {"all_of": ["read", "write"]}})
        );
        let (m, _, _) = access(&d, overlay, json!([{"bearer": []}]));
        assert_eq!(m, json!({"providers": ["corp", "oauth"]}));
    }

    #[test]
    fn single_scope_alternatives_become_any_of() {
        let d = doc();
        let (m, _, _) = access(
            &d,
            json!({"providers": [{"name": "oauth"}]}),
            json!([{"oauth": ["a"]}, {"oauth": ["b"]}]),
        );
        assert_eq!(
            m,
            json!({"providers": ["oauth"], "scopes": {"any_of": ["a", "b"]}})
        );
        let (m, notes, _) = access(
            &d,
            json!({"providers": [{"name": "oauth"}]}),
            json!([{"oauth": ["a", "c"]}, {"oauth": ["a", "b"]}]),
        );
        assert_eq!(m["scopes"], json!({"all_of": ["a"]}));
        assert_eq!(notes.len(), 1);
    }

    #[test]
    fn api_keys_get_a_set_named_after_the_scheme() {
        let d = doc();
        let overlay = Map::new();
        let mut s = Schemes::new(&d, &overlay);
        let m = route_access(
            Some(&json!([{"key": []}, {"qkey": []}])),
            &mut s,
            &mut Vec::new(),
        );
        assert_eq!(Value::Object(m), json!({"providers": ["key", "qkey"]}));
        assert_eq!(
            s.api_key_sets,
            vec![
                ("key".to_string(), json!({"header": "X-Key"})),
                ("qkey".to_string(), json!({"query": "k"}))
            ]
        );
    }

    #[test]
    fn uncheckable_alternatives_make_the_route_public_with_a_note() {
        let d = doc();
        let (m, notes, _) = access(&d, json!({}), json!([{"key": []}, {"basic": []}]));
        assert_eq!(m, json!({"public": true}));
        assert!(notes.iter().any(|n| n.contains("basic")), "{notes:?}");
        let (m, _, _) = access(&d, json!({}), json!([{"ckey": []}]));
        assert_eq!(m, json!({"public": true}));
    }

    #[test]
    fn a_bearer_scheme_without_provider_is_reported_missing() {
        let d = doc();
        let (_, _, missing) = access(&d, json!({}), json!([{"bearer": []}]));
        assert_eq!(missing.len(), 1);
        assert!(missing[0].starts_with("bearer:"));
    }

    #[test]
    fn and_of_schemes_checks_the_first_checkable_one() {
        let d = doc();
        let (m, notes, _) = access(&d, json!({}), json!([{"basic": [], "key": []}]));
        assert_eq!(m, json!({"providers": ["key"]}));
        assert!(notes.len() >= 2);
    }
}
