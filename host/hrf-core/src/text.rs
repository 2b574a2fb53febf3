//! Text that comes from outside hrf's own code (a WASM plugin, a native library, a `process`
//! reward's child, anything a reward returns) passes through here before it reaches the
//! terminal, a log line, an error message or `metrics.jsonl`:
//!
//! - it is cut to a documented size ([`MAX_MESSAGE`] bytes for messages and log lines,
//!   [`MAX_NAME`] for names and versions), the cut marked `… (N bytes cut)`;
//! - control characters (C0, DEL, C1: ESC, CR, LF, NUL, …) and the Unicode bidirectional
//!   overrides are escaped (`\x1b`, `\r`, `\n`, `\0`, `\u{202e}`), so the result is one line that
//!   cannot move the cursor, recolour the terminal or start a line of its own;
//! - lines of a plugin's output are each prefixed with the plugin's name by [`PluginLog`], which
//!   also bounds how many lines and bytes one call and one run may write, and says how many it
//!   dropped.

/// Bytes kept of one message (an error, a log line, a line of output) from a plugin.
pub const MAX_MESSAGE: usize = 1024;
/// Bytes kept of a name or version (an extra's name, what a plugin calls itself).
pub const MAX_NAME: usize = 128;
/// Lines a plugin may write per call (its log messages and output lines together).
pub const MAX_LINES_PER_CALL: usize = 64;
/// Bytes a plugin may write per call, after cutting each line to [`MAX_MESSAGE`].
pub const MAX_BYTES_PER_CALL: usize = 16 << 10;
/// Lines a plugin may write over a whole run.
pub const MAX_LINES_PER_RUN: usize = 10_000;
/// Named extras kept per sample.
pub const MAX_EXTRAS: usize = 32;

/// Whether `c` is escaped: control characters and the bidirectional overrides and isolates.
fn escaped(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\0' => out.push_str("\\0"),
        c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
        c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
    }
}

/// `s` as one safe line of at most `max` bytes (plus the cut mark): control characters
/// escaped, the rest cut with `… (N bytes cut)`, N counting the bytes of `s` left out. Runs in
/// time proportional to `max`, not to the length of `s`.
pub fn clean(s: &str, max: usize) -> String {
    clean_with(s, max, 0)
}

/// [`clean`], counting `more` bytes cut beyond the end of `s`.
fn clean_with(s: &str, max: usize, more: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 24);
    for (i, c) in s.char_indices() {
        let before = out.len();
        if escaped(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
        if out.len() > max {
            out.truncate(before);
            out.push_str(&format!("… ({} bytes cut)", s.len() - i + more));
            return out;
        }
    }
    if more > 0 {
        out.push_str(&format!("… ({more} bytes cut)"));
    }
    out
}

/// [`clean`] of bytes that should be UTF-8: invalid sequences become U+FFFD. Only the first
/// `4 × max + 4` bytes are decoded (no more can survive the cut).
pub fn clean_bytes(b: &[u8], max: usize) -> String {
    clean_head(b, b.len(), max)
}

/// [`clean_bytes`] of `head`, the first bytes of a text `total` bytes long (the rest was never
/// read): the cut mark counts the bytes of the whole text left out.
pub fn clean_head(head: &[u8], total: usize, max: usize) -> String {
    let used = &head[..head.len().min(max.saturating_mul(4).saturating_add(4))];
    clean_with(
        &String::from_utf8_lossy(used),
        max,
        total.saturating_sub(used.len()),
    )
}

/// A message (an error's text, a log line): [`clean`] to [`MAX_MESSAGE`] bytes.
pub fn message(s: &str) -> String {
    clean(s, MAX_MESSAGE)
}

/// A name or version: [`clean`] to [`MAX_NAME`] bytes.
pub fn name(s: &str) -> String {
    clean(s, MAX_NAME)
}

/// The output of one plugin (log messages, stdout and stderr lines) on its way to the log: each
/// line cleaned and prefixed with `[plugin NAME]` (or the given prefix), at most
/// [`MAX_LINES_PER_CALL`] lines and [`MAX_BYTES_PER_CALL`] bytes per call and
/// [`MAX_LINES_PER_RUN`] lines per run; what is dropped is counted and said at the end of the
/// call ([`PluginLog::end_call`]).
#[derive(Debug, Clone)]
pub struct PluginLog {
    prefix: String,
    lines_this_call: usize,
    bytes_this_call: usize,
    dropped_this_call: usize,
    lines_this_run: usize,
    dropped_this_run: usize,
    /// The run's budget was said to be spent.
    said_run_spent: bool,
}

impl PluginLog {
    /// `prefix` is what starts every line, e.g. `[plugin jpeg]` (it is cleaned too).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: clean(prefix, MAX_NAME + 32),
            lines_this_call: 0,
            bytes_this_call: 0,
            dropped_this_call: 0,
            lines_this_run: 0,
            dropped_this_run: 0,
            said_run_spent: false,
        }
    }

    /// The line to print for `text` (one line: every control character escaped), prefixed with
    /// `[PREFIX tag]` when `tag` is not empty; `None` once this call's or this run's budget is
    /// spent (the line is counted as dropped).
    pub fn line(&mut self, tag: &str, text: &str) -> Option<String> {
        self.admit(tag, || message(text))
    }

    /// [`line`](PluginLog::line) for `head`, the first bytes of a line `total` bytes long, that
    /// should be UTF-8 (see [`clean_head`]).
    pub fn line_bytes(&mut self, tag: &str, head: &[u8], total: usize) -> Option<String> {
        self.admit(tag, || clean_head(head, total, MAX_MESSAGE))
    }

    fn admit(&mut self, tag: &str, body: impl FnOnce() -> String) -> Option<String> {
        if self.lines_this_run >= MAX_LINES_PER_RUN
            || self.lines_this_call >= MAX_LINES_PER_CALL
            || self.bytes_this_call >= MAX_BYTES_PER_CALL
        {
            self.dropped_this_call += 1;
            self.dropped_this_run += 1;
            return None;
        }
        let body = body();
        let line = if tag.is_empty() {
            format!("{} {body}", self.prefix)
        } else {
            let p = self.prefix.strip_suffix(']').unwrap_or(&self.prefix);
            format!("{p} {}] {body}", clean(tag, 16))
        };
        self.lines_this_call += 1;
        self.lines_this_run += 1;
        self.bytes_this_call += line.len();
        Some(line)
    }

    /// The lines to print for a chunk of output `bytes` (split at newlines, each a [`line`]
    /// of its own, invalid UTF-8 replaced).
    ///
    /// [`line`]: PluginLog::line
    pub fn output(&mut self, tag: &str, bytes: &[u8]) -> Vec<String> {
        let text = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        if text.is_empty() {
            return Vec::new();
        }
        text.split(|&b| b == b'\n')
            .filter_map(|l| {
                let l = l.strip_suffix(b"\r").unwrap_or(l);
                self.line_bytes(tag, l, l.len())
            })
            .collect()
    }

    /// Ends a call: the line saying how many lines were dropped (this call, and whether the run's
    /// budget is spent), if any were; resets the per-call budget.
    pub fn end_call(&mut self) -> Option<String> {
        let dropped = std::mem::take(&mut self.dropped_this_call);
        self.lines_this_call = 0;
        self.bytes_this_call = 0;
        if dropped == 0 {
            return None;
        }
        let run_spent = self.lines_this_run >= MAX_LINES_PER_RUN;
        if run_spent && self.said_run_spent {
            // Said once; a spent budget stays quiet (its count is in `dropped_this_run`).
            return None;
        }
        self.said_run_spent |= run_spent;
        Some(if run_spent {
            format!(
                "{} {dropped} more lines dropped: the run's budget of {MAX_LINES_PER_RUN} lines is spent; further output of this plugin is dropped",
                self.prefix
            )
        } else {
            format!(
                "{} {dropped} more lines dropped (at most {MAX_LINES_PER_CALL} lines, {} KiB per call)",
                self.prefix,
                MAX_BYTES_PER_CALL >> 10
            )
        })
    }

    /// Lines dropped so far in this run.
    pub fn dropped(&self) -> usize {
        self.dropped_this_run
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_into_one_line() {
        let s = clean("a\x1b[31mred\r\nforged\0end\u{202e}x\u{9b}", 100);
        assert_eq!(s, "a\\x1b[31mred\\r\\nforged\\0end\\u{202e}x\\u{9b}");
        assert!(!s.chars().any(|c| c.is_control()));
        assert_eq!(clean("tab\tand é ✓", 100), "tab\\tand é ✓");
    }

    #[test]
    fn long_text_is_cut_with_a_count() {
        let big = "x".repeat(100 << 20);
        let t = std::time::Instant::now();
        let s = message(&big);
        assert!(t.elapsed() < std::time::Duration::from_millis(100));
        assert_eq!(
            s,
            format!(
                "{}… ({} bytes cut)",
                "x".repeat(MAX_MESSAGE),
                (100 << 20) - MAX_MESSAGE
            )
        );
        // Escapes count towards the size; a multi-byte character is never split.
        let s = clean("\x1b\x1b\x1b", 9);
        assert_eq!(s, "\\x1b\\x1b… (1 bytes cut)");
        let s = clean("ééé", 5);
        assert_eq!(s, "éé… (2 bytes cut)");
        assert_eq!(clean("short", 5), "short");
    }

    #[test]
    fn bytes_are_decoded_lossily_and_cut_early() {
        assert_eq!(
            clean_bytes(b"ok \xff\xfe end", 100),
            "ok \u{fffd}\u{fffd} end"
        );
        let big = vec![b'y'; 10 << 20];
        let s = clean_bytes(&big, 10);
        assert_eq!(s, format!("yyyyyyyyyy… ({} bytes cut)", (10 << 20) - 10));
        let s = clean_bytes(&[b'z'; 45], 10);
        assert_eq!(s, "zzzzzzzzzz… (35 bytes cut)");
        // Only the head of a longer line was read: the rest counts as cut.
        assert_eq!(clean_head(b"abc", 1000, 10), "abc… (997 bytes cut)");
        assert_eq!(clean_head(b"abc", 3, 10), "abc");
    }

    #[test]
    fn plugin_output_is_prefixed_bounded_and_counted() {
        let mut log = PluginLog::new("[plugin p]");
        assert_eq!(
            log.line("info", "a\r\n[plugin p] info: forged").unwrap(),
            "[plugin p info] a\\r\\n[plugin p] info: forged"
        );
        assert_eq!(
            log.output("stdout", b"one\r\ntwo\x1b[2J\n"),
            vec!["[plugin p stdout] one", "[plugin p stdout] two\\x1b[2J"]
        );
        assert_eq!(log.line("", "plain").unwrap(), "[plugin p] plain");
        assert!(log.end_call().is_none());
        for i in 0..1000 {
            log.line("info", &format!("flood {i}"));
        }
        let said = log.end_call().unwrap();
        assert!(
            said.contains(&format!("{} more lines dropped", 1000 - MAX_LINES_PER_CALL)),
            "{said}"
        );
        // The per-call budget is fresh again; bytes count too.
        let big = "b".repeat(10_000);
        let first = log.line("info", &big).unwrap();
        let kept = 1 + (0..63).filter_map(|_| log.line("info", &big)).count();
        assert_eq!(kept, MAX_BYTES_PER_CALL.div_ceil(first.len()));
        assert!(log.end_call().unwrap().contains("more lines dropped"));
        // The run's budget: once spent it is said once, and nothing more is printed.
        let mut log = PluginLog::new("[plugin q]");
        let mut printed = 0;
        let mut said = Vec::new();
        for _ in 0..(MAX_LINES_PER_RUN / MAX_LINES_PER_CALL + 5) {
            printed += (0..MAX_LINES_PER_CALL + 1)
                .filter_map(|_| log.line("", "x"))
                .count();
            said.extend(log.end_call());
        }
        assert_eq!(printed, MAX_LINES_PER_RUN);
        assert_eq!(
            said.iter().filter(|s| s.contains("run's budget")).count(),
            1
        );
        assert!(log.dropped() > 0);
    }
}
