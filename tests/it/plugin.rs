//! The Claude Code plugin in the repository, checked by Claude Code itself (from npm, no login
//! needed): both manifests pass `claude plugin validate --strict`, a `--plugin-dir` session
//! connects the plugin's MCP server (this build's binary on PATH), and its hooks tell a new
//! session, once, what ended in the project.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn plugin_dir() -> PathBuf {
    repo().join("plugins/orchestr8-async")
}

fn claude_code() -> PathBuf {
    if let Ok(p) = std::env::var("O8_CLAUDE_CODE") {
        return PathBuf::from(p);
    }
    npm_tool("claude-code", "@anthropic-ai/claude-code@2.1.332", "claude")
}

/// Claude Code in a fresh home, with this build's `orchestr8-async-server` first on PATH and
/// the test environment's database.
fn claude(env: &Env, home: &Path, cwd: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(claude_code());
    let bin_dir = Path::new(BIN).parent().expect("bin dir");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (k, _) in std::env::vars() {
        if ["ORCHESTR8_", "ANTHROPIC_", "OPENAI_", "CLAUDE_"]
            .iter()
            .any(|p| k.starts_with(p))
        {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(cwd)
        .env("HOME", home)
        .env("PATH", path)
        .env("ORCHESTR8_DB_PATH", env.db())
        .env("ORCHESTR8_IDLE_EXIT_SECONDS", "0")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn output(mut cmd: tokio::process::Command) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("claude finished in time")
        .expect("claude runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn both_manifests_pass_strict_validation() {
    let env = Env::new();
    let home = env.path("home");
    std::fs::create_dir_all(&home).unwrap();
    for manifest in [repo(), plugin_dir()] {
        let mut cmd = claude(&env, &home, &repo());
        cmd.args(["plugin", "validate", "--strict"]).arg(&manifest);
        let (code, out, err) = output(cmd).await;
        assert_eq!(code, 0, "{}: {out}\n{err}", manifest.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_code_connects_the_plugins_server_and_its_hooks_tell_what_ended_once() {
    let env = Env::new();
    env.shell_agent("echo", "cat", "");
    let home = env.path("home");
    let project = env.path("project");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&project).unwrap();

    // `mcp list` starts the plugin's server (a session of this build) and says it connected.
    let mut cmd = claude(&env, &home, &project);
    cmd.arg("--plugin-dir")
        .arg(plugin_dir())
        .args(["mcp", "list"]);
    let (_, out, err) = output(cmd).await;
    let line = out
        .lines()
        .find(|l| l.starts_with("plugin:orchestr8-async:orchestr8-async"))
        .unwrap_or_else(|| panic!("no line for the plugin's server: {out}\n{err}"));
    assert!(line.contains("✔ Connected"), "{line}");

    // A task submitted from the project ends while no Claude Code window is open.
    let s = env.start_in(&project).await;
    let id = s
        .submit("nightly", "echo", "all 214 tests passed", json!({}))
        .await;
    s.wait_one(&id, 30).await;
    s.stop().await;

    // The next session hears of it at its start, and not again at its first prompt. Without a
    // login `claude -p` stops after the hooks, which is all this needs.
    let mut cmd = claude(&env, &home, &project);
    cmd.arg("--plugin-dir").arg(plugin_dir()).args([
        "-p",
        "hello",
        "--output-format",
        "stream-json",
        "--verbose",
        "--include-hook-events",
    ]);
    let (_, out, err) = output(cmd).await;
    let events: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let hook = |event: &str| {
        events
            .iter()
            .find(|e| e["subtype"] == "hook_response" && e["hook_event"] == event)
            .unwrap_or_else(|| panic!("no {event} hook ran: {out}\n{err}"))
            .clone()
    };
    let start = hook("SessionStart");
    assert_eq!(start["exit_code"], 0, "{start}");
    let told = start["stdout"].as_str().unwrap_or_default();
    assert!(
        told.contains(&id) && told.contains("nightly") && told.contains("all 214 tests passed"),
        "{start}"
    );
    let prompt = hook("UserPromptSubmit");
    assert_eq!(prompt["exit_code"], 0, "{prompt}");
    assert_eq!(prompt["stdout"], "", "told once only: {prompt}");
    // The same session shows the plugin's server connected.
    let init = events
        .iter()
        .find(|e| e["subtype"] == "init")
        .unwrap_or_else(|| panic!("no init event: {out}\n{err}"));
    let server = init["mcp_servers"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|s| s["name"] == "plugin:orchestr8-async:orchestr8-async")
        })
        .unwrap_or_else(|| panic!("{init}"));
    assert_eq!(server["status"], "connected", "{init}");
    env.stop_engines().await;
}
