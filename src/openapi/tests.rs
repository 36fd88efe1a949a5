#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use super::*;
use crate::policy::Policy;

const KEY_K: &str = "YXBpZ3VhcmQtdW5pdC10ZXN0cy1obWFjLWtleS0zMmI";

fn spec() -> Value {
    json!({
        "openapi": "3.0.3",
        "servers": [{"url": "https://{host}/api/v1", "variables": {"host": {"default": "x"}}}],
        "security": [{"oauth": ["items:read"]}],
        "paths": {
            "/items/{id}": {
                "parameters": [{"$ref": "#/components/parameters/Id"}],
                "get": {"operationId": "getItem",
                        "parameters": [{"name": "X-Request-Id", "in": "header", "required": true,
                                        "schema": {"type": "string", "format": "uuid"}},
                                       {"name": "sid", "in": "cookie", "schema": {"type": "string"}}]},
                "put": {"operationId": "putItem", "security": [{"oauth": ["items:write"]}],
                        "requestBody": {"$ref": "#/components/requestBodies/Item"}}
            },
            "/items/mine": {"get": {"operationId": "myItems", "security": [{"key": []}]}},
            "/health": {"get": {"security": [], "responses": {"200": {"description": "ok"}}}},
            "/loop": {"$ref": "#/paths/~1loop"}
        },
        "components": {
            "parameters": {"Id": {"name": "id", "in": "path", "required": true,
                                  "schema": {"type": "integer", "minimum": 1}}},
            "requestBodies": {"Item": {"required": true, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Item"}}}}},
            "schemas": {"Item": {"type": "object", "required": ["name"], "additionalProperties": false,
                                 "properties": {"name": {"type": "string", "nullable": true},
                                                "parent": {"$ref": "#/components/schemas/Item"}}}},
            "securitySchemes": {
                "oauth": {"type": "oauth2", "flows": {}},
                "key": {"type": "apiKey", "in": "header", "name": "X-Api-Key"}}
        }
    })
}

fn overlay() -> Value {
    json!({
        "providers": [{"name": "corp", "issuer": "https://idp", "jwks": {"inline": {"keys": [
            {"kty": "oct", "kid": "k1", "alg": "HS256", "k": KEY_K}]}}}],
        "api_keys": [{"name": "key", "keys": [{"client_id": "a", "sha256": "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"}]}],
        "routes": [{"name": "putItem", "limits": []}]
    })
}

fn route<'a>(policy: &'a Value, name: &str) -> &'a Value {
    policy["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap()
}

#[test]
fn imports_a_description_into_a_policy_the_filter_loads() {
    let out = import(&spec(), Some(&overlay())).unwrap();
    Policy::try_from(out.policy.clone()).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(out.operations, 4);
    assert_eq!(out.routes, 4);
    let p = &out.policy;
    // Literal /items/mine before the template /items/{id}; base path from the server URL.
    let paths: Vec<&str> = p["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["match"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        vec![
            "/api/v1/health",
            "/api/v1/items/mine",
            "/api/v1/items/{id}",
            "/api/v1/items/{id}"
        ]
    );
    let get = route(p, "getItem");
    assert_eq!(get["providers"], json!(["corp"]));
    assert_eq!(get["scopes"], json!({"all_of": ["items:read"]}));
    assert_eq!(
        get["validate"]["path"]["id"],
        json!({"type": "integer", "minimum": 1.0})
    );
    assert_eq!(
        get["validate"]["headers"]["x-request-id"],
        json!({"type": "uuid", "required": true})
    );
    let put = route(p, "putItem");
    assert_eq!(put["scopes"], json!({"all_of": ["items:write"]}));
    assert_eq!(put["limits"], json!([]));
    let body = &put["validate"]["body"];
    assert_eq!(body["required"], json!(true));
    assert_eq!(
        body["schema"]["$defs"]["Item"]["properties"]["name"]["type"],
        json!(["string", "null"])
    );
    assert_eq!(route(p, "GET /health")["public"], json!(true));
    assert_eq!(route(p, "myItems")["providers"], json!(["key"]));
    assert_eq!(p["api_keys"][0]["from"], json!([{"header": "X-Api-Key"}]));
}

#[test]
fn what_is_not_enforced_is_reported_with_operation_and_pointer() {
    let out = import(&spec(), Some(&overlay())).unwrap();
    let cookie = out
        .notes
        .iter()
        .find(|n| n.message.contains("cookie"))
        .unwrap();
    assert_eq!(cookie.operation, "GET /items/{id} (getItem)");
    assert_eq!(cookie.pointer, "#/paths/~1items~1{id}/get/parameters/1");
    let looped = out.notes.iter().find(|n| n.operation == "/loop").unwrap();
    assert!(looped.message.contains("cycle"), "{looped:?}");
}

#[test]
fn schemes_without_overlay_material_are_errors() {
    let errors = import(&spec(), None).unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("oauth:")));
    assert!(errors
        .iter()
        .any(|e| e.contains("api_keys set named `key`")));
}

#[test]
fn swagger_and_unknown_versions_are_refused() {
    assert!(import(&json!({"swagger": "2.0"}), None).unwrap_err()[0].contains("Swagger 2.0"));
    assert!(import(&json!({"openapi": "4.0.0"}), None).is_err());
    assert!(import(&json!({}), None).is_err());
}

#[test]
fn a_body_schema_the_filter_refuses_is_dropped_with_a_note() {
    let s = json!({"openapi": "3.1.0", "paths": {"/x": {"post": {"requestBody": {"content": {
        "application/json": {"schema": {"type": "object", "minProperties": "three"}}}}}}}});
    let out = import(&s, None).unwrap();
    Policy::try_from(out.policy.clone()).unwrap();
    let r = &out.policy["routes"][0];
    assert!(r["validate"]["body"].get("schema").is_none());
    assert!(out.notes.iter().any(|n| n.message == "body schema dropped"));
}

#[test]
fn unroutable_paths_are_skipped_with_a_note() {
    let s =
        json!({"openapi": "3.0.0", "paths": {"/v1/{+name}": {"get": {}}, "/a/../b": {"get": {}}}});
    let out = import(&s, None).unwrap();
    assert_eq!((out.operations, out.routes), (2, 0));
    assert_eq!(out.notes.len(), 2);
}

#[test]
fn yaml_documents_with_numeric_keys_parse() {
    let v = parse_document("openapi: 3.0.0\npaths:\n  /x:\n    get:\n      responses:\n        200: {description: ok}\n").unwrap();
    assert_eq!(
        v["paths"]["/x"]["get"]["responses"]["200"]["description"],
        json!("ok")
    );
    assert!(parse_document("{not json").is_err());
}

#[test]
fn base_path_handles_relative_and_absent_servers() {
    assert_eq!(base_path(&json!({})), "");
    assert_eq!(base_path(&json!({"servers": [{"url": "/v2/"}]})), "/v2");
    assert_eq!(
        base_path(&json!({"servers": [{"url": "https://api.github.com"}]})),
        ""
    );
}
