//! The engine's local API on a Unix socket next to the database file.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

/// One HTTP/1.1 request over a Unix socket; returns the status and the JSON body.
async fn unix_http(path: &Path, method: &str, target: &str, body: Option<Value>) -> (u16, Value) {
    let mut s = tokio::net::UnixStream::connect(path)
        .await
        .expect("connect");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.into())),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_engine_serves_its_api_on_a_private_socket_next_to_the_database() {
    let env = Env::new();
    env.shell_agent("echo", "cat", "");
    let sock = env.path("db/o8.duckdb.sock");
    // A stale socket from a dead engine: a socket file nobody listens on.
    std::fs::create_dir_all(env.path("db")).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());

    let s = env.start().await;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only the owner may connect");
    let (code, health) = unix_http(&sock, "GET", "/health", None).await;
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["db"], "ok");
    // The same service as the MCP tools: a task created through the socket is seen over MCP.
    let (code, t) = unix_http(
        &sock,
        "POST",
        "/api/tasks",
        Some(json!({"name": "via socket", "agent_name": "echo", "agent_instructions": "hi"})),
    )
    .await;
    assert_eq!(code, 201, "{t}");
    let done = s.wait_one(t["task_id"].as_str().unwrap(), 20).await;
    assert_eq!(done["result"], "hi");
    let mcp_id = s.submit("via mcp", "echo", "yo", json!({})).await;
    s.wait_one(&mcp_id, 20).await;
    let (code, got) = unix_http(&sock, "GET", &format!("/api/tasks/{mcp_id}"), None).await;
    assert_eq!(code, 200);
    assert_eq!(got["result"], "yo");
    s.stop().await;
    env.stop_engines().await;
    assert!(!sock.exists(), "a clean stop removes the socket");

    // kill -9 leaves it behind; the next engine replaces it.
    let s = env.start().await;
    s.kill9(&env).await;
    assert!(sock.exists());
    let s = env.start().await;
    let (code, _) = unix_http(&sock, "GET", "/health", None).await;
    assert_eq!(code, 200);
    s.stop().await;
}

/// Without its socket no session could reach an engine: a file in the socket's place stops
/// the start with a message naming it, and is left alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_in_the_sockets_place_is_left_alone_and_named() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("db")).unwrap();
    std::fs::write(env.path("db/o8.duckdb.sock"), "not a socket").unwrap();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(40),
        env.command()
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the session gives up")
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(
        std::fs::read_to_string(env.path("db/o8.duckdb.sock")).unwrap(),
        "not a socket"
    );
    assert!(env.engine_pids().is_empty());
}

/// The socket admits only the engine's own user, whatever the file's mode allows: an engine
/// run as `nobody` refuses root (whom file modes do not stop), by the peer's credentials the
/// kernel records at connect, and serves its own user's commands.
#[tokio::test(flavor = "multi_thread")]
async fn the_socket_refuses_connections_from_other_users() {
    use std::os::unix::fs::chown;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: running an engine as another user needs root (CI runs as root)");
        return;
    }
    const NOBODY: u32 = 65534;
    let env = Env::new();
    let home = env.path("nobody");
    std::fs::create_dir_all(&home).unwrap();
    chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    // The test binary's folder is root's; nobody runs a copy.
    let bin = home.join("orchestr8-async-server");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("HOME", &home)
            .env("ORCHESTR8_DB_PATH", home.join("o8.duckdb"))
            .env("ORCHESTR8_AGENTS_DIR", &home)
            .current_dir(&home)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        cmd
    };
    let engine_err = env.path("engine.err");
    let mut engine = as_nobody(&["engine"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&engine_err).unwrap())
        .spawn()
        .unwrap();
    let sock = home.join("o8.duckdb.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no socket: {}",
            std::fs::read_to_string(&engine_err).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Root connects (the mode does not stop it) and is closed on, unanswered.
    let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let _ = s
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    assert!(
        raw.is_empty(),
        "root was answered: {}",
        String::from_utf8_lossy(&raw)
    );
    let log = std::fs::read_to_string(&engine_err).unwrap_or_default();
    assert!(
        log.contains("refused a connection on the socket from uid 0"),
        "{log}"
    );

    // The engine's own user is served.
    let out = as_nobody(&["status", "--json"]).output().await.unwrap();
    assert!(
        out.status.success(),
        "status as the engine's user failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status.is_object(), "{status}");
    engine.start_kill().unwrap();
    let _ = engine.wait().await;
}
