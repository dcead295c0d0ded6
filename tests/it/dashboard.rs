//! The dashboard: in headless Chromium over WebDriver (as a person uses it), and its guard and
//! live feed over plain HTTP (as a hostile page or a script would try it).

use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::harness::*;
use crate::stub_http::free_port;

/// A chromedriver process (in its own process group, with the Chromium it starts) and a
/// WebDriver session on headless Chromium. End it with [`Browser::quit`]; a test that panics
/// kills the whole group on drop.
struct Browser {
    client: Option<Client>,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let driver_bin = which("chromedriver");
        let chromium = which("chromium");
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let mut last = String::new();
        // A port found free may be taken before chromedriver binds it: then another one.
        for _ in 0..3 {
            let port = free_port();
            let mut driver = tokio::process::Command::new(&driver_bin)
                .arg(format!("--port={port}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .expect("start chromedriver");
            let url = format!("http://127.0.0.1:{port}");
            for _ in 0..150 {
                if let Ok(Some(status)) = driver.try_wait() {
                    last = format!("chromedriver exited: {status}");
                    break;
                }
                let connector = hyper_util::client::legacy::connect::HttpConnector::new();
                match ClientBuilder::new(connector)
                    .capabilities(caps.clone())
                    .connect(&url)
                    .await
                {
                    Ok(client) => {
                        return Browser {
                            client: Some(client),
                            driver,
                            _profile: profile,
                        }
                    }
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("no WebDriver session with Chromium: {last}");
    }

    /// Ends the session (Chromium exits), then chromedriver.
    async fn quit(mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.close().await;
        }
        let _ = self.driver.kill().await;
    }

    fn c(&self) -> &Client {
        self.client.as_ref().expect("open")
    }

    async fn text(&self, css: &str) -> String {
        self.c()
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    async fn count(&self, css: &str) -> usize {
        self.c()
            .find_all(Locator::Css(css))
            .await
            .map(|v| v.len())
            .unwrap_or(0)
    }

    /// Waits until the script (a JS expression) is true.
    async fn until(&self, what: &str, js: &str) {
        for _ in 0..300 {
            let v = self
                .c()
                .execute(&format!("return !!({js});"), vec![])
                .await
                .unwrap_or(Value::Bool(false));
            if v == Value::Bool(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let src = self.c().source().await.unwrap_or_default();
        panic!(
            "never: {what} ({js})\npage: {}",
            &src[..src.len().min(4000)]
        );
    }

    async fn click(&self, css: &str) {
        self.c()
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // After a panic: the driver and every Chromium process it started.
        if let Some(pid) = self.driver.id() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn which(bin: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"] {
        let p = format!("{dir}/{bin}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{bin} is not installed: the dashboard tests need Debian's chromium and chromium-driver (.ci/run installs them)");
}

/// The dashboard's first URL, from the CLI command a person runs.
async fn dashboard_url(env: &Env) -> String {
    let v = env.cli_json(&["dashboard", "--no-open"]).await;
    assert_eq!(v["opened"], false);
    v["url"].as_str().unwrap().to_string()
}

fn origin_of(url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    u.origin().ascii_serialization()
}

/// Reads an event stream until `needle` has come (within 20 s).
pub(crate) async fn read_until(feed: &mut reqwest::Response, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    while !seen.contains(needle) {
        let chunk = tokio::time::timeout_at(deadline, feed.chunk())
            .await
            .unwrap_or_else(|_| panic!("the feed never said {needle}: {seen}"))
            .unwrap()
            .unwrap_or_else(|| panic!("the feed ended before {needle}: {seen}"));
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// A page of another origin (another port of the same host: same site, so a SameSite cookie
/// alone would not stop it) that POSTs a form to `target` as soon as it loads.
async fn hostile_page(target: String) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let html = format!(
        "<!doctype html><html><body><form id=f method=POST action=\"{target}\"><input name=x value=1></form>\
         <script>document.getElementById('f').submit()</script></body></html>"
    );
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let html = html.clone();
            async move { axum::response::Html(html) }
        }),
    );
    let h = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://127.0.0.1:{port}/"), h)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_follows_cancels_and_retries_in_the_browser() {
    let env = Env::new();
    env.shell_agent(
        "chatty",
        "i=0; while [ $i -lt 6000 ]; do i=$((i+1)); echo \"step $i\" >&2; sleep 0.1; done",
        "",
    );
    env.shell_agent(
        "flaky",
        "echo 'reading settings' >&2; echo 'boom: the settings file is missing' >&2; exit 3",
        "",
    );
    env.shell_agent("quick", "echo '# Report' ; echo; echo '- **all good**'", "");
    let s = env.start().await;
    let chatty = s.submit("chatty worker", "chatty", "talk", json!({})).await;
    let flaky = s.submit("flaky job", "flaky", "try", json!({})).await;
    s.until(&chatty, "running", |t| t["status"] == "running")
        .await;
    s.until(&flaky, "failed", |t| t["status"] == "failed").await;

    // A workflow of three phases: design, then build and docs side by side.
    let w = s.call("workflow_create", json!({"name": "release"})).await["workflow_id"]
        .as_str()
        .unwrap()
        .to_string();
    for (p, deps) in [
        ("design", vec![]),
        ("build", vec!["design"]),
        ("docs", vec!["design"]),
    ] {
        s.call(
            "workflow_add_phase",
            json!({"workflow_id": w, "phase_id": p, "name": p, "depends_on": deps}),
        )
        .await;
    }
    let mut wf_tasks = Vec::new();
    for (p, n) in [
        ("design", "sketch"),
        ("build", "compile"),
        ("build", "link"),
        ("docs", "write"),
    ] {
        let t = s
            .call(
                "workflow_add_task",
                json!({"workflow_id": w, "phase_id": p, "name": n, "agent_name": "quick", "agent_instructions": "go"}),
            )
            .await;
        wf_tasks.push(t["task_id"].as_str().unwrap().to_string());
    }
    s.call("workflow_start", json!({"workflow_id": w})).await;
    // Ended before the browser looks, so that no page changes under a click.
    let done = s.wait_all(&wf_tasks, 60).await;

    let url = dashboard_url(&env).await;
    let origin = origin_of(&url);
    let b = Browser::start().await;

    // Without the token: refused, and told how to get in.
    b.c().goto(&format!("{origin}/dashboard/")).await.unwrap();
    let refused = b.text("#refused").await;
    assert!(refused.contains("not signed in"), "{refused}");
    // With it: signed in, and the token is gone from the address.
    b.c().goto(&url).await.unwrap();
    b.until(
        "the overview",
        "document.querySelector('[data-count=running]')",
    )
    .await;
    let here = b.c().current_url().await.unwrap();
    assert!(here.query().is_none(), "token left in the address: {here}");
    b.until(
        "the page key taken from the address",
        "location.hash === ''",
    )
    .await;

    // The running task's log grows while the page stays (no reload: the marker survives).
    b.click(&format!("a[href='/dashboard/tasks/{chatty}']"))
        .await;
    b.until(
        "log lines",
        "document.querySelectorAll('#log .line').length > 0",
    )
    .await;
    b.c()
        .execute("window.__stayed = true; return true;", vec![])
        .await
        .unwrap();
    let before = b.count("#log .line").await;
    b.until(
        "new lines arriving live",
        &format!(
            "window.__stayed && document.querySelectorAll('#log .line').length >= {}",
            before + 10
        ),
    )
    .await;
    let last = b
        .c()
        .execute(
            "const l = [...document.querySelectorAll('#log .line .msg')]; return l[l.length-1].textContent;",
            vec![],
        )
        .await
        .unwrap();
    assert!(last.as_str().unwrap_or("").starts_with("step "), "{last}");

    // Cancel from the page: the badge changes without a reload, and the engine agrees.
    b.click("#cancel").await;
    b.until(
        "the status shown as cancelled",
        "window.__stayed && document.querySelector('#task-status .badge').textContent === 'cancelled'",
    )
    .await;
    assert_eq!(s.status(&chatty).await["status"], "cancelled");

    // The failing task: from the overview's failed card to its error, then retried.
    b.click("a[data-nav=overview]").await;
    b.click("a.card[data-count=failed]").await;
    b.until(
        "the failed task listed",
        &format!("document.querySelector(\"tr[data-task-id='{flaky}']\")"),
    )
    .await;
    b.click(&format!("tr[data-task-id='{flaky}'] a")).await;
    let error = b.text("#task-error").await;
    assert!(
        error.contains("boom: the settings file is missing"),
        "{error}"
    );
    b.click("#retry").await;
    b.until(
        "the retry's attempt failing again",
        "document.querySelector('#task-status .badge').textContent === 'failed' && document.body.textContent.includes('2 (retries allowed')",
    )
    .await;
    assert_eq!(s.status(&flaky).await["attempt"], 2);

    // The workflow, from the list, as a picture: every task a box with its status, the edges.
    b.click("a[data-nav=workflows]").await;
    b.click(&format!("tr[data-workflow-id='{w}'] a")).await;
    b.until("the picture", "document.querySelector('#picture .box')")
        .await;
    for t in &done {
        let id = t["task_id"].as_str().unwrap();
        let status = t["status"].as_str().unwrap();
        let shown = b
            .c()
            .find(Locator::Css(&format!("#picture .box[data-task-id='{id}']")))
            .await
            .unwrap_or_else(|_| panic!("task {id} is not in the picture"))
            .attr("data-status")
            .await
            .unwrap();
        assert_eq!(shown.as_deref(), Some(status));
    }
    // design → build and design → docs.
    b.until(
        "the two edges",
        "document.querySelectorAll('#picture svg.edges path').length === 2",
    )
    .await;
    // A completed task's result is rendered Markdown.
    b.click(&format!("#picture .box[data-task-id='{}']", wf_tasks[0]))
        .await;
    b.until(
        "the rendered result",
        "document.querySelector('#result h1')",
    )
    .await;
    assert_eq!(b.text("#result strong").await, "all good");

    // A page of another origin posting a form to the dashboard (the browser sends the cookie,
    // the site being the same) is refused, and the task keeps running.
    let target = s.submit("target", "chatty", "talk", json!({})).await;
    s.until(&target, "running", |t| t["status"] == "running")
        .await;
    let (page, server) =
        hostile_page(format!("{origin}/dashboard/api/tasks/{target}/cancel")).await;
    b.c().goto(&page).await.unwrap();
    b.until(
        "the refusal",
        "document.body && document.body.textContent.includes('cross-site')",
    )
    .await;
    assert_eq!(s.status(&target).await["status"], "running");
    server.abort();
    s.call("task_cancel", json!({"task_id": target})).await;
    b.quit().await;
    s.stop().await;
}

/// The guard and the feed over plain HTTP, in api mode with a token.
#[tokio::test(flavor = "multi_thread")]
async fn the_guard_and_the_live_feed_over_http() {
    let env = Env::new();
    env.shell_agent("echo", "cat", "");
    let api = env.start_api(Some("sekrit")).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = api.base.clone();

    // No token: the page says how to get in, the data is refused.
    let r = http.get(format!("{base}/dashboard/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("orchestr8-async-server dashboard"));
    let r = http
        .get(format!("{base}/dashboard/api/overview"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A wrong token does not sign in.
    let r = http
        .get(format!("{base}/dashboard/?token=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // With the API token as the first URL's token: a cookie, and back to the page without it,
    // the page key in the fragment.
    let r = http
        .get(format!("{base}/dashboard/tasks?token=sekrit"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let key = location
        .strip_prefix("/dashboard/tasks#k=")
        .unwrap_or_else(|| panic!("{location}"))
        .to_string();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap().to_string();
    let get = |path: &str| {
        http.get(format!("{base}{path}"))
            .header("cookie", &cookie)
            .header("x-orchestr8-key", &key)
            .send()
    };
    let r = get("/dashboard/tasks").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    assert_eq!(get("/dashboard/api/session").await.unwrap().status(), 200);
    // The cookie alone (a browser sends it to every port of the host) reads nothing.
    let r = http
        .get(format!("{base}/dashboard/api/overview"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The command's address works once.
    let (code, out, err) = env.cli(&["dashboard", "--no-open"]).await;
    assert_eq!(code, 0, "{err}");
    let url = out.trim().to_string();
    assert!(
        url.starts_with(&format!("{base}/dashboard/?token=")),
        "{out}"
    );
    assert_eq!(http.get(&url).send().await.unwrap().status(), 303);
    let again = http.get(&url).send().await.unwrap();
    assert_eq!(again.status(), 401);
    assert!(again.text().await.unwrap().contains("used already"));

    // A Host that is not this machine (DNS rebinding) is refused even with the cookie.
    let r = http
        .get(format!("{base}/dashboard/api/overview"))
        .header("cookie", &cookie)
        .header("x-orchestr8-key", &key)
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // The live feed: `ready` first, then a new task's id as it is created and ends.
    let mut feed = get("/dashboard/api/events").await.unwrap();
    assert_eq!(feed.status(), 200);
    read_until(&mut feed, "event: ready").await;
    let (_, t) = api
        .post(
            "/api/tasks",
            json!({"name": "hi", "agent_name": "echo", "agent_instructions": "hi"}),
        )
        .await;
    let id = t["task_id"].as_str().unwrap().to_string();
    read_until(&mut feed, &format!("\"{id}\":\"completed\"")).await;
    drop(feed);

    // Changes need the page key, from the dashboard's own origin.
    let post = |path: String, key: Option<&str>, origin: Option<&str>| {
        let mut r = http.post(format!("{base}{path}")).header("cookie", &cookie);
        if let Some(k) = key {
            r = r.header("x-orchestr8-key", k);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    let retry = format!("/dashboard/api/tasks/{id}/retry");
    let r = post(retry.clone(), None, None).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = post(retry.clone(), Some(&key), Some("http://127.0.0.1:1"))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The same refusals as the tool: a completed task cannot be retried.
    let r = post(retry.clone(), Some(&key), Some(&base)).await.unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("completed"),
        "{body}"
    );
    // A script with the API token needs no cookie.
    let r = http
        .get(format!("{base}/dashboard/api/tasks/{id}"))
        .bearer_auth("sekrit")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let task: Value = r.json().await.unwrap();
    assert_eq!(task["instructions"], "hi");
    assert_eq!(task["result"], "hi");

    // Bad filters say what is wrong.
    let r: Value = get("/dashboard/api/tasks?status=done")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r["error"].as_str().unwrap().contains("not one of"), "{r}");
    let r: Value = get("/dashboard/api/tasks?after=xyz")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r["error"].as_str().unwrap().contains("next"), "{r}");
    let r = get("/dashboard/api/nothing-here").await.unwrap();
    assert_eq!(r.status(), 404);
}

/// Paging by position: every task exactly once, newest first, whatever the page size.
#[tokio::test(flavor = "multi_thread")]
async fn paging_visits_every_task_once() {
    let env = Env::new();
    env.shell_agent("echo", "cat", "");
    let api = env.start_api(Some("t")).await;
    let mut ids = Vec::new();
    for i in 0..23 {
        let (_, t) = api
            .post("/api/tasks", json!({"agent_name": "echo", "agent_instructions": "x", "name": format!("job {i}")}))
            .await;
        ids.push(t["task_id"].as_str().unwrap().to_string());
    }
    let http = reqwest::Client::new();
    let mut after = String::new();
    let mut listed = Vec::new();
    loop {
        let v: Value = http
            .get(format!(
                "{}/dashboard/api/tasks?limit=5&after={after}",
                api.base
            ))
            .bearer_auth("t")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["total"], 23);
        for t in v["tasks"].as_array().unwrap() {
            listed.push(t["task_id"].as_str().unwrap().to_string());
        }
        match v["next"].as_str() {
            Some(n) => after = n.to_string(),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(listed, ids);
    // Name search, any case.
    let v: Value = http
        .get(format!("{}/dashboard/api/tasks?q=JOB%201", api.base))
        .bearer_auth("t")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // "job 1" and "job 10".."job 19".
    assert_eq!(v["total"], 11, "{v}");
}

/// An open dashboard keeps a detached engine up; closing it lets the engine go.
#[tokio::test(flavor = "multi_thread")]
async fn an_open_page_keeps_the_engine_up() {
    let mut env = Env::new();
    env.set("ORCHESTR8_IDLE_EXIT_SECONDS", "1");
    let url = dashboard_url(&env).await;
    let pid = env.engine_pid().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http.get(&url).send().await.unwrap();
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let key = r.headers()["location"]
        .to_str()
        .unwrap()
        .split("#k=")
        .nth(1)
        .unwrap()
        .to_string();
    let origin = origin_of(&url);
    // As the page asks: the key as a query parameter (an EventSource sends no headers).
    let feed = http
        .get(format!("{origin}/dashboard/api/events?k={key}"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(alive(pid), "the engine left while a page was open");
    drop(feed);
    wait_gone(pid).await;
}

/// A fake Claude Code for the screenshots: a short conversation on stderr-free stream-json, then
/// a Markdown result with usage and a cost that depends on the task.
const PICTURE_CLAUDE: &str = r###"#!/bin/sh
input="$(cat)"
n=$(printf '%s' "$input" | wc -c)
echo '{"type":"system","subtype":"init","cwd":"/repo","session_id":"s","model":"claude-sonnet-4-5","tools":["Read"]}'
echo '{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"Reading the code."},{"type":"tool_use","id":"t1","name":"Read","input":{"file_path":"src/lib.rs"}}]},"session_id":"s"}'
sleep 0.3
echo '{"type":"user","message":{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"ok"}]},"session_id":"s"}'
cost=$(awk "BEGIN { printf \"%.4f\", 0.02 + ($n % 17) / 100 }")
printf '{"type":"result","subtype":"success","is_error":false,"num_turns":2,"result":"## Review\\n\\n- **No blocking issues.**\\n- Two small fixes: `parse_args` ignores `--quiet`; the README example is out of date.\\n\\n| file | verdict |\\n|---|---|\\n| src/lib.rs | fine |\\n| src/cli.rs | fix |\\n","session_id":"s","total_cost_usd":%s,"usage":{"input_tokens":%s,"output_tokens":420}}\n' "$cost" "$((1200 + n))"
"###;

/// Makes the README's screenshots (`docs/dashboard-*.png`) from a real engine with real agent
/// processes: `cargo test --release -- --ignored screenshots_for_the_readme`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "writes docs/; run by hand when the dashboard's look changes"]
async fn screenshots_for_the_readme() {
    let mut env = Env::new();
    let claude = env.script("bin/claude", PICTURE_CLAUDE);
    env.set("ORCHESTR8_CLAUDE_BIN", claude.to_str().unwrap());
    env.agent(
        "code-reviewer",
        "runner: claude\nmodel: sonnet",
        "You review code.",
    );
    env.agent(
        "test-writer",
        "runner: claude\nmodel: haiku",
        "You write tests.",
    );
    env.shell_agent(
        "builder",
        "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo \"[build] compiling crate $i of 3000\" >&2; sleep 0.2; done",
        "",
    );
    env.shell_agent(
        "deployer",
        "echo 'connecting to staging' >&2; echo 'error: staging rejected the release: migration 0042 is not applied' >&2; exit 1",
        "",
    );
    let s = env.start().await;
    let mut ids = Vec::new();
    for (i, name) in [
        "review auth module",
        "review billing",
        "review search",
        "review the CLI",
        "review storage layer",
        "review web handlers",
        "review config loading",
    ]
    .iter()
    .enumerate()
    {
        ids.push(
            s.submit(
                name,
                "code-reviewer",
                &format!("review {}", "x".repeat(i * 3)),
                json!({}),
            )
            .await,
        );
    }
    for name in [
        "tests for parser",
        "tests for exporter",
        "tests for the scheduler",
    ] {
        ids.push(
            s.submit(name, "test-writer", "write tests", json!({}))
                .await,
        );
    }
    let failed = s
        .submit("deploy to staging", "deployer", "deploy", json!({}))
        .await;
    s.wait_all(&ids, 60).await;
    s.wait_one(&failed, 60).await;
    let w = s
        .call(
            "workflow_create",
            json!({"name": "release 1.4", "description": "design, build in parallel, then test"}),
        )
        .await["workflow_id"]
        .as_str()
        .unwrap()
        .to_string();
    for (p, deps) in [
        ("design", vec![]),
        ("implement", vec!["design"]),
        ("docs", vec!["design"]),
        ("test", vec!["implement", "docs"]),
    ] {
        s.call(
            "workflow_add_phase",
            json!({"workflow_id": w, "phase_id": p, "name": p, "depends_on": deps}),
        )
        .await;
    }
    for (p, n, agent) in [
        ("design", "design the API", "code-reviewer"),
        ("implement", "implement endpoints", "code-reviewer"),
        ("implement", "implement storage", "code-reviewer"),
        ("docs", "write the guide", "code-reviewer"),
        ("test", "full build", "builder"),
    ] {
        s.call(
            "workflow_add_task",
            json!({"workflow_id": w, "phase_id": p, "name": n, "agent_name": agent, "agent_instructions": "go"}),
        )
        .await;
    }
    s.call("workflow_start", json!({"workflow_id": w})).await;
    let building = s
        .submit("build release artifacts", "builder", "build", json!({}))
        .await;
    s.until(&building, "running", |t| t["status"] == "running")
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    let url = dashboard_url(&env).await;
    let origin = origin_of(&url);
    let b = Browser::start().await;
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    let shots = [
        (
            url.clone(),
            "document.querySelector('#view .chart')",
            "light",
            "overview",
        ),
        (
            format!("{origin}/dashboard/tasks"),
            "document.querySelector('#tasks')",
            "light",
            "tasks",
        ),
        (
            format!("{origin}/dashboard/tasks/{}", ids[0]),
            "document.querySelector('#result table')",
            "light",
            "task",
        ),
        (
            format!("{origin}/dashboard/tasks/{building}"),
            "document.querySelectorAll('#log .line').length > 10",
            "dark",
            "running-dark",
        ),
        (
            format!("{origin}/dashboard/workflows/{w}"),
            "document.querySelectorAll('#picture svg.edges path').length === 4",
            "dark",
            "workflow-dark",
        ),
        (
            format!("{origin}/dashboard/agents"),
            "document.querySelector('#agents')",
            "light",
            "agents",
        ),
    ];
    for (address, ready, theme, name) in shots {
        b.c().goto(&address).await.unwrap();
        b.c()
            .execute(
                &format!("localStorage.setItem('orchestr8-theme', '{theme}'); return true;"),
                vec![],
            )
            .await
            .unwrap();
        b.c().refresh().await.unwrap();
        b.until(name, ready).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let png = b.c().screenshot().await.unwrap();
        std::fs::write(docs.join(format!("dashboard-{name}.png")), png).unwrap();
    }

    s.call("task_cancel", json!({"task_id": building})).await;
    b.quit().await;
    s.stop().await;
}
