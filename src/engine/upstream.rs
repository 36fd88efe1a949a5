//! What an allowed request looks like upstream: the claims the provider forwards as
//! headers, and no credential apiguard did not accept.

use serde_json::Value;

use crate::authn::Principal;
use crate::authz::claim_at;
use crate::credentials;
use crate::hygiene;
use crate::jwt::Verified;
use crate::policy::{Policy, Provider, TokenSource};

use super::{Mutations, RequestCtx};

/// Adds an authenticated request's upstream changes to `m` (which already removes the
/// headers apiguard owns).
pub fn for_principal(ctx: &RequestCtx, principal: &Principal, m: &mut Mutations) {
    let policy = ctx.policy;
    if let Principal::Jwt {
        provider, verified, ..
    } = principal
    {
        if let Some(provider) = policy.providers.get(*provider) {
            add_claim_headers(provider, verified, m);
        }
    }
    strip_credentials(ctx, principal.forwarded_source(policy), m);
}

fn add_claim_headers(provider: &Provider, verified: &Verified, m: &mut Mutations) {
    for ch in &provider.claims_to_headers {
        if let Some(value) = claim_at(&verified.claims, &ch.claim).and_then(header_value) {
            m.set_headers.push((ch.header.clone(), value));
        }
    }
    if let Some(h) = &provider.forward_payload_header {
        m.set_headers
            .push((h.clone(), verified.payload_b64.clone()));
    }
}

/// A claim as a header value: strings as-is, arrays joined with `,`, other JSON compact.
/// Anything with control characters is dropped rather than risk header injection.
fn header_value(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| i.to_string())
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Null => return None,
        other => other.to_string(),
    };
    (!s.chars().any(char::is_control)).then_some(s)
}

/// Removes every credential the policy reads (any provider's or key set's source, not only
/// the route's) except `kept`, the one that authenticated when its source forwards it. A
/// forged token beside a valid API key, or an expired header token beside a valid cookie,
/// never reaches the upstream, whatever `forward` says: the upstream sees only what
/// apiguard accepted. Header credentials go in every spelling a CGI/WSGI upstream reads as
/// the same header. Only credentials present in the request cost a host call.
fn strip_credentials(ctx: &RequestCtx, kept: Option<&TokenSource>, m: &mut Mutations) {
    let policy: &Policy = ctx.policy;
    let headers = ctx.req.headers;
    let sources = policy
        .providers
        .iter()
        .flat_map(|p| p.sources.iter())
        .chain(policy.api_key_sets.iter().flat_map(|s| s.sources.iter()));
    let kept_header = match kept {
        Some(TokenSource::Header { name, .. }) => Some(name.as_str()),
        _ => None,
    };
    let (mut params, mut cookies): (Vec<&str>, Vec<&str>) = (Vec::new(), Vec::new());
    for source in sources {
        match source {
            TokenSource::Header { name, .. } => {
                for (h, v) in headers {
                    let strip = kept_header != Some(*h)
                        && hygiene::same_header(h, name)
                        && credentials::is_credential_value(source, v)
                        && !m.remove_headers.iter().any(|r| r == h);
                    if strip {
                        m.remove_headers.push((*h).to_string());
                    }
                }
            }
            TokenSource::Query(p) if kept != Some(source) => params.push(p),
            TokenSource::Cookie(c) if !matches!(kept, Some(TokenSource::Cookie(k)) if k == c) => {
                cookies.push(c)
            }
            _ => {}
        }
    }
    if let Some(new_path) = credentials::path_without_query_params(ctx.path, ctx.query, &params) {
        m.new_path = Some(new_path);
    }
    match credentials::cookie_header_without(headers, &cookies) {
        credentials::CookieEdit::Unchanged => {}
        credentials::CookieEdit::Set(rest) => m.set_headers.push(("cookie".into(), rest)),
        credentials::CookieEdit::Remove => m.remove_headers.push("cookie".into()),
    }
}
