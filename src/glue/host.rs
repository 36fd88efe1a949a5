//! The core's host traits over proxy-wasm: clock, shared data, the downstream peer,
//! signature verification, counters; and the two raw host calls the SDK does not wrap the
//! way we need (the header map in one buffer, a local reply with a gRPC status).

use std::cell::{Cell, OnceCell};
use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use proxy_wasm::types::{LogLevel, MapType, MetricType, Status};

use super::hostcalls;
use crate::engine::{Metrics, Peer};
use crate::headermap;
use crate::host::{CasError, Clock, HostCrypto, SharedStore};
use crate::hostcrypto::{decode_verify_result, encode_verify_args};
use crate::outcome::LogAt;
use crate::ratelimit::lease::Leases;

pub(super) fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

/// The proxy-wasm level of a level the core asks for.
pub(super) fn log_level(at: LogAt) -> LogLevel {
    match at {
        LogAt::Debug => LogLevel::Debug,
        LogAt::Info => LogLevel::Info,
        LogAt::Warn => LogLevel::Warn,
    }
}

pub(super) struct HostClock;

impl Clock for HostClock {
    fn now_millis(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// The clock of one request callback: Envoy's clock read once, on first use. The phases of
/// a callback run within microseconds of each other, and each read is a host call (the
/// authentication, the lockout and the limits each ask for the time).
#[derive(Default)]
pub(super) struct CallClock {
    now_ms: OnceCell<u64>,
}

impl Clock for CallClock {
    fn now_millis(&self) -> u64 {
        *self.now_ms.get_or_init(|| HostClock.now_millis())
    }
}

pub(super) struct HostStore;

/// The downstream connection of one request through Envoy's properties: each lookup is a
/// host call of a few microseconds, made only when the engine asks and at most once per
/// request (several limits or certificate sets may ask).
#[derive(Default)]
pub(super) struct HostPeer {
    address: OnceCell<Option<String>>,
    uri_san: OnceCell<Option<String>>,
    subject: OnceCell<Option<String>>,
}

impl HostPeer {
    fn property(cell: &OnceCell<Option<String>>, path: &[&str]) -> Option<String> {
        cell.get_or_init(|| {
            hostcalls::get_property(path.to_vec())
                .ok()
                .flatten()
                .and_then(|v| String::from_utf8(v).ok())
                .filter(|v| !v.is_empty())
        })
        .clone()
    }
}

impl Peer for HostPeer {
    fn address(&self) -> Option<String> {
        Self::property(&self.address, &["source", "address"])
    }
    fn uri_san(&self) -> Option<String> {
        Self::property(&self.uri_san, &["connection", "uri_san_peer_certificate"])
    }
    fn subject(&self) -> Option<String> {
        Self::property(&self.subject, &["connection", "subject_peer_certificate"])
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;

    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> Status;
}

/// A local reply with an explicit gRPC status, which the SDK's `send_http_response` always
/// leaves unset (-1); its `send_grpc_response` sets it but takes the message as the body
/// (and panics on a host error). Envoy uses the status instead of its HTTP→gRPC mapping
/// when it sees the request as gRPC and the headers do not already carry `grpc-status`.
pub(super) fn send_local_response(
    status: u32,
    headers: &[(&str, &str)],
    body: &[u8],
    grpc_status: i32,
) {
    let map = headermap::serialize_text(headers);
    // SAFETY: every pointer/length pair describes a live buffer for the whole call; the
    // host copies what it needs before returning.
    unsafe {
        let _ = proxy_send_local_response(
            status,
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            grpc_status,
        );
    }
}

/// The request headers as Envoy serializes them, parsed in place by `headermap` (the SDK's
/// `get_map_bytes` allocates twice per header and panics on an unexpected status).
pub(super) fn request_header_map() -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a buffer it allocated through the SDK's exported
    // `proxy_on_memory_allocate` (a `Vec<u8>` of exactly `size` bytes) and hands over its
    // ownership, which is what `get_map_bytes` relies on too.
    hostcalls::count();
    unsafe {
        match proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) {
            Status::Ok if !data.is_null() => Vec::from_raw_parts(data, size, size),
            _ => Vec::new(),
        }
    }
}

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(v), Some(cas))) => Some((v, cas)),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(CasError::Mismatch),
            Err(_) => Err(CasError::Failed),
        }
    }

    fn leases(&self) -> Option<&Leases> {
        Some(VM_LEASES.with(|l| *l))
    }
}

thread_local! {
    /// This VM's token leases: every Envoy worker runs its own VM, so these are the
    /// worker's (`ratelimit::lease`). Leaked once per VM, so the store can lend them out.
    static VM_LEASES: &'static Leases = Box::leak(Box::default());
}

/// The host crypto of Envoy: BoringSSL through the `verify_signature` foreign function; remembers when the
/// host lacks it so the pure-Rust fallback does not pay for a failing call every time.
pub(super) struct ForeignHostCrypto {
    pub(super) available: Cell<bool>,
}

impl HostCrypto for ForeignHostCrypto {
    fn verify_signature(
        &self,
        hash: &str,
        spki_der: &[u8],
        signature: &[u8],
        message: &[u8],
    ) -> Option<bool> {
        if !self.available.get() {
            return None;
        }
        let args = encode_verify_args(hash, spki_der, signature, message);
        match hostcalls::call_foreign_function("verify_signature", Some(&args)) {
            Ok(Some(result)) => Some(decode_verify_result(&result)),
            Ok(None) => Some(false),
            Err(Status::NotFound) => {
                self.available.set(false);
                log(
                    LogLevel::Warn,
                    "apiguard: host has no verify_signature; RS* verified in wasm, ES* refused",
                );
                None
            }
            // BadArgument: BoringSSL could not use the key; a refusal, not a reason to retry.
            Err(_) => Some(false),
        }
    }
}

/// Envoy counters, defined on first use.
#[derive(Default)]
pub(super) struct HostMetrics {
    ids: HashMap<String, u32, foldhash::fast::FixedState>,
}

impl Metrics for HostMetrics {
    fn incr(&mut self, name: &str) {
        let id = match self.ids.get(name) {
            Some(id) => *id,
            None => match hostcalls::define_metric(MetricType::Counter, name) {
                Ok(id) => {
                    self.ids.insert(name.to_string(), id);
                    id
                }
                Err(_) => return,
            },
        };
        let _ = hostcalls::increment_metric(id, 1);
    }
}
