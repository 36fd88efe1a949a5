//! The gRPC rich error model for denials: `grpc-status-details-bin` holds a
//! `google.rpc.Status` whose `details` carry one `google.rpc.ErrorInfo` (reason, domain,
//! metadata), so a client library (`grpc_status.rpc_status.from_call` in Python,
//! `status.FromError(...).Details()` in Go) reads the machine-readable reason without
//! parsing `grpc-message`.
//!
//! The messages are declared by hand with prost's derive (no build script, no protoc),
//! only the fields apiguard writes; field numbers follow google/rpc/status.proto,
//! google/protobuf/any.proto and google/rpc/error_details.proto.

use std::collections::BTreeMap;

use base64::Engine as _;
use prost::Message as _;

use crate::problem::Denial;

pub const ERROR_INFO_TYPE_URL: &str = "type.googleapis.com/google.rpc.ErrorInfo";
/// `ErrorInfo.domain`: who produced the error.
pub const DOMAIN: &str = "apiguard";

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Status {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<Any>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ErrorInfo {
    #[prost(string, tag = "1")]
    pub reason: String,
    #[prost(string, tag = "2")]
    pub domain: String,
    #[prost(btree_map = "string, string", tag = "3")]
    pub metadata: BTreeMap<String, String>,
}

/// `ErrorInfo` of a denial: the reason in UPPER_SNAKE_CASE (AIP-193), and as metadata only
/// what the problem body already says (required scope, limit name, retry delay, where the
/// first validation error is): never request data.
pub fn error_info(d: &Denial) -> ErrorInfo {
    let mut metadata = BTreeMap::new();
    for (key, value) in &d.extensions {
        match (*key, value) {
            ("errors", serde_json::Value::Array(errors)) => {
                if let Some(first) = errors.first() {
                    for field in ["pointer", "rule"] {
                        if let Some(v) = first.get(field).and_then(|v| v.as_str()) {
                            metadata.insert(field.to_string(), v.to_string());
                        }
                    }
                }
            }
            (k, serde_json::Value::String(v)) => {
                metadata.insert(k.to_string(), v.clone());
            }
            _ => {}
        }
    }
    if let Some(s) = d.retry_after_secs {
        metadata.insert("retry_after_seconds".to_string(), s.to_string());
    }
    ErrorInfo {
        reason: d.reason.to_ascii_uppercase(),
        domain: DOMAIN.to_string(),
        metadata,
    }
}

/// The `grpc-status-details-bin` value: base64 without padding, as the gRPC HTTP/2 spec
/// asks senders of binary metadata to emit.
pub fn status_details_bin(d: &Denial, code: i32, message: &str) -> String {
    let status = Status {
        code,
        message: message.to_string(),
        details: vec![Any {
            type_url: ERROR_INFO_TYPE_URL.to_string(),
            value: error_info(d).encode_to_vec(),
        }],
    };
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(status.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(bin: &str) -> (Status, ErrorInfo) {
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(bin)
            .unwrap();
        let status = Status::decode(bytes.as_slice()).unwrap();
        let info = ErrorInfo::decode(status.details[0].value.as_slice()).unwrap();
        (status, info)
    }

    #[test]
    fn rate_limit_details_round_trip() {
        let mut d = Denial::new(429, "rate_limited", "rate limit `calls` exceeded");
        d.retry_after_secs = Some(2);
        d.extensions.push(("limit", json!("calls")));
        let (status, info) = decode(&status_details_bin(&d, 8, "m"));
        assert_eq!((status.code, status.message.as_str()), (8, "m"));
        assert_eq!(status.details[0].type_url, ERROR_INFO_TYPE_URL);
        assert_eq!(info.reason, "RATE_LIMITED");
        assert_eq!(info.domain, "apiguard");
        assert_eq!(info.metadata["limit"], "calls");
        assert_eq!(info.metadata["retry_after_seconds"], "2");
    }

    #[test]
    fn validation_details_name_the_first_error_only() {
        let mut d = Denial::new(400, "invalid_header", "x");
        d.extensions.push((
            "errors",
            json!([{"pointer": "header/x-tenant", "rule": "required", "message": "m"},
                   {"pointer": "header/y", "rule": "pattern"}]),
        ));
        let info = error_info(&d);
        assert_eq!(info.reason, "INVALID_HEADER");
        assert_eq!(info.metadata.len(), 2);
        assert_eq!(info.metadata["pointer"], "header/x-tenant");
        assert_eq!(info.metadata["rule"], "required");
    }

    #[test]
    fn wire_form_is_pinned() {
        // Status{code: 7, details: [Any{type_url, value: ErrorInfo{reason: "X", domain}}]},
        // bytes written out from the .proto field numbers and wire types.
        let d = Denial::new(403, "x", "d");
        let bin = status_details_bin(&d, 7, "");
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(bin)
            .unwrap();
        let info: &[u8] = b"\x0a\x01X\x12\x08apiguard";
        let mut any = vec![0x0a, ERROR_INFO_TYPE_URL.len() as u8];
        any.extend_from_slice(ERROR_INFO_TYPE_URL.as_bytes());
        any.extend_from_slice(&[0x12, info.len() as u8]);
        any.extend_from_slice(info);
        let mut want = vec![0x08, 0x07, 0x1a, any.len() as u8];
        want.extend_from_slice(&any);
        assert_eq!(bytes, want);
    }
}
