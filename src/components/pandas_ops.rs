//! `pandas`: one DataFrame operation over a list of JSON records, as FlowMason's `pandas` transformer,
//! for a declared subset of its operations (here in Rust, over the records as they are).
//!
//! Input: `data` (list of objects, required), `operation` (required), and per operation:
//! - `filter`: `expression`, a FlowMason Python expression over the row's columns (pandas' `query`);
//!   rows it is true for are kept (a row it fails on, e.g. comparing a null, is left out, as NaN
//!   compares false).
//! - `sort`: `sort_by_columns`, `ascending` (a boolean or one per column; default true); nulls last.
//! - `select` (our addition): `columns`, the columns kept, in that order.
//! - `drop`: `drop_columns`; `rename`: `rename_columns` (`{old: new}`); `fillna`: `fill_value`.
//! - `groupby`: `group_by_columns`, `aggregations` (`{column: function}`, functions as `aggregate`'s:
//!   `sum`, `mean`, `count`, `min`, `max`, `median`, `std`, `var`, `nunique`, `first`, `last`); each
//!   result column is named for its source column. A list of functions per column (pandas' two-level
//!   columns) is refused.
//! - `merge`: `right_data`, `merge_on` (a column or list), `merge_how` (`inner` default, `left`,
//!   `right`, `outer`, `cross`), suffixes `_x`/`_y` as pandas.
//! - `apply`: `column` and `function`: `lambda x: <FlowMason expression over x>` (a null stays null), or
//!   one of `str.upper`, `str.lower`, `str.strip`, `str.title`, `str.capitalize`, `str.len` (a
//!   non-string gives null, as pandas' `.str`).
//!
//! Any other operation (FlowMason also names `map` and `pivot`, which its own code cannot run) is a
//! validation error naming it and listing the supported ones.
//!
//! As pandas' `DataFrame(records)`, every row has every column (in order of first appearance), null where
//! a record has no value. Output, as FlowMason's: `{success, data, row_count, columns, metadata:
//! {execution_time_ms, operation, input_rows, output_rows}, error}`; a data problem (an unknown column,
//! an expression that fails) is `success: false` with `error`. Errors (`config`): unsupported or
//! malformed operations and fields.

use std::cmp::Ordering;
use std::time::Instant;

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::aggregate::{self, Spec, compare, records};
use super::expr::{Expr, ExprError};
use super::join;
use super::{input_object, opt_str, static_config, type_name};

/// The component type name.
pub const NAME: &str = "pandas";

/// The operations supported.
pub const OPERATIONS: [&str; 9] = [
    "filter", "sort", "select", "drop", "rename", "fillna", "groupby", "merge", "apply",
];

const GROUP_FUNCTIONS: [&str; 11] = [
    "sum", "mean", "count", "min", "max", "median", "std", "var", "nunique", "first", "last",
];
const STR_FUNCTIONS: [&str; 6] = [
    "str.upper",
    "str.lower",
    "str.strip",
    "str.title",
    "str.capitalize",
    "str.len",
];

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pandas;

fn names(map: &Map<String, Value>, field: &str) -> Result<Option<Vec<String>>, ComponentError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str().map(str::to_string).ok_or_else(|| {
                    ComponentError::config(format!(
                        "{NAME}: `{field}` must be a list of column names, got an element that \
                         is {}",
                        type_name(i)
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(ComponentError::config(format!(
            "{NAME}: `{field}` must be a list of column names, got {}",
            type_name(other)
        ))),
    }
}

fn required<T>(value: Option<T>, field: &str, operation: &str) -> Result<T, ComponentError> {
    value.ok_or_else(|| {
        ComponentError::config(format!(
            "{NAME}: `{field}` is required for the {operation} operation"
        ))
    })
}

/// An `apply` function.
enum Function {
    Lambda { variable: String, body: Expr },
    Str(String),
}

fn function(text: &str) -> Result<Function, ComponentError> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix("lambda") {
        let (variable, body) = rest.split_once(':').ok_or_else(|| {
            ComponentError::config(format!(
                "{NAME}: `function` {text:?} is not a lambda `lambda x: <expression>`"
            ))
        })?;
        let variable = variable.trim().to_string();
        let body = Expr::parse(body, &[variable.as_str()])
            .map_err(|e| ComponentError::config(format!("{NAME}: `function`: {e}")))?;
        return Ok(Function::Lambda { variable, body });
    }
    let name = text.trim_end_matches("()");
    if STR_FUNCTIONS.contains(&name) {
        return Ok(Function::Str(name.to_string()));
    }
    Err(ComponentError::config(format!(
        "{NAME}: `function` {text:?} is not supported (supported: `lambda x: <expression>`, {})",
        STR_FUNCTIONS.join(", ")
    )))
}

/// Checks the fields `operation` needs; `complete` when the input is rendered (required fields must be
/// there).
fn check(map: &Map<String, Value>, complete: bool) -> Result<Option<String>, ComponentError> {
    let Some(operation) = opt_str(NAME, map, "operation")? else {
        return if complete {
            Err(ComponentError::config(format!(
                "{NAME}: `operation` is required"
            )))
        } else {
            Ok(None)
        };
    };
    let operation = operation.to_lowercase();
    if !OPERATIONS.contains(&operation.as_str()) {
        return Err(ComponentError::config(format!(
            "{NAME}: `operation` {operation:?} is not supported (supported: {})",
            OPERATIONS.join(", ")
        )));
    }
    let need = |present: bool, field: &str| {
        if complete && !present {
            Err(ComponentError::config(format!(
                "{NAME}: `{field}` is required for the {operation} operation"
            )))
        } else {
            Ok(())
        }
    };
    match operation.as_str() {
        "filter" => {
            if let Some(src) = opt_str(NAME, map, "expression")? {
                Expr::parse(src, &[]).map(|_| ()).or_else(|e| match e {
                    ExprError::Unsupported { ref what, .. } if what.starts_with("name ") => Ok(()),
                    other => Err(ComponentError::config(format!(
                        "{NAME}: `expression`: {other}"
                    ))),
                })?;
            }
            need(
                map.get("expression").is_some_and(|v| !v.is_null()),
                "expression",
            )?;
        }
        "sort" => {
            need(names(map, "sort_by_columns")?.is_some(), "sort_by_columns")?;
            match map.get("ascending") {
                None | Some(Value::Null | Value::Bool(_)) => {}
                Some(Value::Array(items)) if items.iter().all(Value::is_boolean) => {}
                Some(other) => {
                    return Err(ComponentError::config(format!(
                        "{NAME}: `ascending` must be a boolean or a list of booleans, got {}",
                        type_name(other)
                    )));
                }
            }
        }
        "select" => need(names(map, "columns")?.is_some(), "columns")?,
        "drop" => need(names(map, "drop_columns")?.is_some(), "drop_columns")?,
        "rename" => match map.get("rename_columns") {
            Some(Value::Object(m)) => {
                if let Some((k, v)) = m.iter().find(|(_, v)| !v.is_string()) {
                    return Err(ComponentError::config(format!(
                        "{NAME}: `rename_columns.{k}` must be a string, got {}",
                        type_name(v)
                    )));
                }
            }
            None | Some(Value::Null) => need(false, "rename_columns")?,
            Some(other) => {
                return Err(ComponentError::config(format!(
                    "{NAME}: `rename_columns` must be an object {{old: new}}, got {}",
                    type_name(other)
                )));
            }
        },
        "fillna" => need(
            map.get("fill_value").is_some_and(|v| !v.is_null()),
            "fill_value",
        )?,
        "groupby" => {
            need(
                names(map, "group_by_columns")?.is_some(),
                "group_by_columns",
            )?;
            match map.get("aggregations") {
                Some(Value::Object(m)) => {
                    for (column, func) in m {
                        match func.as_str() {
                            Some(f) if GROUP_FUNCTIONS.contains(&f) => {}
                            _ => {
                                return Err(ComponentError::config(format!(
                                    "{NAME}: `aggregations.{column}` must be one function name \
                                     of {} (a list of functions is not supported), got {func}",
                                    GROUP_FUNCTIONS.join(", ")
                                )));
                            }
                        }
                    }
                }
                None | Some(Value::Null) => need(false, "aggregations")?,
                Some(other) => {
                    return Err(ComponentError::config(format!(
                        "{NAME}: `aggregations` must be an object {{column: function}}, got {}",
                        type_name(other)
                    )));
                }
            }
        }
        "merge" => {
            need(
                map.get("right_data").is_some_and(|v| !v.is_null()),
                "right_data",
            )?;
            need(names(map, "merge_on")?.is_some(), "merge_on")?;
            let how = opt_str(NAME, map, "merge_how")?.unwrap_or("inner");
            if !["inner", "left", "right", "outer", "cross"].contains(&how) {
                return Err(ComponentError::config(format!(
                    "{NAME}: `merge_how` must be inner, left, right, outer or cross, got {how:?}"
                )));
            }
        }
        _ => {
            need(opt_str(NAME, map, "column")?.is_some(), "column")?;
            match opt_str(NAME, map, "function")? {
                Some(f) => {
                    function(f)?;
                }
                None => need(false, "function")?,
            }
        }
    }
    Ok(Some(operation))
}

/// The records as pandas' DataFrame has them: every row with every column.
fn frame(rows: &[&Map<String, Value>]) -> Frame {
    let mut columns: Vec<String> = Vec::new();
    for r in rows {
        for k in r.keys() {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
    }
    let full = rows
        .iter()
        .map(|r| {
            columns
                .iter()
                .map(|c| (c.clone(), r.get(c).cloned().unwrap_or(Value::Null)))
                .collect()
        })
        .collect();
    (columns, full)
}

fn py_list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    format!("[{}]", quoted.join(", "))
}

fn missing(columns: &[String], wanted: &[String]) -> Result<(), String> {
    let absent: Vec<String> = wanted
        .iter()
        .filter(|w| !columns.contains(w))
        .cloned()
        .collect();
    if absent.is_empty() {
        Ok(())
    } else {
        Err(format!("{} not found in axis", py_list(&absent)))
    }
}

fn apply_str(name: &str, value: &Value) -> Value {
    let Value::String(s) = value else {
        return Value::Null;
    };
    match name {
        "str.upper" => Value::from(s.to_uppercase()),
        "str.lower" => Value::from(s.to_lowercase()),
        "str.strip" => Value::from(s.trim()),
        "str.len" => Value::from(s.chars().count()),
        "str.capitalize" => {
            let mut chars = s.chars();
            Value::from(match chars.next() {
                Some(first) => first
                    .to_uppercase()
                    .chain(chars.flat_map(char::to_lowercase))
                    .collect(),
                None => String::new(),
            })
        }
        _ => {
            // str.title: each run of letters starts upper case, the rest lower.
            let mut out = String::with_capacity(s.len());
            let mut previous_letter = false;
            for c in s.chars() {
                if previous_letter {
                    out.extend(c.to_lowercase());
                } else {
                    out.extend(c.to_uppercase());
                }
                previous_letter = c.is_alphabetic();
            }
            Value::from(out)
        }
    }
}

/// A result's column names and rows.
type Frame = (Vec<String>, Vec<Map<String, Value>>);

/// The operation's rows and columns, or the data problem FlowMason reports as `error`.
fn operate(
    operation: &str,
    map: &Map<String, Value>,
    rows: &[&Map<String, Value>],
    ctx: &StageContext,
) -> Result<Frame, String> {
    let (columns, mut data) = frame(rows);
    let list = |field: &str| names(map, field).ok().flatten().unwrap_or_default();
    let cancel: &CancellationToken = &ctx.cancel;
    match operation {
        "filter" => {
            let src = map
                .get("expression")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let bound: Vec<&str> = columns.iter().map(String::as_str).collect();
            let expr = Expr::parse(src, &bound).map_err(|e| e.to_string())?;
            let mut kept = Vec::new();
            for row in data {
                let vars: Vec<(&str, Value)> =
                    row.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
                match expr.eval_bool(&vars, cancel) {
                    Ok(true) => kept.push(row),
                    Ok(false) | Err(ExprError::Eval(_)) => {}
                    Err(other) => return Err(other.to_string()),
                }
            }
            Ok((columns, kept))
        }
        "sort" => {
            let by = list("sort_by_columns");
            missing(&columns, &by).map_err(|_| {
                format!(
                    "'{}'",
                    by.iter()
                        .find(|b| !columns.contains(b))
                        .cloned()
                        .unwrap_or_default()
                )
            })?;
            let ascending: Vec<bool> = match map.get("ascending") {
                Some(Value::Array(items)) => {
                    items.iter().map(|b| b.as_bool().unwrap_or(true)).collect()
                }
                Some(Value::Bool(b)) => vec![*b; by.len()],
                _ => vec![true; by.len()],
            };
            if ascending.len() != by.len() {
                return Err(format!(
                    "Length of ascending ({}) != length of by ({})",
                    ascending.len(),
                    by.len()
                ));
            }
            data.sort_by(|a, b| {
                by.iter()
                    .zip(&ascending)
                    .map(|(c, up)| match (&a[c], &b[c]) {
                        (Value::Null, Value::Null) => Ordering::Equal,
                        (Value::Null, _) => Ordering::Greater,
                        (_, Value::Null) => Ordering::Less,
                        (x, y) if *up => compare(x, y),
                        (x, y) => compare(y, x),
                    })
                    .find(|o| o.is_ne())
                    .unwrap_or(Ordering::Equal)
            });
            Ok((columns, data))
        }
        "select" => {
            let keep = list("columns");
            missing(&columns, &keep)?;
            let data = data
                .into_iter()
                .map(|row| keep.iter().map(|c| (c.clone(), row[c].clone())).collect())
                .collect();
            Ok((keep, data))
        }
        "drop" => {
            let drop = list("drop_columns");
            // pandas raises a KeyError, whose message Python prints quoted.
            missing(&columns, &drop).map_err(|e| format!("\"{e}\""))?;
            for row in &mut data {
                for c in &drop {
                    row.remove(c);
                }
            }
            Ok((
                columns.into_iter().filter(|c| !drop.contains(c)).collect(),
                data,
            ))
        }
        "rename" => {
            let renames = map
                .get("rename_columns")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let new_name = |c: &String| {
                renames
                    .get(c)
                    .and_then(Value::as_str)
                    .map_or_else(|| c.clone(), str::to_string)
            };
            let data = data
                .into_iter()
                .map(|row| row.into_iter().map(|(k, v)| (new_name(&k), v)).collect())
                .collect();
            Ok((columns.iter().map(new_name).collect(), data))
        }
        "fillna" => {
            let fill = map.get("fill_value").cloned().unwrap_or(Value::Null);
            for row in &mut data {
                for v in row.values_mut() {
                    if v.is_null() {
                        *v = fill.clone();
                    }
                }
            }
            Ok((columns, data))
        }
        "groupby" => {
            let keys = list("group_by_columns");
            let specs: Vec<Spec> = map
                .get("aggregations")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(column, func)| Spec {
                            func: func.as_str().unwrap_or_default().to_string(),
                            field: column.clone(),
                            alias: column.clone(),
                            percentile: 50.0,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let refs: Vec<&Map<String, Value>> = data.iter().collect();
            let out = aggregate::aggregate(&refs, &specs, &keys, None, ctx)?;
            let mut columns = keys.clone();
            columns.extend(specs.iter().map(|s| s.alias.clone()));
            Ok((
                columns,
                out.into_iter()
                    .filter_map(|v| v.as_object().cloned())
                    .collect(),
            ))
        }
        "merge" => {
            let right = map
                .get("right_data")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let right: Vec<&Map<String, Value>> =
                right.iter().filter_map(Value::as_object).collect();
            let on = list("merge_on");
            let settings = join::Settings {
                join_type: map
                    .get("merge_how")
                    .and_then(Value::as_str)
                    .unwrap_or("inner")
                    .to_string(),
                left_on: on.clone(),
                right_on: on,
                suffixes: ("_x".into(), "_y".into()),
            };
            let refs: Vec<&Map<String, Value>> = data.iter().collect();
            let (joined, columns) = join::join(&refs, &right, &settings)?;
            Ok((
                columns,
                joined
                    .into_iter()
                    .filter_map(|v| v.as_object().cloned())
                    .collect(),
            ))
        }
        _ => {
            let column = map
                .get("column")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            missing(&columns, std::slice::from_ref(&column)).map_err(|_| format!("'{column}'"))?;
            let text = map
                .get("function")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let f = function(text).map_err(|e| e.message)?;
            for row in &mut data {
                let value = row[&column].clone();
                let new = match &f {
                    Function::Str(name) => apply_str(name, &value),
                    Function::Lambda { .. } if value.is_null() => Value::Null,
                    Function::Lambda { variable, body } => body
                        .eval(&[(variable.as_str(), value)], cancel)
                        .map_err(|e| e.to_string())?,
                };
                row.insert(column.clone(), new);
            }
            Ok((columns, data))
        }
    }
}

impl Component for Pandas {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(statics) = static_config(NAME, config)? else {
            return Ok(());
        };
        if let Some(data) = statics.get("data") {
            records(NAME, "data", Some(data))?;
        }
        check(&statics, false).map(|_| ())
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let started = Instant::now();
            let map = input_object(NAME, input)?;
            let operation = required(check(&map, true)?, "operation", "any")?;
            let rows = records(NAME, "data", map.get("data"))?;
            let elapsed = || started.elapsed().as_millis() as u64;
            let output = match operate(&operation, &map, &rows, &ctx) {
                Ok((columns, data)) => json!({
                    "success": true,
                    "row_count": data.len(),
                    "columns": columns,
                    "metadata": {
                        "execution_time_ms": elapsed(),
                        "operation": operation,
                        "input_rows": rows.len(),
                        "output_rows": data.len(),
                    },
                    "data": data,
                    "error": null,
                }),
                Err(error) => json!({
                    "success": false, "data": null, "row_count": null, "columns": null,
                    "metadata": {"execution_time_ms": elapsed(), "operation": operation},
                    "error": error,
                }),
            };
            Ok(output.into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_operations_and_bad_fields_are_validation_errors() {
        for (config, field) in [
            (
                json!({"operation": "pivot"}),
                "`operation` \"pivot\" is not supported",
            ),
            (json!({"operation": "map"}), "`operation` \"map\""),
            (
                json!({"operation": "groupby", "aggregations": {"v": ["sum", "mean"]}}),
                "`aggregations.v`",
            ),
            (
                json!({"operation": "apply", "function": "str.swapcase"}),
                "`function`",
            ),
            (
                json!({"operation": "apply", "function": "lambda x: x.__class__"}),
                "`function`",
            ),
            (
                json!({"operation": "merge", "merge_how": "semi"}),
                "`merge_how`",
            ),
            (
                json!({"operation": "filter", "expression": "age >"}),
                "`expression`",
            ),
            (
                json!({"operation": "sort", "ascending": "yes"}),
                "`ascending`",
            ),
        ] {
            let err = Pandas.validate(&config).expect_err("refused");
            assert!(err.message.contains(field), "{field}: {}", err.message);
        }
        assert!(
            Pandas
                .validate(&json!({"operation": "filter", "expression": "age > 25"}))
                .is_ok()
        );
    }

    #[test]
    fn str_functions_follow_python() {
        assert_eq!(
            apply_str("str.title", &json!("hello wORLD-x")),
            json!("Hello World-X")
        );
        assert_eq!(apply_str("str.capitalize", &json!("hELLO")), json!("Hello"));
        assert_eq!(apply_str("str.len", &json!("héllo")), json!(5));
        assert_eq!(apply_str("str.upper", &json!(3)), Value::Null);
    }
}
