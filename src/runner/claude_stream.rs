//! Claude Code's `--output-format stream-json --verbose` stream, one JSON event per line, turned
//! into readable task log lines and the final result.
//!
//! Pure functions, so the format is tested without a `claude` binary. Unknown event types and
//! fields are ignored: Claude Code adds events over time, and a log line missing is better than
//! a task failing on a newer CLI.

use serde_json::Value;

use crate::limits;

/// The final `{"type":"result"}` event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClaudeResult {
    pub is_error: bool,
    pub subtype: String,
    pub text: String,
    pub cost_usd: Option<f64>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub num_turns: Option<i64>,
    pub session_id: Option<String>,
}

/// What one line of the stream means.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    /// Readable log lines, `(level, message)`.
    pub logs: Vec<(&'static str, String)>,
    pub result: Option<ClaudeResult>,
}

/// Parses one line; `Err` carries the reason the line is not part of a stream-json stream.
pub fn parse_line(line: &str) -> Result<Parsed, String> {
    let line = line.trim();
    let mut out = Parsed::default();
    if line.is_empty() {
        return Ok(out);
    }
    let v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if !v.is_object() {
        return Err("a JSON value that is not an object".into());
    }
    match v["type"].as_str().unwrap_or_default() {
        "system" if v["subtype"] == "init" => out.logs.push((
            "info",
            format!(
                "claude session {} started (model {}, cwd {})",
                v["session_id"].as_str().unwrap_or("?"),
                v["model"].as_str().unwrap_or("?"),
                v["cwd"].as_str().unwrap_or("?"),
            ),
        )),
        "assistant" => {
            for block in blocks(&v["message"]["content"]) {
                match block["type"].as_str().unwrap_or_default() {
                    "text" => out
                        .logs
                        .push(("info", log_text("assistant: ", block["text"].as_str()))),
                    "tool_use" => out.logs.push((
                        "info",
                        format!(
                            "tool call: {}({})",
                            block["name"].as_str().unwrap_or("?"),
                            short_input(&block["input"])
                        ),
                    )),
                    _ => {}
                }
            }
        }
        "user" => {
            for block in blocks(&v["message"]["content"]) {
                if block["type"] == "tool_result" {
                    let text = one_line(&content_text(&block["content"]), 300);
                    if block["is_error"] == true {
                        out.logs.push(("warn", format!("tool error: {text}")));
                    } else {
                        out.logs.push(("info", format!("tool result: {text}")));
                    }
                }
            }
        }
        "result" => {
            let r = result_of(&v);
            out.logs.push((
                if r.is_error { "error" } else { "info" },
                format!(
                    "result: {}{}, {} turns, cost ${:.4}, {} input / {} output tokens",
                    r.subtype,
                    if r.is_error { " (is_error)" } else { "" },
                    r.num_turns.unwrap_or(0),
                    r.cost_usd.unwrap_or(0.0),
                    r.input_tokens.unwrap_or(0),
                    r.output_tokens.unwrap_or(0),
                ),
            ));
            out.result = Some(r);
        }
        _ => {}
    }
    Ok(out)
}

fn result_of(v: &Value) -> ClaudeResult {
    let mut text = v["result"].as_str().unwrap_or_default().to_string();
    // Error results of some CLI versions carry their reasons in `errors` rather than `result`.
    if let Some(errors) = v["errors"].as_array().filter(|e| !e.is_empty()) {
        let joined: Vec<String> = errors.iter().map(content_text).collect();
        if text.is_empty() {
            text = joined.join("; ");
        }
    }
    ClaudeResult {
        is_error: v["is_error"] == true,
        subtype: v["subtype"].as_str().unwrap_or("unknown").to_string(),
        text: limits::truncate_with_marker(&text, limits::MAX_RESULT_BYTES),
        cost_usd: v["total_cost_usd"].as_f64(),
        input_tokens: v["usage"]["input_tokens"].as_i64(),
        output_tokens: v["usage"]["output_tokens"].as_i64(),
        num_turns: v["num_turns"].as_i64(),
        session_id: v["session_id"].as_str().map(str::to_string),
    }
}

fn blocks(content: &Value) -> &[Value] {
    content.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// Text of a tool result or error entry: a string, or a list of `{type: text, text}` blocks.
fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(|b| b["text"].as_str().or_else(|| b.as_str()))
            .collect::<Vec<_>>()
            .join(" "),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn log_text(prefix: &str, text: Option<&str>) -> String {
    limits::truncate_with_marker(
        &format!("{prefix}{}", text.unwrap_or_default().trim()),
        limits::MAX_LOG_LINE_BYTES,
    )
}

/// A tool call's input in a few words: the field a reader looks for first (the command, the
/// file, the pattern...), else the compact JSON, cut short.
fn short_input(input: &Value) -> String {
    const KEYS: [&str; 7] = [
        "command",
        "file_path",
        "pattern",
        "path",
        "url",
        "query",
        "description",
    ];
    let text = KEYS
        .iter()
        .find_map(|k| input[*k].as_str().map(str::to_string))
        .unwrap_or_else(|| match input {
            Value::Null => String::new(),
            v => v.to_string(),
        });
    one_line(&text, 200)
}

/// Collapses whitespace runs (newlines included) and cuts to `max` characters with an ellipsis.
fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assistant_text_and_tool_use_become_log_lines() {
        let p = parse_line(r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Looking.\n"},{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"git   status\n","description":"x"}}]}}"#).unwrap();
        assert_eq!(
            p.logs,
            vec![
                ("info", "assistant: Looking.".to_string()),
                ("info", "tool call: Bash(git status)".to_string())
            ]
        );
        assert!(p.result.is_none());
    }

    #[test]
    fn tool_results_in_both_shapes() {
        let p = parse_line(r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"a\nb"}]},{"type":"tool_result","content":"boom","is_error":true}]}}"#).unwrap();
        assert_eq!(
            p.logs,
            vec![
                ("info", "tool result: a b".to_string()),
                ("warn", "tool error: boom".to_string())
            ]
        );
    }

    #[test]
    fn result_event_carries_cost_usage_and_session() {
        let p = parse_line(r#"{"type":"result","subtype":"success","is_error":false,"num_turns":3,"result":"done","session_id":"s-1","total_cost_usd":0.0421,"usage":{"input_tokens":120,"output_tokens":34}}"#).unwrap();
        let r = p.result.unwrap();
        assert_eq!(r.text, "done");
        assert_eq!(r.cost_usd, Some(0.0421));
        assert_eq!((r.input_tokens, r.output_tokens), (Some(120), Some(34)));
        assert_eq!(r.session_id.as_deref(), Some("s-1"));
        assert!(!r.is_error);
        assert!(p.logs[0].1.contains("3 turns"), "{:?}", p.logs);
    }

    #[test]
    fn error_result_uses_errors_when_result_is_empty() {
        let p = parse_line(
            r#"{"type":"result","subtype":"error_during_execution","is_error":true,"errors":["quota"]}"#,
        )
        .unwrap();
        let r = p.result.unwrap();
        assert!(r.is_error);
        assert_eq!(r.text, "quota");
    }

    #[test]
    fn non_json_and_unknown_events() {
        assert!(parse_line("Error: not logged in").is_err());
        assert!(parse_line("[1,2]").is_err());
        assert_eq!(parse_line("").unwrap(), Parsed::default());
        assert_eq!(
            parse_line(r#"{"type":"stream_event","x":1}"#).unwrap(),
            Parsed::default()
        );
    }

    #[test]
    fn long_inputs_are_cut() {
        let s = one_line(&"x".repeat(500), 200);
        assert_eq!(s.chars().count(), 201);
        assert!(s.ends_with('…'));
    }
}
