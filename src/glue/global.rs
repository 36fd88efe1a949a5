//! Glue for global limits: dispatches the engine's rate limit service calls, pauses the
//! request, feeds each reply to `ratelimit::global::interpret` and resumes or refuses.
//! No decisions here; only host calls. Envoy enforces each call's timeout (the reply then
//! arrives as a failed call, DEADLINE_EXCEEDED), so a request never waits longer than the
//! limit's `timeout_ms` for the service.

use std::time::Duration;

use super::hostcalls;
use proxy_wasm::types::{Action, BufferType};

use super::http::Request;
use crate::engine::Metrics;
use crate::outcome::Finished;
use crate::problem::Denial;
use crate::ratelimit::global::{self, CallKind, GlobalCall, Reply, Verdict};
use crate::rls_proto;

/// Calls still in flight for one request, and what the finished ones decided.
#[derive(Default)]
pub(super) struct Pending {
    /// (gRPC call token, index into `Policy::limits`, what the call asked).
    calls: Vec<(u32, usize, CallKind)>,
    denial: Option<Denial>,
    /// The engine's refusal, sent once the global lockouts have answered (unless one of
    /// them locks the key or fails closed), with the rule that refused, for the log.
    held: Option<(Denial, Option<String>)>,
    headers: Vec<(String, String)>,
    /// The body ended while the calls were in flight (only with `hold_headers_for_body`,
    /// where Envoy keeps delivering the body to a paused request).
    pub(super) body_ended: bool,
    /// `hold_headers_for_body`: the headers wait for the body check, not only for us.
    hold: bool,
}

impl Request {
    /// Dispatches every call; `Pause` until they are answered (or `Continue` / a sent
    /// denial when none could be dispatched).
    pub(super) fn start_global(
        &mut self,
        calls: Vec<GlobalCall>,
        hold: bool,
        held: Option<(Denial, Option<String>)>,
    ) -> Action {
        let mut pending = Pending {
            hold,
            held,
            ..Pending::default()
        };
        for call in calls {
            let token = hostcalls::dispatch_grpc_call(
                &call.cluster,
                rls_proto::SERVICE,
                rls_proto::METHOD,
                Vec::new(),
                Some(&call.message),
                Duration::from_millis(call.timeout_ms),
            );
            match token {
                Ok(token) => pending.calls.push((token, call.limit, call.kind)),
                // An unknown cluster or a host refusal is a failure of the service.
                Err(_) => self.record_reply(&mut pending, call.limit, call.kind, Reply::Failed),
            }
        }
        if pending.calls.is_empty() {
            return self.finish_global(pending);
        }
        self.global = Some(pending);
        Action::Pause
    }

    /// `on_grpc_call_response` for this request.
    pub(super) fn global_reply(&mut self, token: u32, status_code: u32, size: usize) {
        let Some(mut pending) = self.global.take() else {
            return;
        };
        let Some(at) = pending.calls.iter().position(|(t, _, _)| *t == token) else {
            self.global = Some(pending);
            return;
        };
        let (_, limit, kind) = pending.calls.swap_remove(at);
        let body = if status_code == 0 {
            hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
                .ok()
                .flatten()
        } else {
            None
        };
        let reply = body.as_deref().map_or(Reply::Failed, Reply::Message);
        self.record_reply(&mut pending, limit, kind, reply);
        if !pending.calls.is_empty() {
            self.global = Some(pending);
            return;
        }
        if self.finish_global(pending) == Action::Continue {
            let _ = hostcalls::resume_http_request();
        }
    }

    fn record_reply(&self, pending: &mut Pending, limit: usize, kind: CallKind, reply: Reply) {
        let Some(worker) = &self.worker else {
            return;
        };
        let engine = worker.engine.borrow();
        let Some(limit) = engine.policy().limits.get(limit) else {
            return;
        };
        let Some(spec) = &limit.global else {
            return;
        };
        let verdict = global::interpret(&limit.spec.name, spec, kind, reply);
        let mut metrics = worker.metrics.borrow_mut();
        match verdict {
            Verdict::Allowed { headers } => {
                metrics.incr(&limit.counters.allowed);
                if pending.headers.is_empty() {
                    pending.headers = headers;
                }
            }
            Verdict::Limited(d) => {
                metrics.incr(&limit.counters.limited);
                global::keep_denial(&mut pending.denial, *d);
            }
            Verdict::ErrorAllowed => {
                metrics.incr(&format!("apiguard.ratelimit.{}.rls_error", limit.spec.name));
            }
            Verdict::ErrorDenied(d) => {
                metrics.incr(&format!("apiguard.ratelimit.{}.rls_error", limit.spec.name));
                global::keep_denial(&mut pending.denial, *d);
            }
        }
    }

    /// Every call answered: refuse, or let the request go on (to its body check if any).
    fn finish_global(&mut self, pending: Pending) -> Action {
        let Some(worker) = self.worker.clone() else {
            return Action::Continue;
        };
        // A lock or a closed failure replaces the engine's own refusal, if any.
        let denial = match (pending.denial, pending.held) {
            (Some(d), _) => Some((d, None)),
            (None, held) => held,
        };
        if let Some((denial, rule)) = denial {
            self.trail.rule = rule;
            return self.deny(&denial);
        }
        let policy_wants_headers = worker.engine.borrow().policy().ratelimit_headers_on_allow;
        // The local limits' headers, when present, came first and stay.
        if policy_wants_headers && self.response_headers.is_empty() {
            self.response_headers = pending.headers;
        }
        if self.body.is_none() {
            self.finish(Finished::Allowed);
            return Action::Continue;
        }
        if pending.body_ended {
            return self.held_body_end();
        }
        if pending.hold {
            return Action::Pause;
        }
        Action::Continue
    }
}
