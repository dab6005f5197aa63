//! The two polymorphic knobs of a pipeline: `retries` (an integer as the seed documents, or a policy
//! object, as this engine adds) and `parallelism` (an integer, or a boolean as the original Python client
//! sends). Both keep what was written, so that validation can report bad values by field and value,
//! and convert into the engine's types.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use flowmason_actors::plan::{DEFAULT_PARALLELISM, RetryPolicy};
use flowmason_store::ErrorClass;

use super::duration::DurationSpec;

/// `retries`: how many extra attempts a failed stage gets, optionally with its backoff and the error
/// classes worth retrying.
#[derive(Debug, Clone, PartialEq)]
pub enum RetrySpec {
    /// `retries: 3`: three extra attempts with the engine's default backoff.
    Count(i64),
    /// `retries: {limit, backoff: {duration, factor, maxDuration}, retryOn: [...]}`.
    Policy(RetryPolicySpec),
}

/// The object form of `retries`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicySpec {
    /// Extra attempts after the first; 0 disables retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffSpec>,
    /// Error classes to retry (`config`, `template`, `timeout`, `transient`, `client`, `internal`,
    /// `cancelled`); empty means the classes that are retryable by default.
    #[serde(default, alias = "retry_on", skip_serializing_if = "Vec::is_empty")]
    pub retry_on: Vec<String>,
}

/// Exponential backoff between attempts: `duration * factor^(n-1)`, capped at `maxDuration`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackoffSpec {
    /// The first delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<DurationSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// The longest delay.
    #[serde(
        default,
        alias = "max_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_duration: Option<DurationSpec>,
    /// Fraction (0..=1) of each delay added at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
}

/// One problem in a `retries` value, relative to the `retries` field (`field` is a suffix such as
/// `.backoff.duration`, empty for the value itself).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryProblem {
    pub field: String,
    pub message: String,
}

/// Parses an error class by its camelCase name (as `ErrorClass` serializes).
pub fn parse_error_class(name: &str) -> Option<ErrorClass> {
    serde_json::from_value(Value::String(name.to_string())).ok()
}

/// The error class names, for messages.
pub const ERROR_CLASS_NAMES: &[&str] = &[
    "config",
    "template",
    "timeout",
    "transient",
    "client",
    "internal",
    "cancelled",
];

impl RetrySpec {
    /// The engine's retry policy, or every problem with the written value.
    pub fn to_policy(&self) -> Result<RetryPolicy, Vec<RetryProblem>> {
        let mut problems = Vec::new();
        let mut policy = RetryPolicy::default();
        let limit = match self {
            RetrySpec::Count(n) => Some(*n),
            RetrySpec::Policy(p) => p.limit,
        };
        if let Some(n) = limit {
            let field = if matches!(self, RetrySpec::Count(_)) {
                ""
            } else {
                ".limit"
            };
            match u32::try_from(n) {
                Ok(n) => policy.limit = n,
                Err(_) if n < 0 => problems.push(RetryProblem {
                    field: field.into(),
                    message: format!("must not be negative, got {n}"),
                }),
                Err(_) => problems.push(RetryProblem {
                    field: field.into(),
                    message: format!("too large, got {n}"),
                }),
            }
        }
        if let RetrySpec::Policy(p) = self {
            if let Some(backoff) = &p.backoff {
                if let Some(d) = &backoff.duration {
                    match d.millis() {
                        Ok(ms) => policy.initial_ms = ms,
                        Err(e) => problems.push(RetryProblem {
                            field: ".backoff.duration".into(),
                            message: e.to_string(),
                        }),
                    }
                }
                if let Some(d) = &backoff.max_duration {
                    match d.millis() {
                        Ok(ms) => policy.max_ms = ms,
                        Err(e) => problems.push(RetryProblem {
                            field: ".backoff.maxDuration".into(),
                            message: e.to_string(),
                        }),
                    }
                }
                if let Some(f) = backoff.factor {
                    if f.is_finite() && f >= 1.0 {
                        policy.factor = f;
                    } else {
                        problems.push(RetryProblem {
                            field: ".backoff.factor".into(),
                            message: format!("must be at least 1, got {f}"),
                        });
                    }
                }
                if let Some(j) = backoff.jitter {
                    if (0.0..=1.0).contains(&j) {
                        policy.jitter = j;
                    } else {
                        problems.push(RetryProblem {
                            field: ".backoff.jitter".into(),
                            message: format!("must be between 0 and 1, got {j}"),
                        });
                    }
                }
            }
            for (i, name) in p.retry_on.iter().enumerate() {
                match parse_error_class(name) {
                    Some(class) => policy.retry_on.push(class),
                    None => problems.push(RetryProblem {
                        field: format!(".retryOn[{i}]"),
                        message: format!(
                            "unknown error class {name:?} (one of {})",
                            ERROR_CLASS_NAMES.join(", ")
                        ),
                    }),
                }
            }
        }
        if problems.is_empty() {
            Ok(policy)
        } else {
            Err(problems)
        }
    }
}

impl Serialize for RetrySpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            RetrySpec::Count(n) => serializer.serialize_i64(*n),
            RetrySpec::Policy(p) => p.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for RetrySpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Number(n) => match n.as_i64() {
                Some(i) => Ok(RetrySpec::Count(i)),
                None => Err(de::Error::custom(format!(
                    "retries must be a whole number, got {n}"
                ))),
            },
            obj @ Value::Object(_) => serde_json::from_value(obj)
                .map(RetrySpec::Policy)
                .map_err(de::Error::custom),
            other => Err(de::Error::custom(format!(
                "expected an integer or a retry policy object {{limit, backoff, retryOn}}, got {other}"
            ))),
        }
    }
}

impl JsonSchema for RetrySpec {
    fn schema_name() -> Cow<'static, str> {
        "RetrySpec".into()
    }

    fn inline_schema() -> bool {
        true
    }

    /// Integer or object: not expressible structurally with a type, so the value is preserved as is
    /// (allowed without `type` by the structural-schema rules) and checked by our validation.
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Extra attempts for a failed stage: an integer, or {limit, backoff: {duration, factor, maxDuration, jitter}, retryOn: [error classes]}.",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

/// `parallelism`: the most stages of one run running at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParallelismSpec {
    Count(i64),
    /// `true`: the engine's default cap; `false`: one stage at a time (the Python client's boolean).
    Enabled(bool),
}

impl ParallelismSpec {
    /// The cap in stages, or the message for a value below 1.
    pub fn to_limit(self) -> Result<usize, String> {
        match self {
            ParallelismSpec::Enabled(true) => Ok(DEFAULT_PARALLELISM),
            ParallelismSpec::Enabled(false) => Ok(1),
            ParallelismSpec::Count(n) if n >= 1 => {
                usize::try_from(n).map_err(|_| format!("too large, got {n}"))
            }
            ParallelismSpec::Count(n) => Err(format!("must be at least 1, got {n}")),
        }
    }
}

impl Serialize for ParallelismSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ParallelismSpec::Count(n) => serializer.serialize_i64(*n),
            ParallelismSpec::Enabled(b) => serializer.serialize_bool(*b),
        }
    }
}

impl<'de> Deserialize<'de> for ParallelismSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ParallelismSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer (most stages running at once) or a boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ParallelismSpec, E> {
                Ok(ParallelismSpec::Enabled(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ParallelismSpec, E> {
                Ok(ParallelismSpec::Count(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ParallelismSpec, E> {
                Ok(ParallelismSpec::Count(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl JsonSchema for ParallelismSpec {
    fn schema_name() -> Cow<'static, str> {
        "ParallelismSpec".into()
    }

    fn inline_schema() -> bool {
        true
    }

    /// Integer or boolean: preserved as is (see `RetrySpec`), checked by our validation.
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Most stages of one run running at once: an integer >= 1, or true (engine default) / false (one at a time).",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_integer_is_limit_with_default_backoff() {
        let r: RetrySpec = serde_json::from_str("3").expect("int");
        assert_eq!(r, RetrySpec::Count(3));
        let p = r.to_policy().expect("policy");
        assert_eq!(
            p,
            RetryPolicy {
                limit: 3,
                ..RetryPolicy::default()
            }
        );
    }

    #[test]
    fn retries_object_converts_every_field() {
        let r: RetrySpec = serde_json::from_value(serde_json::json!({
            "limit": 5, "backoff": {"duration": "200ms", "factor": 3.0, "maxDuration": "10s", "jitter": 0.2},
            "retry_on": ["transient", "timeout"]
        }))
        .expect("object");
        let p = r.to_policy().expect("policy");
        assert_eq!(p.limit, 5);
        assert_eq!(p.initial_ms, 200);
        assert_eq!(p.factor, 3.0);
        assert_eq!(p.max_ms, 10_000);
        assert_eq!(p.jitter, 0.2);
        assert_eq!(p.retry_on, vec![ErrorClass::Transient, ErrorClass::Timeout]);
        let back = serde_json::to_value(&r).expect("ser");
        assert_eq!(back["retryOn"], serde_json::json!(["transient", "timeout"]));
    }

    #[test]
    fn retries_problems_are_all_reported() {
        let r = RetrySpec::Policy(RetryPolicySpec {
            limit: Some(-1),
            backoff: Some(BackoffSpec {
                duration: Some(DurationSpec::Text("soon".into())),
                factor: Some(0.5),
                max_duration: None,
                jitter: Some(2.0),
            }),
            retry_on: vec!["flaky".into()],
        });
        let problems = r.to_policy().expect_err("bad");
        let text: Vec<String> = problems
            .iter()
            .map(|p| format!("retries{}: {}", p.field, p.message))
            .collect();
        assert_eq!(
            text,
            vec![
                "retries.limit: must not be negative, got -1",
                "retries.backoff.duration: invalid duration \"soon\": expected a number followed by a unit (ms, s, m, h, d), e.g. \"90s\" or \"1h30m\"",
                "retries.backoff.factor: must be at least 1, got 0.5",
                "retries.backoff.jitter: must be between 0 and 1, got 2",
                "retries.retryOn[0]: unknown error class \"flaky\" (one of config, template, timeout, transient, client, internal, cancelled)",
            ]
        );
    }

    #[test]
    fn retries_rejects_other_shapes() {
        assert!(serde_json::from_str::<RetrySpec>("\"three\"").is_err());
        assert!(serde_json::from_str::<RetrySpec>("{\"limt\": 3}").is_err());
    }

    #[test]
    fn parallelism_accepts_int_and_bool() {
        let p: ParallelismSpec = serde_json::from_str("4").expect("int");
        assert_eq!(p.to_limit(), Ok(4));
        let p: ParallelismSpec = serde_json::from_str("true").expect("bool");
        assert_eq!(p.to_limit(), Ok(DEFAULT_PARALLELISM));
        let p: ParallelismSpec = serde_json::from_str("false").expect("bool");
        assert_eq!(p.to_limit(), Ok(1));
        assert_eq!(
            ParallelismSpec::Count(0).to_limit(),
            Err("must be at least 1, got 0".to_string())
        );
    }
}
