//! The `anthropic` runner: one call to the Messages API, the agent body as `system`, the
//! instructions as the user message.

use std::time::Instant;

use serde_json::{json, Value};

use super::http::{self, ApiCall};
use super::{BoxFuture, RunContext, RunJob, RunOutcome, Runner};
use crate::agents::AgentDef;
use crate::limits;
use crate::model::Usage;

/// Used when the agent names no `max_tokens`: room for a long answer, within every current
/// model's output limit.
pub const DEFAULT_MAX_TOKENS: u64 = 8192;

/// Not `Debug`: it holds the API key.
#[derive(Clone)]
pub struct AnthropicSettings {
    /// `ANTHROPIC_BASE_URL`, without the `/v1/messages` path.
    pub base_url: String,
    /// `ANTHROPIC_API_KEY`.
    pub api_key: Option<String>,
    /// `ORCHESTR8_ANTHROPIC_MODEL`: for agents that name no model (or `inherit`).
    pub model: String,
}

impl Default for AnthropicSettings {
    fn default() -> Self {
        AnthropicSettings {
            base_url: "https://api.anthropic.com".into(),
            api_key: None,
            model: "claude-sonnet-4-5".into(),
        }
    }
}

pub struct AnthropicRunner {
    settings: AnthropicSettings,
    client: reqwest::Client,
}

impl AnthropicRunner {
    pub fn new(settings: AnthropicSettings, client: reqwest::Client) -> Self {
        AnthropicRunner { settings, client }
    }

    /// The agent's model; Claude Code's family aliases map to the API's aliases of that family.
    fn model(&self, agent: &AgentDef) -> String {
        match agent.model.as_deref() {
            None | Some("inherit") | Some("") => self.settings.model.clone(),
            Some("sonnet") => "claude-sonnet-4-5".into(),
            Some("opus") => "claude-opus-4-1".into(),
            Some("haiku") => "claude-haiku-4-5".into(),
            Some(m) => m.to_string(),
        }
    }

    async fn run_attempt(&self, job: RunJob, ctx: RunContext) -> RunOutcome {
        let Some(key) = self.settings.api_key.as_deref() else {
            return RunOutcome::fatal("ANTHROPIC_API_KEY is not set");
        };
        let max_tokens = match http::max_tokens(&job.agent) {
            Ok(n) => n.unwrap_or(DEFAULT_MAX_TOKENS),
            Err(e) => return RunOutcome::fatal(e),
        };
        let model = self.model(&job.agent);
        let mut body = json!({
            "model": model,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": job.instructions}],
        });
        if !job.agent.body.trim().is_empty() {
            body["system"] = json!(job.agent.body);
        }
        let call = ApiCall {
            api: "Anthropic API",
            url: format!(
                "{}/v1/messages",
                self.settings.base_url.trim_end_matches('/')
            ),
            headers: vec![
                ("x-api-key", key.to_string()),
                ("anthropic-version", "2023-06-01".into()),
            ],
            body,
            secret: Some(key),
            auth_hint: "check ANTHROPIC_API_KEY",
        };
        (ctx.log)(
            "info",
            format!("POST {} (model {model}, max_tokens {max_tokens})", call.url),
        );
        let started = Instant::now();
        let answer = match http::post_json(&self.client, &call, &ctx).await {
            Ok(v) => v,
            Err(outcome) => return outcome,
        };
        let usage = Usage {
            input_tokens: answer["usage"]["input_tokens"].as_i64(),
            output_tokens: answer["usage"]["output_tokens"].as_i64(),
            cost_usd: None,
        };
        let stop = answer["stop_reason"].as_str();
        (ctx.log)(
            "info",
            http::answered_line(call.api, started.elapsed(), &usage, stop),
        );
        if stop == Some("max_tokens") {
            (ctx.log)(
                "warn",
                format!("the answer was cut at max_tokens ({max_tokens}); raise `max_tokens` in the agent's frontmatter for longer answers"),
            );
        }
        let texts: Vec<&str> = answer["content"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect();
        if texts.is_empty() && answer["content"].as_array().is_none() {
            return RunOutcome::retryable(format!(
                "Anthropic API answered without a `content` list: {}",
                limits::truncate_with_marker(&answer.to_string(), 500)
            ));
        }
        let mut metadata = serde_json::Map::new();
        if let Some(s) = stop {
            metadata.insert("stop_reason".into(), Value::from(s));
        }
        RunOutcome::Completed {
            result: limits::truncate_with_marker(&texts.join("\n"), limits::MAX_RESULT_BYTES),
            usage,
            metadata: (!metadata.is_empty()).then_some(metadata),
        }
    }
}

impl Runner for AnthropicRunner {
    fn check(&self, agent: &AgentDef) -> Result<(), String> {
        if self.settings.api_key.as_deref().is_none_or(str::is_empty) {
            return Err(format!(
                "agent {:?} uses the anthropic runner, but ANTHROPIC_API_KEY is not set: add it to the server's environment (the `env` of its mcpServers entry) and restart it, or set `runner: claude`, `openai` or `command` in {}",
                agent.name,
                agent.path.display()
            ));
        }
        http::max_tokens(agent).map(|_| ())
    }

    fn run(&self, job: RunJob, ctx: RunContext) -> BoxFuture<'_, RunOutcome> {
        Box::pin(self.run_attempt(job, ctx))
    }
}
