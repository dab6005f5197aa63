//! Which resources are served: the built-in kinds the engine uses, our own CRDs (always served), and any
//! CustomResourceDefinition stored through the API (served from the moment it is created). Also the
//! discovery documents derived from them (`/api`, `/apis`, `APIResourceList`s).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde_json::{Value, json};

use super::error::Cause;

/// A printer column of Table output (a CRD's `additionalPrinterColumns`, or ours for built-ins).
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    /// `string`, `integer`, `number`, `boolean` or `date` (shown as an age).
    pub type_: String,
    pub json_path: String,
    pub priority: i64,
    pub description: String,
}

impl Column {
    fn new(name: &str, type_: &str, json_path: &str) -> Self {
        Column {
            name: name.into(),
            type_: type_.into(),
            json_path: json_path.into(),
            priority: 0,
            description: String::new(),
        }
    }
}

/// One served resource of one group version.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Has a `/status` subresource: the main resource ignores status, `/status` ignores the rest.
    pub status_subresource: bool,
    /// Defined by a CRD (custom resource): deletes answer a Status, strategic merge patch is refused.
    pub custom: bool,
    /// Printer columns after `Name` (an `Age` column is added when none is a date).
    pub columns: Vec<Column>,
}

impl ResourceType {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store's key prefix: `group/version/plural`.
    pub fn store_key(&self) -> String {
        format!("{}/{}/{}", self.group, self.version, self.plural)
    }

    fn builtin(
        group: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        short: &[&str],
        columns: Vec<Column>,
    ) -> Self {
        ResourceType {
            group: group.into(),
            version: "v1".into(),
            plural: plural.into(),
            singular: kind.to_ascii_lowercase(),
            kind: kind.into(),
            namespaced,
            short_names: short.iter().map(|s| s.to_string()).collect(),
            categories: Vec::new(),
            status_subresource: false,
            custom: false,
            columns,
        }
    }

    /// The `APIResource` entries of discovery (the resource and its status subresource).
    fn discovery(&self) -> Vec<Value> {
        let verbs = [
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        let mut main = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            main["categories"] = json!(self.categories);
        }
        let mut out = vec![main];
        if self.status_subresource {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        out
    }

    /// The resource types a CRD object defines (one per served version).
    pub fn from_crd(crd: &Value) -> Vec<ResourceType> {
        let spec = &crd["spec"];
        let names = &spec["names"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        for version in spec["versions"].as_array().into_iter().flatten() {
            if version["served"] == Value::Bool(false) {
                continue;
            }
            let columns = version["additionalPrinterColumns"]
                .as_array()
                .map(|cols| {
                    cols.iter()
                        .map(|c| Column {
                            name: c["name"].as_str().unwrap_or_default().to_string(),
                            type_: c["type"].as_str().unwrap_or("string").to_string(),
                            json_path: c["jsonPath"].as_str().unwrap_or_default().to_string(),
                            priority: c["priority"].as_i64().unwrap_or(0),
                            description: c["description"].as_str().unwrap_or_default().to_string(),
                        })
                        .collect()
                })
                .unwrap_or_else(|| vec![Column::new("Age", "date", ".metadata.creationTimestamp")]);
            let plural = names["plural"].as_str().unwrap_or_default().to_string();
            let kind = names["kind"].as_str().unwrap_or_default().to_string();
            out.push(ResourceType {
                group: spec["group"].as_str().unwrap_or_default().to_string(),
                version: version["name"].as_str().unwrap_or_default().to_string(),
                singular: names["singular"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| kind.to_ascii_lowercase()),
                plural,
                kind,
                namespaced: spec["scope"].as_str() != Some("Cluster"),
                short_names: strings(&names["shortNames"]),
                categories: strings(&names["categories"]),
                status_subresource: version["subresources"]["status"].is_object(),
                custom: true,
                columns,
            });
        }
        out
    }
}

/// Problems of a CRD object that would make it unservable, each naming the field.
pub fn validate_crd(crd: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = &crd["spec"];
    let mut need = |path: &str, value: &Value| {
        if value.as_str().is_none_or(str::is_empty) {
            causes.push(Cause {
                field: path.to_string(),
                message: "Required value".to_string(),
            });
        }
    };
    need("spec.group", &spec["group"]);
    need("spec.names.plural", &spec["names"]["plural"]);
    need("spec.names.kind", &spec["names"]["kind"]);
    if spec["versions"].as_array().is_none_or(Vec::is_empty) {
        causes.push(Cause {
            field: "spec.versions".into(),
            message: "Required value: must have at least one version".into(),
        });
    }
    if let (Some(plural), Some(group)) = (spec["names"]["plural"].as_str(), spec["group"].as_str())
    {
        let expected = format!("{plural}.{group}");
        let name = crd["metadata"]["name"].as_str().unwrap_or_default();
        if name != expected {
            causes.push(Cause {
                field: "metadata.name".into(),
                message: format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group ({expected:?})"),
            });
        }
    }
    match spec["scope"].as_str() {
        Some("Namespaced") | Some("Cluster") => {}
        other => causes.push(Cause {
            field: "spec.scope".into(),
            message: format!(
                "Unsupported value: {:?}: supported values: \"Cluster\", \"Namespaced\"",
                other.unwrap_or("")
            ),
        }),
    }
    causes.extend(builtin_kind_causes(crd));
    causes
}

/// The CRDs of the kinds this server serves built in (`pipelines.flowmason.io`,
/// `pipelineruns.flowmason.io`).
fn builtin_crds() -> [Value; 2] {
    [
        crate::model::crd_yaml::pipeline_crd(),
        crate::model::crd_yaml::pipelinerun_crd(),
    ]
}

/// A CRD named like one of our built-in kinds must define what the server serves (group, version,
/// names, scope, status subresource, columns): applying `deploy/crds/` works, but a CRD that would
/// change the kind (one without the status subresource made status writes vanish) is refused, as
/// kube-apiserver refuses to redefine what it serves itself.
fn builtin_kind_causes(crd: &Value) -> Vec<Cause> {
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    let Some(builtin) = builtin_crds()
        .into_iter()
        .find(|b| b["metadata"]["name"].as_str() == Some(name))
    else {
        return Vec::new();
    };
    if ResourceType::from_crd(crd) == ResourceType::from_crd(&builtin) {
        return Vec::new();
    }
    vec![Cause {
        field: "spec".into(),
        message: format!(
            "Invalid value: {name} is a kind this server serves built in; a CRD of that name must \
             define it as `fm crds` prints it (same group, versions, names, scope, status \
             subresource and printer columns)"
        ),
    }]
}

/// The served resources: fixed built-ins plus the CRDs stored so far (keyed by CRD name).
pub struct ResourceRegistry {
    builtins: Vec<Arc<ResourceType>>,
    crds: RwLock<BTreeMap<String, Vec<Arc<ResourceType>>>>,
}

impl Default for ResourceRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl ResourceRegistry {
    pub fn new() -> Self {
        let age = || Column::new("Age", "date", ".metadata.creationTimestamp");
        let mut builtins = vec![
            {
                let mut ns = ResourceType::builtin(
                    "",
                    "namespaces",
                    "Namespace",
                    false,
                    &["ns"],
                    vec![Column::new("Status", "string", ".status.phase"), age()],
                );
                ns.status_subresource = true;
                ns
            },
            ResourceType::builtin(
                "",
                "secrets",
                "Secret",
                true,
                &[],
                vec![Column::new("Type", "string", ".type"), age()],
            ),
            ResourceType::builtin("", "configmaps", "ConfigMap", true, &["cm"], vec![age()]),
            ResourceType::builtin(
                "",
                "events",
                "Event",
                true,
                &["ev"],
                vec![
                    Column::new("Type", "string", ".type"),
                    Column::new("Reason", "string", ".reason"),
                    Column::new("Message", "string", ".message"),
                    age(),
                ],
            ),
            ResourceType::builtin(
                "coordination.k8s.io",
                "leases",
                "Lease",
                true,
                &[],
                vec![
                    Column::new("Holder", "string", ".spec.holderIdentity"),
                    age(),
                ],
            ),
            {
                let mut crd = ResourceType::builtin(
                    "apiextensions.k8s.io",
                    "customresourcedefinitions",
                    "CustomResourceDefinition",
                    false,
                    &["crd", "crds"],
                    vec![Column::new(
                        "Created At",
                        "string",
                        ".metadata.creationTimestamp",
                    )],
                );
                crd.status_subresource = true;
                crd
            },
        ];
        for crd in builtin_crds() {
            builtins.extend(ResourceType::from_crd(&crd));
        }
        ResourceRegistry {
            builtins: builtins.into_iter().map(Arc::new).collect(),
            crds: RwLock::new(BTreeMap::new()),
        }
    }

    /// Every served resource type.
    pub fn all_types(&self) -> Vec<Arc<ResourceType>> {
        let crds = self.crds.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Arc<ResourceType>> = Vec::new();
        for r in crds.values().flatten() {
            out.push(r.clone());
        }
        for b in &self.builtins {
            if !out
                .iter()
                .any(|r| r.group == b.group && r.version == b.version && r.plural == b.plural)
            {
                out.push(b.clone());
            }
        }
        out
    }

    /// The resource served at `/apis/<group>/<version>/<plural>` (core: group "").
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.all_types()
            .into_iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// Starts (or updates) serving what a stored CRD defines.
    /// Our own kinds are always served from their built-in definition, even if a CRD of their name
    /// was stored before such CRDs were checked (see [`validate_crd`]).
    pub fn register_crd(&self, crd: &Value) {
        let name = crd["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if builtin_crds()
            .iter()
            .any(|b| b["metadata"]["name"].as_str() == Some(name.as_str()))
        {
            return;
        }
        let types = ResourceType::from_crd(crd)
            .into_iter()
            .map(Arc::new)
            .collect();
        self.crds
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, types);
    }

    /// Stops serving a deleted CRD's resources (our own kinds stay served as built-ins).
    pub fn unregister_crd(&self, name: &str) {
        self.crds
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// Group versions with at least one resource, core excluded, sorted with our group last.
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in self.all_types() {
            if r.group.is_empty() {
                continue;
            }
            let versions = groups.entry(r.group.clone()).or_default();
            if !versions.contains(&r.version) {
                versions.push(r.version.clone());
            }
        }
        groups
    }

    /// `APIResourceList` of one group version, or `None` when nothing is served there.
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let resources: Vec<Value> = self
            .all_types()
            .iter()
            .filter(|r| r.group == group && r.version == version)
            .flat_map(|r| r.discovery())
            .collect();
        if resources.is_empty() {
            return None;
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": gv,
            "resources": resources,
        }))
    }

    /// `APIGroupList` for `/apis`.
    pub fn group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .into_iter()
            .map(|(name, versions)| {
                let versions: Vec<Value> = versions
                    .iter()
                    .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
                    .collect();
                json!({
                    "name": name,
                    "versions": versions,
                    "preferredVersion": versions[0],
                })
            })
            .collect();
        json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
    }

    /// `APIGroup` for `/apis/<group>`.
    pub fn group(&self, group: &str) -> Option<Value> {
        let list = self.group_list();
        list["groups"]
            .as_array()?
            .iter()
            .find(|g| g["name"] == group)
            .map(|g| {
                let mut g = g.clone();
                g["kind"] = json!("APIGroup");
                g["apiVersion"] = json!("v1");
                g
            })
    }
}
