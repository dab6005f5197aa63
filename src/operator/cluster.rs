//! The ConfigMaps and Secrets that Pipelines and runs read, cached by reflectors (so that a resumed run's
//! environment can be resolved synchronously and changes are seen as they happen), with a direct read
//! as fallback for an object the cache has not seen yet (just created).

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::reflector::{self, ObjectRef as KubeRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use super::error::{Error, Result};
use super::planning::{ClusterObjects, ObjectRef, RefKind};

/// Cached ConfigMaps and Secrets of all namespaces.
#[derive(Clone)]
pub struct ClusterCache {
    client: Client,
    configmaps: Store<ConfigMap>,
    secrets: Store<Secret>,
}

fn configmap_data(cm: &ConfigMap) -> BTreeMap<String, String> {
    let mut data = cm.data.clone().unwrap_or_default();
    for (k, v) in cm.binary_data.iter().flatten() {
        data.insert(k.clone(), String::from_utf8_lossy(&v.0).into_owned());
    }
    data
}

fn secret_data(secret: &Secret) -> BTreeMap<String, String> {
    let mut data: BTreeMap<String, String> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    // `stringData` is write-only on a real API server; an embedded one may keep it.
    for (k, v) in secret.string_data.iter().flatten() {
        data.entry(k.clone()).or_insert_with(|| v.clone());
    }
    data
}

impl ClusterCache {
    /// Starts the reflectors on the current tokio runtime (they retry with backoff while the API server
    /// is unreachable) until `stop` is cancelled.
    pub fn start(client: Client, stop: CancellationToken) -> ClusterCache {
        let (configmaps, cm_writer) = reflector::store();
        let (secrets, secret_writer) = reflector::store();
        let cm_api: Api<ConfigMap> = Api::all(client.clone());
        let secret_api: Api<Secret> = Api::all(client.clone());
        let configmap_stream =
            reflector::reflector(cm_writer, watcher(cm_api, watcher::Config::default()))
                .default_backoff()
                .for_each(|_| futures::future::ready(()));
        let secret_stream = reflector::reflector(
            secret_writer,
            watcher(secret_api, watcher::Config::default()),
        )
        .default_backoff()
        .for_each(|_| futures::future::ready(()));
        tokio::spawn(async move {
            tokio::select! {
                _ = futures::future::join(configmap_stream, secret_stream) => {}
                _ = stop.cancelled() => {}
            }
        });
        ClusterCache {
            client,
            configmaps,
            secrets,
        }
    }

    fn cached_one(&self, r: &ObjectRef) -> Option<BTreeMap<String, String>> {
        let key = |name: &str, ns: &str| (name.to_string(), ns.to_string());
        let (name, ns) = key(&r.name, &r.namespace);
        match r.kind {
            RefKind::ConfigMap => self
                .configmaps
                .get(&KubeRef::new(&name).within(&ns))
                .map(|cm| configmap_data(&cm)),
            RefKind::Secret => self
                .secrets
                .get(&KubeRef::new(&name).within(&ns))
                .map(|s| secret_data(&s)),
        }
    }

    /// The cached objects among `refs` (those the cache has not seen are absent).
    pub fn cached(&self, refs: &BTreeSet<ObjectRef>) -> ClusterObjects {
        ClusterObjects {
            objects: refs
                .iter()
                .filter_map(|r| Some((r.clone(), self.cached_one(r)?)))
                .collect(),
        }
    }

    /// The objects among `refs` that exist: from the cache, else read from the API server.
    pub async fn fetch(&self, refs: &BTreeSet<ObjectRef>) -> Result<ClusterObjects> {
        let mut out = ClusterObjects::default();
        for r in refs {
            if let Some(data) = self.cached_one(r) {
                out.objects.insert(r.clone(), data);
                continue;
            }
            let found = match r.kind {
                RefKind::ConfigMap => {
                    Api::<ConfigMap>::namespaced(self.client.clone(), &r.namespace)
                        .get_opt(&r.name)
                        .await
                        .map(|o| o.map(|cm| configmap_data(&cm)))
                }
                RefKind::Secret => Api::<Secret>::namespaced(self.client.clone(), &r.namespace)
                    .get_opt(&r.name)
                    .await
                    .map(|o| o.map(|s| secret_data(&s))),
            }
            .map_err(|e| Error::kube(format!("read {r}"), e))?;
            if let Some(data) = found {
                out.objects.insert(r.clone(), data);
            }
        }
        Ok(out)
    }
}

/// The Kubernetes source of `env` `valueFrom` and provider keys: the cache, else a direct read.
impl crate::env::SecretSource for ClusterCache {
    fn secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        key: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<String>, crate::env::SecretError>> {
        Box::pin(self.lookup(RefKind::Secret, namespace, name, key))
    }

    fn config_map<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        key: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<String>, crate::env::SecretError>> {
        Box::pin(self.lookup(RefKind::ConfigMap, namespace, name, key))
    }
}

impl ClusterCache {
    async fn lookup(
        &self,
        kind: RefKind,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<Option<String>, crate::env::SecretError> {
        let r = ObjectRef {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        };
        let objects = self
            .fetch(&BTreeSet::from([r.clone()]))
            .await
            .map_err(|e| crate::env::SecretError {
                source_name: "kubernetes".into(),
                message: e.to_string(),
            })?;
        Ok(objects.objects.get(&r).and_then(|d| d.get(key).cloned()))
    }
}
