//! Issue 12 findings 6 and 7: body members that differ only by case, `format` assertion,
//! and query names a lenient binder reads as a ruled one.

use serde_json::{json, Value};

use super::*;

fn compile(v: Value) -> Result<RouteValidation, ConfigErrors> {
    RouteValidation::compile(
        serde_json::from_value(v).unwrap(),
        "routes[0].validate",
        &[],
    )
}

fn first(f: &Failure) -> (&str, &str, &str) {
    let e = &f.errors[0];
    (f.reason, e.pointer.as_str(), e.rule.as_str())
}

fn amount_schema(extra: Value) -> RouteValidation {
    let mut body = json!({"schema": {"type": "object",
        "properties": {"amount": {"type": "integer", "minimum": 0}, "items": {"type": "array"}}}});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    compile(json!({"body": body})).unwrap()
}

#[test]
fn case_variant_members_are_refused_at_every_depth() {
    let v = amount_schema(json!({}));
    assert!(v.check_body(br#"{"amount":5}"#).is_ok());
    for (body, pointer) in [
        (r#"{"amount":5,"AMOUNT":-100}"#, ""),
        (r#"{"amount":5,"Amount":-100}"#, ""),
        (r#"{"items":[{"x":1},{"sku":"a","SKU":"b"}]}"#, "/items/1"),
        (r#"{"a":{"b":{"id":1,"iD":2}}}"#, "/a/b"),
        // Go folds the Kelvin sign to k and the long s to s.
        ("{\"kind\":1,\"\u{212a}ind\":2}", ""),
        ("{\"sum\":1,\"\u{17f}um\":2}", ""),
    ] {
        let f = v.check_body(body.as_bytes()).unwrap_err();
        assert_eq!(
            first(&f),
            ("invalid_body", pointer, "duplicateKeyIgnoringCase"),
            "{body}"
        );
    }
}

#[test]
fn case_variant_members_can_be_allowed_per_route() {
    let v = amount_schema(json!({"allow_case_variant_keys": true}));
    assert!(v.check_body(br#"{"amount":5,"AMOUNT":-100}"#).is_ok());
    // Exact duplicates stay refused whatever the switch says.
    let f = v.check_body(br#"{"amount":5,"amount":-100}"#).unwrap_err();
    assert_eq!(first(&f).2, "duplicateKey");
}

#[test]
fn format_is_an_annotation_unless_asserted() {
    let schema = json!({"type": "object", "properties": {
        "email": {"format": "email"}, "id": {"format": "uuid"}, "at": {"format": "date-time"}}});
    let off = compile(json!({"body": {"schema": schema}})).unwrap();
    let on = compile(json!({"body": {"schema": schema, "format_assertion": true}})).unwrap();
    let bad = br#"{"email":"not-an-email","id":"42","at":"yesterday"}"#;
    assert!(off.check_body(bad).is_ok());
    let f = on.check_body(bad).unwrap_err();
    let mut rules: Vec<_> = f
        .errors
        .iter()
        .map(|e| (e.pointer.as_str(), e.rule.as_str()))
        .collect();
    rules.sort();
    assert_eq!(
        rules,
        vec![("/at", "format"), ("/email", "format"), ("/id", "format")]
    );
    let good = br#"{"email":"a@example.com","id":"0b9f5c3e-9f3c-4c1a-8e39-2f1d6a7b8c9d","at":"2026-11-30T12:00:00Z"}"#;
    assert!(on.check_body(good).is_ok());
}

#[test]
fn format_assertion_refuses_formats_it_cannot_assert() {
    let errs = compile(json!({"body": {"format_assertion": true, "schema": {
        "properties": {"format": {"type": "string"}, "mail": {"format": "e-mail"}},
        "items": {"format": "uuid"}}}}))
    .unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(
        errs[0].path,
        "routes[0].validate.body.schema.properties.mail.format"
    );
    let errs = compile(json!({"body": {"format_assertion": true}})).unwrap_err();
    assert_eq!(errs[0].path, "routes[0].validate.body.format_assertion");
}

fn query(v: &RouteValidation, q: &str) -> Result<BodyPlan, Failure> {
    v.check_head(&[], q, &[], None, Some(0))
}

#[test]
fn query_name_variants_of_a_ruled_name_are_refused() {
    let v = compile(json!({"query": {"limit": {"type": "integer", "maximum": 100}}})).unwrap();
    assert!(query(&v, "limit=5&other=1&Other=2").is_ok());
    for q in [
        "limit=5&LIMIT=1000",
        "LIMIT=1000",
        "limit[]=1000",
        "Limit[0]=1000",
        "lim%49t=1000",
    ] {
        let f = query(&v, q).unwrap_err();
        assert_eq!(
            first(&f),
            ("invalid_query", "query/limit", "nameVariant"),
            "{q}"
        );
    }
    let open = compile(json!({"query": {"limit": {"type": "integer"}},
                              "allow_query_name_variants": true}))
    .unwrap();
    assert!(query(&open, "limit=5&LIMIT=x&limit[]=y").is_ok());
    // reject_unknown_query already refuses them, as unknown names.
    let strict =
        compile(json!({"query": {"limit": {"type": "integer"}}, "reject_unknown_query": true}))
            .unwrap();
    let f = query(&strict, "LIMIT=5").unwrap_err();
    assert_eq!(first(&f), ("invalid_query", "query/LIMIT", "unknown"));
}
