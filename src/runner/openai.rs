//! The `openai` runner: one Chat Completions call to any OpenAI-compatible server (OpenAI, vLLM,
//! Ollama, llama.cpp, LM Studio).

use std::time::Instant;

use serde_json::{json, Value};

use super::http::{self, ApiCall};
use super::{BoxFuture, RunContext, RunJob, RunOutcome, Runner};
use crate::agents::AgentDef;
use crate::limits;
use crate::model::Usage;

/// Not `Debug`: it holds the API key.
#[derive(Clone)]
pub struct OpenAiSettings {
    /// `OPENAI_BASE_URL`, including `/v1`.
    pub base_url: String,
    /// `OPENAI_API_KEY`; local servers often need none.
    pub api_key: Option<String>,
    /// `ORCHESTR8_OPENAI_MODEL`: for agents that name no model.
    pub model: Option<String>,
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        OpenAiSettings {
            base_url: "https://api.openai.com/v1".into(),
            api_key: None,
            model: None,
        }
    }
}

pub struct OpenAiRunner {
    settings: OpenAiSettings,
    client: reqwest::Client,
}

impl OpenAiRunner {
    pub fn new(settings: OpenAiSettings, client: reqwest::Client) -> Self {
        OpenAiRunner { settings, client }
    }

    /// The agent's model, unless it is a Claude Code alias (meaningless to these servers); then
    /// `ORCHESTR8_OPENAI_MODEL`. There is no built-in default: servers differ too much.
    fn model(&self, agent: &AgentDef) -> Result<String, String> {
        agent
            .model
            .clone()
            .filter(|m| !m.is_empty() && !http::CLAUDE_CODE_ALIASES.contains(&m.as_str()))
            .or_else(|| self.settings.model.clone().filter(|m| !m.is_empty()))
            .ok_or_else(|| {
                format!(
                    "agent {:?} uses the openai runner but names no model: set `model:` (for example gpt-4o-mini, or the model your local server serves) in {}, or set ORCHESTR8_OPENAI_MODEL",
                    agent.name,
                    agent.path.display()
                )
            })
    }

    async fn run_attempt(&self, job: RunJob, ctx: RunContext) -> RunOutcome {
        let (model, max_tokens) = match (self.model(&job.agent), http::max_tokens(&job.agent)) {
            (Ok(m), Ok(n)) => (m, n),
            (Err(e), _) | (_, Err(e)) => return RunOutcome::fatal(e),
        };
        let mut messages = Vec::new();
        if !job.agent.body.trim().is_empty() {
            messages.push(json!({"role": "system", "content": job.agent.body}));
        }
        messages.push(json!({"role": "user", "content": job.instructions}));
        let mut body = json!({"model": model, "messages": messages});
        if let Some(n) = max_tokens {
            body["max_tokens"] = json!(n);
        }
        let key = self.settings.api_key.as_deref().filter(|k| !k.is_empty());
        let call = ApiCall {
            api: "OpenAI-compatible API",
            url: format!(
                "{}/chat/completions",
                self.settings.base_url.trim_end_matches('/')
            ),
            headers: key
                .map(|k| vec![("authorization", format!("Bearer {k}"))])
                .unwrap_or_default(),
            body,
            secret: key,
            auth_hint: "check OPENAI_API_KEY",
        };
        (ctx.log)("info", format!("POST {} (model {model})", call.url));
        let started = Instant::now();
        let answer = match http::post_json(&self.client, &call, &ctx).await {
            Ok(v) => v,
            Err(outcome) => return outcome,
        };
        let usage = Usage {
            input_tokens: answer["usage"]["prompt_tokens"].as_i64(),
            output_tokens: answer["usage"]["completion_tokens"].as_i64(),
            cost_usd: None,
        };
        let choice = &answer["choices"][0];
        let finish = choice["finish_reason"].as_str();
        (ctx.log)(
            "info",
            http::answered_line(call.api, started.elapsed(), &usage, finish),
        );
        if finish == Some("length") {
            (ctx.log)(
                "warn",
                "the answer was cut at the token limit; raise `max_tokens` in the agent's frontmatter for longer answers".to_string(),
            );
        }
        let Some(content) = choice["message"]["content"].as_str() else {
            return RunOutcome::retryable(format!(
                "the API answered without message content in its first choice: {}",
                limits::truncate_with_marker(&answer.to_string(), 500)
            ));
        };
        let mut metadata = serde_json::Map::new();
        if let Some(f) = finish {
            metadata.insert("finish_reason".into(), Value::from(f));
        }
        RunOutcome::Completed {
            result: limits::truncate_with_marker(content, limits::MAX_RESULT_BYTES),
            usage,
            metadata: (!metadata.is_empty()).then_some(metadata),
        }
    }
}

impl Runner for OpenAiRunner {
    fn check(&self, agent: &AgentDef) -> Result<(), String> {
        self.model(agent)?;
        http::max_tokens(agent).map(|_| ())
    }

    fn run(&self, job: RunJob, ctx: RunContext) -> BoxFuture<'_, RunOutcome> {
        Box::pin(self.run_attempt(job, ctx))
    }
}
