//! `sql`: a SQL query over the stage's records, as FlowMason's `sql` transformer.
//!
//! FlowMason runs the query in DuckDB. DuckDB's Rust crate (like DataFusion) compiles for many minutes
//! on the 2 cores this engine is built on; SQLite, through `rusqlite` with its `bundled` feature, is one C
//! file compiled in about a minute, embedded, in-memory, and well kept. The SQL is SQLite's: the common
//! `SELECT ... WHERE ... GROUP BY ... ORDER BY ... LIMIT`, joins, CTEs and window functions are the same;
//! DuckDB-only functions are not available.
//!
//! Input: `data` (list of objects: table `data`, required), `sql` (required), `additional_tables`
//! (`{name: [records]}`: more tables), `explain` (default false: return SQLite's query plan instead).
//! Each table has a column per field (in order of first appearance; null where a record has none):
//! numbers, strings and booleans (as 0/1) are stored as they are, objects and lists as JSON text.
//! The query runs on its own thread in a fresh in-memory database, which it may modify; cancelling the
//! attempt interrupts it. At most 100,000 rows are returned.
//!
//! Output, as FlowMason's: `{success, data, row_count, columns, query_plan, metadata: {execution_time_ms,
//! sql, tables_used}, error}`. As in FlowMason, an error in the query (a syntax error, an unknown column)
//! is `success: false` with SQLite's message, not a failure of the stage. Errors (`config`): missing or
//! malformed fields, a table name that is not an identifier; `cancelled`.

use std::time::Instant;

use futures::future::BoxFuture;
use rusqlite::types::{Value as Sql, ValueRef};
use rusqlite::{Connection, params_from_iter};
use serde_json::{Map, Number, Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};
use flowmason_store::ErrorClass;

use super::aggregate::records;
use super::{input_object, opt_bool, opt_str, static_config, type_name};

/// The component type name.
pub const NAME: &str = "sql";

/// Most rows a query returns.
const MAX_ROWS: usize = 100_000;

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SqlQuery;

type Table = (String, Vec<Map<String, Value>>);

fn tables(map: &Map<String, Value>, complete: bool) -> Result<Vec<Table>, ComponentError> {
    let mut out = Vec::new();
    match map.get("data") {
        None | Some(Value::Null) if !complete => {}
        data => out.push((
            "data".to_string(),
            records(NAME, "data", data)?.into_iter().cloned().collect(),
        )),
    }
    match map.get("additional_tables") {
        None | Some(Value::Null) => {}
        Some(Value::Object(extra)) => {
            for (name, rows) in extra {
                let valid = name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid || name == "data" {
                    return Err(ComponentError::config(format!(
                        "{NAME}: `additional_tables.{name}`: a table name must be an identifier \
                         (letters, digits, _) other than `data`"
                    )));
                }
                let field = format!("additional_tables.{name}");
                out.push((
                    name.clone(),
                    records(NAME, &field, Some(rows))?
                        .into_iter()
                        .cloned()
                        .collect(),
                ));
            }
        }
        Some(other) => {
            return Err(ComponentError::config(format!(
                "{NAME}: `additional_tables` must be an object {{name: [records]}}, got {}",
                type_name(other)
            )));
        }
    }
    Ok(out)
}

fn to_sql(value: &Value) -> Sql {
    match value {
        Value::Null => Sql::Null,
        Value::Bool(b) => Sql::Integer(i64::from(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Sql::Integer(i),
            None => Sql::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Sql::Text(s.clone()),
        other => Sql::Text(other.to_string()),
    }
}

fn from_sql(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::from(i),
        ValueRef::Real(x) => Number::from_f64(x).map_or(Value::Null, Value::Number),
        ValueRef::Text(t) => Value::from(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::from(b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn load(conn: &Connection, name: &str, rows: &[Map<String, Value>]) -> rusqlite::Result<()> {
    let mut columns: Vec<&String> = Vec::new();
    for r in rows {
        for k in r.keys() {
            if !columns.contains(&k) {
                columns.push(k);
            }
        }
    }
    if columns.is_empty() {
        // A table needs a column; an empty one keeps `SELECT * FROM t` valid.
        return conn.execute_batch(&format!("CREATE TABLE {} (_empty)", quote(name)));
    }
    let list: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    conn.execute_batch(&format!(
        "CREATE TABLE {} ({})",
        quote(name),
        list.join(", ")
    ))?;
    let marks = vec!["?"; columns.len()].join(", ");
    let mut insert = conn.prepare(&format!(
        "INSERT INTO {} ({}) VALUES ({marks})",
        quote(name),
        list.join(", ")
    ))?;
    for r in rows {
        insert.execute(params_from_iter(
            columns
                .iter()
                .map(|c| to_sql(r.get(*c).unwrap_or(&Value::Null))),
        ))?;
    }
    Ok(())
}

/// What the query gave: `(columns, rows)` or the plan.
enum Answer {
    Rows(Vec<String>, Vec<Value>),
    Plan(String),
}

fn query(conn: &Connection, sql: &str, explain: bool) -> rusqlite::Result<Answer> {
    let text = if explain {
        format!("EXPLAIN QUERY PLAN {sql}")
    } else {
        sql.to_string()
    };
    let mut statement = conn.prepare(&text)?;
    let columns: Vec<String> = statement.column_names().map(str::to_string).collect();
    let mut rows = statement.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        if out.len() == MAX_ROWS {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "the query returns more than {MAX_ROWS} rows"
            )));
        }
        let mut record = Map::new();
        for (i, c) in columns.iter().enumerate() {
            record.insert(c.clone(), from_sql(row.get_ref(i)?));
        }
        out.push(Value::Object(record));
    }
    if explain {
        let plan: Vec<String> = out
            .iter()
            .map(|r| r["detail"].as_str().unwrap_or_default().to_string())
            .collect();
        return Ok(Answer::Plan(plan.join("\n")));
    }
    Ok(Answer::Rows(columns, out))
}

fn message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::InvalidParameterName(m) => m.clone(),
        other => other.to_string(),
    }
}

impl Component for SqlQuery {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(statics) = static_config(NAME, config)? else {
            return Ok(());
        };
        opt_str(NAME, &statics, "sql")?;
        opt_bool(NAME, &statics, "explain", false)?;
        tables(&statics, false).map(|_| ())
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let started = Instant::now();
            let map = input_object(NAME, input)?;
            let sql = opt_str(NAME, &map, "sql")?
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| ComponentError::config(format!("{NAME}: `sql` is required")))?
                .to_string();
            let explain = opt_bool(NAME, &map, "explain", false)?;
            let tables = tables(&map, true)?;
            let names: Vec<String> = tables.iter().map(|(n, _)| n.clone()).collect();
            let conn = Connection::open_in_memory().map_err(|e| {
                ComponentError::internal(format!("{NAME}: cannot open an in-memory database: {e}"))
            })?;
            let interrupt = conn.get_interrupt_handle();
            let text = sql.clone();
            let work = tokio::task::spawn_blocking(move || {
                for (name, rows) in &tables {
                    load(&conn, name, rows).map_err(|e| format!("loading table {name}: {e}"))?;
                }
                query(&conn, &text, explain).map_err(|e| message(&e))
            });
            let answer = tokio::select! {
                biased;
                () = ctx.cancel.cancelled() => {
                    interrupt.interrupt();
                    return Err(ComponentError::new(ErrorClass::Cancelled, format!("{NAME}: cancelled")));
                }
                joined = work => joined.map_err(|e| {
                    ComponentError::internal(format!("{NAME}: the query thread failed: {e}"))
                })?,
            };
            let elapsed = started.elapsed().as_millis() as u64;
            let output = match answer {
                Ok(Answer::Rows(columns, data)) => json!({
                    "success": true, "row_count": data.len(), "columns": columns, "query_plan": null,
                    "metadata": {"execution_time_ms": elapsed, "sql": sql, "tables_used": names},
                    "data": data, "error": null,
                }),
                Ok(Answer::Plan(plan)) => json!({
                    "success": true, "data": null, "row_count": null, "columns": null,
                    "query_plan": plan,
                    "metadata": {"execution_time_ms": elapsed, "explain_mode": true}, "error": null,
                }),
                Err(error) => json!({
                    "success": false, "data": null, "row_count": null, "columns": null,
                    "query_plan": null, "metadata": {"execution_time_ms": elapsed}, "error": error,
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
        SqlQuery
            .execute(input, context().0)
            .await
            .expect("runs")
            .output
    }

    #[tokio::test]
    async fn queries_the_records_and_extra_tables() {
        let out = run(json!({
            "data": [{"id": 1, "name": "a", "age": 30}, {"id": 2, "name": "b", "age": 20},
                     {"id": 3, "name": "c"}],
            "additional_tables": {"orders": [{"user_id": 1, "amount": 5.5}, {"user_id": 1, "amount": 2}]},
            "sql": "SELECT d.name, SUM(o.amount) AS total FROM data d JOIN orders o ON o.user_id = d.id \
                    GROUP BY d.name",
        }))
        .await;
        assert_eq!(out["data"], json!([{"name": "a", "total": 7.5}]), "{out}");
        assert_eq!(out["columns"], json!(["name", "total"]));
        assert_eq!(out["metadata"]["tables_used"], json!(["data", "orders"]));
        let out = run(json!({"data": [{"a": 1}], "sql": "SELECT nope FROM data"})).await;
        assert_eq!(out["success"], json!(false));
        assert!(
            out["error"]
                .as_str()
                .is_some_and(|e| e.contains("no such column")),
            "{out}"
        );
        let out =
            run(json!({"data": [{"a": 1}], "sql": "SELECT * FROM data", "explain": true})).await;
        assert!(
            out["query_plan"]
                .as_str()
                .is_some_and(|p| p.contains("SCAN")),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_runaway_query_stops_when_cancelled() {
        let (ctx, _) = context();
        let token = ctx.cancel.clone();
        let sql = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n";
        let task = tokio::spawn(SqlQuery.execute(json!({"data": [], "sql": sql}), ctx));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        token.cancel();
        let result = tokio::time::timeout(std::time::Duration::from_secs(30), task)
            .await
            .expect("the query ignored cancellation")
            .expect("task");
        assert_eq!(result.expect_err("cancelled").class, ErrorClass::Cancelled);
    }

    #[test]
    fn bad_fields_are_config_errors_naming_the_field() {
        for (config, field) in [
            (json!({"sql": 3}), "`sql`"),
            (json!({"data": [1]}), "`data[0]`"),
            (
                json!({"additional_tables": {"x y": []}}),
                "`additional_tables.x y`",
            ),
            (json!({"additional_tables": []}), "`additional_tables`"),
            (json!({"explain": "no"}), "`explain`"),
        ] {
            let err = SqlQuery.validate(&config).expect_err("refused");
            assert!(err.message.contains(field), "{field}: {}", err.message);
        }
    }
}
