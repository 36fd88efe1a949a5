//! The messages of Envoy's rate limit service (`envoy.service.ratelimit.v3`, rls.proto),
//! only the fields apiguard reads or writes, declared by hand with prost's derive (no
//! build script, no protoc). Field numbers follow rls.proto and
//! `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`; unknown fields a server
//! sends (response headers, quotas, dynamic metadata) are skipped by the decoder.
//! `rls/` (the test and demo server) compiles this same file, and the golden-byte tests
//! below pin the wire form independently of both.

use prost::alloc::string::String;
use prost::alloc::vec::Vec;

/// gRPC service and method, for `dispatch_grpc_call`.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RateLimitRequest {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    /// 0 means 1 (the protocol's default).
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
    /// Per-descriptor hits (`google.protobuf.UInt64Value`, field 3 of
    /// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`): when set it replaces
    /// the request's `hits_addend` for this descriptor, and an explicit 0 asks the service
    /// to check without counting (envoyproxy/ratelimit since PR #802; apiguard-rls).
    #[prost(message, optional, tag = "3")]
    pub hits_addend: Option<u64>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Entry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RateLimitResponse {
    #[prost(enumeration = "Code", tag = "1")]
    pub overall_code: i32,
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct DescriptorStatus {
    #[prost(enumeration = "Code", tag = "1")]
    pub code: i32,
    #[prost(message, optional, tag = "2")]
    pub current_limit: Option<RateLimit>,
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<Duration>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RateLimit {
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    #[prost(enumeration = "Unit", tag = "2")]
    pub unit: i32,
}

/// `google.protobuf.Duration`.
#[derive(Clone, Copy, PartialEq, Eq, ::prost::Message)]
pub struct Duration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
#[repr(i32)]
pub enum Code {
    Unknown = 0,
    Ok = 1,
    OverLimit = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
#[repr(i32)]
pub enum Unit {
    Unknown = 0,
    Second = 1,
    Minute = 2,
    Hour = 3,
    Day = 4,
    Month = 5,
    Year = 6,
    Week = 7,
}

impl Unit {
    /// The unit's length in seconds (a month is 30 days, a year 365, as envoyproxy/ratelimit
    /// counts them); `None` for `UNKNOWN` or a value this build does not know.
    pub fn seconds(unit: i32) -> Option<u64> {
        match Unit::try_from(unit).ok()? {
            Unit::Unknown => None,
            Unit::Second => Some(1),
            Unit::Minute => Some(60),
            Unit::Hour => Some(3600),
            Unit::Day => Some(86_400),
            Unit::Week => Some(7 * 86_400),
            Unit::Month => Some(30 * 86_400),
            Unit::Year => Some(365 * 86_400),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Bytes written by hand from rls.proto's field numbers and wire types.
    #[test]
    fn request_wire_form() {
        let req = RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "k".into(),
                    value: "v".into(),
                }],
                hits_addend: None,
            }],
            hits_addend: 3,
        };
        let want = [
            0x0a, 1, b'd', // domain: field 1, length-delimited
            0x12, 8, // descriptors: field 2
            0x0a, 6, // entries: field 1
            0x0a, 1, b'k', 0x12, 1, b'v', // key 1, value 2
            0x18, 3, // hits_addend: field 3, varint
        ];
        assert_eq!(req.encode_to_vec(), want);
    }

    /// A per-descriptor `hits_addend` is a `UInt64Value` message at field 3: an explicit 0
    /// is an empty message (present, so "check only"), absent is no field at all.
    #[test]
    fn per_descriptor_hits_addend_wire_form() {
        let d = |hits| RateLimitDescriptor {
            entries: vec![],
            hits_addend: hits,
        };
        assert_eq!(d(None).encode_to_vec(), Vec::<u8>::new());
        assert_eq!(d(Some(0)).encode_to_vec(), [0x1a, 0]);
        assert_eq!(d(Some(1)).encode_to_vec(), [0x1a, 2, 0x08, 1]);
        let back = RateLimitDescriptor::decode(&[0x1a, 0][..]).unwrap();
        assert_eq!(back.hits_addend, Some(0));
    }

    #[test]
    fn response_wire_form_and_unknown_fields() {
        let bytes = [
            0x08, 2, // overall_code = OVER_LIMIT
            0x12, 17, // statuses[0]
            0x08, 2, // code
            0x12, 4, 0x08, 100, 0x10, 2, // current_limit {requests_per_unit 100, unit MINUTE}
            0x18, 0, // limit_remaining 0
            0x22, 2, 0x08, 42, // duration_until_reset {seconds 42}
            0x2a, 1, 0x00, // field 5 (quota), unknown here: skipped
            0x1a, 0, // response_headers_to_add (field 3): skipped
        ];
        let resp = RateLimitResponse::decode(&bytes[..]).unwrap();
        assert_eq!(resp.overall_code, Code::OverLimit as i32);
        let s = &resp.statuses[0];
        assert_eq!(s.current_limit.as_ref().unwrap().requests_per_unit, 100);
        assert_eq!(
            Unit::seconds(s.current_limit.as_ref().unwrap().unit),
            Some(60)
        );
        assert_eq!(s.duration_until_reset.unwrap().seconds, 42);
    }
}
