//! Serving: binds (127.0.0.1 by default), opens the store, writes the kubeconfig, and serves HTTP/1.1
//! and HTTP/2 (plain, or TLS with the generated certificate) until shut down. A [`Server`] runs inside
//! the caller's tokio runtime, so `fm serve`, the tests and later the controllers share one process:
//! start it, read its address and kubeconfig, and [`Server::shutdown`] it, which closes connections
//! and watches and releases the store (so a new server can open the same data dir).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::auth::{self, Auth};
use super::registry::ResourceRegistry;
use super::store::{Mutation, ObjectKey, ObjectStore, StoreError, scan_prefix};
use super::tls::{self, TlsError};
use super::{ApiConfig, ApiState, handlers, objects, private};
use crate::health::HealthState;

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// `DATA_DIR`: the store lives in `DATA_DIR/api`, the kubeconfig at `DATA_DIR/kubeconfig`.
    pub data_dir: PathBuf,
    /// Port 0 picks a free port (see [`Server::addr`]).
    pub bind: SocketAddr,
    pub tls: bool,
    /// Refuse requests without the token even on a loopback bind (always the case on other binds).
    pub require_token: bool,
    /// How many recent changes watches can resume from.
    pub watch_history: u64,
    /// Flush every write before answering it.
    pub durable: bool,
    pub api: ApiConfig,
    /// More routes served next to the API and behind the same bearer-token check: everything that
    /// shows run data or changes anything (the history API, `/metrics` unless it was made public).
    pub routes: Option<Router>,
    /// Routes served outside the bearer-token check: only those that authenticate on their own (the
    /// trigger webhooks under `/webhooks/`, each with its Pipeline's secret) or show nothing of the
    /// runs (`/metrics` when `--metrics-public` opens it, static assets).
    pub public_routes: Option<Router>,
    /// Readiness checks of `/readyz` besides the API store's own (`fm serve`: the event log).
    pub readiness: HealthState,
}

impl ServeConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServeConfig {
            data_dir: data_dir.into(),
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            tls: false,
            require_token: false,
            watch_history: 10_000,
            durable: true,
            api: ApiConfig::default(),
            routes: None,
            public_routes: None,
            readiness: HealthState::new(),
        }
    }
}

/// Failures starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write {what}: {source}")]
    Write {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("initialising the store: {0}")]
    Init(String),
}

/// A running API server.
pub struct Server {
    addr: SocketAddr,
    url: String,
    kubeconfig: PathBuf,
    token: String,
    ca_pem: Option<String>,
    state: Arc<ApiState>,
    accept: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Opens the store, binds, writes the kubeconfig and starts serving on the current runtime.
    pub async fn start(config: ServeConfig) -> Result<Server, ServeError> {
        let api_dir = config.data_dir.join("api");
        private::create_private_dir(&api_dir).map_err(|source| ServeError::Dir {
            path: api_dir.display().to_string(),
            source,
        })?;
        let db_path = api_dir.join("db");
        let (history, durable) = (config.watch_history, config.durable);
        let store =
            tokio::task::spawn_blocking(move || ObjectStore::open(&db_path, history, durable))
                .await
                .map_err(|e| ServeError::Init(e.to_string()))??;
        private::tighten_tree(&api_dir).map_err(|source| ServeError::Dir {
            path: api_dir.display().to_string(),
            source,
        })?;
        let store = Arc::new(store);
        let registry = ResourceRegistry::new();
        let st = store.clone();
        let crds = tokio::task::spawn_blocking(move || bootstrap(&st))
            .await
            .map_err(|e| ServeError::Init(e.to_string()))??;
        for crd in &crds {
            registry.register_crd(crd);
        }

        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|source| ServeError::Bind {
                addr: config.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: config.bind,
            source,
        })?;
        let token = auth::load_or_create_token(&api_dir).map_err(|source| ServeError::Write {
            what: api_dir.join("token").display().to_string(),
            source,
        })?;
        let certs = if config.tls {
            Some(tls::load_or_create(&api_dir, addr.ip())?)
        } else {
            None
        };
        let acceptor = match &certs {
            Some(c) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(c)?)),
            None => None,
        };
        let host = match addr.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
            ip => ip.to_string(),
        };
        let scheme = if config.tls { "https" } else { "http" };
        let url = format!("{scheme}://{host}:{}", addr.port());
        let ca_pem = certs.as_ref().map(|c| c.ca_pem.clone());
        let kubeconfig = auth::write_kubeconfig(&config.data_dir, &url, &token, ca_pem.as_deref())
            .map_err(|source| ServeError::Write {
                what: config.data_dir.join("kubeconfig").display().to_string(),
                source,
            })?;

        let (watch_epoch, _) = tokio::sync::watch::channel(0u64);
        let state = Arc::new(ApiState {
            store: store.clone(),
            registry,
            config: config.api.clone(),
            watch_epoch,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            address: format!("{host}:{}", addr.port()),
            readiness: api_store_ready(config.readiness.clone(), store.clone()),
        });
        let auth = Arc::new(Auth {
            token: token.clone(),
            required: config.require_token || !addr.ip().is_loopback(),
        });
        let mut app = handlers::router(state.clone());
        if let Some(routes) = config.routes.clone() {
            app = routes.merge(app);
        }
        app = app.layer(axum::middleware::from_fn_with_state(auth, auth::check));
        if let Some(public) = config.public_routes.clone() {
            app = public.merge(app);
        }
        let accept = tokio::spawn(accept_loop(listener, app, acceptor, state.clone()));
        Ok(Server {
            addr,
            url,
            kubeconfig,
            token,
            ca_pem,
            state,
            accept,
        })
    }

    /// The bound address (the actual port when port 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http(s)://host:port` as written in the kubeconfig.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// The CA certificate (PEM) clients must trust, when serving TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The object store, for in-process users that need no HTTP round trip.
    pub fn store(&self) -> &Arc<ObjectStore> {
        &self.state.store
    }

    /// A kube client configuration read from the written kubeconfig, as any client would.
    pub async fn client_config(&self) -> Result<kube::Config, kube::config::KubeconfigError> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
    }

    /// Ends every open watch (clients re-watch from their last resourceVersion), e.g. to test that
    /// watchers survive a dropped connection.
    pub fn drop_watches(&self) {
        self.state.watch_epoch.send_modify(|e| *e += 1);
    }

    /// Stops accepting, closes connections and watches, waits for them, and releases the store.
    pub async fn shutdown(self) {
        self.state.shutdown.cancel();
        let _ = self.accept.await;
        self.state.tasks.close();
        self.state.tasks.wait().await;
        let store = self.state.store.clone();
        drop(self.state);
        // Anything still holding the store (a request finishing on a blocking thread) lets go soon.
        for _ in 0..200 {
            if Arc::strong_count(&store) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(store);
    }
}

/// Reads the stored CRDs (to serve them) and creates the `default` namespace on first start.
fn bootstrap(store: &ObjectStore) -> Result<Vec<serde_json::Value>, ServeError> {
    let key = ObjectKey::new("/v1/namespaces", "", "default");
    store.mutate(&key, |cur| {
        Ok::<_, StoreError>(match cur {
            Some(_) => Mutation::Keep,
            None => Mutation::Put(serde_json::json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": "default",
                    "uid": uuid::Uuid::new_v4().to_string(),
                    "creationTimestamp": objects::now_rfc3339(),
                    "generation": 1,
                },
                "status": {"phase": "Active"},
            })),
        })
    })?;
    let page = store.list(
        &scan_prefix("apiextensions.k8s.io/v1/customresourcedefinitions", None),
        None,
        0,
        &|_| true,
    )?;
    Ok(page.items)
}

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<ApiState>,
) {
    loop {
        let accepted = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let cancel = state.shutdown.clone();
        state.tasks.spawn(async move {
            match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => serve_connection(stream, app, cancel).await,
                    Err(e) => tracing::debug!("TLS handshake failed: {e}"),
                },
                None => serve_connection(stream, app, cancel).await,
            }
        });
    }
}

async fn serve_connection<S>(stream: S, app: Router, cancel: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                tracing::debug!("connection ended: {e}");
            }
        }
        _ = cancel.cancelled() => {}
    }
}

/// `readiness` with the API server's own check: its object store can write (no flush of it has failed).
fn api_store_ready(readiness: HealthState, store: Arc<ObjectStore>) -> HealthState {
    readiness.check(
        "apiStore",
        Arc::new(move || {
            let failure = store.write_failure();
            Box::pin(async move {
                match failure {
                    Some(failure) => Err(format!("API store cannot write: {failure}")),
                    None => Ok(()),
                }
            })
        }),
    )
}
