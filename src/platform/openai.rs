//! The `openai` engine's client: one chat completion against any OpenAI-compatible
//! `POST {base_url}/chat/completions`, with a timeout per request and bounded retries with
//! backoff on 429, 5xx and connection errors (honouring `Retry-After`).
//!
//! The API key is read from the provider's `api_key_env` at call time: it is never stored,
//! logged, or put in a prompt.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::config::ProviderConfig;
use crate::model::task::TokenUsage;

/// First retry delay without a `Retry-After`; doubles per retry.
const RETRY_BASE: Duration = Duration::from_millis(250);
/// Longest wait before a retry, whatever `Retry-After` asks.
const RETRY_WAIT_MAX: Duration = Duration::from_secs(30);
/// Bytes of an error body kept in the error message.
const ERROR_BODY_BYTES_MAX: usize = 512;

/// A model call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenAiError {
    /// The key's variable is not set.
    #[error("the API key variable {0} is not set")]
    MissingKey(String),
    /// 429, 5xx or no connection, after every retry.
    #[error("the provider did not answer after {tries} tries: {last}")]
    Unavailable {
        /// Requests sent.
        tries: u32,
        /// The last failure.
        last: String,
    },
    /// Any other refusal (4xx), or a reply without a message.
    #[error("the provider refused the request: {0}")]
    Refused(String),
}

impl OpenAiError {
    /// Worth retrying the stage later (the provider was busy or unreachable).
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// A completion: the message text and the tokens it cost.
#[derive(Debug, Clone)]
pub(crate) struct Completion {
    /// `choices[0].message.content`.
    pub content: String,
    /// What the provider reported (zeros when it reported nothing).
    pub usage: TokenUsage,
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// Asks the provider for one completion of `system` + `user`.
pub(crate) async fn complete(
    provider: &ProviderConfig,
    system: &str,
    user: &str,
) -> Result<Completion, OpenAiError> {
    let key = match &provider.api_key_env {
        Some(name) => Some(std::env::var(name).map_err(|_| OpenAiError::MissingKey(name.clone()))?),
        None => None,
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(provider.timeout_secs))
        .build()
        .map_err(|e| OpenAiError::Refused(e.to_string()))?;
    let url = format!(
        "{}/chat/completions",
        provider.base_url.trim_end_matches('/')
    );
    let body = json!({
        "model": provider.model,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ],
    });
    let mut last = String::new();
    for attempt in 0..=provider.retries_max {
        let mut request = client.post(&url).json(&body);
        if let Some(key) = &key {
            request = request.bearer_auth(key);
        }
        let wait = match request.send().await {
            Ok(response) if response.status().is_success() => return parse(response).await,
            Ok(response) => {
                let status = response.status();
                let retry_after = retry_after(&response);
                let text = response.text().await.unwrap_or_default();
                last = format!("{status}: {}", truncate(&text));
                if status.as_u16() != 429 && !status.is_server_error() {
                    return Err(OpenAiError::Refused(last));
                }
                retry_after.unwrap_or(RETRY_BASE * 2u32.saturating_pow(attempt))
            }
            Err(error) => {
                last = error.to_string();
                RETRY_BASE * 2u32.saturating_pow(attempt)
            }
        };
        if attempt < provider.retries_max {
            tracing::warn!(provider = %provider.base_url, attempt, ?wait, %last, "model call failed; retrying");
            tokio::time::sleep(wait.min(RETRY_WAIT_MAX)).await;
        }
    }
    Err(OpenAiError::Unavailable {
        tries: provider.retries_max + 1,
        last,
    })
}

async fn parse(response: reqwest::Response) -> Result<Completion, OpenAiError> {
    let reply: ChatResponse = response
        .json()
        .await
        .map_err(|e| OpenAiError::Refused(format!("the reply is not a chat completion: {e}")))?;
    let usage = reply
        .usage
        .map(|u| TokenUsage {
            input: u.prompt_tokens,
            output: u.completion_tokens,
        })
        .unwrap_or_default();
    let content = reply
        .choices
        .into_iter()
        .next()
        .and_then(|choice| choice.message.content)
        .ok_or_else(|| OpenAiError::Refused("the reply has no message".into()))?;
    Ok(Completion { content, usage })
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let header = response.headers().get(reqwest::header::RETRY_AFTER)?;
    let seconds: f64 = header.to_str().ok()?.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

fn truncate(text: &str) -> String {
    let mut end = text.len().min(ERROR_BODY_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The JSON object in a model's reply: the whole text, or the first `{...}` block of it (models
/// like to wrap JSON in prose or code fences).
pub(crate) fn json_in(text: &str) -> Option<&str> {
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        return Some(trimmed);
    }
    let start = trimmed.find('{')?;
    let end = trimmed.rfind('}')?;
    (end > start).then(|| &trimmed[start..=end])
}

#[cfg(test)]
mod tests {
    use super::json_in;

    #[test]
    fn json_is_found_in_fences_and_prose() {
        assert_eq!(json_in(" {\"a\":1} "), Some("{\"a\":1}"));
        assert_eq!(json_in("Here:\n```json\n{\"a\":1}\n```"), Some("{\"a\":1}"));
        assert_eq!(json_in("no json"), None);
    }
}
