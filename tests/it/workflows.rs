//! Workflows through the MCP tools: phase order, results passed downstream, refusals, failure,
//! cancellation and a kill -9 in the middle.

use serde_json::{json, Value};

use crate::harness::*;

/// An agent that saves its whole input as `<work>/<task name>.in`, takes `DELAY` seconds, and
/// answers "result of <task name>".
fn recorder(env: &Env) {
    let work = env.path("work");
    env.shell_agent(
        "recorder",
        &format!(
            "cat > {}/\"$ORCHESTR8_TASK_NAME\".in; sleep \"${{DELAY:-0.3}}\"; echo \"result of $ORCHESTR8_TASK_NAME\"",
            work.display()
        ),
        "",
    );
}

fn input_of(env: &Env, task: &str) -> String {
    std::fs::read_to_string(env.path(&format!("work/{task}.in"))).unwrap_or_default()
}

pub(crate) async fn create(s: &Server, name: &str) -> String {
    let w = s
        .call(
            "workflow_create",
            json!({"name": name, "description": "test"}),
        )
        .await;
    assert_eq!(w["status"], "draft");
    w["workflow_id"].as_str().unwrap().to_string()
}

pub(crate) async fn phase(s: &Server, w: &str, id: &str, name: &str, deps: &[&str]) {
    let p = s
        .call(
            "workflow_add_phase",
            json!({"workflow_id": w, "phase_id": id, "name": name, "depends_on": deps}),
        )
        .await;
    assert_eq!(p["status"], "pending");
    assert_eq!(p["phase_id"], id);
}

pub(crate) async fn task(
    s: &Server,
    w: &str,
    phase: &str,
    name: &str,
    agent: &str,
    extra: Value,
) -> String {
    let mut args = json!({"workflow_id": w, "phase_id": phase, "name": name,
                          "agent_name": agent, "agent_instructions": format!("do {name}")});
    if let Value::Object(m) = extra {
        args.as_object_mut().unwrap().extend(m);
    }
    let t = s.call("workflow_add_task", args).await;
    assert_eq!(t["status"], "pending");
    t["task_id"].as_str().unwrap().to_string()
}

pub(crate) async fn wstatus(s: &Server, w: &str) -> Value {
    s.call("workflow_status", json!({"workflow_id": w})).await
}

pub(crate) async fn wait_workflow(s: &Server, w: &str, done: &str) -> Value {
    for _ in 0..800 {
        let st = wstatus(s, w).await;
        if st["status"] == done {
            return st;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!(
        "workflow never became {done}: {}\n{}",
        wstatus(s, w).await,
        s.log()
    );
}

pub(crate) fn phase_of<'a>(st: &'a Value, id: &str) -> &'a Value {
    st["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase_id"] == id)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn design_implementation_testing_runs_in_order_and_passes_results_down() {
    let env = Env::new();
    recorder(&env);
    let s = env.start().await;
    let w = create(&s, "feature development pipeline").await;
    phase(&s, &w, "design", "Design", &[]).await;
    phase(&s, &w, "implementation", "Implementation", &["design"]).await;
    phase(&s, &w, "testing", "Testing", &["implementation"]).await;
    let spec = task(&s, &w, "design", "spec", "recorder", json!({})).await;
    let backend = task(&s, &w, "implementation", "backend", "recorder", json!({})).await;
    let frontend = task(&s, &w, "implementation", "frontend", "recorder", json!({})).await;
    let tests = task(&s, &w, "testing", "tests", "recorder", json!({})).await;

    let draft = wstatus(&s, &w).await;
    assert_eq!(draft["status"], "draft");
    assert_eq!(draft["progress"], 0);
    assert_eq!(draft["tasks"].as_array().unwrap().len(), 4);
    assert_eq!(phase_of(&draft, "implementation")["tasks_total"], 2);
    assert_eq!(
        phase_of(&draft, "implementation")["depends_on"],
        json!(["design"])
    );
    // Nothing runs before the start.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(s.status(&spec).await["status"], "pending");

    let started = s.call("workflow_start", json!({"workflow_id": w})).await;
    assert_eq!(started["status"], "running");
    assert!(started["started_at"].is_string());

    let done = wait_workflow(&s, &w, "completed").await;
    assert_eq!(done["progress"], 100);
    assert!(done["failed_tasks"].as_array().unwrap().is_empty());
    assert!(done["completed_at"].is_string());
    for p in ["design", "implementation", "testing"] {
        let ph = phase_of(&done, p);
        assert_eq!(ph["status"], "completed", "{done}");
        assert_eq!(ph["tasks_completed"], ph["tasks_total"]);
    }

    // Order: each phase starts after the one before has completed; the two tasks of the
    // implementation phase run side by side.
    let all = s
        .wait_all(
            &[
                spec.clone(),
                backend.clone(),
                frontend.clone(),
                tests.clone(),
            ],
            10,
        )
        .await;
    let [sp, be, fe, te] = [&all[0], &all[1], &all[2], &all[3]];
    for t in &all {
        assert_eq!(t["status"], "completed", "{t}");
        assert_eq!(t["workflow_id"], w.as_str());
    }
    assert!(time(sp, "completed_at") <= time(be, "started_at"));
    assert!(time(sp, "completed_at") <= time(fe, "started_at"));
    assert!(time(be, "started_at") < time(fe, "completed_at"));
    assert!(time(fe, "started_at") < time(be, "completed_at"));
    assert!(time(be, "completed_at") <= time(te, "started_at"));
    assert!(time(fe, "completed_at") <= time(te, "started_at"));

    // Results flow downstream: the implementers saw the design, the tester saw everything
    // upstream of it (transitively), each under a heading naming phase and task.
    let spec_in = input_of(&env, "spec");
    assert_eq!(spec_in, "do spec");
    let be_in = input_of(&env, "backend");
    assert!(be_in.starts_with("do backend\n"), "{be_in}");
    assert!(
        be_in.contains("## Phase \"Design\" (design), task \"spec\""),
        "{be_in}"
    );
    assert!(be_in.contains("result of spec"), "{be_in}");
    assert!(!be_in.contains("result of frontend"), "{be_in}");
    let te_in = input_of(&env, "tests");
    for r in ["result of spec", "result of backend", "result of frontend"] {
        assert!(te_in.contains(r), "{r} missing in {te_in}");
    }
    assert!(te_in.contains("## Phase \"Implementation\" (implementation), task \"frontend\""));

    let listed = s
        .call("list_workflows", json!({"status": "completed"}))
        .await;
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["workflows"][0]["progress"], 100);
    assert_eq!(listed["workflows"][0]["tasks_total"], 4);
    let tasks = s.call("list_tasks", json!({"workflow_id": w})).await;
    assert_eq!(tasks["total"], 4);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_diamond_joins_both_branches() {
    let mut env = Env::new();
    env.set("ORCHESTR8_WORKERS", "4");
    recorder(&env);
    let s = env.start().await;
    let w = create(&s, "diamond").await;
    phase(&s, &w, "a", "A", &[]).await;
    phase(&s, &w, "b", "B", &["a"]).await;
    phase(&s, &w, "c", "C", &["a"]).await;
    phase(&s, &w, "d", "D", &["b", "c"]).await;
    let a = task(&s, &w, "a", "ta", "recorder", json!({})).await;
    let b = task(&s, &w, "b", "tb", "recorder", json!({})).await;
    let c = task(
        &s,
        &w,
        "c",
        "tc",
        "recorder",
        json!({"metadata": {"slow": true}}),
    )
    .await;
    let d = task(&s, &w, "d", "td", "recorder", json!({})).await;
    s.call("workflow_start", json!({"workflow_id": w})).await;
    wait_workflow(&s, &w, "completed").await;
    let all = s.wait_all(&[a, b, c, d], 10).await;
    let (ta, tb, tc, td) = (&all[0], &all[1], &all[2], &all[3]);
    assert!(time(ta, "completed_at") <= time(tb, "started_at"));
    assert!(time(ta, "completed_at") <= time(tc, "started_at"));
    assert!(time(tb, "completed_at") <= time(td, "started_at"));
    assert!(time(tc, "completed_at") <= time(td, "started_at"));
    let d_in = input_of(&env, "td");
    for r in ["result of ta", "result of tb", "result of tc"] {
        assert!(d_in.contains(r), "{r} missing in {d_in}");
    }
    let b_in = input_of(&env, "tb");
    assert!(b_in.contains("result of ta") && !b_in.contains("result of tc"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_workflow_change_is_refused_with_a_reason() {
    let env = Env::new();
    recorder(&env);
    let s = env.start().await;
    let other = s.submit("loose", "recorder", "x", json!({})).await;
    let w = create(&s, "shape").await;
    let unknown = "0190f5c2-7b1e-7cc3-8a5e-3f1d2c4b5a69";
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "workflow_add_phase",
            json!({"workflow_id": unknown, "phase_id": "p", "name": "P"}),
            "unknown workflow_id",
        ),
        (
            "workflow_add_phase",
            json!({"workflow_id": "nope", "phase_id": "p", "name": "P"}),
            "not a workflow id",
        ),
        (
            "workflow_add_phase",
            json!({"workflow_id": w, "phase_id": "Bad Id", "name": "P"}),
            "invalid phase_id",
        ),
        (
            "workflow_add_phase",
            json!({"workflow_id": w, "phase_id": "p", "name": "P", "depends_on": ["ghost"]}),
            "\"ghost\" is not a phase",
        ),
        (
            "workflow_add_phase",
            json!({"workflow_id": w, "phase_id": "p", "name": "P", "depends_on": ["p"]}),
            "cycle",
        ),
        ("workflow_start", json!({"workflow_id": w}), "has no tasks"),
        (
            "workflow_status",
            json!({"workflow_id": unknown}),
            "unknown workflow_id",
        ),
        (
            "workflow_cancel",
            json!({"workflow_id": unknown}),
            "unknown workflow_id",
        ),
        (
            "list_workflows",
            json!({"status": "sleeping"}),
            "not one of draft",
        ),
        ("workflow_create", json!({"name": ""}), "name must be"),
        (
            "workflow_create",
            json!({"name": "x", "max_parallel": 0}),
            "max_parallel must be",
        ),
        (
            "workflow_create",
            json!({"name": "x", "webhook_url": "ftp://x"}),
            "http or https",
        ),
    ];
    for (tool, args, expect) in &cases {
        let e = s.call_err(tool, args.clone()).await;
        assert!(
            e.contains(expect),
            "{tool}({args}): expected {expect:?} in {e:?}"
        );
    }
    phase(&s, &w, "first", "First", &[]).await;
    phase(&s, &w, "second", "Second", &["first"]).await;
    let e = s
        .call_err(
            "workflow_add_phase",
            json!({"workflow_id": w, "phase_id": "first", "name": "again"}),
        )
        .await;
    assert!(e.contains("already has a phase \"first\""), "{e}");
    let t2 = task(&s, &w, "second", "later", "recorder", json!({})).await;
    let add = |phase: &str, agent: &str, deps: Vec<&str>| {
        json!({"workflow_id": w, "phase_id": phase, "name": "t", "agent_name": agent,
               "agent_instructions": "x", "dependencies": deps})
    };
    for (args, expect) in [
        (
            add("nowhere", "recorder", vec![]),
            "phase_id \"nowhere\" is not a phase",
        ),
        (add("first", "ghost-agent", vec![]), "ghost-agent"),
        (
            add("first", "recorder", vec![other.as_str()]),
            "is not a task of workflow",
        ),
        (
            add("first", "recorder", vec![t2.as_str()]),
            "runs after phase \"first\"",
        ),
    ] {
        let e = s.call_err("workflow_add_task", args.clone()).await;
        assert!(e.contains(expect), "{args}: expected {expect:?} in {e:?}");
    }
    let t1 = task(&s, &w, "first", "early", "recorder", json!({})).await;
    // A later phase may depend on an earlier phase's task.
    task(
        &s,
        &w,
        "second",
        "later2",
        "recorder",
        json!({"dependencies": [t1]}),
    )
    .await;

    s.call("workflow_start", json!({"workflow_id": w})).await;
    for (tool, args) in [
        (
            "workflow_add_phase",
            json!({"workflow_id": w, "phase_id": "third", "name": "T"}),
        ),
        ("workflow_add_task", add("first", "recorder", vec![])),
        ("workflow_start", json!({"workflow_id": w})),
    ] {
        let e = s.call_err(tool, args).await;
        assert!(
            e.contains("only be added while it is a draft") || e.contains("is running"),
            "{tool}: {e}"
        );
    }
    let e = s.call_err("task_cancel", json!({"task_id": t2})).await;
    assert!(e.contains("use workflow_cancel"), "{e}");
    wait_workflow(&s, &w, "completed").await;
    let e = s
        .call_err("workflow_cancel", json!({"workflow_id": w}))
        .await;
    assert!(e.contains("already completed"), "{e}");

    // A draft can be cancelled: its tasks are cancelled without ever running.
    let d = create(&s, "abandoned").await;
    phase(&s, &d, "only", "Only", &[]).await;
    let dt = task(&s, &d, "only", "never", "recorder", json!({})).await;
    let c = s.call("workflow_cancel", json!({"workflow_id": d})).await;
    assert_eq!(c["status"], "cancelled");
    assert_eq!(phase_of(&c, "only")["status"], "cancelled");
    let t = s.status(&dt).await;
    assert_eq!(t["status"], "cancelled");
    assert!(t["started_at"].is_null());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_task_fails_its_phase_and_workflow_and_cancels_the_rest() {
    let env = Env::new();
    recorder(&env);
    env.shell_agent(
        "broken",
        "sleep 0.5; echo 'compile error in main.rs' >&2; exit 2",
        "",
    );
    env.shell_agent("long", "sleep 977", "");
    let s = env.start().await;
    let w = create(&s, "doomed").await;
    phase(&s, &w, "build", "Build", &[]).await;
    phase(&s, &w, "ship", "Ship", &["build"]).await;
    let ok = task(&s, &w, "build", "ok", "recorder", json!({})).await;
    let bad = task(&s, &w, "build", "bad", "broken", json!({"max_retries": 1})).await;
    let long = task(&s, &w, "build", "long", "long", json!({})).await;
    let ship = task(&s, &w, "ship", "ship", "recorder", json!({})).await;
    s.call("workflow_start", json!({"workflow_id": w})).await;

    let st = wait_workflow(&s, &w, "failed").await;
    let failed = st["failed_tasks"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{st}");
    assert_eq!(failed[0]["task_id"], bad.as_str());
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("compile error"),
        "{st}"
    );
    assert!(st["error"].as_str().unwrap().contains("bad"), "{st}");
    assert_eq!(phase_of(&st, "build")["status"], "failed");
    assert_eq!(phase_of(&st, "build")["tasks_failed"], 1);
    assert_eq!(phase_of(&st, "ship")["status"], "cancelled");

    let all = s.wait_all(&[ok, bad, long, ship], 20).await;
    assert_eq!(all[0]["status"], "completed");
    assert_eq!(all[1]["status"], "failed");
    assert_eq!(
        all[1]["attempt"], 2,
        "retries are spent before the workflow fails"
    );
    assert_eq!(all[2]["status"], "cancelled", "{}", all[2]);
    assert_eq!(all[3]["status"], "cancelled");
    assert!(
        all[3]["started_at"].is_null(),
        "the later phase never started"
    );
    assert!(
        processes_with("sleep 977").is_empty(),
        "the running task was stopped"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn workflow_cancel_stops_a_running_workflow() {
    let env = Env::new();
    recorder(&env);
    env.shell_agent("long", "sleep 988", "");
    let s = env.start().await;
    let w = create(&s, "to cancel").await;
    phase(&s, &w, "one", "One", &[]).await;
    phase(&s, &w, "two", "Two", &["one"]).await;
    let long = task(&s, &w, "one", "long", "long", json!({})).await;
    let next = task(&s, &w, "two", "next", "recorder", json!({})).await;
    s.call("workflow_start", json!({"workflow_id": w})).await;
    s.until(&long, "running", |t| t["status"] == "running")
        .await;
    assert!(!processes_with("sleep 988").is_empty());

    let c = s.call("workflow_cancel", json!({"workflow_id": w})).await;
    assert_eq!(c["status"], "cancelled");
    assert_eq!(phase_of(&c, "one")["status"], "cancelled");
    assert_eq!(phase_of(&c, "two")["status"], "cancelled");
    let all = s.wait_all(&[long, next], 10).await;
    assert_eq!(all[0]["status"], "cancelled");
    assert_eq!(all[1]["status"], "cancelled");
    assert!(
        processes_with("sleep 988").is_empty(),
        "process still running"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workflow_survives_kill_9_and_completes_in_order() {
    let env = Env::new();
    recorder(&env);
    env.shell_agent("slow", "sleep 1.5; echo 'design done'", "max_retries: 2");
    let s = env.start().await;
    let w = create(&s, "crash").await;
    phase(&s, &w, "a", "A", &[]).await;
    phase(&s, &w, "b", "B", &["a"]).await;
    let a = task(&s, &w, "a", "design", "slow", json!({})).await;
    let b = task(&s, &w, "b", "build", "recorder", json!({})).await;
    s.call("workflow_start", json!({"workflow_id": w})).await;
    s.until(&a, "running", |t| t["status"] == "running").await;
    s.kill9(&env).await;

    let s = env.start().await;
    let st = wait_workflow(&s, &w, "completed").await;
    assert_eq!(st["progress"], 100);
    let all = s.wait_all(&[a, b], 10).await;
    assert_eq!(all[0]["status"], "completed");
    assert_eq!(all[0]["attempt"], 2, "the interrupted attempt counts");
    assert!(time(&all[0], "completed_at") <= time(&all[1], "started_at"));
    assert_eq!(all[1]["attempt"], 1, "the later phase ran once");
    assert!(input_of(&env, "build").contains("design done"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_parallel_limits_a_workflow_below_the_worker_count() {
    let mut env = Env::new();
    env.set("ORCHESTR8_WORKERS", "4");
    recorder(&env);
    let s = env.start().await;
    let w = s
        .call(
            "workflow_create",
            json!({"name": "one at a time", "max_parallel": 1}),
        )
        .await["workflow_id"]
        .as_str()
        .unwrap()
        .to_string();
    phase(&s, &w, "only", "Only", &[]).await;
    let mut ids = Vec::new();
    for n in ["p1", "p2", "p3"] {
        ids.push(task(&s, &w, "only", n, "recorder", json!({})).await);
    }
    s.call("workflow_start", json!({"workflow_id": w})).await;
    let st = wait_workflow(&s, &w, "completed").await;
    assert_eq!(st["max_parallel"], 1);
    let mut spans: Vec<_> = s
        .wait_all(&ids, 10)
        .await
        .iter()
        .map(|t| (time(t, "started_at"), time(t, "completed_at")))
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "tasks overlapped: {spans:?}");
    }
    s.stop().await;
}
