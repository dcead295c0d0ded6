//! Running git: one command at a time, its output captured, its failure explained.
//!
//! Every command runs with a clean git environment (no inherited `GIT_DIR`, `GIT_INDEX_FILE`,
//! ... — an engine started from inside a git hook must not act on the hook's repository), no
//! terminal prompts, the C locale (so its output can be parsed), no hooks of the repository
//! (orchestr8-async's own bookkeeping is not the user's commit or checkout; `worktree_setup` is
//! where an agent's preparation goes), and no automatic gc or maintenance (which would take the
//! locks the next operation needs).

use std::path::Path;
use std::process::{Output, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Variables that would point git at another repository, index or object store than the one
/// named on the command line. Agent processes are started without them too.
pub const REPOSITORY_VARIABLES: [&str; 8] = [
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
];

/// The identity used for the commits orchestr8-async makes when git has none configured.
pub const FALLBACK_NAME: &str = "orchestr8-async";
pub const FALLBACK_EMAIL: &str = "orchestr8-async@localhost";

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("could not run git ({0}); is git installed and on PATH?")]
    Spawn(std::io::Error),
    #[error("`git {args}` failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: String,
        /// The exit code, when git exited (1 means "no" for the query commands).
        code: Option<i32>,
        stderr: String,
    },
}

impl GitError {
    pub fn code(&self) -> Option<i32> {
        match self {
            GitError::Failed { code, .. } => *code,
            GitError::Spawn(_) => None,
        }
    }

    /// What git said, without the command around it.
    pub fn message(&self) -> String {
        match self {
            GitError::Failed { stderr, .. } => stderr.clone(),
            GitError::Spawn(e) => e.to_string(),
        }
    }
}

/// A git command in a directory (`git -C dir ...`).
pub struct Git<'a> {
    dir: &'a Path,
    args: Vec<String>,
    envs: Vec<(&'static str, String)>,
    stdin: Option<Vec<u8>>,
}

pub fn git<'a>(dir: &'a Path) -> Git<'a> {
    Git {
        dir,
        args: Vec::new(),
        envs: Vec::new(),
        stdin: None,
    }
}

impl Git<'_> {
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn arg_path(self, path: &Path) -> Self {
        self.arg(path.display().to_string())
    }

    pub fn env(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.envs.push((key, value.into()));
        self
    }

    pub fn stdin(mut self, input: Vec<u8>) -> Self {
        self.stdin = Some(input);
        self
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("git");
        cmd.arg("-C")
            .arg(self.dir)
            .args([
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "gc.auto=0",
                "-c",
                "maintenance.auto=false",
            ])
            .args(&self.args);
        for v in REPOSITORY_VARIABLES {
            cmd.env_remove(v);
        }
        cmd.env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_OPTIONAL_LOCKS", "0")
            .env("LC_ALL", "C")
            .envs(self.envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that a command given up on (the attempt was cancelled)
            // stops with everything it started — `worktree add` runs a checkout of its own.
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }

    fn failure(&self, out: &Output) -> GitError {
        GitError::Failed {
            args: self.args.join(" "),
            status: crate::runner::process::describe_exit(&out.status),
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
    }

    async fn output(&self) -> Result<Output, GitError> {
        let mut child = self.command().spawn().map_err(GitError::Spawn)?;
        let mut group = Group(child.id());
        if let (Some(input), Some(mut pipe)) = (self.stdin.clone(), child.stdin.take()) {
            tokio::spawn(async move {
                let _ = pipe.write_all(&input).await;
            });
        }
        let out = child.wait_with_output().await.map_err(GitError::Spawn);
        group.0 = None;
        out
    }

    /// Runs the command; its stdout, or an error with its stderr.
    pub async fn run(self) -> Result<String, GitError> {
        let out = self.output().await?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(self.failure(&out))
        }
    }

    /// Runs a query whose exit status 1 means "no" (`merge-base --is-ancestor`,
    /// `diff --quiet`, `check-ignore`): `Ok(None)` then, its stdout on success.
    pub async fn query(self) -> Result<Option<String>, GitError> {
        Ok(match self.answer().await? {
            (true, out) => Some(out),
            (false, _) => None,
        })
    }

    /// Like [`Self::query`], keeping stdout either way: `(yes, stdout)` (`merge-tree` lists the
    /// conflicted files on its exit status 1).
    pub async fn answer(self) -> Result<(bool, String), GitError> {
        let out = self.output().await?;
        let text = || String::from_utf8_lossy(&out.stdout).into_owned();
        match out.status.code() {
            Some(0) => Ok((true, text())),
            Some(1) => Ok((false, text())),
            _ => Err(self.failure(&out)),
        }
    }

    /// Runs the command and keeps at most `cap` bytes of its stdout; the flag says whether there
    /// was more (the rest is never read: the process is stopped).
    pub async fn run_capped(self, cap: usize) -> Result<(Vec<u8>, bool), GitError> {
        let mut child = self.command().spawn().map_err(GitError::Spawn)?;
        let mut group = Group(child.id());
        let mut stdout = child.stdout.take().ok_or_else(|| {
            GitError::Spawn(std::io::Error::other("git's output could not be read"))
        })?;
        let mut stderr = child.stderr.take();
        let err_reader = tokio::spawn(async move {
            let mut buf = Vec::new();
            if let Some(s) = stderr.as_mut() {
                let _ = s.take(64 * 1024).read_to_end(&mut buf).await;
            }
            buf
        });
        let mut kept = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut more = false;
        loop {
            let n = stdout.read(&mut chunk).await.map_err(GitError::Spawn)?;
            if n == 0 {
                break;
            }
            let room = cap.saturating_sub(kept.len());
            kept.extend_from_slice(&chunk[..n.min(room)]);
            if n > room {
                more = true;
                break;
            }
        }
        if more {
            drop(group);
            let _ = child.wait().await;
            return Ok((kept, true));
        }
        let status = child.wait().await.map_err(GitError::Spawn)?;
        group.0 = None;
        let stderr = err_reader.await.unwrap_or_default();
        if status.success() {
            Ok((kept, false))
        } else {
            Err(GitError::Failed {
                args: self.args.join(" "),
                status: crate::runner::process::describe_exit(&status),
                code: status.code(),
                stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
            })
        }
    }
}

/// The process group of a running git command, killed if the command is given up on before it
/// ended (set to `None` once it has).
struct Group(Option<u32>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            crate::runner::process::signal_group(
                i64::from(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
