//! Bearer-token authentication and the kubeconfig the server writes for its clients.
//!
//! A random token is generated on first start and kept in `DATA_DIR/api/token` (mode 0600); every start
//! writes `DATA_DIR/kubeconfig` (server URL, token, namespace `default`, and with TLS the CA as
//! `certificate-authority-data`). Policy: a request carrying a wrong token is always refused (401); a
//! request without a token is accepted only when the server is bound to a loopback address and was not
//! told to require the token (`require_token`). Health endpoints need no token. The layer covers the
//! Kubernetes API and everything passed in `ServeConfig::routes` (the history API, run events, reruns,
//! `/metrics`); only `ServeConfig::public_routes` (the webhooks, with their own secret; `/metrics`
//! under `--metrics-public`; static assets) is merged outside it. `crate::http::auth` applies the same
//! check on the ports of `fm operator` and `fm history serve`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use rand::Rng as _;

use super::error::ApiError;

/// What the authentication layer checks.
#[derive(Debug, Clone)]
pub struct Auth {
    pub token: String,
    /// Requests without a token are refused.
    pub required: bool,
}

/// Reads the token in `dir/token`, creating a new random one on first start.
pub fn load_or_create_token(dir: &Path) -> std::io::Result<String> {
    let path = dir.join("token");
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let bytes: [u8; 32] = rand::rng().random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, token.as_bytes())?;
    Ok(token)
}

/// Writes a file readable by its owner only (it holds a credential).
pub fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(content)?;
    file.sync_all()
}

/// Writes the kubeconfig pointing at `server_url`; returns its path.
pub fn write_kubeconfig(
    data_dir: &Path,
    server_url: &str,
    token: &str,
    ca_pem: Option<&str>,
) -> std::io::Result<PathBuf> {
    let ca = ca_pem
        .map(|pem| {
            format!(
                "    certificate-authority-data: {}\n",
                base64::engine::general_purpose::STANDARD.encode(pem)
            )
        })
        .unwrap_or_default();
    let lines = [
        "# Written by `fm serve`; points kubectl and kube clients at the embedded API server."
            .to_string(),
        "apiVersion: v1".into(),
        "kind: Config".into(),
        "clusters:".into(),
        "- name: flowmason".into(),
        "  cluster:".into(),
        format!("    server: {server_url}"),
        ca.trim_end().to_string(),
        "contexts:".into(),
        "- name: flowmason".into(),
        "  context:".into(),
        "    cluster: flowmason".into(),
        "    user: flowmason".into(),
        "    namespace: default".into(),
        "current-context: flowmason".into(),
        "preferences: {}".into(),
        "users:".into(),
        "- name: flowmason".into(),
        "  user:".into(),
        format!("    token: {token}"),
    ];
    let mut text = String::new();
    for line in lines.iter().filter(|l| !l.is_empty()) {
        text.push_str(line);
        text.push('\n');
    }
    let path = data_dir.join("kubeconfig");
    write_private(&path, text.as_bytes())?;
    Ok(path)
}

/// The authentication middleware.
pub async fn check(State(auth): State<Arc<Auth>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if matches!(path, "/healthz" | "/readyz" | "/livez") {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim().to_string());
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), auth.token.as_bytes()) => {
            next.run(request).await
        }
        None if !auth.required => next.run(request).await,
        Some(_) => ApiError::Unauthorized("the bearer token is not valid for this server".into())
            .into_response(),
        None => ApiError::Unauthorized(
            "a bearer token is required (see the kubeconfig written in the data dir)".into(),
        )
        .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
