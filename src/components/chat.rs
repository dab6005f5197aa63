//! `chat`: one turn of a conversation, FlowMason's core node.
//!
//! Input: `message` (required), `history` (a list of `{role, content}`), `system_prompt` (default "You are
//! a helpful assistant engaged in a conversation."), `persona` (added to the system prompt), `max_history`
//! (message pairs kept, 1..=100, default 10), plus `temperature` (0.7), `max_tokens` (2048), `provider`,
//! `model`. The last `max_history` pairs of the history are sent as the conversation's earlier messages
//! (entries with a role other than `user`/`assistant` are not sent). Output `{response, history,
//! turn_count, usage}`: `history` is the trimmed history with this turn appended.

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use flowmason_actors::{Component, ComponentError, ComponentOutput, StageContext};

use super::{input_object, opt_int_in, opt_str, type_name};
use crate::llm::{self, ChatRequest, LlmOptions, Message, Role};

/// The component type name.
pub const NAME: &str = "chat";

const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant engaged in a conversation.";

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Chat;

impl Component for Chat {
    fn validate(&self, config: &Value) -> Result<(), ComponentError> {
        llm::validate_config(NAME, config, &["message", "system_prompt", "persona"])
    }

    fn execute(
        &self,
        input: Value,
        ctx: StageContext,
    ) -> BoxFuture<'static, Result<ComponentOutput, ComponentError>> {
        Box::pin(async move {
            let input = input_object(NAME, input)?;
            let message = llm::required_str(NAME, &input, "message")?;
            let options = LlmOptions::from_input(NAME, &input, 0.7, 2048)?;
            let max_history =
                opt_int_in(NAME, &input, "max_history", 1..=100)?.unwrap_or(10) as usize;
            let history = history(&input)?;
            let kept = &history[history.len().saturating_sub(max_history * 2)..];
            let mut system = opt_str(NAME, &input, "system_prompt")?
                .filter(|s| !s.is_empty())
                .unwrap_or(DEFAULT_SYSTEM_PROMPT)
                .to_string();
            if let Some(persona) = opt_str(NAME, &input, "persona")?.filter(|p| !p.is_empty()) {
                system.push_str(&format!("\n\nPersona: {persona}"));
            }
            let mut messages: Vec<Message> = kept.iter().filter_map(as_message).collect();
            messages.push(Message::user(message));
            let request = ChatRequest {
                system: Some(system),
                messages,
                max_tokens: options.max_tokens,
                temperature: options.temperature,
                stop_sequences: Vec::new(),
            };
            let completion = llm::call(NAME, &input, &options, &request, &ctx).await?;
            let response = completion.content.trim().to_string();
            let mut updated: Vec<Value> = kept.iter().cloned().map(Value::Object).collect();
            updated.push(json!({"role": "user", "content": message}));
            updated.push(json!({"role": "assistant", "content": response}));
            Ok(json!({
                "response": response,
                "turn_count": updated.len() / 2,
                "history": updated,
                "usage": completion.usage.to_json(),
            })
            .into())
        })
    }
}

/// The `history` entries, each an object.
fn history(input: &Map<String, Value>) -> Result<Vec<Map<String, Value>>, ComponentError> {
    match input.get("history") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Object(map) => Ok(map.clone()),
                other => Err(ComponentError::config(format!(
                    "{NAME}: `history[{i}]` must be an object {{role, content}}, got {}",
                    type_name(other)
                ))),
            })
            .collect(),
        Some(other) => Err(ComponentError::config(format!(
            "{NAME}: `history` must be an array of {{role, content}} objects, got {}",
            type_name(other)
        ))),
    }
}

/// A history entry as a message to send, when it is a user or assistant message.
fn as_message(entry: &Map<String, Value>) -> Option<Message> {
    let role = match entry.get("role").and_then(Value::as_str)? {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        _ => return None,
    };
    let content = match entry.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    Some(Message { role, content })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::testing::context;

    #[tokio::test]
    async fn input_errors_name_the_field() {
        let cases = [
            (
                json!({"message": "m", "history": "x"}),
                "chat: `history` must be an array of {role, content} objects, got a string",
            ),
            (
                json!({"message": "m", "history": [1]}),
                "chat: `history[0]` must be an object {role, content}, got a number",
            ),
            (
                json!({"message": "m", "max_history": 0}),
                "chat: `max_history` must be an integer from 1 to 100, got 0",
            ),
            (json!({"history": []}), "chat: `message` is required"),
        ];
        for (input, message) in cases {
            let (ctx, _) = context();
            assert_eq!(Chat.execute(input, ctx).await.unwrap_err().message, message);
        }
    }

    #[test]
    fn only_user_and_assistant_entries_are_sent() {
        let entry = |role: &str| {
            json!({"role": role, "content": "c"})
                .as_object()
                .cloned()
                .unwrap()
        };
        assert_eq!(as_message(&entry("user")).map(|m| m.role), Some(Role::User));
        assert_eq!(
            as_message(&entry("assistant")).map(|m| m.role),
            Some(Role::Assistant)
        );
        assert_eq!(as_message(&entry("system")), None);
    }
}
