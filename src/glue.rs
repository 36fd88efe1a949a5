//! The only module that touches `proxy_wasm`: it adapts Envoy's callbacks to the pure core.
//!
//! One `Root` per worker VM (and one on the main thread) holds the compiled policy, the
//! worker's `Engine` and the remote-JWKS state; HTTP contexts borrow them per request.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{
    Action, BufferType, Bytes, ContextType, LogLevel, MapType, MetricType, Status,
};

use crate::engine::{BodyCheck, Decision, Engine, Host, Metrics, Peer, RequestHead, Verdict};
use crate::grpc;
use crate::headermap;
use crate::host::{CasError, Clock, SharedStore, SignatureHost};
use crate::hostcrypto::{decode_verify_result, encode_verify_args};
use crate::jwks_sync::{FetchEvent, FetchRequest, JwksSync};
use crate::jwt::Jwks;
use crate::policy::raw::RawLogLevel;
use crate::policy::{KeySource, Policy};
use crate::problem::Denial;
use crate::validate::BodyPlan;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const GIT_REVISION: &str = match option_env!("APIGUARD_GIT_REVISION") {
    Some(r) => r,
    None => "unknown",
};
const TICK: Duration = Duration::from_millis(250);

#[path = "glue_global.rs"]
mod global;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        // A panic aborts the VM; say where, at the highest level, before it happens.
        let _ = hostcalls::log(LogLevel::Critical, &format!("apiguard panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

struct HostClock;

impl Clock for HostClock {
    fn now_millis(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

struct HostStore;

/// The downstream connection of one request through Envoy's properties: each lookup is a
/// host call of a few microseconds, made only when the engine asks and at most once per
/// request (several limits or certificate sets may ask).
#[derive(Default)]
struct HostPeer {
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
fn send_local_response(status: u32, headers: &[(&str, &str)], body: &[u8], grpc_status: i32) {
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
fn request_header_map() -> Vec<u8> {
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
}

/// Envoy's BoringSSL through the `verify_signature` foreign function; remembers when the
/// host lacks it so the pure-Rust fallback does not pay for a failing call every time.
struct HostCrypto {
    available: Cell<bool>,
}

impl SignatureHost for HostCrypto {
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
struct HostMetrics {
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

/// Remote JWKS of one provider, as seen by this VM.
struct RemoteKeys {
    provider: usize,
    sync: JwksSync,
    parsed_generation: Option<u64>,
}

/// What one worker VM shares between its root and its HTTP contexts.
struct Worker {
    engine: RefCell<Engine>,
    remotes: RefCell<Vec<RemoteKeys>>,
    metrics: RefCell<HostMetrics>,
    crypto: HostCrypto,
}

#[derive(Default)]
struct Root {
    worker: Option<Rc<Worker>>,
    /// Dispatched JWKS calls: token → (index into `remotes`, deadline in ms).
    in_flight: HashMap<u32, (usize, u64)>,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some((remote, _)) = self.in_flight.remove(&token_id) else {
            return;
        };
        let status = self
            .get_http_call_response_header_bytes(":status")
            .and_then(|s| String::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok());
        let body = self.get_http_call_response_body(0, body_size);
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let now = HostClock.now_millis();
        let (next, event) = {
            let mut remotes = worker.remotes.borrow_mut();
            let Some(r) = remotes.get_mut(remote) else {
                return;
            };
            r.sync.on_response(now, &HostStore, status, body.as_deref())
        };
        self.record(&worker, remote, event);
        if let Some(req) = next {
            self.dispatch(&worker, remote, req, now);
        }
        self.refresh_keys(&worker);
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        log(
            LogLevel::Info,
            &format!("apiguard {VERSION} (git {GIT_REVISION}) starting"),
        );
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config: Bytes = match hostcalls::get_buffer(
            proxy_wasm::types::BufferType::PluginConfiguration,
            0,
            usize::MAX,
        ) {
            Ok(Some(c)) => c,
            _ => Vec::new(),
        };
        let policy = match Policy::from_json(&config) {
            Ok(p) => Rc::new(p),
            Err(errors) => {
                for e in &errors {
                    log(LogLevel::Error, &format!("apiguard: invalid policy: {e}"));
                }
                log(
                    LogLevel::Error,
                    &format!("apiguard: policy rejected with {} error(s)", errors.len()),
                );
                return false;
            }
        };
        let nonce = HostClock.now_millis() ^ (self as *const Root as u64).rotate_left(32);
        let remotes = policy
            .providers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match &p.keys {
                KeySource::Remote(spec) => Some(RemoteKeys {
                    provider: i,
                    sync: JwksSync::new(spec.clone(), nonce.wrapping_add(i as u64)),
                    parsed_generation: None,
                }),
                KeySource::Inline(_) => None,
            })
            .collect::<Vec<_>>();
        let has_remotes = !remotes.is_empty();
        let worker = Rc::new(Worker {
            engine: RefCell::new(Engine::new(policy.clone())),
            remotes: RefCell::new(remotes),
            metrics: RefCell::new(HostMetrics::default()),
            crypto: HostCrypto {
                available: Cell::new(true),
            },
        });
        // Keys another VM already fetched (or a previous policy with the same provider)
        // are usable at once.
        self.refresh_keys(&worker);
        self.worker = Some(worker);
        self.in_flight.clear();
        if has_remotes {
            let _ = hostcalls::set_tick_period(TICK);
        }
        log(
            LogLevel::Info,
            &format!(
                "apiguard: policy loaded: {} provider(s), {} route(s)",
                policy.providers.len(),
                policy.routes.len()
            ),
        );
        true
    }

    fn on_tick(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let now = HostClock.now_millis();
        // Our own deadline: a cluster without a healthy endpoint can leave a call queued.
        let expired: Vec<(u32, usize)> = self
            .in_flight
            .iter()
            .filter(|(_, (_, deadline))| now > *deadline)
            .map(|(t, (r, _))| (*t, *r))
            .collect();
        for (token, remote) in expired {
            self.in_flight.remove(&token);
            let event = worker
                .remotes
                .borrow_mut()
                .get_mut(remote)
                .and_then(|r| r.sync.on_timeout(now, &HostStore));
            self.record(&worker, remote, event);
        }
        let count = worker.remotes.borrow().len();
        for remote in 0..count {
            if self.in_flight.values().any(|(r, _)| *r == remote) {
                continue;
            }
            let req = worker
                .remotes
                .borrow_mut()
                .get_mut(remote)
                .and_then(|r| r.sync.on_tick(now, &HostStore));
            if let Some(req) = req {
                self.dispatch(&worker, remote, req, now);
            }
        }
        self.refresh_keys(&worker);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            worker: self.worker.clone(),
            body: None,
            streamed: 0,
            route: None,
            request_id: None,
            response_headers: Vec::new(),
            global: None,
            grpc: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Root {
    fn dispatch(&mut self, worker: &Worker, remote: usize, req: FetchRequest, now: u64) {
        let headers = vec![
            (":method", "GET"),
            (":path", req.path.as_str()),
            (":authority", req.authority.as_str()),
            ("accept", "application/json"),
            ("user-agent", "apiguard"),
        ];
        let timeout = Duration::from_millis(req.timeout_ms);
        match hostcalls::dispatch_http_call(&req.cluster, headers, None, vec![], timeout) {
            Ok(token) => {
                self.in_flight.insert(
                    token,
                    (
                        remote,
                        now.saturating_add(req.timeout_ms).saturating_add(1000),
                    ),
                );
            }
            Err(e) => {
                log(
                    LogLevel::Warn,
                    &format!("apiguard: cannot call cluster `{}` for JWKS: {e:?} (is the cluster defined?)", req.cluster),
                );
                let event = worker
                    .remotes
                    .borrow_mut()
                    .get_mut(remote)
                    .and_then(|r| r.sync.on_timeout(now, &HostStore));
                self.record(worker, remote, event);
            }
        }
    }

    fn record(&self, worker: &Worker, remote: usize, event: Option<FetchEvent>) {
        let Some(event) = event else { return };
        let name = {
            let remotes = worker.remotes.borrow();
            let engine = worker.engine.borrow();
            remotes
                .get(remote)
                .and_then(|r| engine.policy().providers.get(r.provider))
                .map(|p| p.name.clone())
                .unwrap_or_default()
        };
        match event {
            FetchEvent::Published {
                generation,
                keys,
                rejected,
            } => {
                worker
                    .metrics
                    .borrow_mut()
                    .incr(&format!("apiguard.jwks.{name}.fetch_success"));
                log(
                    LogLevel::Info,
                    &format!("apiguard: JWKS of `{name}` published: {keys} key(s), generation {generation}"),
                );
                for r in rejected {
                    log(
                        LogLevel::Warn,
                        &format!("apiguard: JWKS of `{name}`: skipped {r}"),
                    );
                }
            }
            FetchEvent::Failed { reason } => {
                worker
                    .metrics
                    .borrow_mut()
                    .incr(&format!("apiguard.jwks.{name}.fetch_failure"));
                log(
                    LogLevel::Warn,
                    &format!("apiguard: JWKS fetch for `{name}` failed: {reason}; keeping the last good keys"),
                );
            }
        }
    }

    /// Re-parses a provider's keys when another VM (or this one) published a new generation.
    fn refresh_keys(&self, worker: &Worker) {
        let mut remotes = worker.remotes.borrow_mut();
        for r in remotes.iter_mut() {
            let Some(generation) = r.sync.shared_generation(&HostStore) else {
                continue;
            };
            if r.parsed_generation == Some(generation) {
                continue;
            }
            let Some(shared) = r.sync.shared_keys(&HostStore) else {
                continue;
            };
            match Jwks::parse(&shared.jwks_json) {
                Ok(parsed) if !parsed.jwks.is_empty() => {
                    worker.engine.borrow_mut().set_keys(
                        r.provider,
                        Rc::new(parsed.jwks),
                        shared.generation,
                    );
                    r.parsed_generation = Some(shared.generation);
                }
                _ => r.parsed_generation = Some(shared.generation),
            }
        }
    }
}

struct Request {
    worker: Option<Rc<Worker>>,
    /// A body check still to do, and the body bytes already let through (`Limit` plan).
    body: Option<BodyCheck>,
    streamed: u64,
    /// Kept for a denial from the body phase.
    route: Option<String>,
    request_id: Option<String>,
    /// Added to the response of an allowed request (`RateLimit` headers).
    response_headers: Vec<(String, String)>,
    /// Rate limit service calls in flight (global limits).
    global: Option<global::Pending>,
    /// Set for gRPC calls: denials are then trailers-only gRPC responses.
    grpc: bool,
}

impl Context for Request {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.global_reply(token_id, status_code, response_size);
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.clone() else {
            // No valid policy: fail closed.
            let _ = hostcalls::send_http_response(
                503,
                vec![("content-type", "text/plain")],
                Some(b"apiguard: no policy\n"),
            );
            return Action::Pause;
        };
        let raw_headers = request_header_map();
        let owned = headermap::text_pairs(&raw_headers);
        let headers: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (&**k, &**v)).collect();
        let pseudo = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == name)
                .map_or("", |(_, v)| *v)
        };
        let request_id = headers
            .iter()
            .find(|(k, _)| *k == "x-request-id")
            .map(|(_, v)| *v);
        self.grpc = grpc::is_grpc(
            headers
                .iter()
                .find(|(k, _)| *k == "content-type")
                .map(|(_, v)| *v),
        );
        let head = RequestHead {
            method: pseudo(":method"),
            path: pseudo(":path"),
            headers: &headers,
            request_id,
            peer: &HostPeer::default(),
            end_of_stream,
        };
        let decision = {
            let mut engine = worker.engine.borrow_mut();
            let mut metrics = worker.metrics.borrow_mut();
            let host = Host {
                clock: &HostClock,
                crypto: &worker.crypto,
                store: &HostStore,
            };
            engine.on_request_headers(&head, &host, &mut *metrics)
        };
        if !decision.refetch.is_empty() {
            let now = HostClock.now_millis();
            for r in worker.remotes.borrow().iter() {
                if decision.refetch.contains(&r.provider) {
                    r.sync.request_refetch(now, &HostStore);
                }
            }
        }
        self.apply(decision, request_id)
    }

    /// Validation of the body: `Buffer` pauses (Envoy buffers) until the end of the
    /// stream, then checks it whole; `Limit` lets chunks through and only counts them.
    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        // Global limits undecided yet: the body waits (checked when they admit).
        if let Some(pending) = &mut self.global {
            pending.body_ended |= end_of_stream;
            return Action::Pause;
        }
        let (Some(check), Some(worker)) = (self.body, self.worker.clone()) else {
            return Action::Continue;
        };
        let buffering = matches!(check.plan, BodyPlan::Buffer { .. });
        // While paused, `body_size` is everything buffered so far; after a Continue it is
        // only the new chunk.
        let seen = if buffering {
            body_size as u64
        } else {
            self.streamed.saturating_add(body_size as u64)
        };
        let engine = worker.engine.borrow();
        let mut metrics = worker.metrics.borrow_mut();
        if !end_of_stream {
            if let Err(d) = engine.on_body_progress(&check, seen, &mut *metrics) {
                drop((engine, metrics));
                return self.reject(*d);
            }
            if buffering {
                return Action::Pause;
            }
            self.streamed = seen;
            return Action::Continue;
        }
        let bytes = if buffering {
            hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let result = engine.on_body_end(&check, &bytes, seen, &mut *metrics);
        drop((engine, metrics));
        self.body = None;
        match result {
            Ok(()) => Action::Continue,
            Err(d) => self.reject(*d),
        }
    }

    /// A stream that ends with trailers never calls the body callback with
    /// `end_of_stream`: finish the body check here, or it would be skipped.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if let Some(pending) = &mut self.global {
            pending.body_ended = true;
            return Action::Pause;
        }
        let Some(check) = self.body else {
            return Action::Continue;
        };
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let seen = match check.plan {
            BodyPlan::Buffer { .. } => body.len() as u64,
            _ => self.streamed,
        };
        let Some(worker) = self.worker.clone() else {
            return Action::Continue;
        };
        let result = {
            let engine = worker.engine.borrow();
            let mut metrics = worker.metrics.borrow_mut();
            engine.on_body_end(&check, &body, seen, &mut *metrics)
        };
        self.body = None;
        match result {
            Ok(()) => Action::Continue,
            Err(d) => self.reject(*d),
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in self.response_headers.drain(..) {
            let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, &name, Some(&value));
        }
        Action::Continue
    }

    #[cfg(feature = "hostcall-count")]
    fn on_log(&mut self) {
        hostcalls::report_request();
    }
}

impl Request {
    fn deny_log(&self) -> Option<RawLogLevel> {
        self.worker
            .as_ref()
            .and_then(|w| w.engine.borrow().policy().deny_log)
    }

    /// Refuses the request from the body phase.
    fn reject(&mut self, denial: Denial) -> Action {
        self.body = None;
        self.response_headers.clear();
        let (route, request_id) = (self.route.clone(), self.request_id.clone());
        log_denial(
            self.deny_log(),
            &denial,
            route.as_deref(),
            None,
            None,
            request_id.as_deref(),
        );
        send_denial(&denial, request_id.as_deref(), self.grpc);
        Action::Pause
    }

    fn apply(&mut self, mut decision: Decision, request_id: Option<&str>) -> Action {
        self.response_headers = std::mem::take(&mut decision.response_headers);
        self.body = decision.body;
        let global = std::mem::take(&mut decision.global);
        if self.body.is_some() || !global.is_empty() {
            self.route = decision.route.clone();
            self.request_id = request_id.map(str::to_string);
        }
        // With `allow_on_headers_stop_iteration`, pausing here keeps the headers from the
        // upstream until the body passed; without it Envoy would stop body callbacks too,
        // so this is opt-in (`hold_headers_for_body`).
        let hold = matches!(
            decision.body,
            Some(BodyCheck {
                plan: BodyPlan::Buffer { .. },
                ..
            })
        ) && self
            .worker
            .as_ref()
            .is_some_and(|w| w.engine.borrow().policy().hold_headers_for_body);
        // The decision record for access logs: %FILTER_STATE(wasm.apiguard_decision:PLAIN)%.
        if self
            .worker
            .as_ref()
            .is_some_and(|w| w.engine.borrow().policy().decision_record)
        {
            let record = decision_record(&decision);
            let _ = hostcalls::set_property(vec!["apiguard_decision"], Some(record.as_bytes()));
        }
        match decision.verdict {
            Verdict::Allow(m) => {
                for name in &m.remove_headers {
                    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
                }
                for (name, value) in &m.set_headers {
                    let _ =
                        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
                }
                if let Some(path) = &m.new_path {
                    let _ =
                        hostcalls::set_map_value(MapType::HttpRequestHeaders, ":path", Some(path));
                }
                if !global.is_empty() {
                    return self.start_global(global, decision.principal, hold);
                }
                if hold {
                    Action::Pause
                } else {
                    Action::Continue
                }
            }
            Verdict::Deny(denial) => {
                log_denial(
                    self.deny_log(),
                    &denial,
                    decision.route.as_deref(),
                    decision.rule.as_deref(),
                    decision.principal.as_deref(),
                    request_id,
                );
                send_denial(&denial, request_id, self.grpc);
                Action::Pause
            }
        }
    }
}

/// One structured line per denied request: never the credential.
fn log_denial(
    level: Option<RawLogLevel>,
    denial: &Denial,
    route: Option<&str>,
    rule: Option<&str>,
    principal: Option<&str>,
    request_id: Option<&str>,
) {
    let level = match level {
        None | Some(RawLogLevel::Off) => return,
        Some(RawLogLevel::Debug) => LogLevel::Debug,
        Some(RawLogLevel::Info) => LogLevel::Info,
        Some(RawLogLevel::Warn) => LogLevel::Warn,
    };
    log(
        level,
        &serde_json::json!({
            "apiguard": "deny",
            "status": denial.status,
            "reason": denial.reason,
            "route": route,
            "rule": rule,
            "principal": principal,
            "request_id": request_id,
        })
        .to_string(),
    );
}

fn send_denial(denial: &Denial, request_id: Option<&str>, grpc: bool) {
    if grpc {
        let reply = grpc::reply(denial);
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        send_local_response(200, &headers, b"", reply.grpc_status);
        return;
    }
    let headers = denial.response_headers();
    let body = denial.body(request_id);
    let _ = hostcalls::send_http_response(
        u32::from(denial.status),
        headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        Some(body.as_bytes()),
    );
}

/// `decision=allow|deny|audit-deny route=.. rule=.. reason=.. principal=..` (`-` when empty).
fn decision_record(d: &Decision) -> String {
    let (verdict, reason) = match &d.verdict {
        Verdict::Allow(_) if !d.audit_denied.is_empty() => ("audit-deny", "-"),
        Verdict::Allow(_) => ("allow", "-"),
        Verdict::Deny(denial) => ("deny", denial.reason),
    };
    let rule = d
        .rule
        .clone()
        .or_else(|| (!d.audit_denied.is_empty()).then(|| d.audit_denied.join(",")));
    let clean = |s: Option<&str>| {
        s.filter(|v| !v.is_empty())
            .map(|v| {
                v.chars()
                    .map(|c| {
                        if c.is_whitespace() || c.is_control() {
                            '_'
                        } else {
                            c
                        }
                    })
                    .collect::<String>()
            })
            .unwrap_or_else(|| "-".to_string())
    };
    format!(
        "decision={verdict} route={} rule={} reason={reason} principal={}",
        clean(d.route.as_deref()),
        clean(rule.as_deref()),
        clean(d.principal.as_deref()),
    )
}

/// `proxy_wasm::hostcalls`, and with `--features hostcall-count` (a bench build, never
/// shipped) a count of every host call the module makes: each request's end adds the calls
/// since the previous report to `apiguard.debug.hostcalls` and one to
/// `apiguard.debug.requests` (those two increments are not counted), so `make bench`
/// reports calls per request as Envoy really served them.
mod hostcalls {
    pub use proxy_wasm::hostcalls::*;

    #[cfg(not(feature = "hostcall-count"))]
    #[inline(always)]
    pub fn count() {}

    // Named, so they shadow the SDK's glob above.
    #[cfg(feature = "hostcall-count")]
    pub use counted::{
        call_foreign_function, count, define_metric, dispatch_grpc_call, get_buffer,
        get_current_time, get_property, get_shared_data, increment_metric, log, report_request,
        resume_http_request, send_http_response, set_map_value, set_property, set_shared_data,
    };

    #[cfg(feature = "hostcall-count")]
    mod counted {
        use proxy_wasm::hostcalls as hc;
        use proxy_wasm::types::{BufferType, Bytes, MapType, MetricType, Status};
        use std::cell::Cell;
        use std::time::SystemTime;

        thread_local! {
            static CALLS: Cell<i64> = const { Cell::new(0) };
            static IDS: Cell<Option<(u32, u32)>> = const { Cell::new(None) };
        }

        pub fn count() {
            CALLS.with(|c| c.set(c.get() + 1));
        }

        pub fn report_request() {
            let ids = IDS.with(|ids| {
                if ids.get().is_none() {
                    let calls = hc::define_metric(MetricType::Counter, "apiguard.debug.hostcalls");
                    let reqs = hc::define_metric(MetricType::Counter, "apiguard.debug.requests");
                    if let (Ok(c), Ok(r)) = (calls, reqs) {
                        ids.set(Some((c, r)));
                    }
                }
                ids.get()
            });
            if let Some((calls, reqs)) = ids {
                let n = CALLS.with(|c| c.replace(0));
                let _ = hc::increment_metric(calls, n);
                let _ = hc::increment_metric(reqs, 1);
            }
        }

        pub fn log(level: proxy_wasm::types::LogLevel, message: &str) -> Result<(), Status> {
            count();
            hc::log(level, message)
        }
        pub fn get_current_time() -> Result<SystemTime, Status> {
            count();
            hc::get_current_time()
        }
        pub fn get_property(path: Vec<&str>) -> Result<Option<Bytes>, Status> {
            count();
            hc::get_property(path)
        }
        pub fn set_property(path: Vec<&str>, value: Option<&[u8]>) -> Result<(), Status> {
            count();
            hc::set_property(path, value)
        }
        pub fn get_shared_data(key: &str) -> Result<(Option<Bytes>, Option<u32>), Status> {
            count();
            hc::get_shared_data(key)
        }
        pub fn set_shared_data(
            key: &str,
            value: Option<&[u8]>,
            cas: Option<u32>,
        ) -> Result<(), Status> {
            count();
            hc::set_shared_data(key, value, cas)
        }
        pub fn call_foreign_function(
            name: &str,
            arguments: Option<&[u8]>,
        ) -> Result<Option<Bytes>, Status> {
            count();
            hc::call_foreign_function(name, arguments)
        }
        pub fn define_metric(metric_type: MetricType, name: &str) -> Result<u32, Status> {
            count();
            hc::define_metric(metric_type, name)
        }
        pub fn increment_metric(metric_id: u32, offset: i64) -> Result<(), Status> {
            count();
            hc::increment_metric(metric_id, offset)
        }
        pub fn get_buffer(
            buffer_type: BufferType,
            start: usize,
            max_size: usize,
        ) -> Result<Option<Bytes>, Status> {
            count();
            hc::get_buffer(buffer_type, start, max_size)
        }
        pub fn set_map_value(map: MapType, key: &str, value: Option<&str>) -> Result<(), Status> {
            count();
            hc::set_map_value(map, key, value)
        }
        pub fn dispatch_grpc_call(
            upstream: &str,
            service: &str,
            method: &str,
            initial_metadata: Vec<(&str, &[u8])>,
            message: Option<&[u8]>,
            timeout: std::time::Duration,
        ) -> Result<u32, Status> {
            count();
            hc::dispatch_grpc_call(
                upstream,
                service,
                method,
                initial_metadata,
                message,
                timeout,
            )
        }
        pub fn resume_http_request() -> Result<(), Status> {
            count();
            hc::resume_http_request()
        }
        pub fn send_http_response(
            status_code: u32,
            headers: Vec<(&str, &str)>,
            body: Option<&[u8]>,
        ) -> Result<(), Status> {
            count();
            hc::send_http_response(status_code, headers, body)
        }
    }
}
