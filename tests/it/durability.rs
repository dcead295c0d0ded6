//! Nothing accepted is lost — across restarts, kill -9, and graceful
//! shutdown.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn results_and_logs_survive_a_restart() {
    let env = Env::new();
    env.shell_agent("ok", "echo 'note for later' >&2; echo result-text", "");
    let s = env.start().await;
    let id = s.submit("keep", "ok", "x", json!({})).await;
    let before = s.wait_one(&id, 30).await;
    let logs_before = s.call("task_logs", json!({"task_id": id})).await;
    s.stop().await;
    env.stop_engines().await;

    let s = env.start().await;
    let after = s.status(&id).await;
    assert_eq!(after["result"], "result-text\n");
    for field in [
        "status",
        "attempt",
        "created_at",
        "started_at",
        "completed_at",
        "result",
    ] {
        assert_eq!(after[field], before[field], "{field}");
    }
    let logs_after = s.call("task_logs", json!({"task_id": id})).await;
    assert_eq!(logs_after, logs_before);
    assert!(after["logs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["message"] == "note for later"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_tasks_running_loses_nothing() {
    let mut env = Env::new();
    env.set("ORCHESTR8_WORKERS", "3");
    let runs = env.path("runs.txt");
    env.shell_agent(
        "work",
        &format!(
            "echo \"start $ORCHESTR8_TASK_ID $ORCHESTR8_ATTEMPT\" >> {0}; sleep 1.5; echo \"end $ORCHESTR8_TASK_ID $ORCHESTR8_ATTEMPT\" >> {0}; echo \"done $ORCHESTR8_TASK_NAME\"",
            runs.display()
        ),
        "max_retries: 2",
    );
    let s = env.start().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(s.submit(&format!("job-{i}"), "work", "x", json!({})).await);
    }
    // Let three start and record their process groups, then pull the plug.
    for id in &ids[..3] {
        s.until(id, "running", |t| t["status"] == "running").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.kill9(&env).await;

    let s = env.start().await;
    let done = s.wait_all(&ids, 60).await;
    for (i, t) in done.iter().enumerate() {
        assert_eq!(t["status"], "completed", "{t}");
        assert_eq!(t["result"], format!("done job-{i}\n"));
    }
    let interrupted: Vec<_> = done.iter().filter(|t| t["attempt"] == 2).collect();
    assert_eq!(
        interrupted.len(),
        3,
        "the three running tasks were requeued with their attempt counted: {done:?}"
    );
    let first = &interrupted[0];
    let logs = s
        .call("task_logs", json!({"task_id": first["task_id"]}))
        .await;
    assert!(
        logs["logs"].as_array().unwrap().iter().any(|l| l["message"]
            .as_str()
            .unwrap()
            .contains("stopped unexpectedly during attempt 1")),
        "{logs}"
    );
    // The orphans of the dead server were stopped: no attempt 1 of a requeued task ever ended.
    let lines = read_lines(&runs);
    for t in &interrupted {
        let id = t["task_id"].as_str().unwrap();
        assert!(
            !lines.contains(&format!("end {id} 1")),
            "orphan of {id} kept running: {lines:?}"
        );
        assert!(lines.contains(&format!("end {id} 2")), "{lines:?}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_requeues_without_using_an_attempt() {
    let mut env = Env::new();
    env.set("ORCHESTR8_SHUTDOWN_GRACE_SECONDS", "1");
    let marker = env.path("work/seen");
    env.shell_agent(
        "long",
        &format!(
            "if [ -e {0} ]; then echo second-run; else touch {0}; sleep 999; fi",
            marker.display()
        ),
        "",
    );
    env.shell_agent("quick", "sleep 0.5; echo quick", "");
    let s = env.start().await;
    let long = s.submit("long", "long", "x", json!({})).await;
    let quick = s.submit("quick", "quick", "x", json!({})).await;
    s.until(&long, "running", |t| t["status"] == "running")
        .await;
    s.until(&quick, "running", |t| t["status"] == "running")
        .await;
    let engine = env.engine_pid().await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(engine as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_gone(engine).await;
    s.stop().await;
    assert!(
        processes_with("sleep 999").is_empty(),
        "shutdown left the agent running"
    );

    let s = env.start().await;
    // The quick task finished within the grace period.
    let q = s.status(&quick).await;
    assert_eq!(q["status"], "completed", "{q}");
    let t = s.wait_one(&long, 30).await;
    assert_eq!(t["status"], "completed");
    assert_eq!(t["result"], "second-run\n");
    assert_eq!(t["attempt"], 1, "the interrupted attempt must not count");
    let logs = s.call("task_logs", json!({"task_id": long})).await;
    assert!(logs["logs"].as_array().unwrap().iter().any(|l| l["message"]
        .as_str()
        .unwrap()
        .contains("interrupted by server shutdown")));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_engine_finishes_running_tasks_after_its_session_has_gone_then_exits() {
    let mut env = Env::new();
    env.set("ORCHESTR8_SHUTDOWN_GRACE_SECONDS", "1");
    env.shell_agent("slow", "sleep 3; echo finished", "");
    let mut raw = env.start_raw("raw.log").await;
    let id = raw.submit("slow", json!({})).await;
    let engine = env.engine_pid().await;
    raw.close_stdin(); // the client has gone
    let status = tokio::time::timeout(Duration::from_secs(5), raw.child.wait())
        .await
        .expect("a session ends with its client")
        .unwrap();
    assert!(status.success());
    // Well past the grace period the engine is still there, running the task.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        alive(engine),
        "the engine exited while its task was running"
    );
    env.wait_engines_gone().await;
    assert!(
        env.engine_log()
            .contains("staying up: tasks pending or running"),
        "{}",
        env.engine_log()
    );
    let s = env.start().await;
    let t = s.status(&id).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["attempt"], 1);
    assert_eq!(t["result"], "finished\n");
    s.stop().await;
}

/// An answer means durable before the database has the row: writes are journaled
/// (`<db>.journal`) and folded into DuckDB a little later. A kill -9 in between must lose nothing:
/// the next start replays the journal. The kill comes right after the answers, while the journal
/// still holds them (checked, so the test proves the replay path rather than a lucky fold).
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_before_the_fold_replays_the_journal() {
    let env = Env::new();
    env.shell_agent("ok", "echo done", "");
    let journal = env.path("db/o8.duckdb.journal");
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let mut replayed = Vec::new();
    for round in 0..5 {
        let s = env.start().await;
        let parked = s
            .submit(
                &format!("parked-{round}"),
                "ok",
                "wait for me",
                json!({"run_at": later, "idempotency_key": format!("key-{round}"),
                       "metadata": {"round": round}}),
            )
            .await;
        let len = std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0);
        s.kill9(&env).await;
        if len > 0 {
            replayed.push(parked);
        }
        if !replayed.is_empty() {
            break;
        }
    }
    assert!(
        !replayed.is_empty(),
        "the journal was already folded at every kill; the replay path was not exercised"
    );

    let s = env.start().await;
    for id in &replayed {
        let t = s.status(id).await;
        assert_eq!(t["status"], "pending", "{t}");
        assert!(t["metadata"]["round"].as_i64().is_some(), "{t}");
        // Its idempotency key came back with it: the same key answers the same task.
        let key = format!("key-{}", t["metadata"]["round"]);
        let again = s
            .call(
                "task_async",
                json!({"name": "dup", "agent_name": "ok", "agent_instructions": "x",
                       "idempotency_key": key}),
            )
            .await;
        assert_eq!(again["task_id"].as_str(), Some(id.as_str()), "{again}");
    }
    // Replay emptied the journal, and a listing (which reads the tables) has the tasks.
    assert_eq!(std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0), 0);
    let listed = s.call("list_tasks", json!({"status": "pending"})).await;
    let listed = listed["tasks"].as_array().unwrap();
    for id in &replayed {
        assert!(listed.iter().any(|t| t["task_id"] == id.as_str()), "{id}");
    }
    s.stop().await;
}

/// A journal record that is whole (its CRC holds) but that this build cannot read was written by
/// another version: the server refuses to start and leaves the journal as it is, rather than
/// dropping that write and the ones after it.
#[tokio::test(flavor = "multi_thread")]
async fn a_journal_from_another_version_stops_the_start_and_is_kept() {
    let env = Env::new();
    env.shell_agent("ok", "echo done", "");
    let s = env.start().await;
    s.submit("before", "ok", "x", json!({})).await;
    s.stop().await;
    env.stop_engines().await;

    let journal = env.path("db/o8.duckdb.journal");
    let payload = br#"[{"OpOfAFutureRelease":{"x":1}}]"#;
    let seq = u64::MAX / 2;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(payload);
    let mut record = Vec::new();
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc.finalize().to_le_bytes());
    record.extend_from_slice(&seq.to_le_bytes());
    record.extend_from_slice(payload);
    std::fs::write(&journal, &record).unwrap();

    // A session: the engine it starts stops before serving, and the session says why.
    let (code, _, err) = env.cli(&[]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot read") && err.contains("move the journal aside"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&journal).unwrap(),
        record,
        "the journal is kept"
    );

    // Moved aside, the database starts with everything it had.
    std::fs::rename(&journal, env.path("journal.saved")).unwrap();
    let s = env.start().await;
    assert_eq!(s.call("list_tasks", json!({})).await["total"], 1);
    s.stop().await;
    env.stop_engines().await;
}

/// A file written by the release before tasks recorded their session (schema version 2): the
/// engine adds the columns, a finished task reads as before, a pending one runs, new ones record
/// their project.
#[tokio::test(flavor = "multi_thread")]
async fn a_version_2_database_is_migrated_and_keeps_its_tasks() {
    let env = Env::new();
    env.shell_agent("echo", "cat", "");
    let schema = include_str!("../../schema.sql");
    let cut = schema
        .find("    -- After updated_at")
        .expect("the marker in schema.sql");
    let end = schema[cut..].find(");").unwrap() + cut;
    let v2 = format!(
        "{}\n{}",
        schema[..cut].trim_end().trim_end_matches(','),
        &schema[end..]
    );
    assert!(!v2.contains("agents_dir"), "{v2}");
    // Files of those versions had a primary key on tasks; the migration rebuilds the table
    // without it.
    let v2 = v2.replacen(
        "task_id          UUID NOT NULL,",
        "task_id          UUID PRIMARY KEY,",
        1,
    );
    assert!(v2.contains("UUID PRIMARY KEY"), "{v2}");
    let (done, waiting) = (
        "0190b8a0-0000-7000-8000-000000000001",
        "0190b8a0-0000-7000-8000-000000000002",
    );
    std::fs::create_dir_all(env.path("db")).unwrap();
    {
        let conn = duckdb::Connection::open(env.db()).unwrap();
        conn.execute_batch(&v2).unwrap();
        conn.execute_batch(&format!(
            "INSERT INTO schema_version VALUES (1, now()::TIMESTAMP), (2, now()::TIMESTAMP);
             INSERT INTO tasks (task_id, name, agent_name, instructions, status, priority, created_at,
                 scheduled_at, started_at, completed_at, attempt, max_retries, retry_floor,
                 timeout_seconds, dependencies, result, updated_at)
             VALUES ('{done}', 'old', 'echo', 'x', 'completed', 1, now()::TIMESTAMP, now()::TIMESTAMP,
                 now()::TIMESTAMP, now()::TIMESTAMP, 1, 0, 0, 60, '[]', 'from v2', now()::TIMESTAMP),
                    ('{waiting}', 'queued', 'echo', 'queued in v2', 'pending', 1, now()::TIMESTAMP,
                 now()::TIMESTAMP, NULL, NULL, 0, 0, 0, 60, '[]', NULL, now()::TIMESTAMP);"
        ))
        .unwrap();
    }
    let s = env.start().await;
    let old = s.status(done).await;
    assert_eq!(old["status"], "completed", "{old}");
    assert_eq!(old["result"], "from v2");
    assert!(old["project"].is_null(), "{old}");
    let ran = s.wait_one(waiting, 30).await;
    assert_eq!(ran["result"], "queued in v2", "{ran}");
    let id = s.submit("new", "echo", "after", json!({})).await;
    let new = s.wait_one(&id, 30).await;
    assert_eq!(
        new["project"],
        std::fs::canonicalize(env.path(""))
            .unwrap()
            .display()
            .to_string(),
        "{new}"
    );
    s.stop().await;
    env.stop_engines().await;
    // The file is at the current version now.
    let conn = duckdb::Connection::open(env.db()).unwrap();
    let v: i32 = conn
        .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 6);
    let keys: i64 = conn
        .query_row(
            "SELECT count(*) FROM duckdb_constraints() \
             WHERE table_name = 'tasks' AND constraint_type = 'PRIMARY KEY'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(keys, 0);
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 3, "the two tasks of version 2 and the new one");
    // The counts kept since the migration agree with the rows.
    let counted: i64 = conn
        .query_row(
            "SELECT sum(n) FROM task_counts WHERE status = 'completed' AND agent_name = 'echo'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(counted, 3);
}

/// The index of the idempotency keys stays in the database's memory whole once read. An engine
/// opening a file with three million keys under a 32 MiB limit makes room for that index first:
/// every keyed submit is accepted, every fold goes through, and the tasks run.
#[tokio::test(flavor = "multi_thread")]
async fn keys_outgrowing_the_memory_limit_raise_it_and_every_task_is_kept() {
    let mut env = Env::new();
    env.set("ORCHESTR8_DB_MEMORY_MIB", "32");
    env.shell_agent("ok", "echo done", "");
    let s = env.start().await;
    s.stop().await;
    env.stop_engines().await;
    // Three million keys of earlier tasks, spread over the whole index; each new key extends an
    // old one, so that looking it up walks the index down to a leaf.
    let keys: Vec<String> = {
        let conn = duckdb::Connection::open(env.db()).unwrap();
        conn.execute_batch(
            "INSERT INTO idempotency_keys SELECT md5(i::VARCHAR), uuid() FROM range(3000000) t(i);
             CHECKPOINT;",
        )
        .unwrap();
        let mut st = conn
            .prepare("SELECT md5((i * 1499)::VARCHAR) || '-new' FROM range(2000) t(i)")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(|k| k.unwrap())
            .collect()
    };
    let s = env.start().await;
    let mut ids = Vec::new();
    let mut again = 0;
    for (i, key) in keys.iter().enumerate() {
        let args = json!({"name": format!("k{i}"), "agent_name": "ok", "agent_instructions": "x",
                          "idempotency_key": key});
        loop {
            let r = s.raw("task_async", args.clone()).await;
            let v = r.structured_content.clone().unwrap_or_default();
            if r.is_error == Some(true) {
                // A read that met the limit before it was raised says so, once per raise.
                let e = v["error"].as_str().unwrap_or_default().to_string();
                assert!(e.contains("try again"), "{e}\n{}", env.engine_log());
                again += 1;
                assert!(again < 20, "refused again and again: {e}");
                continue;
            }
            ids.push(v["task_id"].as_str().unwrap().to_string());
            break;
        }
    }
    // At open, the engine made room for the keys' index ahead of need.
    let log = env.engine_log();
    assert!(log.contains("MiB of indexes in memory"), "{log}");
    assert!(!log.contains("cannot apply"), "{log}");
    // Every task ran; a read may still meet a raise and be answered "try again".
    let mut done = 0;
    for _ in 0..120 {
        let r = s
            .raw("task_wait", json!({"task_ids": ids, "timeout_seconds": 5}))
            .await;
        let v = r.structured_content.clone().unwrap_or_default();
        if r.is_error == Some(true) {
            let e = v["error"].as_str().unwrap_or_default();
            assert!(e.contains("try again"), "{e}");
            continue;
        }
        if v["timed_out"] == false {
            let tasks = v["tasks"].as_array().unwrap();
            assert!(tasks.iter().all(|t| t["status"] == "completed"), "{v}");
            done = tasks.len();
            break;
        }
    }
    assert_eq!(done, ids.len());
    // A repeated key still finds its task.
    let repeated = json!({"name": "k7", "agent_name": "ok", "agent_instructions": "x",
                          "idempotency_key": keys[7]});
    let mut found = Value::Null;
    for _ in 0..5 {
        let r = s.raw("task_async", repeated.clone()).await;
        found = r.structured_content.clone().unwrap_or_default();
        if r.is_error != Some(true) {
            break;
        }
    }
    assert_eq!(found["task_id"], ids[7], "{found}");
    s.stop().await;
}
