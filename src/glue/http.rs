//! One HTTP request's context: hands each phase (headers, body, trailers) to the
//! worker's `Engine` and carries out what it decided (header changes, a local reply, the
//! response headers to add, the body check still to do).

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use super::global;
use super::host::{
    log, log_level, request_header_map, send_local_response, CallClock, HostClock, HostPeer,
    HostStore,
};
use super::hostcalls;
use super::root::Worker;
use crate::body_phase::BodyPhase;
use crate::engine::{Decision, Host, RequestHead, Verdict};
use crate::grpc;
use crate::headermap;
use crate::host::{Clock, Metrics};
use crate::outcome::{self, Finished, LocalReply, Trail};
use crate::problem::Denial;

pub(super) struct Request {
    pub(super) worker: Option<Rc<Worker>>,
    /// A body check still to do.
    pub(super) body: Option<BodyPhase>,
    /// What the header phase knew, for the log line of a later denial.
    pub(super) trail: Trail,
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
            trail: Trail::default(),
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
            worker
                .remotes
                .borrow_mut()
                .install_missing_keys(&HostStore, &mut engine);
            let mut metrics = worker.metrics.borrow_mut();
            let host = Host {
                clock: &CallClock::default(),
                crypto: &worker.crypto,
                store: &HostStore,
            };
            engine.on_request_headers(&head, &host, &mut *metrics)
        };
        if !decision.refetch.is_empty() {
            let now = HostClock.now_millis();
            worker
                .remotes
                .borrow()
                .request_refetch(&decision.refetch, now, &HostStore);
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
        let Some(phase) = self.body else {
            return Action::Continue;
        };
        if end_of_stream {
            return self.body_end(phase, body_size);
        }
        let seen = phase.seen(body_size);
        let progress = self
            .worker
            .as_ref()
            .map(|w| w.engine.borrow().on_body_progress(&phase.check, seen));
        if let Some(Err(denial)) = progress {
            return self.deny(&denial);
        }
        let mut phase = phase;
        let hold = phase.hold_after_chunk(seen);
        self.body = Some(phase);
        if hold {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    /// A stream that ends with trailers never calls the body callback with
    /// `end_of_stream`: finish the body check here, or it would be skipped.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if let Some(pending) = &mut self.global {
            pending.body_ended = true;
            return Action::Pause;
        }
        match self.body {
            // No new bytes came with the trailers; a buffered body is read whole.
            Some(phase) => self.body_end(phase, 0),
            None => Action::Continue,
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
    /// The body ended (with its last chunk of `last_chunk` bytes, or with trailers):
    /// the engine checks the whole buffered body, or the final size of a counted one.
    fn body_end(&mut self, phase: BodyPhase, last_chunk: usize) -> Action {
        self.body = None;
        let Some(worker) = self.worker.clone() else {
            return Action::Continue;
        };
        let (bytes, seen) = if phase.buffering() {
            let bytes = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, usize::MAX)
                .ok()
                .flatten()
                .unwrap_or_default();
            let seen = bytes.len() as u64;
            (bytes, seen)
        } else {
            (Vec::new(), phase.seen(last_chunk))
        };
        let result = worker
            .engine
            .borrow()
            .on_body_end(&phase.check, &bytes, seen);
        match result {
            Ok(()) => {
                self.finish(Finished::Allowed);
                Action::Continue
            }
            Err(denial) => self.deny(&denial),
        }
    }

    /// The body ended while Envoy held all of it (global limits were pending): all of it
    /// is the last chunk.
    pub(super) fn held_body_end(&mut self) -> Action {
        let Some(phase) = self.body else {
            return Action::Continue;
        };
        let size = if phase.buffering() {
            0 // `body_end` reads the buffer whole
        } else {
            hostcalls::get_buffer(BufferType::HttpRequestBody, 0, usize::MAX)
                .ok()
                .flatten()
                .map_or(0, |b| b.len())
        };
        self.body_end(phase, size)
    }

    /// Carries out the header phase's decision.
    fn apply(&mut self, mut decision: Decision, request_id: Option<&str>) -> Action {
        let Some(worker) = self.worker.clone() else {
            return Action::Continue;
        };
        let policy = worker.engine.borrow().policy().clone();
        // The decision record for access logs: %FILTER_STATE(wasm.apiguard_decision:PLAIN)%.
        if policy.decision_record {
            let record = outcome::decision_record(&decision);
            let _ = hostcalls::set_property(vec!["apiguard_decision"], Some(record.as_bytes()));
        }
        let allowed_now = outcome::after_headers(&decision) == Some(Finished::Allowed);
        if !allowed_now {
            // A denial now or a later phase's: its log line needs what the header phase knew.
            self.trail = Trail::take(&mut decision, request_id);
        }
        let mutations = match decision.verdict {
            // A global lockout's answer comes first: the refusal waits for it.
            Verdict::Deny(denial) if !decision.global.is_empty() => {
                let held = Some((denial, self.trail.rule.take()));
                return self.start_global(decision.global, false, held);
            }
            Verdict::Deny(denial) => return self.deny(&denial),
            Verdict::Allow(m) => m,
        };
        for name in &mutations.remove_headers {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
        }
        for (name, value) in &mutations.set_headers {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
        }
        if let Some(path) = &mutations.new_path {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, ":path", Some(path));
        }
        self.response_headers = decision.response_headers;
        self.body = decision.body.map(BodyPhase::new);
        // With `allow_on_headers_stop_iteration`, pausing here keeps the headers from the
        // upstream until the body passed; without it Envoy would stop body callbacks too,
        // so this is opt-in (`hold_headers_for_body`).
        let hold = self
            .body
            .is_some_and(|b| b.holds_headers(policy.hold_headers_for_body));
        if !decision.global.is_empty() {
            return self.start_global(decision.global, hold, None);
        }
        if allowed_now {
            self.finish(Finished::Allowed);
        }
        if hold {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    /// Refuses the request (from any phase) and accounts for it.
    pub(super) fn deny(&mut self, denial: &Denial) -> Action {
        self.finish(Finished::Denied(denial));
        Action::Pause
    }

    /// The one place a request's end is accounted: its counter and, for a denial, the
    /// deny-log line and the local reply.
    pub(super) fn finish(&mut self, finished: Finished) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        worker
            .metrics
            .borrow_mut()
            .incr(&outcome::counter(finished));
        let Finished::Denied(denial) = finished else {
            return;
        };
        self.body = None;
        self.response_headers.clear();
        let level = worker.engine.borrow().policy().deny_log;
        if let Some((at, line)) = outcome::deny_log(level, &self.trail, denial) {
            log(log_level(at), &line);
        }
        let reply = outcome::local_reply(denial, self.trail.request_id.as_deref(), self.grpc);
        send_reply(&reply);
    }
}

fn send_reply(reply: &LocalReply) {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    match reply.grpc_status {
        Some(grpc_status) => send_local_response(reply.status, &headers, b"", grpc_status),
        None => {
            let body = Some(reply.body.as_bytes());
            let _ = hostcalls::send_http_response(reply.status, headers, body);
        }
    }
}
