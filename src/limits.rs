//! Size limits of stored text, and the one way text is cut to them.
//!
//! Everything a task produces ends up in DuckDB and in MCP answers that an agent reads into its
//! context window, so every stored string is bounded and a cut is always visible.

/// Largest `agent_instructions` accepted.
pub const MAX_INSTRUCTIONS_BYTES: usize = 1024 * 1024;
/// Largest stored result (stdout of a command agent).
pub const MAX_RESULT_BYTES: usize = 1024 * 1024;
/// Largest stored log line.
pub const MAX_LOG_LINE_BYTES: usize = 4 * 1024;
/// How much of the end of stderr goes into a failed task's `error`.
pub const MAX_STDERR_TAIL_BYTES: usize = 4 * 1024;
/// Largest serialized `metadata` object.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// Cuts `s` to at most `max` bytes (on a char boundary) and appends a marker saying how much
/// was dropped.
pub fn truncate_with_marker(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let cut = floor_char_boundary(s, max);
    format!(
        "{}\n…[truncated: {} bytes omitted]",
        &s[..cut],
        s.len() - cut
    )
}

/// Keeps the last `max` bytes of `s`, with a marker in front when something was dropped.
pub fn tail_with_marker(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…[{} earlier bytes omitted]\n{}", start, &s[start..])
}

/// The largest char boundary of `s` at or before `i`.
pub fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_untouched() {
        assert_eq!(truncate_with_marker("abc", 3), "abc");
        assert_eq!(tail_with_marker("abc", 3), "abc");
    }

    #[test]
    fn long_text_is_cut_with_marker_on_char_boundary() {
        let s = "é".repeat(10); // 20 bytes
        let t = truncate_with_marker(&s, 5);
        assert!(t.starts_with("éé\n…[truncated: 16 bytes omitted]"), "{t}");
        let t = tail_with_marker(&s, 5);
        assert!(t.ends_with("\néé"), "{t}");
        assert!(t.contains("16 earlier bytes omitted"), "{t}");
    }
}
