use super::*;
use crate::engine::{BodyCheck, Mutations};
use crate::ratelimit::global::{CallKind, GlobalCall};
use crate::validate::BodyPlan;

fn decision(verdict: Verdict) -> Decision {
    Decision {
        verdict,
        route: Some("items".into()),
        principal: Some("alice".into()),
        ..Decision::allowed()
    }
}

fn allow() -> Decision {
    decision(Verdict::Allow(Mutations::default()))
}

fn forbidden() -> Denial {
    Denial::new(403, "forbidden", "no")
}

#[test]
fn a_finished_request_bumps_allowed_or_denied_by_reason() {
    assert_eq!(counter(Finished::Allowed), "apiguard.allowed");
    let d = Denial::new(413, "body_too_large", "big");
    assert_eq!(
        counter(Finished::Denied(&d)),
        "apiguard.denied.body_too_large"
    );
}

#[test]
fn the_header_phase_finishes_a_request_unless_its_body_or_global_limits_are_pending() {
    assert_eq!(after_headers(&allow()), Some(Finished::Allowed));
    let denied = decision(Verdict::Deny(forbidden()));
    assert_eq!(after_headers(&denied), Some(Finished::Denied(&forbidden())));

    let mut body = allow();
    body.body = Some(BodyCheck {
        route: 0,
        plan: BodyPlan::Buffer { max_bytes: 10 },
    });
    assert_eq!(after_headers(&body), None);

    let mut global = allow();
    global.global.push(GlobalCall {
        limit: 0,
        kind: CallKind::Limit,
        cluster: "rls".into(),
        message: Vec::new(),
        timeout_ms: 100,
    });
    assert_eq!(after_headers(&global), None);

    // A refusal held for a global lockout's answer is not final yet.
    let mut held = decision(Verdict::Deny(forbidden()));
    held.global = global.global.clone();
    assert_eq!(after_headers(&held), None);

    // A denial is final even with a body check set.
    let mut denied_with_body = decision(Verdict::Deny(forbidden()));
    denied_with_body.body = body.body;
    assert!(matches!(
        after_headers(&denied_with_body),
        Some(Finished::Denied(_))
    ));
}

fn parse(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap()
}

#[test]
fn the_deny_line_names_route_rule_principal_request_id_and_reason() {
    let mut d = decision(Verdict::Deny(forbidden()));
    d.rule = Some("admins-only".into());
    let trail = Trail::take(&mut d, Some("req-1"));
    let (at, line) = deny_log(Some(RawLogLevel::Info), &trail, &forbidden()).unwrap();
    assert_eq!(at, LogAt::Info);
    assert_eq!(
        parse(&line),
        serde_json::json!({
            "apiguard": "deny", "status": 403, "reason": "forbidden", "route": "items",
            "rule": "admins-only", "principal": "alice", "request_id": "req-1",
        })
    );
}

/// A body that fails validation after the header phase authenticated the caller: the line
/// names who sent it (the header phase's principal), and no rule.
#[test]
fn a_body_phase_denial_is_logged_with_the_header_phase_principal() {
    let mut d = allow();
    let trail = Trail::take(&mut d, Some("req-2"));
    let too_large = Denial::new(413, "body_too_large", "big");
    let (_, line) = deny_log(Some(RawLogLevel::Warn), &trail, &too_large).unwrap();
    let line = parse(&line);
    assert_eq!(line["principal"], "alice");
    assert_eq!(line["route"], "items");
    assert_eq!(line["request_id"], "req-2");
    assert_eq!(line["reason"], "body_too_large");
    assert_eq!(line["status"], 413);
    assert_eq!(line["rule"], serde_json::Value::Null);
}

#[test]
fn the_deny_log_level_follows_the_policy_and_off_or_unset_writes_nothing() {
    let trail = Trail::default();
    let d = forbidden();
    assert_eq!(deny_log(None, &trail, &d), None);
    assert_eq!(deny_log(Some(RawLogLevel::Off), &trail, &d), None);
    assert_eq!(
        deny_log(Some(RawLogLevel::Debug), &trail, &d).map(|(at, _)| at),
        Some(LogAt::Debug)
    );
    assert_eq!(
        deny_log(Some(RawLogLevel::Warn), &trail, &d).map(|(at, _)| at),
        Some(LogAt::Warn)
    );
    // Unknown facts are nulls, not omitted.
    let (_, line) = deny_log(Some(RawLogLevel::Info), &trail, &d).unwrap();
    assert_eq!(parse(&line)["principal"], serde_json::Value::Null);
}

#[test]
fn an_http_denial_is_a_problem_reply_and_a_grpc_one_is_trailers_only() {
    let mut d = Denial::new(401, "missing_credentials", "no token");
    d.www_authenticate = Some("Bearer".into());
    let http = local_reply(&d, Some("req-3"), false);
    assert_eq!(http.status, 401);
    assert_eq!(http.grpc_status, None);
    assert_eq!(http.headers, d.response_headers());
    assert_eq!(http.body, d.body(Some("req-3")));

    let grpc = local_reply(&d, Some("req-3"), true);
    assert_eq!(grpc.status, 200);
    assert_eq!(grpc.grpc_status, Some(16)); // UNAUTHENTICATED
    assert_eq!(grpc.body, "");
    assert!(grpc.headers.contains(&("grpc-status".into(), "16".into())));
    assert!(grpc
        .headers
        .contains(&("www-authenticate".into(), "Bearer".into())));
}

#[test]
fn the_decision_record_is_one_line_of_fields() {
    assert_eq!(
        decision_record(&allow()),
        "decision=allow route=items rule=- reason=- principal=alice"
    );
    let mut denied = decision(Verdict::Deny(forbidden()));
    denied.rule = Some("admins only".into());
    denied.principal = Some("eve\nx".into());
    assert_eq!(
        decision_record(&denied),
        "decision=deny route=items rule=admins_only reason=forbidden principal=eve_x"
    );
    let mut audit = allow();
    audit.audit_denied = vec!["shadow-a".into(), "shadow-b".into()];
    audit.principal = Some(String::new());
    audit.route = None;
    assert_eq!(
        decision_record(&audit),
        "decision=audit-deny route=- rule=shadow-a,shadow-b reason=- principal=-"
    );
}
