//! The OpenAI Chat Completions API: `POST {base}/v1/chat/completions` with `Authorization: Bearer`; and
//! the Embeddings API (`POST {base}/v1/embeddings`) for `embedder`.

use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};

use flowmason_actors::ComponentError;

use super::http;
use super::{ChatRequest, Completion, Provider, ProviderKind};

/// The request body; the system prompt is the first message.
pub fn body(model: &str, request: &ChatRequest) -> Value {
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if let Some(system) = &request.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.extend(
        request
            .messages
            .iter()
            .map(|m| json!({"role": m.role.as_str(), "content": m.content})),
    );
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(messages));
    body.insert("max_tokens".into(), json!(request.max_tokens));
    body.insert("temperature".into(), json!(request.temperature));
    if !request.stop_sequences.is_empty() {
        body.insert("stop".into(), json!(request.stop_sequences));
    }
    body.insert("stream".into(), json!(false));
    Value::Object(body)
}

/// Reads an answer: the first choice's message and finish reason, and the usage.
pub fn parse(model: &str, answer: &Value) -> Result<Completion, ComponentError> {
    let choice = answer
        .pointer("/choices/0")
        .ok_or_else(|| malformed("no `choices`"))?;
    let content = match choice.pointer("/message/content") {
        Some(Value::String(s)) => s.clone(),
        // A refusal or a tool call has no text.
        Some(Value::Null) | None => String::new(),
        Some(_) => return Err(malformed("`message.content` is not a string")),
    };
    let finish_reason = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or("stop")
        .to_string();
    Ok(Completion::from_answer(
        answer,
        model,
        ProviderKind::OpenAi,
        content,
        finish_reason,
        ["prompt_tokens", "completion_tokens"],
    ))
}

fn malformed(what: &str) -> ComponentError {
    ComponentError::internal(format!("openai: unexpected answer: {what}"))
}

pub async fn complete(
    provider: &Provider,
    request: &ChatRequest,
) -> Result<Completion, ComponentError> {
    let mut headers = HeaderMap::new();
    if let Some(key) = &provider.api_key {
        let (name, value) = http::secret_header("authorization", &format!("Bearer {key}"))?;
        headers.insert(name, value);
    }
    let url = provider.url("/v1/chat/completions");
    let answer = http::post_json("openai", &url, headers, &body(&provider.model, request)).await?;
    parse(&provider.model, &answer)
}

/// One text's embedding as the Embeddings API answered it.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    pub vector: Vec<f64>,
    pub model: String,
    pub input_tokens: u64,
}

/// The Embeddings API request body; `dimensions` only when asked for (the text-embedding-3 models
/// shorten their vectors to it).
pub fn embedding_body(model: &str, text: &str, dimensions: Option<u64>) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("input".into(), json!(text));
    body.insert("encoding_format".into(), json!("float"));
    if let Some(d) = dimensions {
        body.insert("dimensions".into(), json!(d));
    }
    Value::Object(body)
}

/// Reads an Embeddings API answer: `data[0].embedding`, the model and `usage.prompt_tokens`.
pub fn parse_embedding(model: &str, answer: &Value) -> Result<Embedding, ComponentError> {
    let vector = answer
        .pointer("/data/0/embedding")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("no `data[0].embedding` array"))?
        .iter()
        .map(|v| {
            v.as_f64()
                .ok_or_else(|| malformed("an embedding value is not a number"))
        })
        .collect::<Result<Vec<f64>, _>>()?;
    Ok(Embedding {
        vector,
        model: answer
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(model)
            .to_string(),
        input_tokens: answer
            .pointer("/usage/prompt_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    })
}

/// Embeds one text with `provider` (an OpenAI-compatible server).
pub async fn embed(
    provider: &Provider,
    text: &str,
    dimensions: Option<u64>,
) -> Result<Embedding, ComponentError> {
    let mut headers = HeaderMap::new();
    if let Some(key) = &provider.api_key {
        let (name, value) = http::secret_header("authorization", &format!("Bearer {key}"))?;
        headers.insert(name, value);
    }
    let url = provider.url("/v1/embeddings");
    let body = embedding_body(&provider.model, text, dimensions);
    let answer = http::post_json("openai", &url, headers, &body).await?;
    parse_embedding(&provider.model, &answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::Message;

    #[test]
    fn body_has_the_chat_completions_shape() {
        let request = ChatRequest {
            system: Some("sys".into()),
            messages: vec![Message::user("hi")],
            max_tokens: 5,
            temperature: 0.0,
            stop_sequences: Vec::new(),
        };
        assert_eq!(
            body("gpt-x", &request),
            json!({"model": "gpt-x", "max_tokens": 5, "temperature": 0.0, "stream": false,
                   "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]})
        );
    }

    #[test]
    fn answers_are_parsed() {
        let answer = json!({"id": "c1", "model": "gpt-y", "choices": [{"index": 0,
            "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}});
        let c = parse("gpt-x", &answer).unwrap();
        assert_eq!(
            (
                c.content.as_str(),
                c.model.as_str(),
                c.finish_reason.as_str()
            ),
            ("Hi", "gpt-y", "length")
        );
        assert_eq!(c.usage.total_tokens(), 6);
        assert_eq!(
            parse("m", &json!({"choices": []})).unwrap_err().message,
            "openai: unexpected answer: no `choices`"
        );
    }
}
