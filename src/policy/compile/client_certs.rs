//! Client-certificate sets: the URI SANs, URI SAN prefixes and subjects a verified peer
//! certificate (mTLS, checked by Envoy) may present.

use std::collections::HashSet;

use serde_json::Value;

use super::ConfigErrors;
use crate::policy::raw::RawClientCertSet;
use crate::policy::CertSet;

/// `client_certs`: each set parsed strictly, its name unique among all principal sources.
pub(super) fn compile_all(
    items: Vec<Value>,
    names: &mut HashSet<String>,
    errors: &mut ConfigErrors,
) -> Vec<CertSet> {
    let parsed =
        errors
            .parse_named::<RawClientCertSet>(items, "client_certs", "provider", names, |c| &c.name);
    let mut sets = Vec::new();
    for (path, rc) in parsed {
        if rc.uri_sans.is_empty() && rc.uri_san_prefixes.is_empty() && rc.subjects.is_empty() {
            errors.push(
                path,
                "list at least one of `uri_sans`, `uri_san_prefixes`, `subjects`",
            );
            continue;
        }
        sets.push(CertSet {
            name: rc.name,
            uri_sans: rc.uri_sans,
            uri_san_prefixes: rc.uri_san_prefixes,
            subjects: rc.subjects,
        });
    }
    sets
}
