//! Cost estimates: USD per million input and output tokens, FlowMason's price tables. A model missing
//! from the table is priced at its provider's default, as FlowMason does; the result is an estimate.

use super::ProviderKind;

/// `(model, input USD per 1M tokens, output USD per 1M tokens)`.
const ANTHROPIC: &[(&str, f64, f64)] = &[
    ("claude-3-opus-20240229", 15.0, 75.0),
    ("claude-3-sonnet-20240229", 3.0, 15.0),
    ("claude-3-haiku-20240307", 0.25, 1.25),
    ("claude-3-5-sonnet-20241022", 3.0, 15.0),
    ("claude-sonnet-4-20250514", 3.0, 15.0),
    ("claude-opus-4-5-20251101", 15.0, 75.0),
];
const ANTHROPIC_DEFAULT: (f64, f64) = (3.0, 15.0);

const OPENAI: &[(&str, f64, f64)] = &[
    ("gpt-4o", 2.5, 10.0),
    ("gpt-4o-mini", 0.15, 0.6),
    ("gpt-4-turbo", 10.0, 30.0),
    ("gpt-4", 30.0, 60.0),
    ("gpt-3.5-turbo", 0.5, 1.5),
    ("o1-preview", 15.0, 60.0),
    ("o1-mini", 3.0, 12.0),
    ("text-embedding-3-small", 0.02, 0.0),
    ("text-embedding-3-large", 0.13, 0.0),
    ("text-embedding-ada-002", 0.1, 0.0),
];
const OPENAI_DEFAULT: (f64, f64) = (2.5, 10.0);

/// `(input, output)` USD per million tokens of a model.
pub fn price(provider: ProviderKind, model: &str) -> (f64, f64) {
    let (table, default) = match provider {
        ProviderKind::Anthropic => (ANTHROPIC, ANTHROPIC_DEFAULT),
        ProviderKind::OpenAi => (OPENAI, OPENAI_DEFAULT),
    };
    table
        .iter()
        .find(|(name, _, _)| *name == model)
        .map(|&(_, input, output)| (input, output))
        .unwrap_or(default)
}

/// Estimated cost of a call in USD, rounded to a millionth of a dollar.
pub fn cost_usd(provider: ProviderKind, model: &str, input_tokens: u64, output_tokens: u64) -> f64 {
    let (input, output) = price(provider, model);
    let cost = (input_tokens as f64 * input + output_tokens as f64 * output) / 1_000_000.0;
    (cost * 1_000_000.0).round() / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown_models() {
        assert_eq!(price(ProviderKind::OpenAi, "gpt-4o-mini"), (0.15, 0.6));
        assert_eq!(price(ProviderKind::Anthropic, "claude-next"), (3.0, 15.0));
        assert_eq!(
            cost_usd(
                ProviderKind::Anthropic,
                "claude-3-haiku-20240307",
                1000,
                2000
            ),
            0.00275
        );
    }
}
