//! The one error type of the operator: every way a reconcile, a status write or a start can fail, each
//! naming the object (kind/namespace/name) and the field or reference involved.

use flowmason_actors::EngineError;

/// Why a reconcile did not finish; kube-runtime requeues the object with a backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed (network, conflict, forbidden, ...).
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// A Finalizer step failed.
    #[error("finalizer of {object}: {message}")]
    Finalizer { object: String, message: String },
    /// The engine refused or lost a run (boxed: the engine's errors are large, and every reconcile
    /// result carries this type).
    #[error("{object}: {source}")]
    Engine {
        object: String,
        #[source]
        source: Box<EngineError>,
    },
    /// An object lacks a field the API server always sets (`metadata.name`, `uid`, ...).
    #[error("{object}: missing {field}")]
    MissingField { object: String, field: &'static str },
    /// A status could not be encoded as a patch.
    #[error("{object}: cannot encode the status: {source}")]
    Encode {
        object: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    pub(crate) fn engine(object: impl Into<String>, source: EngineError) -> Error {
        Error::Engine {
            object: object.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn kube(action: impl Into<String>, source: kube::Error) -> Error {
        Error::Kube {
            action: action.into(),
            source,
        }
    }
}

/// Results of the operator.
pub type Result<T, E = Error> = std::result::Result<T, E>;
