use std::time::Instant;

use serde_json::{json, Value};

use super::*;

fn raw(v: Value) -> RawValidate {
    serde_json::from_value(v).unwrap()
}

fn compile(v: Value) -> RouteValidation {
    RouteValidation::compile(raw(v), "routes[3].validate", &["id".to_string()]).unwrap()
}

fn config_errors(v: Value) -> Vec<(String, String)> {
    pairs(RouteValidation::compile(raw(v), "routes[3].validate", &["id".to_string()]).unwrap_err())
}

fn pairs(errors: ConfigErrors) -> Vec<(String, String)> {
    errors
        .into_vec()
        .into_iter()
        .map(|e| (e.path, e.message))
        .collect()
}

fn paths(errors: &[(String, String)]) -> Vec<&str> {
    errors.iter().map(|(p, _)| p.as_str()).collect()
}

fn h<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    pairs.to_vec()
}

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// `check_head` with only a query string.
fn query(v: &RouteValidation, q: &str) -> Result<BodyPlan, Failure> {
    v.check_head(&[], q, &[], None, Some(0))
}

fn rules(f: &Failure) -> Vec<(&str, &str)> {
    f.errors
        .iter()
        .map(|e| (e.pointer.as_str(), e.rule.as_str()))
        .collect()
}

fn example() -> Value {
    json!({
        "headers": {
            "x-request-id": {"type": "uuid", "required": true},
            "x-debug": {"forbidden": true}
        },
        "query": {
            "limit": {"type": "integer", "minimum": 1, "maximum": 100},
            "sort": {"type": "string", "enum": ["asc", "desc"]}
        },
        "reject_unknown_query": true,
        "path": {"id": {"type": "integer", "minimum": 1}},
        "body": {
            "content_types": ["application/json"],
            "max_bytes": 65536,
            "max_depth": 32,
            "schema": {
                "type": "object",
                "additionalProperties": false,
                "required": ["name"],
                "properties": {"name": {"type": "string", "maxLength": 64}}
            }
        }
    })
}

const UUID: &str = "123e4567-e89b-12d3-a456-426614174000";

fn json_body() -> RouteValidation {
    compile(json!({"body": example()["body"].clone()}))
}

// ---- configuration ------------------------------------------------------------------

#[test]
fn the_documented_example_compiles() {
    let v = compile(example());
    assert!(v.has_body_rule());
    let plan = v
        .check_head(
            &h(&[("x-request-id", UUID)]),
            "limit=10&sort=asc",
            &params(&[("id", "7")]),
            Some("application/json"),
            Some(20),
        )
        .unwrap();
    assert_eq!(plan, BodyPlan::Buffer { max_bytes: 65536 });
    v.check_body(br#"{"name": "widget"}"#).unwrap();
}

#[test]
fn unknown_fields_are_refused_by_the_raw_structs() {
    for bad in [
        json!({"header": {}}),
        json!({"query": {"a": {"typ": "string"}}}),
        json!({"body": {"schemas": {}}}),
        json!({"query": {"a": {"type": "float"}}}),
    ] {
        assert!(serde_json::from_value::<RawValidate>(bad).is_err());
    }
    assert!(serde_json::from_value::<RawLimits>(json!({"max_urls": 1})).is_err());
}

#[test]
fn every_config_error_is_reported_at_once_with_its_json_path() {
    let errors = config_errors(json!({
        "headers": {
            "bad header": {},
            "x-both": {"required": true, "forbidden": true},
            "x-mode": {"type": "enum"},
        },
        "query": {
            "limit": {"type": "integer", "minimum": 10, "maximum": 1},
            "name": {"pattern": "(", "min_length": 5, "max_length": 2},
            "n": {"type": "integer", "enum": [1, "two"]},
            "flag": {"type": "boolean", "maximum": 1},
        },
        "path": {"nope": {"type": "integer"}, "id": {"forbidden": true}},
        "body": {"content_types": ["json"], "max_bytes": 0, "max_depth": 1000,
                 "schema": {"type": "objekt"}},
        "max_errors": 0,
    }));
    let p = paths(&errors);
    for want in [
        "routes[3].validate.max_errors",
        "routes[3].validate.headers.bad header",
        "routes[3].validate.headers.x-both.forbidden",
        "routes[3].validate.headers.x-mode.type",
        "routes[3].validate.query.limit.minimum",
        "routes[3].validate.query.name.pattern",
        "routes[3].validate.query.name.min_length",
        "routes[3].validate.query.n.enum[1]",
        "routes[3].validate.query.flag.maximum",
        "routes[3].validate.path.nope",
        "routes[3].validate.path.id.forbidden",
        "routes[3].validate.body.content_types[0]",
        "routes[3].validate.body.max_bytes",
        "routes[3].validate.body.max_depth",
        "routes[3].validate.body.schema.type",
    ] {
        assert!(p.contains(&want), "missing {want} in {errors:#?}");
    }
}

#[test]
fn schema_errors_point_into_the_schema() {
    let errors = config_errors(json!({"body": {"schema": {
        "properties": {"name": {"type": "string", "maxLength": -1}}
    }}}));
    assert_eq!(
        paths(&errors),
        ["routes[3].validate.body.schema.properties.name.maxLength"]
    );
    let errors = config_errors(json!({"body": {"schema": {
        "properties": {"name": {"pattern": "(unclosed"}}
    }}}));
    assert_eq!(
        paths(&errors),
        ["routes[3].validate.body.schema.properties.name.pattern"]
    );
}

/// The regex engine is built with only the Unicode tables an ECMA-262 pattern can name
/// (vendor/boon/APIGUARD.md): classes by general category, script and binary property,
/// case folding and `\w \d \s` work in schema and parameter patterns alike.
#[test]
fn ecma_unicode_classes_match_in_patterns() {
    let v = compile(json!({"query": {
        "word": {"pattern": "^\\p{L}+$"},
        "greek": {"pattern": "^\\p{Greek}+$"},
        "alpha": {"pattern": "^\\p{Alphabetic}+$"},
    }}));
    // "été", "αβ", "Ωé"
    query(
        &v,
        "word=%C3%A9t%C3%A9&greek=%CE%B1%CE%B2&alpha=%CE%A9%C3%A9",
    )
    .unwrap();
    assert_eq!(
        rules(&query(&v, "word=a1&greek=ab&alpha=a-").unwrap_err()),
        [
            ("query/alpha", "pattern"),
            ("query/greek", "pattern"),
            ("query/word", "pattern")
        ]
    );
    let body = compile(json!({"body": {"schema": {
        "properties": {"name": {"pattern": "^\\w+\\d$"}}
    }}}));
    body.check_body(br#"{"name": "abc2"}"#).unwrap();
    // ECMA-262's `\w` is ASCII (boon translates it so): "é2" does not match.
    assert!(body.check_body("{\"name\": \"é2\"}".as_bytes()).is_err());
}

#[test]
fn schemas_are_never_fetched() {
    for target in [
        "https://example.com/s.json",
        "file:///etc/passwd",
        "other.json",
    ] {
        let errors = config_errors(json!({"body": {"schema": {"$ref": target}}}));
        assert_eq!(
            paths(&errors),
            ["routes[3].validate.body.schema"],
            "{target}"
        );
        assert!(errors[0].1.contains("never fetched"), "{errors:?}");
    }
}

#[test]
fn preloaded_resources_resolve_refs() {
    let shared = vec![(
        "https://schemas.example/name.json".to_string(),
        json!({"type": "string", "minLength": 2}),
    )];
    let v = RouteValidation::compile_with_resources(
        raw(json!({"body": {"schema": {"properties": {
            "name": {"$ref": "https://schemas.example/name.json"}
        }}}})),
        "r",
        &[],
        &shared,
    )
    .unwrap();
    v.check_body(br#"{"name": "ok"}"#).unwrap();
    let f = v.check_body(br#"{"name": "x"}"#).unwrap_err();
    assert_eq!(rules(&f), [("/name", "minLength")]);
}

#[test]
fn header_names_ignore_case_and_may_not_repeat() {
    let v = compile(json!({"headers": {"X-Tenant": {"required": true}}}));
    v.check_head(&h(&[("x-tenant", "a")]), "", &[], None, Some(0))
        .unwrap();
    let errors = config_errors(json!({"headers": {"X-A": {}, "x-a": {}}}));
    assert_eq!(errors.len(), 1);
}

#[test]
fn limits_compile_and_refuse_zero() {
    let errors = Limits::compile(
        serde_json::from_value(json!({"max_url_bytes": 0, "max_headers": 0})).unwrap(),
        "limits",
    )
    .unwrap_err();
    assert_eq!(
        paths(&pairs(errors)),
        ["limits.max_url_bytes", "limits.max_headers"]
    );
}

// ---- parameters ---------------------------------------------------------------------

#[test]
fn required_and_forbidden_headers() {
    let v = compile(example());
    let f = v
        .check_head(
            &h(&[("x-debug", "1")]),
            "",
            &params(&[("id", "1")]),
            None,
            Some(0),
        )
        .unwrap_err();
    assert_eq!(f.status, 400);
    assert_eq!(f.reason, "invalid_header");
    assert_eq!(
        rules(&f),
        [
            ("header/x-debug", "forbidden"),
            ("header/x-request-id", "required")
        ]
    );
}

#[test]
fn uuid_headers() {
    let v = compile(json!({"headers": {"x-request-id": {"type": "uuid"}}}));
    for ok in [UUID, "123E4567-E89B-12D3-A456-426614174000"] {
        v.check_head(&h(&[("x-request-id", ok)]), "", &[], None, Some(0))
            .unwrap();
    }
    for bad in [
        "",
        "123e4567e89b12d3a456426614174000",
        "123e4567-e89b-12d3-a456-42661417400g",
    ] {
        let f = v
            .check_head(&h(&[("x-request-id", bad)]), "", &[], None, Some(0))
            .unwrap_err();
        assert_eq!(rules(&f), [("header/x-request-id", "type")], "{bad}");
    }
}

#[test]
fn repeated_parameters_are_refused_unless_allowed() {
    let v = compile(
        json!({"headers": {"x-a": {}}, "query": {"tag": {"allow_repeated": true, "enum": ["a", "b"]}, "limit": {"type": "integer"}}}),
    );
    let f = v
        .check_head(&h(&[("x-a", "1"), ("x-a", "2")]), "", &[], None, Some(0))
        .unwrap_err();
    assert_eq!(rules(&f), [("header/x-a", "repeated")]);
    query(&v, "tag=a&tag=b").unwrap();
    let f = query(&v, "tag=a&tag=c").unwrap_err();
    assert_eq!(rules(&f), [("query/tag", "enum")]);
    let f = query(&v, "limit=1&limit=1000").unwrap_err();
    assert_eq!(rules(&f), [("query/limit", "repeated")]);
}

#[test]
fn integer_parameters() {
    let v = compile(json!({"query": {"limit": {"type": "integer", "minimum": 1, "maximum": 100}}}));
    for ok in ["", "limit=1", "limit=100", "limit=42"] {
        query(&v, ok).unwrap();
    }
    for (bad, rule) in [
        ("limit=0", "minimum"),
        ("limit=101", "maximum"),
        ("limit=-5", "minimum"),
        ("limit=abc", "type"),
        ("limit=05", "type"),
        ("limit=%2B5", "type"),
        ("limit=1.0", "type"),
        ("limit=", "type"),
        ("limit=99999999999999999999999", "maximum"),
        ("limit=-99999999999999999999999", "minimum"),
        ("limit=9223372036854775807", "maximum"),
    ] {
        let f = query(&v, bad).unwrap_err();
        assert_eq!(f.reason, "invalid_query");
        assert_eq!(rules(&f), [("query/limit", rule)], "{bad}");
    }
}

#[test]
fn integers_beyond_64_bits_are_integers() {
    // OpenAPI `type: integer` without bounds has no range: a huge value is valid.
    let v = compile(
        json!({"query": {"n": {"type": "integer"}, "m": {"type": "integer", "enum": [1]}}}),
    );
    query(&v, "n=99999999999999999999999").unwrap();
    query(&v, "n=-99999999999999999999999").unwrap();
    for bad in [
        "n=099999999999999999999",
        "n=1e30",
        "n=99999999999999999999.0",
    ] {
        assert_eq!(
            rules(&query(&v, bad).unwrap_err()),
            [("query/n", "type")],
            "{bad}"
        );
    }
    assert_eq!(
        rules(&query(&v, "m=99999999999999999999999").unwrap_err()),
        [("query/m", "enum")]
    );
}

#[test]
fn integer_bounds_compare_exactly() {
    let v = compile(
        json!({"query": {"n": {"type": "integer", "minimum": 1.5, "maximum": 9007199254740993.0}}}),
    );
    query(&v, "n=2").unwrap();
    assert_eq!(
        rules(&query(&v, "n=1").unwrap_err()),
        [("query/n", "minimum")]
    );
    // 2^53 + 1 is not representable: the bound is 2^53, and 2^53 + 1 is above it.
    query(&v, "n=9007199254740992").unwrap();
    assert_eq!(
        rules(&query(&v, "n=9007199254740993").unwrap_err()),
        [("query/n", "maximum")]
    );
}

#[test]
fn number_parameters() {
    let v = compile(json!({"query": {"x": {"type": "number", "minimum": -1.5, "maximum": 1e3}}}));
    for ok in ["x=0", "x=-1.5", "x=1e3", "x=0.25", "x=1E-2"] {
        query(&v, ok).unwrap();
    }
    for (bad, rule) in [
        ("x=inf", "type"),
        ("x=NaN", "type"),
        ("x=.5", "type"),
        ("x=5.", "type"),
        ("x=1e400", "type"),
        ("x=0x10", "type"),
        ("x=1001", "maximum"),
        ("x=-2", "minimum"),
    ] {
        assert_eq!(
            rules(&query(&v, bad).unwrap_err()),
            [("query/x", rule)],
            "{bad}"
        );
    }
}

#[test]
fn boolean_parameters() {
    let v = compile(json!({"query": {"b": {"type": "boolean"}}}));
    query(&v, "b=true").unwrap();
    query(&v, "b=false").unwrap();
    for bad in ["b=True", "b=1", "b=yes", "b="] {
        assert_eq!(rules(&query(&v, bad).unwrap_err()), [("query/b", "type")]);
    }
}

#[test]
fn enum_parameters() {
    let v = compile(json!({"query": {
        "sort": {"type": "string", "enum": ["asc", "desc"]},
        "mode": {"enum": ["fast", "slow"]},
        "page": {"type": "integer", "enum": [1, 2, 3]},
    }}));
    query(&v, "sort=asc&mode=slow&page=3").unwrap();
    for (bad, ptr) in [
        ("sort=ASC", "query/sort"),
        ("mode=x", "query/mode"),
        ("page=4", "query/page"),
    ] {
        assert_eq!(rules(&query(&v, bad).unwrap_err()), [(ptr, "enum")]);
    }
    assert_eq!(
        rules(&query(&v, "page=x").unwrap_err()),
        [("query/page", "type")]
    );
}

#[test]
fn patterns_search_like_json_schema() {
    let v = compile(json!({"query": {
        "loose": {"pattern": "[0-9]"},
        "strict": {"pattern": "^[0-9]+$"},
    }}));
    query(&v, "loose=a1b&strict=123").unwrap();
    assert_eq!(
        rules(&query(&v, "strict=a1").unwrap_err()),
        [("query/strict", "pattern")]
    );
    assert_eq!(
        rules(&query(&v, "loose=ab").unwrap_err()),
        [("query/loose", "pattern")]
    );
}

#[test]
fn lengths_count_characters() {
    let v = compile(json!({"query": {"s": {"min_length": 2, "max_length": 3}}}));
    query(&v, "s=%C3%A9%C3%A9%C3%A9").unwrap(); // "ééé": 3 characters, 6 bytes
    assert_eq!(
        rules(&query(&v, "s=a").unwrap_err()),
        [("query/s", "minLength")]
    );
    assert_eq!(
        rules(&query(&v, "s=abcd").unwrap_err()),
        [("query/s", "maxLength")]
    );
}

#[test]
fn query_strings_are_form_decoded() {
    let v = compile(json!({"query": {"q": {"enum": ["a b"]}}, "reject_unknown_query": true}));
    query(&v, "q=a+b").unwrap();
    query(&v, "q=a%20b&").unwrap();
    let f = query(&v, "q=a%zzb").unwrap_err();
    assert_eq!(rules(&f), [("query", "encoding")]);
    let f = query(&v, "q=a%FFb").unwrap_err();
    assert_eq!(f.errors[0].rule, "encoding");
}

#[test]
fn unknown_query_parameters() {
    let v = compile(json!({"query": {"a": {}}, "reject_unknown_query": true}));
    query(&v, "a=1").unwrap();
    let f = query(&v, "a=1&b=2&b=3&c").unwrap_err();
    assert_eq!(rules(&f), [("query/b", "unknown"), ("query/c", "unknown")]);
    // Without the flag, undeclared parameters pass.
    query(&compile(json!({"query": {"a": {}}})), "b=2").unwrap();
}

#[test]
fn path_parameters_are_decoded_and_typed() {
    let v = compile(json!({"path": {"id": {"type": "integer", "minimum": 1}}}));
    let head = |id: &str| v.check_head(&[], "", &params(&[("id", id)]), None, Some(0));
    head("42").unwrap();
    head("%34%32").unwrap();
    for (bad, rule) in [
        ("0", "minimum"),
        ("abc", "type"),
        ("%4", "encoding"),
        ("%C3", "encoding"),
    ] {
        let f = head(bad).unwrap_err();
        assert_eq!(f.reason, "invalid_path_param");
        assert_eq!(rules(&f), [("path/id", rule)], "{bad}");
    }
}

#[test]
fn errors_from_all_parameter_kinds_come_together() {
    let v = compile(example());
    let f = v
        .check_head(&[], "limit=0&zzz=1", &params(&[("id", "x")]), None, Some(0))
        .unwrap_err();
    assert_eq!(f.reason, "invalid_header");
    assert_eq!(
        rules(&f),
        [
            ("header/x-request-id", "required"),
            ("path/id", "type"),
            ("query/limit", "minimum"),
            ("query/zzz", "unknown"),
        ]
    );
}

#[test]
fn errors_are_capped() {
    let mut q = serde_json::Map::new();
    for i in 0..30 {
        q.insert(format!("p{i:02}"), json!({"required": true}));
    }
    let v = compile(json!({"query": q.clone()}));
    assert_eq!(query(&v, "").unwrap_err().errors.len(), DEFAULT_MAX_ERRORS);
    let v = compile(json!({"query": q, "max_errors": 3}));
    assert_eq!(query(&v, "").unwrap_err().errors.len(), 3);
}

#[test]
fn request_values_are_never_echoed() {
    let long = "Z".repeat(10_000);
    let v = compile(json!({
        "query": {"limit": {"type": "integer"}, "s": {"max_length": 3, "pattern": "^a"}},
        "reject_unknown_query": true,
    }));
    let f = query(&v, &format!("limit={long}&s={long}&{long}=1")).unwrap_err();
    for e in &f.errors {
        assert!(!e.message.contains("ZZ"), "{e:?}");
        assert!(e.pointer.len() < 100, "{e:?}");
    }
    let v = json_body();
    let body = format!(r#"{{"name": "{long}", "{long}": 1}}"#);
    let f = v.check_body(body.as_bytes()).unwrap_err();
    assert_eq!(f.errors.len(), 2);
    for e in &f.errors {
        assert!(!e.message.contains("ZZ"), "{e:?}");
        assert!(e.pointer.len() < 100, "{e:?}");
    }
}

// ---- body at request headers --------------------------------------------------------

#[test]
fn routes_without_a_body_rule_never_buffer() {
    let v = compile(json!({"query": {"a": {}}}));
    assert!(!v.has_body_rule());
    for len in [None, Some(0), Some(10_000_000)] {
        let plan = v.check_head(&[], "", &[], Some("text/plain"), len).unwrap();
        assert_eq!(plan, BodyPlan::Skip);
    }
    v.check_body(b"not json at all").unwrap();
}

#[test]
fn media_types_ignore_parameters_and_case() {
    let v = json_body();
    for ct in [
        "application/json",
        "Application/JSON; charset=utf-8",
        " application/json ;x=y",
    ] {
        v.check_head(&[], "", &[], Some(ct), Some(10)).unwrap();
    }
    for ct in [Some("text/plain"), Some("application/jsonx"), None] {
        let f = v.check_head(&[], "", &[], ct, Some(10)).unwrap_err();
        assert_eq!(
            (f.status, f.reason),
            (415, "unsupported_media_type"),
            "{ct:?}"
        );
        assert_eq!(rules(&f), [("header/content-type", "contentType")]);
    }
}

#[test]
fn a_schema_alone_accepts_json_media_types() {
    let v = compile(json!({"body": {"schema": true}}));
    for ct in [
        "application/json",
        "application/problem+json",
        "application/merge-patch+json",
    ] {
        let plan = v.check_head(&[], "", &[], Some(ct), None).unwrap();
        assert_eq!(
            plan,
            BodyPlan::Buffer {
                max_bytes: DEFAULT_MAX_BODY_BYTES
            }
        );
    }
    let f = v
        .check_head(&[], "", &[], Some("text/json+xml"), None)
        .unwrap_err();
    assert_eq!(f.status, 415);
}

#[test]
fn announced_length_over_the_limit_is_413() {
    let v = json_body();
    let f = v
        .check_head(&[], "", &[], Some("text/plain"), Some(65537))
        .unwrap_err();
    assert_eq!((f.status, f.reason), (413, "body_too_large"));
    assert_eq!(rules(&f), [("header/content-length", "maxBytes")]);
    v.check_head(&[], "", &[], Some("application/json"), Some(65536))
        .unwrap();
}

#[test]
fn empty_bodies() {
    let v = json_body();
    let f = v.check_head(&[], "", &[], None, Some(0)).unwrap_err();
    assert_eq!((f.status, f.reason), (400, "invalid_body"));
    assert_eq!(rules(&f), [("", "required")]);
    assert_eq!(v.check_body(b"").unwrap_err().errors[0].rule, "required");
    let v = compile(json!({"body": {"schema": true, "required": false}}));
    assert_eq!(
        v.check_head(&[], "", &[], None, Some(0)).unwrap(),
        BodyPlan::Skip
    );
    v.check_body(b"").unwrap();
}

#[test]
fn size_only_rules_stream() {
    let v = compile(json!({"body": {"max_bytes": 100}}));
    assert_eq!(
        v.check_head(&[], "", &[], None, None).unwrap(),
        BodyPlan::Limit { max_bytes: 100 }
    );
    assert_eq!(
        v.check_head(&[], "", &[], None, Some(100)).unwrap(),
        BodyPlan::Skip
    );
    v.check_body_size(100).unwrap();
    let f = v.check_body_size(101).unwrap_err();
    assert_eq!((f.status, f.reason), (413, "body_too_large"));
    let v = compile(json!({"body": {"content_types": ["application/x-www-form-urlencoded"]}}));
    assert_eq!(
        v.check_head(
            &[],
            "",
            &[],
            Some("application/x-www-form-urlencoded"),
            None
        )
        .unwrap(),
        BodyPlan::Skip
    );
}

// ---- body ---------------------------------------------------------------------------

#[test]
fn schema_errors_name_the_offending_value() {
    let v = json_body();
    v.check_body(br#"{"name": "x"}"#).unwrap();
    let f = v.check_body(br#"{"name": 5, "extra": true}"#).unwrap_err();
    assert_eq!((f.status, f.reason), (400, "invalid_body"));
    assert_eq!(
        rules(&f),
        [("/name", "type"), ("/extra", "additionalProperties")]
    );
    assert_eq!(f.errors[0].message, "must be string, not number");
    let f = v.check_body(b"{}").unwrap_err();
    assert_eq!(rules(&f), [("/name", "required")]);
    let f = v.check_body(br#"{"name": ""}"#.as_slice()).map(|_| ());
    assert!(f.is_ok());
    let long = format!(r#"{{"name": "{}"}}"#, "a".repeat(65));
    assert_eq!(
        rules(&v.check_body(long.as_bytes()).unwrap_err()),
        [("/name", "maxLength")]
    );
}

#[test]
fn nested_pointers_and_combinators() {
    let v = compile(json!({"body": {"schema": {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}},
            "id": {"anyOf": [{"type": "integer"}, {"type": "string", "format": "uuid"}]},
        },
        "$defs": {"item": {"type": "object", "properties": {"a/b": {"minimum": 0}}}},
    }}}));
    let f = v
        .check_body(br#"{"items": [{"a/b": 1}, {"a/b": -1}], "id": 1.5}"#)
        .unwrap_err();
    assert_eq!(rules(&f), [("/id", "anyOf"), ("/items/1/a~1b", "minimum")]);
}

#[test]
fn body_over_the_limit_is_413() {
    let v = compile(json!({"body": {"schema": true, "max_bytes": 10}}));
    let f = v.check_body(b"[1,2,3,4,5,6]").unwrap_err();
    assert_eq!((f.status, f.reason), (413, "body_too_large"));
}

#[test]
fn invalid_utf8_and_syntax_are_400() {
    let v = json_body();
    for (body, rule) in [
        (b"{\"name\": \"\xff\"}".as_slice(), "encoding"),
        (b"\xef\xbb\xbf{\"name\": \"x\"}", "syntax"), // a BOM
        (b"{\"name\": \"x\"", "syntax"),
        (b"{\"name\": \"x\"} {}", "syntax"),
        (b"{'name': 'x'}", "syntax"),
        (b"{\"name\": \"\\ud800\"}", "syntax"), // lone surrogate
        (b"   ", "syntax"),
    ] {
        let f = v.check_body(body).unwrap_err();
        assert_eq!((f.status, f.reason), (400, "invalid_body"));
        assert_eq!(rules(&f), [("", rule)], "{}", String::from_utf8_lossy(body));
    }
}

#[test]
fn duplicate_keys_are_refused() {
    let v = compile(json!({"body": {"schema": true}}));
    for body in [
        r#"{"a": 1, "a": 2}"#,
        r#"{"x": [{"b": 1, "c": 2, "b": 3}]}"#,
        r#"{"a": 1, "\u0061": 2}"#,
    ] {
        let f = v.check_body(body.as_bytes()).unwrap_err();
        assert_eq!(
            (f.reason, f.errors[0].rule.as_str()),
            ("invalid_body", "duplicateKey"),
            "{body}"
        );
    }
    v.check_body(br#"{"a": {"a": 1}, "b": [{"a": 1}, {"a": 2}]}"#)
        .unwrap();
}

#[test]
fn depth_is_limited_before_parsing() {
    let v = compile(json!({"body": {"max_depth": 3}}));
    v.check_body(br#"{"a": [{"b": 1}]}"#).unwrap();
    // Brackets inside strings, escaped quotes included, do not count.
    v.check_body(br#"{"a": "[[[[\"{{{{", "b": ["\\"]}"#)
        .unwrap();
    let f = v.check_body(br#"{"a": [{"b": []}]}"#).unwrap_err();
    assert_eq!((f.status, f.reason), (400, "too_deep"));
    assert_eq!(rules(&f), [("", "maxDepth")]);
    // No schema but a depth: the body is still parsed, so syntax is checked.
    assert_eq!(v.check_body(b"{").unwrap_err().reason, "invalid_body");
}

#[test]
fn a_very_deep_body_is_refused_quickly_without_recursion() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let v = compile(json!({"body": {"schema": true, "max_depth": MAX_MAX_DEPTH}}));
    let start = Instant::now();
    let f = v.check_body(deep.as_bytes()).unwrap_err();
    assert_eq!(f.reason, "too_deep");
    assert!(start.elapsed().as_millis() < 100);
    assert!(exceeds_depth_unclosed());
    // The deepest allowed document parses and validates.
    let max = MAX_MAX_DEPTH as usize;
    let ok = format!("{}{}", "[".repeat(max), "]".repeat(max));
    v.check_body(ok.as_bytes()).unwrap();
}

fn exceeds_depth_unclosed() -> bool {
    body::exceeds_depth("{\"a\":".repeat(200_000).as_bytes(), 64)
}

#[test]
fn serde_json_alone_errors_rather_than_overflowing() {
    // The backstop behind the parse's own depth limit: serde_json's recursion limit (128) is an error.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(serde_json::from_str::<Value>(&deep).is_err());
    let at_limit = format!("{}{}", "[".repeat(128), "]".repeat(128));
    assert!(serde_json::from_str::<Value>(&at_limit).is_err());
    let errors = config_errors(json!({"body": {"max_depth": MAX_MAX_DEPTH + 1}}));
    assert_eq!(paths(&errors), ["routes[3].validate.body.max_depth"]);
}

#[test]
fn huge_numbers() {
    let v = compile(json!({"body": {"schema": {"type": "integer", "maximum": 1e20}}}));
    v.check_body(b"100").unwrap();
    // Beyond u64: parsed as a float, still an integer by value (JSON Schema semantics).
    v.check_body(b"12345678901234567890").unwrap();
    let f = v.check_body(b"123456789012345678901234567890").unwrap_err();
    assert_eq!(rules(&f), [("", "maximum")]);
    // Beyond f64: refused by the parser, and fast, however many digits.
    for body in [
        "1e400".to_string(),
        "-1e400".to_string(),
        "9".repeat(100_000),
    ] {
        let start = Instant::now();
        let f = v.check_body(body.as_bytes()).unwrap_err();
        assert_eq!(
            (f.reason, f.errors[0].rule.as_str()),
            ("invalid_body", "syntax")
        );
        assert!(start.elapsed().as_millis() < 200);
    }
    let f = v.check_body(b"1.5").unwrap_err();
    assert_eq!(rules(&f), [("", "type")]);
    v.check_body(b"1.0").unwrap();
}

#[test]
fn body_errors_are_capped() {
    let props: Vec<String> = (0..40).map(|i| format!("p{i:02}")).collect();
    let v = compile(json!({"body": {"schema": {"required": props}}, "max_errors": 4}));
    assert_eq!(v.check_body(b"{}").unwrap_err().errors.len(), 4);
}

#[test]
fn failure_helpers() {
    let f = json_body().check_body(b"{}").unwrap_err();
    assert_eq!(f.detail(), "the request body is invalid");
    assert_eq!(
        f.errors_json(),
        json!([{"pointer": "/name", "rule": "required", "message": "is required"}])
    );
}

// ---- global limits ------------------------------------------------------------------

#[test]
fn global_limits() {
    let limits = Limits::compile(
        serde_json::from_value(
            json!({"max_url_bytes": 20, "max_headers": 2, "max_header_bytes": 16}),
        )
        .unwrap(),
        "limits",
    )
    .unwrap();
    let ok = h(&[(":path", "/a"), (":method", "GET"), ("a", "1"), ("b", "2")]);
    limits.check("/a?b=c", &ok).unwrap();
    let f = limits
        .check(&format!("/{}", "a".repeat(20)), &ok)
        .unwrap_err();
    assert_eq!((f.status, f.reason), (414, "url_too_long"));
    let three = h(&[("a", "1"), ("b", "2"), ("c", "3")]);
    let f = limits.check("/", &three).unwrap_err();
    assert_eq!((f.status, f.reason), (431, "too_many_headers"));
    let big = h(&[("cookie", "0123456789a")]);
    let f = limits.check("/", &big).unwrap_err();
    assert_eq!((f.status, f.reason), (431, "header_too_large"));
    assert_eq!(rules(&f), [("header/cookie", "maxHeaderBytes")]);
    Limits::default()
        .check(&"x".repeat(100_000), &three)
        .unwrap();
}

// ---- cost ---------------------------------------------------------------------------

/// Prints the per-request cost of `check_body` on a ~1 KB body with a realistic schema
/// (`cargo test --release validate::tests::cost -- --nocapture`).
#[test]
fn cost_of_validating_a_1kb_body() {
    let v = compile(json!({"body": {"max_depth": 16, "schema": {
        "type": "object",
        "additionalProperties": false,
        "required": ["id", "customer", "items"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "customer": {
                "type": "object",
                "required": ["name", "email"],
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 64},
                    "email": {"type": "string", "pattern": "^[^@]+@[^@]+$"},
                    "tags": {"type": "array", "items": {"type": "string", "enum": ["vip", "new", "b2b"]}},
                },
            },
            "items": {
                "type": "array", "maxItems": 50,
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["sku", "qty", "price"],
                    "properties": {
                        "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                        "qty": {"type": "integer", "minimum": 1, "maximum": 1000},
                        "price": {"type": "number", "exclusiveMinimum": 0},
                        "note": {"type": "string", "maxLength": 200},
                    },
                },
            },
        },
    }}}));
    let items: Vec<Value> = (0..13)
        .map(|i| json!({"sku": format!("ABC-{:04}", 1000 + i), "qty": i + 1, "price": 9.99 + i as f64, "note": "gift wrap please"}))
        .collect();
    let body = serde_json::to_vec(&json!({
        "id": UUID,
        "customer": {"name": "Ada Lovelace", "email": "ada@example.com", "tags": ["vip", "b2b"]},
        "items": items,
    }))
    .unwrap();
    assert!((900..=1200).contains(&body.len()), "{}", body.len());
    v.check_body(&body).unwrap();
    let n = 2000;
    let start = Instant::now();
    for _ in 0..n {
        v.check_body(&body).unwrap();
    }
    let per = start.elapsed() / n;
    println!(
        "check_body on a {} byte body: {per:?} per request",
        body.len()
    );
    assert!(per.as_millis() < 5);
}

// ---- robustness ---------------------------------------------------------------------

#[test]
fn the_deepest_body_validates_against_a_recursive_schema_on_a_small_stack() {
    // Debug frames are several times the wasm release ones (depth 64 here needs ~2.3 MiB
    // in debug, under 256 KiB in wasm): this proves the recursion is bounded, not the size.
    let v = compile(json!({"body": {"max_depth": MAX_MAX_DEPTH, "schema": {
        "anyOf": [
            {"type": "array", "items": {"$ref": "#"}},
            {"type": "object", "additionalProperties": {"$ref": "#"}},
            {"type": "integer"},
        ]
    }}}));
    let max = MAX_MAX_DEPTH as usize;
    let arrays = format!("{}1{}", "[".repeat(max), "]".repeat(max));
    let objects = format!("{}1{}", r#"{"a":"#.repeat(max), "}".repeat(max));
    let bad = format!("{}\"x\"{}", "[".repeat(max), "]".repeat(max));
    let check = move || {
        v.check_body(arrays.as_bytes()).unwrap();
        v.check_body(objects.as_bytes()).unwrap();
        assert_eq!(
            v.check_body(bad.as_bytes()).unwrap_err().reason,
            "invalid_body"
        );
    };
    // As Wasm (`make unit-wasm`, release frames) this runs on the module's own 1 MiB stack,
    // the one Envoy gives it: the real bound. Natively, a 4 MiB thread absorbs debug frames.
    #[cfg(target_arch = "wasm32")]
    check();
    #[cfg(not(target_arch = "wasm32"))]
    std::thread::Builder::new()
        .stack_size(4 << 20)
        .spawn(check)
        .unwrap()
        .join()
        .unwrap();
}

mod no_panics {
    use super::*;
    use proptest::prelude::*;

    fn route() -> RouteValidation {
        compile(json!({
            "headers": {"x-a": {"type": "uuid"}, "x-n": {"type": "number", "maximum": 5}},
            "query": {"i": {"type": "integer", "minimum": -3, "maximum": 3}, "s": {"pattern": "^a", "max_length": 4}, "e": {"enum": [1, "b", true]}},
            "reject_unknown_query": true,
            "path": {"id": {"type": "integer"}},
            "body": {"max_depth": 8, "schema": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "integer"}}, "patternProperties": {"^p": {"minLength": 2}}}},
        }))
    }

    proptest! {
        #[test]
        fn check_head_never_panics(q in ".{0,40}", id in ".{0,10}", a in ".{0,40}", n in "[-+.e0-9a-z]{0,10}", ct in proptest::option::of(".{0,30}"), len in proptest::option::of(0u64..2_000_000)) {
            let v = route();
            let _ = v.check_head(&h(&[("x-a", &a), ("x-n", &n)]), &q, &params(&[("id", &id)]), ct.as_deref(), len);
        }

        #[test]
        fn check_body_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = route().check_body(&body);
        }

        #[test]
        fn check_body_never_panics_on_near_json(body in r#"[\[\]{}",:0-9a-z\\ .eE+-]{0,120}"#) {
            let _ = route().check_body(body.as_bytes());
        }
    }
}
