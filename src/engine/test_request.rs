//! One way for tests to send a request through the engine, instead of a `RequestHead` and
//! a `Host` literal in every test: `TestRequest::get("/x").header("a", "b").send(&mut e, &mut m)`.
//!
//! Defaults: no headers, no request id, a peer that knows nothing, no body (the headers end
//! the stream), a fake clock at `DEFAULT_NOW_SECS`, a fresh empty store, no host crypto.

use super::{Decision, Engine, Host, RequestHead};
use crate::host::fake::{FakeClock, FakeStore};
use crate::host::{Clock, KnownPeer, Metrics, NoHostCrypto, SharedStore};

/// The clock of a request that does not set one (PyJWT test tokens: iat 1700000000).
pub const DEFAULT_NOW_SECS: u64 = 1_700_000_100;

pub struct TestRequest<'a> {
    method: &'a str,
    path: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    request_id: Option<&'a str>,
    peer: KnownPeer<'a>,
    end_of_stream: bool,
    now_secs: u64,
    clock: Option<&'a dyn Clock>,
    store: Option<&'a dyn SharedStore>,
}

impl<'a> TestRequest<'a> {
    pub fn new(method: &'a str, path: &'a str) -> Self {
        TestRequest {
            method,
            path,
            headers: Vec::new(),
            request_id: None,
            peer: KnownPeer::default(),
            end_of_stream: true,
            now_secs: DEFAULT_NOW_SECS,
            clock: None,
            store: None,
        }
    }

    pub fn get(path: &'a str) -> Self {
        Self::new("GET", path)
    }

    pub fn header(mut self, name: &'a str, value: &'a str) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn headers(mut self, headers: &[(&'a str, &'a str)]) -> Self {
        self.headers.extend_from_slice(headers);
        self
    }

    pub fn request_id(mut self, id: &'a str) -> Self {
        self.request_id = Some(id);
        self
    }

    /// The peer's `ip:port`.
    pub fn peer_addr(mut self, address: &'a str) -> Self {
        self.peer.address = Some(address);
        self
    }

    /// The URI SAN of the client certificate Envoy verified.
    pub fn uri_san(mut self, san: Option<&'a str>) -> Self {
        self.peer.uri_san = san;
        self
    }

    /// A body follows the headers (or not).
    pub fn end_of_stream(mut self, end: bool) -> Self {
        self.end_of_stream = end;
        self
    }

    /// A fake clock at `secs` (ignored when `clock` is set).
    pub fn at_secs(mut self, secs: u64) -> Self {
        self.now_secs = secs;
        self
    }

    /// A clock the test keeps (to advance it, or count its reads).
    pub fn clock(mut self, clock: &'a dyn Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// A store the test keeps across requests (limits, lockouts).
    pub fn store(mut self, store: &'a dyn SharedStore) -> Self {
        self.store = Some(store);
        self
    }

    /// The head as the glue would build it.
    pub fn head(&self) -> RequestHead<'_> {
        RequestHead {
            method: self.method,
            path: self.path,
            headers: &self.headers,
            request_id: self.request_id,
            peer: &self.peer,
            end_of_stream: self.end_of_stream,
        }
    }

    pub fn send(&self, engine: &mut Engine, metrics: &mut dyn Metrics) -> Decision {
        let own_clock = FakeClock::at_secs(self.now_secs);
        let own_store = FakeStore::default();
        let host = Host {
            clock: self.clock.unwrap_or(&own_clock),
            crypto: &NoHostCrypto,
            store: self.store.unwrap_or(&own_store),
        };
        engine.on_request_headers(&self.head(), &host, metrics)
    }
}
