//! What the pure core needs from its host (Envoy through proxy-wasm, or a test double).
//!
//! Only `glue` implements these traits against the proxy-wasm SDK; every other module takes
//! them as parameters, so the whole decision pipeline runs under `cargo test`.

/// Wall-clock time as the host sees it. Proxy-wasm code must not use `std::time`.
pub trait Clock {
    fn now_millis(&self) -> u64;
    fn now_secs(&self) -> u64 {
        self.now_millis() / 1000
    }
}

/// Why a compare-and-swap write did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasError {
    /// Someone else wrote the key since we read it: re-read and retry.
    Mismatch,
    /// The host refused the write for another reason.
    Failed,
}

/// The process-wide key/value store shared by every worker VM (proxy-wasm shared data).
///
/// Semantics follow Envoy: every successful write gets a fresh CAS token; a write with
/// `Some(cas)` fails with `Mismatch` when the stored token differs; a write with `None`
/// overwrites unconditionally (so create-if-absent is not atomic).
pub trait SharedStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasError>;

    /// This worker's token leases (`ratelimit::lease`); `None`: every take is a CAS.
    fn leases(&self) -> Option<&crate::ratelimit::lease::Leases> {
        None
    }
}

/// The host's signature verification: Envoy's `verify_signature` foreign function
/// (BoringSSL in the host; wire format in `crate::hostcrypto`).
pub trait HostCrypto {
    /// Verifies `signature` over `message` with a SubjectPublicKeyInfo DER key and a hash
    /// name (`sha256`, `sha384`, `sha512`). RSA keys verify PKCS#1 v1.5, EC keys verify a
    /// DER-encoded ECDSA signature. `None` means the host cannot answer (no such function),
    /// and the caller falls back to pure-Rust verification.
    fn verify_signature(
        &self,
        hash: &str,
        spki_der: &[u8],
        signature: &[u8],
        message: &[u8],
    ) -> Option<bool>;
}

/// A host without foreign functions: always falls back to pure Rust.
pub struct NoHostCrypto;

impl HostCrypto for NoHostCrypto {
    fn verify_signature(&self, _: &str, _: &[u8], _: &[u8], _: &[u8]) -> Option<bool> {
        None
    }
}

/// What the host knows about the downstream connection. Each lookup is a host call, so the
/// engine asks only when a route needs it (client-certificate principals, `client_ip` keys).
pub trait Peer {
    /// The connection's remote address (`ip:port`).
    fn address(&self) -> Option<String>;
    /// First URI SAN of the client certificate Envoy verified (mTLS).
    fn uri_san(&self) -> Option<String>;
    /// Subject of the client certificate Envoy verified.
    fn subject(&self) -> Option<String>;
}

/// A peer whose facts are known up front (tests, benchmarks, fuzzing).
#[derive(Debug, Default, Clone, Copy)]
pub struct KnownPeer<'a> {
    pub address: Option<&'a str>,
    pub uri_san: Option<&'a str>,
    pub subject: Option<&'a str>,
}

impl Peer for KnownPeer<'_> {
    fn address(&self) -> Option<String> {
        self.address.map(str::to_string)
    }
    fn uri_san(&self) -> Option<String> {
        self.uri_san.map(str::to_string)
    }
    fn subject(&self) -> Option<String> {
        self.subject.map(str::to_string)
    }
}

/// Counters the glue maps to Envoy stats.
pub trait Metrics {
    fn incr(&mut self, name: &str);
}

#[cfg(test)]
pub mod fake {
    //! In-memory host doubles for unit tests.
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    /// Metrics that remember every counter bumped, in order.
    #[derive(Default)]
    pub struct Counted(pub Vec<String>);

    impl Metrics for Counted {
        fn incr(&mut self, name: &str) {
            self.0.push(name.to_string());
        }
    }

    #[derive(Default)]
    pub struct FakeClock {
        pub millis: Cell<u64>,
    }

    impl FakeClock {
        pub fn at_secs(secs: u64) -> Self {
            FakeClock {
                millis: Cell::new(secs * 1000),
            }
        }
        pub fn advance_millis(&self, ms: u64) {
            self.millis.set(self.millis.get() + ms);
        }
    }

    impl Clock for FakeClock {
        fn now_millis(&self) -> u64 {
            self.millis.get()
        }
    }

    #[derive(Default)]
    pub struct FakeStore {
        pub map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: Cell<u32>,
    }

    impl SharedStore for FakeStore {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.map.borrow().get(key).cloned()
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasError> {
            let mut map = self.map.borrow_mut();
            if let (Some(want), Some((_, have))) = (cas, map.get(key)) {
                if want != 0 && want != *have {
                    return Err(CasError::Mismatch);
                }
            }
            self.next_cas.set(self.next_cas.get() + 1);
            map.insert(key.to_string(), (value.to_vec(), self.next_cas.get()));
            Ok(())
        }
    }
}
