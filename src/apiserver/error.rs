//! API errors as Kubernetes `metav1.Status` objects: every failure a client can see has the `reason` and
//! `code` that kubectl and kube-rs branch on (NotFound, AlreadyExists, Conflict, Invalid, Gone, ...).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One field-level problem of an `Invalid` answer (`details.causes[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// Field path, e.g. `spec.stages[1].dependsOn`.
    pub field: String,
    /// What is wrong with the value.
    pub message: String,
}

/// A failed API request. Each variant maps to one Kubernetes `reason` and HTTP code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    NotFound {
        message: String,
        kind: String,
        group: String,
        name: String,
    },
    #[error("{message}")]
    AlreadyExists {
        message: String,
        kind: String,
        group: String,
        name: String,
    },
    #[error("{message}")]
    Conflict {
        message: String,
        kind: String,
        group: String,
        name: String,
    },
    #[error("{message}")]
    Invalid {
        message: String,
        kind: String,
        group: String,
        name: String,
        causes: Vec<Cause>,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    RequestEntityTooLarge(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// `<resource>.<group> "<name>" not found`, as the real API server words it.
    pub fn not_found(resource: &str, group: &str, name: &str) -> Self {
        ApiError::NotFound {
            message: format!("{} {name:?} not found", qualified(resource, group)),
            kind: resource.to_string(),
            group: group.to_string(),
            name: name.to_string(),
        }
    }

    pub fn already_exists(resource: &str, group: &str, name: &str) -> Self {
        ApiError::AlreadyExists {
            message: format!("{} {name:?} already exists", qualified(resource, group)),
            kind: resource.to_string(),
            group: group.to_string(),
            name: name.to_string(),
        }
    }

    /// A stale `resourceVersion` (optimistic concurrency) or a failed precondition.
    pub fn conflict(resource: &str, group: &str, name: &str, why: &str) -> Self {
        ApiError::Conflict {
            message: format!(
                "Operation cannot be fulfilled on {} {name:?}: {why}",
                qualified(resource, group)
            ),
            kind: resource.to_string(),
            group: group.to_string(),
            name: name.to_string(),
        }
    }

    /// A 422 naming each bad field.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> Self {
        let list: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        ApiError::Invalid {
            message: format!(
                "{} {name:?} is invalid: {}",
                qualified(kind, group),
                list.join(", ")
            ),
            kind: kind.to_string(),
            group: group.to_string(),
            name: name.to_string(),
            causes,
        }
    }

    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RequestEntityTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `reason` field of the Status.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::RequestEntityTooLarge(_) => "RequestEntityTooLarge",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::Gone(_) => "Expired",
            ApiError::Unauthorized(_) => "Unauthorized",
            ApiError::NotAcceptable(_) => "NotAcceptable",
            ApiError::Internal(_) => "InternalError",
        }
    }

    /// The `metav1.Status` object for this error.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code().as_u16(),
        });
        match self {
            ApiError::NotFound {
                kind, group, name, ..
            }
            | ApiError::AlreadyExists {
                kind, group, name, ..
            }
            | ApiError::Conflict {
                kind, group, name, ..
            } => {
                status["details"] = details(name, group, kind);
            }
            ApiError::Invalid {
                kind,
                group,
                name,
                causes,
                ..
            } => {
                let mut d = details(name, group, kind);
                d["causes"] = causes
                    .iter()
                    .map(|c| {
                        json!({"reason": "FieldValueInvalid", "message": c.message, "field": c.field})
                    })
                    .collect();
                status["details"] = d;
            }
            _ => {}
        }
        status
    }
}

fn details(name: &str, group: &str, kind: &str) -> Value {
    let mut d = json!({ "name": name, "kind": kind });
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        let mut response = (code, axum::Json(self.status())).into_response();
        if code == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Store failures surface as 500s naming the storage problem; they are not the client's fault.
impl From<super::store::StoreError> for ApiError {
    fn from(e: super::store::StoreError) -> Self {
        ApiError::Internal(format!("storage: {e}"))
    }
}
