//! Keeps secret values out of everything a run records.
//!
//! A run knows the values of the secrets its environment was resolved from (API keys, passwords). A
//! component may echo one by accident (an HTTP error body, a log line, an output that copies its input);
//! the run actor passes every event through a [`Redactor`] before appending it, so that no secret value
//! reaches the event log, and from there the status, history or the terminal.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use flowmason_store::{EventKind, RunError, StageError};

/// What a secret value is replaced with.
pub const MASK: &str = "***";

/// Values shorter than this are not redacted: masking every `a` or `1` in every output would destroy the
/// output and protect nothing (a secret that short is no secret).
pub const MIN_SECRET_LEN: usize = 4;

/// Replaces known secret values with [`MASK`] in strings, JSON values and events. Cheap to clone; with no
/// secrets every call returns at once without looking at its argument.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Distinct values of at least `MIN_SECRET_LEN` bytes, longest first, so that a secret that contains
    /// another is masked whole.
    secrets: Arc<[String]>,
}

impl Redactor {
    pub fn new<I, S>(values: I) -> Redactor
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut secrets: Vec<String> = values
            .into_iter()
            .map(Into::into)
            .filter(|s| s.len() >= MIN_SECRET_LEN)
            .collect();
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Redactor {
            secrets: secrets.into(),
        }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Number of distinct values redacted.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// `text` with every secret value masked; borrowed when there was nothing to mask.
    pub fn redact_str<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for secret in self.secrets.iter() {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
        out
    }

    /// Masks secret values in place.
    pub fn redact_string(&self, text: &mut String) {
        if self.is_empty() {
            return;
        }
        if let Cow::Owned(masked) = self.redact_str(text) {
            *text = masked;
        }
    }

    /// Masks secret values in every string of a JSON value, object keys included.
    pub fn redact_value(&self, value: &mut Value) {
        if self.is_empty() {
            return;
        }
        match value {
            Value::String(s) => self.redact_string(s),
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_value(v)),
            Value::Object(map) => {
                if map
                    .keys()
                    .any(|k| matches!(self.redact_str(k), Cow::Owned(_)))
                {
                    let old = std::mem::take(map);
                    *map = old
                        .into_iter()
                        .map(|(k, v)| (self.redact_str(&k).into_owned(), v))
                        .collect::<Map<String, Value>>();
                }
                map.values_mut().for_each(|v| self.redact_value(v));
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// Masks secret values in every text an event carries (outputs, errors, log lines, reasons).
    pub fn redact_event(&self, kind: &mut EventKind) {
        if self.is_empty() {
            return;
        }
        // Exhaustive on purpose: a new event kind must decide what of it needs masking.
        match kind {
            EventKind::RunAccepted { inputs, .. } => self.redact_value(inputs),
            EventKind::RunStarted
            | EventKind::RunResumed { .. }
            | EventKind::StageRetryScheduled { .. }
            | EventKind::StageSkipped { .. } => {}
            EventKind::StageStarted { input, .. } => self.redact_value(input),
            EventKind::StageSucceeded { output, .. } => self.redact_value(output),
            EventKind::StageFailed { error, .. } => self.redact_stage_error(error),
            EventKind::StageLog { message, data, .. } => {
                self.redact_string(message);
                self.redact_value(data);
            }
            EventKind::RunSucceeded { output } => self.redact_value(output),
            EventKind::RunFailed { error } => self.redact_run_error(error),
            EventKind::RunCancelled { reason } => self.redact_string(reason),
            EventKind::RunTimedOut { message } => self.redact_string(message),
        }
    }

    fn redact_stage_error(&self, error: &mut StageError) {
        self.redact_string(&mut error.message);
        self.redact_value(&mut error.details);
    }

    fn redact_run_error(&self, error: &mut RunError) {
        self.redact_string(&mut error.message);
        self.redact_value(&mut error.details);
    }
}

/// Never prints the values.
impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secret values)", self.secrets.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_every_occurrence_longest_first_and_ignores_short_values() {
        let r = Redactor::new(["sk-abc", "sk-abcdef", "ab", ""]);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r.redact_str("key sk-abcdef and sk-abc, not ab"),
            "key *** and ***, not ab"
        );
        assert!(matches!(r.redact_str("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn masks_strings_and_keys_inside_json() {
        let r = Redactor::new(["hunter22"]);
        let mut v = json!({"a": ["x hunter22 y", 1, null], "hunter22": {"b": "hunter22"}});
        r.redact_value(&mut v);
        assert_eq!(v, json!({"a": ["x *** y", 1, null], "***": {"b": "***"}}));
    }

    #[test]
    fn masks_events() {
        let r = Redactor::new(["s3cr3t"]);
        let mut failed = EventKind::StageFailed {
            stage: "a".into(),
            attempt: 1,
            error: StageError {
                message: "401 for key s3cr3t".into(),
                class: flowmason_store::ErrorClass::Client,
                retryable: false,
                details: json!({"body": "s3cr3t"}),
            },
        };
        r.redact_event(&mut failed);
        let text = serde_json::to_string(&failed).expect("ser");
        assert!(!text.contains("s3cr3t"), "{text}");
        let mut log = EventKind::StageLog {
            stage: "a".into(),
            attempt: 1,
            level: "info".into(),
            message: "using s3cr3t".into(),
            data: json!(["s3cr3t"]),
        };
        r.redact_event(&mut log);
        assert!(!serde_json::to_string(&log).expect("ser").contains("s3cr3t"));
    }

    #[test]
    fn an_empty_redactor_changes_nothing_and_debug_hides_values() {
        let r = Redactor::default();
        let mut v = json!({"k": "anything"});
        r.redact_value(&mut v);
        assert_eq!(v, json!({"k": "anything"}));
        assert_eq!(
            format!("{:?}", Redactor::new(["topsecret"])),
            "Redactor(1 secret values)"
        );
    }
}
