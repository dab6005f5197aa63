//! The CRD YAML under `deploy/crds/` (and its copy in the Helm chart) is generated from the Rust types
//! (`flowmason::model::crd`) and
//! checked in, and so is the one-file install bundle `deploy/operator.yaml` (the namespace, the CRDs and
//! the operator's manifests, for `kubectl apply -f .../operator.yaml`). These tests fail when the files
//! drift from their sources, check that every schema is structural, as a real API server requires, and
//! that the deploy files have what a cluster needs (probes, a headless governing Service, ...).
//!
//! Regenerate with: `FM_UPDATE_CRDS=1 cargo test --test crds`

use std::path::PathBuf;

use flowmason::model::crd_yaml::{
    pipeline_crd, pipeline_crd_yaml, pipelinerun_crd, pipelinerun_crd_yaml,
};
use serde_json::Value;

fn deploy_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

/// Compares a checked-in file under `deploy/` with the generated text, or rewrites it when
/// `FM_UPDATE_CRDS` is set.
fn check_or_update(file: &str, generated: &str) {
    let path = deploy_path(file);
    if std::env::var_os("FM_UPDATE_CRDS").is_some() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        }
        std::fs::write(&path, generated)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current != generated {
        let line = current
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || current.lines().count().min(generated.lines().count()) + 1,
                |i| i + 1,
            );
        panic!(
            "{} is out of date with its sources (first difference at line {line}).\n\
             Regenerate it with: FM_UPDATE_CRDS=1 cargo test --test crds",
            path.display()
        );
    }
}

#[test]
fn pipeline_crd_yaml_is_up_to_date() {
    check_or_update("crds/pipeline.yaml", &pipeline_crd_yaml());
    check_or_update(
        "helm/flowmason-operator/crds/pipeline.yaml",
        &pipeline_crd_yaml(),
    );
}

#[test]
fn pipelinerun_crd_yaml_is_up_to_date() {
    check_or_update("crds/pipelinerun.yaml", &pipelinerun_crd_yaml());
    check_or_update(
        "helm/flowmason-operator/crds/pipelinerun.yaml",
        &pipelinerun_crd_yaml(),
    );
}

/// Collects schema locations that break the structural-schema rules we can check locally: a
/// non-empty `type` on every node unless it is int-or-string or preserves unknown fields, and no
/// `anyOf`/`oneOf`/`allOf`/`$ref` (which our types must never produce).
fn structural_problems(schema: &Value, at: &str, out: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else {
        out.push(format!("{at}: schema is not an object"));
        return;
    };
    let typed = obj
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty());
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if !typed && !int_or_string && !preserve {
        out.push(format!(
            "{at}: no type (and neither int-or-string nor preserve-unknown-fields)"
        ));
    }
    for key in ["anyOf", "oneOf", "allOf", "$ref", "not"] {
        if obj.contains_key(key) {
            out.push(format!("{at}: uses {key}"));
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            structural_problems(prop, &format!("{at}.{name}"), out);
        }
    }
    if let Some(items) = obj.get("items") {
        structural_problems(items, &format!("{at}[]"), out);
    }
    if let Some(additional) = obj.get("additionalProperties")
        && additional.is_object()
    {
        structural_problems(additional, &format!("{at}{{}}"), out);
    }
}

#[test]
fn schemas_are_structural() {
    for crd in [pipeline_crd(), pipelinerun_crd()] {
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let versions = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        assert!(!versions.is_empty(), "{name}: no versions");
        let mut problems = Vec::new();
        for version in &versions {
            let schema = version
                .pointer("/schema/openAPIV3Schema")
                .unwrap_or(&Value::Null);
            structural_problems(schema, &name, &mut problems);
            assert!(
                version.pointer("/subresources/status").is_some(),
                "{name}: no status subresource"
            );
        }
        assert!(
            problems.is_empty(),
            "non-structural schema nodes:\n{}",
            problems.join("\n")
        );
    }
}

#[test]
fn printer_columns_are_declared() {
    let columns = |crd: &Value| -> Vec<String> {
        crd.pointer("/spec/versions/0/additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .filter_map(|c| c["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let pipeline = columns(&pipeline_crd());
    assert!(
        pipeline.contains(&"Phase".to_string()) && pipeline.contains(&"Age".to_string()),
        "{pipeline:?}"
    );
    let run = columns(&pipelinerun_crd());
    for c in ["Pipeline", "Phase", "Reason", "Stages", "Duration"] {
        assert!(run.contains(&c.to_string()), "{run:?}");
    }
}

/// A one-file install bundle under `deploy/`: its sources, in the order `kubectl apply` must create
/// them, under a header saying what it installs and where it comes from. The ServiceMonitor stays out:
/// it needs the Prometheus Operator's CRDs, which a cluster may not have.
struct Bundle {
    file: &'static str,
    header: &'static str,
    sources: &'static [&'static str],
}

/// `deploy/operator.yaml`: one operator with its event log (sled) on its PersistentVolume.
const SLED_BUNDLE: Bundle = Bundle {
    file: "operator.yaml",
    header: "# FlowMason operator: namespace, CRDs, RBAC, Services and the StatefulSet in one file, for\n\
             #   kubectl apply -f deploy/operator.yaml\n\
             # Generated from deploy/operator/*.yaml and deploy/crds/*.yaml (ServiceMonitor aside) by\n\
             # tests/crds.rs; do not edit: change the sources and run FM_UPDATE_CRDS=1 cargo test --test crds\n",
    sources: &[
        "operator/namespace.yaml",
        "crds/pipeline.yaml",
        "crds/pipelinerun.yaml",
        "operator/rbac.yaml",
        "operator/service.yaml",
        "operator/statefulset.yaml",
    ],
};

/// `deploy/operator-replicated.yaml`: three sharded replicas with the event log on NATS JetStream.
const REPLICATED_BUNDLE: Bundle = Bundle {
    file: "operator-replicated.yaml",
    header: "# FlowMason operator, replicated (3 replicas sharing the runs, the event log on NATS JetStream):\n\
             # namespace, CRDs, RBAC, Services, the StatefulSet and its PodDisruptionBudget in one file, for\n\
             #   kubectl apply -f deploy/operator-replicated.yaml\n\
             # Generated from deploy/operator/replicated/*.yaml, deploy/operator/{namespace,service}.yaml and\n\
             # deploy/crds/*.yaml by tests/crds.rs; do not edit: change the sources and run\n\
             # FM_UPDATE_CRDS=1 cargo test --test crds\n",
    sources: &[
        "operator/namespace.yaml",
        "crds/pipeline.yaml",
        "crds/pipelinerun.yaml",
        "operator/replicated/rbac.yaml",
        "operator/service.yaml",
        "operator/replicated/statefulset.yaml",
        "operator/replicated/poddisruptionbudget.yaml",
    ],
};

/// The install bundle: every source as a YAML document of its own, under a header naming them.
fn bundle(bundle: &Bundle) -> String {
    let mut text = String::from(bundle.header);
    for source in bundle.sources {
        // The CRDs from the types themselves, so that regenerating everything at once (the tests run in
        // parallel) never reads a CRD file being rewritten.
        let content = match *source {
            "crds/pipeline.yaml" => pipeline_crd_yaml(),
            "crds/pipelinerun.yaml" => pipelinerun_crd_yaml(),
            _ => std::fs::read_to_string(deploy_path(source))
                .unwrap_or_else(|e| panic!("reading deploy/{source}: {e}")),
        };
        text.push_str(&format!("---\n# Source: deploy/{source}\n"));
        text.push_str(content.trim_start_matches("---\n"));
        if !text.ends_with('\n') {
            text.push('\n');
        }
    }
    text
}

#[test]
fn operator_bundle_is_up_to_date() {
    check_or_update(SLED_BUNDLE.file, &bundle(&SLED_BUNDLE));
}

#[test]
fn operator_replicated_bundle_is_up_to_date() {
    check_or_update(REPLICATED_BUNDLE.file, &bundle(&REPLICATED_BUNDLE));
}

/// The documents of a checked-in bundle, parsed.
fn bundle_documents(bundle: &Bundle) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy_path(bundle.file))
        .unwrap_or_else(|e| panic!("deploy/{}: {e}", bundle.file));
    serde_saphyr::from_str_multiple::<Value, Vec<Value>>(&text)
        .unwrap_or_else(|e| panic!("deploy/{} does not parse: {e}", bundle.file))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

#[test]
fn the_bundles_install_everything_the_operator_needs_in_order() {
    for bundle in [&SLED_BUNDLE, &REPLICATED_BUNDLE] {
        let kinds: Vec<String> = bundle_documents(bundle)
            .iter()
            .map(|d| d["kind"].as_str().unwrap_or("?").to_string())
            .collect();
        assert_eq!(
            kinds.first().map(String::as_str),
            Some("Namespace"),
            "{}: {kinds:?}",
            bundle.file
        );
        for kind in [
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Service",
            "StatefulSet",
        ] {
            assert!(
                kinds.iter().any(|k| k == kind),
                "{}: no {kind} in {kinds:?}",
                bundle.file
            );
        }
        assert!(
            !kinds.iter().any(|k| k == "ServiceMonitor"),
            "{}: {kinds:?}",
            bundle.file
        );
    }
}

#[test]
fn the_statefulsets_have_probes_a_headless_service_and_a_cpu_limit_for_their_capacity() {
    for bundle in [&SLED_BUNDLE, &REPLICATED_BUNDLE] {
        let docs = bundle_documents(bundle);
        let set = the_one(&docs, "StatefulSet");
        let container = &set["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        let ports: Vec<&str> = container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for probe in ["livenessProbe", "readinessProbe"] {
            let port = container[probe]["httpGet"]["port"].as_str().unwrap_or("?");
            assert!(
                ports.contains(&port),
                "{}: {probe} port {port} is not one of {ports:?}",
                bundle.file
            );
        }
        let service_name = set["spec"]["serviceName"].as_str().expect("serviceName");
        let governing = docs
            .iter()
            .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == service_name)
            .unwrap_or_else(|| panic!("{}: no Service {service_name}", bundle.file));
        assert_eq!(governing["spec"]["clusterIP"], "None", "{governing}");
        // Every capacity read from a limit reads one that is set.
        for var in container["env"].as_array().into_iter().flatten() {
            if let Some(resource) = var["valueFrom"]["resourceFieldRef"]["resource"].as_str()
                && let Some(limit) = resource.strip_prefix("limits.")
            {
                assert!(
                    !container["resources"]["limits"][limit].is_null(),
                    "{}: {} reads {resource}, which is not set",
                    bundle.file,
                    var["name"]
                );
            }
        }
    }
}

/// The only document of `kind` in `docs`.
fn the_one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let mut of_kind = docs.iter().filter(|d| d["kind"] == kind);
    let one = of_kind.next().unwrap_or_else(|| panic!("no {kind}"));
    assert!(of_kind.next().is_none(), "more than one {kind}");
    one
}

/// The value following `flag` in a container's args, if the flag is there.
fn flag_value<'a>(args: &'a Value, flag: &str) -> Option<&'a str> {
    let args: Vec<&str> = args
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let at = args.iter().position(|a| *a == flag)?;
    args.get(at + 1).copied()
}

/// Whether `selector` (matchLabels) selects the pods labelled `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(wanted) = selector["matchLabels"].as_object() else {
        return false;
    };
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels[k] == *v)
}

#[test]
fn the_replicated_bundle_runs_three_spread_sharded_replicas_on_jetstream_without_a_volume() {
    let docs = bundle_documents(&REPLICATED_BUNDLE);
    let set = the_one(&docs, "StatefulSet");
    let pod = &set["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let args = &container["args"];
    assert_eq!(set["spec"]["replicas"], 3, "{set}");
    assert_eq!(flag_value(args, "--event-log"), Some("jetstream"), "{args}");
    assert_eq!(flag_value(args, "--event-replicas"), Some("3"), "{args}");
    assert_eq!(flag_value(args, "--shards"), Some("16"), "{args}");
    let nats = flag_value(args, "--event-nats").expect("--event-nats");
    assert!(nats.starts_with("nats://"), "--event-nats {nats}");
    assert!(flag_value(args, "--event-stream").is_some(), "{args}");
    // The credentials file is in a mounted Secret.
    let creds = flag_value(args, "--event-nats-creds").expect("--event-nats-creds");
    let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
    let volumes = pod["spec"]["volumes"].as_array().expect("volumes");
    let volume_at = |path: &str| -> &Value {
        let mount = mounts
            .iter()
            .filter(|m| m["mountPath"].as_str().is_some_and(|p| path.starts_with(p)))
            .max_by_key(|m| m["mountPath"].as_str().map_or(0, str::len))
            .unwrap_or_else(|| panic!("nothing mounted at {path}"));
        volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume {}", mount["name"]))
    };
    assert!(volume_at(creds)["secret"]["secretName"].is_string());
    // No PersistentVolume: the data dir and the local index (sled's temporary databases live in
    // /dev/shm) are emptyDirs, the index's bounded.
    assert!(set["spec"]["volumeClaimTemplates"].is_null(), "{set}");
    let data = flag_value(args, "--data-dir").expect("--data-dir");
    assert!(volume_at(data)["emptyDir"].is_object());
    assert!(volume_at("/dev/shm")["emptyDir"]["sizeLimit"].is_string());
    // Each replica's identity and Lease namespace from the downward API.
    for (var, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let env = container["env"].as_array().expect("env");
        let set_from = env.iter().find(|e| e["name"] == var).expect(var);
        assert_eq!(set_from["valueFrom"]["fieldRef"]["fieldPath"], field);
    }
    // Spread over nodes, one at a time down.
    let labels = &pod["metadata"]["labels"];
    let spread = &pod["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0]["podAffinityTerm"];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname", "{pod}");
    assert!(selects(&spread["labelSelector"], labels), "{spread}");
    let budget = the_one(&docs, "PodDisruptionBudget");
    assert_eq!(budget["spec"]["maxUnavailable"], 1, "{budget}");
    assert!(selects(&budget["spec"]["selector"], labels), "{budget}");
    assert_eq!(
        budget["metadata"]["namespace"],
        set["metadata"]["namespace"]
    );
    // The shard and member Leases: read, listed, watched, written and deleted.
    let leases = the_one(&docs, "Role");
    assert_eq!(
        leases["rules"],
        serde_json::json!([{
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
        }])
    );
}

#[test]
fn the_single_replica_bundle_keeps_its_volume_and_has_no_replication() {
    let docs = bundle_documents(&SLED_BUNDLE);
    let set = the_one(&docs, "StatefulSet");
    let pod = &set["spec"]["template"]["spec"];
    assert_eq!(set["spec"]["replicas"], 1, "{set}");
    assert_eq!(
        set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
    let args = &pod["containers"][0]["args"];
    for flag in ["--event-log", "--event-nats", "--shards"] {
        assert_eq!(flag_value(args, flag), None, "{flag} in {args}");
    }
    assert!(pod["affinity"].is_null(), "{pod}");
    assert!(!docs.iter().any(|d| d["kind"] == "PodDisruptionBudget"));
    let leases = the_one(&docs, "Role");
    assert_eq!(
        leases["rules"][0]["verbs"],
        serde_json::json!(["get", "create", "update"])
    );
}

/// The conditions of the `if` blocks (an `else` branch as `not (<condition>)`) that enclose the first
/// line of a Helm template containing `needle`, outermost first: what a line of the chart is rendered
/// under, read from the template's block structure.
fn conditions_around(template: &str, needle: &str) -> Vec<String> {
    let at = template
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} is not in the template"));
    let mut blocks: Vec<Option<String>> = Vec::new();
    let mut rest = &template[..at];
    while let Some(open) = rest.find("{{") {
        let Some(close) = rest[open..].find("}}") else {
            break;
        };
        let action = rest[open + 2..open + close]
            .trim_matches(|c: char| c == '-' || c.is_whitespace())
            .to_string();
        rest = &rest[open + close + 2..];
        let keyword = action.split_whitespace().next().unwrap_or("");
        match keyword {
            "if" => blocks.push(Some(action["if".len()..].trim().to_string())),
            "else" => {
                if let Some(Some(condition)) = blocks.last_mut() {
                    *condition = format!("not ({condition})");
                }
            }
            "with" | "range" | "define" | "block" => blocks.push(None),
            "end" => {
                blocks.pop();
            }
            _ => {}
        }
    }
    blocks.into_iter().flatten().collect()
}

/// The chart renders the replicated mode with `eventLog: jetstream` and only then: the NATS flags, the
/// shards and the Lease verbs of sharded mode under that value, the PodDisruptionBudget and the
/// anti-affinity under more than one replica, and the sled mode's volume under its absence. Helm is not
/// at hand in tests, so this reads the templates' block structure (the rendered output of both modes was
/// checked with `helm template` when the chart changed).
#[test]
fn the_helm_chart_renders_the_replicated_mode_only_with_jetstream() {
    let chart = deploy_path("helm/flowmason-operator");
    let read = |file: &str| {
        std::fs::read_to_string(chart.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
    };
    let values: Value = serde_saphyr::from_str(&read("values.yaml")).expect("values.yaml parses");
    assert_eq!(values["eventLog"], "sled");
    assert!(values["replicas"].is_null(), "replicas defaults by mode");
    assert_eq!(values["nats"]["replicas"], 3);
    assert_eq!(values["shards"], 16);
    for key in ["url", "credsSecret", "credsKey", "stream"] {
        assert!(values["nats"][key].is_string(), "nats.{key}");
    }
    let helpers = read("templates/_helpers.tpl");
    assert!(
        helpers.contains(r#"ternary 3 1 (eq .Values.eventLog "jetstream")"#),
        "replicas default to 3 with jetstream, 1 with sled:\n{helpers}"
    );
    let set = read("templates/statefulset.yaml");
    assert!(set.contains(r#"{{- $jetstream := eq .Values.eventLog "jetstream" }}"#));
    assert!(set.contains(r#"{{- $replicas := int (include "flowmason-operator.replicas" .) }}"#));
    assert!(set.contains("replicas: {{ $replicas }}"));
    let jetstream = ["$jetstream".to_string()];
    for needle in [
        "--event-log",
        "--event-nats\n",
        "--event-stream",
        "--event-replicas",
        "--shards",
        "podManagementPolicy: Parallel",
        "mountPath: /dev/shm",
        "emptyDir: {}",
    ] {
        assert_eq!(conditions_around(&set, needle), jetstream, "{needle}");
    }
    for needle in [
        "--event-nats-creds",
        "secretName: {{ .Values.nats.credsSecret }}",
    ] {
        assert_eq!(
            conditions_around(&set, needle),
            ["$jetstream", ".Values.nats.credsSecret"],
            "{needle}"
        );
    }
    assert_eq!(
        conditions_around(&set, "podAntiAffinity"),
        ["gt $replicas 1"]
    );
    assert_eq!(
        conditions_around(&set, "volumeClaimTemplates"),
        ["not $jetstream"]
    );
    for needle in ["- operator\n", "name: POD_NAME", "name: POD_NAMESPACE"] {
        assert!(conditions_around(&set, needle).is_empty(), "{needle}");
    }
    let budget = read("templates/poddisruptionbudget.yaml");
    assert_eq!(
        conditions_around(&budget, "kind: PodDisruptionBudget"),
        [r#"gt (int (include "flowmason-operator.replicas" .)) 1"#]
    );
    assert!(budget.contains("maxUnavailable: 1"));
    let rbac = read("templates/rbac.yaml");
    let sharded = r#"eq .Values.eventLog "jetstream""#;
    assert_eq!(
        conditions_around(
            &rbac,
            r#"verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]"#
        ),
        [sharded]
    );
    assert_eq!(
        conditions_around(&rbac, r#"verbs: ["get", "create", "update"]"#),
        [format!("not ({sharded})")]
    );
}

/// The chart and the static manifests pass the same flags in the same mode.
#[test]
fn the_helm_chart_passes_the_flags_of_the_static_manifests() {
    let flags = |text: &str| -> Vec<String> {
        text.split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '[')
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(String::from)
            .collect()
    };
    let chart = std::fs::read_to_string(deploy_path(
        "helm/flowmason-operator/templates/statefulset.yaml",
    ))
    .expect("chart statefulset");
    let args = chart
        .split_once("\n          args:\n")
        .and_then(|(_, after)| after.split_once("\n          env:\n"))
        .map(|(args, _)| args)
        .expect("the container's args, then its env");
    let (common, jetstream) = args.split_at(args.find("{{- if $jetstream }}").expect("branch"));
    for (manifest, wanted) in [
        ("operator/statefulset.yaml", flags(common)),
        ("operator/replicated/statefulset.yaml", flags(args)),
    ] {
        let docs = serde_saphyr::from_str_multiple::<Value, Vec<Value>>(
            &std::fs::read_to_string(deploy_path(manifest)).expect("manifest"),
        )
        .expect("manifest parses");
        let set = the_one(&docs, "StatefulSet");
        let given: Vec<String> = set["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|a| a.starts_with("--"))
            .map(String::from)
            .collect();
        assert_eq!(given, wanted, "{manifest}");
    }
    assert!(flags(jetstream).contains(&"--shards".to_string()));
}

#[test]
fn the_helm_chart_names_cluster_objects_per_release_and_has_probes() {
    let chart = deploy_path("helm/flowmason-operator");
    let rbac = std::fs::read_to_string(chart.join("templates/rbac.yaml")).expect("rbac.yaml");
    let helpers = std::fs::read_to_string(chart.join("templates/_helpers.tpl")).expect("helpers");
    let docs: Vec<&str> = rbac.split("\n---\n").collect();
    for kind in ["ClusterRole", "ClusterRoleBinding"] {
        let doc = docs
            .iter()
            .find(|d| d.contains(&format!("\nkind: {kind}\n")))
            .unwrap_or_else(|| panic!("no {kind}"));
        assert!(
            doc.contains("name: {{ include \"flowmason-operator.clusterName\" . }}"),
            "{kind} is not named per release:\n{doc}"
        );
    }
    assert!(
        helpers.contains("{{ .Release.Namespace }}-{{ .Release.Name }}-flowmason-operator"),
        "{helpers}"
    );
    let statefulset =
        std::fs::read_to_string(chart.join("templates/statefulset.yaml")).expect("statefulset");
    for needle in [
        "path: /healthz",
        "path: /readyz",
        "serviceName: flowmason-operator-headless",
    ] {
        assert!(
            statefulset.contains(needle),
            "chart StatefulSet lacks {needle}"
        );
    }
}

#[test]
fn the_docker_build_context_leaves_the_build_output_out() {
    let ignore =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".dockerignore"))
            .expect(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["target/", ".git/"] {
        assert!(
            patterns.contains(&needed),
            "{needed} missing from .dockerignore: {patterns:?}"
        );
    }
}
