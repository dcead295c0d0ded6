//! The CLI for people, against a running engine (over its socket) and against a
//! stopped one (the command opens the file itself).

use serde_json::json;

use crate::harness::*;

fn agents(env: &Env) {
    env.shell_agent("echo", "cat", "");
    env.shell_agent("slow", "echo working >&2; sleep 1; echo slept", "");
    env.shell_agent("forever", "sleep 600", "");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_against_a_running_engine() {
    let env = Env::new();
    agents(&env);
    let s = env.start().await;

    let (code, out, err) = env.cli(&["submit", "echo", "hello cli"]).await;
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let (code, out, _) = env.cli(&["wait", &id]).await;
    assert_eq!(code, 0);
    assert!(out.contains(&id) && out.contains("completed"), "{out}");
    // The MCP session sees what the CLI did, and the other way round.
    assert_eq!(s.status(&id).await["result"], "hello cli");
    let shown = env.cli_json(&["show", &id]).await;
    assert_eq!(shown["result"], "hello cli");
    let (code, out, _) = env.cli(&["show", &id]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("status        completed") && out.contains("hello cli"),
        "{out}"
    );

    let (code, out, err) = env
        .cli(&["submit", "slow", "take your time", "--wait"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("slept"), "{out}");

    let slow = s.submit("slow2", "slow", "x", json!({})).await;
    let (code, out, err) = env.cli(&["logs", &slow, "--follow"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("working"), "{out}");
    assert!(err.contains("task completed"), "{err}");
    let (code, out, _) = env.cli(&["logs", &slow, "--json"]).await;
    assert_eq!(code, 0);
    for line in out.lines() {
        let l: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            l["seq"].as_i64().is_some(),
            "one JSON object per log line: {line}"
        );
    }
    assert!(out.lines().count() >= 3, "{out}");

    let long = s.submit("long", "forever", "x", json!({})).await;
    s.until(&long, "running", |t| t["status"] == "running")
        .await;
    let status = env.cli_json(&["status"]).await;
    assert_eq!(status["engine_running"], true);
    assert_eq!(status["engine_started"], false);
    let engine = env.engine_pid().await;
    assert_eq!(status["pid"], engine);
    assert_ne!(engine, s.pid, "the session is not the engine");
    // The window and this command (a command that just ended may still be counted).
    assert!(status["sessions"].as_u64().unwrap() >= 2, "{status}");
    assert_eq!(status["counts"]["running"], 1);
    assert_eq!(status["workers_busy"], 1);
    assert_eq!(status["running"][0]["task_id"], long);
    let (code, out, _) = env.cli(&["status"]).await;
    assert_eq!(code, 0);
    assert!(out.contains(&format!("engine    pid {engine}")), "{out}");
    assert!(out.contains("forever"), "running tasks are listed: {out}");
    let (code, out, _) = env.cli(&["cancel", &long]).await;
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("cancelled {long}"));
    let (code, _, _) = env.cli(&["wait", &long]).await;
    assert_eq!(code, 1, "a cancelled task is not a success");

    let listed = env.cli_json(&["tasks", "--status", "completed"]).await;
    assert_eq!(listed["total"], 3);
    let (code, out, _) = env.cli(&["tasks", "--agent", "forever"]).await;
    assert_eq!(code, 0);
    assert!(out.contains(&long) && out.contains("cancelled"), "{out}");

    s.call("workflow_create", json!({"name": "wf-from-mcp"}))
        .await;
    let wfs = env.cli_json(&["workflows"]).await;
    assert_eq!(wfs["workflows"][0]["name"], "wf-from-mcp");
    let (_, out, _) = env.cli(&["agents"]).await;
    assert!(out.contains("echo") && out.contains("command"), "{out}");

    // Refusals are the tools' own, with a non-zero status.
    let (code, _, err) = env.cli(&["show", "not-a-task"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("task_id"), "{err}");
    let (code, _, err) = env.cli(&["submit", "ghost", "x"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("ghost"), "{err}");
    s.stop().await;
}

/// With no engine running, a command starts one, as a session does; `stop` stops it.
#[tokio::test(flavor = "multi_thread")]
async fn every_command_without_an_engine() {
    let mut env = Env::new();
    // Long enough that the engine a command starts is still there for the next command.
    env.set("ORCHESTR8_IDLE_EXIT_SECONDS", "30");
    agents(&env);
    let (code, out, _) = env.cli(&["stop"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("no engine runs"), "{out}");
    let status = env.cli_json(&["status"]).await;
    assert_eq!(status["engine_running"], true);
    assert_eq!(status["engine_started"], true);
    let engine = env.engine_pid().await;

    let (code, out, err) = env.cli(&["submit", "echo", "later"]).await;
    assert_eq!(code, 0, "{err}");
    let later = out.trim().to_string();
    let (code, out, err) = env.cli(&["submit", "forever", "never"]).await;
    assert_eq!(code, 0, "{err}");
    let never = out.trim().to_string();
    let (code, out, _) = env.cli(&["cancel", &never]).await;
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("cancelled {never}"));
    let (code, out, err) = env.cli(&["submit", "echo", "now", "--wait"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("now"), "{out}");
    let (code, out, _) = env.cli(&["wait", &later, "--timeout", "30"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("completed"), "{out}");
    assert_eq!(env.cli_json(&["show", &later]).await["result"], "later");
    let (code, out, _) = env.cli(&["logs", &later]).await;
    assert_eq!(code, 0);
    assert!(!out.is_empty());
    let (code, _, err) = env.cli(&["logs", &later, "--follow"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = env.cli(&["status"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("engine    pid {engine}")) && out.contains("completed 2"),
        "one engine served every command: {out}"
    );
    let wfs = env.cli_json(&["workflows"]).await;
    assert_eq!(wfs["total"], 0);
    let agents = env.cli_json(&["agents"]).await;
    assert_eq!(agents["agents"].as_array().unwrap().len(), 3);
    // A reader that goes away (`| head -0`) ends the output, not the command: no panic.
    let mut child = env
        .command()
        .args(["tasks"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let stopped = env.cli_json(&["stop"]).await;
    assert_eq!(stopped["stopped"], true);
    assert_eq!(stopped["pid"], engine);
    assert!(!alive(engine));
    assert!(env.engine_pids().is_empty());
    // The next session starts an engine again and sees everything.
    let s = env.start().await;
    assert_eq!(s.call("list_tasks", json!({})).await["total"], 3);
    s.stop().await;
    env.stop_engines().await;
}
