//! The root context of one VM: loads the policy (`on_configure`), and drives the
//! remote-JWKS state machines (`on_tick`, the fetches' responses), installing the keys
//! another VM or this one published into the worker's `Engine`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Bytes, ContextType, LogLevel};

use super::host::{log, log_level, ForeignHostCrypto, HostClock, HostMetrics, HostStore};
use super::hostcalls;
use super::http::Request;
use crate::engine::{Engine, Metrics};
use crate::host::Clock;
use crate::jwks_sync::remotes::{parse_status, Fetch, Remotes, Report, Steps};
use crate::policy::Policy;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const GIT_REVISION: &str = match option_env!("APIGUARD_GIT_REVISION") {
    Some(r) => r,
    None => "unknown",
};
const TICK: Duration = Duration::from_millis(250);

/// What one worker VM shares between its root and its HTTP contexts.
pub(super) struct Worker {
    pub(super) engine: RefCell<Engine>,
    pub(super) remotes: RefCell<Remotes>,
    pub(super) metrics: RefCell<HostMetrics>,
    pub(super) crypto: ForeignHostCrypto,
}

#[derive(Default)]
pub(super) struct Root {
    worker: Option<Rc<Worker>>,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let Some(remote) = worker.remotes.borrow_mut().take(token_id) else {
            return;
        };
        let status = parse_status(
            self.get_http_call_response_header_bytes(":status")
                .as_deref(),
        );
        let body = self.get_http_call_response_body(0, body_size);
        let now = HostClock.now_millis();
        let steps = worker.remotes.borrow_mut().on_response(
            remote,
            now,
            &HostStore,
            status,
            body.as_deref(),
        );
        carry_out(&worker, steps, now);
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
        let remotes = Remotes::new(&policy, nonce);
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
        install_new_keys(&worker);
        self.worker = Some(worker);
        if has_remotes {
            let _ = hostcalls::set_tick_period(TICK);
        }
        log(
            LogLevel::Info,
            &format!("apiguard: policy loaded: {}", policy.summary()),
        );
        true
    }

    fn on_tick(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let now = HostClock.now_millis();
        let steps = worker.remotes.borrow_mut().on_tick(now, &HostStore);
        carry_out(&worker, steps, now);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request::new(self.worker.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Reports what happened, dispatches the fetches asked for, and installs any keys
/// published meanwhile.
fn carry_out(worker: &Worker, steps: Steps, now: u64) {
    for r in steps.reports {
        report(worker, r);
    }
    for fetch in steps.fetches {
        dispatch(worker, &fetch, now);
    }
    install_new_keys(worker);
}

fn dispatch(worker: &Worker, fetch: &Fetch, now: u64) {
    let req = &fetch.request;
    let timeout = Duration::from_millis(req.timeout_ms);
    match hostcalls::dispatch_http_call(&req.cluster, fetch.headers(), None, vec![], timeout) {
        Ok(token) => worker.remotes.borrow_mut().dispatched(token, fetch, now),
        Err(e) => {
            log(
                LogLevel::Warn,
                &format!(
                    "apiguard: cannot call cluster `{}` for JWKS: {e:?} (is the cluster defined?)",
                    req.cluster
                ),
            );
            let failed = worker
                .remotes
                .borrow_mut()
                .dispatch_failed(fetch, now, &HostStore);
            if let Some(r) = failed {
                report(worker, r);
            }
        }
    }
}

fn report(worker: &Worker, report: Report) {
    worker.metrics.borrow_mut().incr(&report.counter);
    for (at, line) in &report.lines {
        log(log_level(*at), line);
    }
}

/// Installs keys another VM (or this one) published since the last look.
fn install_new_keys(worker: &Worker) {
    let mut engine = worker.engine.borrow_mut();
    worker
        .remotes
        .borrow_mut()
        .install_new_keys(&HostStore, &mut engine);
}
