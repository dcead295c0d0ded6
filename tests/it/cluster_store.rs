//! The PostgreSQL driver against a real PostgreSQL server: migrations that run once however many
//! nodes start together, claiming that never hands one task to two nodes and holds limits across
//! them, leases and the leader by the database's clock, and fencing after a rescue.

use std::collections::HashSet;
use std::time::Duration;

use orchestr8_async::model::{Priority, Task, TaskStatus, Usage, WebhookAttempt, WebhookEvent};
use orchestr8_async::store::postgres::{
    migrate, ClaimRequest, Ended, Lease, NewClusterTask, NodeInfo, PgOptions, Postgres, Recorded,
};
use orchestr8_async::store::{OpOutcome, StoreError};
use uuid::Uuid;

use crate::pg;

async fn connect(url: &str) -> Result<Postgres, StoreError> {
    Postgres::connect(&PgOptions {
        url: url.to_string(),
        pool_size: 8,
    })
    .await
}

async fn fresh() -> (Postgres, String) {
    let url = pg::server().fresh_database().await;
    (connect(&url).await.expect("connect"), url)
}

/// A raw connection to the test database, its search path the driver's schema.
async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {s}; SET search_path = {s}",
            s = orchestr8_async::store::postgres::SCHEMA
        ))
        .await
        .expect("search path");
    client
}

fn task(agent: &str, priority: Priority, created_us: i64) -> Task {
    Task {
        id: Uuid::now_v7(),
        name: format!("{agent}-{created_us}"),
        agent_name: agent.into(),
        status: TaskStatus::Pending,
        priority,
        created_us,
        scheduled_us: created_us,
        started_us: None,
        completed_us: None,
        attempt: 0,
        max_retries: 2,
        retry_floor: 0,
        timeout_seconds: 60,
        dependencies: vec![],
        workflow_id: None,
        phase_id: None,
        working_dir: None,
        project: None,
        agents_dir: None,
        metadata: None,
        webhook_url: None,
        idempotency_key: None,
        result: None,
        error: None,
        usage: Usage::default(),
        pid: None,
        pid_start: None,
        workspace: None,
    }
}

fn new(t: Task) -> NewClusterTask {
    NewClusterTask {
        task: t,
        instructions: "do it".into(),
        queue: "default".into(),
        host: None,
        max_concurrency: None,
    }
}

fn queues(q: &[&str]) -> Vec<String> {
    q.iter().map(|s| s.to_string()).collect()
}

/// Claims as `node`, which joins the cluster first if it is not alive (only a live node claims).
async fn claim(db: &Postgres, node: &str, host: &str, q: &[String], limit: u32) -> Vec<Task> {
    if !live(db).await.iter().any(|n| n == node) {
        let mut info = self::node(node);
        info.host = host.to_string();
        db.join(&info, Duration::from_secs(60)).await.unwrap();
    }
    db.claim(&ClaimRequest {
        node_id: node,
        host,
        queues: q,
        limit,
    })
    .await
    .expect("claim")
    .into_iter()
    .map(|(t, instructions)| {
        assert_eq!(instructions, "do it");
        t
    })
    .collect()
}

/// A lease short enough for a test to outlive, long enough for a busy machine to renew in time.
const LEASE: Duration = Duration::from_secs(2);
const PAST_LEASE: Duration = Duration::from_millis(2_400);

fn node(id: &str) -> NodeInfo {
    NodeInfo {
        node_id: id.into(),
        host: "h1".into(),
        pid: std::process::id(),
        version: "test".into(),
        queues: queues(&["default"]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_run_once_however_many_nodes_start_together() {
    let url = pg::server().fresh_database().await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(raw(&url).await);
    }
    let runs = clients
        .into_iter()
        .map(|mut c| tokio::spawn(async move { migrate::migrate(&mut c).await.expect("migrate") }));
    let applied: Vec<Vec<i32>> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| r.expect("join"))
        .collect();
    let all: Vec<i32> = migrate::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(
        applied.iter().filter(|a| !a.is_empty()).count(),
        1,
        "exactly one node migrates: {applied:?}"
    );
    assert!(applied.contains(&all));

    // Nodes that connect later find the schema current, all at once too.
    let nodes = (0..4).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { connect(&url).await.map(|_| ()) })
    });
    for r in futures_util::future::join_all(nodes).await {
        r.expect("join").expect("a later node connects");
    }
    let c = raw(&url).await;
    let rows = c
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    let recorded: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(recorded, all);
}

#[tokio::test]
async fn a_database_migrated_by_a_newer_release_is_refused() {
    let (_db, url) = fresh().await;
    let newer = migrate::latest() + 1;
    raw(&url)
        .await
        .execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, 'from the future')",
            &[&newer],
        )
        .await
        .unwrap();
    let err = match connect(&url).await {
        Ok(_) => panic!("a newer schema must be refused"),
        Err(e) => e,
    };
    assert!(matches!(err, StoreError::Incompatible(_)), "{err:?}");
    assert!(
        err.to_string().contains(&format!("schema version {newer}")),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_and_a_bad_url_says_how_to_write_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = match connect(&format!("postgres://nobody@127.0.0.1:{port}/none")).await {
        Ok(_) => panic!("nothing listens there"),
        Err(e) => e,
    };
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let err = match connect("postgres://u@h:notaport/db").await {
        Ok(_) => panic!("not a URL"),
        Err(e) => e,
    };
    assert!(
        err.to_string().contains("postgres://user:password@host"),
        "{err}"
    );
}

#[tokio::test]
async fn claims_go_by_priority_then_age_and_an_idempotency_key_names_its_task() {
    let (db, _) = fresh().await;
    let low = task("a", Priority::Low, 1);
    let old = task("a", Priority::Normal, 2);
    let young = task("a", Priority::Normal, 3);
    let critical = task("a", Priority::Critical, 4);
    let mut keyed = task("a", Priority::Low, 5);
    keyed.idempotency_key = Some("k1".into());
    let mut again = task("a", Priority::Low, 6);
    again.idempotency_key = Some("k1".into());
    let outcomes = db
        .insert_tasks(&[
            new(low.clone()),
            new(young.clone()),
            new(old.clone()),
            new(critical.clone()),
            new(keyed.clone()),
            new(again.clone()),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes[..5], [OpOutcome::Done; 5]);
    assert_eq!(outcomes[5], OpOutcome::Existing(keyed.id));
    // A later submit with the key is answered the same way.
    let mut later = task("a", Priority::Low, 7);
    later.idempotency_key = Some("k1".into());
    assert_eq!(
        db.insert_tasks(&[new(later)]).await.unwrap(),
        [OpOutcome::Existing(keyed.id)]
    );
    // A submit repeated after a lost answer finds its own task.
    assert_eq!(
        db.insert_tasks(&[new(low.clone())]).await.unwrap(),
        [OpOutcome::Existing(low.id)]
    );

    let q = queues(&["default"]);
    let first = claim(&db, "n1", "h1", &q, 3).await;
    assert_eq!(ids(first.clone()), [critical.id, old.id, young.id]);
    for t in &first {
        assert_eq!(t.status, TaskStatus::Running);
        assert_eq!(t.attempt, 1);
        assert!(t.started_us.is_some());
    }
    let rest: Vec<Uuid> = ids(claim(&db, "n1", "h1", &q, 10).await);
    assert_eq!(rest, [low.id, keyed.id]);
    assert!(claim(&db, "n1", "h1", &q, 10).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_never_get_the_same_task() {
    let (db, _) = fresh().await;
    let tasks: Vec<NewClusterTask> = (0..300)
        .map(|i| new(task("a", Priority::Normal, i)))
        .collect();
    let all: HashSet<Uuid> = tasks.iter().map(|n| n.task.id).collect();
    for chunk in tasks.chunks(100) {
        db.insert_tasks(chunk).await.unwrap();
    }
    let claimers = (0..4).map(|n| {
        let db = db.clone();
        tokio::spawn(async move {
            let q = queues(&["default"]);
            let node = format!("n{n}");
            let mut mine = Vec::new();
            loop {
                let got = claim(&db, &node, "h1", &q, 7).await;
                if got.is_empty() {
                    break mine;
                }
                mine.extend(got.into_iter().map(|t| t.id));
            }
        })
    });
    let mut seen = HashSet::new();
    let mut per_node = Vec::new();
    for r in futures_util::future::join_all(claimers).await {
        let mine = r.unwrap();
        per_node.push(mine.len());
        for id in mine {
            assert!(seen.insert(id), "task {id} was claimed twice");
        }
    }
    assert_eq!(seen, all, "every task was claimed once");
    assert!(
        per_node.iter().filter(|n| **n > 0).count() >= 2,
        "claims spread over the nodes: {per_node:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agents_limit_holds_across_nodes() {
    let (db, _) = fresh().await;
    let mut batch = Vec::new();
    for i in 0..20 {
        let mut n = new(task("solo", Priority::High, i));
        n.max_concurrency = Some(2);
        batch.push(n);
    }
    for i in 0..5 {
        batch.push(new(task("free", Priority::Normal, 100 + i)));
    }
    db.insert_tasks(&batch).await.unwrap();
    let claimers = (0..3).map(|n| {
        let db = db.clone();
        tokio::spawn(async move {
            let q = queues(&["default"]);
            let mut got = Vec::new();
            for _ in 0..5 {
                got.extend(claim(&db, &format!("n{n}"), "h1", &q, 4).await);
            }
            got
        })
    });
    let claimed: Vec<Task> = futures_util::future::join_all(claimers)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect();
    let solo: Vec<&Task> = claimed.iter().filter(|t| t.agent_name == "solo").collect();
    assert_eq!(
        solo.len(),
        2,
        "two of solo's tasks run, whichever nodes took them"
    );
    assert_eq!(claimed.iter().filter(|t| t.agent_name == "free").count(), 5);

    // One ends on its node: exactly one more may start, on any node.
    let mut done = solo[0].clone();
    done.status = TaskStatus::Completed;
    done.completed_us = Some(done.started_us.unwrap() + 1);
    let owner = claimed_by(&db, done.id).await;
    assert_eq!(
        db.finish(&owner, &[ended(&done)]).await.unwrap(),
        [Recorded::Done]
    );
    let q = queues(&["default"]);
    let next = claim(&db, "n9", "h1", &q, 10).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].agent_name, "solo");
}

/// The ids of claimed tasks, in claim order.
fn ids(tasks: Vec<Task>) -> Vec<Uuid> {
    tasks.iter().map(|t| t.id).collect()
}

/// The ids of the nodes alive now.
async fn live(db: &Postgres) -> Vec<String> {
    db.live_nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.node_id)
        .collect()
}

async fn claimed_by(db: &Postgres, id: Uuid) -> String {
    db.task(id).await.unwrap().unwrap().1.expect("a node")
}

#[tokio::test]
async fn queues_hosts_times_and_dependencies_decide_what_is_claimable() {
    let (db, _) = fresh().await;
    let mut gpu = new(task("a", Priority::Normal, 1));
    gpu.queue = "gpu".into();
    let mut pinned = new(task("a", Priority::Normal, 2));
    pinned.host = Some("h2".into());
    let mut later = new(task("a", Priority::Normal, 3));
    later.task.scheduled_us = chrono::Utc::now().timestamp_micros() + 3_600_000_000;
    let finished = task("a", Priority::Normal, 4);
    let unfinished = task("a", Priority::Normal, 5);
    let gone = Uuid::now_v7();
    let mut waits = new(task("a", Priority::Normal, 6));
    waits.task.dependencies = vec![unfinished.id, gone];
    let mut free = new(task("a", Priority::Normal, 7));
    free.task.dependencies = vec![gone];
    let mut done = finished.clone();
    done.status = TaskStatus::Completed;
    done.completed_us = Some(10);
    db.insert_tasks(&[
        gpu.clone(),
        pinned.clone(),
        later.clone(),
        new(done),
        new(unfinished.clone()),
    ])
    .await
    .unwrap();
    // A dependency in the same batch is as new as its dependent.
    let first = task("a", Priority::Normal, 9);
    let mut second = new(task("a", Priority::Normal, 10));
    second.task.dependencies = vec![first.id];
    db.insert_tasks(&[new(first.clone()), second.clone()])
        .await
        .unwrap();
    let mut waits_on_finished = new(task("a", Priority::Normal, 8));
    waits_on_finished.task.dependencies = vec![finished.id];
    db.insert_tasks(&[waits.clone(), free.clone(), waits_on_finished.clone()])
        .await
        .unwrap();

    let default = queues(&["default"]);
    let got: HashSet<Uuid> = ids(claim(&db, "n1", "h1", &default, 100).await)
        .into_iter()
        .collect();
    let expected: HashSet<Uuid> = [
        unfinished.id,
        free.task.id,
        waits_on_finished.task.id,
        first.id,
    ]
    .into_iter()
    .collect();
    assert_eq!(
        got, expected,
        "not the gpu queue, another host's, a later one, or a waiting one"
    );
    let on_h2: Vec<Uuid> = ids(claim(&db, "n2", "h2", &default, 100).await);
    assert_eq!(on_h2, [pinned.task.id]);
    let gpu_node = ids(claim(&db, "n3", "h1", &queues(&["gpu", "default"]), 100).await);
    assert_eq!(gpu_node, [gpu.task.id]);
}

#[tokio::test]
async fn leases_and_the_leader_follow_the_databases_clock() {
    let (db, _) = fresh().await;
    let lease = LEASE;
    db.join(&node("a"), lease).await.unwrap();
    db.join(&node("b"), Duration::from_secs(60)).await.unwrap();
    assert_eq!(db.elect("a", lease).await.unwrap(), Some(1));
    assert_eq!(db.elect("b", lease).await.unwrap(), None, "a holds it");
    assert_eq!(
        db.elect("a", lease).await.unwrap(),
        Some(1),
        "renewed, same term"
    );
    assert_eq!(db.heartbeat("a", lease).await.unwrap(), Lease::Held);
    assert_eq!(live(&db).await, ["a", "b"]);

    tokio::time::sleep(PAST_LEASE).await;
    assert_eq!(
        db.heartbeat("a", lease).await.unwrap(),
        Lease::Lost,
        "a was given up"
    );
    assert_eq!(db.elect("b", lease).await.unwrap(), Some(2), "b takes over");
    assert_eq!(db.elect("a", lease).await.unwrap(), None);
    assert_eq!(live(&db).await, ["b"]);

    // A node that leaves hands the leadership on at once.
    db.leave("b").await.unwrap();
    db.join(&node("c"), lease).await.unwrap();
    assert_eq!(db.elect("c", lease).await.unwrap(), Some(3));
}

#[tokio::test]
async fn a_node_given_up_cannot_record_the_outcome_of_a_rescued_task() {
    use orchestr8_async::cluster::rescuer;
    let (db, _) = fresh().await;
    db.join(&node("a"), LEASE).await.unwrap();
    db.join(&node("b"), Duration::from_secs(60)).await.unwrap();
    let t = task("a", Priority::Normal, 1);
    db.insert_tasks(&[new(t.clone())]).await.unwrap();
    let q = queues(&["default"]);
    let claimed = claim(&db, "a", "h1", &q, 1).await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        rescuer::rescue_round(&db, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        0,
        "a is alive: nothing to rescue"
    );

    tokio::time::sleep(PAST_LEASE).await;
    assert_eq!(
        rescuer::rescue_round(&db, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        rescuer::rescue_round(&db, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        0,
        "rescued once"
    );
    assert_eq!(
        db.heartbeat("a", LEASE).await.unwrap(),
        Lease::Lost,
        "a, back, learns it was given up"
    );

    // a comes back with its outcome: refused, before and after the task runs again.
    let mut stale = claimed[0].clone();
    stale.status = TaskStatus::Completed;
    stale.result = Some("stale".into());
    stale.completed_us = Some(stale.started_us.unwrap() + 1);
    assert_eq!(
        db.finish("a", &[ended(&stale)]).await.unwrap(),
        [Recorded::Fenced]
    );
    let again = claim(&db, "b", "h1", &q, 1).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2, "the interrupted attempt counts");
    assert_eq!(
        db.finish("a", &[ended(&stale)]).await.unwrap(),
        [Recorded::Fenced]
    );
    let mut done = again[0].clone();
    done.status = TaskStatus::Completed;
    done.result = Some("fresh".into());
    done.completed_us = Some(done.started_us.unwrap() + 1);
    assert_eq!(
        db.finish("b", &[ended(&done)]).await.unwrap(),
        [Recorded::Done]
    );
    assert_eq!(
        db.finish("b", &[ended(&done)]).await.unwrap(),
        [Recorded::Fenced],
        "only once"
    );
    let (stored, owner) = db.task(t.id).await.unwrap().unwrap();
    assert_eq!(
        stored.result.as_deref(),
        Some("fresh"),
        "the stale outcome never landed"
    );
    assert_eq!(owner.as_deref(), Some("b"));
}

#[tokio::test]
async fn the_leader_requeues_or_fails_the_tasks_of_a_node_given_up() {
    use orchestr8_async::cluster::rescuer;
    let (db, _) = fresh().await;
    db.join(&node("a"), LEASE).await.unwrap();
    db.join(&node("b"), Duration::from_secs(60)).await.unwrap();
    let retried = task("a", Priority::High, 1);
    let mut last_chance = task("a", Priority::Normal, 2);
    last_chance.max_retries = 0;
    db.insert_tasks(&[new(retried.clone()), new(last_chance.clone())])
        .await
        .unwrap();
    let q = queues(&["default"]);
    assert_eq!(claim(&db, "a", "h1", &q, 2).await.len(), 2);
    assert_eq!(
        rescuer::rescue_round(&db, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        0,
        "a is alive"
    );

    tokio::time::sleep(PAST_LEASE).await;
    assert_eq!(
        rescuer::rescue_round(&db, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        2
    );
    let (requeued, _) = db.task(retried.id).await.unwrap().unwrap();
    assert_eq!(requeued.status, TaskStatus::Pending);
    assert_eq!(requeued.attempt, 1);
    let (failed, _) = db.task(last_chance.id).await.unwrap().unwrap();
    assert_eq!(failed.status, TaskStatus::Failed);
    assert_eq!(
        failed.error.as_deref(),
        Some("node a stopped answering during attempt 1 and no retries are left")
    );
    let logs: Vec<_> = db
        .logs(retried.id, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.seq, l.level, l.message))
        .collect();
    assert_eq!(
        logs,
        [(
            1,
            "warn".to_string(),
            "node a stopped answering during attempt 1; requeued (the attempt counts)".to_string()
        )]
    );
    // The log goes on after the rescue's line, whichever node writes next.
    db.append_logs(&[orchestr8_async::store::postgres::LogEntry {
        task_id: retried.id,
        level: "info",
        message: "next".into(),
    }])
    .await
    .unwrap();
    assert_eq!(db.logs(retried.id, 1, 100).await.unwrap()[0].seq, 2);
    let again = claim(&db, "b", "h1", &q, 5).await;
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempt), (retried.id, 2));
}

#[tokio::test]
async fn a_lifeline_keeps_its_node_alive_says_when_it_was_given_up_and_leaves() {
    use orchestr8_async::cluster::Lifeline;
    let (db, url) = fresh().await;
    let lease = LEASE;
    let kept = Lifeline::start(db.clone(), node("kept"), lease)
        .await
        .unwrap();
    let cut = Lifeline::start(db.clone(), node("cut"), lease)
        .await
        .unwrap();
    tokio::time::sleep(lease * 2 + lease / 2).await;
    assert_eq!(
        live(&db).await,
        ["kept", "cut"],
        "renewed past several leases"
    );
    assert!(!kept.given_up().is_cancelled());

    // The cluster gives `cut` up (as it would after a partition longer than its lease).
    raw(&url)
        .await
        .execute(
            "UPDATE nodes SET expires_at = now() - interval '1 second' WHERE node_id = 'cut'",
            &[],
        )
        .await
        .unwrap();
    tokio::time::timeout(lease, cut.given_up().cancelled())
        .await
        .expect("the node learns it was given up within a renewal");
    assert_eq!(
        db.heartbeat("cut", lease).await.unwrap(),
        Lease::Lost,
        "and it stays given up"
    );

    kept.leave().await;
    assert!(db.live_nodes().await.unwrap().is_empty(), "left at once");
}

/// The end of `t`'s current attempt, as its node would record it.
fn ended(t: &Task) -> Ended {
    Ended {
        next: t.clone(),
        attempt: t.attempt,
        logs: vec![("info", format!("attempt {} ended", t.attempt))],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_asked_while_an_attempt_ends_wins_over_its_retry() {
    let (db, _) = fresh().await;
    let mut t = task("a", Priority::Normal, 1);
    t.max_retries = 3;
    db.insert_tasks(&[new(t.clone())]).await.unwrap();
    let q = queues(&["default"]);
    let running = claim(&db, "n1", "h1", &q, 1).await.remove(0);
    // Asked from another node: the running node has not looked yet when its attempt fails.
    assert!(matches!(
        db.cancel(t.id).await.unwrap(),
        Some(orchestr8_async::store::postgres::Cancel::Asked { .. })
    ));
    assert_eq!(db.cancels_for("n1").await.unwrap(), [t.id]);
    let mut retry = running.clone();
    retry.status = TaskStatus::Pending;
    retry.error = Some("exit 1".into());
    assert_eq!(
        db.finish("n1", &[ended(&retry)]).await.unwrap(),
        [Recorded::Done]
    );
    let (stored, _) = db.task(t.id).await.unwrap().unwrap();
    assert_eq!(stored.status, TaskStatus::Cancelled, "not retried");
    assert!(stored.completed_us.is_some());
    assert!(stored.error.unwrap().contains("cancelled by request"));
    assert!(claim(&db, "n1", "h1", &q, 1).await.is_empty());
    let logs = db.logs(t.id, 0, 10).await.unwrap();
    assert!(
        logs.iter()
            .any(|l| l.message.contains("cancelled by request")),
        "{logs:?}"
    );
    assert!(db.cancels_for("n1").await.unwrap().is_empty());
}

/// The owed events of `id`, as the outbox holds them.
async fn events_of(url: &str, id: Uuid) -> Vec<(String, String)> {
    raw(url)
        .await
        .query(
            "SELECT event_type, payload FROM webhook_events WHERE task_id = $1 ORDER BY event_type",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn attempt_of(ev: &WebhookEvent, n: u32) -> WebhookAttempt {
    WebhookAttempt {
        event_id: ev.id.clone(),
        event_type: ev.event_type.clone(),
        task_id: ev.task_id,
        workflow_id: ev.workflow_id,
        attempt: n,
        url: ev.url.clone(),
        status_code: Some(200),
        error: None,
        duration_ms: 3,
        at_us: 0,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_events_are_owed_with_every_end_and_attempted_under_one_nodes_claim() {
    let (db, url) = fresh().await;
    let hook = Some("http://127.0.0.1:9/hook".to_string());
    let mut done = task("a", Priority::High, 1);
    done.webhook_url = hook.clone();
    let mut waiting = task("a", Priority::Normal, 2);
    waiting.webhook_url = hook.clone();
    waiting.dependencies = vec![done.id];
    let mut pending = task("a", Priority::Low, 3);
    pending.webhook_url = hook.clone();
    let plain = task("a", Priority::Low, 4);
    db.insert_tasks(&[
        new(done.clone()),
        new(waiting.clone()),
        new(pending.clone()),
        new(plain.clone()),
    ])
    .await
    .unwrap();
    let q = queues(&["default"]);

    // A failed end owes its event, and so does the dependent its cascade cancels; a cancel by
    // request owes one too; a task without a webhook owes nothing.
    let mut running = claim(&db, "n1", "h1", &q, 1).await.remove(0);
    assert_eq!(running.id, done.id);
    running.status = TaskStatus::Failed;
    running.error = Some("exit 1".into());
    running.completed_us = Some(5);
    assert_eq!(
        db.finish("n1", &[ended(&running)]).await.unwrap(),
        [Recorded::Done]
    );
    db.cancel(pending.id).await.unwrap();
    db.cancel(plain.id).await.unwrap();
    let failed = events_of(&url, done.id).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "task.failed");
    let payload: serde_json::Value = serde_json::from_str(&failed[0].1).unwrap();
    assert_eq!(payload["type"], "task.failed");
    assert_eq!(payload["data"]["task_id"], done.id.to_string());
    assert_eq!(payload["data"]["error"], "exit 1");
    assert_eq!(events_of(&url, waiting.id).await[0].0, "task.cancelled");
    assert_eq!(events_of(&url, pending.id).await[0].0, "task.cancelled");
    assert!(events_of(&url, plain.id).await.is_empty());
    assert_eq!(db.webhooks_owed().await.unwrap(), 3);

    // One node at a time holds an event.
    db.join(&node("n2"), Duration::from_secs(60)).await.unwrap();
    let hold = Duration::from_secs(2);
    // None for a host the node is busy with, and no more per host than asked.
    let busy = ["127.0.0.1:9".to_string()];
    assert!(db
        .claim_webhooks("n1", 10, hold, &busy, 4)
        .await
        .unwrap()
        .is_empty());
    let one = db.claim_webhooks("n1", 10, hold, &[], 1).await.unwrap();
    assert_eq!(one.len(), 1);
    db.release_webhooks("n1", &[one[0].id.clone()])
        .await
        .unwrap();
    let first = db.claim_webhooks("n1", 10, hold, &[], 4).await.unwrap();
    assert_eq!(first.len(), 3);
    assert!(db
        .claim_webhooks("n2", 10, hold, &[], 4)
        .await
        .unwrap()
        .is_empty());
    assert!(db.next_webhook_in().await.unwrap().unwrap() > Duration::from_secs(1));

    // A let-go claim is free at once; an unrecorded one is free when it runs out.
    let (let_go, rest) = first.split_at(1);
    db.release_webhooks("n1", &[let_go[0].id.clone()])
        .await
        .unwrap();
    let again = db
        .claim_webhooks("n2", 10, Duration::from_secs(60), &[], 4)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, let_go[0].id);
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let taken_over = db.claim_webhooks("n2", 10, hold, &[], 4).await.unwrap();
    assert_eq!(taken_over.len(), 2);

    // The node whose claim ran out cannot change the event; its attempt is still logged.
    let ev = &rest[0];
    let mut delivered = ev.clone();
    delivered.status = orchestr8_async::model::DeliveryStatus::Delivered;
    delivered.attempts = 1;
    assert!(!db
        .record_webhook_attempt("n1", &attempt_of(ev, 1), &delivered, None)
        .await
        .unwrap());
    // The holder's attempt counts: a retry, due again in a second by the database's clock.
    let mut retry = ev.clone();
    retry.attempts = 1;
    retry.last_error = Some("HTTP 503".into());
    assert!(db
        .record_webhook_attempt(
            "n2",
            &attempt_of(ev, 1),
            &retry,
            Some(Duration::from_secs(1))
        )
        .await
        .unwrap());
    assert!(db
        .claim_webhooks("n1", 10, hold, &[], 4)
        .await
        .unwrap()
        .is_empty());
    let due_in = db.next_webhook_in().await.unwrap().unwrap();
    assert!(due_in <= Duration::from_secs(1), "{due_in:?}");
    let history = db.webhook_history(ev.task_id, None).await.unwrap();
    assert_eq!(history.len(), 2, "both attempts happened: {history:?}");

    // A node that leaves lets go of its claims; a node given up claims nothing.
    db.leave("n2").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(db
        .claim_webhooks("n2", 10, hold, &[], 4)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        db.claim_webhooks("n1", 10, hold, &[], 4)
            .await
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn a_workflow_step_nobody_took_is_found_exactly() {
    use orchestr8_async::model::{Phase, PhaseStatus, Workflow, WorkflowStatus};
    use orchestr8_async::store::postgres::{DraftChange, WorkflowStep};
    let (db, _) = fresh().await;
    let wf = Workflow {
        id: Uuid::now_v7(),
        name: "w".into(),
        description: None,
        webhook_url: None,
        status: WorkflowStatus::Draft,
        max_parallel: None,
        error: None,
        created_us: 1,
        started_us: None,
        completed_us: None,
    };
    db.insert_workflow(&wf).await.unwrap();
    let phase = Phase {
        workflow_id: wf.id,
        phase_id: "p".into(),
        name: "P".into(),
        depends_on: vec![],
        position: 0,
        status: PhaseStatus::Pending,
        started_us: None,
        completed_us: None,
    };
    let add = |change: DraftChange| {
        let db = db.clone();
        async move {
            db.change_draft(wf.id, move |_, _, _| Ok::<_, ()>(change))
                .await
                .unwrap()
                .unwrap()
                .unwrap()
        }
    };
    add(DraftChange::Phase(phase)).await;
    let mut tasks = Vec::new();
    for i in 0..2 {
        let mut t = task("a", Priority::Normal, 10 + i);
        t.workflow_id = Some(wf.id);
        t.phase_id = Some("p".into());
        add(DraftChange::Task(Box::new(new(t.clone())))).await;
        tasks.push(t);
    }
    let q = queues(&["default"]);
    assert!(claim(&db, "n1", "h1", &q, 2).await.is_empty(), "gated");
    let mut running = wf.clone();
    running.status = WorkflowStatus::Running;
    let start = running.clone();
    db.step_workflow(wf.id, move |_, _, _, _| {
        Ok::<_, ()>(WorkflowStep {
            workflow: Some(start),
            open: vec!["p".into()],
            ..WorkflowStep::default()
        })
    })
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    let mut claimed = claim(&db, "n1", "h1", &q, 1).await;
    assert_eq!(claimed.len(), 1);
    assert!(db.stale_workflows(10).await.unwrap().is_empty());

    // An end recorded with no step after it: the workflow is owed one.
    let mut done = claimed.remove(0);
    done.status = TaskStatus::Completed;
    done.completed_us = Some(5);
    db.finish("n1", &[ended(&done)]).await.unwrap();
    assert_eq!(db.stale_workflows(10).await.unwrap(), [wf.id]);
    // A step that saw the end settles it, whatever it decided.
    let nothing = |_: &Workflow, _: &[Phase], tasks: &[Task], _: i64| {
        assert!(tasks.iter().any(|t| t.status == TaskStatus::Completed));
        Ok::<_, ()>(WorkflowStep::default())
    };
    db.step_workflow(wf.id, nothing)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(db.stale_workflows(10).await.unwrap().is_empty());

    // An ended workflow with a task still pending is owed one too, and its task is not claimed.
    let mut ended_wf = running.clone();
    ended_wf.status = WorkflowStatus::Failed;
    db.step_workflow(wf.id, move |_, _, _, _| {
        Ok::<_, ()>(WorkflowStep {
            workflow: Some(ended_wf),
            ..WorkflowStep::default()
        })
    })
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert!(claim(&db, "n1", "h1", &q, 1).await.is_empty());
    assert_eq!(db.stale_workflows(10).await.unwrap(), [wf.id]);
    db.step_workflow(wf.id, |_, _, _, _| {
        Ok::<_, ()>(WorkflowStep {
            cancel_unfinished: Some("its workflow had ended".into()),
            ..WorkflowStep::default()
        })
    })
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    let (left, _) = db.task(tasks[1].id).await.unwrap().unwrap();
    assert_eq!(left.status, TaskStatus::Cancelled);
    assert!(db.stale_workflows(10).await.unwrap().is_empty());
}

/// Whether every connection the driver keeps to `url`'s database is encrypted, and how many.
async fn encrypted_connections(url: &str) -> (i64, i64) {
    let db = url::Url::parse(url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_string();
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.datname = $1 AND a.application_name = 'orchestr8-async'",
            &[&db],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_is_used_and_checked_as_the_url_asks() {
    let server = pg::server();
    let cert = server.tls_cert().display().to_string();
    let url = server.fresh_database().await;
    // The server's certificate names `localhost` only.
    let by_name = url.replace("127.0.0.1", "localhost");
    // Checked against its CA file and the host's name.
    let db = connect(&format!("{by_name}?sslmode=verify-full&sslrootcert={cert}"))
        .await
        .expect("verify-full with the server's CA, by its name");
    assert!(db.now_us().await.unwrap() > 0);
    let (tls, plain) = encrypted_connections(&url).await;
    assert!(tls >= 1 && plain == 0, "{tls} encrypted, {plain} plain");
    drop(db);
    // By an address the certificate does not name: refused by verify-full, not by verify-ca.
    let e = connect(&format!("{url}?sslmode=verify-full&sslrootcert={cert}"))
        .await
        .err()
        .expect("127.0.0.1 is not the certificate's name");
    assert!(e.to_string().contains("certificate"), "{e}");
    connect(&format!("{url}?sslmode=verify-ca&sslrootcert={cert}"))
        .await
        .expect("verify-ca checks the chain only")
        .ping()
        .await
        .unwrap();
    // Another CA: the chain is refused, by verify-ca too.
    let other = tempfile::tempdir().unwrap();
    let other_ca = other.path().join("other.crt");
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=another CA", "-keyout"])
        .arg(other.path().join("other.key"))
        .arg("-out")
        .arg(&other_ca)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let e = connect(&format!(
        "{url}?sslmode=verify-ca&sslrootcert={}",
        other_ca.display()
    ))
    .await
    .err()
    .expect("a chain to another CA is refused");
    assert!(e.to_string().contains("certificate"), "{e}");
    // Encrypted without a check of the certificate, as libpq's `require`.
    connect(&format!("{url}?sslmode=require"))
        .await
        .expect("require")
        .ping()
        .await
        .unwrap();
    // Checked against the public web's roots, the tests' own CA is not trusted.
    let e = connect(&format!("{by_name}?sslmode=verify-full"))
        .await
        .err()
        .expect("a private CA is not a public one");
    assert!(e.to_string().contains("certificate"), "{e}");
    // What cannot work says what to write.
    for (bad, says) in [
        ("sslmode=always", "verify-full"),
        ("sslmode=verify-ca", "sslrootcert="),
        ("sslmode=verify-full&sslrootcert=ca.pem", "absolute"),
    ] {
        let e = connect(&format!("{url}?{bad}")).await.err().unwrap();
        assert!(e.to_string().contains(says), "{bad}: {e}");
    }
}
