//! `postgres`: one operation on a PostgreSQL database, as FlowMason's `postgres` connector.
//!
//! Input: `operation` (`query`, `execute`, `bulk_insert`, `transaction`); the connection as
//! `connection_string` (`postgresql://user@host:port/db` or libpq's `key=value` form) or `host`
//! (`localhost`), `port` (5432), `database`, `user`, `password`; `sql` with `parameters` (`$1`, `$2`, ...)
//! for `query` and `execute`; `fetch_size` (most rows returned by `query`); `table`, `columns`, `values`
//! (rows) for `bulk_insert`; `queries` (`[{sql, parameters}]`) for `transaction`. A password, or a
//! connection string's password, must be `{{env.NAME}}` (see `connector`). `ssl: true` is refused: the
//! engine connects without TLS (within the cluster or through a TLS-terminating proxy).
//!
//! Output: FlowMason's shape: `{success, operation, rows, row_count, affected_rows, transaction_queries,
//! metadata, error}`. Rows are objects by column name; values by column type: booleans, integers,
//! floats and `numeric` as numbers, text, `json`/`jsonb` as JSON, `uuid` as text, timestamps and dates as
//! ISO 8601 text, arrays of these as lists; other types fail the stage naming the column (cast it,
//! e.g. `::text`). Parameters are converted to the types the server infers for `$n` (a JSON number for an
//! `int4`, text for a `timestamptz`, ...).
//!
//! Errors: the server unreachable, a connection lost, serialization failures, deadlocks, shutdowns are
//! `transient` (retried); SQL errors (syntax, constraints, missing tables, authentication) are `client`.
//! The connection is per attempt and closed after it; when the attempt is cancelled or times out, the
//! running statement is cancelled on the server too (PostgreSQL's cancel request), so a slow query does
//! not go on holding locks.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{CancelToken, Client, Config, GenericClient, NoTls, Row};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::connector::{
    cancellable, check_connection_string, check_credential, operation, output, required_str,
};
use super::{config_object, input_object, is_templated, opt_bool, opt_str, type_name};

/// The component type name.
pub const NAME: &str = "postgres";

const OPERATIONS: &[&str] = &["query", "execute", "bulk_insert", "transaction"];

/// Fields of FlowMason's `PostgresConnector.Output` besides `success`, `operation`, `metadata`, `error`.
const FIELDS: &[&str] = &["rows", "row_count", "affected_rows", "transaction_queries"];

/// How long to wait for the server to accept a connection before the attempt fails (transient).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// See the module docs.
#[derive(Clone, Default)]
pub struct Postgres;

struct Statement {
    sql: String,
    parameters: Vec<Value>,
}

struct Request {
    operation: String,
    config: Config,
    statements: Vec<Statement>,
    fetch_size: Option<usize>,
    table: Option<String>,
    columns: Vec<String>,
}

fn parse(map: &Map<String, Value>) -> Result<Request, ComponentError> {
    let op = operation(NAME, map, OPERATIONS)?.to_string();
    if opt_bool(NAME, map, "ssl", false)? {
        return Err(ComponentError::config(format!(
            "{NAME}: `ssl: true` is not supported: the engine connects without TLS (reach the server within \
             the cluster or through a TLS-terminating proxy)"
        )));
    }
    let config = connection(map)?;
    let mut statements = Vec::new();
    let mut table = None;
    let mut columns = Vec::new();
    match op.as_str() {
        "query" | "execute" => statements.push(Statement {
            sql: required_str(NAME, map, "sql", &op)?.to_string(),
            parameters: parameters(map.get("parameters"), "parameters")?,
        }),
        "bulk_insert" => {
            let name = required_str(NAME, map, "table", &op)?;
            identifier(name, "table", true)?;
            columns = super::opt_str_list(NAME, map, "columns")?;
            if columns.is_empty() {
                return Err(ComponentError::config(format!(
                    "{NAME}: `columns` is required for operation \"bulk_insert\""
                )));
            }
            for column in &columns {
                identifier(column, "columns", false)?;
            }
            let rows = match map.get("values") {
                Some(Value::Array(rows)) if !rows.is_empty() => rows,
                Some(Value::Array(_)) | None | Some(Value::Null) => {
                    return Err(ComponentError::config(format!(
                        "{NAME}: `values` is required for operation \"bulk_insert\" (a list of rows)"
                    )));
                }
                Some(other) => {
                    return Err(ComponentError::config(format!(
                        "{NAME}: `values` must be a list of rows, got {}",
                        type_name(other)
                    )));
                }
            };
            let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "INSERT INTO {name} ({}) VALUES ({})",
                columns.join(", "),
                placeholders.join(", ")
            );
            for (i, row) in rows.iter().enumerate() {
                let field = format!("values[{i}]");
                let parameters = parameters(Some(row), &field)?;
                if parameters.len() != columns.len() {
                    return Err(ComponentError::config(format!(
                        "{NAME}: `{field}` has {} values for {} columns",
                        parameters.len(),
                        columns.len()
                    )));
                }
                statements.push(Statement {
                    sql: sql.clone(),
                    parameters,
                });
            }
            table = Some(name.to_string());
        }
        _ => {
            let queries = match map.get("queries") {
                Some(Value::Array(q)) if !q.is_empty() => q,
                Some(Value::Array(_)) | None | Some(Value::Null) => {
                    return Err(ComponentError::config(format!(
                        "{NAME}: `queries` is required for operation \"transaction\" (a list of {{sql, parameters}})"
                    )));
                }
                Some(other) => {
                    return Err(ComponentError::config(format!(
                        "{NAME}: `queries` must be a list of {{sql, parameters}}, got {}",
                        type_name(other)
                    )));
                }
            };
            for (i, query) in queries.iter().enumerate() {
                let Value::Object(q) = query else {
                    return Err(ComponentError::config(format!(
                        "{NAME}: `queries[{i}]` must be an object {{sql, parameters}}, got {}",
                        type_name(query)
                    )));
                };
                let sql = match q.get("sql") {
                    Some(Value::String(s)) if !s.is_empty() => s.clone(),
                    _ => {
                        return Err(ComponentError::config(format!(
                            "{NAME}: `queries[{i}].sql` is required (a string)"
                        )));
                    }
                };
                statements.push(Statement {
                    sql,
                    parameters: parameters(
                        q.get("parameters"),
                        &format!("queries[{i}].parameters"),
                    )?,
                });
            }
        }
    }
    let fetch_size = match map.get("fetch_size") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().map(|n| n as usize).ok_or_else(|| {
            ComponentError::config(format!(
                "{NAME}: `fetch_size` must be a non-negative integer, got {v}"
            ))
        })?),
    };
    Ok(Request {
        operation: op,
        config,
        statements,
        fetch_size,
        table,
        columns,
    })
}

fn connection(map: &Map<String, Value>) -> Result<Config, ComponentError> {
    let mut config = match opt_str(NAME, map, "connection_string")? {
        Some(text) if !text.is_empty() => text.parse::<Config>().map_err(|e| {
            ComponentError::config(format!(
                "{NAME}: `connection_string` is not a PostgreSQL connection string: {e}"
            ))
        })?,
        _ => {
            let mut config = Config::new();
            config.host(opt_str(NAME, map, "host")?.unwrap_or("localhost"));
            let port = super::opt_int_in(NAME, map, "port", 1..=65535)?.unwrap_or(5432);
            config.port(port as u16);
            if let Some(db) = opt_str(NAME, map, "database")? {
                config.dbname(db);
            }
            if let Some(user) = opt_str(NAME, map, "user")? {
                config.user(user);
            }
            if let Some(password) = opt_str(NAME, map, "password")? {
                config.password(password);
            }
            config
        }
    };
    config
        .connect_timeout(CONNECT_TIMEOUT)
        .application_name("flowmason");
    Ok(config)
}

fn parameters(value: Option<&Value>, field: &str) -> Result<Vec<Value>, ComponentError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items.clone()),
        Some(other) => Err(ComponentError::config(format!(
            "{NAME}: `{field}` must be a list, got {}",
            type_name(other)
        ))),
    }
}

/// A table (`schema.table` allowed) or column name as FlowMason writes it unquoted into the INSERT: only
/// plain SQL identifiers, so that nothing else can be written into the statement.
fn identifier(name: &str, field: &str, dotted: bool) -> Result<(), ComponentError> {
    let plain = |part: &str| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    let ok = if dotted {
        name.split('.').count() <= 2 && name.split('.').all(plain)
    } else {
        plain(name)
    };
    if ok {
        Ok(())
    } else {
        Err(ComponentError::config(format!(
            "{NAME}: `{field}`: {name:?} is not a plain SQL identifier (letters, digits, _)"
        )))
    }
}

impl Component for Postgres {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(map) = config_object(NAME, config)? else {
            return Ok(());
        };
        check_credential(NAME, map, "password", "PGPASSWORD")?;
        check_connection_string(NAME, map, "connection_string", "DATABASE_URL")?;
        if map.values().any(is_templated) {
            if let Some(Value::String(_)) = map.get("operation") {
                operation(NAME, map, OPERATIONS)?;
            }
            return Ok(());
        }
        parse(map).map(|_| ())
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let map = input_object(NAME, input)?;
            let req = parse(&map)?;
            let started = Instant::now();
            let work = async {
                let (mut client, connection) = req
                    .config
                    .connect(NoTls)
                    .await
                    .map_err(|e| db_error("cannot connect", &e))?;
                let connection = tokio::spawn(connection);
                let guard = CancelOnDrop(Some(client.cancel_token()));
                let result = perform(&mut client, &req, started).await;
                guard.disarm();
                drop(client);
                connection.abort();
                result
            };
            cancellable(NAME, &ctx, work)
                .await
                .map(ComponentOutput::from)
        })
    }
}

/// Cancels the running statement on the server when the attempt's future is dropped mid-way (a
/// timeout or a cancellation): closing the socket alone lets the server run the statement to its end.
struct CancelOnDrop(Option<CancelToken>);

impl CancelOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(token) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(e) = token.cancel_query(NoTls).await {
                    tracing::warn!(error = %e, "postgres: cannot cancel the running statement");
                }
            });
        }
    }
}

async fn perform(
    client: &mut Client,
    req: &Request,
    started: Instant,
) -> Result<Value, ComponentError> {
    let mut set = Map::new();
    let mut metadata = Map::new();
    match req.operation.as_str() {
        "query" => {
            let statement = &req.statements[0];
            let mut rows = run_query(&*client, statement).await?;
            if let Some(limit) = req.fetch_size {
                rows.truncate(limit);
            }
            set.insert("row_count".into(), Value::from(rows.len()));
            set.insert("rows".into(), Value::Array(rows));
            metadata.insert("query".into(), Value::String(statement.sql.clone()));
            metadata.insert(
                "parameters".into(),
                Value::Array(statement.parameters.clone()),
            );
            metadata.insert("fetch_size".into(), json!(req.fetch_size));
        }
        "execute" => {
            let statement = &req.statements[0];
            let affected = run_execute(&*client, statement, "").await?;
            set.insert("affected_rows".into(), Value::from(affected));
            metadata.insert("query".into(), Value::String(statement.sql.clone()));
            metadata.insert(
                "parameters".into(),
                Value::Array(statement.parameters.clone()),
            );
        }
        "bulk_insert" => {
            let tx = client
                .transaction()
                .await
                .map_err(|e| db_error("cannot begin the transaction", &e))?;
            let mut affected = 0;
            for (i, statement) in req.statements.iter().enumerate() {
                affected += run_execute(&tx, statement, &format!("values[{i}]: ")).await?;
            }
            tx.commit()
                .await
                .map_err(|e| db_error("commit failed", &e))?;
            set.insert("affected_rows".into(), Value::from(affected));
            metadata.insert("table".into(), json!(req.table));
            metadata.insert("columns".into(), json!(req.columns));
            metadata.insert("rows_inserted".into(), Value::from(affected));
        }
        _ => {
            let tx = client
                .transaction()
                .await
                .map_err(|e| db_error("cannot begin the transaction", &e))?;
            for (i, statement) in req.statements.iter().enumerate() {
                run_execute(&tx, statement, &format!("queries[{i}]: ")).await?;
            }
            tx.commit()
                .await
                .map_err(|e| db_error("commit failed", &e))?;
            let n = req.statements.len();
            set.insert("transaction_queries".into(), Value::from(n));
            metadata.insert("queries_executed".into(), Value::from(n));
            metadata.insert(
                "queries".into(),
                Value::Array(
                    req.statements
                        .iter()
                        .map(|s| json!({"sql": s.sql, "parameters": s.parameters}))
                        .collect(),
                ),
            );
        }
    }
    Ok(output(FIELDS, &req.operation, started, set, metadata))
}

type Param = Box<dyn ToSql + Sync + Send>;

async fn bind(
    client: &impl GenericClient,
    statement: &Statement,
    at: &str,
) -> Result<(tokio_postgres::Statement, Vec<Param>), ComponentError> {
    let prepared = client
        .prepare(&statement.sql)
        .await
        .map_err(|e| db_error(&format!("{at}statement failed"), &e))?;
    let types = prepared.params();
    if types.len() != statement.parameters.len() {
        return Err(ComponentError::config(format!(
            "{NAME}: {at}the statement takes {} parameters, `parameters` has {}",
            types.len(),
            statement.parameters.len()
        )));
    }
    let params = types
        .iter()
        .zip(&statement.parameters)
        .enumerate()
        .map(|(i, (ty, value))| {
            to_sql(ty, value).map_err(|reason| {
                ComponentError::config(format!("{NAME}: {at}parameter ${}: {reason}", i + 1))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((prepared, params))
}

async fn run_query(
    client: &impl GenericClient,
    statement: &Statement,
) -> Result<Vec<Value>, ComponentError> {
    let (prepared, params) = bind(client, statement, "").await?;
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as _).collect();
    let rows = client
        .query(&prepared, &refs)
        .await
        .map_err(|e| db_error("query failed", &e))?;
    rows.iter().map(row_json).collect()
}

async fn run_execute(
    client: &impl GenericClient,
    statement: &Statement,
    at: &str,
) -> Result<u64, ComponentError> {
    let (prepared, params) = bind(client, statement, at).await?;
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as _).collect();
    client
        .execute(&prepared, &refs)
        .await
        .map_err(|e| db_error(&format!("{at}statement failed"), &e))
}

/// A JSON parameter as the type the server inferred for it.
fn to_sql(ty: &Type, value: &Value) -> Result<Param, String> {
    if value.is_null() {
        return null_of(ty).ok_or_else(|| format!("NULL of type {ty} is not supported"));
    }
    let wrong = || format!("expected a value for type {ty}, got {}", type_name(value));
    let int = || value.as_i64().ok_or_else(wrong);
    let float = || value.as_f64().ok_or_else(wrong);
    let text = || value.as_str().map(str::to_string).ok_or_else(wrong);
    Ok(match *ty {
        Type::BOOL => Box::new(value.as_bool().ok_or_else(wrong)?),
        Type::INT2 => Box::new(i16::try_from(int()?).map_err(|e| e.to_string())?),
        Type::INT4 => Box::new(i32::try_from(int()?).map_err(|e| e.to_string())?),
        Type::INT8 => Box::new(int()?),
        Type::FLOAT4 => Box::new(float()? as f32),
        Type::FLOAT8 => Box::new(float()?),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => match value {
            Value::String(s) => Box::new(s.clone()),
            other => Box::new(super::router::py_str(other)),
        },
        Type::NUMERIC => Box::new(NumericParam::from_json(value).ok_or_else(wrong)?),
        Type::JSON | Type::JSONB => Box::new(value.clone()),
        Type::UUID => Box::new(text()?.parse::<uuid::Uuid>().map_err(|e| e.to_string())?),
        Type::TIMESTAMPTZ => Box::new(
            chrono::DateTime::parse_from_rfc3339(&text()?)
                .map_err(|e| format!("not an RFC 3339 timestamp: {e}"))?
                .with_timezone(&chrono::Utc),
        ),
        Type::TIMESTAMP => {
            let t = text()?;
            Box::new(
                chrono::NaiveDateTime::parse_from_str(&t, "%Y-%m-%dT%H:%M:%S%.f")
                    .or_else(|_| chrono::NaiveDateTime::parse_from_str(&t, "%Y-%m-%d %H:%M:%S%.f"))
                    .map_err(|e| format!("not a timestamp (YYYY-MM-DDTHH:MM:SS): {e}"))?,
            )
        }
        Type::DATE => Box::new(
            chrono::NaiveDate::parse_from_str(&text()?, "%Y-%m-%d")
                .map_err(|e| format!("not a date (YYYY-MM-DD): {e}"))?,
        ),
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => {
            Box::new(array(value, |v| v.as_str().map(str::to_string))?)
        }
        Type::INT4_ARRAY => Box::new(array(value, |v| {
            v.as_i64().and_then(|n| i32::try_from(n).ok())
        })?),
        Type::INT8_ARRAY => Box::new(array(value, Value::as_i64)?),
        Type::FLOAT8_ARRAY => Box::new(array(value, Value::as_f64)?),
        Type::BOOL_ARRAY => Box::new(array(value, Value::as_bool)?),
        _ => {
            return Err(format!(
                "type {ty} is not supported for parameters: cast the parameter in the SQL (e.g. `$1::text::{ty}`)"
            ));
        }
    })
}

fn null_of(ty: &Type) -> Option<Param> {
    Some(match *ty {
        Type::BOOL => Box::new(Option::<bool>::None),
        Type::INT2 => Box::new(Option::<i16>::None),
        Type::INT4 => Box::new(Option::<i32>::None),
        Type::INT8 => Box::new(Option::<i64>::None),
        Type::FLOAT4 => Box::new(Option::<f32>::None),
        Type::FLOAT8 => Box::new(Option::<f64>::None),
        Type::JSON | Type::JSONB => Box::new(Option::<Value>::None),
        Type::NUMERIC => Box::new(Option::<NumericParam>::None),
        Type::UUID => Box::new(Option::<uuid::Uuid>::None),
        Type::TIMESTAMPTZ => Box::new(Option::<chrono::DateTime<chrono::Utc>>::None),
        Type::TIMESTAMP => Box::new(Option::<chrono::NaiveDateTime>::None),
        Type::DATE => Box::new(Option::<chrono::NaiveDate>::None),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            Box::new(Option::<String>::None)
        }
        _ => return None,
    })
}

fn array<T>(value: &Value, item: impl Fn(&Value) -> Option<T>) -> Result<Vec<Option<T>>, String> {
    let Value::Array(items) = value else {
        return Err(format!("expected a list, got {}", type_name(value)));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if v.is_null() {
                Ok(None)
            } else {
                item(v)
                    .map(Some)
                    .ok_or_else(|| format!("element {i} has the wrong type ({})", type_name(v)))
            }
        })
        .collect()
}

fn row_json(row: &Row) -> Result<Value, ComponentError> {
    let mut out = Map::new();
    for (i, column) in row.columns().iter().enumerate() {
        let name = column.name();
        let bad = |e: tokio_postgres::Error| {
            ComponentError::client(format!(
                "{NAME}: column {name:?}: cannot read its value: {e}"
            ))
        };
        macro_rules! get {
            ($t:ty) => {
                row.try_get::<_, Option<$t>>(i).map_err(bad)?
            };
        }
        let value = match *column.type_() {
            Type::BOOL => json!(get!(bool)),
            Type::INT2 => json!(get!(i16)),
            Type::INT4 => json!(get!(i32)),
            Type::INT8 => json!(get!(i64)),
            Type::OID => json!(get!(u32)),
            Type::FLOAT4 => json!(get!(f32)),
            Type::FLOAT8 => json!(get!(f64)),
            Type::NUMERIC => match get!(Numeric) {
                Some(n) => n.0,
                None => Value::Null,
            },
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                json!(get!(String))
            }
            Type::JSON | Type::JSONB => get!(Value).unwrap_or(Value::Null),
            Type::UUID => json!(get!(uuid::Uuid).map(|u| u.to_string())),
            Type::TIMESTAMPTZ => json!(get!(chrono::DateTime<chrono::Utc>).map(|t| t.to_rfc3339())),
            Type::TIMESTAMP => json!(
                get!(chrono::NaiveDateTime).map(|t| t.format("%Y-%m-%dT%H:%M:%S%.f").to_string())
            ),
            Type::DATE => json!(get!(chrono::NaiveDate).map(|d| d.to_string())),
            Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => json!(get!(Vec<Option<String>>)),
            Type::INT2_ARRAY => json!(get!(Vec<Option<i16>>)),
            Type::INT4_ARRAY => json!(get!(Vec<Option<i32>>)),
            Type::INT8_ARRAY => json!(get!(Vec<Option<i64>>)),
            Type::FLOAT8_ARRAY => json!(get!(Vec<Option<f64>>)),
            Type::BOOL_ARRAY => json!(get!(Vec<Option<bool>>)),
            Type::JSONB_ARRAY => json!(get!(Vec<Option<Value>>)),
            ref other => {
                return Err(ComponentError::client(format!(
                    "{NAME}: column {name:?} has type {other}, which this connector cannot return: cast it in \
                     the SQL (e.g. `{name}::text`)"
                )));
            }
        };
        out.insert(name.to_string(), value);
    }
    Ok(Value::Object(out))
}

/// A `numeric` value decoded from PostgreSQL's binary form (base-10000 digits) into a JSON number
/// (text for NaN and infinities).
struct Numeric(Value);

impl<'a> tokio_postgres::types::FromSql<'a> for Numeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let word = |i: usize| -> Result<i16, Box<dyn std::error::Error + Sync + Send>> {
            raw.get(i * 2..i * 2 + 2)
                .map(|b| i16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(|| "numeric value too short".into())
        };
        let ndigits = word(0)? as usize;
        let weight = i32::from(word(1)?);
        let sign = word(2)? as u16;
        match sign {
            0xC000 => return Ok(Numeric(json!("NaN"))),
            0xD000 => return Ok(Numeric(json!("Infinity"))),
            0xF000 => return Ok(Numeric(json!("-Infinity"))),
            _ => {}
        }
        let mut value = 0f64;
        for d in 0..ndigits {
            let digit = f64::from(word(4 + d)?);
            value += digit * 10000f64.powi(weight - d as i32);
        }
        if sign == 0x4000 {
            value = -value;
        }
        let scale = word(3)?;
        if scale == 0 && value.abs() < 9.0e15 {
            return Ok(Numeric(json!(value as i64)));
        }
        Ok(Numeric(json!(value)))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

/// A JSON number (or numeric text) sent as a `numeric` parameter, in PostgreSQL's binary form: base-10000
/// digit groups around the decimal point, exactly as written (no float rounding).
#[derive(Debug)]
struct NumericParam {
    negative: bool,
    /// The digits before and after the decimal point.
    whole: String,
    fraction: String,
}

impl NumericParam {
    fn from_json(value: &Value) -> Option<Self> {
        let text = match value {
            // Rust prints floats without an exponent, so `1e20` becomes plain digits.
            Value::Number(n) if n.to_string().contains(['e', 'E']) => format!("{}", n.as_f64()?),
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.trim().to_string(),
            _ => return None,
        };
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() && fraction.is_empty() || !all_digits(whole) || !all_digits(fraction) {
            return None;
        }
        Some(NumericParam {
            negative,
            whole: whole.trim_start_matches('0').to_string(),
            fraction: fraction.to_string(),
        })
    }
}

impl tokio_postgres::types::ToSql for NumericParam {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut tokio_postgres::types::private::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // Whole digits padded on the left and fraction digits on the right to groups of four.
        let pad = (4 - self.whole.len() % 4) % 4;
        let whole = format!("{}{}", "0".repeat(pad), self.whole);
        let frac_pad = (4 - self.fraction.len() % 4) % 4;
        let fraction = format!("{}{}", self.fraction, "0".repeat(frac_pad));
        let group = |s: &str| s.parse::<i16>().unwrap_or(0);
        let mut groups: Vec<i16> = whole
            .as_bytes()
            .chunks(4)
            .chain(fraction.as_bytes().chunks(4))
            .map(|c| group(std::str::from_utf8(c).unwrap_or("0")))
            .collect();
        let mut weight = (whole.len() / 4) as i32 - 1;
        while groups.first() == Some(&0) {
            groups.remove(0);
            weight -= 1;
        }
        while groups.last() == Some(&0) {
            groups.pop();
        }
        if groups.is_empty() {
            weight = 0;
        }
        let sign: u16 = if self.negative && !groups.is_empty() {
            0x4000
        } else {
            0
        };
        let scale = self.fraction.len() as u16;
        out.extend_from_slice(&(groups.len() as i16).to_be_bytes());
        out.extend_from_slice(&(weight as i16).to_be_bytes());
        out.extend_from_slice(&sign.to_be_bytes());
        out.extend_from_slice(&scale.to_be_bytes());
        for g in groups {
            out.extend_from_slice(&g.to_be_bytes());
        }
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A driver error as a stage error: the server's own message, and a class for retries.
fn db_error(action: &str, e: &tokio_postgres::Error) -> ComponentError {
    let Some(db) = e.as_db_error() else {
        // No answer from the server: refused, reset, timed out, closed. Another attempt may succeed.
        let mut chain = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        return ComponentError::transient(format!("{NAME}: {action}: {chain}"));
    };
    let code = db.code().code();
    let message = format!(
        "{NAME}: {action}: {} {code}: {}",
        db.severity(),
        db.message()
    );
    // Connection exceptions, serialization failures, deadlocks, too many connections, shutdowns.
    let transient = code.starts_with("08")
        || code == "40001"
        || code == "40P01"
        || code.starts_with("53")
        || matches!(code, "57P01" | "57P02" | "57P03");
    if transient {
        ComponentError::transient(message)
    } else {
        ComponentError::client(message).with_details(json!({"sqlstate": code}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let c = Postgres;
        for (config, needle) in [
            (
                json!({"operation": "select", "sql": "x"}),
                "`operation` must be one of",
            ),
            (json!({"operation": "query"}), "`sql` is required"),
            (
                json!({"operation": "query", "sql": "select 1", "password": "pw12345"}),
                "`password` holds a credential literally",
            ),
            (
                json!({"operation": "query", "sql": "select 1", "connection_string": "postgresql://u:pw@h/db"}),
                "`connection_string` holds a credential",
            ),
            (
                json!({"operation": "query", "sql": "select 1", "ssl": true}),
                "`ssl: true` is not supported",
            ),
            (
                json!({"operation": "query", "sql": "select 1", "parameters": 3}),
                "`parameters` must be a list",
            ),
            (
                json!({"operation": "bulk_insert", "table": "t; drop table x", "columns": ["a"], "values": [[1]]}),
                "`table`",
            ),
            (
                json!({"operation": "bulk_insert", "table": "t", "columns": ["a"], "values": [[1, 2]]}),
                "`values[0]` has 2 values for 1 columns",
            ),
            (
                json!({"operation": "transaction", "queries": [{"parameters": []}]}),
                "`queries[0].sql` is required",
            ),
            (
                json!({"operation": "query", "sql": "select 1", "port": 70000}),
                "`port`",
            ),
        ] {
            let err = c.validate(&config).unwrap_err();
            assert!(err.message.contains(needle), "{config}: {}", err.message);
        }
        assert!(
            c.validate(
                &json!({"operation": "query", "sql": "select $1", "parameters": ["{{input.x}}"],
                                   "password": "{{env.PGPASSWORD}}"})
            )
            .is_ok()
        );
    }

    #[test]
    fn numeric_parameters_encode_as_postgres_reads_them() {
        use tokio_postgres::types::{FromSql as _, ToSql as _};
        for (input, expected) in [
            (json!(12.5), json!(12.5)),
            (json!(3), json!(3)),
            (json!(-100.25), json!(-100.25)),
            (json!(0), json!(0)),
            (json!("12345678.0001"), json!(12345678.0001)),
            (json!(1e20), json!(100000000000000000000i128 as f64)),
        ] {
            let param = NumericParam::from_json(&input).expect("numeric");
            let mut buf = tokio_postgres::types::private::BytesMut::new();
            param.to_sql(&Type::NUMERIC, &mut buf).expect("encode");
            let back = Numeric::from_sql(&Type::NUMERIC, &buf).expect("decode").0;
            assert_eq!(back.as_f64(), expected.as_f64(), "{input}");
        }
        assert!(NumericParam::from_json(&json!("12a")).is_none());
    }

    #[test]
    fn identifiers_are_plain() {
        assert!(identifier("public.orders", "table", true).is_ok());
        assert!(identifier("a.b.c", "table", true).is_err());
        assert!(identifier("x\"y", "columns", false).is_err());
        assert!(identifier("1a", "columns", false).is_err());
    }
}
