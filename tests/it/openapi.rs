//! The OpenAPI document describes the server exactly: schemathesis (a pinned release from PyPI)
//! generates thousands of requests from it — valid ones, invalid ones, sequences that follow
//! created resources — and checks every answer against it with all its checks, both without a
//! token on loopback and with `ORCHESTR8_API_TOKEN` set (where an unauthenticated request must
//! be refused).

use crate::harness::*;

/// The schemathesis release the tests (and `.ci/run`) use.
const SCHEMATHESIS: &str = "4.32.5";

async fn schemathesis_passes(token: Option<&str>) {
    let bin = pip_tool(
        &format!("schemathesis-{SCHEMATHESIS}"),
        &format!("schemathesis=={SCHEMATHESIS}"),
        "schemathesis",
    );
    let env = Env::new();
    env.shell_agent("echo", "cat", "");
    let api = env.start_api(token).await;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(["--no-color", "run"])
        .arg(format!("{}/api/openapi.json", api.base))
        .args(["--checks", "all", "--seed", "20261202"])
        .current_dir(env.dir.path())
        .kill_on_drop(true);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(600), cmd.output())
        .await
        .expect("schemathesis finished within 10 minutes")
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("Tested: 20"), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_without_a_token() {
    schemathesis_passes(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_with_a_token() {
    schemathesis_passes(Some("a-token-for-schemathesis")).await;
}
