//! HTTP plumbing shared by the API runners: one client, one POST that stops when the task is
//! cancelled, and one classification of failures (a rate limit or server
//! error is retryable, a refused request is not).
//!
//! Secrets only travel in request headers. Every message built here goes through [`redact`], so
//! an API that echoes a key back in an error body does not put it in the task's error or logs.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::Value;

use super::{RunContext, RunOutcome};
use crate::agents::AgentDef;
use crate::model::Usage;

/// Largest response body read from an API (a chat answer is far smaller; this only guards
/// against a misbehaving server).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

pub fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .user_agent(concat!("orchestr8-async/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("could not set up the HTTP client: {e}"))
}

/// One JSON POST to an LLM API.
pub struct ApiCall<'a> {
    /// Names the API in messages, e.g. "Anthropic API".
    pub api: &'static str,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Value,
    /// The key sent in `headers`, to be kept out of every message.
    pub secret: Option<&'a str>,
    /// Said after a 401/403, e.g. "check ANTHROPIC_API_KEY".
    pub auth_hint: &'static str,
}

/// Replaces every occurrence of `secret` in `text`.
pub fn redact(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if s.len() >= 4 => text.replace(s, "[redacted]"),
        _ => text.to_string(),
    }
}

/// Sends the call; `Ok` is the parsed JSON of a 2xx answer, `Err` the outcome to report
/// (a classified failure, or `Stopped` when the task was cancelled, which drops the request).
pub async fn post_json(
    client: &reqwest::Client,
    call: &ApiCall<'_>,
    ctx: &RunContext,
) -> Result<Value, RunOutcome> {
    let mut req = client.post(&call.url).json(&call.body);
    for (name, value) in &call.headers {
        req = req.header(*name, value);
    }
    let exchange = async {
        let resp = req.send().await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = read_body(resp).await?;
        Ok::<_, reqwest::Error>((status, headers, body))
    };
    let (status, headers, body) = tokio::select! {
        r = exchange => r.map_err(|e| {
            RunOutcome::retryable(redact(
                &format!("{} request to {} failed: {}", call.api, call.url, error_chain(&e)),
                call.secret,
            ))
        })?,
        _ = ctx.cancel.cancelled() => return Err(RunOutcome::Stopped),
    };
    let Some(body) = body else {
        return Err(RunOutcome::retryable(format!(
            "{} answered {status} with a body over {MAX_BODY_BYTES} bytes",
            call.api
        )));
    };
    if status.is_success() {
        return serde_json::from_slice(&body).map_err(|e| {
            RunOutcome::retryable(redact(
                &format!(
                    "{} answered {status} with a body that is not JSON ({e}): {}",
                    call.api,
                    snippet(&body)
                ),
                call.secret,
            ))
        });
    }
    let hint = match status.as_u16() {
        401 | 403 => format!(" ({})", call.auth_hint),
        404 => " (check the base URL and the model name)".to_string(),
        _ => String::new(),
    };
    let error = redact(
        &format!(
            "{} answered {status}: {}{hint}",
            call.api,
            error_message(&body)
        ),
        call.secret,
    );
    Err(if is_retryable(status) {
        RunOutcome::Failed {
            error,
            retryable: true,
            retry_after: retry_after(&headers),
        }
    } else {
        RunOutcome::fatal(error)
    })
}

/// 408, 429 and every 5xx (529 = Anthropic's "overloaded") are worth another attempt; any other
/// 4xx is a request the API refused and will refuse again.
pub fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429) || status.is_server_error()
}

/// The frontmatter's `max_tokens`, checked.
pub fn max_tokens(agent: &AgentDef) -> Result<Option<u64>, String> {
    match agent.extra.get("max_tokens") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=1_000_000).contains(&n) => Ok(Some(n)),
            _ => Err(format!(
                "agent {:?}: `max_tokens` must be a whole number from 1 to 1000000 (in {})",
                agent.name,
                agent.path.display()
            )),
        },
    }
}

/// Claude Code's model aliases in subagent files; they name no model an HTTP API knows.
pub const CLAUDE_CODE_ALIASES: [&str; 4] = ["sonnet", "opus", "haiku", "inherit"];

/// The log line after an answer: time taken and tokens.
pub fn answered_line(api: &str, took: Duration, usage: &Usage, finish: Option<&str>) -> String {
    format!(
        "{api} answered in {:.1}s: {} input / {} output tokens{}",
        took.as_secs_f64(),
        usage.input_tokens.unwrap_or(0),
        usage.output_tokens.unwrap_or(0),
        finish
            .map(|f| format!(", stop reason {f}"))
            .unwrap_or_default()
    )
}

/// `retry-after` as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// The API's own error text: `{"error": {"message": ...}}` (Anthropic and OpenAI alike), else
/// the start of the body.
fn error_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let found = parsed.as_ref().and_then(|v| {
        let err = &v["error"];
        let msg = err["message"].as_str().or_else(|| err.as_str())?;
        Some(match err["type"].as_str() {
            Some(kind) => format!("{msg} ({kind})"),
            None => msg.to_string(),
        })
    });
    found.unwrap_or_else(|| snippet(body))
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".into();
    }
    match text.char_indices().nth(500) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// `None` when the body is over the cap.
async fn read_body(mut resp: reqwest::Response) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// reqwest's own message is terse ("error sending request"); the causes say what happened
/// ("connection refused").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn classification() {
        for code in [408, 429, 500, 502, 503, 504, 529] {
            assert!(is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 422] {
            assert!(!is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn api_error_messages_and_redaction() {
        let body = br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key sk-secret-123"}}"#;
        let msg = error_message(body);
        assert_eq!(
            msg,
            "invalid x-api-key sk-secret-123 (authentication_error)"
        );
        assert_eq!(
            redact(&msg, Some("sk-secret-123")),
            "invalid x-api-key [redacted] (authentication_error)"
        );
        assert_eq!(
            error_message(b"<html>bad gateway</html>"),
            "<html>bad gateway</html>"
        );
        assert_eq!(error_message(b""), "(empty body)");
    }
}
