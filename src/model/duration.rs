//! `DurationSpec`: the `timeout` (and backoff) fields, which users write either as whole seconds
//! (`timeout: 300`, as the seed documents) or as a duration string (`"90s"`, `"1h30m"`, `"500ms"`).
//!
//! The raw value is kept as written so that a bad value is a validation error naming the field and
//! the value (`timeout: invalid duration "5 minutes": ...`) instead of an opaque parse failure, and so
//! that a resource round-trips unchanged through the API server.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration as written in a resource: whole seconds, or a string such as `"90s"`, `"1h30m"`,
/// `"500ms"`, `"2m"`, `"1d"` (a bare number string means seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationSpec {
    /// An integer: seconds. Kept signed so that a negative value is reported, not rejected blindly.
    Seconds(i64),
    /// A duration string, parsed by [`DurationSpec::millis`].
    Text(String),
}

/// Why a duration value is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("invalid duration {value}: must not be negative")]
    Negative { value: String },
    #[error("invalid duration {value:?}: empty")]
    Empty { value: String },
    #[error(
        "invalid duration {value:?}: expected a number followed by a unit (ms, s, m, h, d), e.g. \"90s\" or \"1h30m\""
    )]
    Syntax { value: String },
    #[error("invalid duration {value:?}: unknown unit {unit:?} (use ms, s, m, h or d)")]
    Unit { value: String, unit: String },
    #[error("invalid duration {value:?}: too large")]
    Overflow { value: String },
}

impl DurationSpec {
    /// The duration in milliseconds, or why the written value is not a duration.
    pub fn millis(&self) -> Result<u64, DurationError> {
        match self {
            DurationSpec::Seconds(s) if *s < 0 => Err(DurationError::Negative {
                value: s.to_string(),
            }),
            DurationSpec::Seconds(s) => {
                (*s as u64)
                    .checked_mul(1000)
                    .ok_or_else(|| DurationError::Overflow {
                        value: s.to_string(),
                    })
            }
            DurationSpec::Text(text) => parse_millis(text),
        }
    }

    /// A duration string for `ms` milliseconds in the canonical form this module parses
    /// (`"1h30m"`, `"500ms"`, `"0s"`); used for status fields such as `PipelineRun.status.duration`.
    pub fn from_millis(ms: u64) -> DurationSpec {
        DurationSpec::Text(format_millis(ms))
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationSpec::Seconds(s) => write!(f, "{s}"),
            DurationSpec::Text(t) => write!(f, "{t:?}"),
        }
    }
}

/// Parses a duration string: one or more `<digits><unit>` parts (`1h30m`), or bare digits (seconds).
pub fn parse_millis(text: &str) -> Result<u64, DurationError> {
    let value = text.trim();
    if value.is_empty() {
        return Err(DurationError::Empty {
            value: text.to_string(),
        });
    }
    if value.starts_with('-') {
        return Err(DurationError::Negative {
            value: format!("{text:?}"),
        });
    }
    let overflow = || DurationError::Overflow {
        value: text.to_string(),
    };
    if value.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = value.parse().map_err(|_| overflow())?;
        return secs.checked_mul(1000).ok_or_else(overflow);
    }
    let mut total: u64 = 0;
    let mut rest = value;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::Syntax {
                value: text.to_string(),
            });
        }
        let number: u64 = rest[..digits].parse().map_err(|_| overflow())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        if unit_len == 0 {
            return Err(DurationError::Syntax {
                value: text.to_string(),
            });
        }
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let factor: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => {
                return Err(DurationError::Unit {
                    value: text.to_string(),
                    unit: other.to_string(),
                });
            }
        };
        let part = number.checked_mul(factor).ok_or_else(overflow)?;
        total = total.checked_add(part).ok_or_else(overflow)?;
    }
    Ok(total)
}

/// Formats milliseconds as the largest units that divide it: `5400000` -> `"1h30m"`, `1500` -> `"1s500ms"`.
pub fn format_millis(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    let mut rest = ms;
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

impl Serialize for DurationSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            DurationSpec::Seconds(s) => serializer.serialize_i64(*s),
            DurationSpec::Text(t) => serializer.serialize_str(t),
        }
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = DurationSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of seconds or a duration string such as \"90s\" or \"1h30m\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationSpec, E> {
                Ok(DurationSpec::Seconds(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationSpec, E> {
                i64::try_from(v)
                    .map(DurationSpec::Seconds)
                    .map_err(|_| E::custom(format!("duration {v} seconds is too large")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<DurationSpec, E> {
                if v.fract() == 0.0 && v.abs() < 9.0e15 {
                    Ok(DurationSpec::Seconds(v as i64))
                } else {
                    Err(E::custom(format!(
                        "duration {v}: seconds must be a whole number (write \"{}ms\")",
                        (v * 1000.0).round()
                    )))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationSpec, E> {
                Ok(DurationSpec::Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

impl JsonSchema for DurationSpec {
    fn schema_name() -> Cow<'static, str> {
        "DurationSpec".into()
    }

    fn inline_schema() -> bool {
        true
    }

    /// Structural int-or-string, as Kubernetes requires for a field that holds either.
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Whole seconds (integer) or a duration string such as \"90s\", \"1h30m\", \"500ms\".",
            "x-kubernetes-int-or-string": true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse_millis("90s"), Ok(90_000));
        assert_eq!(parse_millis("1h"), Ok(3_600_000));
        assert_eq!(parse_millis("500ms"), Ok(500));
        assert_eq!(parse_millis("1h30m"), Ok(5_400_000));
        assert_eq!(parse_millis("2m"), Ok(120_000));
        assert_eq!(parse_millis("1d"), Ok(86_400_000));
        assert_eq!(parse_millis("45"), Ok(45_000));
        assert_eq!(DurationSpec::Seconds(300).millis(), Ok(300_000));
    }

    #[test]
    fn bad_durations_name_the_value() {
        assert_eq!(
            parse_millis("5 minutes").map_err(|e| e.to_string()),
            Err("invalid duration \"5 minutes\": expected a number followed by a unit (ms, s, m, h, d), e.g. \"90s\" or \"1h30m\"".to_string())
        );
        assert_eq!(
            parse_millis("10y").map_err(|e| e.to_string()),
            Err("invalid duration \"10y\": unknown unit \"y\" (use ms, s, m, h or d)".to_string())
        );
        assert_eq!(
            DurationSpec::Seconds(-5)
                .millis()
                .map_err(|e| e.to_string()),
            Err("invalid duration -5: must not be negative".to_string())
        );
        assert_eq!(
            parse_millis("").map_err(|e| e.to_string()),
            Err("invalid duration \"\": empty".to_string())
        );
    }

    #[test]
    fn formats_canonically() {
        assert_eq!(format_millis(5_400_000), "1h30m");
        assert_eq!(format_millis(1_500), "1s500ms");
        assert_eq!(format_millis(0), "0s");
        assert_eq!(parse_millis(&format_millis(93_784_005)), Ok(93_784_005));
    }

    #[test]
    fn deserializes_int_and_string() {
        let d: DurationSpec = serde_json::from_str("90").expect("int");
        assert_eq!(d, DurationSpec::Seconds(90));
        let d: DurationSpec = serde_json::from_str("\"1h\"").expect("string");
        assert_eq!(d, DurationSpec::Text("1h".into()));
        assert_eq!(serde_json::to_string(&d).expect("ser"), "\"1h\"");
        assert!(serde_json::from_str::<DurationSpec>("true").is_err());
    }
}
