//! Agent definitions: Markdown files with YAML frontmatter, the format of Claude Code subagents.
//!
//! Files are looked up on demand (at submit, and again when an attempt starts), so an edited
//! agent takes effect without a restart and a broken one is reported at once. A parsed file is
//! reused while its `stat` is unchanged.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::Value;

/// The runners an agent may name in its frontmatter.
pub const RUNNERS: [&str; 4] = ["claude", "command", "anthropic", "openai"];

#[derive(Debug, Clone, PartialEq)]
pub struct AgentDef {
    pub name: String,
    pub description: String,
    pub model: Option<String>,
    pub tools: Option<Vec<String>>,
    pub runner: String,
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub timeout_seconds: Option<u32>,
    pub max_retries: Option<u32>,
    pub max_concurrency: Option<u32>,
    /// `isolation: worktree` runs each task in a git worktree of its own (a task argument
    /// overrides it).
    pub isolation: Option<crate::model::Isolation>,
    /// A shell command run in a new worktree before the agent starts (`sh -c`).
    pub worktree_setup: Option<String>,
    /// Frontmatter keys this module does not interpret (e.g. `color`, or runner options such as
    /// `max_tokens`), kept for the runners that do.
    pub extra: BTreeMap<String, Value>,
    /// The Markdown body: the agent's system prompt.
    pub body: String,
    pub path: PathBuf,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    InvalidName(String),
    #[error("{0}")]
    NotFound(String),
    #[error("agent file {path}: {message}")]
    Invalid { path: String, message: String },
}

/// Checks the name rule `^[a-z0-9][a-z0-9._-]{0,63}$` (also used for phase ids).
pub fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-'
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {kind} {name:?}: it must be 1-64 characters of lowercase letters, digits, '.', '_' or '-', starting with a letter or digit (for example \"code-reviewer\")"
        ))
    }
}

#[derive(Debug, Deserialize)]
struct Frontmatter {
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    runner: Option<String>,
    #[serde(default)]
    command: Option<Value>,
    #[serde(default)]
    env: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    timeout_seconds: Option<u32>,
    #[serde(default)]
    max_retries: Option<u32>,
    #[serde(default)]
    max_concurrency: Option<u32>,
    #[serde(default)]
    isolation: Option<String>,
    #[serde(default)]
    worktree_setup: Option<String>,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

/// Splits `---\n<yaml>\n---\n<body>`.
fn split_frontmatter(text: &str) -> Option<(&str, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let rest = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))?;
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "---" {
            return Some((&rest[..offset], &rest[offset + line.len()..]));
        }
        offset += line.len();
    }
    None
}

fn scalar_to_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Parses one agent file. `default_runner` applies when the frontmatter names no runner.
pub fn parse_agent(path: &Path, text: &str, default_runner: &str) -> Result<AgentDef, AgentError> {
    let invalid = |message: String| AgentError::Invalid {
        path: path.display().to_string(),
        message,
    };
    let (yaml, body) = split_frontmatter(text).ok_or_else(|| {
        invalid("no YAML frontmatter: the file must start with a line '---', then YAML, then a closing '---'".into())
    })?;
    let fm: Frontmatter = if yaml.trim().is_empty() {
        return Err(invalid(
            "empty frontmatter: at least `name:` is required".into(),
        ));
    } else {
        serde_saphyr::from_str(yaml)
            .map_err(|e| invalid(format!("frontmatter is not valid: {e}")))?
    };
    let name = fm
        .name
        .ok_or_else(|| invalid("frontmatter has no `name:`".into()))?;
    validate_name("agent name", &name).map_err(invalid)?;
    let runner = fm.runner.unwrap_or_else(|| default_runner.to_string());
    if !RUNNERS.contains(&runner.as_str()) {
        return Err(invalid(format!(
            "unknown runner {runner:?}; use one of {}",
            RUNNERS.join(", ")
        )));
    }
    let tools = match fm.tools {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            s.split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect(),
        ),
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|v| {
                    scalar_to_string(v)
                        .ok_or_else(|| invalid("`tools` entries must be strings".into()))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => {
            return Err(invalid(
                "`tools` must be a comma-separated string or a list".into(),
            ))
        }
    };
    let command = match fm.command {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let argv = items
                .iter()
                .map(|v| scalar_to_string(v).ok_or_else(|| invalid("`command` entries must be strings".into())))
                .collect::<Result<Vec<_>, _>>()?;
            if argv.is_empty() || argv[0].is_empty() {
                return Err(invalid("`command` must not be empty".into()));
            }
            Some(argv)
        }
        Some(_) => {
            return Err(invalid(
                "`command` must be a list (argv), for example [\"python3\", \"review.py\"]; for a shell line write [\"sh\", \"-c\", \"...\"]".into(),
            ))
        }
    };
    if runner == "command" && command.is_none() {
        return Err(invalid(
            "runner is `command` but the frontmatter has no `command:` list".into(),
        ));
    }
    let mut env = BTreeMap::new();
    for (k, v) in fm.env.unwrap_or_default() {
        let v = scalar_to_string(&v)
            .ok_or_else(|| invalid(format!("`env.{k}` must be a string, number or boolean")))?;
        env.insert(k, v);
    }
    if fm
        .timeout_seconds
        .is_some_and(|t| !(1..=86_400).contains(&t))
    {
        return Err(invalid(
            "`timeout_seconds` must be between 1 and 86400".into(),
        ));
    }
    if fm.max_retries.is_some_and(|r| r > 10) {
        return Err(invalid("`max_retries` must be between 0 and 10".into()));
    }
    if fm.max_concurrency == Some(0) {
        return Err(invalid("`max_concurrency` must be at least 1".into()));
    }
    let isolation = fm
        .isolation
        .as_deref()
        .map(|i| {
            crate::model::Isolation::parse(i).ok_or_else(|| {
                invalid(format!(
                    "`isolation` is {i:?}; use `worktree` (a git worktree per task) or `none`"
                ))
            })
        })
        .transpose()?;
    let worktree_setup = fm.worktree_setup.filter(|s| !s.trim().is_empty());
    Ok(AgentDef {
        name,
        description: fm.description.unwrap_or_default(),
        model: fm.model,
        tools,
        runner,
        command,
        env,
        timeout_seconds: fm.timeout_seconds,
        max_retries: fm.max_retries,
        max_concurrency: fm.max_concurrency,
        isolation,
        worktree_setup,
        extra: fm.extra,
        body: body.trim_start_matches(['\r', '\n']).to_string(),
        path: path.to_path_buf(),
    })
}

/// Finds agents along the search path. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AgentRegistry {
    dirs: Vec<PathBuf>,
    default_runner: String,
    /// Parsed files by path, with the identity of the file they were parsed from. Agents are
    /// looked up at every submit and every attempt (so edits apply without a restart); a `stat`
    /// tells whether the file changed, which costs far less than reading and parsing it again.
    parsed: Arc<Mutex<ParsedFiles>>,
}

type ParsedFiles = HashMap<PathBuf, (FileStamp, Result<AgentDef, AgentError>)>;

/// What identifies one version of a file: an edit or a replacement changes at least one of these,
/// provided the file was not modified within the last [`SETTLED`] when it was parsed (mtimes
/// are only as fine as the kernel's clock tick, so two quick writes of the same length could
/// share one; the same "racy" rule as git's index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: SystemTime,
    len: u64,
    ino: u64,
}

const SETTLED: Duration = Duration::from_secs(2);

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
        Some(FileStamp {
            modified: m.modified().ok()?,
            len: m.len(),
            ino: m.ino(),
        })
    }

    fn settled(&self) -> bool {
        SystemTime::now()
            .duration_since(self.modified)
            .is_ok_and(|age| age >= SETTLED)
    }
}

impl AgentRegistry {
    pub fn new(dirs: Vec<PathBuf>, default_runner: String) -> Self {
        AgentRegistry {
            dirs,
            default_runner,
            parsed: Arc::default(),
        }
    }

    /// The same registry (and parse cache) on another search path: a session's, or the one a
    /// task recorded when it was submitted. `None` keeps this one's.
    pub fn with_search_path(&self, path: Option<&str>) -> AgentRegistry {
        match path {
            None => self.clone(),
            Some(p) => AgentRegistry {
                dirs: split_search_path(p),
                default_runner: self.default_runner.clone(),
                parsed: self.parsed.clone(),
            },
        }
    }

    fn read(&self, path: &Path) -> Result<AgentDef, AgentError> {
        let stamp = FileStamp::of(path);
        if let Some(stamp) = stamp {
            let cache = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((s, def)) = cache.get(path) {
                if *s == stamp {
                    return def.clone();
                }
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| AgentError::Invalid {
            path: path.display().to_string(),
            message: format!("cannot be read: {e}"),
        })?;
        let parsed = parse_agent(path, &text, &self.default_runner);
        // Only the parse of a settled file that did not change while it was read is remembered
        // (a read error is not: it may pass without the file changing).
        if let Some(stamp) = stamp.filter(|s| s.settled() && Some(*s) == FileStamp::of(path)) {
            let mut cache = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
            cache.insert(path.to_path_buf(), (stamp, parsed.clone()));
        }
        parsed
    }

    fn md_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "md") && p.is_file())
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    /// The agent `name` when it takes no file read: its `<name>.md` in the first directory of the
    /// search path, parsed before and unchanged since (one `stat`). An async caller tries this
    /// first, where it is, and hands [`load`](Self::load) to the blocking pool only otherwise —
    /// a hop to another thread and back costs more than the `stat`.
    pub fn load_parsed(&self, name: &str) -> Option<AgentDef> {
        validate_name("agent_name", name).ok()?;
        let direct = self.dirs.first()?.join(format!("{name}.md"));
        let stamp = FileStamp::of(&direct)?;
        let cache = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(&direct) {
            Some((s, Ok(def))) if *s == stamp && def.name == name => Some(def.clone()),
            _ => None,
        }
    }

    /// Loads the agent `name`: in each directory of the search path, `<name>.md` first, then any
    /// other file whose frontmatter has that name; the first directory with a match wins. A
    /// broken `<name>.md` is an error (it is the file the user meant), other broken files are
    /// skipped.
    pub fn load(&self, name: &str) -> Result<AgentDef, AgentError> {
        validate_name("agent_name", name).map_err(AgentError::InvalidName)?;
        for dir in &self.dirs {
            let direct = dir.join(format!("{name}.md"));
            if direct.is_file() {
                let def = self.read(&direct)?;
                if def.name == name {
                    return Ok(def);
                }
            }
            for path in Self::md_files(dir) {
                if path == direct {
                    continue;
                }
                if let Ok(def) = self.read(&path) {
                    if def.name == name {
                        return Ok(def);
                    }
                }
            }
        }
        Err(AgentError::NotFound(format!(
            "unknown agent {name:?}: no agent file with `name: {name}` in the search path {}; create {} or call list_agents to see the agents there are",
            self.search_path(),
            self.dirs
                .first()
                .map(|d| d.join(format!("{name}.md")).display().to_string())
                .unwrap_or_else(|| format!("./agents/{name}.md")),
        )))
    }

    /// Every loadable agent, first match per name winning; broken files are logged and skipped.
    pub fn list(&self) -> Vec<AgentDef> {
        let mut seen = BTreeMap::new();
        for dir in &self.dirs {
            for path in Self::md_files(dir) {
                match self.read(&path) {
                    Ok(def) => {
                        seen.entry(def.name.clone()).or_insert(def);
                    }
                    Err(e) => tracing::warn!("skipping agent file: {e}"),
                }
            }
        }
        seen.into_values().collect()
    }

    /// The search path as one colon-separated string (how a task records it).
    pub fn search_path(&self) -> String {
        self.dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// Splits a colon-separated search path, dropping empty entries.
pub fn split_search_path(p: &str) -> Vec<PathBuf> {
    p.split(':')
        .filter(|s| !s.trim().is_empty())
        .map(|s| PathBuf::from(s.trim()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "code-reviewer", "x.y_z-1", "0abc"] {
            assert!(validate_name("agent", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "/etc/passwd",
            "Upper",
            "-x",
            ".x",
            &"a".repeat(65),
        ] {
            assert!(validate_name("agent", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_claude_code_subagent() {
        let text = "---\nname: code-reviewer\ndescription: Reviews\nmodel: sonnet\ntools: Read, Grep, Glob\ncolor: red\n---\nYou review.\n";
        let a = parse_agent(Path::new("x.md"), text, "claude").unwrap();
        assert_eq!(a.runner, "claude");
        assert_eq!(a.tools.unwrap(), vec!["Read", "Grep", "Glob"]);
        assert_eq!(a.body, "You review.\n");
        assert!(a.extra.contains_key("color"));
    }

    #[test]
    fn parses_command_agent() {
        let text = "---\nname: echo\nrunner: command\ncommand: [\"sh\", \"-c\", \"cat\"]\nenv: {A: 1, B: x}\nmax_concurrency: 2\n---\nbody";
        let a = parse_agent(Path::new("x.md"), text, "claude").unwrap();
        assert_eq!(a.command.unwrap(), vec!["sh", "-c", "cat"]);
        assert_eq!(a.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(a.max_concurrency, Some(2));
    }

    #[test]
    fn refuses_broken_files() {
        for text in [
            "no frontmatter",
            "---\nname: x\n",
            "---\nname: X\n---\n",
            "---\nname: x\nrunner: bogus\n---\n",
            "---\nname: x\nrunner: command\n---\n",
            "---\nname: x\nrunner: command\ncommand: ls -l\n---\n",
            "---\nname: [\n---\n",
        ] {
            assert!(
                parse_agent(Path::new("x.md"), text, "claude").is_err(),
                "{text}"
            );
        }
    }
}
