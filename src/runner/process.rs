//! Process-group plumbing shared by runners that start processes.
//!
//! Every agent process leads its own process group, so that stopping a task reaches everything
//! it started (`sh -c 'sleep 100'` leaves no `sleep` behind), and so that crash recovery can stop
//! the orphans of a dead server by group id.

use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Child;

use crate::limits;

/// How long a process group has between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

pub fn signal_group(pgid: i64, sig: Signal) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid as i32), sig);
    }
}

/// SIGTERM to the group, then SIGKILL once [`KILL_GRACE`] has passed; returns once the leader
/// has been reaped.
pub async fn terminate_group(child: &mut Child, pgid: i64) {
    signal_group(pgid, Signal::SIGTERM);
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        signal_group(pgid, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // The leader is gone; anything it left in the group goes too.
    signal_group(pgid, Signal::SIGKILL);
}

/// Start time of a process in clock ticks since boot (field 22 of `/proc/<pid>/stat`), which
/// together with the pid identifies a process even after pids wrap around.
pub fn start_time(pid: i64) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Kills the process group a dead server left running, if its leader is still the same process.
/// Returns whether something was killed.
pub fn kill_orphan(pgid: i64, expected_start: Option<i64>) -> bool {
    match (start_time(pgid), expected_start) {
        (Some(now), Some(then)) if now == then => {
            signal_group(pgid, Signal::SIGKILL);
            true
        }
        _ => false,
    }
}

/// Reads a stream to its end, keeping at most `cap` bytes; returns the kept text (lossy UTF-8,
/// with a marker when cut).
pub async fn read_capped(stream: impl AsyncRead + Unpin, cap: usize) -> String {
    let mut kept = Vec::new();
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let mut reader = stream;
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n;
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    let text = String::from_utf8_lossy(&kept).into_owned();
    if total > kept.len() {
        format!("{text}\n…[truncated: {} bytes omitted]", total - kept.len())
    } else {
        text
    }
}

/// Streams lines of `stream` to `on_line` as they arrive (each cut to the log-line limit) and
/// returns the last [`limits::MAX_STDERR_TAIL_BYTES`] of the whole stream.
pub async fn stream_lines(stream: impl AsyncRead + Unpin, on_line: impl Fn(String)) -> String {
    let mut reader = BufReader::new(stream);
    let mut tail = String::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                tail.push_str(text);
                tail.push('\n');
                if tail.len() > 2 * limits::MAX_STDERR_TAIL_BYTES {
                    tail = limits::tail_with_marker(&tail, limits::MAX_STDERR_TAIL_BYTES);
                }
                on_line(limits::truncate_with_marker(
                    text,
                    limits::MAX_LOG_LINE_BYTES,
                ));
            }
        }
    }
    limits::tail_with_marker(tail.trim_end(), limits::MAX_STDERR_TAIL_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_is_readable() {
        let me = std::process::id() as i64;
        assert!(start_time(me).is_some());
        assert!(start_time(i32::MAX as i64).is_none());
    }

    #[tokio::test]
    async fn capped_read_marks_the_cut() {
        let data = [b'x'; 100];
        let text = read_capped(&data[..], 10).await;
        assert!(text.starts_with("xxxxxxxxxx\n…[truncated: 90 bytes omitted]"));
    }

    #[tokio::test]
    async fn lines_stream_and_tail_is_kept() {
        let seen = std::sync::Mutex::new(Vec::new());
        let tail = stream_lines(&b"a\nb\r\nc"[..], |l| seen.lock().unwrap().push(l)).await;
        assert_eq!(*seen.lock().unwrap(), vec!["a", "b", "c"]);
        assert_eq!(tail, "a\nb\nc");
    }
}
