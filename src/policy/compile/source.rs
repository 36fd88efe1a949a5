//! Where a credential is read from: a header (with an optional scheme prefix), a query
//! parameter or a cookie. Shared by JWT providers and API-key sets.

use super::names::check_header_name;
use super::ConfigErrors;
use crate::policy::raw::RawTokenSource;
use crate::policy::TokenSource;

/// `from`: the default when absent; an empty list is a mistake (nothing could be found).
pub(super) fn compile_sources(
    from: Option<Vec<RawTokenSource>>,
    default: TokenSource,
    path: &str,
    what: &str,
    errors: &mut ConfigErrors,
) -> Vec<TokenSource> {
    match from {
        None => vec![default],
        Some(list) if list.is_empty() => {
            errors.push(
                format!("{path}.from"),
                format!("must name at least one {what} source"),
            );
            Vec::new()
        }
        Some(list) => list
            .into_iter()
            .enumerate()
            .filter_map(|(j, s)| compile_source(s, &format!("{path}.from[{j}]"), errors))
            .collect(),
    }
}

fn compile_source(s: RawTokenSource, path: &str, errors: &mut ConfigErrors) -> Option<TokenSource> {
    match (s.header, s.query, s.cookie) {
        (Some(h), None, None) => {
            let name = check_header_name(&h, &format!("{path}.header"), errors)?;
            let prefix = s.prefix.filter(|p| !p.is_empty());
            Some(TokenSource::Header { name, prefix })
        }
        (None, Some(q), None) if s.prefix.is_none() && !q.is_empty() => Some(TokenSource::Query(q)),
        (None, None, Some(c)) if s.prefix.is_none() && !c.is_empty() => {
            Some(TokenSource::Cookie(c))
        }
        _ => {
            errors.push(path, "set exactly one of `header` (with optional `prefix`), `query` or `cookie`, non-empty");
            None
        }
    }
}
