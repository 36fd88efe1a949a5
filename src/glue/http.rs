//! One HTTP request's context: hands each phase (headers, body, trailers) to the
//! worker's `Engine` and carries out what it decided (header changes, a local reply, the
//! response headers to add, the body check still to do).

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType};

use super::global;
use super::host::{log, request_header_map, send_local_response, HostClock, HostPeer, HostStore};
use super::hostcalls;
use super::root::Worker;
use crate::engine::{BodyCheck, Decision, Host, RequestHead, Verdict};
use crate::grpc;
use crate::headermap;
use crate::host::Clock;
use crate::policy::raw::RawLogLevel;
use crate::problem::Denial;
use crate::validate::BodyPlan;

pub(super) struct Request {
    pub(super) worker: Option<Rc<Worker>>,
    /// A body check still to do, and the body bytes already let through (`Limit` plan).
    pub(super) body: Option<BodyCheck>,
    streamed: u64,
    /// Kept for a denial from the body phase.
    pub(super) route: Option<String>,
    pub(super) request_id: Option<String>,
    /// Added to the response of an allowed request (`RateLimit` headers).
    pub(super) response_headers: Vec<(String, String)>,
    /// Rate limit service calls in flight (global limits).
    pub(super) global: Option<global::Pending>,
    /// Set for gRPC calls: denials are then trailers-only gRPC responses.
    pub(super) grpc: bool,
}

impl Request {
    pub(super) fn new(worker: Option<Rc<Worker>>) -> Request {
        Request {
            worker,
            body: None,
            streamed: 0,
            route: None,
            request_id: None,
            response_headers: Vec::new(),
            global: None,
            grpc: false,
        }
    }
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
                    return self.start_global(global, decision.principal, hold, None);
                }
                if hold {
                    Action::Pause
                } else {
                    Action::Continue
                }
            }
            // A global lockout's answer comes first: the refusal waits for it.
            Verdict::Deny(denial) if !global.is_empty() => {
                self.body = None;
                let held = Some((denial, decision.rule));
                self.start_global(global, decision.principal, false, held)
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
pub(super) fn log_denial(
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

pub(super) fn send_denial(denial: &Denial, request_id: Option<&str>, grpc: bool) {
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
