//! The body rule: media type (415), size (413), then for JSON bodies UTF-8, syntax,
//! nesting depth, duplicate keys and the JSON Schema (400).

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

use super::raw::RawBody;
use super::text::{clip, is_media_type, media_type, pointer_token, MAX_ECHO_CHARS};
use super::{
    BodyPlan, ConfigErrors, Errors, Failure, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_DEPTH,
    MAX_MAX_BODY_BYTES, MAX_MAX_DEPTH,
};

/// Where the route's schema lives for `$ref` resolution; never fetched (`.invalid`).
const ROOT_URL: &str = "https://apiguard.invalid/body-schema.json";
/// The custom serde error raised for a repeated object key; recognised by its prefix.
const DUPLICATE_KEY: &str = "duplicate object key";
/// The custom serde error that stops a parse nested deeper than `max_depth`.
const TOO_DEEP: &str = "nested too deeply";

enum MediaTypes {
    Any,
    /// `application/json` and `application/*+json`.
    Json,
    List(Vec<String>),
}

pub(crate) struct BodyRule {
    media_types: MediaTypes,
    max_bytes: Option<u64>,
    /// `Some` when the body is parsed as JSON (a schema or an explicit `max_depth`).
    json_depth: Option<u32>,
    required: bool,
    /// Refuse object members whose names differ only by letter case.
    fold_case_duplicates: bool,
    schema: Option<Schema>,
}

struct Schema {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

/// `content_types`: JSON media types when the body is parsed and none are listed, else any.
fn compile_media_types(
    content_types: Option<Vec<String>>,
    json: bool,
    path: &str,
    errors: &mut ConfigErrors,
) -> MediaTypes {
    let Some(list) = content_types else {
        return if json {
            MediaTypes::Json
        } else {
            MediaTypes::Any
        };
    };
    if list.is_empty() {
        errors.push(
            format!("{path}.content_types"),
            "must list at least one media type",
        );
    }
    let mut out = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let m = item.trim().to_ascii_lowercase();
        if is_media_type(&m) {
            out.push(m);
        } else {
            errors.push(
                format!("{path}.content_types[{i}]"),
                "must be a media type like application/json, without parameters",
            );
        }
    }
    MediaTypes::List(out)
}

/// `value` when it is between 1 and `max`, else an error at `path`.
fn in_range<T>(value: T, max: T, path: &str, errors: &mut ConfigErrors) -> Option<T>
where
    T: PartialOrd + From<u8> + fmt::Display,
{
    if value < T::from(1) || value > max {
        errors.push(path, format!("must be between 1 and {max}"));
        return None;
    }
    Some(value)
}

impl BodyRule {
    pub(crate) fn compile(
        raw: RawBody,
        path: &str,
        resources: &[(String, Value)],
        errors: &mut ConfigErrors,
    ) -> Option<BodyRule> {
        let before = errors.len();
        let has_schema = raw.schema.is_some();
        let json = has_schema || raw.max_depth.is_some();
        let media_types = compile_media_types(raw.content_types, json, path, errors);
        let max_bytes = match raw.max_bytes {
            // A parsed body is buffered, so it always has a bound.
            None => json.then_some(DEFAULT_MAX_BODY_BYTES),
            Some(n) => in_range(n, MAX_MAX_BODY_BYTES, &format!("{path}.max_bytes"), errors),
        };
        let json_depth = match raw.max_depth {
            None => json.then_some(DEFAULT_MAX_DEPTH),
            Some(d) => in_range(d, MAX_MAX_DEPTH, &format!("{path}.max_depth"), errors),
        };
        let schema = match raw.schema {
            None => None,
            Some(doc) => {
                let here = format!("{path}.schema");
                errors.take_ok(Schema::compile(doc, resources, raw.format_assertion, &here))
            }
        };
        if raw.format_assertion && !has_schema {
            errors.push(
                format!("{path}.format_assertion"),
                "needs a `schema` whose `format` keywords it enforces",
            );
        }
        if errors.len() > before {
            return None;
        }
        Some(BodyRule {
            media_types,
            max_bytes,
            json_depth,
            required: raw.required.unwrap_or(json),
            fold_case_duplicates: !raw.allow_case_variant_keys,
            schema,
        })
    }

    pub(crate) fn check_head(
        &self,
        content_type: Option<&str>,
        content_length: Option<u64>,
    ) -> Result<BodyPlan, Failure> {
        if let (Some(n), Some(max)) = (content_length, self.max_bytes) {
            if n > max {
                return Err(too_large("header/content-length", max));
            }
        }
        if content_length == Some(0) {
            return if self.required {
                Err(body_required())
            } else {
                Ok(BodyPlan::Skip)
            };
        }
        self.check_media_type(content_type)?;
        Ok(match (self.json_depth, self.max_bytes, content_length) {
            (Some(_), Some(max), _) => BodyPlan::Buffer { max_bytes: max },
            (_, Some(max), None) => BodyPlan::Limit { max_bytes: max },
            _ => BodyPlan::Skip,
        })
    }

    fn check_media_type(&self, content_type: Option<&str>) -> Result<(), Failure> {
        let accepted = match (&self.media_types, content_type.map(media_type)) {
            (MediaTypes::Any, _) => true,
            (_, None) => false,
            (MediaTypes::Json, Some(m)) => {
                m == "application/json"
                    || m.strip_prefix("application/")
                        .is_some_and(|sub| sub.ends_with("+json"))
            }
            (MediaTypes::List(list), Some(m)) => list.contains(&m),
        };
        if accepted {
            return Ok(());
        }
        let expected = match &self.media_types {
            MediaTypes::List(list) => list.join(", "),
            _ => "application/json, application/*+json".into(),
        };
        Err(Failure::one(
            415,
            "unsupported_media_type",
            "header/content-type",
            "contentType",
            &format!("must be one of: {expected}"),
        ))
    }

    pub(crate) fn check_size(&self, seen: u64) -> Result<(), Failure> {
        match self.max_bytes {
            Some(max) if seen > max => Err(too_large("", max)),
            _ => Ok(()),
        }
    }

    pub(crate) fn check_body(&self, body: &[u8], max_errors: usize) -> Result<(), Failure> {
        self.check_size(body.len() as u64)?;
        if body.is_empty() {
            return if self.required {
                Err(body_required())
            } else {
                Ok(())
            };
        }
        let Some(max_depth) = self.json_depth else {
            return Ok(());
        };
        let Parsed {
            value,
            names_to_fold,
        } = parse_json(body, max_depth)?;
        // Only names that do not fold to themselves can be case variants of each other.
        if self.fold_case_duplicates && names_to_fold {
            if let Some(pointer) = case_variant_keys(&value) {
                return Err(Failure::one(
                    400,
                    "invalid_body",
                    &pointer,
                    "duplicateKeyIgnoringCase",
                    "has member names that differ only by letter case",
                ));
            }
        }
        let Some(schema) = &self.schema else {
            return Ok(());
        };
        match schema.schemas.validate(&value, schema.index) {
            Ok(()) => Ok(()),
            Err(e) => {
                let mut errors = Errors::new(max_errors);
                for found in flatten(&e, max_errors) {
                    errors.push(found.pointer(), found.rule, found.message);
                }
                Err(Failure::new(400, "invalid_body", errors.into_vec()))
            }
        }
    }
}

fn too_large(pointer: &str, max: u64) -> Failure {
    Failure::one(
        413,
        "body_too_large",
        pointer,
        "maxBytes",
        &format!("must be at most {max} bytes"),
    )
}

fn body_required() -> Failure {
    Failure::one(
        400,
        "invalid_body",
        "",
        "required",
        "a request body is required",
    )
}

/// A body parsed by `parse_json`.
pub(crate) struct Parsed {
    pub(crate) value: Value,
    /// Some object member name is not ASCII without capitals (see `has_case_variant_names`).
    pub(crate) names_to_fold: bool,
}

/// UTF-8, then a parse that refuses duplicate keys and stops at `max_depth` (so its
/// recursion is bounded). A failed parse is explained as before any parsing: too deep if
/// the whole body nests deeper than `max_depth` (an O(n) scan in constant stack), else the
/// parser's error. A parse that succeeded nested no deeper, so it needs no scan.
pub(crate) fn parse_json(body: &[u8], max_depth: u32) -> Result<Parsed, Failure> {
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(Failure::one(
            400,
            "invalid_body",
            "",
            "encoding",
            "is not valid UTF-8",
        ));
    };
    let names_to_fold = Cell::new(false);
    let top = Level {
        depth: 0,
        max_depth,
        names_to_fold: &names_to_fold,
    };
    // From the checked text: the parser need not check each string's UTF-8 again.
    let mut parser = serde_json::Deserializer::from_str(text);
    let parsed = top
        .deserialize(&mut parser)
        .and_then(|value| parser.end().map(|()| value));
    match parsed {
        Ok(value) => Ok(Parsed {
            value,
            names_to_fold: names_to_fold.get(),
        }),
        Err(_) if exceeds_depth(body, max_depth) => Err(Failure::one(
            400,
            "too_deep",
            "",
            "maxDepth",
            &format!("nests objects and arrays deeper than {max_depth}"),
        )),
        Err(e) => {
            let msg = e.to_string();
            let rule = if msg.starts_with(DUPLICATE_KEY) {
                "duplicateKey"
            } else {
                "syntax"
            };
            // serde_json messages name a position, never the input text.
            Err(Failure::one(400, "invalid_body", "", rule, &msg))
        }
    }
}

/// The JSON Pointer of the first object (depth first) with two member names that differ
/// only by letter case. Go's encoding/json and ASP.NET Core bind such members to one field
/// (the last wins), so `{"amount":5,"AMOUNT":-100}` would pass a schema that only describes
/// `amount` and then reach the application as -100. Names are compared after Unicode
/// upper- then lower-casing, which also folds the Kelvin sign and the long s as Go does.
/// Depth is bounded by `max_depth`, checked before parsing.
fn case_variant_keys(value: &Value) -> Option<String> {
    match value {
        Value::Object(map) => {
            if has_case_variant_names(map) {
                return Some(String::new());
            }
            map.iter().find_map(|(k, v)| {
                case_variant_keys(v)
                    .map(|p| format!("/{}{p}", pointer_token(&clip(k, MAX_ECHO_CHARS))))
            })
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| case_variant_keys(v).map(|p| format!("/{i}{p}"))),
        _ => None,
    }
}

/// Whether two member names of one object fold to the same name. Names that are ASCII
/// without capitals fold to themselves and are distinct map keys, so an object with only
/// such names (the usual JSON) is answered without allocating.
fn has_case_variant_names(map: &Map<String, Value>) -> bool {
    if map.len() < 2 || map.keys().all(|k| folds_to_itself(k)) {
        return false;
    }
    let mut seen = std::collections::HashSet::with_capacity(map.len());
    map.keys().any(|k| !seen.insert(fold_case(k)))
}

/// ASCII without capitals: such a name is its own case fold.
fn folds_to_itself(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
}

/// Unicode upper- then lower-casing; for ASCII that is plain ASCII lower-casing.
fn fold_case(name: &str) -> String {
    if name.is_ascii() {
        name.to_ascii_lowercase()
    } else {
        name.to_uppercase().to_lowercase()
    }
}

/// Whether arrays and objects nest deeper than `max`, brackets inside strings ignored.
/// Multi-byte UTF-8 never contains ASCII bytes, so a byte scan is exact.
pub(crate) fn exceeds_depth(body: &[u8], max: u32) -> bool {
    let mut depth: u32 = 0;
    let mut rest = body;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'"' => rest = after_string(rest),
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// What follows the string whose opening quote came just before `s` (empty if it is
/// unterminated). Skips to the next quote or backslash at a time rather than tracking
/// every byte: string contents are most of a typical body.
fn after_string(mut s: &[u8]) -> &[u8] {
    loop {
        let Some(at) = s.iter().position(|&b| b == b'"' || b == b'\\') else {
            return &[];
        };
        let Some((&hit, tail)) = s.get(at..).and_then(<[u8]>::split_first) else {
            return &[];
        };
        if hit == b'"' {
            return tail;
        }
        // A backslash: the escaped byte cannot end the string.
        s = tail.get(1..).unwrap_or_default();
    }
}

/// Parses one value at `depth` (the arrays and objects around it) into a `Value` whose
/// objects may not repeat a key: serde_json would keep the last copy while the application
/// behind may keep the first, so duplicates are refused. An array or object deeper than
/// `max_depth` stops the parse; names that do not fold to themselves are noted.
#[derive(Clone, Copy)]
struct Level<'a> {
    depth: u32,
    max_depth: u32,
    names_to_fold: &'a Cell<bool>,
}

impl Level<'_> {
    /// The level of a container's members; an error if the container is too deep.
    fn inner<E: de::Error>(self) -> Result<Self, E> {
        let depth = self.depth.saturating_add(1);
        if depth > self.max_depth {
            return Err(E::custom(TOO_DEEP));
        }
        Ok(Level { depth, ..self })
    }
}

impl<'de> DeserializeSeed<'de> for Level<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Level<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.inner()?;
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.inner()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if !folds_to_itself(&key) {
                self.names_to_fold.set(true);
            }
            // One lookup finds a repeated key and the place of a new one.
            let Entry::Vacant(slot) = out.entry(key) else {
                return Err(de::Error::custom(DUPLICATE_KEY));
            };
            slot.insert(map.next_value_seed(inner)?);
        }
        Ok(Value::Object(out))
    }
}

/// Refuses every URL that was not preloaded: a filter must not fetch, and the CLI must not
/// read local files named by a policy.
struct NoFetch;

impl boon::UrlLoader for NoFetch {
    fn load(&self, url: &str) -> Result<Value, Box<dyn std::error::Error>> {
        Err(format!("{url} is not available: schemas are never fetched, inline it").into())
    }
}

impl Schema {
    /// Compiles once, against the draft's metaschema. `path` is the schema's JSON path
    /// (`routes[0].validate.body.schema`); errors point below it (`….properties.name.maxLength`).
    fn compile(
        doc: Value,
        resources: &[(String, Value)],
        assert_formats: bool,
        path: &str,
    ) -> Result<Schema, ConfigErrors> {
        let mut compiler = boon::Compiler::new();
        compiler.set_default_draft(boon::Draft::V2020_12);
        if assert_formats {
            // A misspelt format would otherwise be ignored without a word.
            let unknown = unknown_formats(&doc, path);
            if !unknown.is_empty() {
                return Err(unknown);
            }
            compiler.enable_format_assertions();
        }
        compiler.use_loader(Box::new(NoFetch));
        let mut schemas = boon::Schemas::new();
        for (url, doc) in resources {
            compiler
                .add_resource(url, doc.clone())
                .map_err(|e| compile_errors(&e, path))?;
        }
        compiler
            .add_resource(ROOT_URL, doc)
            .map_err(|e| compile_errors(&e, path))?;
        let index = compiler
            .compile(ROOT_URL, &mut schemas)
            .map_err(|e| compile_errors(&e, path))?;
        Ok(Schema { schemas, index })
    }
}

/// The formats boon 0.6 asserts (its `FORMATS` table).
const ASSERTED_FORMATS: [&str; 20] = [
    "regex",
    "ipv4",
    "ipv6",
    "hostname",
    "idn-hostname",
    "email",
    "idn-email",
    "date",
    "time",
    "date-time",
    "duration",
    "period",
    "json-pointer",
    "relative-json-pointer",
    "uuid",
    "uri",
    "iri",
    "uri-reference",
    "iri-reference",
    "uri-template",
];

/// `format` keywords naming a format that cannot be asserted, with their JSON paths below
/// `path`. Walks schema positions only: a property *named* `format` is not a keyword.
fn unknown_formats(doc: &Value, path: &str) -> ConfigErrors {
    fn walk(schema: &Value, at: &str, out: &mut ConfigErrors) {
        let Value::Object(map) = schema else {
            return;
        };
        for (k, v) in map {
            let here = format!("{at}.{k}");
            match (k.as_str(), v) {
                ("format", Value::String(f)) if !ASSERTED_FORMATS.contains(&f.as_str()) => out
                    .push(
                        here,
                        format!("format `{f}` cannot be asserted (format_assertion is on)"),
                    ),
                (
                    "properties" | "patternProperties" | "$defs" | "definitions"
                    | "dependentSchemas",
                    Value::Object(children),
                ) => {
                    for (name, child) in children {
                        walk(child, &format!("{here}.{name}"), out);
                    }
                }
                ("allOf" | "anyOf" | "oneOf" | "prefixItems" | "items", Value::Array(list)) => {
                    for (i, child) in list.iter().enumerate() {
                        walk(child, &format!("{here}[{i}]"), out);
                    }
                }
                (
                    "not"
                    | "if"
                    | "then"
                    | "else"
                    | "items"
                    | "contains"
                    | "additionalProperties"
                    | "unevaluatedItems"
                    | "unevaluatedProperties"
                    | "propertyNames"
                    | "additionalItems"
                    | "contentSchema",
                    _,
                ) => walk(v, &here, out),
                _ => {}
            }
        }
    }
    let mut out = ConfigErrors::new();
    walk(doc, path, &mut out);
    out
}

/// boon's compile error as config errors below the schema's JSON path `path`.
fn compile_errors(e: &boon::CompileError, path: &str) -> ConfigErrors {
    use boon::CompileError as C;
    let mut errors = ConfigErrors::new();
    match e {
        C::ValidationError { src, .. } => {
            for f in flatten(src, 10) {
                let message = format!("invalid schema: {}", f.message);
                errors.push(format!("{path}{}", f.path()), message);
            }
        }
        C::InvalidRegex { url, regex, src } => {
            let msg = format!(
                "invalid regex {}: {}",
                clip(regex, MAX_ECHO_CHARS),
                src.to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            errors.push(format!("{path}{}", location_suffix(url)), msg);
        }
        other => errors.push(path, format!("{other:#}").replace(ROOT_URL, "schema")),
    }
    errors
}

/// `.properties.name.pattern` for `ROOT_URL#/properties/name/pattern`, else `""`.
fn location_suffix(url: &str) -> String {
    let Some(ptr) = url
        .strip_prefix(ROOT_URL)
        .and_then(|rest| rest.strip_prefix('#'))
    else {
        return String::new();
    };
    ptr.split('/')
        .skip(1)
        .map(|t| format!(".{}", t.replace("~1", "/").replace("~0", "~")))
        .collect()
}

enum Token {
    Prop(String),
    Item(usize),
}

/// One leaf of boon's error tree, with its location kept structured.
struct Found {
    tokens: Vec<Token>,
    rule: &'static str,
    message: String,
}

impl Found {
    /// JSON Pointer into the body; names clipped so an error never carries much input.
    fn pointer(&self) -> String {
        self.tokens
            .iter()
            .map(|t| match t {
                Token::Prop(p) => format!("/{}", pointer_token(&clip(p, MAX_ECHO_CHARS))),
                Token::Item(i) => format!("/{i}"),
            })
            .collect()
    }

    /// JSON path suffix into the policy (`.properties.name`, `.required[0]`).
    fn path(&self) -> String {
        self.tokens
            .iter()
            .map(|t| match t {
                Token::Prop(p) => format!(".{p}"),
                Token::Item(i) => format!("[{i}]"),
            })
            .collect()
    }
}

/// The leaves of boon's error tree, at most `cap`. Wrappers (`$ref`, `allOf`, the root)
/// are looked through; `anyOf`/`oneOf`/`not` are reported themselves, since their
/// branches' errors do not say what to fix.
fn flatten(e: &boon::ValidationError, cap: usize) -> Vec<Found> {
    let mut out = Vec::new();
    walk(e, cap, &mut out);
    out
}

fn walk(e: &boon::ValidationError, cap: usize, out: &mut Vec<Found>) {
    use boon::ErrorKind as K;
    if out.len() >= cap {
        return;
    }
    let wrapper = matches!(
        e.kind,
        K::Group | K::Schema { .. } | K::Reference { .. } | K::AllOf
    );
    if wrapper && !e.causes.is_empty() {
        for c in &e.causes {
            walk(c, cap, out);
        }
        return;
    }
    let base: Vec<Token> = e
        .instance_location
        .tokens
        .iter()
        .map(|t| match t {
            boon::InstanceToken::Prop(p) => Token::Prop(p.to_string()),
            boon::InstanceToken::Item(i) => Token::Item(*i),
        })
        .collect();
    let child = |name: &str| {
        let mut tokens: Vec<Token> = base
            .iter()
            .map(|t| match t {
                Token::Prop(p) => Token::Prop(p.clone()),
                Token::Item(i) => Token::Item(*i),
            })
            .collect();
        tokens.push(Token::Prop(name.to_string()));
        tokens
    };
    // Keywords that name members: one error per member, located at the member.
    let members: Option<(&'static str, Vec<&str>, String)> = match &e.kind {
        K::Required { want } => Some(("required", want.clone(), "is required".into())),
        K::AdditionalProperties { got } => Some((
            "additionalProperties",
            got.iter().map(|g| g.as_ref()).collect(),
            "is not allowed".into(),
        )),
        K::DependentRequired { prop, missing } | K::Dependency { prop, missing } => Some((
            "dependentRequired",
            missing.clone(),
            format!("is required when {} is present", clip(prop, MAX_ECHO_CHARS)),
        )),
        _ => None,
    };
    if let Some((rule, names, message)) = members {
        for name in names {
            if out.len() >= cap {
                return;
            }
            out.push(Found {
                tokens: child(name),
                rule,
                message: message.clone(),
            });
        }
        return;
    }
    let (rule, message) = describe(&e.kind);
    out.push(Found {
        tokens: base,
        rule,
        message,
    });
}

/// The keyword and a message written from the schema's side only (no instance values).
fn describe(kind: &boon::ErrorKind) -> (&'static str, String) {
    use boon::ErrorKind as K;
    let s = |x: &str| x.to_string();
    match kind {
        K::Group | K::Schema { .. } | K::AllOf => ("allOf", s("does not match the schema")),
        K::Reference { kw, .. } => (kw, s("does not match the referenced schema")),
        K::RefCycle { .. } => ("$ref", s("the schema references itself without end")),
        K::ContentSchema => ("contentSchema", s("does not match contentSchema")),
        K::PropertyName { .. } => (
            "propertyNames",
            s("has a property name that is not allowed"),
        ),
        K::FalseSchema => ("false", s("is not allowed")),
        K::Type { got, want } => {
            let want: Vec<String> = want.iter().map(|t| t.to_string()).collect();
            ("type", format!("must be {}, not {got}", want.join(" or ")))
        }
        K::Enum { .. } => ("enum", s("must be one of the allowed values")),
        K::Const { .. } => ("const", s("must be the constant the schema requires")),
        K::Format { want, .. } => ("format", format!("must be a valid {want}")),
        K::MinProperties { want, .. } => (
            "minProperties",
            format!("must have at least {want} properties"),
        ),
        K::MaxProperties { want, .. } => (
            "maxProperties",
            format!("must have at most {want} properties"),
        ),
        K::AdditionalProperties { .. } => (
            "additionalProperties",
            s("has a property that is not allowed"),
        ),
        K::Required { .. } => ("required", s("lacks a required property")),
        K::Dependency { .. } | K::DependentRequired { .. } => {
            ("dependentRequired", s("lacks a dependent property"))
        }
        K::MinItems { want, .. } => ("minItems", format!("must have at least {want} items")),
        K::MaxItems { want, .. } => ("maxItems", format!("must have at most {want} items")),
        K::Contains => ("contains", s("must contain an item matching `contains`")),
        K::MinContains { want, .. } => (
            "minContains",
            format!("must contain at least {want} items matching `contains`"),
        ),
        K::MaxContains { want, .. } => (
            "maxContains",
            format!("must contain at most {want} items matching `contains`"),
        ),
        K::UniqueItems { got: [i, j] } => ("uniqueItems", format!("items {i} and {j} are equal")),
        K::AdditionalItems { .. } => ("additionalItems", s("has more items than allowed")),
        K::MinLength { .. }
        | K::MaxLength { .. }
        | K::Pattern { .. }
        | K::ContentEncoding { .. }
        | K::ContentMediaType { .. }
        | K::Minimum { .. }
        | K::Maximum { .. }
        | K::ExclusiveMinimum { .. }
        | K::ExclusiveMaximum { .. }
        | K::MultipleOf { .. } => describe_scalar(kind),
        K::Not => ("not", s("must not match the schema in `not`")),
        K::AnyOf => ("anyOf", s("must match at least one schema in `anyOf`")),
        K::OneOf(None) => (
            "oneOf",
            s("must match exactly one schema in `oneOf`, matches none"),
        ),
        K::OneOf(Some((i, j))) => (
            "oneOf",
            format!("must match exactly one schema in `oneOf`, matches {i} and {j}"),
        ),
    }
}

/// The string and number keywords of `describe`.
fn describe_scalar(kind: &boon::ErrorKind) -> (&'static str, String) {
    use boon::ErrorKind as K;
    match kind {
        K::MinLength { want, .. } => (
            "minLength",
            format!("must be at least {want} characters long"),
        ),
        K::MaxLength { want, .. } => (
            "maxLength",
            format!("must be at most {want} characters long"),
        ),
        K::Pattern { want, .. } => (
            "pattern",
            format!("must match {}", clip(want, MAX_ECHO_CHARS)),
        ),
        K::ContentEncoding { want, .. } => ("contentEncoding", format!("must be {want}-encoded")),
        K::ContentMediaType { want, .. } => ("contentMediaType", format!("must be {want}")),
        K::Minimum { want, .. } => ("minimum", format!("must be >= {want}")),
        K::Maximum { want, .. } => ("maximum", format!("must be <= {want}")),
        K::ExclusiveMinimum { want, .. } => ("exclusiveMinimum", format!("must be > {want}")),
        K::ExclusiveMaximum { want, .. } => ("exclusiveMaximum", format!("must be < {want}")),
        K::MultipleOf { want, .. } => ("multipleOf", format!("must be a multiple of {want}")),
        // `describe` sends only the kinds above here.
        _ => ("schema", "does not match the schema".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// The byte-at-a-time scan `exceeds_depth` replaced: the oracle for the faster one.
    fn exceeds_depth_bytewise(body: &[u8], max: u32) -> bool {
        let mut depth: u32 = 0;
        let mut in_string = false;
        let mut escaped = false;
        for &b in body {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > max {
                        return true;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        false
    }

    /// The comparison `has_case_variant_names` replaced: every name folded, allocating.
    fn has_case_variant_names_folding_all(map: &Map<String, Value>) -> bool {
        let mut seen = std::collections::HashSet::new();
        map.keys()
            .any(|k| !seen.insert(k.to_uppercase().to_lowercase()))
    }

    /// Nested arrays and objects with short names, some repeated across levels.
    fn json_values() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![Just(json!(1)), Just(json!("s")), Just(json!(null))];
        leaf.prop_recursive(6, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop::sample::select(vec!["a".to_string(), "B".to_string(), "c".to_string()]),
                    inner,
                    0..3
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn object(names: &[&str]) -> Map<String, Value> {
        names.iter().map(|n| (n.to_string(), json!(1))).collect()
    }

    #[test]
    fn strings_skip_brackets_and_escapes_whole() {
        assert!(!exceeds_depth(br#"{"a":"[[[[\"{{{{","b":["\\"]}"#, 2));
        assert!(exceeds_depth(br#"{"a":"\\",[[]]}"#, 2));
        // An escaped quote does not end the string; a trailing backslash ends the input.
        assert!(!exceeds_depth(br#"["\"[[["]"#, 1));
        assert!(!exceeds_depth(br#"["\"#, 1));
        // Unterminated: what follows the quote is string content.
        assert!(!exceeds_depth(br#"["[[["#, 1));
        assert!(exceeds_depth(b"[[", 1));
    }

    #[test]
    fn names_differing_only_by_case_are_found_ascii_or_not() {
        assert!(!has_case_variant_names(&object(&["amount", "currency"])));
        assert!(!has_case_variant_names(&object(&["Amount", "currency"])));
        assert!(has_case_variant_names(&object(&["amount", "AMOUNT"])));
        // Non-ASCII names that fold onto ASCII ones: the Kelvin sign, the long s.
        assert!(has_case_variant_names(&object(&["k", "\u{212A}"])));
        assert!(has_case_variant_names(&object(&["\u{17F}um", "sum"])));
        assert!(has_case_variant_names(&object(&["éclair", "Éclair"])));
        assert!(!has_case_variant_names(&object(&["éclair", "eclair"])));
        assert!(!has_case_variant_names(&object(&["K"])));
    }

    /// The parse `parse_json` replaced: the whole-body depth scan first, then a parse that
    /// refuses duplicate keys, with no depth limit of its own (the same visitor, so what
    /// is compared is the order of the checks and where the parse stops).
    fn parse_json_scan_first(body: &[u8], max_depth: u32) -> Result<Value, Failure> {
        if std::str::from_utf8(body).is_err() {
            return Err(Failure::one(
                400,
                "invalid_body",
                "",
                "encoding",
                "is not valid UTF-8",
            ));
        }
        if exceeds_depth_bytewise(body, max_depth) {
            let msg = format!("nests objects and arrays deeper than {max_depth}");
            return Err(Failure::one(400, "too_deep", "", "maxDepth", &msg));
        }
        let top = Level {
            depth: 0,
            max_depth: u32::MAX,
            names_to_fold: &Cell::new(false),
        };
        let mut parser = serde_json::Deserializer::from_slice(body);
        match top
            .deserialize(&mut parser)
            .and_then(|v| parser.end().map(|()| v))
        {
            Ok(v) => Ok(v),
            Err(e) => {
                let msg = e.to_string();
                let rule = if msg.starts_with(DUPLICATE_KEY) {
                    "duplicateKey"
                } else {
                    "syntax"
                };
                Err(Failure::one(400, "invalid_body", "", rule, &msg))
            }
        }
    }

    fn parse(body: &[u8], max_depth: u32) -> Result<Value, Failure> {
        parse_json(body, max_depth).map(|p| p.value)
    }

    #[test]
    fn a_valid_body_still_parses_into_the_same_value() {
        let body = br#"{"b":[1,2.5,"x",{"k":null}],"a":true,"c":{}}"#;
        let parsed = parse(body, 8).unwrap_or_else(|f| panic!("{f:?}"));
        let plain: Value = serde_json::from_slice(body).unwrap_or_default();
        assert_eq!(parsed, plain);
        let f = parse(br#"{"a":1,"b":{"c":2,"c":3}}"#, 8).unwrap_err();
        assert_eq!(f.errors[0].rule, "duplicateKey");
    }

    #[test]
    fn too_deep_is_said_before_any_other_parse_error_as_before() {
        // The syntax error and the duplicate key come first in the text: still too deep.
        for body in [
            r#"{"a":1,}[[[[["#,
            r#"{"a":1,"a":[[[[[]]]]]}"#,
            "[[[[[1]]]]]",
        ] {
            let f = parse(body.as_bytes(), 3).unwrap_err();
            assert_eq!(
                (f.reason, f.errors[0].rule.as_str()),
                ("too_deep", "maxDepth")
            );
            assert_eq!(parse_json_scan_first(body.as_bytes(), 3), Err(f));
        }
        assert!(parse(b"[[[1]]]", 3).is_ok());
        // Trailing text after the value is a syntax error.
        assert_eq!(parse(b"[] x", 3).unwrap_err().errors[0].rule, "syntax");
    }

    #[test]
    fn the_parse_notes_names_that_do_not_fold_to_themselves() {
        let notes = |body: &str| parse_json(body.as_bytes(), 8).map(|p| p.names_to_fold);
        assert_eq!(notes(r#"{"a":[{"b_1":{"c-d":1}}],"e":"F"}"#), Ok(false));
        assert_eq!(notes(r#"{"a":[{"b":{"C":1}}]}"#), Ok(true));
        assert_eq!(notes(r#"{"a":{"\u017f":1}}"#), Ok(true));
        assert_eq!(notes(r#"["A","\u212a"]"#), Ok(false));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn the_depth_scan_agrees_with_the_bytewise_one(
            body in proptest::collection::vec(
                prop::sample::select(b"[]{}\"\\a:,".to_vec()), 0..40),
            max in 0u32..6,
        ) {
            prop_assert_eq!(exceeds_depth(&body, max), exceeds_depth_bytewise(&body, max));
        }

        #[test]
        fn the_parse_agrees_with_scanning_first(
            body in proptest::collection::vec(
                prop::sample::select(b"[]{}\"\\a:,1 ".to_vec()), 0..24),
            max in 1u32..5,
        ) {
            prop_assert_eq!(parse(&body, max), parse_json_scan_first(&body, max));
        }

        #[test]
        fn the_parse_agrees_with_scanning_first_on_json(
            value in json_values(),
            max in 1u32..5,
        ) {
            let body = value.to_string();
            prop_assert_eq!(parse(body.as_bytes(), max), parse_json_scan_first(body.as_bytes(), max));
        }

        #[test]
        fn the_case_check_agrees_with_folding_every_name(
            names in proptest::collection::vec(
                proptest::collection::vec(
                    prop::sample::select(vec!["k", "K", "\u{212A}", "s", "S", "\u{17F}", "é", "É", "_"]),
                    1..4),
                0..5),
        ) {
            let names: Vec<String> = names.iter().map(|parts| parts.concat()).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let map = object(&names);
            prop_assert_eq!(has_case_variant_names(&map), has_case_variant_names_folding_all(&map));
        }
    }
}
