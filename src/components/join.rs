//! `join`: joins two lists of JSON records on key fields, as FlowMason's `join` transformer does with
//! pandas' `merge` (here in Rust, over the records as they are).
//!
//! Input: `left_data`, `right_data` (lists of objects, required), `left_on`, `right_on` (a field name or a
//! list of them, same length; required except for `cross`), `join_type` (`inner` default, `left`,
//! `right`, `outer`/`full_outer`, `cross`), `suffixes` (two strings, default `["_left", "_right"]`, added
//! to non-key fields both sides have).
//!
//! As pandas: the columns are the left records' fields (in order of first appearance) then the right
//! ones', a key field of the same name on both sides appearing once; rows of `inner` and `left` joins
//! follow the left records, of `right` joins the right ones, of `outer` joins the keys in sorted order;
//! fields a row has no value for are null; null keys never match here (pandas matches NaN with NaN).
//!
//! Output, as FlowMason's: `{success, data, row_count, columns, metadata: {execution_time_ms,
//! join_type, left_rows, right_rows, output_rows, left_on, right_on}, error}`. As in FlowMason a key
//! field no record has is reported as `success: false` with `error`, not a failure of the stage. Errors
//! (`config`): malformed fields, an unknown `join_type`, key lists of different lengths.

use std::time::Instant;

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::aggregate::{compare, records};
use super::{input_object, opt_str, static_config, type_name};

/// The component type name.
pub const NAME: &str = "join";

const TYPES: [&str; 6] = ["inner", "left", "right", "outer", "full_outer", "cross"];

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Join;

/// A join to make.
pub(crate) struct Settings {
    pub(crate) join_type: String,
    pub(crate) left_on: Vec<String>,
    pub(crate) right_on: Vec<String>,
    pub(crate) suffixes: (String, String),
}

fn keys(map: &Map<String, Value>, field: &str) -> Result<Vec<String>, ComponentError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|i| {
                i.as_str().map(str::to_string).ok_or_else(|| {
                    ComponentError::config(format!(
                        "{NAME}: `{field}` must be a field name or a list of them, got an element \
                         that is {}",
                        type_name(i)
                    ))
                })
            })
            .collect(),
        Some(other) => Err(ComponentError::config(format!(
            "{NAME}: `{field}` must be a field name or a non-empty list of them, got {}",
            type_name(other)
        ))),
    }
}

fn settings(map: &Map<String, Value>, complete: bool) -> Result<Settings, ComponentError> {
    let join_type = opt_str(NAME, map, "join_type")?
        .unwrap_or("inner")
        .to_lowercase();
    if !TYPES.contains(&join_type.as_str()) {
        return Err(ComponentError::config(format!(
            "{NAME}: `join_type` must be one of {}, got {join_type:?}",
            TYPES.join(", ")
        )));
    }
    let left_on = keys(map, "left_on")?;
    let right_on = keys(map, "right_on")?;
    if join_type != "cross" && complete {
        for (field, list) in [("left_on", &left_on), ("right_on", &right_on)] {
            if list.is_empty() {
                return Err(ComponentError::config(format!(
                    "{NAME}: `{field}` is required for a {join_type} join"
                )));
            }
        }
    }
    if !left_on.is_empty() && !right_on.is_empty() && left_on.len() != right_on.len() {
        return Err(ComponentError::config(format!(
            "{NAME}: `left_on` names {} fields and `right_on` {}: they must pair up",
            left_on.len(),
            right_on.len()
        )));
    }
    let suffixes = match map.get("suffixes") {
        None | Some(Value::Null) => ("_left".to_string(), "_right".to_string()),
        Some(Value::Array(pair)) if pair.len() == 2 && pair.iter().all(Value::is_string) => (
            pair[0].as_str().unwrap_or_default().to_string(),
            pair[1].as_str().unwrap_or_default().to_string(),
        ),
        Some(other) => {
            return Err(ComponentError::config(format!(
                "{NAME}: `suffixes` must be a list of two strings, got {other}"
            )));
        }
    };
    Ok(Settings {
        join_type,
        left_on,
        right_on,
        suffixes,
    })
}

/// Field names in order of first appearance, as pandas makes a DataFrame's columns.
fn columns(rows: &[&Map<String, Value>]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in rows {
        for k in r.keys() {
            if !out.contains(k) {
                out.push(k.clone());
            }
        }
    }
    out
}

fn key_of(row: &Map<String, Value>, on: &[String]) -> Option<Vec<Value>> {
    on.iter()
        .map(|k| row.get(k).filter(|v| !v.is_null()).cloned())
        .collect()
}

/// A list of names as Python prints it, for FlowMason's messages.
fn py_list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Where each output column takes its value from.
enum Source {
    Left(String),
    Right(String),
    /// A key of the same name on both sides: the left value, else the right one.
    Both(String),
}

/// The joined rows and their columns, or the data problem FlowMason reports as `error`.
pub(crate) fn join(
    left: &[&Map<String, Value>],
    right: &[&Map<String, Value>],
    s: &Settings,
) -> Result<(Vec<Value>, Vec<String>), String> {
    let (lcols, rcols) = (columns(left), columns(right));
    let missing = |on: &[String], cols: &[String]| -> Vec<String> {
        on.iter().filter(|k| !cols.contains(k)).cloned().collect()
    };
    let (ml, mr) = (missing(&s.left_on, &lcols), missing(&s.right_on, &rcols));
    if !ml.is_empty() {
        return Err(format!(
            "Left join keys not found in left dataset: {}",
            py_list(&ml)
        ));
    }
    if !mr.is_empty() {
        return Err(format!(
            "Right join keys not found in right dataset: {}",
            py_list(&mr)
        ));
    }
    let cross = s.join_type == "cross";
    let shared: Vec<&String> = s
        .left_on
        .iter()
        .zip(&s.right_on)
        .filter(|(l, r)| l == r)
        .map(|(l, _)| l)
        .collect();
    let mut sources: Vec<(String, Source)> = Vec::new();
    for c in &lcols {
        let name = if shared.contains(&c) && !cross {
            sources.push((c.clone(), Source::Both(c.clone())));
            continue;
        } else if rcols.contains(c) {
            format!("{c}{}", s.suffixes.0)
        } else {
            c.clone()
        };
        sources.push((name, Source::Left(c.clone())));
    }
    for c in &rcols {
        if shared.contains(&c) && !cross {
            continue;
        }
        let name = if lcols.contains(c) {
            format!("{c}{}", s.suffixes.1)
        } else {
            c.clone()
        };
        sources.push((name, Source::Right(c.clone())));
    }
    let row = |l: Option<&Map<String, Value>>, r: Option<&Map<String, Value>>| -> Value {
        let get = |side: Option<&Map<String, Value>>, k: &str| {
            side.and_then(|m| m.get(k)).cloned().unwrap_or(Value::Null)
        };
        let mut out = Map::new();
        for (name, source) in &sources {
            let value = match source {
                Source::Left(k) => get(l, k),
                Source::Right(k) => get(r, k),
                Source::Both(k) => match get(l, k) {
                    Value::Null => get(r, k),
                    v => v,
                },
            };
            out.insert(name.clone(), value);
        }
        Value::Object(out)
    };
    let matches = |lr: &Map<String, Value>, rr: &Map<String, Value>| matches!((key_of(lr, &s.left_on), key_of(rr, &s.right_on)), (Some(a), Some(b)) if a == b);
    let mut data = Vec::new();
    match s.join_type.as_str() {
        "cross" => {
            for l in left {
                for r in right {
                    data.push(row(Some(l), Some(r)));
                }
            }
        }
        "inner" | "left" => {
            for l in left {
                let mut found = false;
                for r in right.iter().filter(|r| matches(l, r)) {
                    found = true;
                    data.push(row(Some(l), Some(r)));
                }
                if !found && s.join_type == "left" {
                    data.push(row(Some(l), None));
                }
            }
        }
        "right" => {
            for r in right {
                let mut found = false;
                for l in left.iter().filter(|l| matches(l, r)) {
                    found = true;
                    data.push(row(Some(l), Some(r)));
                }
                if !found {
                    data.push(row(None, Some(r)));
                }
            }
        }
        _ => {
            // outer: by key in sorted order, left rows (and their matches) before unmatched right rows.
            let mut entries: Vec<(Option<Vec<Value>>, Value)> = Vec::new();
            for l in left {
                let key = key_of(l, &s.left_on);
                let mut found = false;
                for r in right.iter().filter(|r| matches(l, r)) {
                    found = true;
                    entries.push((key.clone(), row(Some(l), Some(r))));
                }
                if !found {
                    entries.push((key, row(Some(l), None)));
                }
            }
            for r in right.iter().filter(|r| !left.iter().any(|l| matches(l, r))) {
                entries.push((key_of(r, &s.right_on), row(None, Some(r))));
            }
            entries.sort_by(|(a, _), (b, _)| match (a, b) {
                (Some(a), Some(b)) => a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| compare(x, y))
                    .find(|o| o.is_ne())
                    .unwrap_or(std::cmp::Ordering::Equal),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            });
            data = entries.into_iter().map(|(_, v)| v).collect();
        }
    }
    Ok((data, sources.into_iter().map(|(n, _)| n).collect()))
}

impl Component for Join {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(statics) = static_config(NAME, config)? else {
            return Ok(());
        };
        for field in ["left_data", "right_data"] {
            if let Some(data) = statics.get(field) {
                records(NAME, field, Some(data))?;
            }
        }
        settings(&statics, false).map(|_| ())
    }

    fn execute(
        &self,
        input: Value,
        _ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let started = Instant::now();
            let map = input_object(NAME, input)?;
            let s = settings(&map, true)?;
            let left = records(NAME, "left_data", map.get("left_data"))?;
            let right = records(NAME, "right_data", map.get("right_data"))?;
            let elapsed = || started.elapsed().as_millis() as u64;
            let output = match join(&left, &right, &s) {
                Ok((data, columns)) => json!({
                    "success": true,
                    "row_count": data.len(),
                    "columns": columns,
                    "metadata": {
                        "execution_time_ms": elapsed(),
                        "join_type": s.join_type,
                        "left_rows": left.len(),
                        "right_rows": right.len(),
                        "output_rows": data.len(),
                        "left_on": s.left_on,
                        "right_on": s.right_on,
                    },
                    "data": data,
                    "error": null,
                }),
                Err(error) => json!({
                    "success": false, "data": null, "row_count": null, "columns": null,
                    "metadata": {"execution_time_ms": elapsed(), "join_type": s.join_type},
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
    fn bad_fields_are_config_errors_naming_the_field() {
        for (config, field) in [
            (json!({"join_type": "semi"}), "`join_type`"),
            (json!({"left_on": ["a", "b"], "right_on": ["a"]}), "pair up"),
            (json!({"suffixes": ["_x"]}), "`suffixes`"),
            (json!({"left_on": 3}), "`left_on`"),
            (json!({"left_data": [1]}), "`left_data[0]`"),
        ] {
            let err = Join.validate(&config).expect_err("refused");
            assert!(err.message.contains(field), "{field}: {}", err.message);
        }
        assert!(Join.validate(&json!({"join_type": "cross"})).is_ok());
    }
}
