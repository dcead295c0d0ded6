//! A node's identity and the queues it serves (pure).

/// The queue of a task that names none.
pub const DEFAULT_QUEUE: &str = "default";

/// A node id: the host, the process and a random part, so that a restarted engine (same host,
/// perhaps the same pid) is a new node and never mistaken for the one that died.
pub fn node_id(host: &str, pid: u32, random: u32) -> String {
    format!("{host}-{pid}-{random:08x}")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("ORCHESTR8_QUEUES names no queue; list at least one, e.g. ORCHESTR8_QUEUES=default")]
    Empty,
    #[error(
        "ORCHESTR8_QUEUES has an invalid queue name {0:?}: use 1 to 64 letters, digits, '-', '_' \
         or '.', separated by commas"
    )]
    Invalid(String),
}

/// Whether `name` can name a queue.
pub fn valid_queue(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The queues of `ORCHESTR8_QUEUES` (comma-separated, spaces around names ignored, repeats
/// dropped, order kept); unset means the default queue only.
pub fn parse_queues(setting: Option<&str>) -> Result<Vec<String>, QueueError> {
    let Some(setting) = setting else {
        return Ok(vec![DEFAULT_QUEUE.to_string()]);
    };
    let mut queues: Vec<String> = Vec::new();
    for name in setting.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !valid_queue(name) {
            return Err(QueueError::Invalid(name.to_string()));
        }
        if !queues.iter().any(|q| q == name) {
            queues.push(name.to_string());
        }
    }
    if queues.is_empty() {
        return Err(QueueError::Empty);
    }
    Ok(queues)
}

/// The host a new task is bound to, if any. A task that runs a process (the claude and command
/// runners) works in a directory of the host it came from — its `working_dir`, or its session's
/// — so in the default queue it runs only there: nobody sends it to another machine by accident.
/// Naming a queue says the nodes serving it are fit for the task (the same checkout at the
/// same path, say), so a task in a named queue runs on any of them; so does a task of an HTTP
/// runner, which needs no files. An isolated task always runs on its host, whatever its queue:
/// its worktree is made from that host's repository, and its branch is kept there.
pub fn host_binding(
    queue: &str,
    runs_a_process: bool,
    isolated: bool,
    host: &str,
) -> Option<String> {
    (isolated || (queue == DEFAULT_QUEUE && runs_a_process)).then(|| host.to_string())
}

/// This machine's host name, as tasks bound to it record it.
pub fn this_host() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_serves_the_default_queue() {
        assert_eq!(parse_queues(None).unwrap(), ["default"]);
    }

    #[test]
    fn a_list_is_trimmed_and_deduplicated_in_order() {
        assert_eq!(
            parse_queues(Some(" gpu, default,gpu ,, ci.nightly")).unwrap(),
            ["gpu", "default", "ci.nightly"]
        );
    }

    #[test]
    fn bad_names_and_empty_lists_say_what_to_write() {
        assert_eq!(parse_queues(Some(" , ")), Err(QueueError::Empty));
        let e = parse_queues(Some("default,gpu farm")).unwrap_err();
        assert_eq!(e, QueueError::Invalid("gpu farm".into()));
        assert!(e.to_string().contains("letters, digits"));
        assert!(parse_queues(Some(&"q".repeat(65))).is_err());
    }

    #[test]
    fn processes_in_the_default_queue_stay_on_their_host() {
        assert_eq!(
            host_binding("default", true, false, "h1").as_deref(),
            Some("h1")
        );
        assert_eq!(host_binding("gpu", true, false, "h1"), None);
        assert_eq!(host_binding("default", false, false, "h1"), None);
        // An isolated task's repository and branch are on its host, whatever its queue.
        assert_eq!(host_binding("gpu", true, true, "h1").as_deref(), Some("h1"));
    }

    #[test]
    fn node_ids_differ_by_process_and_random_part() {
        assert_eq!(node_id("h", 7, 0xab), "h-7-000000ab");
        assert_ne!(node_id("h", 7, 1), node_id("h", 7, 2));
    }
}
