//! A full disk under the database: new writes are refused saying so, answered writes are kept,
//! reads go on, and everything resumes by itself once space is freed. And the journal's bound:
//! writers wait for the fold instead of growing the file. Mounting a small tmpfs needs root
//! (CI runs as root).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

/// A tmpfs of `size` mounted on `dir` for the test's life.
struct Mounted(PathBuf);

impl Mounted {
    fn tmpfs(dir: PathBuf, size: &str) -> Mounted {
        std::fs::create_dir_all(&dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(ok.success(), "mount -t tmpfs failed");
        Mounted(dir)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn as_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
    false
}

/// The structured answer of a call, or its error message.
async fn call(s: &Server, tool: &str, args: Value) -> Result<Value, String> {
    let r = s
        .try_call(tool, args, Duration::from_secs(60))
        .await
        .expect("the session answers");
    let v = r.structured_content.unwrap_or_default();
    if r.is_error == Some(true) {
        return Err(v["error"].as_str().unwrap_or_default().to_string());
    }
    Ok(v)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_new_writes_keeps_the_answered_ones_and_recovers() {
    if !as_root() {
        return;
    }
    let env = Env::new();
    let _disk = Mounted::tmpfs(env.path("db"), "48m");
    env.shell_agent("ok", "echo done", "");
    env.shell_agent("slow", "sleep 3; echo slow-result", "");
    let s = env.start().await;
    let mut answered = Vec::new();
    for i in 0..5 {
        answered.push(s.submit(&format!("before-{i}"), "ok", "x", json!({})).await);
    }
    s.wait_all(&answered, 30).await;
    let slow = s.submit("slow", "slow", "x", json!({})).await;
    s.until(&slow, "running", |t| t["status"] == "running")
        .await;

    let fill = env.path("db/fill");
    {
        let mut f = std::fs::File::create(&fill).unwrap();
        let chunk = vec![7u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    // New writes are refused, saying why. (One may still fit in a page the journal already
    // has; it is answered, so it must be kept like the others.)
    let task = |name: &str| json!({"name": name, "agent_name": "ok", "agent_instructions": "x"});
    let mut refusal = None;
    for i in 0..20 {
        match call(&s, "task_async", task(&format!("during-{i}"))).await {
            Ok(v) => answered.push(v["task_id"].as_str().unwrap().to_string()),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refusal = refusal.expect("a write was refused on a full disk");
    assert!(
        refusal.to_lowercase().contains("no space left on"),
        "{refusal}\n{}",
        env.engine_log()
    );
    // Reads go on: by id and lists.
    for id in &answered[..5] {
        assert_eq!(s.status(id).await["status"], "completed");
    }
    let listed = call(&s, "list_tasks", json!({"status": "completed"}))
        .await
        .expect("list_tasks on a full disk");
    assert!(listed["tasks"].as_array().unwrap().len() >= 5, "{listed}");
    // The slow task ends while the disk is full: its outcome waits for space.
    tokio::time::sleep(Duration::from_secs(4)).await;

    std::fs::remove_file(&fill).unwrap();
    // It resumes by itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        match call(&s, "task_async", task("after")).await {
            Ok(v) => break v["task_id"].as_str().unwrap().to_string(),
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "writes did not resume: {e}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    assert_eq!(s.wait_one(&after, 30).await["status"], "completed");
    let slow_done = s.wait_one(&slow, 60).await;
    assert_eq!(slow_done["status"], "completed", "{slow_done}");
    assert_eq!(slow_done["result"], "slow-result\n");
    answered.push(after);
    answered.push(slow);
    // Every answered task ends once there is room again (an outcome waits in a backoff).
    for id in &answered {
        let t = s.wait_one(id, 60).await;
        assert_eq!(t["status"], "completed", "{t}");
    }

    // Nothing answered was lost, across a crash too.
    s.stop().await;
    env.kill9_engines().await;
    let s = env.start().await;
    for id in &answered {
        let t = s.wait_one(id, 60).await;
        assert_eq!(t["status"], "completed", "{t}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn writers_wait_for_the_fold_at_the_journal_bound() {
    let mut env = Env::new();
    env.set("ORCHESTR8_JOURNAL_MAX_BYTES", "65536");
    env.set("ORCHESTR8_LOG", "info,orchestr8_async::store=debug");
    env.shell_agent("ok", "echo done", "");
    let s = env.start().await;
    let instructions = "i".repeat(8 * 1024);
    let calls = (0..120).map(|i| {
        s.call(
            "task_async",
            json!({"name": format!("t{i}"), "agent_name": "ok",
                   "agent_instructions": instructions}),
        )
    });
    let ids: Vec<String> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|v| v["task_id"].as_str().unwrap().to_string())
        .collect();
    let log = env.engine_log();
    assert!(
        log.contains("the journal reached its bound"),
        "the bound was never reached: {log}"
    );
    s.wait_all(&ids, 120).await;
    s.stop().await;
    env.kill9_engines().await;
    let s = env.start().await;
    let listed = s.call("list_tasks", json!({"limit": 500})).await;
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 120);
    s.stop().await;
}
