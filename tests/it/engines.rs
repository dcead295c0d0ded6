//! Issue 8: one engine, many clients. Several MCP sessions on one database file, take-over
//! after the engine is killed, an engine outliving its own client.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn two_sessions_share_one_database() {
    let env = Env::new();
    env.shell_agent("echo", "cat", "");
    let a = env.start().await;
    let b = env.start().await;
    assert!(
        b.log().contains("serving this session through it"),
        "the second session should be a frontend: {}",
        b.log()
    );
    let ta = a.submit("from-a", "echo", "hello from a", json!({})).await;
    let tb = b.submit("from-b", "echo", "hello from b", json!({})).await;
    // Each reads the other's task.
    assert_eq!(b.wait_one(&ta, 30).await["result"], "hello from a");
    assert_eq!(a.wait_one(&tb, 30).await["result"], "hello from b");
    assert_eq!(b.call("list_tasks", json!({})).await["total"], 2);
    assert_eq!(a.call("list_tasks", json!({})).await["total"], 2);
    // Same tools, same answers, same errors.
    let names = |tools: Vec<rmcp::model::Tool>| {
        tools.iter().map(|t| t.name.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(names(a.tools().await), names(b.tools().await));
    assert_eq!(
        a.call("task_status", json!({"task_id": ta})).await,
        b.call("task_status", json!({"task_id": ta})).await
    );
    for (tool, args) in [
        ("task_status", json!({"task_id": "nope"})),
        (
            "task_async",
            json!({"name": "x", "agent_name": "ghost", "agent_instructions": "x"}),
        ),
        ("task_async", json!({"name": 5})),
        ("no_such_tool", json!({})),
    ] {
        assert_eq!(
            a.call_err(tool, args.clone()).await,
            b.call_err(tool, args).await,
            "{tool}"
        );
    }
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frontend_takes_over_when_the_engine_is_killed() {
    let env = Env::new();
    let runs = env.path("work/runs");
    env.shell_agent(
        "slow",
        &format!(
            "echo \"start $ORCHESTR8_ATTEMPT\" >> {0}; sleep 2; echo \"end $ORCHESTR8_ATTEMPT\" >> {0}; echo done",
            runs.display()
        ),
        // A kill -9 counts the interrupted attempt (contract section 9): one retry covers it.
        "max_retries: 1",
    );
    let a = env.start().await;
    let b = env.start().await;
    let c = env.start().await; // a third session: attaches to whoever takes over
    let id = b.submit("slow", "slow", "x", json!({})).await;
    b.until(&id, "running", |t| t["status"] == "running").await;
    let engine_pid = a.pid;
    // A task_wait in flight when the engine dies is sent again to the next engine.
    let (waited, ()) = tokio::join!(
        b.call(
            "task_wait",
            json!({"task_ids": [id], "timeout_seconds": 60})
        ),
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            a.kill9().await;
        }
    );
    assert_eq!(waited["timed_out"], false, "{waited}");
    // The frontends' sessions keep working: the task is recovered and completes.
    let t = &waited["tasks"][0];
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["result"], "done\n");
    let c_task = c.submit("after", "slow", "y", json!({})).await;
    assert_eq!(c.wait_one(&c_task, 60).await["status"], "completed");
    let took_over = [&b, &c]
        .iter()
        .filter(|s| {
            s.log()
                .contains("took over: this process is now the engine")
        })
        .count();
    assert_eq!(took_over, 1, "exactly one frontend becomes the engine");
    // The killed attempt was stopped by recovery before the next one started, then the
    // second session's task ran once.
    let lines = read_lines(&runs);
    assert_eq!(
        lines,
        ["start 1", "start 2", "end 2", "start 1", "end 1"],
        "{lines:?}"
    );
    assert_eq!(t["attempt"], 2);
    let status = env.cli_json(&["status"]).await;
    assert_eq!(status["engine_running"], true);
    assert_ne!(status["pid"], engine_pid);
    assert!([b.pid, c.pid].contains(&(status["pid"].as_u64().unwrap() as u32)));
    c.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_engine_outlives_its_client_while_another_session_is_attached() {
    let env = Env::new();
    env.shell_agent("echo", "cat", "");
    let mut a = env.start_raw("engine.log").await;
    let b = env.start().await;
    a.close_stdin();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        alive(a.pid()),
        "the engine left while a frontend was attached"
    );
    let id = b.submit("t", "echo", "still here", json!({})).await;
    assert_eq!(b.wait_one(&id, 30).await["result"], "still here");
    assert!(!b.log().contains("took over"), "{}", b.log());
    b.stop().await;
    // With nobody attached and nothing to do, the engine goes.
    let status = tokio::time::timeout(Duration::from_secs(20), a.child.wait())
        .await
        .expect("the engine exits once idle")
        .unwrap();
    assert!(status.success());
    assert!(
        a.log().contains("staying up: 1 frontend(s) attached"),
        "{}",
        a.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frontend_takes_over_after_the_engine_is_stopped_with_sigterm() {
    // What an MCP client does when it closes a session: stdin closed, then SIGTERM.
    let mut env = Env::new();
    env.set("ORCHESTR8_SHUTDOWN_GRACE_SECONDS", "1");
    env.shell_agent("slow", "sleep 3; echo done", "");
    let a = env.start().await;
    let b = env.start().await;
    let id = b.submit("slow", "slow", "x", json!({})).await;
    b.until(&id, "running", |t| t["status"] == "running").await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_gone(a.pid).await;
    drop(a);
    let t = b.wait_one(&id, 60).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(
        t["attempt"], 1,
        "a graceful stop does not use up an attempt"
    );
    assert!(b.log().contains("took over"), "{}", b.log());
    b.stop().await;
}

/// A server looking for an engine that does not answer (stopped with SIGSTOP: it holds the file
/// and its socket accepts, but nothing replies) ends that wait at once on SIGTERM instead of
/// searching for 30 s.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_the_wait_for_an_engine() {
    let env = Env::new();
    let a = env.start().await;
    let a_pid = nix::unistd::Pid::from_raw(a.pid as i32);
    nix::sys::signal::kill(a_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let log = env.path("waiting.log");
    let mut waiting = env
        .command()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Kept open: a closed stdin would end the server for another reason.
    let _stdin = waiting.stdin.take();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let still = waiting.try_wait().unwrap().is_none();
    let sent = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(waiting.id().unwrap_or(0) as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), waiting.wait())
        .await
        .map(|s| s.unwrap());
    let took = sent.elapsed();
    nix::sys::signal::kill(a_pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    a.stop().await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(still, "it should have been waiting: {text}");
    let status = status.expect("exited after SIGTERM");
    assert!(took < Duration::from_secs(3), "took {took:?}: {text}");
    assert!(status.success(), "{text}");
    assert!(
        text.contains("signal received while looking for the engine"),
        "{text}"
    );
}
