//! What the connectors (`local_file`, `postgres`, `redis`, `s3`, `mongodb`) share: the `operation` field,
//! FlowMason's output shape (every field of the connector's `Output`, `null` when unset), credentials
//! that may only come from `{{env.NAME}}`, and cancellation of the attempt.
//!
//! FlowMason's connectors return `success: false` with an `error` for every failure. Here a failure fails
//! the stage with a class, so that the engine's retry policy can tell a server that is down (`transient`,
//! retried) from a bad query or a missing key (`client`, not retried) and `trycatch`/`error_router` see it.

use std::future::Future;
use std::time::Instant;

use serde_json::{Map, Value};

use flowmason_actors::template::{Root, references};
use flowmason_actors::{ComponentError, StageContext};
use flowmason_store::ErrorClass;

use super::{opt_str, type_name};

/// The `operation` field: required, one of `operations`.
pub(crate) fn operation<'a>(
    component: &str,
    map: &'a Map<String, Value>,
    operations: &[&str],
) -> Result<&'a str, ComponentError> {
    let op = opt_str(component, map, "operation")?.ok_or_else(|| {
        ComponentError::config(format!(
            "{component}: `operation` is required (one of {})",
            operations.join(", ")
        ))
    })?;
    if operations.contains(&op) {
        Ok(op)
    } else {
        Err(ComponentError::config(format!(
            "{component}: `operation` must be one of {}, got {op:?}",
            operations.join(", ")
        )))
    }
}

/// A required string field, for the operations that need it.
pub(crate) fn required_str<'a>(
    component: &str,
    map: &'a Map<String, Value>,
    field: &str,
    operation: &str,
) -> Result<&'a str, ComponentError> {
    match opt_str(component, map, field)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(ComponentError::config(format!(
            "{component}: `{field}` is required for operation {operation:?}"
        ))),
    }
}

/// Checks at validation that a credential field (`password`, a secret key) is absent or comes from the
/// run's environment: the whole value, or the secret part of it, is `{{env.NAME}}`. A literal or a
/// template reading inputs or outputs would put the credential in the pipeline file and the event log.
pub(crate) fn check_credential(
    component: &str,
    map: &Map<String, Value>,
    field: &str,
    example_var: &str,
) -> Result<(), ComponentError> {
    let value = match map.get(field) {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::String(s)) if s.is_empty() => return Ok(()),
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(ComponentError::config(format!(
                "{component}: `{field}` must be a string, got {}",
                type_name(other)
            )));
        }
    };
    env_only(component, field, value, example_var)
}

/// Checks at validation that a connection string (`postgresql://user:password@host/db`, `redis://...`,
/// `mongodb://...`, or libpq's `key=value` form) carries no literal password: the password part, or the
/// whole string, must be `{{env.NAME}}`.
pub(crate) fn check_connection_string(
    component: &str,
    map: &Map<String, Value>,
    field: &str,
    example_var: &str,
) -> Result<(), ComponentError> {
    let text = match map.get(field) {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(ComponentError::config(format!(
                "{component}: `{field}` must be a string, got {}",
                type_name(other)
            )));
        }
    };
    if let Ok(refs) = references(&Value::String(text.to_string()))
        && !refs.is_empty()
    {
        // Any template in a connection string must read `env`: inputs and outputs are recorded.
        return env_only(component, field, text, example_var);
    }
    if let Some(password) = password_in(text)
        && !password.is_empty()
    {
        return Err(literal_credential(component, field, example_var));
    }
    Ok(())
}

/// The password of a URL's user info (`scheme://user:password@host`) or of libpq's `password=` key.
fn password_in(text: &str) -> Option<&str> {
    if let Some((_, rest)) = text.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let (userinfo, _) = authority.rsplit_once('@')?;
        return userinfo.split_once(':').map(|(_, password)| password);
    }
    text.split_whitespace()
        .find_map(|pair| pair.strip_prefix("password="))
}

fn env_only(
    component: &str,
    field: &str,
    value: &str,
    example_var: &str,
) -> Result<(), ComponentError> {
    match references(&Value::String(value.to_string())) {
        Ok(refs) if refs.is_empty() => Err(literal_credential(component, field, example_var)),
        Ok(refs) => match refs.iter().find(|r| !matches!(r.root, Root::Env(_))) {
            None => Ok(()),
            Some(_) => Err(ComponentError::config(format!(
                "{component}: `{field}` carries a credential: it may only read the environment \
                 (\"{{{{env.{example_var}}}}}\", from a Secret through `env`), not inputs or stage outputs, \
                 which the event log records"
            ))),
        },
        // A malformed template is reported by the template check.
        Err(_) => Ok(()),
    }
}

fn literal_credential(component: &str, field: &str, example_var: &str) -> ComponentError {
    ComponentError::config(format!(
        "{component}: `{field}` holds a credential literally: use the environment instead, e.g. \
         `{field}: \"{{{{env.{example_var}}}}}\"` with `env: [{{name: {example_var}, valueFrom: \
         {{secretKeyRef: ...}}}}]` (masked in everything the run records)"
    ))
}

/// FlowMason's output of a connector: every field of `fields` (its `Output` model, which FlowMason dumps
/// whole) present, `null` unless `set` gives it, plus `success: true`, `operation` and `metadata` with
/// `execution_time_ms`.
pub(crate) fn output(
    fields: &[&str],
    operation: &str,
    started: Instant,
    set: Map<String, Value>,
    mut metadata: Map<String, Value>,
) -> Value {
    let mut out = Map::new();
    out.insert("success".into(), Value::Bool(true));
    out.insert("operation".into(), Value::String(operation.to_string()));
    for field in fields {
        out.insert((*field).to_string(), Value::Null);
    }
    for (k, v) in set {
        out.insert(k, v);
    }
    metadata.insert(
        "execution_time_ms".into(),
        Value::from(started.elapsed().as_millis() as u64),
    );
    out.insert("metadata".into(), Value::Object(metadata));
    out.insert("error".into(), Value::Null);
    Value::Object(out)
}

/// Python's `json.dumps(value)` with its defaults (`", "` and `": "` separators, non-ASCII escaped as
/// `\uXXXX`): the text FlowMason's connectors store for a non-string value, so that data written by
/// either engine reads the same.
pub(crate) fn py_json(value: &Value) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PyFormatter);
    // Serializing a `Value` into a Vec cannot fail.
    let _ = serde::Serialize::serialize(value, &mut ser);
    String::from_utf8(out).unwrap_or_default()
}

struct PyFormatter;

impl serde_json::ser::Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                writer.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// Python's `json.loads(text)` where it succeeds, else the text: how FlowMason's connectors read back
/// what they stored.
pub(crate) fn json_or_text(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// Runs `work` until it ends or the attempt is cancelled (the engine also drops the future on a
/// timeout; this makes cancellation explicit where the work would otherwise finish a step first).
pub(crate) async fn cancellable<T>(
    component: &str,
    ctx: &StageContext,
    work: impl Future<Output = Result<T, ComponentError>>,
) -> Result<T, ComponentError> {
    tokio::select! {
        biased;
        () = ctx.cancel.cancelled() => Err(ComponentError::new(
            ErrorClass::Cancelled,
            format!("{component}: cancelled"),
        )),
        result = work => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test values are objects"),
        }
    }

    #[test]
    fn a_literal_password_is_refused_naming_the_field_and_env() {
        let err = check_credential(
            "postgres",
            &obj(json!({"password": "hunter22"})),
            "password",
            "PGPASSWORD",
        )
        .unwrap_err();
        assert!(
            err.message
                .contains("`password` holds a credential literally"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("{{env.PGPASSWORD}}"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_password_from_env_is_accepted_and_from_input_refused() {
        let env = obj(json!({"password": "{{env.PGPASSWORD}}"}));
        assert!(check_credential("postgres", &env, "password", "PGPASSWORD").is_ok());
        let input = obj(json!({"password": "{{input.pw}}"}));
        let err = check_credential("postgres", &input, "password", "PGPASSWORD").unwrap_err();
        assert!(
            err.message.contains("may only read the environment"),
            "{}",
            err.message
        );
    }

    #[test]
    fn connection_strings_with_literal_passwords_are_refused() {
        for text in [
            "postgresql://app:secret@db:5432/orders",
            "host=db user=app password=secret dbname=orders",
            "redis://:secret@cache:6379/0",
        ] {
            let map = obj(json!({ "connection_string": text }));
            assert!(
                check_connection_string("c", &map, "connection_string", "DATABASE_URL").is_err(),
                "{text}"
            );
        }
        for text in [
            "postgresql://app@db:5432/orders",
            "postgresql://app:{{env.PGPASSWORD}}@db/orders",
            "{{env.DATABASE_URL}}",
            "host=db user=app dbname=orders",
        ] {
            let map = obj(json!({ "connection_string": text }));
            assert!(
                check_connection_string("c", &map, "connection_string", "DATABASE_URL").is_ok(),
                "{text}"
            );
        }
    }

    #[test]
    fn py_json_writes_what_python_json_dumps_writes() {
        assert_eq!(
            py_json(&json!({"a": [1, 2.5, null, true], "b": "é😀"})),
            r#"{"a": [1, 2.5, null, true], "b": "\u00e9\ud83d\ude00"}"#
        );
    }

    #[test]
    fn output_has_every_field_null_unless_set() {
        let out = output(
            &["rows", "row_count"],
            "query",
            Instant::now(),
            obj(json!({"row_count": 2})),
            Map::new(),
        );
        assert_eq!(out["rows"], Value::Null);
        assert_eq!(out["row_count"], 2);
        assert_eq!(out["success"], true);
        assert_eq!(out["error"], Value::Null);
        assert!(out["metadata"]["execution_time_ms"].is_u64());
    }
}
