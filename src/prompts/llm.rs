//! A small client for OpenAI-compatible LLM servers: Ollama, llama.cpp's server, vLLM,
//! LM Studio, or a cloud API.
//!
//! It sends one prompt and returns the answer's text, through `POST {base_url}/chat/completions`
//! or, for instruct models such as `gpt-3.5-turbo-instruct` (the ALFA paper's), through
//! `POST {base_url}/completions`. It never prints: callers (the CLI, a GUI worker thread)
//! learn about retries through a callback. The API key is read from an environment
//! variable at construction and never appears in messages.

use std::io::Read;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER};
use serde::{Deserialize, Serialize};

/// Ollama's OpenAI-compatible endpoint on its default port.
pub const DEFAULT_BASE_URL: &str = "http://localhost:11434/v1";
/// A model a stock Ollama install commonly has (`ollama pull llama3.1`).
pub const DEFAULT_MODEL: &str = "llama3.1";
pub const DEFAULT_API_KEY_ENV: &str = "OPENAI_API_KEY";
/// Varied samples are the point of asking several times.
pub const DEFAULT_TEMPERATURE: f32 = 0.8;
pub const DEFAULT_MAX_TOKENS: u32 = 2048;
/// Local models on a CPU can take minutes for a long list.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;
pub const DEFAULT_RETRIES: u32 = 3;
/// An answer larger than this is refused: prompt lists are a few kilobytes.
pub const MAX_ANSWER_BYTES: u64 = 2 * 1024 * 1024;
/// A server's `Retry-After` is honoured up to this long, so a bad header cannot stall a run.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Characters of an error body quoted in messages.
const EXCERPT_CHARS: usize = 200;
/// Bytes of an error body read for the excerpt.
const EXCERPT_READ_BYTES: u64 = 16 * 1024;

/// Which OpenAI endpoint to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmApi {
    /// `POST /chat/completions` (chat models; every local server has it).
    #[default]
    Chat,
    /// `POST /completions` (instruct models that continue a text).
    Completions,
}

/// Where and how to ask; kept by the GUI between sessions, hence serde.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LlmConfig {
    /// The API root, up to and including `/v1`.
    pub base_url: String,
    pub model: String,
    pub api: LlmApi,
    /// Name of the environment variable holding the API key; unset or empty sends none
    /// (local servers need none).
    pub api_key_env: String,
    pub temperature: f32,
    pub max_tokens: u32,
    /// Limit for connecting, sending and receiving one answer.
    pub timeout_ms: u64,
    /// Further attempts after a 429 or 5xx answer.
    pub retries: u32,
    /// Wait before the first retry; it doubles with every further one.
    pub initial_backoff_ms: u64,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            model: DEFAULT_MODEL.to_owned(),
            api: LlmApi::Chat,
            api_key_env: DEFAULT_API_KEY_ENV.to_owned(),
            temperature: DEFAULT_TEMPERATURE,
            max_tokens: DEFAULT_MAX_TOKENS,
            timeout_ms: DEFAULT_TIMEOUT_SECS * 1000,
            retries: DEFAULT_RETRIES,
            initial_backoff_ms: 1000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("invalid LLM server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("the API key in ${var} is not a valid HTTP header value")]
    InvalidApiKey { var: String },
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    #[error("{url}: no answer within {} s (timeout)", after.as_secs_f64())]
    Timeout { url: String, after: Duration },
    #[error("{url}: cannot connect ({reason}); is the LLM server running?")]
    Connect { url: String, reason: String },
    #[error("{url}: request failed: {reason}")]
    Transport { url: String, reason: String },
    #[error("{url}: HTTP {status}{}: {excerpt}", attempts_note(*attempts))]
    Http {
        url: String,
        status: u16,
        excerpt: String,
        attempts: u32,
    },
    #[error("{url}: the answer is larger than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: malformed JSON in the answer ({reason}): {excerpt}")]
    MalformedJson {
        url: String,
        reason: String,
        excerpt: String,
    },
    #[error("{url}: the answer is empty (no text in `choices`)")]
    EmptyAnswer { url: String },
}

fn attempts_note(attempts: u32) -> String {
    if attempts > 1 { format!(" after {attempts} attempts") } else { String::new() }
}

/// A retry about to happen, for progress reports.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryNotice {
    /// The attempt that failed (1-based) and how many are allowed.
    pub attempt: u32,
    pub attempts: u32,
    pub status: u16,
    pub wait: Duration,
}

pub struct LlmClient {
    http: Client,
    config: LlmConfig,
    endpoint: String,
    authorization: Option<HeaderValue>,
}

impl LlmClient {
    /// Checks the URL and reads the API key from `config.api_key_env`.
    pub fn new(config: LlmConfig) -> Result<Self, LlmError> {
        let root = config.base_url.trim().trim_end_matches('/');
        let parsed = reqwest::Url::parse(root).map_err(|e| LlmError::InvalidUrl {
            url: config.base_url.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(LlmError::InvalidUrl {
                url: config.base_url.clone(),
                reason: "expected http:// or https://".into(),
            });
        }
        // The URL is named in messages and recorded in prompt files.
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(LlmError::InvalidUrl {
                url: "(the given URL, not repeated: it holds credentials)".into(),
                reason: format!("put the key in ${} instead of the URL", config.api_key_env),
            });
        }
        let path = match config.api {
            LlmApi::Chat => "chat/completions",
            LlmApi::Completions => "completions",
        };
        let endpoint = format!("{root}/{path}");
        let authorization = match std::env::var(&config.api_key_env) {
            Ok(key) if !key.trim().is_empty() => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", key.trim()))
                    .map_err(|_| LlmError::InvalidApiKey { var: config.api_key_env.clone() })?;
                value.set_sensitive(true);
                Some(value)
            }
            _ => None,
        };
        let timeout = Duration::from_millis(config.timeout_ms);
        let http = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("alfa/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| LlmError::Client(e.to_string()))?;
        Ok(Self {
            http,
            config,
            endpoint,
            authorization,
        })
    }

    /// The URL every request goes to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    /// Whether an API key was found (for messages; the key itself stays private).
    pub fn has_api_key(&self) -> bool {
        self.authorization.is_some()
    }

    /// Asks `prompt` and returns the answer's text, retrying 429 and 5xx answers with
    /// exponential backoff (or the server's `Retry-After` seconds, capped).
    pub fn complete(&self, prompt: &str, on_retry: &mut dyn FnMut(&RetryNotice)) -> Result<String, LlmError> {
        let body = match self.config.api {
            LlmApi::Chat => serde_json::json!({
                "model": self.config.model,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": self.config.temperature,
                "max_tokens": self.config.max_tokens,
                "stream": false,
            }),
            LlmApi::Completions => serde_json::json!({
                "model": self.config.model,
                "prompt": prompt,
                "temperature": self.config.temperature,
                "max_tokens": self.config.max_tokens,
                "stream": false,
            }),
        };
        let attempts = self.config.retries.saturating_add(1);
        let mut backoff = Duration::from_millis(self.config.initial_backoff_ms);
        let mut attempt = 1;
        loop {
            let response = self.send(&body)?;
            let status = response.status();
            if status.is_success() {
                return self.answer_text(response);
            }
            let retry_after = (status == StatusCode::TOO_MANY_REQUESTS)
                .then(|| retry_after(&response))
                .flatten();
            let excerpt = self.excerpt(response);
            let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
            if !retryable || attempt == attempts {
                return Err(LlmError::Http {
                    url: self.endpoint.clone(),
                    status: status.as_u16(),
                    excerpt,
                    attempts: attempt,
                });
            }
            let wait = retry_after.unwrap_or(backoff);
            on_retry(&RetryNotice {
                attempt,
                attempts,
                status: status.as_u16(),
                wait,
            });
            std::thread::sleep(wait);
            backoff = backoff.saturating_mul(2);
            attempt += 1;
        }
    }

    fn send(&self, body: &serde_json::Value) -> Result<Response, LlmError> {
        let mut request = self.http.post(&self.endpoint).json(body);
        if let Some(auth) = &self.authorization {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        request.send().map_err(|e| self.transport_error(&e))
    }

    fn transport_error(&self, e: &reqwest::Error) -> LlmError {
        let url = self.endpoint.clone();
        if e.is_timeout() {
            LlmError::Timeout {
                url,
                after: Duration::from_millis(self.config.timeout_ms),
            }
        } else if e.is_connect() {
            LlmError::Connect { url, reason: root_cause(e) }
        } else {
            LlmError::Transport { url, reason: root_cause(e) }
        }
    }

    /// Reads at most `MAX_ANSWER_BYTES` and takes the first choice's text.
    fn answer_text(&self, response: Response) -> Result<String, LlmError> {
        let too_large = || LlmError::TooLarge {
            url: self.endpoint.clone(),
            limit: MAX_ANSWER_BYTES,
        };
        if response.content_length().is_some_and(|n| n > MAX_ANSWER_BYTES) {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        response
            .take(MAX_ANSWER_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.read_error(e))?;
        if bytes.len() as u64 > MAX_ANSWER_BYTES {
            return Err(too_large());
        }
        let parsed: CompletionResponse = serde_json::from_slice(&bytes).map_err(|e| LlmError::MalformedJson {
            url: self.endpoint.clone(),
            reason: e.to_string(),
            excerpt: self.clean_excerpt(&bytes),
        })?;
        parsed
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.and_then(|m| m.content).or(c.text))
            .filter(|text| !text.trim().is_empty())
            .ok_or_else(|| LlmError::EmptyAnswer { url: self.endpoint.clone() })
    }

    fn read_error(&self, e: std::io::Error) -> LlmError {
        let inner = e.get_ref().and_then(|inner| inner.downcast_ref::<reqwest::Error>());
        match inner {
            Some(re) => self.transport_error(re),
            None if e.kind() == std::io::ErrorKind::TimedOut => LlmError::Timeout {
                url: self.endpoint.clone(),
                after: Duration::from_millis(self.config.timeout_ms),
            },
            None => LlmError::Transport {
                url: self.endpoint.clone(),
                reason: e.to_string(),
            },
        }
    }

    /// The start of an error body, bounded, on one line.
    fn excerpt(&self, response: Response) -> String {
        let mut bytes = Vec::new();
        // A body that fails half-way still gives what arrived; the status is the error.
        let _ = response.take(EXCERPT_READ_BYTES).read_to_end(&mut bytes);
        self.clean_excerpt(&bytes)
    }

    fn clean_excerpt(&self, bytes: &[u8]) -> String {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(EXCERPT_READ_BYTES as usize)]);
        let mut excerpt: String = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .filter(|c| !c.is_control())
            .take(EXCERPT_CHARS)
            .collect();
        if text.chars().filter(|c| !c.is_whitespace()).count() > EXCERPT_CHARS {
            excerpt.push_str("...");
        }
        // Some servers quote the key they rejected.
        if let Ok(key) = std::env::var(&self.config.api_key_env) {
            let key = key.trim();
            if key.len() >= 4 && excerpt.contains(key) {
                excerpt = excerpt.replace(key, "[API key]");
            }
        }
        if excerpt.is_empty() { "(empty body)".into() } else { excerpt }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is ignored: backoff applies), capped.
fn retry_after(response: &Response) -> Option<Duration> {
    let seconds: u64 = response.headers().get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// The innermost error's message ("Connection refused (os error 111)"): reqwest's own
/// message repeats the URL the caller already names.
fn root_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[derive(Deserialize)]
struct CompletionResponse {
    #[serde(default)]
    choices: Vec<Choice>,
}

/// A chat choice has `message.content`, a completion choice `text`.
#[derive(Deserialize)]
struct Choice {
    message: Option<ChatMessage>,
    text: Option<String>,
}

#[derive(Deserialize)]
struct ChatMessage {
    content: Option<String>,
}
