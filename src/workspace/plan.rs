//! The pure rules of workspaces: names, messages, and reading git's answers.

use uuid::Uuid;

/// Every branch orchestr8-async creates starts with this, so they are easy to list
/// (`git branch --list 'orchestr8/*'`) and never mistaken for the user's own.
pub const BRANCH_PREFIX: &str = "orchestr8/";

/// The trailer naming the task in the commits orchestr8-async makes.
pub const TASK_TRAILER: &str = "Orchestr8-Task-Id";

/// The branch of a task: its name made safe for git, and the last 12 hex digits of its id (the
/// random part of a UUIDv7, so two tasks of the same name and millisecond still differ).
pub fn branch_name(task_name: &str, id: Uuid) -> String {
    let hex = id.simple().to_string();
    format!(
        "{BRANCH_PREFIX}{}-{}",
        slug(task_name, 40),
        &hex[hex.len() - 12..]
    )
}

/// The branch holding the merged work of the phases before `phase_id` in a workflow. Phase
/// ids (`[a-z0-9._-]`) are kept as they are, so distinct phases never share a branch.
pub fn phase_branch_name(workflow: Uuid, phase_id: &str) -> String {
    let hex = workflow.simple().to_string();
    format!(
        "{BRANCH_PREFIX}workflow-{}/{}",
        &hex[hex.len() - 12..],
        ref_safe(phase_id)
    )
}

/// Where the work an attempt left on a task's branch is kept before another attempt resets
/// the branch (a ref, not a branch: kept from `git gc`, out of the way of `git branch`).
pub fn attempt_ref(id: Uuid, tip: &str) -> String {
    format!("refs/orchestr8/attempts/{id}/{}", short(tip))
}

/// `s` as one component of a git ref name: the characters git refuses become '-', and what git
/// refuses as a whole ("..", a leading '.', a trailing ".lock" or '.') is escaped.
pub fn ref_safe(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    while out.contains("..") {
        out = out.replace("..", ".-");
    }
    if out.starts_with('.') {
        out.insert(0, '_');
    }
    if out.ends_with(".lock") || out.ends_with('.') {
        out.push('_');
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// Lowercase ASCII letters and digits, other runs of characters as one '-', at most `max`
/// characters, never empty.
fn slug(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
        if out.len() >= max {
            break;
        }
    }
    let out = out.trim_end_matches('-');
    if out.is_empty() {
        "task".to_string()
    } else {
        out.to_string()
    }
}

/// The message of the commit that keeps what an attempt left uncommitted.
pub fn commit_message(task_name: &str, id: Uuid, attempt: u32) -> String {
    let title: String = task_name
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(72)
        .collect();
    format!(
        "{title}\n\nWork left uncommitted by attempt {attempt} of task \"{title}\", committed by orchestr8-async.\n\n{TASK_TRAILER}: {id}\n"
    )
}

/// The message of a commit merging the work of upstream tasks for a phase.
pub fn merge_message(phase_id: &str, labels: &[String]) -> String {
    format!(
        "Merge the work of {} for phase {phase_id}\n\nCommitted by orchestr8-async.\n",
        labels.join(", ")
    )
}

/// `(files, insertions, deletions)` from `git diff --shortstat` ("" when nothing changed).
pub fn parse_shortstat(s: &str) -> (u32, u32, u32) {
    let mut out = (0, 0, 0);
    for part in s.trim().split(',') {
        let mut words = part.split_whitespace();
        let Some(n) = words.next().and_then(|n| n.parse().ok()) else {
            continue;
        };
        match words.next() {
            Some(w) if w.starts_with("file") => out.0 = n,
            Some(w) if w.starts_with("insertion") => out.1 = n,
            Some(w) if w.starts_with("deletion") => out.2 = n,
            _ => {}
        }
    }
    out
}

/// One `git diff --numstat -z` record per file: `(path, insertions, deletions)`, `None` counts
/// for a binary file. Renames (`-M`) are off, so every record has one path.
pub fn parse_numstat(s: &str) -> Vec<(String, Option<u32>, Option<u32>)> {
    s.split('\0')
        .filter(|r| !r.is_empty())
        .filter_map(|r| {
            let mut f = r.splitn(3, '\t');
            let ins = f.next()?.parse().ok();
            let del = f.next()?.parse().ok();
            let path = f.next()?.trim_start_matches('\n').to_string();
            Some((path, ins, del))
        })
        .collect()
}

/// What `git merge-tree --write-tree --name-only --no-messages` answered: the merged tree, or
/// (exit status 1) the conflicted files.
pub fn parse_merge_tree(out: &str, conflicted: bool) -> Result<String, Vec<String>> {
    let mut lines = out.lines();
    let tree = lines.next().unwrap_or_default().trim().to_string();
    if !conflicted {
        return Ok(tree);
    }
    let mut files: Vec<String> = lines
        .take_while(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    files.dedup();
    Err(files)
}

/// Cuts a diff to at most `max` bytes at a line end, with a marker saying how to see the rest.
pub fn cut_diff(diff: &[u8], max: usize, more: bool) -> (String, bool) {
    if diff.len() <= max && !more {
        return (String::from_utf8_lossy(diff).into_owned(), false);
    }
    let within = &diff[..diff.len().min(max)];
    let end = within
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let mut text = String::from_utf8_lossy(&within[..end]).into_owned();
    text.push_str(&format!(
        "…[diff cut after {end} bytes: ask for fewer paths or a larger max_bytes]\n"
    ));
    (text, true)
}

/// The paths of a `-z` listing of git (`ls-files -z`, `check-ignore -z`).
pub fn split_nul(s: &str) -> Vec<String> {
    s.split('\0')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// The lines appended to a completed isolated task's result, saying where its work is.
pub fn result_note(ws: &crate::model::Workspace) -> String {
    let base = short(&ws.base_commit);
    if ws.branch_kept {
        format!(
            "\n\n---\norchestr8-async: the changes are on branch `{}` of {} ({} file(s) changed, +{} -{}), based on {base}. Review them with task_diff or `git diff {base}...{}`.",
            ws.branch, ws.repository, ws.files_changed, ws.insertions, ws.deletions, ws.branch
        )
    } else {
        format!(
            "\n\n---\norchestr8-async: no files changed in the worktree (based on {base} of {}); no branch was kept.",
            ws.repository
        )
    }
}

/// The worktrees `git worktree list --porcelain` names, each with the ref of its branch
/// (`None`: detached, or bare).
pub fn parse_worktree_list(out: &str) -> Vec<(String, Option<String>)> {
    let mut found: Vec<(String, Option<String>)> = Vec::new();
    for line in out.lines() {
        if let Some(path) = line.strip_prefix("worktree ") {
            found.push((path.to_string(), None));
        } else if let (Some(b), Some(last)) = (line.strip_prefix("branch "), found.last_mut()) {
            last.1 = Some(b.to_string());
        }
    }
    found
}

/// `(major, minor)` from `git --version` ("git version 2.47.3", "git version 2.39.5 (Apple
/// Git-154)").
pub fn parse_git_version(s: &str) -> Option<(u32, u32)> {
    let v = s.trim().strip_prefix("git version ")?;
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The first 12 hex digits of a commit id.
pub fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names_are_readable_and_distinct() {
        let id = Uuid::parse_str("0190a3b2-7c4d-7e8f-9a0b-1c2d3e4f5a6b").unwrap();
        assert_eq!(
            branch_name("Fix the login bug!", id),
            "orchestr8/fix-the-login-bug-1c2d3e4f5a6b"
        );
        assert_eq!(branch_name("???", id), "orchestr8/task-1c2d3e4f5a6b");
        assert_eq!(
            branch_name("ünïcode ok", id),
            "orchestr8/n-code-ok-1c2d3e4f5a6b"
        );
        let long = branch_name(&"x".repeat(300), id);
        assert!(long.len() <= "orchestr8/".len() + 40 + 13, "{long}");
        assert_eq!(
            phase_branch_name(id, "impl"),
            "orchestr8/workflow-1c2d3e4f5a6b/impl"
        );
        // Distinct phase ids, distinct branches.
        assert_ne!(
            phase_branch_name(id, "build_a"),
            phase_branch_name(id, "build-a")
        );
    }

    #[test]
    fn git_versions_are_read() {
        assert_eq!(parse_git_version("git version 2.47.3\n"), Some((2, 47)));
        assert_eq!(
            parse_git_version("git version 2.39.5 (Apple Git-154)"),
            Some((2, 39))
        );
        assert_eq!(parse_git_version("git version 3.0"), Some((3, 0)));
        assert_eq!(parse_git_version("hub version 1"), None);
        assert!(parse_git_version("git version 2.37.1").unwrap() < (2, 38));
    }

    #[test]
    fn ref_components_are_made_safe() {
        assert_eq!(ref_safe("impl"), "impl");
        assert_eq!(ref_safe("a..b"), "a.-b");
        assert_eq!(ref_safe(".hidden"), "_.hidden");
        assert_eq!(ref_safe("x.lock"), "x.lock_");
        assert_eq!(ref_safe("a b/c"), "a-b-c");
        assert_eq!(ref_safe(""), "_");
        let id = Uuid::now_v7();
        assert!(attempt_ref(id, "0123456789abcdef0").ends_with(&format!("{id}/0123456789ab")));
    }

    #[test]
    fn commit_message_has_the_trailer() {
        let id = Uuid::now_v7();
        let m = commit_message("add tests\nsecond line", id, 2);
        assert!(m.starts_with("add tests\n\n"));
        assert!(m.contains("attempt 2"));
        assert!(m.ends_with(&format!("Orchestr8-Task-Id: {id}\n")));
    }

    #[test]
    fn shortstat_in_all_its_forms() {
        assert_eq!(
            parse_shortstat(" 3 files changed, 10 insertions(+), 2 deletions(-)\n"),
            (3, 10, 2)
        );
        assert_eq!(
            parse_shortstat(" 1 file changed, 1 insertion(+)"),
            (1, 1, 0)
        );
        assert_eq!(
            parse_shortstat(" 1 file changed, 4 deletions(-)"),
            (1, 0, 4)
        );
        assert_eq!(parse_shortstat(""), (0, 0, 0));
    }

    #[test]
    fn numstat_with_binary_files() {
        let s = "1\t2\ta.txt\0-\t-\timg.png\0";
        assert_eq!(
            parse_numstat(s),
            vec![
                ("a.txt".to_string(), Some(1), Some(2)),
                ("img.png".to_string(), None, None)
            ]
        );
    }

    #[test]
    fn merge_tree_answers() {
        assert_eq!(parse_merge_tree("abc123\n", false), Ok("abc123".into()));
        assert_eq!(
            parse_merge_tree("abc123\nREADME.md\nsrc/a.rs\n\n", true),
            Err(vec!["README.md".to_string(), "src/a.rs".to_string()])
        );
    }

    #[test]
    fn diffs_are_cut_at_a_line_end_with_a_marker() {
        let d = b"line one\nline two\nline three\n";
        assert_eq!(
            cut_diff(d, 100, false),
            (String::from_utf8_lossy(d).into(), false)
        );
        let (text, cut) = cut_diff(d, 14, false);
        assert!(cut);
        assert!(
            text.starts_with("line one\n…[diff cut after 9 bytes"),
            "{text}"
        );
        let (text, cut) = cut_diff(d, d.len(), true);
        assert!(cut && text.starts_with("line one\nline two\nline three\n…[diff cut"));
    }

    #[test]
    fn notes_name_the_branch_or_say_nothing_changed() {
        let mut ws = crate::model::Workspace {
            repository: "/r".into(),
            subdir: String::new(),
            branch: "orchestr8/x-1".into(),
            base_commit: "0123456789abcdef".into(),
            head_commit: Some("fedcba".into()),
            files_changed: 2,
            insertions: 5,
            deletions: 1,
            branch_kept: true,
            common_dir: String::new(),
        };
        let n = result_note(&ws);
        assert!(
            n.contains("branch `orchestr8/x-1`") && n.contains("+5 -1"),
            "{n}"
        );
        assert!(n.contains("git diff 0123456789ab...orchestr8/x-1"), "{n}");
        ws.branch_kept = false;
        assert!(result_note(&ws).contains("no branch was kept"));
    }

    #[test]
    fn worktree_lists_name_each_worktree_with_its_branch() {
        let out = "worktree /r\nHEAD 1111\nbranch refs/heads/main\n\n\
                   worktree /x/y.worktrees/abc\nHEAD 2222\nbranch refs/heads/o8/t-abc\nlocked\n\n\
                   worktree /z\nHEAD 3333\ndetached\nprunable gitdir file points to non-existent location\n";
        assert_eq!(
            parse_worktree_list(out),
            vec![
                ("/r".to_string(), Some("refs/heads/main".to_string())),
                (
                    "/x/y.worktrees/abc".to_string(),
                    Some("refs/heads/o8/t-abc".to_string())
                ),
                ("/z".to_string(), None),
            ]
        );
        assert!(parse_worktree_list("").is_empty());
    }
}
