//! `json_transform`: reshapes JSON between stages, as FlowMason's operator of that name does.
//!
//! Input fields: `data` (required, any JSON), `mapping` (output field -> dot path into `data`, with `[i]`
//! indexes), `jmespath_expression`, `defaults` (values for mapped fields that came out missing),
//! `flatten`, `exclude_fields` (dropped from a mapping's result), `parse_json_strings` (default `true`:
//! a string `data` is parsed as JSON first, also out of a markdown code block or surrounding text), and our
//! extension `jq`, a jq filter run by jaq.
//!
//! Exactly one transformation applies, the first set of: `jq` > `jmespath_expression` > `mapping` >
//! `flatten` > none (passthrough). `jq` comes first for the same reason FlowMason puts its expression
//! language before `mapping`: it is the most specific request. An empty string or empty mapping counts as
//! unset, as in FlowMason.
//!
//! Output: `{result, fields_mapped, fields_missing}` where `fields_mapped` is 1 for an expression, the
//! number of mapping entries for a mapping, the number of keys for `flatten`, 0 for passthrough; and
//! `fields_missing` lists the mapped fields that took their value from `defaults`.
//!
//! A jq filter yields a stream: no output gives `null`, one output that value, several an array of them.
//! Integral floats that jq arithmetic produces (`6 / 2`) are returned as integers, as `jq` prints them.
//!
//! jq filters and JMESPath expressions are checked for nesting deeper than
//! [`MAX_NESTING`](flowmason_actors::limits::MAX_NESTING) before they are parsed (at validation and
//! when the stage runs), parsed on a stack large enough for that depth, and evaluated in a worker
//! process (see `eval_worker`) that the stage's timeout and cancellation kill.

use futures::future::BoxFuture;
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Ctx, Vars, data, unwrap_valr};
use jaq_json::{Num, Val};
use serde::Deserialize;
use serde_json::{Map, Value};

use flowmason_actors::limits::{MAX_NESTING, Syntax, exceeds_nesting};
use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::eval_worker::{self, Answer, Job};

use super::{abbreviate, config_object, input_object, is_templated, opt_bool, opt_str, type_name};

/// The component type name.
pub const NAME: &str = "json_transform";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonTransform;

impl Component for JsonTransform {
    /// Requires `data` (FlowMason's `JsonTransformInput.data` has no default; nothing is passed on from
    /// upstream implicitly), checks the types of the fields set statically, and compiles literal `jq` and
    /// `jmespath_expression` values (those without templates) so that a typo fails validation rather than
    /// a run.
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let map = config_object(NAME, config)?;
        let Some(map) = map.filter(|m| m.contains_key("data")) else {
            return Err(ComponentError::config(format!(
                "{NAME}: `data` is required: set it in config or inputMapping, \
                 e.g. `data: \"{{{{upstream.fetch}}}}\"`"
            )));
        };
        let literal = |field: &str| map.get(field).filter(|v| !is_templated(v));
        if let Some(v) = literal("mapping") {
            let single = Map::from_iter([("mapping".to_string(), v.clone())]);
            mapping_field(&single)?;
        }
        if let Some(Value::String(code)) = literal("jq")
            && !code.is_empty()
        {
            compile_jq(code)?;
        } else if let Some(v) = literal("jq") {
            check_str(v, "jq")?;
        }
        if let Some(Value::String(expr)) = literal("jmespath_expression")
            && !expr.is_empty()
        {
            compile_jmespath(expr)?;
        } else if let Some(v) = literal("jmespath_expression") {
            check_str(v, "jmespath_expression")?;
        }
        for field in ["flatten", "parse_json_strings"] {
            if let Some(v) = literal(field) {
                let single = Map::from_iter([(field.to_string(), v.clone())]);
                opt_bool(NAME, &single, field, false)?;
            }
        }
        if let Some(v) = literal("defaults") {
            let single = Map::from_iter([("defaults".to_string(), v.clone())]);
            object_field(&single, "defaults")?;
        }
        if let Some(v) = literal("exclude_fields") {
            let single = Map::from_iter([("exclude_fields".to_string(), v.clone())]);
            string_list_field(&single, "exclude_fields")?;
        }
        Ok(())
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move { transform(input, &ctx).await.map(ComponentOutput::from) })
    }
}

/// The whole transformation: parses the fields, then applies the first transformation set.
async fn transform(input: Value, ctx: &StageContext) -> Result<Value, ComponentError> {
    let mut map = input_object(NAME, input)?;
    let Some(mut data) = map.remove("data") else {
        return Err(ComponentError::config(format!(
            "{NAME}: `data` is required"
        )));
    };
    let jq = opt_str(NAME, &map, "jq")?.filter(|s| !s.is_empty());
    let jmespath = opt_str(NAME, &map, "jmespath_expression")?.filter(|s| !s.is_empty());
    let mapping = mapping_field(&map)?;
    let defaults = object_field(&map, "defaults")?;
    let flatten = opt_bool(NAME, &map, "flatten", false)?;
    let exclude = string_list_field(&map, "exclude_fields")?;
    let parse_json_strings = opt_bool(NAME, &map, "parse_json_strings", true)?;

    if parse_json_strings
        && let Value::String(text) = &data
        && let Some(parsed) = try_parse_json(text)
    {
        data = parsed;
    }

    if let Some(code) = jq {
        check_jq_nesting(code)?;
        let job = Job::Jq {
            code: code.to_string(),
            inputs: vec![data],
        };
        let what = format!("{NAME}: jq filter {:?}", abbreviate(code));
        let result = single(eval_worker::run(&job, &what, &ctx.cancel).await?, &what)?;
        return Ok(output(result, 1, Vec::new()));
    }
    if let Some(expr) = jmespath {
        check_jmespath_nesting(expr)?;
        let job = Job::Jmespath {
            expression: expr.to_string(),
            inputs: vec![data],
        };
        let what = format!("{NAME}: jmespath_expression {:?}", abbreviate(expr));
        let result = single(eval_worker::run(&job, &what, &ctx.cancel).await?, &what)?;
        return Ok(output(result, 1, Vec::new()));
    }
    if let Some(mapping) = mapping.filter(|m| !m.is_empty()) {
        let mut result = Map::new();
        let mut missing = Vec::new();
        for (out_field, path) in mapping {
            let path = path.as_str().unwrap_or_default();
            let mut value = get_path(&data, path).cloned();
            if value.is_none()
                && let Some(default) = defaults.and_then(|d| d.get(out_field))
            {
                value = Some(default.clone());
                missing.push(Value::String(out_field.clone()));
            }
            result.insert(out_field.clone(), value.unwrap_or(Value::Null));
        }
        for field in exclude.iter().flatten() {
            result.remove(*field);
        }
        return Ok(output(Value::Object(result), mapping.len(), missing));
    }
    if flatten {
        let mut result = Map::new();
        flatten_into(&data, "", &mut result);
        let n = result.len();
        return Ok(output(Value::Object(result), n, Vec::new()));
    }
    Ok(output(data, 0, Vec::new()))
}

fn output(result: Value, fields_mapped: usize, fields_missing: Vec<Value>) -> Value {
    let mut out = Map::with_capacity(3);
    out.insert("result".into(), result);
    out.insert("fields_mapped".into(), Value::from(fields_mapped));
    out.insert("fields_missing".into(), Value::Array(fields_missing));
    Value::Object(out)
}

fn check_str(value: &Value, field: &str) -> Result<(), ComponentError> {
    match value {
        Value::String(_) | Value::Null => Ok(()),
        other => Err(ComponentError::config(format!(
            "{NAME}: `{field}` must be a string, got {}",
            type_name(other)
        ))),
    }
}

/// `mapping`: an object whose values are all strings (paths), or absent / `null`.
fn mapping_field(map: &Map<String, Value>) -> Result<Option<&Map<String, Value>>, ComponentError> {
    let Some(mapping) = object_field(map, "mapping")? else {
        return Ok(None);
    };
    if let Some((field, value)) = mapping.iter().find(|(_, v)| !v.is_string()) {
        return Err(ComponentError::config(format!(
            "{NAME}: `mapping.{field}` must be a path string, got {}",
            type_name(value)
        )));
    }
    Ok(Some(mapping))
}

fn object_field<'a>(
    map: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a Map<String, Value>>, ComponentError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(obj)) => Ok(Some(obj)),
        Some(other) => Err(ComponentError::config(format!(
            "{NAME}: `{field}` must be an object, got {}",
            type_name(other)
        ))),
    }
}

fn string_list_field<'a>(
    map: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<Vec<&'a str>>, ComponentError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str().ok_or_else(|| {
                    ComponentError::config(format!(
                        "{NAME}: `{field}` must list strings, got {}",
                        type_name(item)
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(ComponentError::config(format!(
            "{NAME}: `{field}` must be an array of strings, got {}",
            type_name(other)
        ))),
    }
}

/// FlowMason's `_get_nested_value`: `a.b[0].c`; `None` when any step is missing, of the wrong kind, or null.
fn get_path<'v>(data: &'v Value, path: &str) -> Option<&'v Value> {
    let mut current = data;
    if current.is_null() {
        return None;
    }
    // FlowMason splits `path.replace("[", ".[")` on dots and skips empty parts.
    for dotted in path.split('.') {
        let mut rest = dotted;
        while !rest.is_empty() {
            // The next part starts at the next `[` after this part's first character.
            let split = rest
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == '[')
                .map_or(rest.len(), |(i, _)| i);
            let (part, next) = rest.split_at(split);
            rest = next;
            current = if let Some(index) = part.strip_prefix('[').and_then(|p| p.strip_suffix(']'))
            {
                let index: i64 = index.trim().parse().ok()?;
                let items = current.as_array()?;
                // Python indexing: negative counts from the end.
                let at = if index < 0 {
                    items.len().checked_sub(index.unsigned_abs() as usize)?
                } else {
                    index as usize
                };
                items.get(at)?
            } else {
                current.as_object()?.get(part)?
            };
            if current.is_null() {
                return None;
            }
        }
    }
    Some(current)
}

/// FlowMason's `_flatten_dict`: nested keys joined with `.`, list elements as `key[i]`; a non-object
/// `data` becomes `{"value": data}`.
fn flatten_into(data: &Value, parent: &str, out: &mut Map<String, Value>) {
    let Value::Object(map) = data else {
        let key = if parent.is_empty() { "value" } else { parent };
        out.insert(key.to_owned(), data.clone());
        return;
    };
    for (key, value) in map {
        let new_key = if parent.is_empty() {
            key.clone()
        } else {
            format!("{parent}.{key}")
        };
        match value {
            Value::Object(_) => flatten_into(value, &new_key, out),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let item_key = format!("{new_key}[{i}]");
                    if item.is_object() {
                        flatten_into(item, &item_key, out);
                    } else {
                        out.insert(item_key, item.clone());
                    }
                }
            }
            _ => {
                out.insert(new_key, value.clone());
            }
        }
    }
}

/// FlowMason's `_try_parse_json`: the JSON in `text` (whole, inside a markdown code block, or the first
/// balanced `{...}` or `[...]` in it), or `None` to keep the string as it is.
fn try_parse_json(text: &str) -> Option<Value> {
    if text.is_empty() {
        return None;
    }
    let mut text = text.trim();
    if let Some(open) = text.find("```") {
        let mut start = open + 3;
        if text[start..].starts_with("json") {
            start += 4;
        }
        let body = text[start..].trim_start();
        if let Some(close) = body.find("```") {
            text = body[..close].trim();
        }
    }
    if let Ok(value) = serde_json::from_str(text) {
        return Some(value);
    }
    for (open, close) in [('{', '}'), ('[', ']')] {
        let Some(start) = text.find(open) else {
            continue;
        };
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escape_next = false;
        for (i, c) in text[start..].char_indices() {
            if escape_next {
                escape_next = false;
                continue;
            }
            if c == '\\' && in_string {
                escape_next = true;
                continue;
            }
            if c == '"' {
                in_string = !in_string;
                continue;
            }
            if in_string {
                continue;
            }
            if c == open {
                depth += 1;
            } else if c == close {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    match serde_json::from_str(&text[start..start + i + c.len_utf8()]) {
                        Ok(value) => return Some(value),
                        Err(_) => break,
                    }
                }
            }
        }
    }
    None
}

/// The one result of a job with one input; a failure is a `config` error.
fn single(answer: Answer, what: &str) -> Result<Value, ComponentError> {
    let mut results = answer.map_err(ComponentError::config)?;
    match (results.pop(), results.is_empty()) {
        (Some(Ok(value)), true) => Ok(value),
        (Some(Err(message)), true) => Err(ComponentError::config(message)),
        _ => Err(ComponentError::internal(format!(
            "{what}: the expression worker answered for the wrong number of inputs"
        ))),
    }
}

/// What a worker does with a job (see `eval_worker`): compiles once, evaluates each input.
pub fn evaluate(job: &Job) -> Answer {
    match job {
        Job::Jq { code, inputs } => {
            check_jq_nesting(code).map_err(|e| e.message)?;
            let filter = compile_jq(code).map_err(|e| e.message)?;
            Ok(inputs
                .iter()
                .map(|data| run_jq(&filter, code, data).map_err(|e| e.message))
                .collect())
        }
        Job::Jmespath { expression, inputs } => {
            check_jmespath_nesting(expression).map_err(|e| e.message)?;
            let compiled = compile_jmespath(expression).map_err(|e| e.message)?;
            Ok(inputs
                .iter()
                .map(|data| search_jmespath(&compiled, expression, data))
                .collect())
        }
    }
}

fn search_jmespath(
    compiled: &jmespath::Expression<'static>,
    expr: &str,
    data: &Value,
) -> Result<Value, String> {
    let found = compiled.search(data).map_err(|e| {
        format!(
            "{NAME}: jmespath_expression {:?} failed: {e}",
            abbreviate(expr)
        )
    })?;
    let result = serde_json::to_value(&*found)
        .map_err(|e| format!("{NAME}: jmespath result is not JSON: {e}"))?;
    Ok(integral_floats_as_ints(result))
}

/// jq as [`exceeds_nesting`] scans it.
const JQ: Syntax = Syntax {
    quotes: b"\"",
    interpolation: true,
    hash_comments: true,
    words: &[
        "if", "then", "elif", "else", "reduce", "foreach", "try", "catch", "def", "as", "and",
        "or", "label",
    ],
};

/// JMESPath as [`exceeds_nesting`] scans it: `"identifiers"`, `'raw strings'`, `` `literals` ``.
const JMESPATH: Syntax = Syntax {
    quotes: b"\"'`",
    interpolation: false,
    hash_comments: false,
    words: &[],
};

/// Stack for parsers of text that passed the nesting scan: their frames are large in debug builds.
const PARSER_STACK: usize = 64 * 1024 * 1024;

pub(crate) fn check_jq_nesting(code: &str) -> Result<(), ComponentError> {
    if exceeds_nesting(code, &JQ, MAX_NESTING) {
        return Err(ComponentError::config(format!(
            "{NAME}: jq filter {:?} nests deeper than the limit of {MAX_NESTING} (brackets, operators and pipes count)",
            abbreviate(code)
        )));
    }
    Ok(())
}

pub(crate) fn check_jmespath_nesting(expr: &str) -> Result<(), ComponentError> {
    if exceeds_nesting(expr, &JMESPATH, MAX_NESTING) {
        return Err(ComponentError::config(format!(
            "{NAME}: jmespath_expression {:?} nests deeper than the limit of {MAX_NESTING} (brackets, dots and operators count)",
            abbreviate(expr)
        )));
    }
    Ok(())
}

fn compile_jmespath(expr: &str) -> Result<jmespath::Expression<'static>, ComponentError> {
    check_jmespath_nesting(expr)?;
    stacker::grow(PARSER_STACK, || jmespath::compile(expr)).map_err(|e| {
        ComponentError::config(format!(
            "{NAME}: jmespath_expression {:?} is invalid: {e}",
            abbreviate(expr)
        ))
    })
}

type JqFilter = jaq_core::Filter<data::JustLut<Val>>;

/// A checked jq filter for other components (`filter`'s `jq_condition`); errors name `component`.
pub(crate) struct Jq {
    code: String,
}

impl Jq {
    /// Checks that `code` compiles (and does not nest too deeply).
    pub(crate) fn compile(component: &str, code: &str) -> Result<Jq, ComponentError> {
        compile_jq(code).map_err(|e| rename(e, component))?;
        Ok(Jq {
            code: code.to_string(),
        })
    }

    /// Runs the filter on each input in a worker process: per input, `null` for no output, the value
    /// for one, an array for several, or the message of the failure.
    pub(crate) async fn run_each(
        &self,
        component: &str,
        inputs: Vec<Value>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<Vec<Result<Value, String>>, ComponentError> {
        let count = inputs.len();
        let job = Job::Jq {
            code: self.code.clone(),
            inputs,
        };
        let what = format!("{component}: jq filter {:?}", abbreviate(&self.code));
        let results = eval_worker::run(&job, &what, cancel)
            .await?
            .map_err(|message| rename(ComponentError::config(message), component))?;
        if results.len() != count {
            return Err(ComponentError::internal(format!(
                "{what}: the expression worker answered for {} inputs, not {count}",
                results.len()
            )));
        }
        Ok(results
            .into_iter()
            .map(|r| r.map_err(|message| message.replacen(NAME, component, 1)))
            .collect())
    }
}

fn rename(mut error: ComponentError, component: &str) -> ComponentError {
    error.message = error.message.replacen(NAME, component, 1);
    error
}

/// Parses and compiles a jq filter with jaq's core, standard and JSON libraries, on a stack large
/// enough for any filter that passes the nesting check.
fn compile_jq(code: &str) -> Result<JqFilter, ComponentError> {
    check_jq_nesting(code)?;
    stacker::grow(PARSER_STACK, || compile_jq_here(code))
}

fn compile_jq_here(code: &str) -> Result<JqFilter, ComponentError> {
    let invalid = |why: String| {
        ComponentError::config(format!(
            "{NAME}: jq filter {:?} is invalid: {why}",
            abbreviate(code)
        ))
    };
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs());
    let arena = Arena::default();
    let modules = Loader::new(defs)
        .load(&arena, File { code, path: () })
        .map_err(|errs| {
            let why: Vec<String> = errs
                .into_iter()
                .flat_map(|(_, e)| describe_load_error(e))
                .collect();
            invalid(why.join("; "))
        })?;
    jaq_core::Compiler::default()
        .with_funs(funs)
        .compile(modules)
        .map_err(|errs| {
            let why: Vec<String> = errs
                .into_iter()
                .flat_map(|(_, undefined)| undefined)
                .map(|(name, kind)| format!("undefined {} `{name}`", kind.as_str()))
                .collect();
            invalid(why.join("; "))
        })
}

fn describe_load_error(err: jaq_core::load::Error<&str>) -> Vec<String> {
    use jaq_core::load::Error;
    let near = |s: &str| s.chars().take(20).collect::<String>();
    match err {
        Error::Io(errs) => errs
            .into_iter()
            .map(|(path, why)| format!("cannot load {path}: {why}"))
            .collect(),
        Error::Lex(errs) => errs
            .into_iter()
            .map(|(expect, at)| {
                if at.is_empty() {
                    format!("expected {} but the filter ended", expect.as_str())
                } else {
                    format!("expected {} at {:?}", expect.as_str(), near(at))
                }
            })
            .collect(),
        Error::Parse(errs) => errs
            .into_iter()
            .map(|(expect, found)| {
                if found.is_empty() {
                    format!("expected {} but the filter ended", expect.as_str())
                } else {
                    format!("expected {} but found {:?}", expect.as_str(), near(found))
                }
            })
            .collect(),
    }
}

/// Runs a compiled filter on `data`: `null` for no output, the value for one, an array for several.
fn run_jq(filter: &JqFilter, code: &str, data: &Value) -> Result<Value, ComponentError> {
    let input = Val::deserialize(data)
        .map_err(|e| ComponentError::internal(format!("{NAME}: cannot hand data to jq: {e}")))?;
    let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([]));
    let mut outputs = Vec::new();
    for out in filter.id.run((ctx, input)).map(unwrap_valr) {
        let val = out.map_err(|e| {
            ComponentError::config(format!(
                "{NAME}: jq filter {:?} failed: {e}",
                abbreviate(code)
            ))
        })?;
        outputs.push(val_to_json(&val));
    }
    Ok(match outputs.len() {
        0 => Value::Null,
        1 => outputs.pop().unwrap_or(Value::Null),
        _ => Value::Array(outputs),
    })
}

/// A jaq value as JSON: byte strings as (lossy) UTF-8 text, non-string object keys as their jq text,
/// NaN and infinities as `null`.
fn val_to_json(val: &Val) -> Value {
    match val {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(num) => num_to_json(num),
        Val::TStr(bytes) | Val::BStr(bytes) => {
            Value::String(String::from_utf8_lossy(bytes).into_owned())
        }
        Val::Arr(items) => Value::Array(items.iter().map(val_to_json).collect()),
        Val::Obj(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Val::TStr(bytes) | Val::BStr(bytes) => {
                            String::from_utf8_lossy(bytes).into_owned()
                        }
                        other => other.to_string(),
                    };
                    (key, val_to_json(v))
                })
                .collect(),
        ),
    }
}

/// Integral floats within this bound convert to integers exactly.
const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53

/// JMESPath computes in floats (`sum([1, 2])` is `3.0`); FlowMason's Python JMESPath keeps integers
/// integral, so pipelines expect `3`.
fn integral_floats_as_ints(value: Value) -> Value {
    match value {
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() <= EXACT => Value::from(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(items) => {
            Value::Array(items.into_iter().map(integral_floats_as_ints).collect())
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, integral_floats_as_ints(v)))
                .collect(),
        ),
        other => other,
    }
}

fn num_to_json(num: &Num) -> Value {
    match num {
        Num::Int(i) => Value::from(*i as i64),
        Num::Float(f) if f.fract() == 0.0 && f.abs() <= EXACT => Value::from(*f as i64),
        Num::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        other => other
            .to_string()
            .parse::<serde_json::Number>()
            .map_or(Value::Null, Value::Number),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::testing::context;
    use flowmason_store::ErrorClass;
    use serde_json::json;

    async fn run(input: Value) -> Result<Value, ComponentError> {
        let (ctx, _) = context();
        JsonTransform.execute(input, ctx).await.map(|o| o.output)
    }

    #[tokio::test]
    async fn passthrough_without_transformation() {
        let out = run(json!({"data": {"a": 1}})).await.unwrap();
        assert_eq!(
            out,
            json!({"result": {"a": 1}, "fields_mapped": 0, "fields_missing": []})
        );
    }

    #[tokio::test]
    async fn mapping_with_paths_indexes_and_defaults() {
        let out = run(json!({
            "data": {"user": {"full_name": "John", "contact": {"email": "j@x"}}, "items": [{"id": 1}, {"id": 2}]},
            "mapping": {"name": "user.full_name", "email": "user.contact.email", "second": "items[1].id",
                        "last": "items[-1].id", "phone": "user.contact.phone", "fax": "user.fax"},
            "defaults": {"phone": "n/a"}
        }))
        .await
        .unwrap();
        assert_eq!(
            out,
            json!({"result": {"name": "John", "email": "j@x", "second": 2, "last": 2, "phone": "n/a", "fax": null},
                   "fields_mapped": 6, "fields_missing": ["phone"]})
        );
    }

    #[tokio::test]
    async fn mapping_excludes_fields_but_counts_them() {
        let out = run(json!({"data": {"a": 1, "b": 2}, "mapping": {"x": "a", "y": "b"}, "exclude_fields": ["y"]}))
            .await
            .unwrap();
        assert_eq!(
            out,
            json!({"result": {"x": 1}, "fields_mapped": 2, "fields_missing": []})
        );
    }

    #[tokio::test]
    async fn jmespath_keeps_integral_numbers_integral() {
        let out = run(json!({"data": [{"t": 30}, {"t": 120}, {"t": 1.5}], "jmespath_expression": "{sum: sum([*].t), all: [*].t}"}))
            .await
            .unwrap();
        assert_eq!(out["result"], json!({"sum": 151.5, "all": [30, 120, 1.5]}));
        let out = run(json!({"data": [30, 120], "jmespath_expression": "sum(@)"}))
            .await
            .unwrap();
        assert_eq!(out["result"], json!(150));
    }

    #[tokio::test]
    async fn jmespath_wins_over_mapping() {
        let out = run(json!({
            "data": {"users": [{"name": "a", "age": 20}, {"name": "b", "age": 10}]},
            "jmespath_expression": "users[?age > `18`].name",
            "mapping": {"x": "users"}
        }))
        .await
        .unwrap();
        assert_eq!(
            out,
            json!({"result": ["a"], "fields_mapped": 1, "fields_missing": []})
        );
    }

    #[tokio::test]
    async fn jq_wins_over_jmespath_and_streams() {
        let data = json!({"items": [{"n": 1}, {"n": 2}, {"n": 6}]});
        let out = run(
            json!({"data": data, "jq": "[.items[].n] | add / 3", "jmespath_expression": "items"}),
        )
        .await
        .unwrap();
        assert_eq!(
            out,
            json!({"result": 3, "fields_mapped": 1, "fields_missing": []})
        );
        let many = run(json!({"data": data, "jq": ".items[] | {m: (.n * 10)}"}))
            .await
            .unwrap();
        assert_eq!(many["result"], json!([{"m": 10}, {"m": 20}, {"m": 60}]));
        let none = run(json!({"data": data, "jq": "empty"})).await.unwrap();
        assert_eq!(none["result"], Value::Null);
        let strings = run(json!({"data": data, "jq": ".items | map(.n | tostring) | join(\",\")"}))
            .await
            .unwrap();
        assert_eq!(strings["result"], json!("1,2,6"));
        let half = run(json!({"data": 3, "jq": ". / 2"})).await.unwrap();
        assert_eq!(half["result"], json!(1.5));
    }

    #[tokio::test]
    async fn flatten_nested_structures() {
        let out =
            run(json!({"data": {"a": {"b": 1, "c": [1, {"d": 2}]}, "e": "x"}, "flatten": true}))
                .await
                .unwrap();
        assert_eq!(
            out,
            json!({"result": {"a.b": 1, "a.c[0]": 1, "a.c[1].d": 2, "e": "x"}, "fields_mapped": 4, "fields_missing": []})
        );
        let scalar = run(json!({"data": 5, "flatten": true})).await.unwrap();
        assert_eq!(scalar["result"], json!({"value": 5}));
    }

    #[tokio::test]
    async fn parses_json_strings() {
        let out = run(json!({"data": "{\"a\": {\"b\": 3}}", "mapping": {"x": "a.b"}}))
            .await
            .unwrap();
        assert_eq!(out["result"], json!({"x": 3}));
        let fenced = run(json!({"data": "Here:\n```json\n{\"k\": [1]}\n```\nbye"}))
            .await
            .unwrap();
        assert_eq!(fenced["result"], json!({"k": [1]}));
        let embedded = run(json!({"data": "result is {\"s\": \"a}b\"} ok"}))
            .await
            .unwrap();
        assert_eq!(embedded["result"], json!({"s": "a}b"}));
        let array = run(json!({"data": "list: [1, 2] end"})).await.unwrap();
        assert_eq!(array["result"], json!([1, 2]));
        let text = run(json!({"data": "not json"})).await.unwrap();
        assert_eq!(text["result"], json!("not json"));
        let off = run(json!({"data": "{\"a\": 1}", "parse_json_strings": false}))
            .await
            .unwrap();
        assert_eq!(off["result"], json!("{\"a\": 1}"));
    }

    #[tokio::test]
    async fn empty_expressions_count_as_unset() {
        let out =
            run(json!({"data": {"a": 1}, "jq": "", "jmespath_expression": "", "mapping": {}}))
                .await
                .unwrap();
        assert_eq!(out["result"], json!({"a": 1}));
    }

    #[tokio::test]
    async fn errors_are_config_errors() {
        let cases = [
            (json!({"mapping": {"a": "b"}}), "`data` is required"),
            (
                json!({"data": 1, "jmespath_expression": "users[?"}),
                "jmespath_expression \"users[?\" is invalid",
            ),
            (
                json!({"data": 1, "jq": ".a | ("}),
                "jq filter \".a | (\" is invalid",
            ),
            (
                json!({"data": 1, "jq": "nosuchfn(1)"}),
                "undefined filter `nosuchfn`",
            ),
            (
                json!({"data": "x", "jq": ".a", "parse_json_strings": false}),
                "jq filter \".a\" failed",
            ),
            (
                json!({"data": 1, "jmespath_expression": "abs(@, @)"}),
                "jmespath_expression \"abs(@, @)\"",
            ),
            (
                json!({"data": 1, "mapping": {"a": 1}}),
                "`mapping.a` must be a path string",
            ),
            (
                json!({"data": 1, "mapping": "a"}),
                "`mapping` must be an object",
            ),
            (
                json!({"data": 1, "flatten": "yes"}),
                "`flatten` must be a boolean",
            ),
            (
                json!({"data": 1, "exclude_fields": [1]}),
                "`exclude_fields` must list strings",
            ),
            (
                json!({"data": 1, "defaults": []}),
                "`defaults` must be an object",
            ),
            (json!({"data": 1, "jq": 5}), "`jq` must be a string"),
            (json!([1]), "input must be an object"),
        ];
        for (input, want) in cases {
            let err = run(input.clone()).await.unwrap_err();
            assert_eq!(err.class, ErrorClass::Config, "{input}");
            assert!(
                err.message.contains(want),
                "{input}: {} does not contain {want}",
                err.message
            );
        }
    }

    #[test]
    fn validate_compiles_literal_expressions_only() {
        assert!(
            JsonTransform
                .validate(&json!({"data": {}, "jq": ".a[] | select(.x > 1)", "jmespath_expression": "a[0]"}))
                .is_ok()
        );
        assert!(
            JsonTransform
                .validate(&json!({"data": "{{upstream.a}}", "jq": "{{input.filter}}", "jmespath_expression": "{{input.e}}"}))
                .is_ok()
        );
        assert!(
            JsonTransform
                .validate(
                    &json!({"data": [], "flatten": "{{input.flat}}", "mapping": "{{input.m}}"})
                )
                .is_ok()
        );
        for bad in [
            Value::Null,
            json!({"jq": "."}),
            json!({"data": 1, "jq": ".a | ("}),
            json!({"data": 1, "jmespath_expression": "a[?"}),
            json!({"data": 1, "mapping": {"x": 1}}),
            json!({"data": 1, "flatten": 1}),
            json!({"data": 1, "exclude_fields": "a"}),
            json!({"data": 1, "defaults": 1}),
            json!({"data": 1, "jq": true}),
            json!("config"),
        ] {
            let err = JsonTransform.validate(&bad).unwrap_err();
            assert_eq!(err.class, ErrorClass::Config, "{bad}");
        }
    }
}
