//! The embedded Kubernetes-compatible API server behind `fm serve`.
//!
//! It serves the resources the engine uses (namespaces, secrets, configmaps, events, leases, CRDs and
//! our `flowmason.io/v1` kinds, plus any CRD applied to it) with the REST conventions `kubectl`,
//! kube-rs and kube-runtime rely on, so that the controllers and the tests talk to it exactly as to a
//! real cluster. One concern per file:
//!
//! - [`store`]: the sled object store, resourceVersions, watch history, change fan-out;
//! - [`registry`]: served resources and discovery documents;
//! - [`objects`]: metadata, generation, status-subresource and validation rules;
//! - [`field_validation`]: unknown fields of our kinds under `fieldValidation` (Strict/Warn/Ignore);
//! - [`metadata`]: kube-apiserver's rules for labels, annotations and ConfigMap/Secret data;
//! - [`handlers`]: routing and create/get/list/update/patch/delete;
//! - [`delete`]: finalizers, propagation policies, ownerReference cascade;
//! - [`watch`]: watch streams (replay, bookmarks, 410, timeouts);
//! - [`patch`], [`selector`], [`table`], [`error`]: formats and conventions;
//! - [`protobuf`]: the protobuf request bodies of `kubectl create configmap|secret|namespace`;
//! - [`discovery`]: `/version`, `/api`, `/apis`, OpenAPI;
//! - [`auth`], [`tls`], [`server`]: bearer token, kubeconfig, certificates, serving and shutdown;
//! - [`private`]: owner-only modes for the store's files (it holds Secrets).

pub mod auth;
pub mod delete;
pub mod discovery;
pub mod error;
pub mod field_validation;
pub mod handlers;
pub mod metadata;
pub mod objects;
pub mod patch;
pub mod private;
pub mod protobuf;
pub mod registry;
pub mod selector;
pub mod server;
pub mod store;
pub mod table;
pub mod tls;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::ApiError;
pub use server::{ServeConfig, ServeError, Server};

/// Tunables of request handling (the serving side is [`ServeConfig`]).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Longest a watch stays open when the client asks for no (or a longer) `timeoutSeconds`.
    pub max_watch: Duration,
    /// How often a watch that allows bookmarks gets one.
    pub bookmark_interval: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 3 * 1024 * 1024,
            max_watch: Duration::from_secs(1800),
            bookmark_interval: Duration::from_secs(60),
        }
    }
}

/// Everything a request handler needs.
pub struct ApiState {
    pub store: Arc<store::ObjectStore>,
    pub registry: registry::ResourceRegistry,
    pub config: ApiConfig,
    /// Bumped to close every open watch (clients re-watch from their last resourceVersion).
    pub watch_epoch: tokio::sync::watch::Sender<u64>,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Watch streams and connections, awaited on shutdown so the store is released.
    pub tasks: TaskTracker,
    /// The address clients reach us at (`host:port`), for `/api`'s serverAddressByClientCIDRs.
    pub address: String,
    /// What `/readyz` checks: the API store can write, and whatever [`ServeConfig::readiness`] adds.
    pub readiness: crate::health::HealthState,
}
