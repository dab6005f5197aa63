//! A Pipeline's `inputSchema`: a JSON Schema (Draft 7, no remote references) of its run inputs. The
//! schema itself is checked when the pipeline is validated, and a run's inputs are checked before the
//! run starts, so that a run with wrong inputs fails at once naming each input, instead of in whichever
//! stage first reads it. Missing inputs whose schema property has a `default` get it when the run
//! starts, as JSON Schema users expect and FlowMason's templates assume.

use serde_json::{Map, Value};

/// The problem with the schema itself, if any.
pub fn schema_problem(schema: &Map<String, Value>) -> Option<String> {
    flowmason_actors::schema::compile(&Value::Object(schema.clone())).err()
}

/// Every way `inputs` break `schema`, one message each, naming the input (`inputs.orders[0].total`).
/// A schema that does not compile is reported as one problem.
pub fn check(schema: &Map<String, Value>, inputs: &Value) -> Vec<String> {
    flowmason_actors::schema::problems(&Value::Object(schema.clone()), inputs, "inputs")
        .unwrap_or_else(|problem| vec![format!("inputSchema: {problem}")])
}

/// Sets each top-level input that is missing (or `null`) to its property's `default` in `schema`.
/// Inputs that are not an object are left as they are (the schema check reports them).
pub fn apply_defaults(schema: &Map<String, Value>, inputs: &mut Value) {
    let (Some(properties), Value::Object(inputs)) =
        (schema.get("properties").and_then(Value::as_object), inputs)
    else {
        return;
    };
    for (name, property) in properties {
        let Some(default) = property.get("default") else {
            continue;
        };
        if inputs.get(name).is_none_or(Value::is_null) {
            inputs.insert(name.clone(), default.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Map<String, Value> {
        json!({
            "type": "object",
            "required": ["name", "orders"],
            "properties": {
                "name": {"type": "string"},
                "orders": {"type": "array", "items": {
                    "type": "object", "properties": {"total": {"type": "number"}}
                }}
            }
        })
        .as_object()
        .expect("object")
        .clone()
    }

    #[test]
    fn inputs_that_fit_pass() {
        let inputs = json!({"name": "Ada", "orders": [{"total": 3}]});
        assert!(check(&schema(), &inputs).is_empty());
    }

    #[test]
    fn each_problem_names_the_input() {
        let problems = check(
            &schema(),
            &json!({"name": 7, "orders": [{"total": "many"}]}),
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("inputs.name: 7 is not of type")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("inputs.orders[0].total: \"many\" is not of type")),
            "{problems:?}"
        );
        let missing = check(&schema(), &json!({"orders": []}));
        assert_eq!(missing.len(), 1);
        assert!(
            missing[0].contains("\"name\" is a required property"),
            "{missing:?}"
        );
    }

    #[test]
    fn missing_inputs_get_their_defaults() {
        let schema = json!({"type": "object", "properties": {
            "tone": {"type": "string", "default": "warm"},
            "n": {"type": "integer", "default": 3},
            "name": {"type": "string"}}})
        .as_object()
        .expect("object")
        .clone();
        let mut inputs = json!({"n": 5, "tone": null});
        apply_defaults(&schema, &mut inputs);
        assert_eq!(inputs, json!({"n": 5, "tone": "warm"}));
    }

    #[test]
    fn a_broken_schema_is_reported_not_applied() {
        let broken = json!({"type": "no-such-type"})
            .as_object()
            .expect("object")
            .clone();
        assert!(schema_problem(&broken).is_some());
        assert_eq!(check(&broken, &json!({})).len(), 1);
        assert!(schema_problem(&schema()).is_none());
    }
}
