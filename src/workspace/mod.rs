//! Git worktrees for isolated tasks: one fresh worktree per attempt, on the task's own branch,
//! so agents running at once on one repository never edit the same files, and the user's own
//! checkout is never touched.
//!
//! The life of an isolated task's workspace:
//! - at submit, [`Workspaces::resolve`] finds the repository and fixes the base commit (the
//!   `base_ref` asked for, else `HEAD`), so a later start does not drift;
//! - before an attempt, [`Workspaces::open`] adds a worktree under `<db>.worktrees/<task id>`
//!   on the branch, reset to the base (a retry starts afresh), and copies the ignored files
//!   `.worktreeinclude` lists;
//! - after it, [`Workspaces::close`] commits what the agent left uncommitted, measures the
//!   change, removes the worktree, and deletes the branch if it holds nothing;
//! - at an engine's start, [`Workspaces::sweep`] removes every worktree a dead engine left.
//!
//! Git itself guards its index and refs with lock files and fails rather than waits when one is
//! taken, so the operations that add, remove or move refs of one repository are serialized here
//! (a lock per repository); different repositories never wait for each other.

mod git;
pub mod plan;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::model::Workspace;
use git::{git, GitError};

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// The directory is not inside a git work tree (or the repository has no commit yet).
    #[error("{0}")]
    NotARepository(String),
    /// `base_ref` names nothing in the repository.
    #[error("{0}")]
    UnknownRef(String),
    /// Upstream work could not be merged; names the files.
    #[error("{0}")]
    Conflict(String),
    /// A commit the workspace needs is gone (a branch deleted and collected by `git gc`).
    #[error("{0}")]
    Gone(String),
    /// The caller asked for something git refused (a path outside the repository, ...).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Git(#[from] GitError),
    #[error("{0}")]
    Io(String),
}

/// An upstream task's work, for [`Workspaces::combine`].
pub struct Upstream {
    pub name: String,
    pub branch: String,
    pub head: String,
}

/// A task's change, for `task_diff`.
pub struct Diff {
    pub files: Vec<(String, Option<u32>, Option<u32>)>,
    pub diff: String,
    pub truncated: bool,
    /// The commit compared with the base; `None` when a running task's worktree was compared.
    pub head: Option<String>,
}

/// The worktrees of one engine's tasks. Cheap to share.
pub struct Workspaces {
    /// `<db>.worktrees`: every worktree of this engine's tasks, named by task id.
    root: PathBuf,
    /// One lock per repository (by its git directory).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Workspaces {
    pub fn new(root: PathBuf) -> Arc<Workspaces> {
        Arc::new(Workspaces {
            root,
            locks: Mutex::new(HashMap::new()),
        })
    }

    /// Where the worktree of task `id` lives while an attempt runs.
    pub fn path_of(&self, id: Uuid) -> PathBuf {
        self.root.join(id.to_string())
    }

    async fn lock(&self, ws: &Workspace) -> tokio::sync::OwnedMutexGuard<()> {
        let key = if ws.common_dir.is_empty() {
            ws.repository.clone()
        } else {
            ws.common_dir.clone()
        };
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// The workspace of a new isolated task working in `dir`: its repository, the path of
    /// `dir` inside it, its branch, and the commit `base_ref` (default `HEAD`) names now.
    pub async fn resolve(
        dir: &Path,
        base_ref: Option<&str>,
        task_name: &str,
        id: Uuid,
    ) -> Result<Workspace, WorkspaceError> {
        let not_repo = |why: String| {
            WorkspaceError::NotARepository(format!(
                "isolation \"worktree\" needs a git repository, and {} is not inside one ({why}); run `git init` and commit there, pass a working_dir inside a repository, or use isolation \"none\"",
                dir.display()
            ))
        };
        let out = git(dir)
            .args([
                "rev-parse",
                "--path-format=absolute",
                "--show-toplevel",
                "--git-common-dir",
                "--show-prefix",
            ])
            .run()
            .await
            .map_err(|e| not_repo(e.message()))?;
        let mut lines = out.lines();
        let (Some(top), Some(common)) = (lines.next(), lines.next()) else {
            return Err(not_repo("git did not name its top directory".into()));
        };
        let subdir = lines.next().unwrap_or_default().trim_end_matches('/');
        let top = Path::new(top);
        let wanted = base_ref.unwrap_or("HEAD");
        let base = git(top)
            .args([
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                &format!("{wanted}^{{commit}}"),
            ])
            .query()
            .await?
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let base = match (base, base_ref) {
            (Some(b), _) => b,
            (None, None) => {
                return Err(not_repo(
                    "its HEAD has no commit yet: make a first commit".into(),
                ))
            }
            (None, Some(r)) => {
                return Err(WorkspaceError::UnknownRef(format!(
                    "base_ref {r:?} names no commit in {}; use a branch, tag or commit of that repository (or leave base_ref out for its HEAD)",
                    top.display()
                )))
            }
        };
        Ok(Workspace {
            repository: top.display().to_string(),
            subdir: subdir.to_string(),
            common_dir: common.to_string(),
            branch: plan::branch_name(task_name, id),
            base_commit: base,
            head_commit: None,
            files_changed: 0,
            insertions: 0,
            deletions: 0,
            branch_kept: false,
        })
    }

    /// The commit a task of a later workflow phase starts from: the work of the upstream tasks
    /// (in the same repository). Work already contained in other work counts once; one
    /// remaining head is used as it is; several are merged, once per phase, into the phase
    /// branch `phase_branch` (reused by the phase's other tasks and retries). `None`: there is
    /// no upstream work, start from the task's own base.
    pub async fn combine(
        &self,
        ws: &Workspace,
        upstream: Vec<Upstream>,
        phase_id: &str,
        phase_branch: &str,
    ) -> Result<Option<String>, WorkspaceError> {
        let repo = Path::new(&ws.repository);
        let mut heads: Vec<Upstream> = Vec::new();
        for u in upstream {
            if !heads.iter().any(|h| h.head == u.head) {
                heads.push(u);
            }
        }
        let mut tips = Vec::new();
        for (i, h) in heads.iter().enumerate() {
            let mut contained = false;
            for (j, other) in heads.iter().enumerate() {
                if i != j && is_ancestor(repo, &h.head, &other.head).await? {
                    contained = true;
                    break;
                }
            }
            if !contained {
                tips.push(h);
            }
        }
        match tips.as_slice() {
            [] => return Ok(None),
            [one] => return Ok(Some(one.head.clone())),
            _ => {}
        }
        let _guard = self.lock(ws).await;
        let existing = rev_parse(repo, &format!("refs/heads/{phase_branch}")).await?;
        if let Some(b) = existing {
            let mut all = true;
            for t in &tips {
                all &= is_ancestor(repo, &t.head, &b).await?;
            }
            if all {
                return Ok(Some(b));
            }
        }
        let identity = identity(repo).await;
        let mut merged = tips[0].head.clone();
        let mut labels = vec![label(tips[0])];
        for t in &tips[1..] {
            let (clean, out) = git(repo)
                .args([
                    "merge-tree",
                    "--write-tree",
                    "--name-only",
                    "--no-messages",
                    &merged,
                    &t.head,
                ])
                .answer()
                .await?;
            let tree = plan::parse_merge_tree(&out, !clean);
            let tree = tree.map_err(|files| {
                WorkspaceError::Conflict(format!(
                    "the work of the earlier phases does not merge: {} and {} both changed {}. Their branches are kept: merge them yourself, or put tasks that change the same files in phases that depend on each other (the later one then starts from the earlier one's work)",
                    labels.join(", "),
                    label(t),
                    files.join(", ")
                ))
            })?;
            labels.push(label(t));
            let mut commit = git(repo).args([
                "commit-tree",
                &tree,
                "-p",
                &merged,
                "-p",
                &t.head,
                "-m",
                &plan::merge_message(phase_id, &labels),
            ]);
            for (k, v) in &identity {
                commit = commit.env(k, v.clone());
            }
            merged = commit.run().await?.trim().to_string();
        }
        git(repo)
            .args([
                "update-ref",
                "-m",
                "orchestr8-async: phase base",
                &format!("refs/heads/{phase_branch}"),
                &merged,
            ])
            .run()
            .await?;
        Ok(Some(merged))
    }

    /// Adds the worktree of an attempt: the task's branch reset to `ws.base_commit`, the
    /// ignored files `.worktreeinclude` lists copied in. Returns the directory the agent runs
    /// in and a line for the task's log.
    pub async fn open(
        &self,
        id: Uuid,
        ws: &Workspace,
    ) -> Result<(PathBuf, String), WorkspaceError> {
        let repo = Path::new(&ws.repository);
        let path = self.path_of(id);
        std::fs::create_dir_all(&self.root).map_err(|e| {
            WorkspaceError::Io(format!("could not create {}: {e}", self.root.display()))
        })?;
        {
            let _guard = self.lock(ws).await;
            if path.exists() {
                // A leftover of this task's earlier attempt (a crash before its removal).
                remove_worktree(repo, &path).await;
            }
            git(repo)
                .args(["worktree", "add", "--quiet", "-B", &ws.branch])
                .args([path.display().to_string(), ws.base_commit.clone()])
                .run()
                .await
                .map_err(|e| match e.code() {
                    Some(_) if !repo.is_dir() => WorkspaceError::NotARepository(format!(
                        "the repository {} no longer exists",
                        ws.repository
                    )),
                    _ => e.into(),
                })?;
        }
        let cwd = if ws.subdir.is_empty() {
            path.clone()
        } else {
            path.join(&ws.subdir)
        };
        let prepared = async {
            let copied = copy_included(repo, &path).await?;
            std::fs::create_dir_all(&cwd).map_err(|e| {
                WorkspaceError::Io(format!("could not create {}: {e}", cwd.display()))
            })?;
            Ok::<_, WorkspaceError>(copied)
        }
        .await;
        let copied = match prepared {
            Ok(n) => n,
            Err(e) => {
                // Nothing ran in it yet: the worktree and the branch go, as if never made.
                let _guard = self.lock(ws).await;
                remove_worktree(repo, &path).await;
                let _ = git(repo)
                    .args(["branch", "--quiet", "-D", &ws.branch])
                    .run()
                    .await;
                return Err(e);
            }
        };
        let mut note = format!(
            "worktree {} on branch {} from {}",
            path.display(),
            ws.branch,
            plan::short(&ws.base_commit)
        );
        if copied > 0 {
            note.push_str(&format!(
                "; copied {copied} file(s) listed in .worktreeinclude"
            ));
        }
        Ok((cwd, note))
    }

    /// Ends an attempt's worktree: commits what the agent left uncommitted (a message naming the
    /// task, its id in a trailer), records the branch's head and the size of the change, removes
    /// the worktree, and deletes the branch if it holds nothing. Returns a line for the log.
    pub async fn close(
        &self,
        id: Uuid,
        task_name: &str,
        attempt: u32,
        ws: &mut Workspace,
    ) -> Result<String, WorkspaceError> {
        let repo = Path::new(&ws.repository).to_path_buf();
        let path = self.path_of(id);
        let mut note = String::new();
        if path.join(".git").exists() {
            git(&path).args(["add", "--all"]).run().await?;
            let dirty = git(&path)
                .args(["diff", "--cached", "--quiet"])
                .query()
                .await?
                .is_none();
            if dirty {
                let mut commit = git(&path).args([
                    "-c",
                    "commit.gpgsign=false",
                    "commit",
                    "--quiet",
                    "--no-verify",
                    "-m",
                    &plan::commit_message(task_name, id, attempt),
                ]);
                for (k, v) in identity(&path).await {
                    commit = commit.env(k, v);
                }
                commit.run().await?;
                note.push_str("committed the changes it left; ");
            }
        }
        let head = rev_parse(&repo, &format!("refs/heads/{}", ws.branch))
            .await?
            .unwrap_or_else(|| ws.base_commit.clone());
        let stat = git(&repo)
            .args(["diff", "--shortstat", &ws.base_commit, &head])
            .run()
            .await?;
        let (files, ins, del) = plan::parse_shortstat(&stat);
        let _guard = self.lock(ws).await;
        remove_worktree(&repo, &path).await;
        let kept = head != ws.base_commit;
        if !kept {
            let _ = git(&repo)
                .args(["branch", "--quiet", "-D", &ws.branch])
                .run()
                .await;
        }
        ws.head_commit = Some(head.clone());
        ws.files_changed = files;
        ws.insertions = ins;
        ws.deletions = del;
        ws.branch_kept = kept;
        note.push_str(&if kept {
            format!(
                "branch {} at {} ({files} file(s) changed, +{ins} -{del}); worktree removed",
                ws.branch,
                plan::short(&head)
            )
        } else {
            format!("no changes; branch {} deleted, worktree removed", ws.branch)
        });
        Ok(note)
    }

    /// The change of a task against its base: its branch's head, or — `running` — its worktree
    /// as it is now. `max` bytes of diff at most.
    pub async fn diff(
        &self,
        id: Uuid,
        ws: &Workspace,
        running: bool,
        paths: &[String],
        max: usize,
    ) -> Result<Diff, WorkspaceError> {
        let worktree = self.path_of(id);
        let live = running && worktree.join(".git").exists();
        let (dir, head) = if live {
            (worktree, None)
        } else {
            let head = match &ws.head_commit {
                Some(h) => h.clone(),
                None => {
                    return Err(WorkspaceError::Refused(
                        "the task has not started yet, so it has no change to show; wait for it (task_wait) and ask again".into(),
                    ))
                }
            };
            (PathBuf::from(&ws.repository), Some(head))
        };
        if !dir.is_dir() {
            return Err(WorkspaceError::Gone(format!(
                "the repository {} no longer exists",
                ws.repository
            )));
        }
        let mut range = vec![ws.base_commit.clone()];
        range.extend(head.clone());
        let spec: Vec<String> = std::iter::once("--".to_string())
            .chain(paths.iter().cloned())
            .collect();
        let refused = |e: GitError| {
            match e.code() {
            Some(128) if e.message().contains("bad object") || e.message().contains("unknown revision") => {
                WorkspaceError::Gone(format!(
                    "a commit of this task's change is no longer in {} (its branch was deleted and collected?): {}",
                    ws.repository,
                    e.message()
                ))
            }
            Some(_) => WorkspaceError::Refused(format!("git could not show this diff: {}", e.message())),
            None => e.into(),
        }
        };
        let numstat = git(&dir)
            .args(["diff", "--no-renames", "--numstat", "-z"])
            .args(&range)
            .args(&spec)
            .run()
            .await
            .map_err(refused)?;
        let (bytes, more) = git(&dir)
            .args(["diff", "--no-color", "--no-ext-diff", "--no-renames"])
            .args(&range)
            .args(&spec)
            .run_capped(max)
            .await
            .map_err(refused)?;
        let (diff, truncated) = plan::cut_diff(&bytes, max, more);
        Ok(Diff {
            files: plan::parse_numstat(&numstat),
            diff,
            truncated,
            head,
        })
    }

    /// Removes every worktree a previous engine left in `<db>.worktrees` (called before any
    /// task starts, so none of them is in use). Returns a line per worktree removed.
    pub async fn sweep(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            match owning_repository(&path) {
                Some(common) => remove_worktree(&common, &path).await,
                None => {
                    let _ = std::fs::remove_dir_all(&path);
                }
            }
            removed.push(path.display().to_string());
        }
        removed
    }
}

fn label(u: &Upstream) -> String {
    format!("task {:?} (branch {})", u.name, u.branch)
}

async fn rev_parse(repo: &Path, rev: &str) -> Result<Option<String>, GitError> {
    Ok(git(repo)
        .args(["rev-parse", "--verify", "--quiet", "--end-of-options", rev])
        .query()
        .await?
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty()))
}

async fn is_ancestor(repo: &Path, a: &str, b: &str) -> Result<bool, GitError> {
    Ok(git(repo)
        .args(["merge-base", "--is-ancestor", a, b])
        .query()
        .await?
        .is_some())
}

/// The identity for orchestr8-async's own commits: none when git has one configured (the
/// user's), else a fallback, so a commit never fails for want of a name.
async fn identity(dir: &Path) -> Vec<(&'static str, String)> {
    let configured = git(dir)
        .args(["config", "user.email"])
        .query()
        .await
        .ok()
        .flatten()
        .is_some_and(|s| !s.trim().is_empty());
    if configured {
        return Vec::new();
    }
    vec![
        ("GIT_AUTHOR_NAME", git::FALLBACK_NAME.to_string()),
        ("GIT_AUTHOR_EMAIL", git::FALLBACK_EMAIL.to_string()),
        ("GIT_COMMITTER_NAME", git::FALLBACK_NAME.to_string()),
        ("GIT_COMMITTER_EMAIL", git::FALLBACK_EMAIL.to_string()),
    ]
}

/// The git directory a linked worktree belongs to, from its `.git` file
/// (`gitdir: <common>/worktrees/<name>`).
fn owning_repository(worktree: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(worktree.join(".git")).ok()?;
    let gitdir = PathBuf::from(text.strip_prefix("gitdir:")?.trim());
    Some(gitdir.parent()?.parent()?.to_path_buf())
}

/// Removes a worktree and git's record of it; by hand (then pruning the record) if git
/// refuses. Never fails: a worktree that cannot be removed is swept at the next start.
async fn remove_worktree(repo: &Path, path: &Path) {
    let removed = git(repo)
        .args(["worktree", "remove", "--force", "--force"])
        .arg_path(path)
        .run()
        .await;
    if let Err(e) = removed {
        tracing::debug!(
            "git worktree remove {}: {e}; removing it by hand",
            path.display()
        );
        if let Err(e) = std::fs::remove_dir_all(path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("could not remove the worktree {}: {e}", path.display());
            }
        }
        let _ = git(repo).args(["worktree", "prune"]).run().await;
    }
}

/// Copies into a new worktree the files `.worktreeinclude` (at the repository's top) selects
/// that git ignores — `.env`, local settings: what a run needs but the repository does not
/// hold. Its patterns are read the way `.gitignore`'s are (git does the matching). Returns how
/// many files were copied.
async fn copy_included(repo: &Path, worktree: &Path) -> Result<usize, WorkspaceError> {
    let list = repo.join(".worktreeinclude");
    if !list.is_file() {
        return Ok(0);
    }
    let matched = git(repo)
        .args(["ls-files", "-z", "--others", "--ignored"])
        .arg(format!("--exclude-from={}", list.display()))
        .run()
        .await?;
    let matched = plan::split_nul(&matched);
    if matched.is_empty() {
        return Ok(0);
    }
    let ignored = git(repo)
        .args(["check-ignore", "-z", "--stdin"])
        .stdin(matched.join("\0").into_bytes())
        .query()
        .await?
        .unwrap_or_default();
    let files = plan::split_nul(&ignored);
    let (repo, worktree) = (repo.to_path_buf(), worktree.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let mut n = 0;
        for rel in files {
            let (from, to) = (repo.join(&rel), worktree.join(&rel));
            if to.symlink_metadata().is_ok() {
                continue;
            }
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| WorkspaceError::Io(format!("copying {rel}: {e}")))?;
            }
            let meta = from
                .symlink_metadata()
                .map_err(|e| WorkspaceError::Io(format!("copying {rel}: {e}")))?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&from)
                    .map_err(|e| WorkspaceError::Io(format!("copying {rel}: {e}")))?;
                std::os::unix::fs::symlink(target, &to)
                    .map_err(|e| WorkspaceError::Io(format!("copying {rel}: {e}")))?;
            } else {
                std::fs::copy(&from, &to)
                    .map_err(|e| WorkspaceError::Io(format!("copying {rel}: {e}")))?;
            }
            n += 1;
        }
        Ok(n)
    })
    .await
    .map_err(|e| WorkspaceError::Io(e.to_string()))?
}
