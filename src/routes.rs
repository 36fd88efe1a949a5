//! Route matching on the path Envoy normalized, and refusal of paths that are still ambiguous.
//!
//! Matching is literal and case-sensitive. A path that could mean two different things to
//! apiguard and to the upstream (dot segments, encoded `/`, `.` or `\`, NUL) is refused
//! instead of being guessed at, so `/public/../admin` can never match `/public`.

use std::collections::HashMap;

mod lookalike;
pub use lookalike::{is_noncanonical_method, STANDARD_METHODS};

/// How a route's path is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path, byte for byte.
    Exact(String),
    /// Segment-aware prefix: `/items` matches `/items` and `/items/...`, never `/itemsx`.
    Prefix(String),
    /// Segments where `{name}` stands for exactly one non-empty segment.
    Template(Vec<Segment>),
    /// Any method of a gRPC service (`match.grpc` without `method`): `/pkg.Svc/{method}`.
    GrpcService(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
}

impl PathMatch {
    /// Parses the `match.path` / `match.prefix` strings of the policy.
    pub fn parse(path: Option<&str>, prefix: Option<&str>) -> Result<PathMatch, String> {
        match (path, prefix) {
            (Some(_), Some(_)) => Err("set either `path` or `prefix`, not both".into()),
            (None, None) => Err("set `path` (exact or template) or `prefix`".into()),
            (None, Some(p)) => {
                check_pattern_text(p)?;
                if p.contains('{') || p.contains('}') {
                    return Err("a prefix cannot hold `{param}` segments; use `path`".into());
                }
                Ok(PathMatch::Prefix(p.to_string()))
            }
            (Some(p), None) => {
                check_pattern_text(p)?;
                if !p.contains('{') && !p.contains('}') {
                    return Ok(PathMatch::Exact(p.to_string()));
                }
                let mut segments = Vec::new();
                let mut names: Vec<&str> = Vec::new();
                for seg in p.split('/').skip(1) {
                    if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                        if name.is_empty()
                            || !name
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                        {
                            return Err(format!(
                                "template parameter `{seg}` must be `{{name}}` with letters, digits, `_` or `-`"
                            ));
                        }
                        if names.contains(&name) {
                            return Err(format!("template parameter `{name}` appears twice"));
                        }
                        names.push(name);
                        segments.push(Segment::Param(name.to_string()));
                    } else if seg.contains('{') || seg.contains('}') {
                        return Err(format!(
                            "`{seg}`: a template parameter must fill a whole segment"
                        ));
                    } else {
                        segments.push(Segment::Literal(seg.to_string()));
                    }
                }
                Ok(PathMatch::Template(segments))
            }
        }
    }

    /// Matches a safe, query-less path; template parameters are returned by name.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        match self {
            PathMatch::Exact(p) => (p == path).then(Vec::new),
            PathMatch::Prefix(p) => prefix_matches(p, path).then(Vec::new),
            PathMatch::GrpcService(s) => crate::grpc::is_service_call(s, path).then(Vec::new),
            PathMatch::Template(segments) => {
                let rest = path.strip_prefix('/')?;
                let mut params = Vec::new();
                let mut parts = rest.split('/');
                for seg in segments {
                    let part = parts.next()?;
                    match seg {
                        Segment::Literal(l) if l == part => {}
                        Segment::Literal(_) => return None,
                        Segment::Param(_) if part.is_empty() => return None,
                        Segment::Param(name) => params.push((name.clone(), part.to_string())),
                    }
                }
                parts.next().is_none().then_some(params)
            }
        }
    }

    /// The first literal segment, when the pattern pins one (used to index routes).
    fn first_segment(&self) -> Option<&str> {
        fn first(p: &str) -> Option<&str> {
            p.strip_prefix('/')
                .map(|r| r.split('/').next().unwrap_or(r))
        }
        match self {
            PathMatch::Exact(p) => first(p),
            // `/items` as a prefix only ever matches paths whose first segment is `items`;
            // a prefix ending inside a segment (`/it`) is not allowed to match `/items`, so
            // this is exact too. The root prefix `/` pins nothing.
            PathMatch::Prefix(p) => first(p).filter(|s| !s.is_empty() || p != "/"),
            PathMatch::Template(segments) => match segments.first() {
                Some(Segment::Literal(l)) => Some(l.as_str()),
                _ => None,
            },
            PathMatch::GrpcService(s) => Some(s),
        }
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
    }
}

fn check_pattern_text(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err("must start with `/`".into());
    }
    if p.contains('?') || p.contains('#') {
        return Err("must not contain a query (`?`) or fragment (`#`)".into());
    }
    if unsafe_path_reason(p).is_some() {
        return Err("must not contain dot segments or encoded `/`, `.`, `\\`".into());
    }
    Ok(())
}

/// Why a request path is ambiguous, or None when it is safe to match literally.
pub fn unsafe_path_reason(path: &str) -> Option<&'static str> {
    if path.is_empty() || !path.starts_with('/') {
        return Some("path must start with /");
    }
    if path.contains('\\') {
        return Some("backslash in path");
    }
    if path.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Some("control character in path");
    }
    if path.contains('#') {
        return Some("fragment in path");
    }
    let lower = path.to_ascii_lowercase();
    for encoded in ["%2f", "%2e", "%5c", "%00", "%25", "%3b"] {
        if lower.contains(encoded) {
            return Some("encoded /, ., \\, ;, NUL or % in path");
        }
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Some("dot segment in path");
    }
    // What Envoy's `merge_slashes` and `normalize_path` would have removed: when they
    // still reach the filter, the listener runs without them and an upstream may read
    // `//admin`, `/%61dmin` or `/admin;x=1` as `/admin`. Refuse rather than guess.
    if path.contains("//") {
        return Some("empty segment in path");
    }
    if path.contains(';') {
        return Some("path parameter (;) in path");
    }
    if encodes_unreserved(path) {
        return Some("percent-encoded unreserved character in path");
    }
    match percent_decoded_is_utf8(path) {
        None => return Some("malformed percent-encoding in path"),
        // Overlong forms (`%c0%ae` is `.` to a lenient decoder) and stray bytes: an
        // upstream may decode them into the dots and slashes refused above.
        Some(false) => return Some("percent-encoding that is not UTF-8 in path"),
        Some(true) => {}
    }
    None
}

/// Whether the path, percent-decoded, is valid UTF-8 (which rules out overlong forms);
/// `None` if a `%` is not followed by two hex digits.
fn percent_decoded_is_utf8(path: &str) -> Option<bool> {
    crate::percent::decode_bytes(path).map(|bytes| std::str::from_utf8(&bytes).is_ok())
}

/// `%XX` that decodes to an RFC 3986 unreserved character (letters, digits, `-._~`).
fn encodes_unreserved(path: &str) -> bool {
    crate::percent::escaped_bytes(path).any(|c| c.is_ascii_alphanumeric() || b"-._~".contains(&c))
}

/// Splits `:path` into the path and the query string (without `?`).
pub fn split_query(raw: &str) -> (&str, &str) {
    match raw.split_once('?') {
        Some((p, q)) => (p, q),
        None => (raw, ""),
    }
}

/// Something routes can be looked up in. `T` is the route payload owned by the policy.
#[derive(Debug)]
pub struct RouteTable<T> {
    routes: Vec<CompiledRoute<T>>,
    /// Route indexes per first literal segment, plus the routes that pin none, each list
    /// in policy order: a lookup only visits the candidates that could match.
    by_first_segment: HashMap<String, Vec<usize>>,
    unpinned: Vec<usize>,
}

#[derive(Debug)]
pub struct CompiledRoute<T> {
    pub methods: Option<Vec<String>>,
    pub path: PathMatch,
    pub value: T,
}

/// A successful lookup.
#[derive(Debug)]
pub struct RouteMatch<'a, T> {
    pub index: usize,
    pub route: &'a T,
    pub params: Vec<(String, String)>,
}

impl<T> RouteTable<T> {
    pub fn new(routes: Vec<CompiledRoute<T>>) -> Self {
        let mut by_first_segment: HashMap<String, Vec<usize>> = HashMap::new();
        let mut unpinned = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            match r.path.first_segment() {
                Some(seg) => by_first_segment.entry(seg.to_string()).or_default().push(i),
                None => unpinned.push(i),
            }
        }
        RouteTable {
            routes,
            by_first_segment,
            unpinned,
        }
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        self.routes.get(index).map(|r| &r.value)
    }

    /// First route (in policy order) whose method and path match. `path` has no query.
    pub fn lookup(&self, method: &str, path: &str) -> Option<RouteMatch<'_, T>> {
        let first = path
            .strip_prefix('/')
            .map(|r| r.split('/').next().unwrap_or(r))
            .unwrap_or("");
        let pinned = self
            .by_first_segment
            .get(first)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        // Merge the two sorted candidate lists so policy order (first match wins) holds.
        let (mut a, mut b) = (pinned.iter().peekable(), self.unpinned.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) if x < y => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => return None,
            };
            let &index = next?;
            let Some(route) = self.routes.get(index) else {
                continue;
            };
            if let Some(methods) = &route.methods {
                if !methods.iter().any(|m| m == method) {
                    continue;
                }
            }
            if let Some(params) = route.path.matches(path) {
                return Some(RouteMatch {
                    index,
                    route: &route.value,
                    params,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Spec<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a [&'a str]>);

    /// A table from (template, exact, methods) triples; also used by `lookalike`'s tests.
    pub(super) fn table(specs: &[Spec]) -> RouteTable<usize> {
        RouteTable::new(
            specs
                .iter()
                .enumerate()
                .map(|(i, (p, x, m))| CompiledRoute {
                    methods: m.map(|m| m.iter().map(|s| s.to_string()).collect()),
                    path: PathMatch::parse(*p, *x).unwrap(),
                    value: i,
                })
                .collect(),
        )
    }

    #[test]
    fn exact_prefix_and_template() {
        let t = table(&[
            (Some("/healthz"), None, Some(&["GET"])),
            (Some("/items/{id}"), None, None),
            (None, Some("/items"), None),
            (None, Some("/"), None),
        ]);
        assert_eq!(t.lookup("GET", "/healthz").unwrap().index, 0);
        assert_eq!(t.lookup("POST", "/healthz").unwrap().index, 3);
        let m = t.lookup("GET", "/items/42").unwrap();
        assert_eq!(m.index, 1);
        assert_eq!(m.params, vec![("id".to_string(), "42".to_string())]);
        assert_eq!(t.lookup("GET", "/items/42/x").unwrap().index, 2);
        assert_eq!(t.lookup("GET", "/items").unwrap().index, 2);
        assert_eq!(t.lookup("GET", "/items/").unwrap().index, 2);
        assert_eq!(t.lookup("GET", "/itemsx").unwrap().index, 3);
    }

    #[test]
    fn first_match_wins_across_pinned_and_unpinned() {
        let t = table(&[
            (Some("/{tenant}/orders"), None, None),
            (Some("/acme/orders"), None, None),
        ]);
        assert_eq!(t.lookup("GET", "/acme/orders").unwrap().index, 0);
        let t = table(&[
            (Some("/acme/orders"), None, None),
            (Some("/{tenant}/orders"), None, None),
        ]);
        assert_eq!(t.lookup("GET", "/acme/orders").unwrap().index, 0);
        assert_eq!(t.lookup("GET", "/other/orders").unwrap().index, 1);
    }

    #[test]
    fn template_params_need_non_empty_segments() {
        let t = table(&[(Some("/items/{id}"), None, None)]);
        assert!(t.lookup("GET", "/items/").is_none());
        assert!(t.lookup("GET", "/items").is_none());
    }

    #[test]
    fn no_match_is_none() {
        let t = table(&[(Some("/admin"), None, None)]);
        for p in ["/ADMIN", "/admin/", "/admin;x=1", "//admin", "/"] {
            assert!(t.lookup("GET", p).is_none(), "{p}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for p in [
            "/public/../admin",
            "/public/./admin",
            "/public/%2e%2e/admin",
            "/public/%2E%2E/admin",
            "/admin%2F",
            "/admin%2fx",
            "/a\\b",
            "/a%5cb",
            "/a%00",
            "/a%252e",
            "//admin",
            "/admin;x=1",
            "/public/..;/admin",
            "/%61dmin",
            "/a%7e",
            "/admin%3bx=1",
            "/admin%3Bx=1",
            // Overlong UTF-8 dots and slashes, stray continuation bytes, bad escapes.
            "/public/%c0%ae%c0%ae/admin",
            "/public/%e0%80%ae%e0%80%ae/admin",
            "/a%c0%af",
            "/a%80",
            "/caf%C3",
            "/a%zz",
            "/a%+f",
            "/a%2",
            "/a%",
            "..",
            "",
            "admin",
        ] {
            assert!(unsafe_path_reason(p).is_some(), "{p}");
        }
        for p in [
            "/",
            "/a/b",
            "/a..b/c",
            "/a.b",
            "/items/",
            "/items/%20x",
            "/caf%C3%A9",
        ] {
            assert!(unsafe_path_reason(p).is_none(), "{p}");
        }
    }

    #[test]
    fn bad_patterns_are_config_errors() {
        assert!(PathMatch::parse(Some("/a"), Some("/b")).is_err());
        assert!(PathMatch::parse(None, None).is_err());
        assert!(PathMatch::parse(Some("a"), None).is_err());
        assert!(PathMatch::parse(Some("/a/{}"), None).is_err());
        assert!(PathMatch::parse(Some("/a/x{id}"), None).is_err());
        assert!(PathMatch::parse(Some("/a/{id}/{id}"), None).is_err());
        assert!(PathMatch::parse(None, Some("/a/{id}")).is_err());
        assert!(PathMatch::parse(Some("/a/../b"), None).is_err());
        assert!(PathMatch::parse(Some("/a?x=1"), None).is_err());
    }

    #[test]
    fn thousand_routes_lookup_visits_few() {
        let specs: Vec<String> = (0..1000).map(|i| format!("/svc{i}/items/{{id}}")).collect();
        let t = RouteTable::new(
            specs
                .iter()
                .enumerate()
                .map(|(i, p)| CompiledRoute {
                    methods: None,
                    path: PathMatch::parse(Some(p), None).unwrap(),
                    value: i,
                })
                .collect(),
        );
        assert_eq!(t.lookup("GET", "/svc999/items/7").unwrap().index, 999);
        assert!(t.lookup("GET", "/nope/items/7").is_none());
    }
}
