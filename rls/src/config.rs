//! Limits, in envoyproxy/ratelimit's configuration format (the subset apiguard needs), so
//! one file configures this server or that service:
//!
//! ```yaml
//! domain: apiguard
//! descriptors:
//!   - key: limit
//!     value: per-user                # an exact value ...
//!     descriptors:
//!       - key: user                  # ... or any value: one counter per distinct value
//!         rate_limit: {unit: minute, requests_per_unit: 100}
//! ```
//! A request descriptor (a list of entries) walks the tree one entry per level: a child
//! with the same key and value wins over one with the same key and no value. The limit
//! of the node its last entry reaches applies; a descriptor that leaves the tree early or
//! ends on a node without `rate_limit` is not limited (as in envoyproxy/ratelimit).

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub domain: String,
    #[serde(default)]
    pub descriptors: Vec<Node>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub key: String,
    pub value: Option<String>,
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub descriptors: Vec<Node>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub unit: String,
    pub requests_per_unit: u32,
    /// Optional name, reported back in `current_limit.name`.
    pub name: Option<String>,
}

/// A matched limit: its window in seconds and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub name: String,
    pub limit: u32,
    pub unit: i32,
    pub window_secs: u64,
}

pub fn load(path: &str) -> Result<Config, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    parse(&text).map_err(|e| format!("{path}: {e}"))
}

pub fn parse(text: &str) -> Result<Config, String> {
    let config: Config = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
    if config.domain.is_empty() {
        return Err("domain is required".into());
    }
    check(&config.descriptors)?;
    Ok(config)
}

fn check(nodes: &[Node]) -> Result<(), String> {
    for n in nodes {
        if let Some(rl) = &n.rate_limit {
            if unit_code(&rl.unit).is_none() {
                return Err(format!("descriptor {}: unknown unit {:?}", n.key, rl.unit));
            }
        }
        check(&n.descriptors)?;
    }
    Ok(())
}

/// The unit's protocol code and its length in seconds.
fn unit_code(unit: &str) -> Option<(i32, u64)> {
    use crate::rls_proto::Unit;
    let u = match unit.to_ascii_lowercase().as_str() {
        "second" => Unit::Second,
        "minute" => Unit::Minute,
        "hour" => Unit::Hour,
        "day" => Unit::Day,
        "week" => Unit::Week,
        "month" => Unit::Month,
        "year" => Unit::Year,
        _ => return None,
    } as i32;
    Some((u, Unit::seconds(u)?))
}

impl Config {
    /// The limit for one request descriptor, if any.
    pub fn matching(&self, entries: &[(String, String)]) -> Option<Matched> {
        let mut level = &self.descriptors;
        let mut reached: Option<&Node> = None;
        for (key, value) in entries {
            let node = level
                .iter()
                .find(|n| n.key == *key && n.value.as_deref() == Some(value.as_str()))
                .or_else(|| level.iter().find(|n| n.key == *key && n.value.is_none()))?;
            reached = Some(node);
            level = &node.descriptors;
        }
        let rl = reached?.rate_limit.as_ref()?;
        let (unit, window_secs) = unit_code(&rl.unit)?;
        Some(Matched {
            name: rl.name.clone().unwrap_or_default(),
            limit: rl.requests_per_unit,
            unit,
            window_secs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "domain: apiguard
descriptors:
  - key: limit
    value: per-user
    descriptors:
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 100}
      - key: user
        value: admin
        rate_limit: {unit: second, requests_per_unit: 5, name: admin}
";

    fn entries(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn any_value_and_exact_value() {
        let c = parse(CONFIG).unwrap();
        let m = c
            .matching(&entries(&[("limit", "per-user"), ("user", "alice")]))
            .unwrap();
        assert_eq!((m.limit, m.window_secs), (100, 60));
        let m = c
            .matching(&entries(&[("limit", "per-user"), ("user", "admin")]))
            .unwrap();
        assert_eq!((m.limit, m.window_secs, m.name.as_str()), (5, 1, "admin"));
    }

    #[test]
    fn unmatched_or_partial_descriptors_are_unlimited() {
        let c = parse(CONFIG).unwrap();
        assert!(c
            .matching(&entries(&[("limit", "other"), ("user", "a")]))
            .is_none());
        assert!(c.matching(&entries(&[("limit", "per-user")])).is_none());
        assert!(c
            .matching(&entries(&[
                ("limit", "per-user"),
                ("user", "a"),
                ("x", "y")
            ]))
            .is_none());
    }

    /// The envoyproxy/ratelimit config shipped for docker compose is read by this server too.
    #[test]
    fn reads_the_compose_config_for_envoyproxy_ratelimit() {
        let c = parse(include_str!(
            "../../e2e/compose/ratelimit/config/apiguard.yaml"
        ))
        .unwrap();
        let m = c
            .matching(&entries(&[
                ("limit", "global-per-ip"),
                ("client_ip", "10.0.0.1"),
            ]))
            .unwrap();
        assert_eq!((m.limit, m.window_secs), (100, 60));
    }

    #[test]
    fn refuses_bad_config() {
        assert!(parse("domain: a\ndescriptors: [{key: k, rate_limit: {unit: fortnight, requests_per_unit: 1}}]").is_err());
        assert!(parse("domain: a\nbogus: 1\n").is_err());
        assert!(parse("descriptors: []\n").is_err());
    }
}
