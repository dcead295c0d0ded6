//! Where an isolated task does its work: a git worktree on a branch of its own.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the scheduler records of an isolated task's workspace. Fixed at submit (repository,
/// branch, base), completed after each attempt (head and the change's size).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workspace {
    /// The repository's top directory (the checkout the task was submitted from).
    pub repository: String,
    /// The path inside the repository where the task runs ("" for the top directory).
    #[serde(default)]
    pub subdir: String,
    /// The repository's git directory (shared by all its worktrees): what git operations on the
    /// repository are serialized by.
    #[serde(default)]
    pub common_dir: String,
    /// The task's branch. It exists while an attempt runs and afterwards only if the task
    /// committed something.
    pub branch: String,
    /// The commit the task starts from: the `base_ref` asked for (or `HEAD`) resolved at submit;
    /// for a task of a later workflow phase, the work of the phases before it, set at start.
    pub base_commit: String,
    /// Where the branch ended after the last attempt (`None` before the first has ended).
    #[serde(default)]
    pub head_commit: Option<String>,
    #[serde(default)]
    pub files_changed: u32,
    #[serde(default)]
    pub insertions: u32,
    #[serde(default)]
    pub deletions: u32,
    /// Whether the branch was kept after the last attempt (it had commits).
    #[serde(default)]
    pub branch_kept: bool,
}

impl Workspace {
    pub fn view(&self) -> WorkspaceView {
        let ended = self.head_commit.is_some();
        WorkspaceView {
            repository: self.repository.clone(),
            // Before an attempt has ended the branch is where the work will be (or is, while
            // running); afterwards only a kept branch is named.
            branch: (!ended || self.branch_kept).then(|| self.branch.clone()),
            base_commit: self.base_commit.clone(),
            head_commit: self.head_commit.clone(),
            files_changed: self.files_changed,
            insertions: self.insertions,
            deletions: self.deletions,
        }
    }
}

/// The `workspace` field of the task object.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct WorkspaceView {
    /// The repository's top directory.
    pub repository: String,
    /// The task's branch; null once an attempt ended without changing anything (the empty
    /// branch is deleted).
    pub branch: Option<String>,
    /// The commit the task started from; its diff is against this commit.
    pub base_commit: String,
    /// The branch's last commit after the last attempt; null until an attempt has ended.
    pub head_commit: Option<String>,
    pub files_changed: u32,
    pub insertions: u32,
    pub deletions: u32,
}

/// Whether a task runs in a git worktree of its own or in its working directory as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    Worktree,
    None,
}

impl Isolation {
    pub fn parse(s: &str) -> Option<Isolation> {
        match s {
            "worktree" => Some(Isolation::Worktree),
            "none" => Some(Isolation::None),
            _ => None,
        }
    }
}
