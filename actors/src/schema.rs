//! JSON Schema checks (Draft 7, no remote references) of what a run takes and gives: a Pipeline's
//! `inputSchema` (checked before a run starts) and `outputSchema` (checked before a run is recorded
//! as succeeded). Each problem names its place, e.g. `inputs.orders[0].total: "x" is not of type
//! "number"`.

use serde_json::Value;

/// The validator of `schema`, or why it is not a valid JSON Schema.
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::draft7::new(schema).map_err(|e| format!("not a valid JSON Schema: {e}"))
}

/// Every way `value` breaks `schema`, one message each, its place written from `root`
/// (`root.field[index]`); an error when the schema itself is not valid.
pub fn problems(schema: &Value, value: &Value, root: &str) -> Result<Vec<String>, String> {
    let validator = compile(schema)?;
    Ok(validator
        .iter_errors(value)
        .map(|error| {
            let mut path = root.to_string();
            for segment in error.instance_path().iter() {
                match segment {
                    jsonschema::paths::LocationSegment::Property(p) => {
                        path.push('.');
                        path.push_str(&p);
                    }
                    jsonschema::paths::LocationSegment::Index(i) => {
                        path.push_str(&format!("[{i}]"));
                    }
                }
            }
            format!("{path}: {error}")
        })
        .collect())
}
