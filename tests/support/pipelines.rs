//! Pipeline manifests more than one test binary builds (`#[path = "support/pipelines.rs"] mod pipelines;`).

use serde_json::{Value, json};

/// A Pipeline `name` of `n` `noop` stages in a chain, each reading the previous one's output by template;
/// `first` is the first stage's config (none when `null`).
pub fn chain_pipeline(name: &str, n: usize, first: Value) -> Value {
    let stages: Vec<Value> = (0..n)
        .map(|i| match i {
            0 if first.is_null() => json!({"id": "s0", "componentType": "noop"}),
            0 => json!({"id": "s0", "componentType": "noop", "config": first}),
            _ => json!({
                "id": format!("s{i}"),
                "componentType": "noop",
                "dependsOn": [format!("s{}", i - 1)],
                "config": {"value": format!("{{{{upstream.s{}.value}}}}", i - 1)},
            }),
        })
        .collect();
    json!({
        "apiVersion": "flowmason.io/v1",
        "kind": "Pipeline",
        "metadata": {"name": name},
        "spec": {"stages": stages},
    })
}
