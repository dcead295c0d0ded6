//! The engine is a process of its own, detached from every session: sessions (the processes
//! an MCP client starts) are frontends that hold no state. Closing, killing or crashing a
//! window never changes a task's outcome; each session works in its own project.

use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::json;

use crate::harness::*;
use crate::stub_http::{Reply, Stub};

fn signal(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// What Claude Code does when a session ends (measured): SIGINT, SIGTERM 100 ms later, SIGKILL
/// 400 ms after that, stdin never closed.
async fn claude_code_shutdown(pid: u32) {
    signal(pid, Signal::SIGINT);
    tokio::time::sleep(Duration::from_millis(100)).await;
    signal(pid, Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(pid, Signal::SIGKILL);
    wait_gone(pid).await;
}

/// A task running when its window closes completes in attempt 1, its webhook arrives, and a
/// later session reads it completed.
#[tokio::test(flavor = "multi_thread")]
async fn closing_a_claude_code_window_never_changes_a_running_tasks_outcome() {
    let env = Env::new();
    let hook = Stub::start(vec![Reply::json(200, json!({}))]).await;
    env.shell_agent("slow", "sleep 2; echo finished", "max_retries: 2");
    let mut raw = env.start_raw("window.log").await;
    let id = raw
        .submit("slow", json!({"webhook_url": format!("{}/hook", hook.url)}))
        .await;
    let engine = env.engine_pid().await;
    assert_ne!(engine, raw.pid(), "the session is not the engine");
    tokio::time::sleep(Duration::from_millis(300)).await;
    claude_code_shutdown(raw.pid()).await;
    assert!(
        alive(engine),
        "the engine went with the window: {}",
        raw.log()
    );
    let s = env.start().await;
    let t = s.wait_one(&id, 30).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["attempt"], 1, "{t}");
    assert_eq!(t["result"], "finished\n");
    for _ in 0..200 {
        if !hook.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let hooks = hook.requests();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0].body["type"], "task.completed");
    assert_eq!(env.engine_pid().await, engine, "the same engine throughout");
    s.stop().await;
    env.stop_engines().await;
}

/// A closed terminal: SIGKILL to the client's whole process group, the session in it.
#[tokio::test(flavor = "multi_thread")]
async fn killing_the_clients_process_group_loses_nothing() {
    let env = Env::new();
    env.shell_agent("slow", "sleep 2; echo finished", "");
    let mut raw = env.start_raw_in_own_group("window.log").await;
    let id = raw.submit("slow", json!({})).await;
    let engine = env.engine_pid().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    killpg(Pid::from_raw(raw.pid() as i32), Signal::SIGKILL).unwrap();
    wait_gone(raw.pid()).await;
    assert!(alive(engine));
    let s = env.start().await;
    let t = s.wait_one(&id, 30).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["attempt"], 1);
    s.stop().await;
    env.stop_engines().await;
}

/// Two windows in two projects on one database file: each sees and runs its own agents, and a
/// task without working_dir runs in its own project.
#[tokio::test(flavor = "multi_thread")]
async fn each_session_works_in_its_own_project() {
    let mut env = Env::new();
    // The default search path, relative: resolved in each session's directory.
    env.set("ORCHESTR8_AGENTS_DIR", "./agents");
    let mut projects = Vec::new();
    for name in ["alpha", "beta"] {
        let dir = env.path(name);
        std::fs::create_dir_all(dir.join("agents")).unwrap();
        std::fs::write(
            dir.join(format!("agents/{name}-agent.md")),
            format!("---\nname: {name}-agent\nrunner: command\ncommand: [\"pwd\"]\n---\nbody\n"),
        )
        .unwrap();
        projects.push(dir);
    }
    let a = env.start_in(&projects[0]).await;
    let b = env.start_in(&projects[1]).await;
    for (s, mine, other, dir) in [
        (&a, "alpha-agent", "beta-agent", &projects[0]),
        (&b, "beta-agent", "alpha-agent", &projects[1]),
    ] {
        let agents = s.call("list_agents", json!({})).await;
        let names: Vec<_> = agents["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, [mine], "{agents}");
        let err = s
            .call_err(
                "task_async",
                json!({"name": "x", "agent_name": other, "agent_instructions": "x"}),
            )
            .await;
        assert!(err.contains("unknown agent"), "{err}");
        let id = s.submit("where", mine, "x", json!({})).await;
        let t = s.wait_one(&id, 30).await;
        let dir = std::fs::canonicalize(dir).unwrap();
        assert_eq!(t["result"], format!("{}\n", dir.display()), "{t}");
        assert_eq!(t["project"], dir.display().to_string(), "{t}");
    }
    env.engine_pid().await;
    a.stop().await;
    b.stop().await;
    env.stop_engines().await;
}

/// Two sessions started in the same instant on a fresh file: one engine, and both work.
#[tokio::test(flavor = "multi_thread")]
async fn two_sessions_started_at_once_end_up_with_one_engine() {
    let env = Env::new();
    env.shell_agent("echo", "cat", "");
    let (a, b) = tokio::join!(env.start(), env.start());
    let (ta, tb) = tokio::join!(
        a.submit("a", "echo", "from a", json!({})),
        b.submit("b", "echo", "from b", json!({}))
    );
    assert_eq!(b.wait_one(&ta, 30).await["result"], "from a");
    assert_eq!(a.wait_one(&tb, 30).await["result"], "from b");
    // The engine that lost the race may still be starting up; it exits once it finds the
    // file locked, leaving exactly one.
    env.engine_pid().await;
    // Same tools, same answers, same errors.
    for (tool, args) in [
        ("task_status", json!({"task_id": "nope"})),
        (
            "task_async",
            json!({"name": "x", "agent_name": "ghost", "agent_instructions": "x"}),
        ),
        ("no_such_tool", json!({})),
    ] {
        assert_eq!(
            a.call_err(tool, args.clone()).await,
            b.call_err(tool, args).await,
            "{tool}"
        );
    }
    a.stop().await;
    b.stop().await;
    env.stop_engines().await;
}

/// kill -9 of the engine with a task_wait in flight: the session starts the next engine
/// (recovery first) and the wait is answered by it.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_wait_in_flight_is_answered_by_the_next_engine_after_kill_9() {
    let env = Env::new();
    let runs = env.path("work/runs");
    env.shell_agent(
        "slow",
        &format!(
            "echo \"start $ORCHESTR8_ATTEMPT\" >> {0}; sleep 2; echo \"end $ORCHESTR8_ATTEMPT\" >> {0}; echo done",
            runs.display()
        ),
        // A kill -9 counts the interrupted attempt: one retry covers it.
        "max_retries: 1",
    );
    let s = env.start().await;
    let id = s.submit("slow", "slow", "x", json!({})).await;
    s.until(&id, "running", |t| t["status"] == "running").await;
    let first = env.engine_pid().await;
    let (waited, ()) = tokio::join!(
        s.call(
            "task_wait",
            json!({"task_ids": [id], "timeout_seconds": 60})
        ),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            env.kill9_engines().await;
        }
    );
    assert_eq!(waited["timed_out"], false, "{waited}");
    let t = &waited["tasks"][0];
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["attempt"], 2);
    let second = env.engine_pid().await;
    assert_ne!(first, second);
    // The killed attempt was stopped by recovery before the next one started.
    assert_eq!(read_lines(&runs), ["start 1", "start 2", "end 2"]);
    s.stop().await;
    env.stop_engines().await;
}

/// A task due 5 s after its client has gone runs at its time, and the idle engine then exits;
/// the next session starts a new one.
#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_task_runs_with_no_window_open_and_the_idle_engine_exits() {
    let env = Env::new();
    let ran = env.path("work/ran");
    env.shell_agent(
        "mark",
        &format!("date +%s > {}; echo ok", ran.display()),
        "",
    );
    let s = env.start().await;
    let due = chrono::Utc::now() + chrono::Duration::seconds(5);
    let id = s
        .submit("later", "mark", "x", json!({"run_at": due.to_rfc3339()}))
        .await;
    let engine = env.engine_pid().await;
    s.kill9_session_only().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(alive(engine), "the engine left with a task due");
    assert!(!ran.exists());
    // Once it has run, nothing keeps the engine (idle period 0 here): it exits by itself.
    env.wait_engines_gone().await;
    assert!(ran.exists(), "{}", env.engine_log());
    let s = env.start().await;
    let t = s.status(&id).await;
    assert_eq!(t["status"], "completed", "{t}");
    // Times are answered to the millisecond: a start within the due millisecond shows as it.
    use chrono::SubsecRound;
    assert!(time(&t, "started_at") >= due.trunc_subsecs(3), "{t}");
    assert_ne!(env.engine_pid().await, engine, "a new engine");
    s.stop().await;
    env.wait_engines_gone().await;
}

/// A server looking for an engine that does not answer (stopped with SIGSTOP: it holds the
/// file and its socket accepts, but nothing replies) ends that wait at once on SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_the_wait_for_an_engine() {
    let env = Env::new();
    let a = env.start().await;
    let engine = env.engine_pid().await;
    signal(engine, Signal::SIGSTOP);
    let log = env.path("waiting.log");
    let mut waiting = env
        .command()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Kept open: a closed stdin would end the session for another reason.
    let _stdin = waiting.stdin.take();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let still = waiting.try_wait().unwrap().is_none();
    let sent = std::time::Instant::now();
    signal(waiting.id().unwrap_or(0), Signal::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(10), waiting.wait())
        .await
        .map(|s| s.unwrap());
    let took = sent.elapsed();
    signal(engine, Signal::SIGCONT);
    a.stop().await;
    env.stop_engines().await;
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

/// Settings that shape the engine come from the process that started it; a session started
/// with other values is told so (its log), and so is `status` — by name, never by value.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_with_other_engine_settings_is_told_plainly() {
    let mut env = Env::new();
    env.set("ORCHESTR8_WORKERS", "2");
    let a = env.start().await;
    env.set("ORCHESTR8_WORKERS", "3").set(
        "ORCHESTR8_WEBHOOK_SECRET",
        "whsec_c2VjcmV0LXZhbHVlLTEyMzQ1Njc4",
    );
    let b = env.start().await;
    let status = env.cli_json(&["status"]).await;
    assert_eq!(status["workers"], 2, "the engine keeps its own: {status}");
    let differ: Vec<&str> = status["settings_differ"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(differ.contains(&"ORCHESTR8_WORKERS"), "{status}");
    assert!(differ.contains(&"ORCHESTR8_WEBHOOK_SECRET"), "{status}");
    assert!(
        !status.to_string().contains("c2VjcmV0"),
        "no values: {status}"
    );
    assert!(
        b.log().contains("other settings than this session's")
            && b.log().contains("ORCHESTR8_WORKERS"),
        "{}",
        b.log()
    );
    let (_, text, _) = env.cli(&["status"]).await;
    assert!(text.contains("ORCHESTR8_WORKERS"), "{text}");
    a.stop().await;
    b.stop().await;
    env.stop_engines().await;
}

/// A database file held by a process that is no engine (here the test itself, through DuckDB):
/// a command is told which file and what holds it, and engines are started ever less often
/// meanwhile rather than many times a second.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_held_by_another_process_is_named_and_not_hammered() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("db")).unwrap();
    let holder = duckdb::Connection::open(env.db()).unwrap();
    let started = std::time::Instant::now();
    let (code, out, err) = env.cli(&["status"]).await;
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("held by another process"), "{err}");
    assert!(err.contains(&env.db().display().to_string()), "{err}");
    // DuckDB names the holder: this test's own process.
    assert!(err.contains(&std::process::id().to_string()), "{err}");
    assert!(started.elapsed() < Duration::from_secs(50));
    let tries = env
        .engine_log()
        .matches("the database is held by another process")
        .count();
    assert!((3..=20).contains(&tries), "{tries} engines started");
    drop(holder);
    // Once the file is free, the next command starts the engine.
    let (code, _, err) = env.cli(&["status"]).await;
    assert_eq!(code, 0, "{err}");
    env.stop_engines().await;
}

/// An engine with an idle period stays up through it once its last session has gone (the next
/// window reuses it); `stop --when-idle` lets it finish its running task first, and the session
/// still attached then reaches a new engine.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_engine_waits_its_period_and_stop_when_idle_lets_work_finish() {
    let mut env = Env::new();
    env.set("ORCHESTR8_IDLE_EXIT_SECONDS", "4");
    env.shell_agent("slow", "sleep 2; echo slept", "");
    env.shell_agent("echo", "cat", "");
    let s = env.start().await;
    let first = env.engine_pid().await;
    s.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(alive(first), "the engine left before its idle period");
    let s = env.start().await;
    assert_eq!(env.engine_pid().await, first, "the next window reuses it");

    let id = s.submit("slow", "slow", "x", json!({})).await;
    s.until(&id, "running", |t| t["status"] == "running").await;
    let (code, out, err) = env.cli(&["stop", "--when-idle"]).await;
    assert_eq!(code, 0, "{out}{err}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(alive(first), "it stopped with a task running");
    let t = s.wait_one(&id, 30).await;
    assert_eq!(t["result"], "slept\n", "{t}");
    assert_eq!(t["attempt"], 1, "{t}");
    // Once the task is done it retires, though a session is attached; that session's next
    // call reaches the next engine.
    wait_gone(first).await;
    let again = s.submit("after", "echo", "still here", json!({})).await;
    assert_eq!(s.wait_one(&again, 30).await["result"], "still here");
    assert_ne!(env.engine_pid().await, first);
    s.stop().await;
    env.stop_engines().await;
}

/// `stop` while a session is submitting (a restart with a window open): every call is answered,
/// by this engine or by the next, none is left "may or may not have taken effect", and each
/// task exists exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_under_load_leaves_no_call_in_doubt() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = Env::new();
    env.shell_agent("echo", "cat", "");
    let s = env.start().await;
    let first = env.engine_pid().await;
    let done = AtomicBool::new(false);
    let submit = |n: usize| {
        let (s, done) = (&s, &done);
        async move {
            let mut ids = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let i = ids.len();
                let args = json!({"name": format!("{n}-{i}"), "agent_name": "echo",
                    "agent_instructions": format!("{n}-{i}")});
                let r = s
                    .try_call("task_async", args, Duration::from_secs(60))
                    .await
                    .expect("answered");
                let v = r.structured_content.unwrap_or_default();
                assert_ne!(r.is_error, Some(true), "{v}");
                ids.push(v["task_id"].as_str().unwrap().to_string());
            }
            ids
        }
    };
    let stop = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (code, out, err) = env.cli(&["stop"]).await;
        assert_eq!(code, 0, "{out}{err}");
        wait_gone(first).await;
        // Submitting on to the next engine for a moment.
        env.engine_pid().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        done.store(true, Ordering::SeqCst);
    };
    let (a, b, c, d, ()) = tokio::join!(submit(0), submit(1), submit(2), submit(3), stop);
    assert_ne!(env.engine_pid().await, first, "a new engine");
    let ids: std::collections::BTreeSet<String> = [a, b, c, d].into_iter().flatten().collect();
    let all: Vec<String> = ids.iter().cloned().collect();
    for t in s.wait_all(&all, 60).await {
        assert_eq!(t["status"], "completed", "{t}");
    }
    let listed = s.call("list_tasks", json!({"limit": 1})).await;
    assert_eq!(listed["total"], all.len(), "each task once");
    s.stop().await;
    env.stop_engines().await;
}
