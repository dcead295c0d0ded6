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
//! (a lock per repository, held in this engine and as a file lock in the repository's git
//! directory, so the engines of one machine — the nodes of a cluster — take turns too);
//! different repositories never wait for each other.

pub mod git;
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

/// The file in a repository's git directory that the engines of one machine lock, one at a
/// time, around what changes the repository's worktrees and refs.
const SHARED_LOCK: &str = "orchestr8-async.lock";

/// A repository locked for this engine and against the others of this machine; let go when
/// dropped (the file lock first).
struct RepoLock {
    _shared: Option<nix::fcntl::Flock<std::fs::File>>,
    _own: tokio::sync::OwnedMutexGuard<()>,
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

    /// Takes the repository's lock: this engine's own, then the one every engine of this
    /// machine shares (a file lock in the repository's git directory), so that the nodes of a
    /// cluster on one host never add, merge or move refs of one repository at once either.
    async fn lock(&self, ws: &Workspace) -> RepoLock {
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
        let own = lock.lock_owned().await;
        if ws.common_dir.is_empty() {
            // Recorded by an older release: no git directory to put the file in (never the
            // user's checkout).
            return RepoLock {
                _shared: None,
                _own: own,
            };
        }
        let path = Path::new(&ws.common_dir).join(SHARED_LOCK);
        let shared = tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| format!("cannot lock {}: {e}", path.display()))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let shared = match shared {
            Ok(l) => Some(l),
            Err(e) => {
                // A git directory this user cannot write to: git would refuse the change
                // itself; this engine's own lock still holds.
                tracing::debug!("the repository's shared lock was not taken: {e}");
                None
            }
        };
        RepoLock {
            _shared: shared,
            _own: own,
        }
    }

    /// The workspace of a new isolated task working in `dir`: its repository, the path of
    /// `dir` inside it, its branch, and the commit `base_ref` (default `HEAD`) names now.
    pub async fn resolve(
        dir: &Path,
        base_ref: Option<&str>,
        task_name: &str,
        id: Uuid,
    ) -> Result<Workspace, WorkspaceError> {
        check_git_version().await?;
        let not_repo = |e: GitError| {
            match e {
            GitError::Spawn(e) => WorkspaceError::NotARepository(format!(
                "isolation \"worktree\" needs git, which could not be run ({e}); install git (2.38 or newer) or use isolation \"none\""
            )),
            e => WorkspaceError::NotARepository(format!(
                "isolation \"worktree\" needs a git repository, and {} is not inside one ({}); run `git init` and commit there, pass a working_dir inside a repository, or use isolation \"none\"",
                dir.display(),
                e.message()
            )),
        }
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
            .map_err(not_repo)?;
        let mut lines = out.lines();
        let (Some(top), Some(common)) = (lines.next(), lines.next()) else {
            return Err(WorkspaceError::NotARepository(format!(
                "git named no top directory for {}",
                dir.display()
            )));
        };
        let subdir = lines.next().unwrap_or_default().trim_end_matches('/');
        let common = Path::new(common);
        let wanted = base_ref.unwrap_or("HEAD");
        let base = git(Path::new(top))
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
                return Err(WorkspaceError::NotARepository(format!(
                    "isolation \"worktree\" needs a commit to start from, and the HEAD of {top} has none yet: make a first commit, or use isolation \"none\""
                )))
            }
            (None, Some(r)) => {
                return Err(WorkspaceError::UnknownRef(format!(
                    "base_ref {r:?} names no commit in {top}; use a branch, tag or commit of that repository (or leave base_ref out for its HEAD)"
                )))
            }
        };
        Ok(Workspace {
            // The main checkout, even when the task came from a linked worktree (which may be
            // gone by the time the task runs): every operation goes through the git directory.
            repository: main_worktree(common)
                .await
                .filter(|m| Path::new(m) != common && Path::new(m).join(".git").exists())
                .unwrap_or_else(|| top.to_string()),
            subdir: subdir.to_string(),
            common_dir: common.display().to_string(),
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
    /// (in the same repository, each with commits of its own). Work contained in other work
    /// counts once; one remaining head is used as it is; several are merged, once per phase,
    /// into the phase branch `phase_branch` (reused by the phase's other tasks and retries).
    /// `None`: there is no upstream work, start from the task's own base.
    pub async fn combine(
        &self,
        ws: &Workspace,
        upstream: Vec<Upstream>,
        phase_id: &str,
        phase_branch: &str,
    ) -> Result<Option<String>, WorkspaceError> {
        let repo = repo_dir(ws);
        if upstream.is_empty() {
            return Ok(None);
        }
        let independent = git(repo)
            .args(["merge-base", "--independent"])
            .args(upstream.iter().map(|u| u.head.as_str()))
            .run()
            .await?;
        let mut tips: Vec<&Upstream> = Vec::new();
        for head in independent.split_whitespace() {
            if let Some(u) = upstream.iter().find(|u| u.head == head) {
                tips.push(u);
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
            let tree = plan::parse_merge_tree(&out, !clean).map_err(|files| {
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
    /// ignored files `.worktreeinclude` lists copied in. Work an earlier attempt left on the
    /// branch is kept under `refs/orchestr8/attempts/<task id>/…` first. Returns the directory
    /// the agent runs in and lines for the task's log.
    pub async fn open(
        &self,
        id: Uuid,
        task_name: &str,
        attempt: u32,
        ws: &Workspace,
    ) -> Result<(PathBuf, Vec<String>), WorkspaceError> {
        let repo = repo_dir(ws);
        let path = self.path_of(id);
        let mut notes = Vec::new();
        std::fs::create_dir_all(&self.root).map_err(|e| {
            WorkspaceError::Io(format!("could not create {}: {e}", self.root.display()))
        })?;
        if let Some(left) = self.find_worktree(id, ws).await {
            // A worktree an earlier attempt could not close (here, or on another engine of
            // this machine that died): its changes are kept first.
            let mut earlier = ws.clone();
            match self.close_at(&left, id, task_name, attempt, &mut earlier).await {
                Ok(note) => notes.push(format!("closed the worktree an earlier attempt left: {note}")),
                Err(e) => {
                    return Err(WorkspaceError::Io(format!(
                        "the worktree an earlier attempt left at {} could not be closed ({e}); it is left as it is, with its changes",
                        left.display()
                    )))
                }
            }
        }
        {
            let _guard = self.lock(ws).await;
            let tip = rev_parse(repo, &format!("refs/heads/{}", ws.branch)).await?;
            if let Some(tip) = tip.filter(|t| *t != ws.base_commit) {
                let keep = plan::attempt_ref(id, &tip);
                git(repo).args(["update-ref", &keep, &tip]).run().await?;
                notes.push(format!(
                    "the branch held the work of an earlier attempt; kept as {keep} before starting afresh"
                ));
            }
            // A record of this path whose folder is gone would make the add fail.
            let _ = git(repo)
                .args(["worktree", "remove", "--force", "--force"])
                .arg_path(&path)
                .run()
                .await;
            git(repo)
                .args(["worktree", "add", "--quiet", "-B", &ws.branch])
                .args([path.display().to_string(), ws.base_commit.clone()])
                .run()
                .await
                .map_err(|e| {
                    let m = e.message();
                    if m.contains("already checked out") || m.contains("already used by worktree") {
                        WorkspaceError::Refused(format!(
                            "the task's branch {} is checked out elsewhere ({m}); switch that checkout to another branch, then retry the task",
                            ws.branch
                        ))
                    } else {
                        e.into()
                    }
                })?;
        }
        let cwd = if ws.subdir.is_empty() {
            path.clone()
        } else {
            path.join(&ws.subdir)
        };
        let prepared = async {
            let copied = copy_included(Path::new(&ws.repository), &path).await?;
            std::fs::create_dir_all(&cwd).map_err(|e| {
                WorkspaceError::Io(format!("could not create {}: {e}", cwd.display()))
            })?;
            Ok::<_, WorkspaceError>(copied)
        }
        .await;
        let prepared = prepared.and_then(|n| {
            // From here on the worktree holds what the agent does: closing it keeps that.
            let admin = worktree_admin(&path).ok_or_else(|| {
                WorkspaceError::Io(format!("{} is not a git worktree", path.display()))
            })?;
            std::fs::write(admin.join(READY_MARK), b"").map_err(|e| {
                WorkspaceError::Io(format!("could not mark the worktree ready: {e}"))
            })?;
            Ok(n)
        });
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
        notes.push(note);
        Ok((cwd, notes))
    }

    /// Ends an attempt's worktree: commits what the agent left uncommitted (a message naming the
    /// task, its id in a trailer) on top of what it checked out, points the branch there,
    /// records the branch's head and the size of the change, removes the worktree, and deletes
    /// the branch if it holds nothing. Also right when the worktree was never made (the
    /// attempt failed before): the branch is then taken as it is. Returns a line for the log.
    /// On an error the worktree stays, with its changes, for the next attempt or start.
    pub async fn close(
        &self,
        id: Uuid,
        task_name: &str,
        attempt: u32,
        ws: &mut Workspace,
    ) -> Result<String, WorkspaceError> {
        self.close_at(&self.path_of(id), id, task_name, attempt, ws)
            .await
    }

    /// [`Workspaces::close`] of the worktree at `path`.
    async fn close_at(
        &self,
        path: &Path,
        id: Uuid,
        task_name: &str,
        attempt: u32,
        ws: &mut Workspace,
    ) -> Result<String, WorkspaceError> {
        let repo = repo_dir(ws).to_path_buf();
        let mut notes = Vec::new();
        let branch_ref = format!("refs/heads/{}", ws.branch);
        let tip = rev_parse(&repo, &branch_ref).await?;
        let mut head = tip.clone().unwrap_or_else(|| ws.base_commit.clone());
        if is_ready(path) {
            let (checked_out, work, committed) =
                snapshot(path, &plan::commit_message(task_name, id, attempt)).await?;
            if committed {
                notes.push("committed the changes it left".to_string());
            }
            if Some(&checked_out) != tip.as_ref() {
                // The agent committed elsewhere (detached, another branch): its work is what
                // its worktree had checked out; what the branch held beyond it is kept aside.
                if let Some(t) = tip.as_ref().filter(|t| **t != ws.base_commit) {
                    if !is_ancestor(&repo, t, &work).await? {
                        let keep = plan::attempt_ref(id, t);
                        git(&repo).args(["update-ref", &keep, t]).run().await?;
                        notes.push(format!("the branch's own commits are kept as {keep}"));
                    }
                }
                notes.push(
                    "the agent had left its branch; the branch now points at its work".into(),
                );
            }
            head = work;
        }
        let stat = git(&repo)
            .args([
                "diff",
                "--shortstat",
                "--no-renames",
                &ws.base_commit,
                &head,
            ])
            .run()
            .await?;
        let (files, ins, del) = plan::parse_shortstat(&stat);
        let kept = head != ws.base_commit;
        {
            let _guard = self.lock(ws).await;
            if kept && tip.as_ref() != Some(&head) {
                git(&repo)
                    .args([
                        "update-ref",
                        "-m",
                        "orchestr8-async: attempt ended",
                        &branch_ref,
                        &head,
                    ])
                    .run()
                    .await?;
            }
            remove_worktree(&repo, path).await;
            if !kept && tip.is_some() {
                if let Err(e) = git(&repo)
                    .args(["branch", "--quiet", "-D", &ws.branch])
                    .run()
                    .await
                {
                    notes.push(format!(
                        "the empty branch could not be deleted: {}",
                        e.message()
                    ));
                }
            }
        }
        ws.head_commit = Some(head.clone());
        ws.files_changed = files;
        ws.insertions = ins;
        ws.deletions = del;
        ws.branch_kept = kept;
        notes.push(if kept {
            format!(
                "branch {} at {} ({files} file(s) changed, +{ins} -{del}); worktree removed",
                ws.branch,
                plan::short(&head)
            )
        } else {
            "no changes; no branch kept, worktree removed".to_string()
        });
        Ok(notes.join("; "))
    }

    /// The change of a task against its base: its branch's head, or — `running` — its worktree
    /// as it is now (untracked files included, the agent's index left alone). `max` bytes of
    /// diff at most.
    pub async fn diff(
        &self,
        id: Uuid,
        ws: &Workspace,
        running: bool,
        paths: &[String],
        max: usize,
    ) -> Result<Diff, WorkspaceError> {
        let repo = repo_dir(ws);
        let worktree = match running {
            true => self.find_worktree(id, ws).await,
            false => None,
        }
        .unwrap_or_else(|| self.path_of(id));
        let (target, head) = if running && is_ready(&worktree) {
            let (_, tree) = worktree_tree(&worktree).await?;
            (tree, None)
        } else {
            let head = ws.head_commit.clone().ok_or_else(|| {
                WorkspaceError::Refused(
                    "the task has not run in its worktree yet, so it has no change to show".into(),
                )
            })?;
            (head.clone(), Some(head))
        };
        if !repo.is_dir() {
            return Err(WorkspaceError::Gone(format!(
                "the repository {} no longer exists",
                ws.repository
            )));
        }
        let range = [ws.base_commit.clone(), target];
        let spec: Vec<String> = std::iter::once("--".to_string())
            .chain(paths.iter().cloned())
            .collect();
        let refused = |e: GitError| {
            match e.code() {
            Some(128)
                if e.message().contains("bad object")
                    || e.message().contains("unknown revision") =>
            {
                WorkspaceError::Gone(format!(
                    "a commit of this task's change is no longer in {} (its branch was deleted and collected?): {}",
                    ws.repository,
                    e.message()
                ))
            }
            Some(_) => WorkspaceError::Refused(format!(
                "git could not show this diff: {}",
                e.message()
            )),
            None => e.into(),
        }
        };
        const PLAIN: [&str; 6] = [
            "diff",
            "--no-renames",
            "--no-ext-diff",
            "--no-textconv",
            "--src-prefix=a/",
            "--dst-prefix=b/",
        ];
        let numstat = git(repo)
            .args(PLAIN)
            .args(["--numstat", "-z"])
            .args(&range)
            .args(&spec)
            .run()
            .await
            .map_err(refused)?;
        let (bytes, more) = git(repo)
            .args(PLAIN)
            .arg("--no-color")
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

    /// Where task `id`'s worktree is, if it has one: in this engine's folder, else the
    /// worktree on the task's branch named for the task that another engine of this machine
    /// made (a node of a cluster, whose task another node on the host runs now).
    async fn find_worktree(&self, id: Uuid, ws: &Workspace) -> Option<PathBuf> {
        let own = self.path_of(id);
        if own.exists() {
            return Some(own);
        }
        let list = git(repo_dir(ws))
            .args(["worktree", "list", "--porcelain"])
            .run()
            .await
            .ok()?;
        let branch = format!("refs/heads/{}", ws.branch);
        let name = id.to_string();
        plan::parse_worktree_list(&list)
            .into_iter()
            .find(|(path, on)| {
                on.as_deref() == Some(branch.as_str())
                    && Path::new(path).file_name() == Some(name.as_ref())
            })
            .map(|(path, _)| PathBuf::from(path))
    }

    /// Removes every worktree a previous engine left in `<db>.worktrees` (called before any
    /// task starts, so none of them is in use). Changes found in one are committed first and
    /// kept as `refs/orchestr8/leftovers/<folder>`. Returns a line per worktree removed.
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
            let name = entry.file_name().to_string_lossy().into_owned();
            let mut line = format!(
                "removed the worktree {} a previous engine left",
                path.display()
            );
            match owning_repository(&path) {
                Some(common) if is_ready(&path) => {
                    let message = format!(
                        "Changes left in the worktree {name}\n\nKept by orchestr8-async when it removed the worktree.\n"
                    );
                    let kept = match snapshot(&path, &message).await {
                        Ok((_, commit, true)) => {
                            let keep = format!(
                                "refs/orchestr8/leftovers/{}/{}",
                                plan::ref_safe(&name),
                                plan::short(&commit)
                            );
                            git(&common)
                                .args(["update-ref", &keep, &commit])
                                .run()
                                .await
                                .map(|_| Some(keep))
                                .map_err(WorkspaceError::from)
                        }
                        Ok((_, _, false)) => Ok(None),
                        Err(e) => Err(e),
                    };
                    match kept {
                        Ok(Some(keep)) => {
                            line.push_str(&format!("; its changes are kept as {keep}"))
                        }
                        Ok(None) => {}
                        Err(e) => {
                            // Never removed with changes that could not be kept.
                            removed.push(format!(
                                "left the worktree {} a previous engine left: its changes could not be kept ({e}); look at it, then remove it with `git worktree remove --force`",
                                path.display()
                            ));
                            continue;
                        }
                    }
                    remove_worktree(&common, &path).await;
                }
                // Made half-way (no agent ran in it): nothing to keep.
                Some(common) => remove_worktree(&common, &path).await,
                None => {
                    let _ = std::fs::remove_dir_all(&path);
                }
            }
            removed.push(line);
        }
        removed
    }
}

/// The oldest git that does everything isolation needs (`merge-tree --write-tree`).
const MIN_GIT: (u32, u32) = (2, 38);

/// Refuses isolation, with what to do, when git is missing or older than [`MIN_GIT`]
/// (asked once per engine).
async fn check_git_version() -> Result<(), WorkspaceError> {
    static FOUND: tokio::sync::OnceCell<Result<(u32, u32), String>> =
        tokio::sync::OnceCell::const_new();
    let found = FOUND
        .get_or_init(|| async {
            let out = git(Path::new("/"))
                .arg("--version")
                .run()
                .await
                .map_err(|e| e.to_string())?;
            plan::parse_git_version(&out)
                .ok_or_else(|| format!("could not read a version from {:?}", out.trim()))
        })
        .await;
    match found {
        Ok(v) if *v >= MIN_GIT => Ok(()),
        Ok((major, minor)) => Err(WorkspaceError::NotARepository(format!(
            "isolation \"worktree\" needs git {}.{} or newer, and this is git {major}.{minor}; upgrade git or use isolation \"none\"",
            MIN_GIT.0, MIN_GIT.1
        ))),
        Err(e) => Err(WorkspaceError::NotARepository(format!(
            "isolation \"worktree\" needs git ({e}); install git {}.{} or newer, or use isolation \"none\"",
            MIN_GIT.0, MIN_GIT.1
        ))),
    }
}

/// Written in a worktree's administrative folder once it is complete and the agent may start:
/// a worktree without it was cut short while being made and holds nothing of the agent's.
const READY_MARK: &str = "orchestr8-ready";

fn is_ready(worktree: &Path) -> bool {
    worktree_admin(worktree).is_some_and(|a| a.join(READY_MARK).exists())
}

fn label(u: &Upstream) -> String {
    format!("task {:?} (branch {})", u.name, u.branch)
}

/// Where repository-level git commands run: the git directory itself, which outlives any
/// checkout (a task may have come from a linked worktree removed since).
fn repo_dir(ws: &Workspace) -> &Path {
    if ws.common_dir.is_empty() {
        Path::new(&ws.repository)
    } else {
        Path::new(&ws.common_dir)
    }
}

/// The main checkout of the repository whose git directory is `common` (`None` for a bare
/// repository).
async fn main_worktree(common: &Path) -> Option<String> {
    let list = git(common)
        .args(["worktree", "list", "--porcelain"])
        .run()
        .await
        .ok()?;
    let mut lines = list.lines();
    let first = lines.next()?.strip_prefix("worktree ")?.to_string();
    (lines.next() != Some("bare")).then_some(first)
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

/// What a worktree holds now, as a tree: its checked-out commit and the tree of its files
/// (tracked changes and untracked files git does not ignore), built in a private copy of its
/// index — the agent's own index and its lock are never touched.
async fn worktree_tree(wt: &Path) -> Result<(String, String), WorkspaceError> {
    let head = rev_parse(wt, "HEAD").await?.ok_or_else(|| {
        WorkspaceError::Io(format!("the worktree {} has no HEAD commit", wt.display()))
    })?;
    let admin = worktree_admin(wt)
        .ok_or_else(|| WorkspaceError::Io(format!("{} is not a git worktree", wt.display())))?;
    // A private index per call (a diff and a close may overlap), a copy of the worktree's own
    // with its modification time: git trusts an entry's cached stat only when it is older than
    // the index file, so a fresh time would hide an edit made in the same second.
    let index = admin.join(format!("orchestr8-index-{}", Uuid::new_v4().simple()));
    let copied = std::fs::metadata(admin.join("index"))
        .and_then(|m| m.modified())
        .and_then(|mtime| {
            std::fs::copy(admin.join("index"), &index)?;
            std::fs::File::options()
                .write(true)
                .open(&index)?
                .set_modified(mtime)
        })
        .is_ok();
    let index_env = index.display().to_string();
    let result = async {
        if !copied {
            git(wt)
                .args(["read-tree", &head])
                .env("GIT_INDEX_FILE", index_env.clone())
                .run()
                .await?;
        }
        // A file that cannot be read (permissions) is left out rather than losing the rest.
        git(wt)
            .args(["add", "--all", "--ignore-errors"])
            .env("GIT_INDEX_FILE", index_env.clone())
            .answer()
            .await?;
        let tree = git(wt)
            .arg("write-tree")
            .env("GIT_INDEX_FILE", index_env.clone())
            .run()
            .await?;
        Ok::<_, GitError>(tree.trim().to_string())
    }
    .await;
    let _ = std::fs::remove_file(&index);
    let _ = std::fs::remove_file(format!("{index_env}.lock"));
    Ok((head, result?))
}

/// Commits a worktree's state on top of its checked-out commit (see [`worktree_tree`]) without
/// moving anything: `(checked out, work, committed)`; the work is the checked-out commit
/// itself when nothing changed.
async fn snapshot(wt: &Path, message: &str) -> Result<(String, String, bool), WorkspaceError> {
    let (head, tree) = worktree_tree(wt).await?;
    let head_tree = rev_parse(wt, &format!("{head}^{{tree}}")).await?;
    if head_tree.as_deref() == Some(tree.as_str()) {
        return Ok((head.clone(), head, false));
    }
    let mut commit = git(wt).args(["commit-tree", &tree, "-p", &head, "-m", message]);
    for (k, v) in identity(wt).await {
        commit = commit.env(k, v);
    }
    let work = commit.run().await?.trim().to_string();
    Ok((head, work, true))
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

/// A linked worktree's administrative folder (`<common>/worktrees/<name>`), from its `.git`
/// file (`gitdir: …`, absolute or relative to the worktree).
fn worktree_admin(worktree: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(worktree.join(".git")).ok()?;
    let gitdir = Path::new(text.strip_prefix("gitdir:")?.trim());
    Some(worktree.join(gitdir))
}

/// The git directory a linked worktree belongs to.
fn owning_repository(worktree: &Path) -> Option<PathBuf> {
    Some(worktree_admin(worktree)?.parent()?.parent()?.to_path_buf())
}

/// Removes one of orchestr8-async's worktrees and git's record of it; by hand if git refuses
/// (its record then goes too — only this worktree's, never another's). Never fails: a worktree
/// that cannot be removed is swept at the next start.
async fn remove_worktree(repo: &Path, path: &Path) {
    let admin = worktree_admin(path);
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
        if let Some(admin) = admin {
            // Only if the record is this worktree's: its `gitdir` file points back at a folder
            // of this name (a task id); git may have written the path in another form
            // (symlinks resolved, relative).
            let points_here = std::fs::read_to_string(admin.join("gitdir")).is_ok_and(|g| {
                Path::new(g.trim()).parent().and_then(Path::file_name) == path.file_name()
            });
            if points_here {
                let _ = std::fs::remove_dir_all(&admin);
            }
        }
    }
}

/// Copies into a new worktree the files `.worktreeinclude` (at the repository's top) selects
/// that git ignores — `.env`, local settings: what a run needs but the repository does not
/// hold. Its patterns are read the way `.gitignore`'s are (git does the matching), and a file
/// is copied only if the worktree's own ignore rules (those of the base) ignore it too, so it is
/// never committed. Returns how many files were copied.
async fn copy_included(checkout: &Path, worktree: &Path) -> Result<usize, WorkspaceError> {
    let checkout = checkout.to_path_buf();
    let list = checkout.join(".worktreeinclude");
    if !list.is_file() {
        return Ok(0);
    }
    let matched = git(&checkout)
        .args(["ls-files", "-z", "--others", "--ignored"])
        .arg(format!("--exclude-from={}", list.display()))
        .run()
        .await?;
    let matched = plan::split_nul(&matched);
    if matched.is_empty() {
        return Ok(0);
    }
    let ignored = git(worktree)
        .args(["check-ignore", "-z", "--stdin"])
        .stdin(matched.join("\0").into_bytes())
        .query()
        .await?
        .unwrap_or_default();
    let files = plan::split_nul(&ignored);
    let worktree = worktree.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut n = 0;
        for rel in files {
            let (from, to) = (checkout.join(&rel), worktree.join(&rel));
            if to.symlink_metadata().is_ok() {
                continue;
            }
            copy_one(&from, &to).map_err(|e| WorkspaceError::Io(format!("copying {rel}: {e}")))?;
            n += 1;
        }
        Ok(n)
    })
    .await
    .map_err(|e| WorkspaceError::Io(e.to_string()))?
}

/// Copies one file (a symlink as a symlink), creating its folder.
fn copy_one(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if from.symlink_metadata()?.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}
