//! Validation-time nesting checks of the expressions a stage's config holds: a filter condition of
//! 100,000 nested `not` must be refused when the pipeline is validated (by `fm validate`, `fm run` and
//! the API server), naming the field, not discovered when a run starts. Each expression language's
//! scan is the one its component applies again at run time (see `flowmason_actors::limits`).
//! Templated values are known only at run time and checked then.

use serde_json::{Map, Value};

use super::{expr, is_templated, json_transform};
use flowmason_actors::limits::MAX_NESTING;

/// Which language a config field holds.
#[derive(Clone, Copy)]
enum Language {
    Python,
    Jq,
    Jmespath,
}

/// The expression fields of each component type.
const FIELDS: &[(&str, &str, Language)] = &[
    ("filter", "condition", Language::Python),
    ("filter", "jq_condition", Language::Jq),
    ("conditional", "condition_expression", Language::Python),
    ("router", "value_expression", Language::Python),
    ("foreach", "filter_expression", Language::Python),
    ("json_transform", "jq", Language::Jq),
    ("json_transform", "jmespath_expression", Language::Jmespath),
];

/// The expression fields of `config` (a stage of type `component`) that nest too deeply, with why:
/// `(field, message)`, the field relative to the config (`condition`).
pub fn problems(component: &str, config: &Map<String, Value>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for &(_, field, language) in FIELDS.iter().filter(|(c, _, _)| *c == component) {
        let Some(value) = config.get(field).filter(|v| !is_templated(v)) else {
            continue;
        };
        let Value::String(text) = value else {
            continue;
        };
        let problem = match language {
            Language::Python => expr::exceeds_nesting(text, MAX_NESTING).then(|| {
                format!("the expression nests deeper than the limit of {MAX_NESTING} (brackets, unary operators, operator and attribute chains count)")
            }),
            Language::Jq => json_transform::check_jq_nesting(text)
                .err()
                .map(|e| e.message),
            Language::Jmespath => json_transform::check_jmespath_nesting(text)
                .err()
                .map(|e| e.message),
        };
        if let Some(message) = problem {
            out.push((field.to_string(), message));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn deep_expressions_are_named_by_field() {
        let deep_not = "not ".repeat(100_000) + "data";
        let got = problems("filter", &config(json!({"condition": deep_not})));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "condition");
        assert!(got[0].1.contains("limit of 256"), "{}", got[0].1);
        let jmes = "a".to_string() + &".a".repeat(10_000);
        let jq = "[".repeat(50_000) + &"]".repeat(50_000);
        let got = problems(
            "json_transform",
            &config(json!({"jq": jq, "jmespath_expression": jmes})),
        );
        let fields: Vec<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["jq", "jmespath_expression"]);
    }

    #[test]
    fn ordinary_and_templated_expressions_pass() {
        assert!(
            problems(
                "filter",
                &config(json!({"condition": "data > 1 and not data == 3"}))
            )
            .is_empty()
        );
        let templated = json!({"condition": format!("{{{{input.c}}}}{}", "(".repeat(1000))});
        assert!(problems("filter", &config(templated)).is_empty());
        assert!(problems("logger", &config(json!({"condition": "(".repeat(1000)}))).is_empty());
    }

    mod properties {
        use proptest::prelude::*;
        use serde_json::json;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn the_scanners_never_panic_and_name_only_expression_fields(
                component in proptest::sample::select(
                    &["filter", "conditional", "router", "foreach", "json_transform", "noop"][..],
                ),
                text in any::<String>(),
            ) {
                let config = json!({
                    "condition": text, "jq_condition": text, "condition_expression": text,
                    "value_expression": text, "filter_expression": text, "jq": text,
                    "jmespath_expression": text, "other": text,
                });
                let Value::Object(config) = config else { unreachable!("an object literal") };
                for (field, message) in problems(component, &config) {
                    prop_assert!(field != "other" && config.contains_key(&field), "{}", field);
                    prop_assert!(message.contains(&MAX_NESTING.to_string()), "{}", message);
                }
            }

            #[test]
            fn deep_brackets_are_named_in_every_language(
                depth in (MAX_NESTING + 1)..(2 * MAX_NESTING),
            ) {
                let deep = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
                for (component, field) in [
                    ("filter", "condition"),
                    ("filter", "jq_condition"),
                    ("json_transform", "jq"),
                ] {
                    let Value::Object(config) = json!({ field: deep }) else {
                        unreachable!("an object literal")
                    };
                    let found: Vec<String> =
                        problems(component, &config).into_iter().map(|(f, _)| f).collect();
                    prop_assert_eq!(found, vec![field.to_string()]);
                }
            }
        }
    }
}
