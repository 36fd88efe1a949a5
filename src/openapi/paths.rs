//! OpenAPI path templates -> apiguard route paths, and the route order.
//!
//! apiguard's `{name}` fills a whole segment and names are `[A-Za-z0-9_-]`. OpenAPI allows
//! any name and templates inside a segment (`/files/{name}.{ext}`, `/v1/{name}:cancel`):
//! such a segment becomes one parameter with a `pattern` for the fixed parts, and the
//! parameters inside it are not checked one by one (noted by the caller).

use serde_json::{json, Map, Value};

/// A converted path template.
#[derive(Debug, Default, PartialEq)]
pub struct Template {
    pub path: String,
    /// OpenAPI parameter name -> apiguard template name, for whole-segment parameters.
    pub params: Vec<(String, String)>,
    /// Segment parameters made of several parts: name -> rule with the pattern.
    pub composite: Vec<(String, Map<String, Value>, Vec<String>)>,
    /// 0 per literal segment, 1 per templated one: literal paths sort first.
    pub order_key: Vec<u8>,
}

/// Converts `/a/{b}/c{d}.json`. Errors for what cannot be a route (`{+name}` may span
/// segments, a query in the path, unsafe text).
pub fn convert(openapi_path: &str) -> Result<Template, String> {
    if !openapi_path.starts_with('/') {
        return Err("path does not start with `/`".into());
    }
    let mut t = Template::default();
    let mut taken: Vec<String> = Vec::new();
    for segment in openapi_path.split('/').skip(1) {
        t.path.push('/');
        if !segment.contains('{') && !segment.contains('}') {
            t.path.push_str(segment);
            t.order_key.push(0);
            continue;
        }
        t.order_key.push(1);
        let parts = split_segment(segment)?;
        let names: Vec<String> = parts
            .iter()
            .filter_map(|p| p.param().map(String::from))
            .collect();
        if let [Part::Param(name)] = parts.as_slice() {
            let local = unique(&sanitize(name), &mut taken);
            t.path.push_str(&format!("{{{local}}}"));
            t.params.push((name.clone(), local));
            continue;
        }
        let local = unique(&sanitize(&names.join("_")), &mut taken);
        t.path.push_str(&format!("{{{local}}}"));
        let pattern: String = parts
            .iter()
            .map(|p| match p {
                Part::Literal(l) => regex::escape(l),
                Part::Param(_) => ".+".to_string(),
            })
            .collect();
        let mut rule = Map::new();
        rule.insert("pattern".into(), json!(format!("^{pattern}$")));
        t.composite.push((local, rule, names));
    }
    Ok(t)
}

#[derive(Debug)]
enum Part {
    Literal(String),
    Param(String),
}

impl Part {
    fn param(&self) -> Option<&str> {
        match self {
            Part::Param(p) => Some(p),
            Part::Literal(_) => None,
        }
    }
}

fn split_segment(segment: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = segment;
    while !rest.is_empty() {
        match rest.find('{') {
            Some(0) => {
                let end = rest.find('}').ok_or("unclosed `{` in path")?;
                let name = rest.get(1..end).unwrap_or_default();
                if name.is_empty()
                    || name.starts_with(['+', '#', '.', ';', '?', '&', '/'])
                    || name.ends_with('*')
                {
                    return Err(format!(
                        "template expression `{{{name}}}` may span segments or has an operator"
                    ));
                }
                parts.push(Part::Param(name.to_string()));
                rest = rest.get(end + 1..).unwrap_or_default();
            }
            Some(i) => {
                let (lit, tail) = rest.split_at(i);
                parts.push(Part::Literal(lit.to_string()));
                rest = tail;
            }
            None => {
                if rest.contains('}') {
                    return Err("unmatched `}` in path".into());
                }
                parts.push(Part::Literal(rest.to_string()));
                rest = "";
            }
        }
    }
    Ok(parts)
}

fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "param".into()
    } else {
        s
    }
}

fn unique(base: &str, taken: &mut Vec<String>) -> String {
    let mut name = base.to_string();
    let mut n = 1;
    while taken.contains(&name) {
        n += 1;
        name = format!("{base}_{n}");
    }
    taken.push(name.clone());
    name
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn whole_segment_parameters_keep_their_names() {
        let t = convert("/repos/{owner}/{repo}/issues").unwrap();
        assert_eq!(t.path, "/repos/{owner}/{repo}/issues");
        assert_eq!(t.order_key, vec![0, 1, 1, 0]);
        assert_eq!(t.params[0], ("owner".to_string(), "owner".to_string()));
    }

    #[test]
    fn odd_names_are_sanitized_and_unique() {
        let t = convert("/a/{user.id}/{user_id}").unwrap();
        assert_eq!(t.path, "/a/{user_id}/{user_id_2}");
        assert_eq!(
            t.params[1],
            ("user_id".to_string(), "user_id_2".to_string())
        );
    }

    #[test]
    fn partial_segments_become_one_parameter_with_a_pattern() {
        let t = convert("/files/{name}.{ext}").unwrap();
        assert_eq!(t.path, "/files/{name_ext}");
        assert_eq!(t.composite[0].1["pattern"], json!("^.+\\..+$"));
        assert_eq!(
            t.composite[0].2,
            vec!["name".to_string(), "ext".to_string()]
        );
        let t = convert("/v1/{name}:cancel").unwrap();
        assert_eq!(t.composite[0].1["pattern"], json!("^.+:cancel$"));
    }

    #[test]
    fn multi_segment_expressions_are_refused() {
        assert!(convert("/v1/{+name}").is_err());
        assert!(convert("/v1/{name*}").is_err());
        assert!(convert("/v1/{name").is_err());
        assert!(convert("v1").is_err());
    }

    #[test]
    fn literal_paths_sort_before_templates() {
        let mut paths = vec!["/users/{id}", "/users/me", "/{x}/me", "/users"];
        paths.sort_by_key(|p| convert(p).unwrap().order_key);
        assert_eq!(paths, vec!["/users", "/users/me", "/users/{id}", "/{x}/me"]);
    }
}
