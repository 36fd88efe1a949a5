//! Authorization of an authenticated principal against a route's requirements.

use regex::Regex;
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

/// Whether a rule's failure blocks the request or is only recorded (like RBAC shadow rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Audit,
}

/// `Allow` rules must hold; `Deny` rules must not. Deny rules run first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub effect: Effect,
    pub mode: Mode,
    pub when: Condition,
}

#[derive(Debug)]
pub enum Condition {
    Claim { path: String, test: ClaimTest },
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
}

#[derive(Debug)]
pub enum ClaimTest {
    Equals(Value),
    OneOf(Vec<Value>),
    /// Compiled once per policy; anchored by the policy author, not by apiguard.
    Matches(Regex),
    Present(bool),
    /// The claim (or, for an array claim, one of its items) contains this value.
    Contains(Value),
    /// Object-level authorization: the claim equals the named path template parameter.
    EqualsParam(String),
}

impl Condition {
    pub fn holds(&self, claims: &Map<String, Value>, params: &[(String, String)]) -> bool {
        match self {
            Condition::All(cs) => cs.iter().all(|c| c.holds(claims, params)),
            Condition::Any(cs) => cs.iter().any(|c| c.holds(claims, params)),
            Condition::Not(c) => !c.holds(claims, params),
            Condition::Claim { path, test } => {
                let value = claim_at(claims, path);
                match test {
                    ClaimTest::Present(want) => value.is_some() == *want,
                    ClaimTest::Equals(v) => value == Some(v),
                    ClaimTest::OneOf(vs) => value.is_some_and(|x| vs.contains(x)),
                    ClaimTest::Matches(re) => value
                        .and_then(Value::as_str)
                        .is_some_and(|s| re.is_match(s)),
                    ClaimTest::Contains(v) => match value {
                        Some(Value::Array(items)) => items.contains(v),
                        Some(Value::String(s)) => v
                            .as_str()
                            .is_some_and(|needle| scope_tokens(s).any(|w| w == needle)),
                        _ => false,
                    },
                    ClaimTest::EqualsParam(name) => {
                        let Some(param) = params.iter().find(|(n, _)| n == name).map(|(_, v)| v)
                        else {
                            return false;
                        };
                        match value {
                            Some(Value::String(s)) => s == param,
                            // Numeric ids: `"tenant_id": 42` binds to `/tenants/42`.
                            Some(Value::Number(n)) => n.to_string() == *param,
                            _ => false,
                        }
                    }
                }
            }
        }
    }
}

/// What the rules of a route decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RuleOutcome {
    /// The enforced rule that denies the request, if any.
    pub denied_by: Option<String>,
    /// Audit-mode rules that would have denied it.
    pub audit_denied: Vec<String>,
}

/// Deny rules first, then allow rules; audit rules are recorded, never enforced.
pub fn evaluate(
    rules: &[Rule],
    claims: &Map<String, Value>,
    params: &[(String, String)],
) -> RuleOutcome {
    let mut out = RuleOutcome::default();
    let ordered = rules
        .iter()
        .filter(|r| r.effect == Effect::Deny)
        .chain(rules.iter().filter(|r| r.effect == Effect::Allow));
    for rule in ordered {
        let holds = rule.when.holds(claims, params);
        let denies = match rule.effect {
            Effect::Deny => holds,
            Effect::Allow => !holds,
        };
        if !denies {
            continue;
        }
        match rule.mode {
            Mode::Audit => out.audit_denied.push(rule.name.clone()),
            Mode::Enforce => {
                out.denied_by = Some(rule.name.clone());
                return out;
            }
        }
    }
    out
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

/// The words of a space-delimited scope string. RFC 6749 §3.3 delimits scope tokens with
/// spaces (%x20) only: a tab or newline is part of a token, so `"read\tadmin"` grants no
/// `admin` (a lenient IdP or client library could otherwise smuggle one).
fn scope_tokens(s: &str) -> impl Iterator<Item = &str> {
    s.split(' ').filter(|w| !w.is_empty())
}

/// Every scope granted by the first of `claim_paths` present in the claims.
pub fn granted_scopes<'a>(claims: &'a Map<String, Value>, claim_paths: &[String]) -> Vec<&'a str> {
    let mut out = Vec::new();
    for path in claim_paths {
        match claim_at(claims, path) {
            Some(Value::String(s)) => out.extend(scope_tokens(s)),
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
    fn scopes_split_on_spaces_only() {
        let c = claims(json!({"scope": "  read\tadmin  write\nops\u{a0}x  "}));
        assert_eq!(
            granted_scopes(&c, &["scope".into()]),
            vec!["read\tadmin", "write\nops\u{a0}x"]
        );
        let cond = claim("scope", ClaimTest::Contains(json!("admin")));
        assert!(!cond.holds(&c, &[]));
    }

    fn claim(path: &str, test: ClaimTest) -> Condition {
        Condition::Claim {
            path: path.into(),
            test,
        }
    }

    fn rule(name: &str, effect: Effect, mode: Mode, when: Condition) -> Rule {
        Rule {
            name: name.into(),
            effect,
            mode,
            when,
        }
    }

    #[test]
    fn claim_tests() {
        let c = claims(
            json!({"tenant_id": "acme", "n": 42, "roles": ["a", "b"], "scope": "x y", "email": "a@corp.example"}),
        );
        let p = vec![
            ("tenant".to_string(), "acme".to_string()),
            ("id".to_string(), "42".to_string()),
        ];
        assert!(claim("tenant_id", ClaimTest::EqualsParam("tenant".into())).holds(&c, &p));
        assert!(claim("n", ClaimTest::EqualsParam("id".into())).holds(&c, &p));
        assert!(!claim("tenant_id", ClaimTest::EqualsParam("id".into())).holds(&c, &p));
        assert!(!claim("tenant_id", ClaimTest::EqualsParam("missing".into())).holds(&c, &p));
        assert!(claim("roles", ClaimTest::Contains(json!("b"))).holds(&c, &p));
        assert!(claim("scope", ClaimTest::Contains(json!("y"))).holds(&c, &p));
        assert!(claim("n", ClaimTest::OneOf(vec![json!(1), json!(42)])).holds(&c, &p));
        assert!(claim(
            "email",
            ClaimTest::Matches(Regex::new("@corp\\.example$").unwrap())
        )
        .holds(&c, &p));
        assert!(claim("nope", ClaimTest::Present(false)).holds(&c, &p));
        assert!(!claim("nope", ClaimTest::Equals(Value::Null)).holds(&c, &p));
        let any = Condition::Any(vec![
            claim("nope", ClaimTest::Present(true)),
            claim("n", ClaimTest::Equals(json!(42))),
        ]);
        assert!(any.holds(&c, &p));
        assert!(!Condition::Not(Box::new(any)).holds(&c, &p));
        assert!(Condition::All(vec![]).holds(&c, &p));
    }

    #[test]
    fn deny_rules_run_first_and_audit_only_records() {
        let c = claims(json!({"tenant_id": "acme", "blocked": true}));
        let rules = vec![
            rule(
                "tenant",
                Effect::Allow,
                Mode::Enforce,
                claim("tenant_id", ClaimTest::Equals(json!("other"))),
            ),
            rule(
                "blocked",
                Effect::Deny,
                Mode::Enforce,
                claim("blocked", ClaimTest::Equals(json!(true))),
            ),
        ];
        assert_eq!(
            evaluate(&rules, &c, &[]).denied_by.as_deref(),
            Some("blocked")
        );
        let rules = vec![
            rule(
                "shadow",
                Effect::Allow,
                Mode::Audit,
                claim("tenant_id", ClaimTest::Equals(json!("other"))),
            ),
            rule(
                "ok",
                Effect::Allow,
                Mode::Enforce,
                claim("tenant_id", ClaimTest::Equals(json!("acme"))),
            ),
        ];
        let out = evaluate(&rules, &c, &[]);
        assert_eq!(out.denied_by, None);
        assert_eq!(out.audit_denied, vec!["shadow"]);
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
