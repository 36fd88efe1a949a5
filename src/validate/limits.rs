//! Policy-wide request limits, checked before routing so oversized requests cost nothing.
//!
//! Statuses follow the standards rather than a blanket 400: 414 URI Too Long
//! (RFC 9110 §15.5.15) and 431 Request Header Fields Too Large (RFC 6585 §5).

use super::raw::RawLimits;
use super::text::{clip, MAX_ECHO_CHARS};
use super::{ConfigErrors, Failure};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_url_bytes: Option<u64>,
    pub max_headers: Option<u64>,
    pub max_header_bytes: Option<u64>,
}

impl Limits {
    /// `path` is the block's JSON path (`limits`); zero limits are mistakes.
    pub fn compile(raw: RawLimits, path: &str) -> Result<Limits, ConfigErrors> {
        let mut errors = ConfigErrors::new();
        for (field, value) in [
            ("max_url_bytes", raw.max_url_bytes),
            ("max_headers", raw.max_headers),
            ("max_header_bytes", raw.max_header_bytes),
        ] {
            if value == Some(0) {
                errors.push(format!("{path}.{field}"), "must be positive");
            }
        }
        errors.into_result(Limits {
            max_url_bytes: raw.max_url_bytes,
            max_headers: raw.max_headers,
            max_header_bytes: raw.max_header_bytes,
        })
    }

    /// `url` is `:path` with its query; `headers` all request headers (pseudo-headers too;
    /// they are not counted by `max_headers` but each is held to `max_header_bytes`).
    pub fn check(&self, url: &str, headers: &[(&str, &str)]) -> Result<(), Failure> {
        if let Some(max) = self.max_url_bytes {
            if url.len() as u64 > max {
                return Err(Failure::one(
                    414,
                    "url_too_long",
                    "url",
                    "maxUrlBytes",
                    &format!("must be at most {max} bytes"),
                ));
            }
        }
        if let Some(max) = self.max_headers {
            let count = headers.iter().filter(|(n, _)| !n.starts_with(':')).count();
            if count as u64 > max {
                return Err(Failure::one(
                    431,
                    "too_many_headers",
                    "headers",
                    "maxHeaders",
                    &format!("must be at most {max} headers"),
                ));
            }
        }
        if let Some(max) = self.max_header_bytes {
            let big = headers
                .iter()
                .find(|(n, v)| (n.len() + v.len()) as u64 > max);
            if let Some((name, _)) = big {
                return Err(Failure::one(
                    431,
                    "header_too_large",
                    &format!("header/{}", clip(name, MAX_ECHO_CHARS)),
                    "maxHeaderBytes",
                    &format!("name and value must be at most {max} bytes"),
                ));
            }
        }
        Ok(())
    }
}
