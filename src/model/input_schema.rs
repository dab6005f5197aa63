//! A Pipeline's `inputSchema`: a JSON Schema (Draft 7, no remote references) of its run inputs. The
//! schema itself is checked when the pipeline is validated, and a run's inputs are checked before the
//! run starts, so that a run with wrong inputs fails at once naming each input, instead of in whichever
//! stage first reads it.

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
