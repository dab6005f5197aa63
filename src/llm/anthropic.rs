//! The Anthropic Messages API: `POST {base}/v1/messages` with `x-api-key` and `anthropic-version`.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use flowmason_actors::ComponentError;

use super::http;
use super::{ChatRequest, Completion, Provider, ProviderKind};

/// The API version we speak.
pub const API_VERSION: &str = "2023-06-01";

/// The request body.
pub fn body(model: &str, request: &ChatRequest) -> Value {
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
        .collect();
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("max_tokens".into(), json!(request.max_tokens));
    body.insert("messages".into(), Value::Array(messages));
    if let Some(system) = &request.system {
        body.insert("system".into(), json!(system));
    }
    body.insert("temperature".into(), json!(request.temperature));
    if !request.stop_sequences.is_empty() {
        body.insert("stop_sequences".into(), json!(request.stop_sequences));
    }
    body.insert("stream".into(), json!(false));
    Value::Object(body)
}

/// Reads an answer: the text blocks joined, the stop reason (`end_turn`/`stop_sequence` as `stop`,
/// `max_tokens` as `length`) and the usage.
pub fn parse(model: &str, answer: &Value) -> Result<Completion, ComponentError> {
    let blocks = answer
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("no `content` array"))?;
    let content: String = blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    let finish_reason = match answer.get("stop_reason").and_then(Value::as_str) {
        None | Some("end_turn") | Some("stop_sequence") => "stop".to_string(),
        Some("max_tokens") => "length".to_string(),
        Some(other) => other.to_string(),
    };
    Ok(Completion::from_answer(
        answer,
        model,
        ProviderKind::Anthropic,
        content,
        finish_reason,
        ["input_tokens", "output_tokens"],
    ))
}

fn malformed(what: &str) -> ComponentError {
    ComponentError::internal(format!("anthropic: unexpected answer: {what}"))
}

pub async fn complete(
    provider: &Provider,
    request: &ChatRequest,
) -> Result<Completion, ComponentError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static("anthropic-version"),
        HeaderValue::from_static(API_VERSION),
    );
    if let Some(key) = &provider.api_key {
        let (name, value) = http::secret_header("x-api-key", key)?;
        headers.insert(name, value);
    }
    let url = provider.url("/v1/messages");
    let answer =
        http::post_json("anthropic", &url, headers, &body(&provider.model, request)).await?;
    parse(&provider.model, &answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{Message, Role};

    #[test]
    fn body_has_the_messages_api_shape() {
        let request = ChatRequest {
            system: Some("be brief".into()),
            messages: vec![
                Message::user("hi"),
                Message {
                    role: Role::Assistant,
                    content: "hello".into(),
                },
            ],
            max_tokens: 100,
            temperature: 0.5,
            stop_sequences: vec!["END".into()],
        };
        assert_eq!(
            body("claude-x", &request),
            json!({"model": "claude-x", "max_tokens": 100, "system": "be brief", "temperature": 0.5,
                   "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                   "stop_sequences": ["END"], "stream": false})
        );
    }

    #[test]
    fn answers_are_parsed() {
        let answer = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-y",
            "content": [{"type": "text", "text": "Hel"}, {"type": "tool_use"}, {"type": "text", "text": "lo"}],
            "stop_reason": "max_tokens", "usage": {"input_tokens": 7, "output_tokens": 3}});
        let c = parse("claude-x", &answer).unwrap();
        assert_eq!(c.content, "Hello");
        assert_eq!(c.model, "claude-y");
        assert_eq!(c.finish_reason, "length");
        assert_eq!((c.usage.input_tokens, c.usage.output_tokens), (7, 3));
        let e = parse("m", &json!({"nope": 1})).unwrap_err();
        assert_eq!(
            e.message,
            "anthropic: unexpected answer: no `content` array"
        );
    }
}
