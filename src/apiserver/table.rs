//! Table output (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), so that `kubectl get` prints
//! the columns a CRD declares in `additionalPrinterColumns` (and a few for built-ins), with `Name` first
//! and dates shown as ages, as the real API server does.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::registry::ResourceType;

/// Whether the client asked for a Table (kubectl lists `as=Table` first and plain JSON as fallback).
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// What each row carries as `object` (`includeObject` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(text: Option<&str>) -> Self {
        match text {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// Column definitions: `Name`, then the resource's printer columns.
pub fn column_definitions(rt: &ResourceType) -> Value {
    let mut cols = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace.",
    })];
    for c in &rt.columns {
        cols.push(json!({
            "name": c.name,
            "type": if c.type_ == "date" { "string" } else { c.type_.as_str() },
            "format": "",
            "priority": c.priority,
            "description": c.description,
        }));
    }
    Value::Array(cols)
}

/// One row of an object.
pub fn row(rt: &ResourceType, object: &Value, include: IncludeObject, now: DateTime<Utc>) -> Value {
    let mut cells = vec![object["metadata"]["name"].clone()];
    for c in &rt.columns {
        let value = json_path(object, &c.json_path);
        cells.push(match (&value, c.type_.as_str()) {
            (Value::String(s), "date") => DateTime::parse_from_rfc3339(s)
                .map(|t| Value::String(human_age(now - t.with_timezone(&Utc))))
                .unwrap_or(value.clone()),
            (Value::Array(_) | Value::Object(_), _) => Value::String(value.to_string()),
            _ => value,
        });
    }
    let mut row = json!({ "cells": cells });
    match include {
        IncludeObject::None => {}
        IncludeObject::Object => row["object"] = object.clone(),
        IncludeObject::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": object["metadata"],
            })
        }
    }
    row
}

/// A Table of `objects`; `columns` false leaves the definitions out (watch events after the first).
pub fn table(
    rt: &ResourceType,
    objects: &[Value],
    metadata: Value,
    include: IncludeObject,
    columns: bool,
) -> Value {
    let now = Utc::now();
    let rows: Vec<Value> = objects.iter().map(|o| row(rt, o, include, now)).collect();
    let mut table = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "rows": rows,
    });
    if columns {
        table["columnDefinitions"] = column_definitions(rt);
    } else {
        table["columnDefinitions"] = Value::Array(Vec::new());
    }
    table
}

/// Evaluates a simple JSONPath as CRDs use them: `.a.b`, `.a[0].b`, `.a['x.y']`.
pub fn json_path(object: &Value, path: &str) -> Value {
    let mut current = object;
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}');
    rest = rest.strip_prefix('$').unwrap_or(rest);
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            current = &current[&r[..end]];
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else {
                return Value::Null;
            };
            let inner = r[..end].trim_matches(|c| c == '\'' || c == '"');
            current = match inner.parse::<usize>() {
                Ok(i) => &current[i],
                Err(_) => &current[inner],
            };
            rest = &r[end + 1..];
        } else {
            return Value::Null;
        }
    }
    current.clone()
}

/// Kubernetes' `HumanDuration`: "5s", "3m20s", "4h", "2d3h", "400d", "3y20d".
pub fn human_age(age: chrono::TimeDelta) -> String {
    let secs = age.num_seconds();
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let minutes = secs / 60;
    let hours = minutes / 60;
    let days = hours / 24;
    if secs < 120 {
        format!("{secs}s")
    } else if minutes < 10 {
        if secs % 60 == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{}s", secs % 60)
        }
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        if minutes % 60 == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{}m", minutes % 60)
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        if hours % 24 == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{}h", hours % 24)
        }
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        format!("{}y{}d", days / 365, days % 365)
    } else {
        format!("{}y", days / 365)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_ages() {
        let obj = json!({"a": {"b": [{"c": 1}], "x.y": "z"}});
        assert_eq!(json_path(&obj, ".a.b[0].c"), json!(1));
        assert_eq!(json_path(&obj, ".a['x.y']"), json!("z"));
        assert_eq!(json_path(&obj, ".missing.x"), Value::Null);
        assert_eq!(human_age(chrono::TimeDelta::seconds(5)), "5s");
        assert_eq!(human_age(chrono::TimeDelta::seconds(200)), "3m20s");
        assert_eq!(human_age(chrono::TimeDelta::hours(50)), "2d2h");
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
