//! The bearer token of the HTTP ports outside `fm serve` (`fm operator --http-bind`, `fm history
//! serve`), with the same policy as the API server (see `crate::apiserver::auth`): with a token, a
//! request must carry it (a wrong one is always 401); without one, only a loopback bind is served.
//!
//! The operator reads its token from a file mounted from a Secret (`--http-token-file`) rather than
//! asking the cluster's TokenReview: a static token works the same in a cluster, against `fm serve` and
//! in tests, needs no extra RBAC, and Prometheus and `fm history --server` send it as any bearer token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;

use crate::apiserver::auth::{self, Auth};

/// Why a port cannot be guarded as asked.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("cannot read the token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token file {path} is empty")]
    Empty { path: PathBuf },
    #[error(
        "{flag} {bind} is not a loopback address: the history API and /metrics need a bearer token \
         there; give one with --http-token-file (e.g. a Secret mounted as a file)"
    )]
    TokenNeeded { flag: String, bind: SocketAddr },
}

/// The check in front of a port's protected routes.
#[derive(Debug, Clone)]
pub struct Guard {
    auth: Option<Arc<Auth>>,
}

impl Guard {
    /// A guard for a port bound at `bind` (named `flag` in errors), with the token in `token_file`.
    pub fn new(
        flag: &str,
        bind: SocketAddr,
        token_file: Option<&Path>,
    ) -> Result<Guard, GuardError> {
        let token = token_file.map(read_token).transpose()?;
        match token {
            Some(token) => Ok(Guard {
                auth: Some(Arc::new(Auth {
                    token,
                    required: true,
                })),
            }),
            None if bind.ip().is_loopback() => Ok(Guard { auth: None }),
            None => Err(GuardError::TokenNeeded {
                flag: flag.to_string(),
                bind,
            }),
        }
    }

    /// `router` behind the token check (unchanged when there is no token on a loopback bind).
    pub fn protect(&self, router: Router) -> Router {
        match &self.auth {
            Some(auth) => router.layer(axum::middleware::from_fn_with_state(
                auth.clone(),
                auth::check,
            )),
            None => router,
        }
    }
}

/// The token in `path`, without surrounding white space (as `kubectl create secret --from-file`
/// and editors leave a trailing newline).
pub fn read_token(path: &Path) -> Result<String, GuardError> {
    let text = std::fs::read_to_string(path).map_err(|source| GuardError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(GuardError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_loopback_bind_needs_a_token_file() {
        let bind: SocketAddr = "0.0.0.0:9090".parse().expect("address");
        let err = Guard::new("--http-bind", bind, None).expect_err("refused");
        assert!(err.to_string().contains("--http-token-file"), "{err}");
        let loopback: SocketAddr = "127.0.0.1:9090".parse().expect("address");
        assert!(Guard::new("--http-bind", loopback, None).is_ok());
    }

    #[test]
    fn the_token_file_is_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").expect("write");
        assert_eq!(read_token(&path).expect("token"), "s3cret");
        std::fs::write(&path, " \n").expect("write");
        assert!(matches!(read_token(&path), Err(GuardError::Empty { .. })));
    }
}
