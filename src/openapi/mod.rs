//! `apiguard openapi`: an apiguard policy from an OpenAPI 3.0 / 3.1 description.
//!
//! Native only (the CLI); never compiled into the Wasm module. Each operation becomes a
//! route (literal paths before templates, as OpenAPI matches them), its parameters and JSON
//! body become `validate` rules, its security requirements become `public` / `providers` /
//! `scopes`. Whatever the description says that apiguard does not check comes back as a
//! `Note` (operation, JSON pointer, what) for the CLI to print: nothing is dropped silently.
//! A generated rule is never stricter than the description: a request the description
//! allows must not be refused.

pub mod body;
pub mod overlay;
pub mod params;
pub mod paths;
pub mod pointer;
pub mod schema;
pub mod security;

#[cfg(test)]
mod tests;

use std::fmt;

use serde_json::{json, Map, Value};

use params::In;
use pointer::{deref, escape};
use security::Schemes;

/// Methods OpenAPI Path Item Objects may hold, in the order routes are written.
const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Something the description says that the policy does not check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// `GET /items/{id} (getItem)`, or `document`.
    pub operation: String,
    /// JSON Pointer into the description (`#/paths/~1items~1{id}/get/parameters/0`).
    pub pointer: String,
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not enforced: {} at {}: {}",
            self.operation, self.pointer, self.message
        )
    }
}

/// The generated policy and what it leaves out.
#[derive(Debug)]
pub struct Import {
    pub policy: Value,
    pub notes: Vec<Note>,
    /// Operations in the description, and how many became routes.
    pub operations: usize,
    pub routes: usize,
}

/// Builds the policy. Errors (not a 3.x description, schemes the overlay must supply) are
/// all returned at once.
pub fn import(spec: &Value, overlay: Option<&Value>) -> Result<Import, Vec<String>> {
    let v30 = version(spec)?;
    let empty = Map::new();
    let overlay = match overlay {
        None => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => return Err(vec!["the overlay must be a policy (a mapping)".into()]),
    };
    let mut cx = Context {
        doc: spec,
        v30,
        schemes: Schemes::new(spec, overlay),
        notes: Vec::new(),
        names: Vec::new(),
        base: base_path(spec),
    };
    let mut routes: Vec<(Vec<u8>, Value)> = Vec::new();
    let mut operations = 0;
    for op in operations_of(spec, &mut cx.notes) {
        operations += 1;
        if let Some(route) = cx.route(&op) {
            routes.push(route);
        }
    }
    // Stable: literal segments before templated ones, description order otherwise.
    routes.sort_by(|a, b| a.0.cmp(&b.0));
    let routes: Vec<Value> = routes.into_iter().map(|(_, r)| r).collect();
    let count = routes.len();
    let mut errors: Vec<String> = cx.schemes.missing.iter().cloned().collect();
    let merged = overlay::merge(routes, overlay, &cx.schemes.api_key_sets);
    let policy = match merged {
        Ok(p) if errors.is_empty() => p,
        Ok(_) => return Err(errors),
        Err(e) => {
            errors.extend(e);
            return Err(errors);
        }
    };
    Ok(Import {
        policy: Value::Object(policy),
        notes: cx.notes,
        operations,
        routes: count,
    })
}

/// `true` for 3.0.x, `false` for 3.1.x.
fn version(spec: &Value) -> Result<bool, Vec<String>> {
    match spec.get("openapi").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.0") => Ok(true),
        Some(v) if v.starts_with("3.1") => Ok(false),
        Some(v) => Err(vec![format!("OpenAPI {v} is not supported (3.0.x and 3.1.x are)")]),
        None if spec.get("swagger").is_some() => Err(vec![
            "Swagger 2.0 is not supported: convert it to OpenAPI 3 first (e.g. `npx swagger2openapi`)".into(),
        ]),
        None => Err(vec!["not an OpenAPI description: no `openapi` field".into()]),
    }
}

/// The path of the first server URL (`https://api.example.com/v1` -> `/v1`), variables
/// replaced by their defaults. Routes are matched on the whole request path, so this prefix
/// is part of every route.
pub fn base_path(spec: &Value) -> String {
    let Some(server) = spec.pointer("/servers/0") else {
        return String::new();
    };
    let mut url = server
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if let Some(vars) = server.get("variables").and_then(Value::as_object) {
        for (name, var) in vars {
            let default = var
                .get("default")
                .and_then(Value::as_str)
                .unwrap_or_default();
            url = url.replace(&format!("{{{name}}}"), default);
        }
    }
    let path = match url.split_once("://") {
        Some((_, rest)) => rest.find('/').and_then(|i| rest.get(i..)).unwrap_or(""),
        None => url.as_str(),
    };
    path.trim_end_matches('/').to_string()
}

/// One operation of the description.
struct Operation<'a> {
    path: &'a str,
    method: &'a str,
    op: &'a Value,
    /// Parameters declared on the path item (the operation's own override them).
    shared_params: Option<&'a Value>,
    pointer: String,
}

impl Operation<'_> {
    fn label(&self) -> String {
        let id = self.op.get("operationId").and_then(Value::as_str);
        let head = format!("{} {}", self.method.to_ascii_uppercase(), self.path);
        match id {
            Some(id) => format!("{head} ({id})"),
            None => head,
        }
    }
}

fn operations_of<'a>(spec: &'a Value, notes: &mut Vec<Note>) -> Vec<Operation<'a>> {
    let mut out = Vec::new();
    let Some(paths) = spec.get("paths").and_then(Value::as_object) else {
        return out;
    };
    for (path, item) in paths {
        let pointer = format!("#/paths/{}", escape(path));
        let item = match deref(spec, item) {
            Ok((item, _)) => item,
            Err(why) => {
                notes.push(Note {
                    operation: path.clone(),
                    pointer,
                    message: format!("{why}: path skipped"),
                });
                continue;
            }
        };
        for method in METHODS {
            if let Some(op) = item.get(*method).filter(|o| o.is_object()) {
                out.push(Operation {
                    path,
                    method,
                    op,
                    shared_params: item.get("parameters"),
                    pointer: format!("{pointer}/{method}"),
                });
            }
        }
    }
    out
}

/// A parameter rule with its policy name and section.
type Placed = (String, (Map<String, Value>, In));

struct Context<'a> {
    doc: &'a Value,
    v30: bool,
    schemes: Schemes<'a>,
    notes: Vec<Note>,
    names: Vec<String>,
    base: String,
}

impl<'a> Context<'a> {
    fn note(&mut self, op: &Operation<'_>, suffix: &str, message: String) {
        // `/..` climbs from the operation to its path item (shared parameters).
        let pointer = match suffix.strip_prefix("/..") {
            Some(rest) => {
                let item = op
                    .pointer
                    .rsplit_once('/')
                    .map_or(op.pointer.as_str(), |(a, _)| a);
                format!("{item}{rest}")
            }
            None => format!("{}{suffix}", op.pointer),
        };
        self.notes.push(Note {
            operation: op.label(),
            pointer,
            message,
        });
    }

    /// The route for one operation, with its sort key; `None` (noted) when its path cannot
    /// be a route.
    fn route(&mut self, op: &Operation<'a>) -> Option<(Vec<u8>, Value)> {
        let template = match paths::convert(op.path) {
            Ok(t) => t,
            Err(why) => {
                self.note(
                    op,
                    "",
                    format!("{why}: operation skipped (requests to it get no_route)"),
                );
                return None;
            }
        };
        let full_path = format!("{}{}", self.base, template.path);
        if let Err(why) = crate::routes::PathMatch::parse(Some(&full_path), None) {
            self.note(op, "", format!("path {why}: operation skipped"));
            return None;
        }
        let mut route = Map::new();
        route.insert("name".into(), json!(self.route_name(op)));
        route.insert(
            "match".into(),
            json!({"path": full_path, "methods": [op.method.to_ascii_uppercase()]}),
        );
        let requirements = op.op.get("security").or_else(|| self.doc.get("security"));
        let mut access_notes = Vec::new();
        route.extend(security::route_access(
            requirements,
            &mut self.schemes,
            &mut access_notes,
        ));
        for n in access_notes {
            self.note(op, "/security", n);
        }
        let validate = self.validate(op, &template);
        let validate = self.compiled(op, validate, &template);
        if !validate.is_empty() {
            route.insert("validate".into(), Value::Object(validate));
        }
        let base_segments = self.base.split('/').skip(1).map(|_| 0u8);
        let key = base_segments.chain(template.order_key).collect();
        Some((key, Value::Object(route)))
    }

    /// The `validate` block as the filter will compile it. A body schema the filter refuses
    /// (a keyword or regex its engine rejects) is dropped with notes rather than failing the
    /// whole policy; so is a block that still does not compile.
    fn compiled(
        &mut self,
        op: &Operation<'_>,
        mut validate: Map<String, Value>,
        template: &paths::Template,
    ) -> Map<String, Value> {
        let mut names: Vec<String> = template.params.iter().map(|(_, l)| l.clone()).collect();
        names.extend(template.composite.iter().map(|(l, _, _)| l.clone()));
        for attempt in 0..2 {
            let raw = serde_json::from_value::<crate::validate::RawValidate>(Value::Object(
                validate.clone(),
            ))
            .map_err(|e| {
                let mut errors = crate::validate::ConfigErrors::new();
                errors.push("", e.to_string());
                errors
            });
            let errors = match raw
                .and_then(|r| crate::validate::RouteValidation::compile(r, "validate", &names))
            {
                Ok(_) => return validate,
                Err(errors) => errors,
            };
            for e in &errors {
                let (at, m) = (&e.path, &e.message);
                self.note(op, "", format!("the filter refuses {at}: {m}"));
            }
            let body_schema = validate
                .get_mut("body")
                .and_then(Value::as_object_mut)
                .and_then(|b| b.remove("schema"));
            if attempt == 0 && body_schema.is_some() {
                self.note(op, "/requestBody", "body schema dropped".into());
                continue;
            }
            self.note(op, "", "validation dropped".into());
            return Map::new();
        }
        Map::new()
    }

    fn route_name(&mut self, op: &Operation<'_>) -> String {
        let base = op
            .op
            .get("operationId")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty() && !id.chars().any(char::is_control))
            .map(String::from)
            .unwrap_or_else(|| format!("{} {}", op.method.to_ascii_uppercase(), op.path));
        let mut name = base.clone();
        let mut n = 1;
        while self.names.contains(&name) {
            n += 1;
            name = format!("{base} #{n}");
        }
        self.names.push(name.clone());
        name
    }

    fn validate(&mut self, op: &Operation<'a>, template: &paths::Template) -> Map<String, Value> {
        let mut sections: Map<String, Value> = Map::new();
        for (local, rule, inner) in &template.composite {
            insert(&mut sections, "path", local, Value::Object(rule.clone()));
            self.note(
                op,
                "",
                format!(
                    "parameters {inner:?} share one path segment: only its fixed parts are checked"
                ),
            );
        }
        for (suffix, param) in self.parameters(op) {
            let doc = self.doc;
            let v30 = self.v30;
            let mut found = Vec::new();
            let out = params::translate(doc, param, v30, &mut |at, m| {
                found.push((format!("{suffix}{at}"), m))
            });
            for (at, m) in found {
                self.note(op, &at, m);
            }
            let Some(out) = out else { continue };
            if let Some((name, rule)) = self.placed(op, &suffix, template, out) {
                let section = match rule.1 {
                    In::Header => "headers",
                    In::Query => "query",
                    In::Path => "path",
                };
                if sections.get(section).and_then(|s| s.get(&name)).is_some() {
                    self.note(
                        op,
                        &suffix,
                        format!("`{name}` declared twice (header names ignore case): first kept"),
                    );
                    continue;
                }
                insert(&mut sections, section, &name, Value::Object(rule.0));
            }
        }
        if let Some(body) = op.op.get("requestBody") {
            self.body(op, body, &mut sections);
        }
        sections
    }

    /// Where a translated parameter goes: its name in the policy, or `None` (noted).
    fn placed(
        &mut self,
        op: &Operation<'_>,
        suffix: &str,
        template: &paths::Template,
        out: params::ParamOut,
    ) -> Option<Placed> {
        let name = match out.location {
            In::Path => match template.params.iter().find(|(orig, _)| *orig == out.name) {
                Some((_, local)) if out.multi_segment => {
                    self.note(
                        op,
                        suffix,
                        format!(
                            "`{}` may hold `/` (x-multi-segment): such requests get no_route",
                            out.name
                        ),
                    );
                    local.clone()
                }
                Some((_, local)) => local.clone(),
                None => {
                    if !template
                        .composite
                        .iter()
                        .any(|(_, _, inner)| inner.contains(&out.name))
                    {
                        self.note(
                            op,
                            suffix,
                            format!("path parameter `{}` is not in the path template", out.name),
                        );
                    }
                    return None;
                }
            },
            In::Header => {
                let lower = out.name.to_ascii_lowercase();
                let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                if lower.is_empty() || !lower.bytes().all(tchar) {
                    self.note(
                        op,
                        suffix,
                        format!("`{}` is not a valid header name", out.name),
                    );
                    return None;
                }
                lower
            }
            In::Query if out.name.is_empty() => return None,
            In::Query => out.name,
        };
        // A rule that checks nothing adds nothing.
        (!out.rule.is_empty()).then_some((name, (out.rule, out.location)))
    }

    /// The operation's parameters (path-item ones first, overridden by name and location),
    /// dereferenced, each with its pointer suffix relative to the operation.
    fn parameters(&mut self, op: &Operation<'a>) -> Vec<(String, &'a Value)> {
        let mut out: Vec<(String, &'a Value)> = Vec::new();
        let lists = [
            ("/../parameters", op.shared_params),
            ("/parameters", op.op.get("parameters")),
        ];
        for (prefix, list) in lists {
            let Some(list) = list.and_then(Value::as_array) else {
                continue;
            };
            for (i, p) in list.iter().enumerate() {
                let suffix = format!("{prefix}/{i}");
                let p = match deref(self.doc, p) {
                    Ok((p, _)) => p,
                    Err(why) => {
                        self.note(op, &suffix, format!("{why}: parameter not checked"));
                        continue;
                    }
                };
                let key = |v: &Value| (v.get("name").cloned(), v.get("in").cloned());
                out.retain(|(_, q)| key(q) != key(p));
                out.push((suffix, p));
            }
        }
        out
    }

    fn body(&mut self, op: &Operation<'_>, body: &Value, sections: &mut Map<String, Value>) {
        let resolved = match body::resolve(self.doc, body) {
            Ok(b) => b,
            Err(why) => {
                self.note(op, "/requestBody", format!("{why}: body not checked"));
                return;
            }
        };
        let (rule, notes) = body::body_rule(self.doc, resolved, self.v30);
        for (at, m) in notes {
            self.note(op, &format!("/requestBody{at}"), m);
        }
        if let Some(rule) = rule {
            sections.insert("body".into(), Value::Object(rule));
        }
    }
}

fn insert(sections: &mut Map<String, Value>, section: &str, name: &str, rule: Value) {
    if let Value::Object(m) = sections.entry(section).or_insert_with(|| json!({})) {
        m.insert(name.to_string(), rule);
    }
}

/// Reads a description or an overlay: JSON, or YAML (whose mapping keys may be numbers,
/// like unquoted response codes: they become strings).
pub fn parse_document(text: &str) -> Result<Value, String> {
    if text.trim_start().starts_with('{') {
        return serde_json::from_str(text).map_err(|e| e.to_string());
    }
    let yaml: yaml_serde::Value = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
    Ok(yaml_to_json(yaml))
}

fn yaml_to_json(v: yaml_serde::Value) -> Value {
    use yaml_serde::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                json!(i)
            } else if let Some(u) = n.as_u64() {
                json!(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (yaml_key(k), yaml_to_json(v)))
                .collect(),
        ),
        Y::Tagged(t) => yaml_to_json(t.value),
    }
}

fn yaml_key(k: yaml_serde::Value) -> String {
    match k {
        yaml_serde::Value::String(s) => s,
        other => match yaml_to_json(other) {
            Value::String(s) => s,
            v => v.to_string(),
        },
    }
}
