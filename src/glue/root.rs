//! The root context of one VM: loads the policy (`on_configure`), and drives the
//! remote-JWKS state machines (`on_tick`, the fetches' responses), installing the keys
//! another VM or this one published into the worker's `Engine`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Bytes, ContextType, LogLevel};

use super::host::{log, ForeignHostCrypto, HostClock, HostMetrics, HostStore};
use super::hostcalls;
use super::http::Request;
use crate::engine::{Engine, Metrics};
use crate::host::Clock;
use crate::jwks_sync::{FetchEvent, FetchRequest, JwksSync};
use crate::jwt::Jwks;
use crate::policy::{KeySource, Policy};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const GIT_REVISION: &str = match option_env!("APIGUARD_GIT_REVISION") {
    Some(r) => r,
    None => "unknown",
};
const TICK: Duration = Duration::from_millis(250);

/// Remote JWKS of one provider, as seen by this VM.
pub(super) struct RemoteKeys {
    pub(super) provider: usize,
    pub(super) sync: JwksSync,
    parsed_generation: Option<u64>,
}

/// What one worker VM shares between its root and its HTTP contexts.
pub(super) struct Worker {
    pub(super) engine: RefCell<Engine>,
    pub(super) remotes: RefCell<Vec<RemoteKeys>>,
    pub(super) metrics: RefCell<HostMetrics>,
    pub(super) crypto: ForeignHostCrypto,
}

#[derive(Default)]
pub(super) struct Root {
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
            crypto: ForeignHostCrypto {
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
        Some(Box::new(Request::new(self.worker.clone())))
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
