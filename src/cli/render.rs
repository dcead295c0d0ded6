//! Human-readable output: aligned columns, ages, one-line summaries.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Prints rows under a header, each column as wide as its widest cell (the last column is
/// never padded, so long names and messages are not cut).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// A string field, or "-".
pub fn s(v: &Value, field: &str) -> String {
    match v.get(field) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

/// How long ago an RFC 3339 time was, e.g. "3m12s"; "-" without one.
pub fn age(v: &Value, field: &str, now: DateTime<Utc>) -> String {
    v.get(field)
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| duration((now - t.with_timezone(&Utc)).num_seconds()))
        .unwrap_or_else(|| "-".into())
}

pub fn duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// The first line of a text, cut to `max` characters with an ellipsis.
pub fn short(text: &str, max: usize) -> String {
    let first = text.lines().next().unwrap_or("");
    if first.chars().count() <= max && !text.contains('\n') {
        first.to_string()
    } else {
        let cut: String = first.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// What the `ended` command says (to a person, or into a model's context through the hook).
pub fn ended(r: &crate::api::EndedReport) -> String {
    let n = r.tasks.len() as u64 + r.more;
    let mut out = format!(
        "orchestr8-async: {n} background task{} submitted from this project ended since you were last told:",
        if n == 1 { "" } else { "s" }
    );
    for t in &r.tasks {
        out.push_str(&format!(
            "\n- \"{}\" (agent {}, task_id {}) {}",
            t.name,
            t.agent_name,
            t.task_id,
            t.status.as_str()
        ));
        if let Some(line) = &t.line {
            out.push_str(": ");
            out.push_str(line);
        }
        if let Some(branch) = &t.branch {
            out.push_str(&format!(" [changes on branch {branch}]"));
        }
    }
    if r.more > 0 {
        out.push_str(&format!(
            "\n- and {} earlier (list_tasks shows them)",
            r.more
        ));
    }
    out.push_str("\nRead a whole result with the task_status tool (or `orchestr8-async-server show <task_id>`).");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_names_results_and_branches() {
        let task = |name: &str, branch: Option<&str>| crate::api::EndedTask {
            task_id: "t1".into(),
            name: name.into(),
            agent_name: "editor".into(),
            status: crate::model::TaskStatus::Completed,
            completed_at: None,
            line: Some("done".into()),
            branch: branch.map(String::from),
        };
        let text = ended(&crate::api::EndedReport {
            project: "/p".into(),
            tasks: vec![task("fix", Some("orchestr8/fix-1")), task("look", None)],
            more: 0,
        });
        assert!(
            text.contains("- \"fix\" (agent editor, task_id t1) completed: done [changes on branch orchestr8/fix-1]"),
            "{text}"
        );
        assert!(
            text.contains("- \"look\" (agent editor, task_id t1) completed: done\n"),
            "{text}"
        );
    }

    #[test]
    fn columns_align_and_the_last_is_free() {
        let t = table(
            &["ID", "NAME"],
            &[
                vec!["a".into(), "long name".into()],
                vec!["bbb".into(), "x".into()],
            ],
        );
        assert_eq!(t, "ID   NAME\na    long name\nbbb  x");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(192), "3m12s");
        assert_eq!(duration(7260), "2h01m");
        assert_eq!(short("one\ntwo", 10), "one…");
        assert_eq!(short("abcdef", 4), "abc…");
    }
}
