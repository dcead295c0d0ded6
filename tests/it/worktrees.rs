//! Isolated tasks in real git repositories made here: a worktree per attempt on a branch of its
//! own, `.worktreeinclude` and `worktree_setup`, `task_diff` over MCP and REST, refusals, kill -9
//! in the middle of an attempt, and workflow phases that build on each other's branches.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::harness::*;

/// Runs git in `dir` and returns its stdout (failing the test if git fails).
pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A repository at `rel` with one commit: `notes.txt` = "base\n" on branch main.
pub(crate) fn repo(env: &Env, rel: &str) -> PathBuf {
    let dir = env.path(rel);
    std::fs::create_dir_all(&dir).unwrap();
    git(&dir, &["init", "--quiet", "-b", "main"]);
    git(&dir, &["config", "user.name", "Test User"]);
    git(&dir, &["config", "user.email", "test@example.com"]);
    std::fs::write(dir.join("notes.txt"), "base\n").unwrap();
    git(&dir, &["add", "."]);
    git(&dir, &["commit", "--quiet", "-m", "first"]);
    dir
}

/// The paths of `git worktree list`, the main checkout first.
pub(crate) fn worktrees(repo: &Path) -> Vec<String> {
    git(repo, &["worktree", "list", "--porcelain"])
        .lines()
        .filter_map(|l| l.strip_prefix("worktree ").map(str::to_string))
        .collect()
}

fn orchestr8_branches(repo: &Path) -> Vec<String> {
    git(
        repo,
        &[
            "branch",
            "--list",
            "orchestr8/*",
            "--format=%(refname:short)",
        ],
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// The user's checkout is as they left it: on main, nothing changed, nothing untracked.
fn assert_checkout_untouched(repo: &Path, head: &str) {
    assert_eq!(git(repo, &["status", "--porcelain"]), "", "git status");
    assert_eq!(
        git(repo, &["rev-parse", "--abbrev-ref", "HEAD"]).trim(),
        "main"
    );
    assert_eq!(git(repo, &["rev-parse", "HEAD"]).trim(), head);
    assert_eq!(
        std::fs::read_to_string(repo.join("notes.txt")).unwrap(),
        "base\n"
    );
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} is not a string in {v}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_agents_on_one_repository_each_get_their_own_branch() {
    let env = Env::new();
    let repo = repo(&env, "work/repo");
    let head = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    // Both append to the same file at the same time, and say where they ran.
    env.shell_agent(
        "editor",
        "pwd >&2; sleep 0.5; echo \"$ORCHESTR8_TASK_NAME\" >> notes.txt; echo edited",
        "isolation: worktree",
    );
    let s = env.start().await;
    let wd = repo.display().to_string();
    // Five agents at once (more than the four workers: the fifth starts as one ends).
    let names = ["alpha", "beta", "gamma", "delta", "epsilon"];
    let mut ids = Vec::new();
    for name in names {
        ids.push(
            s.submit(
                name,
                "editor",
                "append your name",
                json!({"working_dir": wd}),
            )
            .await,
        );
    }
    // While it runs, the task shows its branch; its base is the HEAD at submit.
    let running = s
        .until(&ids[0], "running in its worktree", |t| {
            t["status"] == "running" && t["workspace"]["branch"].is_string()
        })
        .await;
    assert_eq!(running["workspace"]["base_commit"], head.as_str());
    assert!(running["workspace"]["head_commit"].is_null(), "{running}");

    let done = s.wait_all(&ids, 60).await;
    let mut branches = Vec::new();
    for (t, name) in done.iter().zip(names) {
        assert_eq!(t["status"], "completed", "{t}");
        let ws = &t["workspace"];
        assert_eq!(ws["repository"], wd.as_str(), "{t}");
        assert_eq!(ws["base_commit"], head.as_str());
        assert_eq!(ws["files_changed"], 1, "{t}");
        assert_eq!(ws["insertions"], 1);
        assert_eq!(ws["deletions"], 0);
        let branch = str_of(ws, "branch").to_string();
        assert!(
            branch.starts_with(&format!("orchestr8/{name}-")),
            "{branch}"
        );
        // The branch holds this task's edit only.
        assert_eq!(
            git(&repo, &["show", &format!("{branch}:notes.txt")]),
            format!("base\n{name}\n")
        );
        assert_eq!(
            git(&repo, &["rev-parse", &branch]).trim(),
            str_of(ws, "head_commit")
        );
        let message = git(&repo, &["log", "-1", "--format=%B", &branch]);
        assert!(
            message.contains(&format!("Orchestr8-Task-Id: {}", str_of(t, "task_id"))),
            "{message}"
        );
        assert_eq!(
            git(&repo, &["log", "-1", "--format=%an <%ae>", &branch]).trim(),
            "Test User <test@example.com>",
            "the user's identity is used"
        );
        // The result is the agent's, followed by where its work is.
        let result = str_of(t, "result");
        assert!(result.starts_with("edited\n"), "{result}");
        assert!(result.contains(&format!("branch `{branch}`")), "{result}");
        // It ran in a worktree of its own, not in the user's checkout.
        let logs = s.log_messages(str_of(t, "task_id")).await;
        let id = str_of(t, "task_id");
        assert!(
            logs.iter()
                .any(|l| l.ends_with(&format!(".worktrees/{id}"))),
            "{logs:?}"
        );
        branches.push(branch);
    }
    assert_checkout_untouched(&repo, &head);
    assert_eq!(worktrees(&repo), vec![wd.clone()], "no worktree is left");
    let mut listed = orchestr8_branches(&repo);
    listed.sort();
    branches.sort();
    assert_eq!(listed, branches, "five distinct branches, nothing else");
    // The plugin's hook names where each one's changes are.
    let project = env.path("").display().to_string();
    let (code, told, _) = env.cli(&["ended", "--project", &project]).await;
    assert_eq!(code, 0);
    for b in &branches {
        assert!(told.contains(&format!("[changes on branch {b}]")), "{told}");
    }

    // task_diff: the change against the base, every file, a filter, a cap.
    let d = s.call("task_diff", json!({"task_id": ids[0]})).await;
    assert_eq!(d["branch"], done[0]["workspace"]["branch"]);
    assert_eq!(d["truncated"], false);
    let diff = str_of(&d, "diff");
    assert!(
        diff.contains("+++ b/notes.txt") && diff.contains("\n+alpha\n"),
        "{diff}"
    );
    assert_eq!(
        d["files"],
        json!([{"path": "notes.txt", "insertions": 1, "deletions": 0}])
    );
    let none = s
        .call("task_diff", json!({"task_id": ids[0], "paths": ["src"]}))
        .await;
    assert_eq!(none["diff"], "");
    assert_eq!(none["files"], json!([]));
    let cut = s
        .call("task_diff", json!({"task_id": ids[0], "max_bytes": 40}))
        .await;
    assert_eq!(cut["truncated"], true);
    assert!(str_of(&cut, "diff").contains("diff cut after"), "{cut}");
    let err = s
        .call_err("task_diff", json!({"task_id": ids[0], "max_bytes": 0}))
        .await;
    assert!(err.contains("max_bytes"), "{err}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn worktreeinclude_files_are_copied_and_worktree_setup_runs_first() {
    let env = Env::new();
    let repo = repo(&env, "work/repo");
    std::fs::write(repo.join(".gitignore"), ".env\nbuild/\n").unwrap();
    std::fs::write(repo.join(".worktreeinclude"), ".env\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "ignore rules"]);
    let head = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    std::fs::write(repo.join(".env"), "SECRET=42\n").unwrap();
    std::fs::create_dir_all(repo.join("build")).unwrap();
    std::fs::write(repo.join("build/big"), "not wanted\n").unwrap();
    env.shell_agent(
        "uses-env",
        "cat .env; cat prepared.txt; test -e build/big && echo has-build || echo no-build",
        "isolation: worktree\nworktree_setup: \"echo preparing; cat .env > prepared.txt\"",
    );
    env.shell_agent(
        "bad-setup",
        "echo never",
        "isolation: worktree\nworktree_setup: \"echo dependency missing >&2; exit 3\"",
    );
    let s = env.start().await;
    let wd = repo.display().to_string();
    let ok = s
        .submit("with env", "uses-env", "go", json!({"working_dir": wd}))
        .await;
    let t = s.wait_one(&ok, 60).await;
    assert_eq!(t["status"], "completed", "{t}");
    let result = str_of(&t, "result");
    assert!(
        result.starts_with("SECRET=42\nSECRET=42\nno-build\n"),
        "{result}"
    );
    let logs = s.log_messages(&ok).await;
    assert!(
        logs.iter().any(|l| l == "worktree_setup: preparing"),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("copied 1 file(s) listed in .worktreeinclude")),
        "{logs:?}"
    );
    // What setup made is the task's work (committed); the ignored .env is not.
    let branch = str_of(&t["workspace"], "branch");
    let files = git(&repo, &["ls-tree", "-r", "--name-only", branch]);
    assert!(files.lines().any(|f| f == "prepared.txt"), "{files}");
    assert!(!files.lines().any(|f| f == ".env"), "{files}");

    let bad = s
        .submit(
            "broken setup",
            "bad-setup",
            "go",
            json!({"working_dir": wd}),
        )
        .await;
    let t = s.wait_one(&bad, 60).await;
    assert_eq!(t["status"], "failed", "{t}");
    let error = str_of(&t, "error");
    assert!(
        error.contains("worktree_setup failed (exit status 3)")
            && error.contains("dependency missing"),
        "{error}"
    );
    assert!(t["workspace"]["branch"].is_null(), "{t}");
    assert_eq!(orchestr8_branches(&repo), vec![branch.to_string()]);
    assert_eq!(worktrees(&repo), vec![wd.clone()]);
    assert_eq!(git(&repo, &["rev-parse", "HEAD"]).trim(), head);
    assert_eq!(
        git(&repo, &["status", "--porcelain", "--ignored"]),
        "!! .env\n!! build/\n"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_change_leaves_no_branch_and_bad_isolation_is_refused() {
    let env = Env::new();
    let repo = repo(&env, "work/repo");
    let head = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    git(&repo, &["tag", "v1"]);
    env.shell_agent("reader", "cat notes.txt", "");
    env.shell_agent("iso-writer", "echo x >> notes.txt", "isolation: worktree");
    let s = env.start().await;
    let wd = repo.display().to_string();

    // The argument isolates an agent that is not isolated by default, from a tag.
    let id = s
        .submit(
            "look only",
            "reader",
            "read",
            json!({"working_dir": wd, "isolation": "worktree", "base_ref": "v1"}),
        )
        .await;
    let t = s.wait_one(&id, 60).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert!(t["workspace"]["branch"].is_null(), "{t}");
    assert_eq!(t["workspace"]["head_commit"], head.as_str());
    assert_eq!(t["workspace"]["files_changed"], 0);
    assert!(str_of(&t, "result").contains("no branch was kept"), "{t}");
    assert_eq!(orchestr8_branches(&repo), Vec::<String>::new());
    let d = s.call("task_diff", json!({"task_id": id})).await;
    assert_eq!(d["diff"], "");
    // task_run takes the same arguments and answers the task object with its workspace.
    let t = s
        .call(
            "task_run",
            json!({"name": "look again", "agent_name": "reader", "agent_instructions": "read",
                   "working_dir": wd, "isolation": "worktree"}),
        )
        .await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["workspace"]["head_commit"], head.as_str(), "{t}");
    assert_eq!(t["workspace"]["repository"], wd.as_str(), "{t}");

    // "none" overrides the agent's worktree: it edits the checkout itself (and has no diff).
    let plain = env.path("work/plain");
    std::fs::create_dir_all(&plain).unwrap();
    let id = s
        .submit(
            "in place",
            "iso-writer",
            "write",
            json!({"working_dir": plain.display().to_string(), "isolation": "none"}),
        )
        .await;
    let t = s.wait_one(&id, 60).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert!(t["workspace"].is_null(), "{t}");
    assert_eq!(
        std::fs::read_to_string(plain.join("notes.txt")).unwrap(),
        "x\n"
    );
    let err = s.call_err("task_diff", json!({"task_id": id})).await;
    assert!(err.contains("did not run in a worktree"), "{err}");

    // Refusals at submit, each saying what to do.
    let args = |extra: Value| {
        let mut a = json!({"name": "n", "agent_name": "reader", "agent_instructions": "x"});
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        a
    };
    let err = s
        .call_err(
            "task_async",
            args(json!({"working_dir": plain.display().to_string(), "isolation": "worktree"})),
        )
        .await;
    assert!(
        err.contains("needs a git repository") && err.contains("isolation \"none\""),
        "{err}"
    );
    let err = s
        .call_err(
            "task_async",
            args(json!({"working_dir": plain.display().to_string(), "agent_name": "iso-writer"})),
        )
        .await;
    assert!(err.contains("needs a git repository"), "{err}");
    let err = s
        .call_err(
            "task_async",
            args(json!({"working_dir": wd, "isolation": "worktree", "base_ref": "no-such-branch"})),
        )
        .await;
    assert!(
        err.contains("base_ref \"no-such-branch\" names no commit"),
        "{err}"
    );
    let err = s
        .call_err(
            "task_async",
            args(json!({"working_dir": wd, "base_ref": "main"})),
        )
        .await;
    assert!(err.contains("base_ref applies only"), "{err}");
    let err = s
        .call_err("task_async", args(json!({"isolation": "container"})))
        .await;
    assert!(err.contains("isolation \"container\""), "{err}");
    let err = s
        .call_err(
            "task_async",
            args(json!({"working_dir": wd, "isolation": "worktree", "base_ref": "--output=x"})),
        )
        .await;
    assert!(err.contains("is not a git revision"), "{err}");
    assert_checkout_untouched(&repo, &head);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_kill9_the_attempt_runs_again_in_a_fresh_worktree() {
    let env = Env::new();
    let repo = repo(&env, "work/repo");
    let head = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    env.shell_agent(
        "slow-editor",
        "echo \"partial $ORCHESTR8_ATTEMPT\" >> notes.txt; \
         if [ \"$ORCHESTR8_ATTEMPT\" = 1 ]; then sleep 60; fi; echo final >> notes.txt",
        "isolation: worktree\nmax_retries: 1",
    );
    let s = env.start().await;
    let wd = repo.display().to_string();
    let id = s
        .submit("crashy", "slow-editor", "go", json!({"working_dir": wd}))
        .await;
    let worktree = PathBuf::from(format!("{}.worktrees/{id}", env.db().display()));
    s.until(&id, "running", |t| t["status"] == "running").await;
    for _ in 0..400 {
        let partial = std::fs::read_to_string(worktree.join("notes.txt")).unwrap_or_default();
        if partial.contains("partial 1") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(worktrees(&repo).len(), 2, "the attempt's worktree exists");
    s.kill9(&env).await;
    // A worktree half made when the engine died, unknown to any task.
    let stray = PathBuf::from(format!("{}.worktrees/stray", env.db().display()));
    git(
        &repo,
        &[
            "worktree",
            "add",
            "--quiet",
            "--detach",
            &stray.display().to_string(),
        ],
    );

    let s = env.start().await;
    let t = s.wait_one(&id, 60).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["attempt"], 2);
    let branch = str_of(&t["workspace"], "branch");
    // The retry started from the base, not from what the interrupted attempt left.
    assert_eq!(
        git(&repo, &["show", &format!("{branch}:notes.txt")]),
        "base\npartial 2\nfinal\n"
    );
    let logs = s.log_messages(&id).await;
    assert!(
        logs.iter()
            .any(|l| l
                .starts_with("worktree of the interrupted attempt: committed the changes it left")),
        "{logs:?}"
    );
    assert_eq!(worktrees(&repo), vec![wd.clone()], "no stale worktree");
    assert!(!stray.exists() && !worktree.exists());
    assert_checkout_untouched(&repo, &head);
    s.stop().await;
}

/// Adds a workflow task writing `file` (its content: the task's name), isolated in `wd`.
pub(crate) async fn add_writer(s: &Server, wf: &str, phase: &str, name: &str, wd: &str) -> String {
    let r = s
        .call(
            "workflow_add_task",
            json!({"workflow_id": wf, "phase_id": phase, "name": name,
                   "agent_name": "writer", "agent_instructions": "write", "working_dir": wd,
                   "isolation": "worktree"}),
        )
        .await;
    str_of(&r, "task_id").to_string()
}

pub(crate) async fn phase(s: &Server, wf: &str, id: &str, deps: &[&str]) {
    s.call(
        "workflow_add_phase",
        json!({"workflow_id": wf, "phase_id": id, "name": id, "depends_on": deps}),
    )
    .await;
}

pub(crate) async fn wait_workflow(s: &Server, wf: &str) -> Value {
    for _ in 0..2400 {
        let w = s.call("workflow_status", json!({"workflow_id": wf})).await;
        if !matches!(w["status"].as_str(), Some("running") | Some("draft")) {
            return w;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("workflow {wf} did not end");
}

#[tokio::test(flavor = "multi_thread")]
async fn later_phases_start_from_the_work_of_earlier_ones() {
    let env = Env::new();
    let repo = repo(&env, "work/repo");
    let head = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    // Writes a file named after the task and lists what it sees.
    env.shell_agent(
        "writer",
        "echo \"$ORCHESTR8_TASK_NAME\" > \"$ORCHESTR8_TASK_NAME.txt\"; ls *.txt | tr '\\n' ' '",
        "",
    );
    let s = env.start().await;
    let wd = repo.display().to_string();
    let wf = s.call("workflow_create", json!({"name": "build"})).await["workflow_id"]
        .as_str()
        .unwrap()
        .to_string();
    phase(&s, &wf, "design", &[]).await;
    phase(&s, &wf, "impl", &["design"]).await;
    phase(&s, &wf, "test", &["impl"]).await;
    add_writer(&s, &wf, "design", "spec", &wd).await;
    add_writer(&s, &wf, "impl", "front", &wd).await;
    add_writer(&s, &wf, "impl", "back", &wd).await;
    let last = add_writer(&s, &wf, "test", "check", &wd).await;
    s.call("workflow_start", json!({"workflow_id": wf})).await;
    let w = wait_workflow(&s, &wf).await;
    assert_eq!(w["status"], "completed", "{w}");
    // Every task's branch is in the workflow's status.
    for t in w["tasks"].as_array().unwrap() {
        assert!(str_of(t, "branch").starts_with("orchestr8/"), "{t}");
    }
    let t = s.status(&last).await;
    // The last phase saw the design and both implementation tasks (merged into a phase
    // branch), and its own branch holds all four files.
    assert_eq!(
        str_of(&t, "result").lines().next().unwrap(),
        "back.txt check.txt front.txt notes.txt spec.txt "
    );
    let branch = str_of(&t["workspace"], "branch");
    let files = git(&repo, &["ls-tree", "--name-only", branch]);
    assert_eq!(
        files,
        "back.txt\ncheck.txt\nfront.txt\nnotes.txt\nspec.txt\n"
    );
    // Its diff is its own change only: against the merged work it started from.
    assert_eq!(t["workspace"]["files_changed"], 1, "{t}");
    let phase_branch = git(&repo, &["branch", "--list", "orchestr8/workflow-*"]);
    assert!(phase_branch.trim().ends_with("/test"), "{phase_branch}");
    assert_checkout_untouched(&repo, &head);
    assert_eq!(worktrees(&repo), vec![wd]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_merge_conflict_between_upstream_branches_fails_the_task_cleanly() {
    let env = Env::new();
    let repo = repo(&env, "work/repo");
    let head = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    // Both first-phase tasks rewrite notes.txt, differently.
    env.shell_agent("writer", "echo \"$ORCHESTR8_TASK_NAME\" > notes.txt", "");
    let s = env.start().await;
    let wd = repo.display().to_string();
    let wf = s.call("workflow_create", json!({"name": "clash"})).await["workflow_id"]
        .as_str()
        .unwrap()
        .to_string();
    phase(&s, &wf, "edit", &[]).await;
    phase(&s, &wf, "join", &["edit"]).await;
    add_writer(&s, &wf, "edit", "left", &wd).await;
    add_writer(&s, &wf, "edit", "right", &wd).await;
    let join = add_writer(&s, &wf, "join", "joiner", &wd).await;
    s.call("workflow_start", json!({"workflow_id": wf})).await;
    let w = wait_workflow(&s, &wf).await;
    assert_eq!(w["status"], "failed", "{w}");
    let t = s.status(&join).await;
    assert_eq!(t["status"], "failed", "{t}");
    let error = str_of(&t, "error");
    assert!(
        error.contains("does not merge")
            && error.contains("task \"left\"")
            && error.contains("task \"right\"")
            && error.contains("both changed notes.txt."),
        "{error}"
    );
    // Nothing half-made is left: no worktree, no branch of the failed task, the two upstream
    // branches intact.
    assert_eq!(worktrees(&repo), vec![wd]);
    assert_eq!(
        orchestr8_branches(&repo).len(),
        2,
        "{:?}",
        orchestr8_branches(&repo)
    );
    assert_checkout_untouched(&repo, &head);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_diff_route_answers_over_http() {
    let env = Env::new();
    let repo = repo(&env, "work/repo");
    env.shell_agent(
        "editor",
        "echo more >> notes.txt; mkdir -p src; echo x > src/a.rs",
        "isolation: worktree",
    );
    let api = env.start_api(None).await;
    let wd = repo.display().to_string();
    let (code, t) = api
        .post(
            "/api/tasks",
            json!({"name": "http edit", "agent_name": "editor", "agent_instructions": "go", "working_dir": wd}),
        )
        .await;
    assert_eq!(code, 201, "{t}");
    let id = str_of(&t, "task_id").to_string();
    let mut done = Value::Null;
    for _ in 0..2400 {
        let (_, t) = api.get(&format!("/api/tasks/{id}")).await;
        if t["status"] == "completed" {
            done = t;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(done["workspace"]["files_changed"], 2, "{done}");
    let (code, d) = api.get(&format!("/api/tasks/{id}/diff?paths=src")).await;
    assert_eq!(code, 200, "{d}");
    assert_eq!(
        d["files"],
        json!([{"path": "src/a.rs", "insertions": 1, "deletions": 0}])
    );
    assert!(!str_of(&d, "diff").contains("notes.txt"), "{d}");
    let (code, d) = api.get(&format!("/api/tasks/{id}/diff?max_bytes=-1")).await;
    assert_eq!(code, 400, "{d}");
    let (code, d) = api.get(&format!("/api/tasks/{id}/diff?colour=1")).await;
    assert_eq!(code, 400, "{d}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_task_shows_its_worktree_and_a_cancel_keeps_its_work() {
    let env = Env::new();
    let repo = repo(&env, "work/repo");
    let head = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    env.shell_agent(
        "slow",
        "echo wip >> notes.txt; sleep 60",
        "isolation: worktree",
    );
    let s = env.start().await;
    let wd = repo.display().to_string();
    let id = s
        .submit("half done", "slow", "go", json!({"working_dir": wd}))
        .await;
    let worktree = PathBuf::from(format!("{}.worktrees/{id}", env.db().display()));
    s.until(&id, "running", |t| t["status"] == "running").await;
    for _ in 0..400 {
        if std::fs::read_to_string(worktree.join("notes.txt"))
            .unwrap_or_default()
            .contains("wip")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    // While it runs: its worktree as it is, uncommitted changes included.
    let d = s.call("task_diff", json!({"task_id": id})).await;
    assert!(d["head_commit"].is_null(), "{d}");
    assert!(str_of(&d, "diff").contains("\n+wip\n"), "{d}");

    let t = s.call("task_cancel", json!({"task_id": id})).await;
    assert_eq!(t["status"], "cancelled", "{t}");
    let branch = str_of(&t["workspace"], "branch");
    assert_eq!(
        git(&repo, &["show", &format!("{branch}:notes.txt")]),
        "base\nwip\n",
        "what the cancelled attempt did is kept on its branch"
    );
    assert!(!worktree.exists());
    assert_eq!(worktrees(&repo), vec![wd]);
    assert_checkout_untouched(&repo, &head);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_keeps_the_work_of_the_attempt_before() {
    let env = Env::new();
    let repo = repo(&env, "work/repo");
    // The first attempt edits and fails; the second changes nothing and succeeds.
    env.shell_agent(
        "flaky",
        "if [ \"$ORCHESTR8_ATTEMPT\" = 1 ]; then echo try1 >> notes.txt; exit 1; fi; echo fine",
        "isolation: worktree\nmax_retries: 1",
    );
    let s = env.start().await;
    let wd = repo.display().to_string();
    let id = s
        .submit("flaky", "flaky", "go", json!({"working_dir": wd}))
        .await;
    let t = s.wait_one(&id, 60).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["attempt"], 2);
    assert!(
        t["workspace"]["branch"].is_null(),
        "the last attempt changed nothing: {t}"
    );
    // What the first attempt did was kept before the second reset the branch.
    let kept = git(
        &repo,
        &[
            "for-each-ref",
            "--format=%(refname)",
            &format!("refs/orchestr8/attempts/{id}/"),
        ],
    );
    let kept = kept.trim();
    assert!(!kept.is_empty(), "no ref kept the first attempt's work");
    assert_eq!(
        git(&repo, &["show", &format!("{kept}:notes.txt")]),
        "base\ntry1\n"
    );
    let logs = s.log_messages(&id).await;
    assert!(
        logs.iter().any(|l| l.contains(&format!("kept as {kept}"))),
        "{logs:?}"
    );
    assert_eq!(orchestr8_branches(&repo), Vec::<String>::new());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_that_leave_their_branch_or_a_lock_or_work_in_a_subfolder_keep_their_work() {
    let env = Env::new();
    let repo = repo(&env, "work/repo");
    std::fs::create_dir_all(repo.join("sub")).unwrap();
    std::fs::write(repo.join("sub/keep.txt"), "k\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "sub"]);
    let head = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    env.shell_agent(
        "detacher",
        "git checkout -q --detach && echo det >> notes.txt && git commit -q -am 'agent commit' && echo more >> notes.txt",
        "isolation: worktree",
    );
    env.shell_agent(
        "locker",
        "echo locked >> notes.txt && touch \"$(git rev-parse --git-dir)/index.lock\"",
        "isolation: worktree",
    );
    env.shell_agent(
        "subdir",
        "pwd >&2; echo y > here.txt",
        "isolation: worktree",
    );
    // An edit of the same size right after git refreshed the index (the same second).
    env.shell_agent(
        "quick",
        "git status --porcelain >/dev/null && sed -i 's/base/BASE/' notes.txt",
        "isolation: worktree",
    );
    let s = env.start().await;
    let wd = repo.display().to_string();
    let a = s
        .submit("detach", "detacher", "go", json!({"working_dir": wd}))
        .await;
    let b = s
        .submit("lock", "locker", "go", json!({"working_dir": wd}))
        .await;
    let c = s
        .submit(
            "sub",
            "subdir",
            "go",
            json!({"working_dir": format!("{wd}/sub")}),
        )
        .await;
    let d = s
        .submit("quick", "quick", "go", json!({"working_dir": wd}))
        .await;
    let done = s.wait_all(&[a.clone(), b.clone(), c.clone(), d], 60).await;
    for t in &done {
        assert_eq!(t["status"], "completed", "{t}");
    }
    let branch = |t: &Value| str_of(&t["workspace"], "branch").to_string();
    // Detached: its own commit and what it left after it are both on the branch.
    let detached = branch(&done[0]);
    assert_eq!(
        git(&repo, &["show", &format!("{detached}:notes.txt")]),
        "base\ndet\nmore\n"
    );
    assert_eq!(
        git(&repo, &["log", "-1", "--skip=1", "--format=%s", &detached]).trim(),
        "agent commit"
    );
    let logs = s.log_messages(&a).await;
    assert!(
        logs.iter()
            .any(|l| l.contains("the agent had left its branch")),
        "{logs:?}"
    );
    // A lock left on its index does not stop its work being kept.
    assert_eq!(
        git(&repo, &["show", &format!("{}:notes.txt", branch(&done[1]))]),
        "base\nlocked\n"
    );
    // A sub-folder working_dir runs in the same sub-folder of the worktree.
    assert_eq!(
        git(
            &repo,
            &["show", &format!("{}:sub/here.txt", branch(&done[2]))]
        ),
        "y\n"
    );
    let logs = s.log_messages(&c).await;
    assert!(
        logs.iter()
            .any(|l| l.ends_with(&format!(".worktrees/{c}/sub"))),
        "{logs:?}"
    );
    assert_eq!(
        git(&repo, &["show", &format!("{}:notes.txt", branch(&done[3]))]),
        "BASE\n",
        "an edit git's cached stat could hide is kept"
    );
    assert_eq!(worktrees(&repo), vec![wd]);
    assert_checkout_untouched(&repo, &head);
    s.stop().await;
}
