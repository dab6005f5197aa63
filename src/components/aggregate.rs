//! `aggregate`: statistics over a list of JSON records, optionally per group, as FlowMason's `aggregate`
//! transformer computes them with pandas (here in Rust, over the records as they are).
//!
//! Input: `data` (list of objects, required), `aggregations` (required: `[{func, field, alias,
//! percentile}]`, `alias` defaulting to `<field>_<func>`), `group_by` (field names), `having` (a FlowMason
//! Python expression over each result row's columns, like SQL's HAVING; pandas' `query`).
//!
//! Functions, with pandas' meaning: `sum`, `avg`/`mean`, `count` (non-null values), `min`, `max`,
//! `distinct`/`nunique` (distinct non-null values), `median`, `percentile` (`percentile` 0 to 100,
//! default 50, linear interpolation), `std`/`stddev` and `var`/`variance` (sample, n - 1), `first`,
//! `last`. Missing and null values are skipped (pandas' NaN), except by `first`/`last` without
//! `group_by`, which take the first/last record's value as pandas' `iloc` does. A statistic of no values
//! is null (`sum`: 0). Groups come out sorted by their keys; records with a null or missing key are left
//! out (pandas' `dropna`). An unknown function is a validation error naming it.
//!
//! Output, as FlowMason's: `{success, data, row_count, metadata: {execution_time_ms, input_rows,
//! output_rows, aggregations, grouped}, error}`. As in FlowMason, a problem with the data (a field no
//! record has, a non-numeric value to sum, a `having` that fails) is not a failure of the stage: `success:
//! false` with `error`. Errors (`config`): malformed `data`, `aggregations`, `group_by` or `having`.

use std::cmp::Ordering;
use std::time::Instant;

use futures::future::BoxFuture;
use serde_json::{Map, Number, Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::expr::{Expr, ExprError};
use super::{input_object, static_config, type_name};

/// The component type name.
pub const NAME: &str = "aggregate";

/// The functions `aggregations[].func` may name.
pub const FUNCTIONS: [&str; 16] = [
    "sum",
    "avg",
    "mean",
    "count",
    "min",
    "max",
    "distinct",
    "nunique",
    "median",
    "percentile",
    "std",
    "stddev",
    "var",
    "variance",
    "first",
    "last",
];

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Aggregate;

/// One statistic to compute: `func` over `field`, as column `alias`.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) func: String,
    pub(crate) field: String,
    pub(crate) alias: String,
    pub(crate) percentile: f64,
}

fn specs(map: &Map<String, Value>) -> Result<Option<Vec<Spec>>, ComponentError> {
    let items = match map.get("aggregations") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(ComponentError::config(format!(
                "{NAME}: `aggregations` must be a list, got {}",
                type_name(other)
            )));
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("aggregations[{i}]");
            let Value::Object(spec) = item else {
                return Err(ComponentError::config(format!(
                    "{NAME}: `{at}` must be an object {{func, field, alias}}, got {}",
                    type_name(item)
                )));
            };
            let text = |field: &str| match spec.get(field) {
                Some(Value::String(s)) => Ok(Some(s.clone())),
                None | Some(Value::Null) => Ok(None),
                Some(other) => Err(ComponentError::config(format!(
                    "{NAME}: `{at}.{field}` must be a string, got {}",
                    type_name(other)
                ))),
            };
            let required = |field: &str| {
                text(field)?.ok_or_else(|| {
                    ComponentError::config(format!("{NAME}: `{at}.{field}` is required"))
                })
            };
            let func = required("func")?;
            if !FUNCTIONS.contains(&func.as_str()) {
                return Err(ComponentError::config(format!(
                    "{NAME}: `{at}.func` {func:?} is not supported (supported: {})",
                    FUNCTIONS.join(", ")
                )));
            }
            let field = required("field")?;
            let percentile = match spec.get("percentile") {
                None | Some(Value::Null) => 50.0,
                Some(v) => v
                    .as_f64()
                    .filter(|p| (0.0..=100.0).contains(p))
                    .ok_or_else(|| {
                        ComponentError::config(format!(
                            "{NAME}: `{at}.percentile` must be a number from 0 to 100, got {v}"
                        ))
                    })?,
            };
            let alias = text("alias")?.unwrap_or_else(|| format!("{field}_{func}"));
            Ok(Spec {
                func,
                field,
                alias,
                percentile,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn group_by(map: &Map<String, Value>) -> Result<Vec<String>, ComponentError> {
    match map.get("group_by") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str().map(str::to_string).ok_or_else(|| {
                    ComponentError::config(format!(
                        "{NAME}: `group_by` must be a list of field names, got an element that is {}",
                        type_name(i)
                    ))
                })
            })
            .collect(),
        Some(other) => Err(ComponentError::config(format!(
            "{NAME}: `group_by` must be a list of field names, got {}",
            type_name(other)
        ))),
    }
}

fn having(map: &Map<String, Value>) -> Result<Option<String>, ComponentError> {
    match map.get("having") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ComponentError::config(format!(
            "{NAME}: `having` must be a string, got {}",
            type_name(other)
        ))),
    }
}

/// The records of `data`.
pub(crate) fn records<'a>(
    component: &str,
    field: &str,
    value: Option<&'a Value>,
) -> Result<Vec<&'a Map<String, Value>>, ComponentError> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_object().ok_or_else(|| {
                    ComponentError::config(format!(
                        "{component}: `{field}[{i}]` must be an object (a record), got {}",
                        type_name(item)
                    ))
                })
            })
            .collect(),
        None | Some(Value::Null) => Err(ComponentError::config(format!(
            "{component}: `{field}` is required"
        ))),
        Some(other) => Err(ComponentError::config(format!(
            "{component}: `{field}` must be a list of records, got {}",
            type_name(other)
        ))),
    }
}

/// A total order on JSON values for sorting keys and taking min/max: numbers by value, strings
/// lexicographically, then by type.
pub(crate) fn compare(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            Value::Array(_) => 4,
            Value::Object(_) => 5,
        }
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap_or(f64::NAN)
            .partial_cmp(&y.as_f64().unwrap_or(f64::NAN))
            .unwrap_or(Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => rank(a)
            .cmp(&rank(b))
            .then_with(|| a.to_string().cmp(&b.to_string())),
    }
}

fn float(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

fn numbers(values: &[&Value], spec: &Spec) -> Result<Vec<f64>, String> {
    values
        .iter()
        .map(|v| {
            v.as_f64().ok_or_else(|| {
                format!(
                    "{}: field {:?} holds {} ({}), not a number",
                    spec.func,
                    spec.field,
                    type_name(v),
                    super::abbreviate(&v.to_string())
                )
            })
        })
        .collect()
}

/// Linear-interpolation quantile (pandas' default) of sorted `xs`.
fn quantile(xs: &mut [f64], q: f64) -> Value {
    if xs.is_empty() {
        return Value::Null;
    }
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal));
    let pos = q * (xs.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo as f64))
}

fn variance(xs: &[f64]) -> Option<f64> {
    if xs.len() < 2 {
        return None;
    }
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    Some(xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (xs.len() - 1) as f64)
}

/// One statistic over the rows of a group. `grouped` picks pandas' group semantics for first/last.
fn statistic(rows: &[&Map<String, Value>], spec: &Spec, grouped: bool) -> Result<Value, String> {
    let present: Vec<&Value> = rows
        .iter()
        .filter_map(|r| r.get(&spec.field))
        .filter(|v| !v.is_null())
        .collect();
    Ok(match spec.func.as_str() {
        "count" => Value::from(present.len()),
        "distinct" | "nunique" => {
            let mut seen: Vec<&Value> = Vec::new();
            for v in &present {
                if !seen.contains(v) {
                    seen.push(v);
                }
            }
            Value::from(seen.len())
        }
        "min" | "max" => {
            let pick = present.iter().copied().reduce(|a, b| {
                let order = compare(a, b);
                if (spec.func == "min") == (order == Ordering::Greater) {
                    b
                } else {
                    a
                }
            });
            pick.cloned().unwrap_or(Value::Null)
        }
        "first" | "last" if grouped => {
            let pick = if spec.func == "first" {
                present.first()
            } else {
                present.last()
            };
            pick.map_or(Value::Null, |v| (*v).clone())
        }
        "first" | "last" => {
            let row = if spec.func == "first" {
                rows.first()
            } else {
                rows.last()
            };
            row.and_then(|r| r.get(&spec.field))
                .cloned()
                .unwrap_or(Value::Null)
        }
        "sum" => {
            if present.iter().all(|v| v.is_i64()) {
                let total = present
                    .iter()
                    .filter_map(|v| v.as_i64())
                    .try_fold(0i64, i64::checked_add);
                match total {
                    Some(t) => Value::from(t),
                    None => float(numbers(&present, spec)?.iter().sum()),
                }
            } else {
                float(numbers(&present, spec)?.iter().sum())
            }
        }
        "avg" | "mean" => {
            let xs = numbers(&present, spec)?;
            if xs.is_empty() {
                Value::Null
            } else {
                float(xs.iter().sum::<f64>() / xs.len() as f64)
            }
        }
        "median" => quantile(&mut numbers(&present, spec)?, 0.5),
        "percentile" => quantile(&mut numbers(&present, spec)?, spec.percentile / 100.0),
        "std" | "stddev" => {
            variance(&numbers(&present, spec)?).map_or(Value::Null, |v| float(v.sqrt()))
        }
        "var" | "variance" => variance(&numbers(&present, spec)?).map_or(Value::Null, float),
        other => return Err(format!("unknown aggregation function {other:?}")),
    })
}

/// A group's key values and its records.
type Group<'a> = (Vec<Value>, Vec<&'a Map<String, Value>>);

/// The aggregated rows, or the data problem FlowMason reports as `error`.
pub(crate) fn aggregate(
    rows: &[&Map<String, Value>],
    specs: &[Spec],
    keys: &[String],
    having: Option<&str>,
    ctx: &StageContext,
) -> Result<Vec<Value>, String> {
    for spec in specs.iter().map(|s| &s.field).chain(keys) {
        if !rows.iter().any(|r| r.contains_key(spec)) {
            return Err(format!("'{spec}'"));
        }
    }
    let mut out = Vec::new();
    if keys.is_empty() {
        let mut row = Map::new();
        for spec in specs {
            row.insert(spec.alias.clone(), statistic(rows, spec, false)?);
        }
        out.push(row);
    } else {
        let mut groups: Vec<Group> = Vec::new();
        for r in rows {
            let key: Option<Vec<Value>> = keys
                .iter()
                .map(|k| r.get(k).filter(|v| !v.is_null()).cloned())
                .collect();
            let Some(key) = key else { continue };
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push(r),
                None => groups.push((key, vec![r])),
            }
        }
        groups.sort_by(|(a, _), (b, _)| {
            a.iter()
                .zip(b)
                .map(|(x, y)| compare(x, y))
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        });
        for (key, members) in groups {
            let mut row = Map::new();
            for (k, v) in keys.iter().zip(key) {
                row.insert(k.clone(), v);
            }
            for spec in specs {
                row.insert(spec.alias.clone(), statistic(&members, spec, true)?);
            }
            out.push(row);
        }
    }
    if let Some(src) = having {
        let names: Vec<&str> = out
            .first()
            .map(|r| r.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let expr = Expr::parse(src, &names).map_err(|e| format!("having: {e}"))?;
        let mut kept = Vec::new();
        for row in out {
            let vars: Vec<(&str, Value)> =
                row.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            match expr.eval_bool(&vars, &ctx.cancel) {
                Ok(true) => kept.push(row),
                Ok(false) => {}
                Err(e) => return Err(format!("having: {e}")),
            }
        }
        out = kept;
    }
    Ok(out.into_iter().map(Value::Object).collect())
}

/// Checks a `having` expression before the columns are known: every free name is taken for a column.
fn check_having(src: &str) -> Result<(), ExprError> {
    let mut names: Vec<String> = Vec::new();
    loop {
        let bound: Vec<&str> = names.iter().map(String::as_str).collect();
        match Expr::parse(src, &bound) {
            Ok(_) => return Ok(()),
            Err(ExprError::Unsupported { what, .. })
                if what.starts_with("name \"") && names.len() < 256 =>
            {
                names.push(
                    what.trim_start_matches("name \"")
                        .trim_end_matches('"')
                        .to_string(),
                );
            }
            Err(other) => return Err(other),
        }
    }
}

impl Component for Aggregate {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(statics) = static_config(NAME, config)? else {
            return Ok(());
        };
        specs(&statics)?;
        group_by(&statics)?;
        if let Some(src) = having(&statics)? {
            check_having(&src)
                .map_err(|e| ComponentError::config(format!("{NAME}: `having`: {e}")))?;
        }
        if let Some(data) = statics.get("data") {
            records(NAME, "data", Some(data))?;
        }
        Ok(())
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let started = Instant::now();
            let map = input_object(NAME, input)?;
            let specs = specs(&map)?.ok_or_else(|| {
                ComponentError::config(format!("{NAME}: `aggregations` is required"))
            })?;
            let keys = group_by(&map)?;
            let having = having(&map)?;
            let rows = records(NAME, "data", map.get("data"))?;
            let elapsed = || started.elapsed().as_millis() as u64;
            let output = match aggregate(&rows, &specs, &keys, having.as_deref(), &ctx) {
                Ok(data) => json!({
                    "success": true,
                    "row_count": data.len(),
                    "metadata": {
                        "execution_time_ms": elapsed(),
                        "input_rows": rows.len(),
                        "output_rows": data.len(),
                        "aggregations": specs.len(),
                        "grouped": !keys.is_empty(),
                    },
                    "data": data,
                    "error": null,
                }),
                Err(error) => json!({
                    "success": false, "data": null, "row_count": null,
                    "metadata": {"execution_time_ms": elapsed()}, "error": error,
                }),
            };
            Ok(output.into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::testing::context;

    async fn run(input: Value) -> Value {
        Aggregate
            .execute(input, context().0)
            .await
            .expect("runs")
            .output
    }

    #[tokio::test]
    async fn global_and_grouped_statistics() {
        let data = json!([
            {"region": "b", "amount": 10, "id": 1},
            {"region": "a", "amount": 20, "id": 2},
            {"region": "b", "amount": 30, "id": 3},
            {"region": null, "amount": 5, "id": 4},
        ]);
        let out = run(json!({"data": data, "aggregations": [
            {"func": "sum", "field": "amount", "alias": "total"},
            {"func": "avg", "field": "amount"},
            {"func": "percentile", "field": "amount", "percentile": 75, "alias": "p75"},
        ]}))
        .await;
        assert_eq!(
            out["data"],
            json!([{"total": 65, "amount_avg": 16.25, "p75": 22.5}])
        );
        let out = run(
            json!({"data": data, "group_by": ["region"], "having": "n > 1",
                             "aggregations": [{"func": "count", "field": "id", "alias": "n"},
                                              {"func": "max", "field": "amount", "alias": "top"}]}),
        )
        .await;
        assert_eq!(out["data"], json!([{"region": "b", "n": 2, "top": 30}]));
        assert_eq!(out["metadata"]["grouped"], json!(true));
    }

    #[tokio::test]
    async fn data_problems_are_reported_as_flowmason_does() {
        let out =
            run(json!({"data": [{"a": "x"}], "aggregations": [{"func": "sum", "field": "b"}]}))
                .await;
        assert_eq!(
            (out["success"].clone(), out["error"].clone()),
            (json!(false), json!("'b'"))
        );
        let out =
            run(json!({"data": [{"a": "x"}], "aggregations": [{"func": "avg", "field": "a"}]}))
                .await;
        assert!(
            out["error"]
                .as_str()
                .is_some_and(|e| e.contains("not a number")),
            "{out}"
        );
    }

    #[test]
    fn unsupported_functions_and_bad_fields_are_validation_errors() {
        for (config, field) in [
            (
                json!({"aggregations": [{"func": "mode", "field": "a"}]}),
                "`aggregations[0].func` \"mode\"",
            ),
            (
                json!({"aggregations": [{"func": "sum"}]}),
                "`aggregations[0].field` is required",
            ),
            (
                json!({"aggregations": [{"func": "percentile", "field": "a", "percentile": 101}]}),
                "percentile",
            ),
            (json!({"group_by": 3}), "`group_by`"),
            (json!({"having": "total >"}), "`having`"),
            (json!({"data": [1]}), "`data[0]`"),
        ] {
            let err = Aggregate.validate(&config).expect_err("refused");
            assert!(err.message.contains(field), "{field}: {}", err.message);
        }
        assert!(
            Aggregate
                .validate(&json!({"having": "total > 100 and n < 3"}))
                .is_ok()
        );
    }
}
