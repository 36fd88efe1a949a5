//! Denials: the status, the headers standards require, and an RFC 9457 problem+json body.
//!
//! Nothing here ever includes a credential: details are fixed strings chosen by apiguard.

use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub status: u16,
    /// Stable snake_case code: problem type suffix, stat name suffix, log field.
    pub reason: &'static str,
    pub detail: String,
    pub www_authenticate: Option<String>,
    pub retry_after_secs: Option<u64>,
    /// Extra response headers (e.g. `RateLimit`).
    pub headers: Vec<(String, String)>,
    /// Extra problem members (e.g. validation errors).
    pub extensions: Vec<(&'static str, Value)>,
}

impl Denial {
    pub fn new(status: u16, reason: &'static str, detail: impl Into<String>) -> Self {
        Denial {
            status,
            reason,
            detail: detail.into(),
            www_authenticate: None,
            retry_after_secs: None,
            headers: Vec::new(),
            extensions: Vec::new(),
        }
    }

    /// 401 without a credential: RFC 6750 §3.1 says no `error` attribute then.
    pub fn missing_credentials(realm: &str) -> Self {
        let mut d = Denial::new(401, "missing_credentials", "a bearer token is required");
        d.www_authenticate = Some(format!("Bearer realm=\"{realm}\""));
        d
    }

    /// 401 for a token that failed verification; `reason` is the JWT error code.
    pub fn invalid_token(realm: &str, reason: &'static str, description: &str) -> Self {
        let mut d = Denial::new(401, reason, description);
        d.www_authenticate = Some(format!(
            "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
            quote_safe(description)
        ));
        d
    }

    pub fn invalid_request(realm: &str, description: &str) -> Self {
        let mut d = Denial::new(400, "invalid_request", description);
        d.www_authenticate = Some(format!(
            "Bearer realm=\"{realm}\", error=\"invalid_request\", error_description=\"{}\"",
            quote_safe(description)
        ));
        d
    }

    pub fn insufficient_scope(realm: &str, scope: &str) -> Self {
        let mut d = Denial::new(
            403,
            "insufficient_scope",
            "the token lacks a required scope",
        );
        d.www_authenticate = Some(format!(
            "Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{}\"",
            quote_safe(scope)
        ));
        d.extensions
            .push(("required_scope", Value::String(scope.to_string())));
        d
    }

    pub fn title(&self) -> &'static str {
        match self.status {
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            413 => "Content Too Large",
            414 => "URI Too Long",
            415 => "Unsupported Media Type",
            431 => "Request Header Fields Too Large",
            429 => "Too Many Requests",
            503 => "Service Unavailable",
            _ => "Request Denied",
        }
    }

    /// The `problem+json` body. `request_id` lets a client quote the failure to support.
    pub fn body(&self, request_id: Option<&str>) -> String {
        let mut body = json!({
            "type": format!("urn:apiguard:problem:{}", self.reason),
            "title": self.title(),
            "status": self.status,
            "detail": self.detail,
            "reason": self.reason,
        });
        if let Value::Object(map) = &mut body {
            // Only an id that looks like one is reflected: never echo arbitrary client input.
            let id = request_id.filter(|id| {
                !id.is_empty()
                    && id.len() <= 128
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
            });
            if request_id.is_some() {
                let value = id.map_or(Value::Null, |id| Value::String(id.to_string()));
                map.insert("request_id".into(), value);
            }
            for (k, v) in &self.extensions {
                map.insert((*k).to_string(), v.clone());
            }
        }
        body.to_string()
    }

    /// Response headers, `content-type` included.
    pub fn response_headers(&self) -> Vec<(String, String)> {
        let mut h = vec![
            (
                "content-type".to_string(),
                "application/problem+json".to_string(),
            ),
            ("cache-control".to_string(), "no-store".to_string()),
        ];
        if let Some(w) = &self.www_authenticate {
            h.push(("www-authenticate".into(), w.clone()));
        }
        if let Some(s) = self.retry_after_secs {
            h.push(("retry-after".into(), s.to_string()));
        }
        h.extend(self.headers.iter().cloned());
        h
    }
}

/// Keeps a string legal inside an RFC 7230 quoted-string without escapes.
fn quote_safe(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '"' && *c != '\\' && (' '..='~').contains(c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_credentials_has_no_error_attribute() {
        let d = Denial::missing_credentials("apiguard");
        assert_eq!(
            d.www_authenticate.as_deref(),
            Some("Bearer realm=\"apiguard\"")
        );
        let body: Value = serde_json::from_str(&d.body(Some("r1"))).unwrap();
        assert_eq!(body["status"], 401);
        assert_eq!(body["type"], "urn:apiguard:problem:missing_credentials");
        assert_eq!(body["request_id"], "r1");
    }

    #[test]
    fn only_sane_request_ids_are_reflected() {
        let d = Denial::missing_credentials("r");
        assert!(d
            .body(Some(&"a".repeat(200)))
            .contains("\"request_id\":null"));
        assert!(!d.body(Some("<script>")).contains("script"));
        assert!(d.body(Some("5f0c-11aa")).contains("5f0c-11aa"));
    }

    #[test]
    fn quoted_values_cannot_break_the_header() {
        let d = Denial::insufficient_scope("r", "a\"b\\c\r\nd");
        assert_eq!(
            d.www_authenticate.as_deref(),
            Some("Bearer realm=\"r\", error=\"insufficient_scope\", scope=\"abcd\"")
        );
    }

    #[test]
    fn headers_include_content_type_and_retry_after() {
        let mut d = Denial::new(503, "jwks_unavailable", "keys are loading");
        d.retry_after_secs = Some(5);
        let h = d.response_headers();
        assert!(h.contains(&("content-type".into(), "application/problem+json".into())));
        assert!(h.contains(&("retry-after".into(), "5".into())));
    }
}
