//! Authorization of an authenticated principal against a route's requirements.

use serde_json::{Map, Value};

/// Claim paths scopes are read from when a provider names none: RFC 8693 / RFC 9068 `scope`
/// (space-delimited string) and the `scp` array some IdPs (Azure AD, Okta) use.
pub const DEFAULT_SCOPE_CLAIMS: [&str; 2] = ["scope", "scp"];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeRequirement {
    pub all_of: Vec<String>,
    pub any_of: Vec<String>,
}

impl ScopeRequirement {
    pub fn is_empty(&self) -> bool {
        self.all_of.is_empty() && self.any_of.is_empty()
    }

    /// Ok, or the scopes to name in `WWW-Authenticate: ... scope="..."`.
    pub fn check(&self, granted: &[&str]) -> Result<(), String> {
        let missing: Vec<&str> = self
            .all_of
            .iter()
            .map(String::as_str)
            .filter(|s| !granted.contains(s))
            .collect();
        if !missing.is_empty() {
            return Err(missing.join(" "));
        }
        if !self.any_of.is_empty() && !self.any_of.iter().any(|s| granted.contains(&s.as_str())) {
            return Err(self.any_of.join(" "));
        }
        Ok(())
    }
}

/// Looks a dotted claim path up (`realm_access.roles`). A key that itself contains dots
/// (`https://example.com/roles`, `cognito:groups`) is found too, since the whole path is
/// tried as one key first.
pub fn claim_at<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut current = claims.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

/// Every scope granted by the first of `claim_paths` present in the claims.
pub fn granted_scopes<'a>(claims: &'a Map<String, Value>, claim_paths: &[String]) -> Vec<&'a str> {
    let mut out = Vec::new();
    for path in claim_paths {
        match claim_at(claims, path) {
            Some(Value::String(s)) => out.extend(s.split_ascii_whitespace()),
            Some(Value::Array(items)) => out.extend(items.iter().filter_map(Value::as_str)),
            _ => continue,
        }
        break;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn scopes_from_string_array_and_nested_paths() {
        let c = claims(
            json!({"scope": "a b", "scp": ["x"], "realm_access": {"roles": ["admin"]}, "cognito:groups": ["g"]}),
        );
        assert_eq!(granted_scopes(&c, &["scope".into()]), vec!["a", "b"]);
        assert_eq!(granted_scopes(&c, &["scp".into()]), vec!["x"]);
        assert_eq!(
            granted_scopes(&c, &["realm_access.roles".into()]),
            vec!["admin"]
        );
        assert_eq!(granted_scopes(&c, &["cognito:groups".into()]), vec!["g"]);
        assert_eq!(
            granted_scopes(&c, &["nope".into(), "scp".into()]),
            vec!["x"]
        );
    }

    #[test]
    fn all_of_and_any_of() {
        let r = ScopeRequirement {
            all_of: vec!["a".into(), "b".into()],
            any_of: vec!["x".into(), "y".into()],
        };
        assert!(r.check(&["a", "b", "y"]).is_ok());
        assert_eq!(r.check(&["a", "y"]), Err("b".into()));
        assert_eq!(r.check(&["a", "b"]), Err("x y".into()));
        assert!(ScopeRequirement::default().check(&[]).is_ok());
    }
}
