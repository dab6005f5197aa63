//! Server-side field validation of our kinds, as kube-apiserver does it for custom resources: the
//! `fieldValidation` query parameter of create, update and patch decides what an unknown field (one the
//! CRD schema does not declare, e.g. the typo `dependOn`) does. `Strict` refuses the request with 422
//! naming each one; `Warn` (the default) prunes them and answers with one `Warning` header each, which
//! kubectl prints; `Ignore` prunes them silently. kubectl sends `Strict` by default (`--validate=strict`).

use axum::http::HeaderValue;
use axum::response::Response;
use serde_json::Value;

use super::error::{ApiError, Cause};
use super::registry::ResourceType;
use crate::model::unknown_fields::{UnknownField, prune_pipeline, prune_pipelinerun};

/// The `fieldValidation` directive of a write request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    /// Parses the query parameter; absent or empty means `Warn`, as in kube-apiserver.
    pub fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        match value {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::BadRequest(format!(
                "fieldValidation: invalid value {other:?}: must be one of Ignore, Warn, Strict"
            ))),
        }
    }
}

/// Prunes the unknown fields of a Pipeline or PipelineRun `object` (other kinds are left alone) and
/// returns the warnings to send; under `Strict` any unknown field fails the request instead.
pub fn check(
    rt: &ResourceType,
    object: &mut Value,
    mode: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    let unknown = match (rt.group.as_str(), rt.kind.as_str()) {
        ("flowmason.io", "Pipeline") => prune_pipeline(object),
        ("flowmason.io", "PipelineRun") => prune_pipelinerun(object),
        _ => Vec::new(),
    };
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    match mode {
        FieldValidation::Ignore => Ok(Vec::new()),
        FieldValidation::Warn => Ok(unknown.iter().map(ToString::to_string).collect()),
        FieldValidation::Strict => Err(strict_error(rt, object, &unknown)),
    }
}

/// 422 with kube-apiserver's wording (`strict decoding error: unknown field "spec.x"`), one cause per
/// field carrying the suggestion.
fn strict_error(rt: &ResourceType, object: &Value, unknown: &[UnknownField]) -> ApiError {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let list: Vec<String> = unknown.iter().map(ToString::to_string).collect();
    ApiError::Invalid {
        message: format!(
            "{}.{} {name:?} is invalid: strict decoding error: {}",
            rt.kind,
            rt.group,
            list.join(", ")
        ),
        kind: rt.kind.clone(),
        group: rt.group.clone(),
        name: name.to_string(),
        causes: unknown
            .iter()
            .map(|u| Cause {
                field: u.path.clone(),
                message: u.message(),
            })
            .collect(),
    }
}

/// Adds one `Warning: 299 - "<text>"` header per warning, as kube-apiserver sends them.
pub fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for warning in warnings {
        let escaped = warning.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(value) = HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            response.headers_mut().append("warning", value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_means_warn_and_bad_values_are_refused() {
        assert_eq!(
            FieldValidation::parse(None).ok(),
            Some(FieldValidation::Warn)
        );
        assert_eq!(
            FieldValidation::parse(Some("Strict")).ok(),
            Some(FieldValidation::Strict)
        );
        let err = FieldValidation::parse(Some("strict")).expect_err("case matters");
        assert!(err.to_string().contains("\"strict\""), "{err}");
    }

    #[test]
    fn warning_headers_escape_quotes() {
        let response = with_warnings(
            axum::response::IntoResponse::into_response(()),
            &["unknown field \"spec.x\"".to_string()],
        );
        assert_eq!(
            response
                .headers()
                .get("warning")
                .and_then(|v| v.to_str().ok()),
            Some("299 - \"unknown field \\\"spec.x\\\"\"")
        );
    }
}
