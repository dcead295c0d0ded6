//! Engines on several "machines" sharing one PostgreSQL: each node is its own environment (its
//! own folder, session and detached engine) pointed at the same database, driven over stdio MCP
//! as a user's Claude Code would. Tasks spread over the nodes, are waited for and cancelled from
//! any node, and outlive a node killed with -9 or frozen past its lease; so do their webhooks,
//! which a real receiver gets at least once and never twice at once. A workflow's phases run on
//! different nodes and each of its steps is taken once.

use std::collections::HashSet;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::harness::*;
use crate::pg;

/// Seconds a node stays alive to the others without a heartbeat (short, so tests are quick).
const LEASE_SECONDS: &str = "4";

/// A node: an environment of its own on the shared database.
fn node(url: &str, workers: &str) -> Env {
    let mut env = Env::new();
    env.set("ORCHESTR8_DATABASE_URL", url)
        .set("ORCHESTR8_NODE_LEASE_SECONDS", LEASE_SECONDS)
        .set("ORCHESTR8_CLAIM_POLL_MS", "100")
        .set("ORCHESTR8_WORKERS", workers);
    env
}

/// The node an attempt started on, from its log line.
fn started_on(logs: &[String]) -> Vec<String> {
    logs.iter()
        .filter_map(|l| l.split(" started on node ").nth(1))
        .filter_map(|rest| rest.split(' ').next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_spread_over_every_node_and_are_seen_alike_from_each() {
    let url = pg::server().fresh_database().await;
    let nodes: Vec<Env> = (0..3).map(|_| node(&url, "2")).collect();
    for env in &nodes {
        env.shell_agent("work", "sleep 0.4; echo \"done $ORCHESTR8_ATTEMPT\"", "");
    }
    let sessions = futures_util::future::join_all(nodes.iter().map(|e| e.start())).await;
    let (a, b, c) = (&sessions[0], &sessions[1], &sessions[2]);

    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(a.submit(&format!("t{i}"), "work", "x", json!({})).await);
    }
    // A dependent waits for its dependency, whichever nodes run them.
    let after = a
        .submit("after", "work", "x", json!({"dependencies": [ids[11]]}))
        .await;
    // Waited for on another node than the one it was submitted to.
    let done = b.wait_all(&ids, 60).await;
    for t in &done {
        assert_eq!(t["status"], "completed", "{t}");
        assert_eq!(t["result"], "done 1\n");
        assert_eq!(t["attempt"], 1);
    }
    let last = c.wait_one(&after, 30).await;
    assert_eq!(last["status"], "completed", "{last}");
    assert!(time(&last, "started_at") >= time(&done[11], "completed_at"));

    let mut ran_on = HashSet::new();
    for id in &ids {
        let on = started_on(&c.log_messages(id).await);
        assert_eq!(on.len(), 1, "one attempt each: {on:?}");
        ran_on.extend(on);
    }
    assert_eq!(ran_on.len(), 3, "every node took tasks: {ran_on:?}");

    // Every node lists the same tasks.
    for s in &sessions {
        let listed = s.call("list_tasks", json!({"limit": 100})).await;
        assert_eq!(listed["total"], 13, "{listed}");
    }
    // The CLI's status shows the cluster's tasks and this node's workers.
    let status = nodes[2].cli_json(&["status"]).await;
    assert_eq!(status["counts"]["completed"], 13, "{status}");
    assert_eq!(status["workers"], 2, "{status}");
    // A failure cancels its dependents on every node's view.
    nodes[0].shell_agent("broken", "sleep 1; echo no >&2; exit 3", "");
    let broken = a.submit("broken", "broken", "x", json!({})).await;
    let child = a
        .submit("child", "work", "x", json!({"dependencies": [broken]}))
        .await;
    let grandchild = a
        .submit("grandchild", "work", "x", json!({"dependencies": [child]}))
        .await;
    let ended = b.wait_all(&[broken.clone(), child, grandchild], 30).await;
    assert_eq!(ended[0]["status"], "failed");
    assert_eq!(ended[1]["status"], "cancelled");
    assert!(
        ended[1]["error"].as_str().unwrap().contains(&broken),
        "{}",
        ended[1]
    );
    assert_eq!(ended[2]["status"], "cancelled");
    // A retry from another node runs the failed task again; its cancelled dependent cannot
    // be retried while its dependency has not completed.
    let retried = c.call("task_retry", json!({"task_id": broken})).await;
    assert_eq!(retried["status"], "pending", "{retried}");
    let again = b.wait_one(&broken, 30).await;
    assert_eq!(
        (again["status"].as_str(), again["attempt"].as_u64()),
        (Some("failed"), Some(2)),
        "{again}"
    );
    assert!(c
        .log_messages(&broken)
        .await
        .iter()
        .any(|l| l == "retried by request; back to pending"));
    let child_id = ended[1]["task_id"].as_str().unwrap();
    let refused = c.call_err("task_retry", json!({"task_id": child_id})).await;
    assert!(refused.contains("task_retry that one first"), "{refused}");
    let not_ended = c.call_err("task_retry", json!({"task_id": ids[0]})).await;
    assert!(
        not_ended.contains("only failed or cancelled"),
        "{not_ended}"
    );
    let refused = c
        .call_err(
            "task_async",
            json!({"name": "late", "agent_name": "work", "agent_instructions": "x",
                   "dependencies": [broken]}),
        )
        .await;
    assert!(refused.contains("could never start"), "{refused}");
    let bad_queue = c
        .call_err(
            "task_async",
            json!({"name": "q", "agent_name": "work", "agent_instructions": "x",
                   "queue": "no spaces"}),
        )
        .await;
    assert!(bad_queue.contains("queue"), "{bad_queue}");
    for s in sessions {
        s.stop().await;
    }
    for env in &nodes {
        env.stop_engines().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_with_9_has_its_running_tasks_run_again_elsewhere_never_twice_at_once() {
    let url = pg::server().fresh_database().await;
    let doomed = node(&url, "4");
    let survivor = node(&url, "4");
    // Each run holds its task's lock while it works (the torture test's technique): a run that
    // finds the lock taken means two runs of one task at once.
    let locks = doomed.path("locks");
    std::fs::create_dir_all(&locks).unwrap();
    let script = format!(
        "echo $$ >> {locks}/pids; exec 9>{locks}/$ORCHESTR8_TASK_ID.lock; \
         flock -n 9 || {{ echo $ORCHESTR8_TASK_ID >> {locks}/twice; exit 1; }}; \
         sleep 5; echo \"attempt $ORCHESTR8_ATTEMPT\"",
        locks = locks.display()
    );
    for env in [&doomed, &survivor] {
        env.shell_agent("slow", &script, "max_retries: 1");
    }
    let a = doomed.start().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(a.submit(&format!("s{i}"), "slow", "x", json!({})).await);
    }
    for id in &ids {
        a.until(id, "running", |t| t["status"] == "running").await;
    }
    let pids = || -> Vec<u32> {
        read_lines(&locks.join("pids"))
            .iter()
            .filter_map(|p| p.trim().parse().ok())
            .collect()
    };
    while pids().len() < 3 {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let first_runs = pids();
    let b = survivor.start().await;
    // The machine's engine dies without a word; its session is left, as a crashed window's.
    a.kill9_session_only().await;
    doomed.kill9_engines().await;
    let killed_at = std::time::Instant::now();
    // Its warden stops what it ran at once, long before the cluster gives the node up.
    for pid in &first_runs {
        wait_gone(*pid).await;
    }
    let stopped_after = killed_at.elapsed();
    assert!(
        stopped_after < Duration::from_secs(2),
        "the dead node's agents ran on for {stopped_after:?}"
    );
    let done = b.wait_all(&ids, 60).await;
    let rerun_after = killed_at.elapsed();
    for t in &done {
        assert_eq!(t["status"], "completed", "{t}");
        assert_eq!(t["attempt"], 2, "the interrupted attempt counts: {t}");
        assert_eq!(t["result"], "attempt 2\n");
    }
    assert!(
        read_lines(&locks.join("twice")).is_empty(),
        "a task ran twice at once"
    );
    let logs = b.log_messages(&ids[0]).await;
    assert!(
        logs.iter()
            .any(|l| l.contains("stopped answering during attempt 1")),
        "{logs:?}"
    );
    let on = started_on(&logs);
    assert_eq!(on.len(), 2, "{logs:?}");
    assert_ne!(on[0], on[1], "attempt 2 ran on the other node");
    eprintln!(
        "agents stopped {stopped_after:?} after the kill; tasks done again after {rerun_after:?}"
    );
    b.stop().await;
    survivor.stop_engines().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_running_on_one_node_is_cancelled_from_another() {
    let url = pg::server().fresh_database().await;
    let runs = node(&url, "2");
    let asks = node(&url, "2");
    runs.shell_agent(
        "long",
        &format!("echo $$ > {}; exec sleep 60", runs.path("pid").display()),
        "",
    );
    let a = runs.start().await;
    // The asking node serves another queue, so the task can only run on the first.
    let mut asks = asks;
    asks.set("ORCHESTR8_QUEUES", "elsewhere");
    let b = asks.start().await;
    let id = a.submit("long", "long", "x", json!({})).await;
    a.until(&id, "running", |t| t["status"] == "running").await;
    let pid_file = runs.path("pid");
    for _ in 0..200 {
        if std::fs::read_to_string(&pid_file).is_ok_and(|p| !p.trim().is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let cancelled = b.call("task_cancel", json!({"task_id": id})).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    wait_gone(pid).await;
    let again = b.call_err("task_cancel", json!({"task_id": id})).await;
    assert!(again.contains("already cancelled"), "{again}");
    a.stop().await;
    b.stop().await;
    runs.stop_engines().await;
    asks.stop_engines().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_frozen_past_its_lease_cannot_record_a_stale_outcome() {
    let url = pg::server().fresh_database().await;
    let frozen = node(&url, "2");
    let other = node(&url, "2");
    for env in [&frozen, &other] {
        // Attempt 1 would run long past the lease; its node is frozen meanwhile.
        env.shell_agent(
            "echoes",
            "[ \"$ORCHESTR8_ATTEMPT\" = 1 ] && sleep 8; echo \"attempt $ORCHESTR8_ATTEMPT\"",
            "max_retries: 2",
        );
    }
    let a = frozen.start().await;
    let id = a.submit("t", "echoes", "x", json!({})).await;
    a.until(&id, "running", |t| t["status"] == "running").await;
    let b = other.start().await;
    let engine = frozen.engine_pid().await;
    kill(Pid::from_raw(engine as i32), Signal::SIGSTOP).unwrap();
    // Past the lease: the cluster gives the node up and the task runs again on the other node.
    let done = b.wait_one(&id, 60).await;
    kill(Pid::from_raw(engine as i32), Signal::SIGCONT).unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], "attempt 2\n");
    // Thawed, the old node's attempt 1 ends (its warden stopped it while it was frozen, or it
    // runs out); its outcome must not replace attempt 2's.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let after: Value = b.status(&id).await;
    assert_eq!(after["result"], "attempt 2\n", "{after}");
    assert_eq!(after["attempt"], 2);
    a.kill9_session_only().await;
    b.stop().await;
    frozen.kill9_engines().await;
    other.stop_engines().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_for_another_nodes_queue_wakes_that_node_at_once() {
    let url = pg::server().fresh_database().await;
    // Nodes that would look for work only once a minute: the submit's notification wakes them.
    let mut submits = node(&url, "1");
    submits
        .set("ORCHESTR8_QUEUES", "here")
        .set("ORCHESTR8_CLAIM_POLL_MS", "60000");
    let mut runs = node(&url, "1");
    runs.set("ORCHESTR8_QUEUES", "gpu")
        .set("ORCHESTR8_CLAIM_POLL_MS", "60000");
    for env in [&submits, &runs] {
        env.shell_agent("quick", "echo \"on $ORCHESTR8_NODE_ID\"", "queue: gpu");
    }
    let a = submits.start().await;
    let b = runs.start().await;
    // Both have joined and listen; the first look after joining is behind them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    // The agent's frontmatter names the queue; the submitting node does not serve it.
    let id = a.submit("q", "quick", "x", json!({})).await;
    let done = a.wait_one(&id, 30).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken only by polling: {:?}",
        started.elapsed()
    );
    let on = started_on(&a.log_messages(&id).await);
    assert_eq!(
        done["result"].as_str().unwrap().trim(),
        format!("on {}", on[0])
    );
    a.stop().await;
    b.stop().await;
    submits.stop_engines().await;
    runs.stop_engines().await;
}

/// A webhook receiver that holds the first request of every event for a while (so that a node
/// can die in the middle of a send), answers later ones at once, and notes any request for an
/// event that arrives while another for the same event is still being answered.
#[derive(Clone, Default)]
struct Receiver {
    state: std::sync::Arc<std::sync::Mutex<ReceiverState>>,
}

#[derive(Default)]
struct ReceiverState {
    /// Requests seen per `webhook-id`.
    seen: std::collections::HashMap<String, u32>,
    /// Requests being answered now per `webhook-id`.
    open: std::collections::HashMap<String, u32>,
    /// Events sent twice at once.
    overlaps: Vec<String>,
    /// Event types by id, from the payloads.
    types: std::collections::HashMap<String, String>,
}

/// Closes a request's entry when its handler ends or is dropped (its sender went away).
struct Open(Receiver, String);

impl Drop for Open {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap();
        if let Some(n) = s.open.get_mut(&self.1) {
            *n -= 1;
        }
    }
}

impl Receiver {
    async fn start(first_held: Duration) -> (Receiver, String) {
        let r = Receiver::default();
        let app = axum::Router::new().fallback({
            let r = r.clone();
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let r = r.clone();
                async move {
                    let id = headers["webhook-id"].to_str().unwrap().to_string();
                    let payload: Value = serde_json::from_slice(&body).unwrap();
                    let first = {
                        let mut s = r.state.lock().unwrap();
                        let open = s.open.entry(id.clone()).or_default();
                        *open += 1;
                        if *open > 1 {
                            s.overlaps.push(id.clone());
                        }
                        s.types
                            .insert(id.clone(), payload["type"].as_str().unwrap().into());
                        let seen = s.seen.entry(id.clone()).or_default();
                        *seen += 1;
                        *seen == 1
                    };
                    let _open = Open(r.clone(), id);
                    if first {
                        tokio::time::sleep(first_held).await;
                    }
                    axum::http::StatusCode::OK
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, url)
    }

    fn open_now(&self) -> u32 {
        self.state.lock().unwrap().open.values().sum()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_webhook_arrives_though_the_node_sending_it_is_killed_and_none_is_sent_twice_at_once()
{
    let url = pg::server().fresh_database().await;
    let (receiver, hook) = Receiver::start(Duration::from_millis(1_500)).await;
    // A 2 s timeout makes each claim last 9 s: the dead node's sends are taken over then.
    let envs: Vec<Env> = (0..3)
        .map(|i| {
            let mut env = node(&url, "4");
            env.set("ORCHESTR8_WEBHOOK_TIMEOUT_MS", "2000")
                .set("ORCHESTR8_WEBHOOK_BACKOFF_BASE_MS", "200")
                .set("ORCHESTR8_WEBHOOK_BACKOFF_MAX_MS", "1000");
            if i == 0 {
                env.set("ORCHESTR8_QUEUES", "default,hooks");
            }
            env.shell_agent("quick", "echo ok", "");
            env.shell_agent("failing", "echo no >&2; exit 2", "max_retries: 0");
            env
        })
        .collect();
    let doomed = envs[0].start().await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let args = json!({"webhook_url": hook, "queue": "hooks"});
        ids.push(doomed.submit(&format!("h{i}"), "quick", "x", args).await);
    }
    let failing = doomed
        .submit(
            "f",
            "failing",
            "x",
            json!({"webhook_url": hook, "queue": "hooks"}),
        )
        .await;
    let dependent = doomed
        .submit(
            "d",
            "quick",
            "x",
            json!({"webhook_url": hook, "dependencies": [failing]}),
        )
        .await;
    // The only node so far sends the events (four at a time to one host); the receiver holds
    // each first send, and the node dies in the middle of them.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while receiver.open_now() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the node never sent its events; open: {}",
            receiver.open_now()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.kill9_session_only().await;
    envs[0].kill9_engines().await;
    let killed_at = std::time::Instant::now();
    let cut_off: Vec<String> = {
        let s = receiver.state.lock().unwrap();
        s.seen.keys().cloned().collect()
    };
    assert!(cut_off.len() >= 4, "{cut_off:?}");
    let others = futures_util::future::join_all(envs[1..].iter().map(|e| e.start())).await;

    // Every event is delivered by another node once the dead node's claims run out.
    let mut all = ids.clone();
    all.extend([failing.clone(), dependent.clone()]);
    for id in &all {
        let mut delivered = None;
        for _ in 0..300 {
            let history = others[0]
                .call("webhook_history", json!({"task_id": id}))
                .await;
            delivered = history["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["status_code"] == 200)
                .cloned();
            if delivered.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(delivered.is_some(), "the event of task {id} never arrived");
    }
    let took = killed_at.elapsed();
    {
        let s = receiver.state.lock().unwrap();
        assert!(
            s.overlaps.is_empty(),
            "sent twice at once: {:?}",
            s.overlaps
        );
        assert_eq!(s.seen.len(), 6, "one event per task: {:?}", s.seen);
        for id in &cut_off {
            assert!(
                s.seen[id] >= 2,
                "a send cut off by the kill is sent again: {id} in {:?}",
                s.seen
            );
        }
        let mut types: Vec<&str> = s.types.values().map(String::as_str).collect();
        types.sort();
        assert_eq!(
            types,
            [
                "task.cancelled",
                "task.completed",
                "task.completed",
                "task.completed",
                "task.completed",
                "task.failed"
            ]
        );
    }
    eprintln!("webhooks of the killed node delivered {took:?} after the kill");
    let owed = envs[1].cli_json(&["status"]).await;
    assert_eq!(owed["webhooks_owed"], 0, "{owed}");
    for s in others {
        s.stop().await;
    }
    for env in &envs[1..] {
        env.stop_engines().await;
    }
}

/// The most spans open at once, from `+ <ns> <name>` and `- <ns> <name>` lines.
fn most_at_once(lines: &[String]) -> usize {
    let mut marks: Vec<(u128, i32)> = lines
        .iter()
        .filter_map(|l| {
            let mut parts = l.split(' ');
            let sign = parts.next()?;
            let at: u128 = parts.next()?.parse().ok()?;
            Some((at, if sign == "+" { 1 } else { -1 }))
        })
        .collect();
    // An end and a start at the same instant do not overlap.
    marks.sort();
    let (mut open, mut most) = (0, 0);
    for (_, d) in marks {
        open += d;
        most = most.max(open);
    }
    most as usize
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workflow_whose_phases_finish_on_different_nodes_advances_exactly_once() {
    use crate::workflows::{phase, phase_of, task, wait_workflow};
    let url = pg::server().fresh_database().await;
    let (receiver, hook) = Receiver::start(Duration::ZERO).await;
    // Design runs on a or b, build only on a, test only on c: each phase ends on another node
    // than the next one starts on.
    let queues = ["default,design,build", "default,design", "default,test"];
    let envs: Vec<Env> = queues
        .iter()
        .map(|q| {
            let mut env = node(&url, "2");
            env.set("ORCHESTR8_QUEUES", q);
            env
        })
        .collect();
    let shared = envs[0].path("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let work = format!(
        "S={}; echo \"+ $(date +%s%N) $ORCHESTR8_TASK_NAME\" >> $S/spans; \
         cat > $S/\"$ORCHESTR8_TASK_NAME\".in; sleep \"${{DELAY:-0.4}}\"; \
         echo \"- $(date +%s%N) $ORCHESTR8_TASK_NAME\" >> $S/spans; \
         echo \"result of $ORCHESTR8_TASK_NAME\"",
        shared.display()
    );
    for env in &envs {
        for q in ["design", "build", "test"] {
            env.shell_agent(&format!("{q}er"), &work, &format!("queue: {q}"));
        }
        env.shell_agent(
            "boom",
            "sleep 1.5; echo broken >&2; exit 1",
            "queue: design\nmax_retries: 0",
        );
        env.shell_agent("slow", "sleep 60", "queue: design");
    }
    let sessions = futures_util::future::join_all(envs.iter().map(|e| e.start())).await;
    let (a, b, c) = (&sessions[0], &sessions[1], &sessions[2]);

    let created = a
        .call(
            "workflow_create",
            json!({"name": "release", "webhook_url": hook, "max_parallel": 2}),
        )
        .await;
    let w = created["workflow_id"].as_str().unwrap().to_string();
    phase(a, &w, "design", "Design", &[]).await;
    phase(a, &w, "build", "Build", &["design"]).await;
    phase(a, &w, "test", "Test", &["build"]).await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        tasks.push(task(a, &w, "design", &format!("d{i}"), "designer", json!({})).await);
    }
    for i in 0..2 {
        tasks.push(task(a, &w, "build", &format!("b{i}"), "builder", json!({})).await);
    }
    tasks.push(task(a, &w, "test", "t0", "tester", json!({})).await);
    // The shape is checked on a cluster as on one engine.
    let cycle = a
        .call_err(
            "workflow_add_phase",
            json!({"workflow_id": w, "phase_id": "x", "name": "X", "depends_on": ["later"]}),
        )
        .await;
    assert!(cycle.contains("add phases in order"), "{cycle}");

    let started = b.call("workflow_start", json!({"workflow_id": w})).await;
    assert_eq!(started["status"], "running", "{started}");
    let late = c
        .call_err(
            "workflow_add_task",
            json!({"workflow_id": w, "phase_id": "test", "name": "late",
                   "agent_name": "tester", "agent_instructions": "x"}),
        )
        .await;
    assert!(late.contains("only be added while it is a draft"), "{late}");
    let st = wait_workflow(c, &w, "completed").await;
    assert_eq!(st["progress"], 100, "{st}");

    let done = c.wait_all(&tasks, 30).await;
    let mut nodes_of = std::collections::HashMap::new();
    for (t, id) in done.iter().zip(&tasks) {
        assert_eq!(t["status"], "completed", "{t}");
        assert_eq!(t["attempt"], 1, "every task ran once: {t}");
        let on = started_on(&c.log_messages(id).await);
        nodes_of
            .entry(t["name"].as_str().unwrap().chars().next().unwrap())
            .or_insert_with(HashSet::new)
            .extend(on);
    }
    let (build_on, test_on) = (&nodes_of[&'b'], &nodes_of[&'t']);
    assert_eq!(build_on.len(), 1, "{nodes_of:?}");
    assert!(build_on.is_disjoint(test_on), "{nodes_of:?}");
    // Each phase opened once, after the phase before it had completed.
    for (before, after) in [("design", "build"), ("build", "test")] {
        let ended = time(phase_of(&st, before), "completed_at");
        let opened = time(phase_of(&st, after), "started_at");
        assert!(opened >= ended, "{before} → {after}: {st}");
    }
    // Results travel down, across nodes, to every later phase.
    let test_input = std::fs::read_to_string(shared.join("t0.in")).unwrap();
    for upstream in ["d0", "d3", "b0", "b1"] {
        assert!(
            test_input.contains(&format!("result of {upstream}")),
            "{test_input}"
        );
    }
    // max_parallel holds across the nodes.
    let spans = read_lines(&shared.join("spans"));
    assert_eq!(spans.len(), 14, "{spans:?}");
    let most = most_at_once(&spans);
    assert!(
        most <= 2,
        "{most} tasks of the workflow ran at once: {spans:?}"
    );

    // A failure fails the workflow once: a task running on another node is stopped there and
    // the tasks of later phases are cancelled.
    let f = a
        .call(
            "workflow_create",
            json!({"name": "broken", "webhook_url": hook}),
        )
        .await["workflow_id"]
        .as_str()
        .unwrap()
        .to_string();
    phase(a, &f, "design", "Design", &[]).await;
    phase(a, &f, "build", "Build", &["design"]).await;
    let slow = task(a, &f, "design", "slow", "slow", json!({})).await;
    let boom = task(a, &f, "design", "boom", "boom", json!({})).await;
    let never = task(a, &f, "build", "never", "builder", json!({})).await;
    a.call("workflow_start", json!({"workflow_id": f})).await;
    c.until(&slow, "running", |t| t["status"] == "running")
        .await;
    let failed = wait_workflow(b, &f, "failed").await;
    assert!(
        failed["error"].as_str().unwrap().contains("broken"),
        "{failed}"
    );
    let ended = c
        .wait_all(&[slow.clone(), boom.clone(), never.clone()], 30)
        .await;
    assert_eq!(ended[0]["status"], "cancelled", "{}", ended[0]);
    assert_eq!(ended[1]["status"], "failed", "{}", ended[1]);
    assert_eq!(ended[2]["status"], "cancelled", "{}", ended[2]);
    assert_eq!(phase_of(&failed, "build")["status"], "cancelled");

    // A cancel from another node than the one running its task.
    let k = a
        .call(
            "workflow_create",
            json!({"name": "stopped", "webhook_url": hook}),
        )
        .await["workflow_id"]
        .as_str()
        .unwrap()
        .to_string();
    phase(a, &k, "design", "Design", &[]).await;
    let long = task(a, &k, "design", "long", "slow", json!({})).await;
    a.call("workflow_start", json!({"workflow_id": k})).await;
    b.until(&long, "running", |t| t["status"] == "running")
        .await;
    let cancelled = c.call("workflow_cancel", json!({"workflow_id": k})).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert_eq!(b.wait_one(&long, 30).await["status"], "cancelled");
    let listed = b.call("list_workflows", json!({})).await;
    assert_eq!(listed["total"], 3, "{listed}");

    // One event per workflow: each step was taken once, whichever node took it.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let types = loop {
        let types: Vec<String> = {
            let s = receiver.state.lock().unwrap();
            let mut t: Vec<String> = s.types.values().cloned().collect();
            t.sort();
            t
        };
        if types.len() >= 3 || std::time::Instant::now() > deadline {
            break types;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        types,
        [
            "workflow.cancelled",
            "workflow.completed",
            "workflow.failed"
        ]
    );
    assert_eq!(
        receiver.state.lock().unwrap().types.len(),
        3,
        "no event twice"
    );
    let history = a.call("webhook_history", json!({"workflow_id": w})).await;
    assert_eq!(history["deliveries"][0]["status_code"], 200, "{history}");
    for s in sessions {
        s.stop().await;
    }
    for env in &envs {
        env.stop_engines().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ended_and_prune_work_on_a_cluster_whichever_node_ran_the_tasks() {
    let url = pg::server().fresh_database().await;
    let here = node(&url, "2");
    let mut there = node(&url, "2");
    there.set("ORCHESTR8_QUEUES", "default,remote");
    for env in [&here, &there] {
        env.shell_agent("echo", "cat", "");
    }
    let proj = here.path("proj");
    std::fs::create_dir_all(&proj).unwrap();
    let b = there.start().await;
    let a = here.start_in(&proj).await;
    let id = a
        .submit("far", "echo", "done far away", json!({"queue": "remote"}))
        .await;
    let t = a.wait_one(&id, 30).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(started_on(&a.log_messages(&id).await).len(), 1);

    let project = proj.to_str().unwrap();
    let (code, told, err) = here.cli(&["ended", "--project", project]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        told.contains(&id) && told.contains("done far away"),
        "{told}"
    );
    // Told once, and the book of what was told is kept on this machine, beside its files.
    let (_, again, _) = here.cli(&["ended", "--project", project]).await;
    assert!(!again.contains(&id), "{again}");

    // Prune removes old finished work — a workflow whole — from any node, and nothing newer.
    let w = b.call("workflow_create", json!({"name": "old"})).await["workflow_id"]
        .as_str()
        .unwrap()
        .to_string();
    crate::workflows::phase(&b, &w, "only", "Only", &[]).await;
    let wt = crate::workflows::task(&b, &w, "only", "wt", "echo", json!({})).await;
    b.call("workflow_start", json!({"workflow_id": w})).await;
    b.wait_one(&wt, 30).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let fresh = a.submit("fresh", "echo", "x", json!({})).await;
    a.wait_one(&fresh, 30).await;
    let r = here.cli_json(&["prune", "--older-than", "2s"]).await;
    assert_eq!(
        (r["tasks"].as_u64(), r["workflows"].as_u64()),
        (Some(2), Some(1)),
        "{r}"
    );
    assert!(r["log_lines"].as_u64().unwrap() >= 4, "{r}");
    for gone in [&id, &wt] {
        let e = b.call_err("task_status", json!({"task_id": gone})).await;
        assert!(e.contains("no such task"), "{e}");
    }
    assert_eq!(b.wait_one(&fresh, 5).await["status"], "completed");
    a.stop().await;
    b.stop().await;
    here.stop_engines().await;
    there.stop_engines().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rest_api_and_mcp_over_http_of_every_node_serve_the_one_cluster() {
    let url = pg::server().fresh_database().await;
    let token = "cluster-token";
    let envs: Vec<Env> = (0..2).map(|_| node(&url, "2")).collect();
    for env in &envs {
        env.shell_agent("echo", "cat", "");
    }
    let a = envs[0].start_api(Some(token)).await;
    let b = envs[1].start_api(Some(token)).await;
    for api in [&a, &b] {
        let (code, health) = api.get("/health").await;
        assert_eq!(code, 200, "{health}");
    }

    // Submitted over REST to one node, followed over REST and MCP on the other.
    let (code, created) = a
        .post(
            "/api/tasks",
            json!({"name": "r", "agent_name": "echo", "agent_instructions": "over rest"}),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    let id = created["task_id"].as_str().unwrap().to_string();
    let mut mcp = crate::mcp_http::McpHttp::new(&b.base, Some(token));
    mcp.initialize().await;
    let waited = mcp
        .call(
            "task_wait",
            json!({"task_ids": [id], "timeout_seconds": 30}),
        )
        .await;
    let task = &waited["structuredContent"]["tasks"][0];
    assert_eq!(task["status"], "completed", "{waited}");
    assert_eq!(task["result"], "over rest");
    let (code, seen) = b.get(&format!("/api/tasks/{id}")).await;
    assert_eq!((code.as_u16(), &seen["result"]), (200, &json!("over rest")));
    let (_, listed) = a.get("/api/tasks?status=completed").await;
    assert_eq!(listed["total"], 1, "{listed}");

    // A workflow built over MCP on one node runs and is read over REST on the other.
    let w = mcp
        .call("workflow_create", json!({"name": "over http"}))
        .await["structuredContent"]["workflow_id"]
        .as_str()
        .unwrap()
        .to_string();
    mcp.call(
        "workflow_add_phase",
        json!({"workflow_id": w, "phase_id": "one", "name": "One"}),
    )
    .await;
    mcp.call(
        "workflow_add_task",
        json!({"workflow_id": w, "phase_id": "one", "name": "wt",
               "agent_name": "echo", "agent_instructions": "in a workflow"}),
    )
    .await;
    let (code, st) = a
        .post(&format!("/api/workflows/{w}/start"), json!({}))
        .await;
    assert_eq!(
        (code.as_u16(), &st["status"]),
        (200, &json!("running")),
        "{st}"
    );
    let mut status = Value::Null;
    for _ in 0..400 {
        status = a.get(&format!("/api/workflows/{w}/status")).await.1;
        if status["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status["status"], "completed", "{status}");

    // Each node counts the tasks it accepted and the ends it recorded.
    let mut finished = 0.0;
    for api in [&a, &b] {
        let text = reqwest::get(format!("{}/metrics", api.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        finished += text
            .lines()
            .filter(|l| {
                l.starts_with("orchestr8_tasks_finished_total{agent=\"echo\",status=\"completed\"}")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    assert_eq!(finished, 2.0, "one task and one workflow task ended");

    // A diff of a task that was not isolated is refused with the single engine's reason, and
    // the node stays up.
    let (code, diff) = b.get(&format!("/api/tasks/{id}/diff")).await;
    assert_eq!(code, 409, "{diff}");
    assert!(
        diff.to_string().contains("did not run in a worktree"),
        "{diff}"
    );
    let (code, _) = b.get("/health").await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_engines_database_copied_into_postgres_carries_on_as_a_cluster() {
    let url = pg::server().fresh_database().await;
    let single = Env::new();
    single.shell_agent("echo", "echo working >&2; cat", "");
    single.shell_agent("fails", "echo broken >&2; exit 3", "max_retries: 0");
    let s = single.start().await;
    let done = s
        .submit("done", "echo", "kept", json!({"idempotency_key": "once"}))
        .await;
    let failed = s.submit("failed", "fails", "x", json!({})).await;
    let later = (chrono::Utc::now() + chrono::Duration::seconds(4)).to_rfc3339();
    let waiting = s
        .submit(
            "later",
            "echo",
            "ran on the cluster",
            json!({"run_at": later}),
        )
        .await;
    let w = s.call("workflow_create", json!({"name": "moved"})).await["workflow_id"]
        .as_str()
        .unwrap()
        .to_string();
    crate::workflows::phase(&s, &w, "one", "One", &[]).await;
    let wt = crate::workflows::task(&s, &w, "one", "wt", "echo", json!({})).await;
    s.call("workflow_start", json!({"workflow_id": w})).await;
    s.wait_all(&[done.clone(), failed.clone(), wt.clone()], 30)
        .await;

    // Not while an engine uses the file.
    let (code, _, err) = single.cli(&["copy-to-postgres", &url]).await;
    assert_eq!(code, 1);
    assert!(err.contains("stop it first"), "{err}");
    s.stop().await;
    single.stop_engines().await;

    // Not while a node runs on the database.
    let early = node(&url, "1");
    let e = early.start().await;
    let (code, _, err) = single.cli(&["copy-to-postgres", &url]).await;
    assert_eq!(code, 1);
    assert!(err.contains("stop them before copying"), "{err}");
    e.stop().await;
    early.stop_engines().await;

    let (code, out, err) = single.cli(&["copy-to-postgres", &url]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("copied 4 tasks"), "{out}");
    assert!(out.contains("1 workflows"), "{out}");
    // Only into an empty database.
    let (code, _, err) = single.cli(&["copy-to-postgres", &url]).await;
    assert_eq!(code, 1);
    assert!(err.contains("already holds 4 tasks"), "{err}");

    // A node on the database carries on: history as it was, the waiting task runs there.
    let cluster = node(&url, "2");
    cluster.shell_agent("echo", "echo working >&2; cat", "");
    let n = cluster.start().await;
    let kept = n.status(&done).await;
    assert_eq!(
        (kept["status"].as_str(), kept["result"].as_str()),
        (Some("completed"), Some("kept"))
    );
    let logs = n.log_messages(&done).await;
    assert!(logs.iter().any(|l| l == "working"), "{logs:?}");
    assert_eq!(n.status(&failed).await["status"], "failed");
    let wst = crate::workflows::wstatus(&n, &w).await;
    assert_eq!(wst["status"], "completed", "{wst}");
    let ran = n.wait_one(&waiting, 30).await;
    assert_eq!(ran["status"], "completed", "{ran}");
    assert_eq!(ran["result"], "ran on the cluster");
    assert_eq!(started_on(&n.log_messages(&waiting).await).len(), 1);
    // The idempotency key came along.
    let again = n
        .call(
            "task_async",
            json!({"name": "done", "agent_name": "echo", "agent_instructions": "kept",
                   "idempotency_key": "once"}),
        )
        .await;
    assert_eq!(again["task_id"], done.as_str(), "{again}");
    assert_eq!(again["existing"], true);
    n.stop().await;
    cluster.stop_engines().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_refuses_a_file_whose_engine_died_with_a_task_running() {
    let url = pg::server().fresh_database().await;
    let single = Env::new();
    single.shell_agent("slow", "sleep 20", "");
    let s = single.start().await;
    let id = s.submit("slow", "slow", "x", json!({})).await;
    s.until(&id, "running", |t| t["status"] == "running").await;
    s.kill9_session_only().await;
    single.kill9_engines().await;
    let (code, _, err) = single.cli(&["copy-to-postgres", &url]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("were running when the engine last stopped"),
        "{err}"
    );
    // Nothing was written: the database is still empty for a copy done right.
    let db = orchestr8_async::store::postgres::Postgres::connect(
        &orchestr8_async::store::postgres::PgOptions {
            url: url.clone(),
            pool_size: 2,
        },
    )
    .await
    .unwrap();
    assert_eq!(db.held().await.unwrap(), (0, 0));
}

/// The dashboard of one node shows the whole cluster: what runs and ends on another node, its
/// log lines as they come, the aggregates, the task list paged by position, the agents.
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_of_one_node_follows_what_another_node_runs() {
    let url = pg::server().fresh_database().await;
    let token = "dash-token";
    // The watching node serves no queue of the tasks: all of them run on the other.
    let mut watching = node(&url, "2");
    watching.set("ORCHESTR8_QUEUES", "elsewhere");
    let running = node(&url, "2");
    for env in [&watching, &running] {
        env.shell_agent("echo", "cat", "");
        env.shell_agent(
            "talker",
            "for i in 1 2 3 4 5 6; do echo \"line $i\" >&2; sleep 0.4; done; cat",
            "",
        );
    }
    let a = watching.start_api(Some(token)).await;
    let b = running.start_api(Some(token)).await;
    let http = reqwest::Client::new();
    let get = |path: String| {
        http.get(format!("{}{path}", a.base))
            .bearer_auth(token)
            .send()
    };
    let data = |path: String| {
        let sent = get(path.clone());
        async move {
            let r = sent.await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            r.json::<Value>().await.unwrap()
        }
    };

    // A task submitted to the other node is seen running, then ended, on this node's feed.
    let mut feed = get("/dashboard/api/events".into()).await.unwrap();
    assert_eq!(feed.status(), 200);
    crate::dashboard::read_until(&mut feed, "event: ready").await;
    let (code, t) = b
        .post(
            "/api/tasks",
            json!({"name": "first", "agent_name": "echo", "agent_instructions": "hello"}),
        )
        .await;
    assert_eq!(code, 201, "{t}");
    let first = t["task_id"].as_str().unwrap().to_string();
    crate::dashboard::read_until(&mut feed, &format!("\"{first}\":\"completed\"")).await;

    // A task's page, with the log lines of a task running elsewhere as they come.
    let (_, t) = b
        .post(
            "/api/tasks",
            json!({"name": "talk", "agent_name": "talker", "agent_instructions": "bye"}),
        )
        .await;
    let talk = t["task_id"].as_str().unwrap().to_string();
    let mut lines = get(format!("/dashboard/api/events?task={talk}"))
        .await
        .unwrap();
    crate::dashboard::read_until(&mut lines, "event: ready").await;
    crate::dashboard::read_until(&mut lines, "line 5").await;
    crate::dashboard::read_until(&mut lines, &format!("\"{talk}\":\"completed\"")).await;
    drop(lines);
    let page = data(format!("/dashboard/api/tasks/{talk}")).await;
    assert_eq!(page["instructions"], "bye", "{page}");
    assert_eq!(page["status"], "completed", "{page}");
    let logged: Vec<&str> = page["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["message"].as_str())
        .collect();
    for i in 1..=6 {
        assert!(logged.contains(&format!("line {i}").as_str()), "{logged:?}");
    }

    // The overview counts the cluster's tasks, whichever node ran them.
    let o = data("/dashboard/api/overview".into()).await;
    assert!(
        o["counts"]
            .as_array()
            .unwrap()
            .contains(&json!(["completed", 2])),
        "{o}"
    );
    let ended: u64 = o["ended"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["completed"].as_u64().unwrap())
        .sum();
    assert_eq!(ended, 2, "{o}");
    let timed: u64 = o["durations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["tasks"].as_u64().unwrap())
        .sum();
    assert_eq!(timed, 2, "{o}");
    // The talker ran for over 2 s: the "1 s–10 s" bucket.
    assert_eq!(o["durations"][1]["tasks"], 1, "{o}");

    // The task list pages by position over tasks submitted to both nodes, each once.
    let mut ids = vec![first, talk];
    for i in 0..5 {
        let api = if i % 2 == 0 { &a } else { &b };
        let (code, t) = api
            .post(
                "/api/tasks",
                json!({"name": format!("job {i}"), "agent_name": "echo", "agent_instructions": "x"}),
            )
            .await;
        assert_eq!(code, 201, "{t}");
        ids.push(t["task_id"].as_str().unwrap().to_string());
    }
    let mut after = String::new();
    let mut listed = Vec::new();
    loop {
        let v = data(format!("/dashboard/api/tasks?limit=3&after={after}")).await;
        assert_eq!(v["total"], 7, "{v}");
        listed.extend(
            v["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["task_id"].as_str().unwrap().to_string()),
        );
        match v["next"].as_str() {
            Some(n) => after = n.to_string(),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(listed, ids);
    let v = data("/dashboard/api/tasks?q=JOB&agent_name=echo".into()).await;
    assert_eq!(v["total"], 5, "{v}");
    let f = data("/dashboard/api/facets".into()).await;
    assert_eq!(f["agents"], json!(["echo", "talker"]), "{f}");

    // The agents' records.
    let mut agents = Value::Null;
    for _ in 0..200 {
        agents = data("/dashboard/api/agents".into()).await;
        let echo = agents["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "echo")
            .cloned()
            .unwrap_or_default();
        if echo["completed"] == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let talker = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "talker")
        .unwrap();
    assert_eq!(
        (
            &talker["ended"],
            &talker["completed"],
            &talker["success_rate"]
        ),
        (&json!(1), &json!(1), &json!(1.0)),
        "{agents}"
    );
}

/// Isolated tasks on a cluster: a task whose node dies mid-attempt goes on in a worktree of
/// another node on its host (the dead node's worktree closed first, its work kept), `task_diff`
/// answers from any node of the host and refuses on another, and a workflow's later phase
/// starts from the work of the earlier one whichever nodes ran it.
#[tokio::test(flavor = "multi_thread")]
async fn isolated_tasks_go_on_in_worktrees_of_any_node_of_their_host() {
    use crate::worktrees::{add_writer, git, phase, repo, wait_workflow, worktrees};
    let url = pg::server().fresh_database().await;
    let doomed = node(&url, "2");
    let survivor = node(&url, "2");
    let repo = repo(&doomed, "work/repo");
    let wd = repo.display().to_string();
    for env in [&doomed, &survivor] {
        env.shell_agent(
            "slow-editor",
            "echo \"partial $ORCHESTR8_ATTEMPT\" >> notes.txt; \
             if [ \"$ORCHESTR8_ATTEMPT\" = 1 ]; then sleep 60; fi; echo final >> notes.txt",
            "isolation: worktree\nmax_retries: 1",
        );
        env.shell_agent(
            "writer",
            "echo \"$ORCHESTR8_TASK_NAME\" > \"$ORCHESTR8_TASK_NAME.txt\"; ls *.txt | tr '\\n' ' '",
            "",
        );
    }
    let a = doomed.start().await;
    let id = a
        .submit("crashy", "slow-editor", "go", json!({"working_dir": wd}))
        .await;
    let worktree = std::path::PathBuf::from(format!("{}.worktrees/{id}", doomed.db().display()));
    a.until(&id, "running", |t| t["status"] == "running").await;
    for _ in 0..400 {
        if std::fs::read_to_string(worktree.join("notes.txt"))
            .unwrap_or_default()
            .contains("partial 1")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let b = survivor.start().await;
    a.kill9_session_only().await;
    doomed.kill9_engines().await;

    // Rescued, it runs again on the other node: that node closes the worktree the dead one
    // left (its work kept aside) and starts afresh from the base.
    let t = b.wait_one(&id, 60).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["attempt"], 2, "{t}");
    let branch = t["workspace"]["branch"].as_str().unwrap().to_string();
    assert_eq!(
        git(&repo, &["show", &format!("{branch}:notes.txt")]),
        "base\npartial 2\nfinal\n"
    );
    let logs = b.log_messages(&id).await;
    assert!(
        logs.iter()
            .any(|l| l.contains("closed the worktree an earlier attempt left")),
        "{logs:?}"
    );
    let kept = git(
        &repo,
        &[
            "for-each-ref",
            "--format=%(refname)",
            &format!("refs/orchestr8/attempts/{id}/"),
        ],
    );
    let kept = kept.lines().next().unwrap_or_else(|| panic!("{logs:?}"));
    assert_eq!(
        git(&repo, &["show", &format!("{kept}:notes.txt")]),
        "base\npartial 1\n"
    );
    assert_eq!(worktrees(&repo), vec![wd.clone()], "no stale worktree");
    assert!(!worktree.exists());

    // Its diff, from a node of its host; a node of another host is told where to ask.
    let diff = b.call("task_diff", json!({"task_id": id})).await;
    assert_eq!(diff["files"][0]["path"], "notes.txt", "{diff}");
    assert!(diff["diff"].as_str().unwrap().contains("+final"), "{diff}");
    let raw = {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    };
    raw.execute(
        "UPDATE orchestr8.tasks SET host = 'far-away' WHERE task_id = $1",
        &[&uuid::Uuid::parse_str(&id).unwrap()],
    )
    .await
    .unwrap();
    let e = b.call_err("task_diff", json!({"task_id": id})).await;
    assert!(e.contains("host far-away") && e.contains(&branch), "{e}");

    // A workflow of isolated tasks, both nodes of the host serving: the later phase starts
    // from the work of the earlier one.
    let a = doomed.start().await;
    let wf = b.call("workflow_create", json!({"name": "build"})).await["workflow_id"]
        .as_str()
        .unwrap()
        .to_string();
    phase(&b, &wf, "design", &[]).await;
    phase(&b, &wf, "impl", &["design"]).await;
    add_writer(&b, &wf, "design", "spec", &wd).await;
    add_writer(&b, &wf, "design", "plan", &wd).await;
    let last = add_writer(&a, &wf, "impl", "code", &wd).await;
    a.call("workflow_start", json!({"workflow_id": wf})).await;
    let w = wait_workflow(&b, &wf).await;
    assert_eq!(w["status"], "completed", "{w}");
    let t = a.status(&last).await;
    assert_eq!(
        t["result"].as_str().unwrap().lines().next().unwrap(),
        "code.txt notes.txt plan.txt spec.txt ",
        "{t}"
    );
    assert_eq!(t["workspace"]["files_changed"], 1, "{t}");
    assert_eq!(worktrees(&repo), vec![wd.clone()]);

    // A running task's diff, from either node (one of them is not the node running it): its
    // worktree as it is now, found on its branch wherever its node keeps it.
    let busy = a
        .submit("busy", "slow-editor", "go", json!({"working_dir": wd}))
        .await;
    a.until(&busy, "running", |t| t["status"] == "running")
        .await;
    let mut live = Vec::new();
    for _ in 0..400 {
        live = worktrees(&repo);
        if live.len() == 2
            && std::fs::read_to_string(std::path::Path::new(&live[1]).join("notes.txt"))
                .unwrap_or_default()
                .contains("partial 1")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(live[1].ends_with(&busy), "{live:?}");
    for s in [&a, &b] {
        let d = s.call("task_diff", json!({"task_id": busy})).await;
        assert!(
            d["diff"].as_str().unwrap().contains("+partial 1") && d["head_commit"].is_null(),
            "{d}"
        );
    }
    let c = b.call("task_cancel", json!({"task_id": busy})).await;
    assert_eq!(c["status"], "cancelled", "{c}");
    let ended = a.wait_one(&busy, 30).await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    assert_eq!(worktrees(&repo), vec![wd]);
    a.stop().await;
    b.stop().await;
    doomed.stop_engines().await;
    survivor.stop_engines().await;
}

/// A session is told when what it handed off ends, though a node of another engine ran it.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_is_told_of_ends_that_another_node_recorded() {
    let url = pg::server().fresh_database().await;
    // The asking node serves no queue of the work: all of it runs on the other.
    let mut asking = node(&url, "2");
    asking.set("ORCHESTR8_QUEUES", "elsewhere");
    let running = node(&url, "2");
    for env in [&asking, &running] {
        env.shell_agent("echo", "cat", "");
    }
    let b = running.start().await;
    let a = asking.start().await;
    let id = a.submit("far", "echo", "from afar", json!({})).await;
    let wf = a.call("workflow_create", json!({"name": "remote"})).await["workflow_id"]
        .as_str()
        .unwrap()
        .to_string();
    a.call(
        "workflow_add_phase",
        json!({"workflow_id": wf, "phase_id": "p", "name": "P"}),
    )
    .await;
    a.call(
        "workflow_add_task",
        json!({"workflow_id": wf, "phase_id": "p", "name": "t", "agent_name": "echo", "agent_instructions": "w"}),
    )
    .await;
    a.call("workflow_start", json!({"workflow_id": wf})).await;
    let mut events = Vec::new();
    for _ in 0..200 {
        events = a.channel_events();
        if events.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let task = events
        .iter()
        .find(|e| e["meta"]["task_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no event for the task: {events:?}"));
    assert_eq!(task["meta"]["status"], "completed");
    assert!(
        task["content"].as_str().unwrap().contains("from afar"),
        "{task}"
    );
    let workflow = events
        .iter()
        .find(|e| e["meta"]["workflow_id"] == wf.as_str())
        .unwrap_or_else(|| panic!("no event for the workflow: {events:?}"));
    assert_eq!(workflow["meta"]["status"], "completed");
    // Both ran on the other node, whose own session handed nothing off; each is told once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(a.channel_events().len(), 2, "{:?}", a.channel_events());
    assert!(b.channel_events().is_empty(), "{:?}", b.channel_events());
    a.stop().await;
    b.stop().await;
    asking.stop_engines().await;
    running.stop_engines().await;
}

/// Nodes whose URL asks for TLS reach the database over it: a task runs and ends.
#[tokio::test(flavor = "multi_thread")]
async fn nodes_run_tasks_over_tls_when_the_url_asks() {
    let server = pg::server();
    let cert = server.tls_cert().display().to_string();
    let url = server.fresh_database().await;
    // The server's certificate names `localhost`.
    let by_name = url.replace("127.0.0.1", "localhost");
    let env = node(
        &format!("{by_name}?sslmode=verify-full&sslrootcert={cert}"),
        "2",
    );
    env.shell_agent("echo", "cat", "");
    let s = env.start().await;
    let id = s.submit("tls", "echo", "over tls", json!({})).await;
    let t = s.wait_one(&id, 30).await;
    assert_eq!(
        (&t["status"], &t["result"]),
        (&json!("completed"), &json!("over tls")),
        "{t}"
    );
    // Every connection of the node is encrypted, its listener's too.
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let db = url::Url::parse(&url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_string();
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE NOT s.ssl),
                    count(*) FILTER (WHERE s.ssl AND a.query LIKE 'LISTEN %')
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.datname = $1 AND a.application_name = 'orchestr8-async'",
            &[&db],
        )
        .await
        .unwrap();
    let (plain, listening): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!((plain, listening), (0, 1));
    s.stop().await;
    env.stop_engines().await;
}
