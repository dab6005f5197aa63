//! FlowMason's template syntax, so that its pipelines run unchanged.
//!
//! A stage's `config` and `inputMapping` values may contain templates:
//!
//! - `{{input.a.b}}`: the run's inputs;
//! - `{{upstream.<stageId>.<path>}}`: the output of an earlier stage (`{{upstream.fetch}}` is all of it);
//! - `{{env.NAME}}`: an environment variable (exactly two parts);
//! - `{{context.<field>}}`: the attempt's context, see [`CONTEXT_FIELDS`] (`run_id`/`stage_id`/
//!   `pipeline_id` spellings are accepted too, as FlowMason writes them).
//!
//! Whitespace inside the braces is allowed (`{{ input.a }}`). Path segments are object keys or array
//! indexes, written `items.0.name` or `items[0].name`.
//!
//! A string that is exactly one template (surrounding whitespace aside, as FlowMason has it) is replaced by
//! the referenced value with its JSON type. Templates inside other text are interpolated as text: strings
//! unquoted, `null` as the empty string, any other value as compact JSON. Objects and arrays are rendered
//! recursively. A path that does not resolve is an error naming the field and the template, e.g.
//! `config.url: template {{upstream.fetch.body.id}}: key "id" not found`.
//!
//! Field names in messages are JSON paths below the `field` prefix given to [`render`]: object keys are
//! joined with `.`, array elements are written `[i]` (`config.headers.auth`, `config.items[2]`). An empty
//! prefix yields paths relative to the value (`url`, `items[2]`); the value itself is then `""`.
//!
//! Unlike FlowMason, `{{env.NAME}}` reads only [`Scope::env`], never the engine's own process environment:
//! what a stage may see is decided by whoever builds the scope, and a render is reproducible on replay.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use flowmason_store::ErrorClass;

use crate::component::{ComponentError, StageContext};
use crate::limits;

/// The template prefixes FlowMason allows.
pub const PREFIXES: &[&str] = &["context", "env", "input", "upstream"];

/// The fields `{{context.<field>}}` may name, in their canonical spelling (see [`context_value`]).
pub const CONTEXT_FIELDS: &[&str] = &["runId", "pipeline", "namespace", "stageId", "attempt"];

/// What templates are resolved against: one stage attempt's view of its run.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    /// The run's inputs (`{{input...}}`).
    pub input: &'a Value,
    /// The output of a finished stage by id (`{{upstream.<id>...}}`); `None` if it has none (yet).
    pub upstream: &'a dyn Fn(&str) -> Option<&'a Value>,
    /// The variables `{{env.NAME}}` may read.
    pub env: &'a BTreeMap<String, String>,
    /// The attempt's context object (`{{context...}}`), normally built by [`context_value`].
    pub context: &'a Value,
}

impl<'a> Scope<'a> {
    /// A scope from its parts. For upstream outputs kept in a map, either use [`with_outputs`] or keep a
    /// closure in a local (an inline closure, not one returned from a function, whose opaque type the
    /// borrow checker would assume to need its borrows when dropped):
    ///
    /// ```
    /// # use std::collections::BTreeMap;
    /// # use serde_json::{json, Value};
    /// use flowmason_actors::template::{render, Scope};
    /// let outputs: BTreeMap<String, Value> = [("fetch".to_string(), json!({"id": 7}))].into();
    /// let (input, env, context) = (json!({}), BTreeMap::new(), json!({}));
    /// let lookup = |stage: &str| outputs.get(stage);
    /// let scope = Scope::new(&input, &lookup, &env, &context);
    /// assert_eq!(render(&json!("{{upstream.fetch.id}}"), "config", &scope).unwrap(), json!(7));
    /// ```
    pub fn new(
        input: &'a Value,
        upstream: &'a dyn Fn(&str) -> Option<&'a Value>,
        env: &'a BTreeMap<String, String>,
        context: &'a Value,
    ) -> Self {
        Scope {
            input,
            upstream,
            env,
            context,
        }
    }
}

impl fmt::Debug for Scope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope")
            .field("input", self.input)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("context", self.context)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Scope`] over stage outputs kept in a map and hands it to `f`: the engine's usual case, for
/// which the `upstream` closure needs somewhere to live.
///
/// ```
/// # use std::collections::BTreeMap;
/// # use serde_json::{json, Value};
/// use flowmason_actors::template::{render, with_outputs};
/// let outputs: BTreeMap<String, Value> = [("fetch".to_string(), json!({"id": 7}))].into();
/// let (input, env, context) = (json!({}), BTreeMap::new(), json!({}));
/// let out = with_outputs(&input, &outputs, &env, &context, |scope| render(&json!("{{upstream.fetch.id}}"), "config", scope));
/// assert_eq!(out.unwrap(), json!(7));
/// ```
pub fn with_outputs<R>(
    input: &Value,
    outputs: &BTreeMap<String, Value>,
    env: &BTreeMap<String, String>,
    context: &Value,
    f: impl FnOnce(&Scope<'_>) -> R,
) -> R {
    let lookup = |stage: &str| outputs.get(stage);
    f(&Scope {
        input,
        upstream: &lookup,
        env,
        context,
    })
}

/// The `{{context...}}` object of a stage attempt: `{runId, pipeline, namespace, stageId, attempt}`.
pub fn context_value(ctx: &StageContext) -> Value {
    let mut map = Map::with_capacity(5);
    map.insert("runId".into(), Value::String(ctx.run_id.to_string()));
    map.insert("pipeline".into(), Value::String(ctx.pipeline.clone()));
    map.insert("namespace".into(), Value::String(ctx.namespace.clone()));
    map.insert("stageId".into(), Value::String(ctx.stage_id.clone()));
    map.insert("attempt".into(), Value::from(ctx.attempt));
    Value::Object(map)
}

/// Why a template could not be rendered. `template` is the template as written, braces included; `field`
/// is the JSON path of the string that holds it (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template is malformed (unclosed `{{`, empty path segment, bad index, ...).
    #[error("{}template {template}: {reason}", field_prefix(field))]
    Syntax {
        field: String,
        template: String,
        reason: String,
    },
    /// The template does not start with one of [`PREFIXES`].
    #[error("{}template {template}: unknown prefix \"{prefix}\" (allowed: {})", field_prefix(field), PREFIXES.join(", "))]
    Prefix {
        field: String,
        template: String,
        prefix: String,
    },
    /// The template is well formed but its path does not resolve in the scope.
    #[error("{}template {template}: {reason}", field_prefix(field))]
    Unresolved {
        field: String,
        template: String,
        reason: String,
    },
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

impl TemplateError {
    /// The JSON path of the string holding the bad template.
    pub fn field(&self) -> &str {
        match self {
            TemplateError::Syntax { field, .. }
            | TemplateError::Prefix { field, .. }
            | TemplateError::Unresolved { field, .. } => field,
        }
    }

    /// The template as written.
    pub fn template(&self) -> &str {
        match self {
            TemplateError::Syntax { template, .. }
            | TemplateError::Prefix { template, .. }
            | TemplateError::Unresolved { template, .. } => template,
        }
    }
}

/// A template error fails the stage with class `Template` (not retried), with `{field, template}` as details.
impl From<TemplateError> for ComponentError {
    fn from(err: TemplateError) -> Self {
        let details = serde_json::json!({ "field": err.field(), "template": err.template() });
        ComponentError::new(ErrorClass::Template, err.to_string()).with_details(details)
    }
}

/// Where a template reads from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Root {
    Input,
    /// The stage id.
    Upstream(String),
    /// The variable name.
    Env(String),
    Context,
}

/// One template found by [`references`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The JSON path of the string holding the template, relative to the value given (see module docs).
    pub field: String,
    pub root: Root,
    /// The path below the root: below `input`, below the stage id, below `context` (its first segment in
    /// canonical spelling, e.g. `runId` for `run_id`); empty for `env`.
    pub path: Vec<String>,
}

/// Renders every template in `value`. `field` is the JSON path of `value` itself, used in error messages
/// (e.g. `"config"`). A value without `{{` anywhere is returned as a plain clone.
///
/// A rendered value larger than [`limits::max_output_bytes`] as JSON is an error: templates that
/// repeat a large output must not multiply it without bound.
pub fn render(value: &Value, field: &str, scope: &Scope<'_>) -> Result<Value, TemplateError> {
    let at = FieldPath::Root(field);
    match render_opt(value, &at, scope)? {
        Some(rendered) => within_limit(rendered, &at),
        None => Ok(value.clone()),
    }
}

/// `value`, or an error naming `at` when it is larger than the limit.
fn within_limit(value: Value, at: &FieldPath<'_>) -> Result<Value, TemplateError> {
    let limit = limits::max_output_bytes();
    if limits::json_exceeds(&value, limit) {
        return Err(too_large(at, limit));
    }
    if limits::deeper_than(&value, limits::MAX_VALUE_DEPTH) {
        return Err(TemplateError::Unresolved {
            field: at.to_string(),
            template: String::new(),
            reason: format!(
                "the rendered value nests deeper than the limit of {}",
                limits::MAX_VALUE_DEPTH
            ),
        });
    }
    Ok(value)
}

fn too_large(at: &FieldPath<'_>, limit: usize) -> TemplateError {
    TemplateError::Unresolved {
        field: at.to_string(),
        template: String::new(),
        reason: format!(
            "the rendered value exceeds the limit of {limit} bytes (--max-output-bytes)"
        ),
    }
}

/// Whether `value` contains a template anywhere (a cheap scan, no parsing).
pub fn has_templates(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains("{{"),
        Value::Array(items) => items.iter().any(has_templates),
        Value::Object(map) => map.values().any(has_templates),
        _ => false,
    }
}

/// The stage's input: `config` rendered, then each `input_mapping` entry rendered and set (overriding) at
/// its key (dotted keys set nested fields: `a.b` sets `b` inside object `a`, creating or replacing `a`
/// when it is not an object). A `null` config counts as `{}`. A config that is not an object can take no
/// mapping: with a non-empty mapping that is an error. Errors name `config...` or `inputMapping.<key>...`.
pub fn build_input(
    config: &Value,
    input_mapping: &BTreeMap<String, Value>,
    scope: &Scope<'_>,
) -> Result<Value, TemplateError> {
    let rendered = render(config, "config", scope)?;
    if input_mapping.is_empty() {
        return Ok(rendered);
    }
    let mut out = match rendered {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        other => {
            let key = input_mapping
                .keys()
                .next()
                .map(String::as_str)
                .unwrap_or_default();
            return Err(TemplateError::Unresolved {
                field: format!("inputMapping.{key}"),
                template: String::new(),
                reason: format!(
                    "config is {} {}, not an object: input mapping cannot set fields in it",
                    article(&other),
                    type_name(&other)
                ),
            });
        }
    };
    for (key, raw) in input_mapping {
        let field = FieldPath::Key(&FieldPath::Root("inputMapping"), key);
        let value = match render_opt(raw, &field, scope)? {
            Some(rendered) => within_limit(rendered, &field)?,
            None => raw.clone(),
        };
        set_dotted(&mut out, key, value).map_err(|reason| TemplateError::Syntax {
            field: field.to_string(),
            template: key.clone(),
            reason: reason.into(),
        })?;
    }
    Ok(Value::Object(out))
}

/// Every template in `value`, with fields relative to `value` (the value itself is `""`). Fails on the
/// first malformed template or unknown prefix. For fields under a prefix use [`references_at`].
pub fn references(value: &Value) -> Result<Vec<Reference>, TemplateError> {
    references_at(value, "")
}

/// [`references`] with `field` as the JSON path of `value` (e.g. `"config"` gives `config.url`).
pub fn references_at(value: &Value, field: &str) -> Result<Vec<Reference>, TemplateError> {
    let mut out = Vec::new();
    collect_refs(value, &FieldPath::Root(field), &mut out)?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------
// Field paths, formatted only when an error or a reference needs them.

enum FieldPath<'p> {
    Root(&'p str),
    Key(&'p FieldPath<'p>, &'p str),
    Index(&'p FieldPath<'p>, usize),
}

impl fmt::Display for FieldPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldPath::Root(s) => f.write_str(s),
            FieldPath::Key(parent, key) => {
                if matches!(parent, FieldPath::Root("")) {
                    f.write_str(key)
                } else {
                    write!(f, "{parent}.{key}")
                }
            }
            FieldPath::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Rendering.

/// `None` when `value` holds no template (the caller clones it); `Some` with the rendered value otherwise.
/// Untouched siblings of a rendered child are cloned once, when the first changed child is met.
fn render_opt(
    value: &Value,
    at: &FieldPath<'_>,
    scope: &Scope<'_>,
) -> Result<Option<Value>, TemplateError> {
    match value {
        Value::String(s) => {
            if s.contains("{{") {
                render_str(s, at, scope).map(Some)
            } else {
                Ok(None)
            }
        }
        Value::Array(items) => {
            let mut out: Option<Vec<Value>> = None;
            for (i, item) in items.iter().enumerate() {
                let rendered = render_opt(item, &FieldPath::Index(at, i), scope)?;
                match (&mut out, rendered) {
                    (Some(out), Some(v)) => out.push(v),
                    (Some(out), None) => out.push(item.clone()),
                    (None, Some(v)) => {
                        let mut vec = Vec::with_capacity(items.len());
                        vec.extend_from_slice(&items[..i]);
                        vec.push(v);
                        out = Some(vec);
                    }
                    (None, None) => {}
                }
            }
            Ok(out.map(Value::Array))
        }
        Value::Object(map) => {
            let mut out: Option<Map<String, Value>> = None;
            for (i, (key, item)) in map.iter().enumerate() {
                let rendered = render_opt(item, &FieldPath::Key(at, key), scope)?;
                match (&mut out, rendered) {
                    (Some(out), Some(v)) => {
                        out.insert(key.clone(), v);
                    }
                    (Some(out), None) => {
                        out.insert(key.clone(), item.clone());
                    }
                    (None, Some(v)) => {
                        let mut new = Map::with_capacity(map.len());
                        for (k, prev) in map.iter().take(i) {
                            new.insert(k.clone(), prev.clone());
                        }
                        new.insert(key.clone(), v);
                        out = Some(new);
                    }
                    (None, None) => {}
                }
            }
            Ok(out.map(Value::Object))
        }
        _ => Ok(None),
    }
}

/// A template found in a string: its byte range (braces included) and the path inside, trimmed.
struct Found<'s> {
    start: usize,
    end: usize,
    inner: &'s str,
}

/// The next template in `s` at or after `from`, `Ok(None)` if there is none.
fn next_template<'s>(
    s: &'s str,
    from: usize,
    at: &FieldPath<'_>,
) -> Result<Option<Found<'s>>, TemplateError> {
    let Some(open) = s[from..].find("{{").map(|i| i + from) else {
        return Ok(None);
    };
    let body = open + 2;
    let Some(close) = s[body..].find("}}").map(|i| i + body) else {
        return Err(TemplateError::Syntax {
            field: at.to_string(),
            template: s[open..].to_string(),
            reason: "unclosed \"{{\" (no matching \"}}\")".into(),
        });
    };
    let inner = s[body..close].trim();
    if inner.is_empty() {
        return Err(TemplateError::Syntax {
            field: at.to_string(),
            template: s[open..close + 2].to_string(),
            reason: "empty template".into(),
        });
    }
    Ok(Some(Found {
        start: open,
        end: close + 2,
        inner,
    }))
}

fn render_str(s: &str, at: &FieldPath<'_>, scope: &Scope<'_>) -> Result<Value, TemplateError> {
    let Some(first) = next_template(s, 0, at)? else {
        return Ok(Value::String(s.to_owned()));
    };
    // Exactly one template, nothing else but whitespace: keep the value's type.
    if s[..first.start].trim().is_empty() && s[first.end..].trim().is_empty() {
        return resolve(&s[first.start..first.end], first.inner, at, scope).map(Cow::into_owned);
    }
    let mut out = String::with_capacity(s.len() + 16);
    let mut pos = 0;
    let mut next = Some(first);
    while let Some(found) = next {
        out.push_str(&s[pos..found.start]);
        let value = resolve(&s[found.start..found.end], found.inner, at, scope)?;
        match &*value {
            Value::String(text) => out.push_str(text),
            Value::Null => {}
            other => out.push_str(&other.to_string()),
        }
        if out.len() > limits::max_output_bytes() {
            return Err(too_large(at, limits::max_output_bytes()));
        }
        pos = found.end;
        next = next_template(s, pos, at)?;
    }
    out.push_str(&s[pos..]);
    Ok(Value::String(out))
}

/// Resolves one template (`raw` as written, `inner` its trimmed path) to a value in the scope.
fn resolve<'v>(
    raw: &str,
    inner: &str,
    at: &FieldPath<'_>,
    scope: &Scope<'v>,
) -> Result<Cow<'v, Value>, TemplateError> {
    let unresolved = |reason: String| TemplateError::Unresolved {
        field: at.to_string(),
        template: raw.to_owned(),
        reason,
    };
    let mut segs = Segments::new(inner);
    let prefix = next_seg(&mut segs, raw, at)?.unwrap_or_default();
    match prefix {
        "input" => walk(scope.input, &mut segs, raw, at).map(Cow::Borrowed),
        "upstream" => {
            let Some(stage) = next_seg(&mut segs, raw, at)? else {
                return Err(syntax(
                    raw,
                    at,
                    "upstream needs a stage id: {{upstream.<stageId>.<path>}}",
                ));
            };
            let Some(output) = (scope.upstream)(stage) else {
                return Err(unresolved(format!(
                    "stage \"{stage}\" has no output (not an upstream stage, or not finished)"
                )));
            };
            walk(output, &mut segs, raw, at).map(Cow::Borrowed)
        }
        "env" => {
            let name = next_seg(&mut segs, raw, at)?;
            let extra = next_seg(&mut segs, raw, at)?;
            let (Some(name), None) = (name, extra) else {
                return Err(syntax(
                    raw,
                    at,
                    "environment variables must be written {{env.NAME}}",
                ));
            };
            match scope.env.get(name) {
                Some(value) => Ok(Cow::Owned(Value::String(value.clone()))),
                None => Err(unresolved(format!(
                    "environment variable \"{name}\" not found"
                ))),
            }
        }
        "context" => {
            let Some(field) = next_seg(&mut segs, raw, at)? else {
                return Ok(Cow::Borrowed(scope.context));
            };
            let Value::Object(map) = scope.context else {
                return Err(unresolved("no context is available".into()));
            };
            let value = map
                .get(field)
                .or_else(|| canonical_context_field(field).and_then(|c| map.get(c)));
            match value {
                Some(value) => walk(value, &mut segs, raw, at).map(Cow::Borrowed),
                None => Err(unresolved(format!(
                    "context field \"{field}\" not found (known: {})",
                    CONTEXT_FIELDS.join(", ")
                ))),
            }
        }
        other => Err(TemplateError::Prefix {
            field: at.to_string(),
            template: raw.to_owned(),
            prefix: other.to_owned(),
        }),
    }
}

fn syntax(raw: &str, at: &FieldPath<'_>, reason: &str) -> TemplateError {
    TemplateError::Syntax {
        field: at.to_string(),
        template: raw.to_owned(),
        reason: reason.to_owned(),
    }
}

fn next_seg<'s>(
    segs: &mut Segments<'s>,
    raw: &str,
    at: &FieldPath<'_>,
) -> Result<Option<&'s str>, TemplateError> {
    segs.next()
        .transpose()
        .map_err(|reason| syntax(raw, at, reason))
}

/// The canonical spelling of a context field written FlowMason's way.
fn canonical_context_field(field: &str) -> Option<&'static str> {
    match field {
        "run_id" | "runId" => Some("runId"),
        "stage_id" | "stageId" => Some("stageId"),
        "pipeline_id" | "pipelineId" | "pipeline" => Some("pipeline"),
        "namespace" => Some("namespace"),
        "attempt" => Some("attempt"),
        _ => None,
    }
}

/// Follows the remaining segments of a template path from `value`.
fn walk<'v>(
    mut value: &'v Value,
    segs: &mut Segments<'_>,
    raw: &str,
    at: &FieldPath<'_>,
) -> Result<&'v Value, TemplateError> {
    while let Some(seg) = next_seg(segs, raw, at)? {
        value = match value {
            Value::Object(map) => map.get(seg).ok_or_else(|| TemplateError::Unresolved {
                field: at.to_string(),
                template: raw.to_owned(),
                reason: format!("key \"{seg}\" not found"),
            })?,
            Value::Array(items) => {
                let index: usize = seg.parse().map_err(|_| TemplateError::Unresolved {
                    field: at.to_string(),
                    template: raw.to_owned(),
                    reason: format!("\"{seg}\" is not an index into an array"),
                })?;
                items.get(index).ok_or_else(|| TemplateError::Unresolved {
                    field: at.to_string(),
                    template: raw.to_owned(),
                    reason: format!("index {index} out of range (length {})", items.len()),
                })?
            }
            other => {
                return Err(TemplateError::Unresolved {
                    field: at.to_string(),
                    template: raw.to_owned(),
                    reason: format!(
                        "cannot access \"{seg}\" on {} {}",
                        article(other),
                        type_name(other)
                    ),
                });
            }
        };
    }
    Ok(value)
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn article(value: &Value) -> &'static str {
    match value {
        Value::Array(_) | Value::Object(_) => "an",
        _ => "a",
    }
}

/// The segments of a template path: `a.b[0].c` yields `a`, `b`, `0`, `c`. Keys may hold any character
/// but `.`, `[` and `]`; indexes are decimal digits.
struct Segments<'s> {
    rest: &'s str,
    first: bool,
}

impl<'s> Segments<'s> {
    fn new(path: &'s str) -> Self {
        Segments {
            rest: path,
            first: true,
        }
    }
}

impl<'s> Iterator for Segments<'s> {
    type Item = Result<&'s str, &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let first = std::mem::replace(&mut self.first, false);
        if let Some(after) = self.rest.strip_prefix('[') {
            let Some(close) = after.find(']') else {
                self.rest = "";
                return Some(Err("unclosed \"[\" in path"));
            };
            let index = &after[..close];
            self.rest = &after[close + 1..];
            if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                self.rest = "";
                return Some(Err("an index in [] must be a non-negative integer"));
            }
            if !(self.rest.is_empty() || self.rest.starts_with('.') || self.rest.starts_with('[')) {
                self.rest = "";
                return Some(Err("expected \".\" or \"[\" after \"]\""));
            }
            return Some(Ok(index));
        }
        let body = if first {
            self.rest
        } else if let Some(body) = self.rest.strip_prefix('.') {
            body
        } else {
            self.rest = "";
            return Some(Err("expected \".\" or \"[\" between path segments"));
        };
        let end = body.find(['.', '[', ']']).unwrap_or(body.len());
        let key = &body[..end];
        self.rest = &body[end..];
        if key.is_empty() {
            self.rest = "";
            return Some(Err("empty path segment"));
        }
        if self.rest.starts_with(']') {
            self.rest = "";
            return Some(Err("unexpected \"]\" in path"));
        }
        Some(Ok(key))
    }
}

// ---------------------------------------------------------------------------------------------------
// References.

fn collect_refs(
    value: &Value,
    at: &FieldPath<'_>,
    out: &mut Vec<Reference>,
) -> Result<(), TemplateError> {
    match value {
        Value::String(s) if s.contains("{{") => {
            let mut pos = 0;
            while let Some(found) = next_template(s, pos, at)? {
                out.push(parse_reference(
                    &s[found.start..found.end],
                    found.inner,
                    at,
                )?);
                pos = found.end;
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| collect_refs(item, &FieldPath::Index(at, i), out)),
        Value::Object(map) => map
            .iter()
            .try_for_each(|(k, item)| collect_refs(item, &FieldPath::Key(at, k), out)),
        _ => Ok(()),
    }
}

fn parse_reference(raw: &str, inner: &str, at: &FieldPath<'_>) -> Result<Reference, TemplateError> {
    let segs: Vec<&str> = Segments::new(inner)
        .collect::<Result<_, _>>()
        .map_err(|reason| syntax(raw, at, reason))?;
    let field = at.to_string();
    let (prefix, rest) = segs
        .split_first()
        .map(|(p, r)| (*p, r))
        .unwrap_or(("", &[]));
    let owned = |segs: &[&str]| segs.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    match prefix {
        "input" => Ok(Reference {
            field,
            root: Root::Input,
            path: owned(rest),
        }),
        "upstream" => match rest.split_first() {
            Some((stage, path)) => Ok(Reference {
                field,
                root: Root::Upstream((*stage).to_owned()),
                path: owned(path),
            }),
            None => Err(syntax(
                raw,
                at,
                "upstream needs a stage id: {{upstream.<stageId>.<path>}}",
            )),
        },
        "env" => match rest {
            [name] => Ok(Reference {
                field,
                root: Root::Env((*name).to_owned()),
                path: Vec::new(),
            }),
            _ => Err(syntax(
                raw,
                at,
                "environment variables must be written {{env.NAME}}",
            )),
        },
        "context" => {
            let mut path = owned(rest);
            if let Some(first) = path.first_mut()
                && let Some(canonical) = canonical_context_field(first)
            {
                *first = canonical.to_owned();
            }
            Ok(Reference {
                field,
                root: Root::Context,
                path,
            })
        }
        other => Err(TemplateError::Prefix {
            field,
            template: raw.to_owned(),
            prefix: other.to_owned(),
        }),
    }
}

// ---------------------------------------------------------------------------------------------------
// Input mapping.

/// The stage's input as written, for checks before any run: `config` with each `input_mapping` entry set
/// at its key unrendered (as [`build_input`] sets it rendered), so that a field set by the mapping counts
/// as present, and as templated when its mapping is. Keys [`build_input`] would reject are left out; a
/// config that is not an object is returned as it is.
pub fn unrendered_input(config: &Value, input_mapping: &BTreeMap<String, Value>) -> Value {
    let mut out = match config {
        Value::Object(map) => map.clone(),
        Value::Null if !input_mapping.is_empty() => Map::new(),
        other => return other.clone(),
    };
    for (key, raw) in input_mapping {
        // A bad key is reported when the run builds the input; here it only adds no field.
        let _ = set_dotted(&mut out, key, raw.clone());
    }
    Value::Object(out)
}

/// Sets `value` at the dotted `key` inside `obj`, creating (or replacing non-object) intermediates.
fn set_dotted(obj: &mut Map<String, Value>, key: &str, value: Value) -> Result<(), &'static str> {
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(
            "an input mapping key must be a field name or a dotted path without empty parts",
        );
    }
    let mut parts = key.split('.');
    let mut last = parts.next().unwrap_or(key);
    let mut current = obj;
    for next in parts {
        let slot = current
            .entry(last.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        current = match slot {
            Value::Object(map) => map,
            _ => return Err("unreachable: slot was just made an object"),
        };
        last = next;
    }
    current.insert(last.to_owned(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unrendered_input_sets_mapped_fields_as_written() {
        let mapping = BTreeMap::from([
            ("data".to_string(), json!("{{upstream.fetch}}")),
            ("headers.auth".to_string(), json!("x")),
        ]);
        assert_eq!(
            unrendered_input(&json!({"jq": ".a", "data": 1}), &mapping),
            json!({"jq": ".a", "data": "{{upstream.fetch}}", "headers": {"auth": "x"}})
        );
        assert_eq!(
            unrendered_input(&Value::Null, &mapping)["data"],
            json!("{{upstream.fetch}}")
        );
        assert_eq!(
            unrendered_input(&Value::Null, &BTreeMap::new()),
            Value::Null
        );
        assert_eq!(unrendered_input(&json!([1]), &mapping), json!([1]));
    }

    struct Fixture {
        input: Value,
        outputs: BTreeMap<String, Value>,
        env: BTreeMap<String, String>,
        context: Value,
    }

    fn fixture() -> Fixture {
        Fixture {
            input: json!({"a": {"b": 42}, "name": "Ada", "flag": true, "none": null, "items": [{"name": "x"}, {"name": "y"}]}),
            outputs: [(
                "fetch".to_string(),
                json!({"body": {"user": {"id": 7}, "tags": ["t1", "t2"]}}),
            )]
            .into(),
            env: [("API_KEY".to_string(), "secret".to_string())].into(),
            context: json!({"runId": "r-1", "pipeline": "p", "namespace": "ns", "stageId": "s1", "attempt": 2}),
        }
    }

    fn with_scope<R>(f: impl FnOnce(&Scope<'_>) -> R) -> R {
        let fx = fixture();
        with_outputs(&fx.input, &fx.outputs, &fx.env, &fx.context, f)
    }

    #[test]
    fn scope_new_with_inline_closure() {
        let fx = fixture();
        let lookup = |stage: &str| fx.outputs.get(stage);
        let scope = Scope::new(&fx.input, &lookup, &fx.env, &fx.context);
        assert_eq!(
            render(&json!("{{upstream.fetch.body.user.id}}"), "", &scope).unwrap(),
            json!(7)
        );
    }

    fn r(value: Value) -> Result<Value, TemplateError> {
        with_scope(|scope| render(&value, "config", scope))
    }

    #[test]
    fn single_template_keeps_type() {
        assert_eq!(r(json!("{{input.a.b}}")).unwrap(), json!(42));
        assert_eq!(r(json!("{{input.a}}")).unwrap(), json!({"b": 42}));
        assert_eq!(r(json!("{{input.flag}}")).unwrap(), json!(true));
        assert_eq!(r(json!("{{input.none}}")).unwrap(), Value::Null);
        assert_eq!(r(json!("  {{ input.a.b }} ")).unwrap(), json!(42));
        assert_eq!(r(json!("{{input}}")).unwrap()["name"], json!("Ada"));
    }

    #[test]
    fn interpolation_in_text() {
        assert_eq!(
            r(json!("Hello {{input.name}}!")).unwrap(),
            json!("Hello Ada!")
        );
        assert_eq!(
            r(json!("n={{input.a.b}} f={{input.flag}} z=[{{input.none}}]")).unwrap(),
            json!("n=42 f=true z=[]")
        );
        assert_eq!(
            r(json!("obj {{input.a}}")).unwrap(),
            json!("obj {\"b\":42}")
        );
        assert_eq!(
            r(json!("{{input.name}}{{input.name}}")).unwrap(),
            json!("AdaAda")
        );
        assert_eq!(
            r(json!("no templates } here")).unwrap(),
            json!("no templates } here")
        );
    }

    #[test]
    fn nested_objects_and_arrays() {
        let out = r(json!({"x": {"y": ["{{input.a.b}}", 1, "lit", {"z": "id-{{upstream.fetch.body.user.id}}"}]}, "k": 5}))
            .unwrap();
        assert_eq!(
            out,
            json!({"x": {"y": [42, 1, "lit", {"z": "id-7"}]}, "k": 5})
        );
    }

    #[test]
    fn value_without_templates_is_unchanged() {
        let v = json!({"a": [1, {"b": "c"}], "d": null});
        assert!(!has_templates(&v));
        assert_eq!(r(v.clone()).unwrap(), v);
    }

    #[test]
    fn array_indexes_both_spellings() {
        assert_eq!(r(json!("{{input.items.1.name}}")).unwrap(), json!("y"));
        assert_eq!(r(json!("{{input.items[0].name}}")).unwrap(), json!("x"));
        assert_eq!(
            r(json!("{{upstream.fetch.body.tags[1]}}")).unwrap(),
            json!("t2")
        );
        let err = r(json!("{{input.items[5]}}")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config: template {{input.items[5]}}: index 5 out of range (length 2)"
        );
    }

    #[test]
    fn env_and_context() {
        assert_eq!(
            r(json!("Bearer {{env.API_KEY}}")).unwrap(),
            json!("Bearer secret")
        );
        assert_eq!(r(json!("{{env.API_KEY}}")).unwrap(), json!("secret"));
        assert_eq!(r(json!("{{context.runId}}")).unwrap(), json!("r-1"));
        assert_eq!(r(json!("{{context.run_id}}")).unwrap(), json!("r-1"));
        assert_eq!(
            r(json!("{{context.stage_id}}/{{context.attempt}}")).unwrap(),
            json!("s1/2")
        );
        assert_eq!(r(json!("{{context.attempt}}")).unwrap(), json!(2));
        let err = r(json!({"h": "{{env.MISSING}}"})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config.h: template {{env.MISSING}}: environment variable \"MISSING\" not found"
        );
        assert!(matches!(
            r(json!("{{env.A.B}}")).unwrap_err(),
            TemplateError::Syntax { .. }
        ));
        assert!(
            r(json!("{{context.nope}}"))
                .unwrap_err()
                .to_string()
                .contains("context field \"nope\" not found")
        );
    }

    #[test]
    fn context_value_from_stage_context() {
        let ctx = StageContext::new(
            uuid::Uuid::nil(),
            "pipe".into(),
            "ns".into(),
            "s".into(),
            3,
            Default::default(),
            std::sync::Arc::new(|_| {}),
        );
        let v = context_value(&ctx);
        assert_eq!(
            v,
            json!({"runId": uuid::Uuid::nil().to_string(), "pipeline": "pipe", "namespace": "ns", "stageId": "s", "attempt": 3})
        );
    }

    #[test]
    fn missing_path_error_names_field_and_template() {
        let err = r(json!({"url": "{{upstream.fetch.body.id}}"})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config.url: template {{upstream.fetch.body.id}}: key \"id\" not found"
        );
        assert_eq!(err.field(), "config.url");
        let err = r(json!({"list": ["ok", "x {{upstream.other.v}}"]})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config.list[1]: template {{upstream.other.v}}: stage \"other\" has no output (not an upstream stage, or not finished)"
        );
        let err = r(json!("{{input.name.first}}")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config: template {{input.name.first}}: cannot access \"first\" on a string"
        );
        let class = ComponentError::from(err).class;
        assert_eq!(class, ErrorClass::Template);
    }

    #[test]
    fn unknown_prefix_lists_allowed() {
        let err = r(json!({"a": "{{inputs.x}}"})).unwrap_err();
        assert!(matches!(&err, TemplateError::Prefix { prefix, .. } if prefix == "inputs"));
        assert_eq!(
            err.to_string(),
            "config.a: template {{inputs.x}}: unknown prefix \"inputs\" (allowed: context, env, input, upstream)"
        );
    }

    #[test]
    fn syntax_errors() {
        let err = r(json!({"a": "x {{input.a"})).unwrap_err();
        assert!(matches!(err, TemplateError::Syntax { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("config.a: template {{input.a: unclosed"),
            "{err}"
        );
        for bad in [
            "{{ }}",
            "{{input..a}}",
            "{{input.a[x]}}",
            "{{input.a[0]b}}",
            "{{upstream}}",
            "{{input.a]}}",
        ] {
            assert!(
                matches!(r(json!(bad)).unwrap_err(), TemplateError::Syntax { .. }),
                "{bad}"
            );
        }
    }

    #[test]
    fn build_input_overrides_and_sets_dotted_keys() {
        let config = json!({"url": "http://x/{{input.a.b}}", "method": "GET", "headers": {"a": "1"}, "n": 3});
        let mapping: BTreeMap<String, Value> = [
            ("method".to_string(), json!("{{input.name}}")),
            ("headers.auth".to_string(), json!("Bearer {{env.API_KEY}}")),
            ("n.deep".to_string(), json!("{{upstream.fetch.body.user}}")),
            ("extra".to_string(), json!(1)),
        ]
        .into();
        let out = with_scope(|scope| build_input(&config, &mapping, scope)).unwrap();
        assert_eq!(
            out,
            json!({"url": "http://x/42", "method": "Ada", "headers": {"a": "1", "auth": "Bearer secret"},
                   "n": {"deep": {"id": 7}}, "extra": 1})
        );
        let null_config = with_scope(|scope| build_input(&Value::Null, &mapping, scope)).unwrap();
        assert_eq!(null_config["method"], json!("Ada"));
        let err = with_scope(|scope| {
            build_input(
                &json!({}),
                &[("x".to_string(), json!("{{input.nope}}"))].into(),
                scope,
            )
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "inputMapping.x: template {{input.nope}}: key \"nope\" not found"
        );
        let err = with_scope(|scope| build_input(&json!([1]), &mapping, scope)).unwrap_err();
        assert!(err.to_string().contains("not an object"), "{err}");
        let err = with_scope(|scope| {
            build_input(&json!({}), &[("a..b".to_string(), json!(1))].into(), scope)
        })
        .unwrap_err();
        assert!(matches!(err, TemplateError::Syntax { .. }));
    }

    #[test]
    fn references_lists_every_template() {
        let value = json!({
            "url": "{{upstream.fetch.body.items[0].id}}?k={{env.KEY}}",
            "list": [{"x": "{{ input.a.b }}"}],
            "ctx": "{{context.run_id}}",
            "plain": "nothing"
        });
        let refs = references(&value).unwrap();
        let want = vec![
            Reference {
                field: "ctx".into(),
                root: Root::Context,
                path: vec!["runId".into()],
            },
            Reference {
                field: "list[0].x".into(),
                root: Root::Input,
                path: vec!["a".into(), "b".into()],
            },
            Reference {
                field: "url".into(),
                root: Root::Upstream("fetch".into()),
                path: vec!["body".into(), "items".into(), "0".into(), "id".into()],
            },
            Reference {
                field: "url".into(),
                root: Root::Env("KEY".into()),
                path: vec![],
            },
        ];
        let mut got = refs.clone();
        got.sort_by(|a, b| (&a.field, &a.root).cmp(&(&b.field, &b.root)));
        let mut want_sorted = want;
        want_sorted.sort_by(|a, b| (&a.field, &a.root).cmp(&(&b.field, &b.root)));
        assert_eq!(got, want_sorted);
        assert_eq!(
            references_at(&json!({"u": "{{input.x}}"}), "config").unwrap()[0].field,
            "config.u"
        );
        assert_eq!(references(&json!("{{input}}")).unwrap()[0].field, "");
        assert!(matches!(
            references(&json!({"a": "{{foo.x}}"})).unwrap_err(),
            TemplateError::Prefix { .. }
        ));
        assert!(matches!(
            references(&json!("{{env}}")).unwrap_err(),
            TemplateError::Syntax { .. }
        ));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Pieces of templates, valid and broken, that random concatenations combine into hostile strings.
        const PIECES: &[&str] = &[
            "{{",
            "}}",
            "{",
            "}",
            " ",
            "input",
            "upstream",
            "env",
            "context",
            "fetch",
            "body",
            "user",
            "id",
            "tags",
            "items",
            "API_KEY",
            "runId",
            "run_id",
            ".",
            "..",
            "[",
            "]",
            "[0]",
            "[1]",
            "[-1]",
            "[99999999999999999999]",
            "0",
            "name",
            "a",
            "b",
            "\u{e9}",
            "\\",
            "\"",
            "|",
        ];

        fn template() -> impl Strategy<Value = String> {
            proptest::collection::vec(proptest::sample::select(PIECES), 0..24)
                .prop_map(|pieces| pieces.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn rendering_arbitrary_strings_never_panics(text in any::<String>()) {
                with_scope(|scope| {
                    let _ = render(&Value::String(text.clone()), "config", scope);
                });
                let _ = references(&Value::String(text));
            }

            #[test]
            fn rendering_template_soup_resolves_or_names_the_field(text in template()) {
                let value = json!({"k": [text.clone()]});
                if let Err(err) = with_scope(|scope| render(&value, "config", scope)) {
                    prop_assert_eq!(err.field(), "config.k[0]");
                }
                if has_templates(&value) {
                    let _ = references_at(&value, "config");
                } else {
                    prop_assert!(references(&value).unwrap().is_empty());
                }
            }

            #[test]
            fn rendering_nested_values_keeps_plain_text_unchanged(
                value in any::<u32>().prop_map(|n| json!({"n": n}))
                    .prop_recursive(8, 64, 4, |inner| prop_oneof![
                        proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                        proptest::collection::btree_map(
                            proptest::sample::select(&["a", "b", "c", "{", "}"][..]).prop_map(String::from),
                            inner,
                            0..4,
                        )
                            .prop_map(|m| Value::Object(m.into_iter().collect())),
                    ]),
            ) {
                let rendered = with_scope(|scope| render(&value, "config", scope)).unwrap();
                prop_assert_eq!(rendered, value);
            }
        }
    }
}
