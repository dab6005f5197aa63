//! `redis`: one command on a Redis server, as FlowMason's `redis` connector.
//!
//! Input: `operation` (`get`, `set`, `delete`, `exists`, `keys`, `expire`, `ttl`, `incr`, `decr`,
//! `lpush`, `rpush`, `lpop`, `rpop`, `lrange`, `hget`, `hset`, `hgetall`, `hdel`, `sadd`, `smembers`,
//! `sismember`); the connection as `host` (`localhost`), `port` (6379), `db` (0), `password` (only as
//! `{{env.NAME}}`); `key`, `keys_pattern`, `value`, `values`, `expire_seconds`, `amount` (1), `start`
//! (0), `stop` (-1), `field`, `fields`. `ssl: true` is refused (no TLS in this engine).
//!
//! Values are stored as FlowMason stores them: strings as they are, anything else as Python's
//! `json.dumps`; what is read back is parsed as JSON where it parses (`"42"` reads as `42`).
//!
//! Output: FlowMason's shape: `{success, operation, value, values, exists, set_result, deleted_count,
//! keys, key_count, expire_set, ttl_seconds, new_value, hash_fields, metadata, error}`.
//!
//! Errors: the server unreachable, the connection lost, a response timeout are `transient` (retried);
//! an error answer (`WRONGTYPE`, `NOAUTH`, ...) is `client`. One connection per attempt; dropping the
//! attempt closes it.

use std::time::{Duration, Instant};

use ::redis::{ConnectionAddr, IntoConnectionInfo as _, RedisConnectionInfo};
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::connector::{
    cancellable, check_credential, json_or_text, operation, output, py_json, required_str,
};
use super::{config_object, input_object, is_templated, opt_bool, opt_int_in, opt_str, type_name};

/// The component type name.
pub const NAME: &str = "redis";

const OPERATIONS: &[&str] = &[
    "get",
    "set",
    "delete",
    "exists",
    "keys",
    "expire",
    "ttl",
    "incr",
    "decr",
    "lpush",
    "rpush",
    "lpop",
    "rpop",
    "lrange",
    "hget",
    "hset",
    "hgetall",
    "hdel",
    "sadd",
    "smembers",
    "sismember",
];

/// Fields of FlowMason's `RedisConnector.Output` besides `success`, `operation`, `metadata`, `error`.
const FIELDS: &[&str] = &[
    "value",
    "values",
    "exists",
    "set_result",
    "deleted_count",
    "keys",
    "key_count",
    "expire_set",
    "ttl_seconds",
    "new_value",
    "hash_fields",
];

/// How long to wait for a connection, and for each answer (FlowMason's `socket_timeout` is 30 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// See the module docs.
#[derive(Clone, Default)]
pub struct Redis;

fn check_fields(op: &str, map: &Map<String, Value>) -> Result<(), ComponentError> {
    if op == "keys" {
        required_str(NAME, map, "keys_pattern", op)?;
        return Ok(());
    }
    required_str(NAME, map, "key", op)?;
    let present = |f: &str| !matches!(map.get(f), None | Some(Value::Null));
    let need = |f: &str| {
        if present(f) {
            Ok(())
        } else {
            Err(ComponentError::config(format!(
                "{NAME}: `{f}` is required for operation {op:?}"
            )))
        }
    };
    match op {
        "set" | "sismember" => need("value")?,
        "expire" => need("expire_seconds")?,
        "hget" | "hdel" => {
            required_str(NAME, map, "field", op)?;
        }
        "lpush" | "rpush" | "sadd" if !present("values") && !present("value") => {
            return Err(ComponentError::config(format!(
                "{NAME}: `values` or `value` is required for operation {op:?}"
            )));
        }
        "hset" if !present("fields") && !present("field") => {
            return Err(ComponentError::config(format!(
                "{NAME}: `fields` or `field` is required for operation \"hset\""
            )));
        }
        _ => {}
    }
    for field in ["expire_seconds", "amount", "start", "stop"] {
        if let Some(v) = map.get(field).filter(|v| !v.is_null())
            && v.as_i64().is_none()
        {
            return Err(ComponentError::config(format!(
                "{NAME}: `{field}` must be an integer, got {v}"
            )));
        }
    }
    if let Some(v) = map.get("values").filter(|v| !v.is_null())
        && !v.is_array()
    {
        return Err(ComponentError::config(format!(
            "{NAME}: `values` must be a list, got {}",
            type_name(v)
        )));
    }
    if let Some(v) = map.get("fields").filter(|v| !v.is_null())
        && !v.is_object()
    {
        return Err(ComponentError::config(format!(
            "{NAME}: `fields` must be an object, got {}",
            type_name(v)
        )));
    }
    Ok(())
}

fn connection(map: &Map<String, Value>) -> Result<redis::ConnectionInfo, ComponentError> {
    if opt_bool(NAME, map, "ssl", false)? {
        return Err(ComponentError::config(format!(
            "{NAME}: `ssl: true` is not supported: the engine connects without TLS"
        )));
    }
    let host = opt_str(NAME, map, "host")?
        .unwrap_or("localhost")
        .to_string();
    let port = opt_int_in(NAME, map, "port", 1..=65535)?.unwrap_or(6379) as u16;
    let db = opt_int_in(NAME, map, "db", 0..=1_000_000)?.unwrap_or(0) as i64;
    let mut settings = RedisConnectionInfo::default().set_db(db);
    if let Some(password) = opt_str(NAME, map, "password")?.filter(|p| !p.is_empty()) {
        settings = settings.set_password(password);
    }
    let info = ConnectionAddr::Tcp(host, port)
        .into_connection_info()
        .map_err(|e| ComponentError::config(format!("{NAME}: bad connection settings: {e}")))?;
    Ok(info.set_redis_settings(settings))
}

impl Component for Redis {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        let Some(map) = config_object(NAME, config)? else {
            return Ok(());
        };
        check_credential(NAME, map, "password", "REDIS_PASSWORD")?;
        if !map.contains_key("operation") || is_templated(&map["operation"]) {
            return Ok(());
        }
        let op = operation(NAME, map, OPERATIONS)?;
        if map.values().any(is_templated) {
            return Ok(());
        }
        check_fields(op, map)?;
        connection(map).map(|_| ())
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let map = input_object(NAME, input)?;
            let op = operation(NAME, &map, OPERATIONS)?.to_string();
            check_fields(&op, &map)?;
            let info = connection(&map)?;
            let started = Instant::now();
            let work = async {
                let client = redis::Client::open(info).map_err(|e| redis_error("connect", &e))?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT));
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| redis_error("cannot connect", &e))?;
                perform(&mut conn, &op, &map, started).await
            };
            cancellable(NAME, &ctx, work)
                .await
                .map(ComponentOutput::from)
        })
    }
}

/// A value as FlowMason stores it: strings as they are, everything else as `json.dumps`.
fn stored(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => py_json(other),
    }
}

/// What was read back: JSON where it parses, else the text; empty and missing stay as they are.
fn read_back(value: Option<String>) -> Value {
    match value {
        None => Value::Null,
        Some(s) if s.is_empty() => Value::String(s),
        Some(s) => json_or_text(s),
    }
}

async fn perform(
    conn: &mut redis::aio::MultiplexedConnection,
    op: &str,
    map: &Map<String, Value>,
    started: Instant,
) -> Result<Value, ComponentError> {
    let key = opt_str(NAME, map, "key")?.unwrap_or_default().to_string();
    let value = map.get("value").cloned().unwrap_or(Value::Null);
    let int = |field: &str, default: i64| map.get(field).and_then(Value::as_i64).unwrap_or(default);
    let pushed: Vec<String> = match map.get("values") {
        Some(Value::Array(items)) if !items.is_empty() => items.iter().map(stored).collect(),
        _ => vec![stored(&value)],
    };
    let mut set = Map::new();
    let mut metadata = Map::new();
    metadata.insert("key".into(), Value::String(key.clone()));
    let run = |e: redis::RedisError| redis_error(op, &e);
    macro_rules! q {
        ($cmd:expr => $t:ty) => {
            $cmd.query_async::<$t>(conn).await.map_err(run)?
        };
    }
    match op {
        "get" => {
            let v = q!(redis::cmd("GET").arg(&key) => Option<String>);
            set.insert("value".into(), read_back(v));
        }
        "set" => {
            let expire = int("expire_seconds", 0);
            let ok = if expire > 0 {
                q!(redis::cmd("SETEX").arg(&key).arg(expire).arg(stored(&value)) => Option<String>)
            } else {
                q!(redis::cmd("SET").arg(&key).arg(stored(&value)) => Option<String>)
            };
            set.insert("set_result".into(), Value::Bool(ok.is_some()));
            metadata.insert(
                "expire_seconds".into(),
                map.get("expire_seconds").cloned().unwrap_or(Value::Null),
            );
        }
        "delete" => {
            let n = q!(redis::cmd("DEL").arg(&key) => i64);
            set.insert("deleted_count".into(), json!(n));
        }
        "exists" => {
            let n = q!(redis::cmd("EXISTS").arg(&key) => i64);
            set.insert("exists".into(), Value::Bool(n > 0));
        }
        "keys" => {
            let pattern = opt_str(NAME, map, "keys_pattern")?
                .unwrap_or("*")
                .to_string();
            let keys = q!(redis::cmd("KEYS").arg(&pattern) => Vec<String>);
            set.insert("key_count".into(), json!(keys.len()));
            set.insert("keys".into(), json!(keys));
            metadata.remove("key");
            metadata.insert("pattern".into(), Value::String(pattern));
        }
        "expire" => {
            let seconds = int("expire_seconds", 0);
            let n = q!(redis::cmd("EXPIRE").arg(&key).arg(seconds) => i64);
            set.insert("expire_set".into(), Value::Bool(n > 0));
            metadata.insert("expire_seconds".into(), json!(seconds));
        }
        "ttl" => {
            let n = q!(redis::cmd("TTL").arg(&key) => i64);
            set.insert("ttl_seconds".into(), json!(n));
        }
        "incr" | "decr" => {
            // FlowMason's `input.amount or 1`: 0 counts as 1.
            let amount = match int("amount", 1) {
                0 => 1,
                n => n,
            };
            let cmd = if op == "incr" { "INCRBY" } else { "DECRBY" };
            let n = q!(redis::cmd(cmd).arg(&key).arg(amount) => i64);
            set.insert("new_value".into(), json!(n));
            metadata.insert("amount".into(), json!(amount));
        }
        "lpush" | "rpush" => {
            let cmd = if op == "lpush" { "LPUSH" } else { "RPUSH" };
            let n = q!(redis::cmd(cmd).arg(&key).arg(&pushed) => i64);
            set.insert("new_value".into(), json!(n));
            metadata.insert("pushed_count".into(), json!(pushed.len()));
        }
        "lpop" | "rpop" => {
            let cmd = if op == "lpop" { "LPOP" } else { "RPOP" };
            let v = q!(redis::cmd(cmd).arg(&key) => Option<String>);
            set.insert("value".into(), read_back(v));
        }
        "lrange" => {
            let (start, stop) = (int("start", 0), int("stop", -1));
            let items = q!(redis::cmd("LRANGE").arg(&key).arg(start).arg(stop) => Vec<String>);
            let values: Vec<Value> = items.into_iter().map(json_or_text).collect();
            metadata.insert("start".into(), json!(start));
            metadata.insert("stop".into(), json!(stop));
            metadata.insert("count".into(), json!(values.len()));
            set.insert("values".into(), Value::Array(values));
        }
        "hget" => {
            let field = opt_str(NAME, map, "field")?.unwrap_or_default().to_string();
            let v = q!(redis::cmd("HGET").arg(&key).arg(&field) => Option<String>);
            set.insert("value".into(), read_back(v));
            metadata.insert("field".into(), Value::String(field));
        }
        "hset" => {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(&key);
            match map.get("fields") {
                Some(Value::Object(fields)) if !fields.is_empty() => {
                    for (k, v) in fields {
                        cmd.arg(k).arg(stored(v));
                    }
                }
                _ => {
                    let field = opt_str(NAME, map, "field")?.unwrap_or_default();
                    cmd.arg(field).arg(stored(&value));
                }
            }
            let n = q!(cmd => i64);
            set.insert("new_value".into(), json!(n));
        }
        "hgetall" => {
            let pairs = q!(redis::cmd("HGETALL").arg(&key) => Vec<(String, String)>);
            let fields: Map<String, Value> = pairs
                .into_iter()
                .map(|(k, v)| (k, json_or_text(v)))
                .collect();
            metadata.insert("field_count".into(), json!(fields.len()));
            set.insert("hash_fields".into(), Value::Object(fields));
        }
        "hdel" => {
            let field = opt_str(NAME, map, "field")?.unwrap_or_default().to_string();
            let n = q!(redis::cmd("HDEL").arg(&key).arg(&field) => i64);
            set.insert("deleted_count".into(), json!(n));
            metadata.insert("field".into(), Value::String(field));
        }
        "sadd" => {
            let n = q!(redis::cmd("SADD").arg(&key).arg(&pushed) => i64);
            set.insert("new_value".into(), json!(n));
            metadata.insert("added_count".into(), json!(n));
        }
        "smembers" => {
            let mut members = q!(redis::cmd("SMEMBERS").arg(&key) => Vec<String>);
            // A set has no order; sorted, outputs are the same from run to run.
            members.sort();
            let values: Vec<Value> = members.into_iter().map(json_or_text).collect();
            metadata.insert("count".into(), json!(values.len()));
            set.insert("values".into(), Value::Array(values));
        }
        "sismember" => {
            let member = stored(&value);
            let n = q!(redis::cmd("SISMEMBER").arg(&key).arg(&member) => i64);
            set.insert("exists".into(), Value::Bool(n > 0));
            metadata.insert("value".into(), Value::String(member));
        }
        other => {
            return Err(ComponentError::internal(format!(
                "{NAME}: operation {other:?} passed parsing but has no implementation"
            )));
        }
    }
    Ok(output(FIELDS, op, started, set, metadata))
}

fn redis_error(action: &str, e: &redis::RedisError) -> ComponentError {
    let message = format!("{NAME}: {action}: {e}");
    if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped() {
        ComponentError::transient(message)
    } else {
        ComponentError::client(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let c = Redis;
        for (config, needle) in [
            (
                json!({"operation": "getall", "key": "k"}),
                "`operation` must be one of",
            ),
            (json!({"operation": "get"}), "`key` is required"),
            (json!({"operation": "keys"}), "`keys_pattern` is required"),
            (
                json!({"operation": "set", "key": "k"}),
                "`value` is required",
            ),
            (
                json!({"operation": "hget", "key": "k"}),
                "`field` is required",
            ),
            (
                json!({"operation": "lpush", "key": "k"}),
                "`values` or `value` is required",
            ),
            (
                json!({"operation": "expire", "key": "k", "expire_seconds": "soon"}),
                "`expire_seconds` must be an integer",
            ),
            (
                json!({"operation": "get", "key": "k", "password": "hunter22"}),
                "`password` holds a credential literally",
            ),
            (
                json!({"operation": "get", "key": "k", "ssl": true}),
                "`ssl: true`",
            ),
            (json!({"operation": "get", "key": "k", "port": 0}), "`port`"),
        ] {
            let err = c.validate(&config).unwrap_err();
            assert!(err.message.contains(needle), "{config}: {}", err.message);
        }
        assert!(c.validate(&json!({"operation": "get", "key": "{{input.k}}", "password": "{{env.REDIS_PASSWORD}}"})).is_ok());
    }

    #[test]
    fn values_are_stored_and_read_as_flowmason_does() {
        assert_eq!(stored(&json!("text")), "text");
        assert_eq!(stored(&json!({"a": 1})), "{\"a\": 1}");
        assert_eq!(stored(&json!(42)), "42");
        assert_eq!(read_back(Some("42".into())), json!(42));
        assert_eq!(read_back(Some("hello".into())), json!("hello"));
        assert_eq!(read_back(None), Value::Null);
    }
}
