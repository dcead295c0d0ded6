//! Cutting a session's stdin into MCP messages, one per line, with a bound — and finding the
//! request id of a line too long to keep, so that its sender is answered instead of waiting
//! forever.
//!
//! A line longer than the bound is never buffered whole: its first and last few KiB are kept
//! (a client may put `"id"` first, as rmcp does, or last, as the TypeScript SDK — Claude Code's
//! — does), the rest is counted and dropped until its newline.

use bytes::{Buf, BytesMut};
use rmcp::model::RequestId;
use tokio_util::codec::Decoder;

/// How much of each end of an oversized line is kept to find its id.
const KEPT: usize = 4096;

/// One line of stdin.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// A whole line within the bound, without its line ending.
    Line(BytesMut),
    /// A line longer than the bound: `len` bytes, of which `head` and `tail` are the ends.
    Oversized {
        head: Vec<u8>,
        tail: Vec<u8>,
        len: usize,
    },
}

/// The line decoder: lines of at most `max` bytes (without the newline).
pub struct Lines {
    max: usize,
    /// Bytes of the buffer already searched for a newline.
    searched: usize,
    /// The line being dropped, once it has passed the bound.
    dropping: Option<Dropping>,
}

struct Dropping {
    head: Vec<u8>,
    tail: Vec<u8>,
    len: usize,
}

impl Dropping {
    fn start(bytes: &[u8]) -> Dropping {
        let mut d = Dropping {
            head: Vec::new(),
            tail: Vec::new(),
            len: 0,
        };
        d.more(bytes);
        d
    }

    fn more(&mut self, bytes: &[u8]) {
        let room = KEPT.saturating_sub(self.head.len());
        self.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.len += bytes.len();
        self.tail
            .extend_from_slice(&bytes[bytes.len().saturating_sub(KEPT)..]);
        let excess = self.tail.len().saturating_sub(KEPT);
        self.tail.drain(..excess);
    }

    fn frame(self) -> Frame {
        Frame::Oversized {
            head: self.head,
            tail: self.tail,
            len: self.len,
        }
    }
}

impl Lines {
    pub fn new(max: usize) -> Lines {
        Lines {
            max,
            searched: 0,
            dropping: None,
        }
    }
}

fn strip_cr(mut line: BytesMut) -> BytesMut {
    if line.last() == Some(&b'\r') {
        line.truncate(line.len() - 1);
    }
    line
}

impl Decoder for Lines {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        if let Some(d) = self.dropping.as_mut() {
            return Ok(match buf.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    d.more(&buf[..i]);
                    buf.advance(i + 1);
                    self.dropping.take().map(Dropping::frame)
                }
                None => {
                    d.more(buf);
                    buf.clear();
                    None
                }
            });
        }
        let found = buf[self.searched..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| self.searched + i);
        match found {
            Some(i) if i <= self.max => {
                self.searched = 0;
                let mut line = buf.split_to(i + 1);
                Ok(Some(Frame::Line(strip_cr(line.split_to(i)))))
            }
            Some(i) => {
                self.searched = 0;
                let frame = Dropping::start(&buf[..i]).frame();
                buf.advance(i + 1);
                Ok(Some(frame))
            }
            None if buf.len() > self.max => {
                self.searched = 0;
                self.dropping = Some(Dropping::start(buf));
                buf.clear();
                Ok(None)
            }
            None => {
                self.searched = buf.len();
                Ok(None)
            }
        }
    }

    /// A last line without its newline still counts.
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        if let Some(mut d) = self.dropping.take() {
            d.more(buf);
            buf.clear();
            return Ok(Some(d.frame()));
        }
        self.searched = 0;
        if buf.is_empty() {
            return Ok(None);
        }
        Ok(Some(Frame::Line(strip_cr(buf.split()))))
    }
}

/// The request id of a JSON-RPC message of which only the two ends are known: a top-level
/// `"id"` member in the head (before the long part), else one that is the object's last member
/// (the tail ends `"id": <value>}`). `None` when neither end says (a notification, or a
/// message too odd to read this way).
pub fn request_id(head: &[u8], tail: &[u8]) -> Option<RequestId> {
    id_in_head(head).or_else(|| id_at_end(tail))
}

/// The end (index of the closing quote) of the string that opens at `start`.
fn string_end(s: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && s[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// A complete id value (a string, or an integer followed by something) at the start of `s`.
fn id_value(s: &[u8]) -> Option<RequestId> {
    match s.first()? {
        b'"' => {
            let end = string_end(s, 0)?;
            let text: String = serde_json::from_slice(&s[..=end]).ok()?;
            Some(RequestId::String(text.into()))
        }
        b'-' | b'0'..=b'9' => {
            let end = s.iter().position(|&b| !(b == b'-' || b.is_ascii_digit()))?;
            let text = std::str::from_utf8(&s[..end]).ok()?;
            text.parse().ok().map(RequestId::Number)
        }
        _ => None,
    }
}

/// A top-level `"id"` member read from the start of a message.
fn id_in_head(s: &[u8]) -> Option<RequestId> {
    let mut depth = 0usize;
    let mut key_next = false;
    let mut i = skip_ws(s, 0);
    if s.get(i) != Some(&b'{') {
        return None;
    }
    while i < s.len() {
        match s[i] {
            b'"' => {
                let end = string_end(s, i)?;
                if depth == 1 && key_next && &s[i + 1..end] == b"id" {
                    let colon = skip_ws(s, end + 1);
                    if s.get(colon) != Some(&b':') {
                        return None;
                    }
                    return id_value(&s[skip_ws(s, colon + 1)..]);
                }
                key_next = false;
                i = end;
            }
            b'{' | b'[' => {
                depth += 1;
                key_next = depth == 1;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' => key_next = depth == 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// An `"id"` member that ends the message: `…, "id": <value> }`.
fn id_at_end(s: &[u8]) -> Option<RequestId> {
    let trimmed = |mut end: usize| {
        while end > 0 && s[end - 1].is_ascii_whitespace() {
            end -= 1;
        }
        end
    };
    let end = trimmed(s.len());
    if end == 0 || s[end - 1] != b'}' {
        return None;
    }
    let value_end = trimmed(end - 1);
    let value_start = match s.get(value_end.checked_sub(1)?)? {
        b'"' => {
            // The opening quote: the nearest one before that is not escaped.
            let mut j = value_end - 1;
            loop {
                j = j.checked_sub(1)?;
                if s[j] == b'"' {
                    let backslashes = s[..j].iter().rev().take_while(|&&b| b == b'\\').count();
                    if backslashes % 2 == 0 {
                        break j;
                    }
                }
            }
        }
        b'0'..=b'9' => {
            let digits = s[..value_end]
                .iter()
                .rev()
                .take_while(|&&b| b == b'-' || b.is_ascii_digit())
                .count();
            value_end - digits
        }
        _ => return None,
    };
    let colon = trimmed(value_start);
    if colon == 0 || s[colon - 1] != b':' {
        return None;
    }
    let key_end = trimmed(colon - 1);
    let key = s[..key_end].strip_suffix(b"\"id\"")?;
    let before = trimmed(key.len());
    if before == 0 || !matches!(s[before - 1], b',' | b'{') {
        return None;
    }
    let mut value = s[value_start..value_end].to_vec();
    value.push(b' ');
    id_value(&value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[&[u8]], max: usize) -> Vec<Frame> {
        let mut lines = Lines::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in input {
            buf.extend_from_slice(chunk);
            while let Some(f) = lines.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        while let Some(f) = lines.decode_eof(&mut buf).unwrap() {
            out.push(f);
        }
        out
    }

    fn line(s: &str) -> Frame {
        Frame::Line(BytesMut::from(s.as_bytes()))
    }

    #[test]
    fn lines_are_cut_at_newlines_across_chunks() {
        let got = frames(&[b"ab", b"c\nde\r\n", b"\nlast"], 10);
        assert_eq!(got, vec![line("abc"), line("de"), line(""), line("last")]);
    }

    #[test]
    fn a_line_at_the_bound_is_kept_and_one_past_it_is_not() {
        let got = frames(&[b"12345\n123456\nok\n"], 5);
        assert_eq!(got[0], line("12345"));
        assert_eq!(
            got[1],
            Frame::Oversized {
                head: b"123456".to_vec(),
                tail: b"123456".to_vec(),
                len: 6
            }
        );
        assert_eq!(got[2], line("ok"));
    }

    #[test]
    fn an_oversized_line_keeps_only_its_ends_while_it_streams_in() {
        let mut long = b"{\"id\":1,".to_vec();
        long.extend(std::iter::repeat_n(b'x', 3 * KEPT));
        long.extend_from_slice(b"end}");
        let chunks: Vec<&[u8]> = long.chunks(1000).collect();
        let mut input = chunks.clone();
        input.push(b"\nnext\n");
        let got = frames(&input, 2000);
        match &got[0] {
            Frame::Oversized { head, tail, len } => {
                assert_eq!(*len, long.len());
                assert_eq!(head[..], long[..KEPT]);
                assert_eq!(tail[..], long[long.len() - KEPT..]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(got[1], line("next"));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn an_oversized_last_line_without_newline_is_reported() {
        let got = frames(&[b"abcdefgh"], 4);
        assert!(matches!(got[..], [Frame::Oversized { len: 8, .. }]));
    }

    fn num(n: i64) -> Option<RequestId> {
        Some(RequestId::Number(n))
    }

    #[test]
    fn the_id_is_found_first_or_last() {
        let first =
            br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"arguments":{"x":"#;
        assert_eq!(request_id(first, b"...\"}}}"), num(42));
        let last = br#"aaaa"}},"jsonrpc":"2.0","id":7}"#;
        assert_eq!(
            request_id(br#"{"method":"tools/call","params":{"#, last),
            num(7)
        );
        let spaced = b"xx\" } } , \"id\" : \"req-\\\"9\\\"\" }\r\n";
        assert_eq!(
            request_id(b"{ \"method\": \"x\", \"params\": {", spaced),
            Some(RequestId::String("req-\"9\"".into()))
        );
        assert_eq!(request_id(b"{\"id\": -3, \"p\": [", b""), num(-3));
    }

    #[test]
    fn nested_or_unfinished_ids_are_not_taken() {
        // An "id" inside the params, at either end.
        assert_eq!(
            request_id(br#"{"method":"x","params":{"id":5,"#, br#"{"id":6}}"#),
            None
        );
        // A string value that merely ends like an id member.
        assert_eq!(
            request_id(b"{\"method\":\"x\",\"p\":\"", br#"a,\"id\":3}"}"#),
            None
        );
        // The head cut inside the id's value.
        assert_eq!(request_id(br#"{"id":12"#, b"xx}"), None);
        assert_eq!(request_id(br#"{"id":"abc"#, b"xx}"), None);
        // Not an object; a notification.
        assert_eq!(request_id(b"[1,2", b"3]"), None);
        assert_eq!(
            request_id(br#"{"method":"notifications/x","params":{"#, b"}}"),
            None
        );
    }
}
