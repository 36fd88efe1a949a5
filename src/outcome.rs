//! What a request leaves behind once it is decided, worked out in one place so the glue
//! only hands it to Envoy: the counter it bumps (`apiguard.allowed` or
//! `apiguard.denied.<reason>`), the deny-log line, the local reply that refuses it, and the
//! decision record for access logs.
//!
//! A request is decided in the header phase, or later when a body check or global limits
//! were still pending; `Trail` keeps what the header phase knew (route, rule, principal,
//! request id) so a later denial is logged with the same facts.

use std::borrow::Cow;

use crate::engine::{Decision, Verdict};
use crate::grpc;
use crate::policy::raw::RawLogLevel;
use crate::problem::Denial;

/// How a request ended, as the counters see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished<'a> {
    Allowed,
    Denied(&'a Denial),
}

/// The one counter a finished request bumps.
pub fn counter(finished: Finished) -> Cow<'static, str> {
    match finished {
        Finished::Allowed => Cow::Borrowed("apiguard.allowed"),
        Finished::Denied(d) => Cow::Owned(format!("apiguard.denied.{}", d.reason)),
    }
}

/// How the header phase ended: `None` while a body check or global limits are still to
/// decide (the request is counted when they are done). A refusal waits too when global
/// lockouts are asked first (one of them may replace it with `locked_out`).
pub fn after_headers(decision: &Decision) -> Option<Finished<'_>> {
    if !decision.global.is_empty() {
        return None;
    }
    match &decision.verdict {
        Verdict::Deny(d) => Some(Finished::Denied(d)),
        Verdict::Allow(_) if decision.body.is_some() => None,
        Verdict::Allow(_) => Some(Finished::Allowed),
    }
}

/// What the header phase knew about a request, for its deny-log line. Never a credential:
/// the principal is the token's `sub` (or the key's / certificate's name).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Trail {
    pub route: Option<String>,
    /// The enforced rule that denied it (only the header phase's rules name one).
    pub rule: Option<String>,
    pub principal: Option<String>,
    pub request_id: Option<String>,
}

impl Trail {
    /// Takes the facts out of a decision (it keeps its verdict).
    pub fn take(decision: &mut Decision, request_id: Option<&str>) -> Trail {
        Trail {
            route: decision.route.take(),
            rule: decision.rule.take(),
            principal: decision.principal.take(),
            request_id: request_id.map(str::to_string),
        }
    }

    /// One JSON object per denied request.
    pub fn deny_line(&self, denial: &Denial) -> String {
        serde_json::json!({
            "apiguard": "deny",
            "status": denial.status,
            "reason": denial.reason,
            "route": self.route,
            "rule": self.rule,
            "principal": self.principal,
            "request_id": self.request_id,
        })
        .to_string()
    }
}

/// A log level the deny log is written at (`deny_log: off` writes nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogAt {
    Debug,
    Info,
    Warn,
}

/// The deny-log line for a denial and the level to write it at, when the policy wants one.
pub fn deny_log(
    level: Option<RawLogLevel>,
    trail: &Trail,
    denial: &Denial,
) -> Option<(LogAt, String)> {
    let at = match level? {
        RawLogLevel::Off => return None,
        RawLogLevel::Debug => LogAt::Debug,
        RawLogLevel::Info => LogAt::Info,
        RawLogLevel::Warn => LogAt::Warn,
    };
    Some((at, trail.deny_line(denial)))
}

/// The local reply that refuses a request: a problem+json response, or for a gRPC call a
/// trailers-only response (HTTP 200) carrying its `grpc-status`.
#[derive(Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Set for gRPC calls: the host must send it as the reply's gRPC status.
    pub grpc_status: Option<i32>,
}

pub fn local_reply(denial: &Denial, request_id: Option<&str>, grpc: bool) -> LocalReply {
    if grpc {
        let reply = grpc::reply(denial);
        return LocalReply {
            status: 200,
            headers: reply.headers,
            body: String::new(),
            grpc_status: Some(reply.grpc_status),
        };
    }
    LocalReply {
        status: u32::from(denial.status),
        headers: denial.response_headers(),
        body: denial.body(request_id),
        grpc_status: None,
    }
}

/// `decision=allow|deny|audit-deny route=.. rule=.. reason=.. principal=..` (`-` when
/// empty; whitespace and control characters become `_`, so the record stays one line of
/// space-separated fields).
pub fn decision_record(d: &Decision) -> String {
    let (verdict, reason) = match &d.verdict {
        Verdict::Allow(_) if !d.audit_denied.is_empty() => ("audit-deny", "-"),
        Verdict::Allow(_) => ("allow", "-"),
        Verdict::Deny(denial) => ("deny", denial.reason),
    };
    let audit_rules =
        (d.rule.is_none() && !d.audit_denied.is_empty()).then(|| d.audit_denied.join(","));
    let rule = d.rule.as_deref().or(audit_rules.as_deref());
    format!(
        "decision={verdict} route={} rule={} reason={reason} principal={}",
        record_field(d.route.as_deref()),
        record_field(rule),
        record_field(d.principal.as_deref()),
    )
}

fn record_field(value: Option<&str>) -> String {
    match value.filter(|v| !v.is_empty()) {
        None => "-".to_string(),
        Some(v) => v
            .chars()
            .map(|c| {
                if c.is_whitespace() || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
