//! Requests that differ from a route only by letter case or by a trailing slash.
//!
//! Matching stays literal (`/ADMIN` is not `/admin`), but many upstream frameworks route
//! `/ADMIN`, `/admin/` or an HTTP/2 `:method delete` to the same handler as the route. With
//! `unmatched: allow` such a spelling would reach that handler without any check, so the
//! engine looks for the route it resembles and refuses the request instead of guessing.

use super::{prefix_matches, PathMatch, RouteTable, Segment};

/// Methods defined by RFC 9110 (and PATCH, RFC 5789). A lower-case spelling of one of these
/// (or of a method the policy names) is a different method to RFC 9110 but the same one to
/// many servers.
pub const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Whether `method` is not upper case but folds to a method in `known` (upper case).
pub fn is_noncanonical_method<'a>(method: &str, mut known: impl Iterator<Item = &'a str>) -> bool {
    method.bytes().any(|b| b.is_ascii_lowercase()) && known.any(|k| k.eq_ignore_ascii_case(method))
}

impl<T> RouteTable<T> {
    /// The first route (policy order) that would match if the path were compared ignoring
    /// ASCII case and one trailing slash. Call it only after `lookup` found nothing: it
    /// visits every route, a cost paid on the unmatched path alone.
    pub fn lookalike(&self, method: &str, path: &str) -> Option<&T> {
        let toggled = toggle_trailing_slash(path);
        self.routes
            .iter()
            .filter(|r| {
                r.methods
                    .as_ref()
                    .is_none_or(|ms| ms.iter().any(|m| m == method))
            })
            .find(|r| {
                r.path.matches_folded(path)
                    || toggled.as_deref().is_some_and(|p| r.path.matches_folded(p))
            })
            .map(|r| &r.value)
    }

    /// Whether a route that matches `path` lists `method` in its `match.methods` (as
    /// opposed to matching every method). Used for `OPTIONS`, see `crate::cors`.
    pub fn names_method_for(&self, method: &str, path: &str) -> bool {
        self.routes.iter().any(|r| {
            r.methods
                .as_ref()
                .is_some_and(|ms| ms.iter().any(|m| m == method))
                && r.path.matches(path).is_some()
        })
    }

    /// Every method some route names (upper case).
    pub fn route_methods(&self) -> impl Iterator<Item = &str> {
        self.routes
            .iter()
            .filter_map(|r| r.methods.as_ref())
            .flatten()
            .map(String::as_str)
    }
}

impl PathMatch {
    /// `matches`, with literal text compared ignoring ASCII case.
    fn matches_folded(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => p.eq_ignore_ascii_case(path),
            PathMatch::Prefix(p) => {
                prefix_matches(&p.to_ascii_lowercase(), &path.to_ascii_lowercase())
            }
            PathMatch::Template(segments) => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                let mut parts = rest.split('/');
                let all = segments.iter().all(|seg| match (seg, parts.next()) {
                    (Segment::Literal(l), Some(part)) => l.eq_ignore_ascii_case(part),
                    (Segment::Param(_), Some(part)) => !part.is_empty(),
                    (_, None) => false,
                });
                all && parts.next().is_none()
            }
            PathMatch::GrpcService(s) => crate::grpc::is_service_call_folded(s, path),
        }
    }
}

/// `/a/` → `/a`, `/a` → `/a/`; the root has no other spelling.
fn toggle_trailing_slash(path: &str) -> Option<String> {
    if path == "/" {
        return None;
    }
    Some(match path.strip_suffix('/') {
        Some(p) => p.to_string(),
        None => format!("{path}/"),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::table;
    use super::*;

    #[test]
    fn case_and_trailing_slash_variants_find_the_route() {
        let t = table(&[
            (None, Some("/admin"), None),
            (Some("/items/{id}"), None, Some(&["GET", "DELETE"])),
            (Some("/tenants/{t}/data"), None, None),
            (Some("/Reports"), None, None),
        ]);
        for (m, p, want) in [
            ("GET", "/ADMIN", 0),
            ("GET", "/Admin/users", 0),
            ("GET", "/items/42/", 1),
            ("DELETE", "/Items/42", 1),
            ("DELETE", "/ITEMS/42/", 1),
            ("GET", "/tenants/other/data/", 2),
            ("GET", "/reports", 3),
            ("GET", "/reports/", 3),
        ] {
            assert_eq!(t.lookalike(m, p), Some(&want), "{m} {p}");
        }
    }

    #[test]
    fn different_requests_are_not_lookalikes() {
        let t = table(&[
            (None, Some("/admin"), None),
            (Some("/items/{id}"), None, Some(&["GET"])),
        ]);
        for (m, p) in [
            ("GET", "/adminx"),
            ("GET", "/administrator"),
            ("POST", "/Items/42"), // no route for POST /items/{id} either
            ("GET", "/items/"),
            ("GET", "/items//"),
            ("GET", "/items/42/x"),
            ("GET", "/"),
        ] {
            assert_eq!(t.lookalike(m, p), None, "{m} {p}");
        }
    }

    #[test]
    fn noncanonical_methods() {
        let known = || STANDARD_METHODS.iter().copied().chain(["PURGE"]);
        assert!(is_noncanonical_method("delete", known()));
        assert!(is_noncanonical_method("Post", known()));
        assert!(is_noncanonical_method("purge", known()));
        assert!(!is_noncanonical_method("DELETE", known()));
        assert!(!is_noncanonical_method("custom", known()));
        assert!(!is_noncanonical_method("PROPFIND", known()));
    }
}
