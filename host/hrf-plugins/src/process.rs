//! The `process` reward kind: a long-lived child process (e.g. Python with torch) that scores
//! over stdin/stdout, for rewards that need native libraries. It runs with the user's rights, so
//! it takes the same two opt-ins as native plugins.
//!
//! Framing, version 1 (plugins/python/hrf_process.py implements the child side):
//! - each request is one line of JSON, then (for `score`) the images' bytes back to back;
//! - each reply is one line of JSON: `{"ok": true, ...}` or `{"ok": false, "error": "..."}`.
//!
//! ```text
//! → {"op": "hello", "protocol": 1, "config": {...}}
//! ← {"ok": true, "name": "...", "version": "...", "higher_is_better": true, "batch_hint": null}
//! → {"op": "score", "samples": [{"width": W, "height": H, "channels": C, "prompt": null,
//!     "metadata": {...}, "bytes": W*H*C}, ...]}\n<bytes of image 0><bytes of image 1>...
//! ← {"ok": true, "scores": [0.5, ...], "extras": [{"name": value}, ...]}   (extras optional)
//! ```
//!
//! One deadline (`timeout_s`) covers writing the request, reading the reply and parsing it; a
//! wait also ends [`crate::STOP_GRACE`] after a stop request (Ctrl-C, SIGTERM). A reply longer than [`MAX_REPLY`] bytes,
//! one that is not UTF-8 or not JSON, a late reply and a child that exits all fail the call; the
//! child runs in a process group of its own, and the whole group is killed (SIGKILL) whenever a
//! call fails or the reward is dropped, so a grandchild does not outlive it. The next call starts
//! a new child (and says hello again). The child's stderr goes to hrf's log line by line,
//! through [`hrf_core::text::PluginLog`] (cut, escaped, prefixed, bounded per call and per run).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hrf_core::text::{self, PluginLog};
use hrf_core::{Reward, RewardError, RewardInfo, Sample, Score};
use serde_json::{json, Value};

use crate::PluginError;

pub const PROTOCOL: u64 = 1;
/// The longest reply line (JSON) accepted, in bytes.
pub const MAX_REPLY: usize = 16 << 20;
/// How often a waiting caller looks at the stop request.
const POLL: Duration = Duration::from_millis(20);

/// One `kind: process` entry, validated.
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    pub name: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// The folder it runs in (the pipeline file's).
    pub dir: PathBuf,
    pub config: Value,
    pub timeout: Duration,
    pub trusted_by_pipeline: bool,
    pub allowed_by_command_line: bool,
}

struct Running {
    child: Child,
    /// Requests for the writer thread; it answers each on `written`.
    requests: Option<Sender<Vec<u8>>>,
    written: Receiver<std::io::Result<()>>,
    /// Reply lines from the reader thread (bounded, not yet decoded); `None`: end of stdout.
    replies: Receiver<Result<Option<Vec<u8>>, String>>,
    /// The child was waited for: its pid is free again.
    reaped: bool,
}

impl Running {
    /// Kills the child's whole process group (the child leads it), unless already reaped (its
    /// pid could then name another group).
    fn kill_group(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: kill(2) with a negative pid signals that process group; the child was spawned
        // with `process_group(0)`, so its pid is the group's id, and it is not reaped yet, so
        // the id cannot have been reused.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
    }

    /// Whether the child has exited (without reaping it).
    fn exited(&self) -> bool {
        // SAFETY: a zeroed siginfo_t is a valid out-parameter; WNOWAIT leaves the child
        // waitable, so `Child::wait` still reaps it.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r = libc::waitid(
                libc::P_PID,
                self.child.id() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            r == 0 && info.si_pid() != 0
        }
    }

    /// Stops the child for good: gives it a moment to exit by itself, kills its group, reaps
    /// it; says how it ended.
    fn stopped(&mut self) -> String {
        let exited = (0..20).any(|_| {
            self.exited() || {
                std::thread::sleep(Duration::from_millis(10));
                false
            }
        });
        self.kill_group();
        self.requests.take();
        let status = self.child.wait();
        self.reaped = true;
        match status {
            Ok(s) if exited => s.to_string(),
            Ok(_) => "it closed its output but was still running; killed".into(),
            Err(e) => e.to_string(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.requests.take();
        self.kill_group();
        if !self.reaped {
            let _ = self.child.wait();
        }
    }
}

pub struct ProcessReward {
    settings: ProcessSettings,
    info: RewardInfo,
    running: Option<Running>,
    /// The child's stderr and hrf's notes about it, bounded per call and per run.
    log: Arc<Mutex<PluginLog>>,
    /// A call was cut short by a stop request: later calls fail at once.
    interrupted: bool,
}

/// How a wait on the child ended.
enum Waited<T> {
    Got(T),
    Closed,
    TimedOut,
    Interrupted,
}

/// Waits for `rx` until `deadline`, or [`crate::STOP_GRACE`] after a stop request.
fn wait_until<T>(rx: &Receiver<T>, mut deadline: Instant) -> Waited<T> {
    let mut stopping = false;
    loop {
        let now = Instant::now();
        if !stopping && hrf_core::interrupt::requested() {
            stopping = true;
            deadline = deadline.min(now + crate::STOP_GRACE);
        }
        if now >= deadline {
            return if stopping {
                Waited::Interrupted
            } else {
                Waited::TimedOut
            };
        }
        match rx.recv_timeout(POLL.min(deadline - now)) {
            Ok(v) => return Waited::Got(v),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Waited::Closed,
        }
    }
}

/// Reads one line of at most `max` bytes (without its newline); `None` at the end of the
/// stream. A longer line is an error, and nothing more of it is read.
fn read_reply(r: &mut impl BufRead, max: usize) -> Result<Option<Vec<u8>>, String> {
    let mut line = Vec::new();
    loop {
        let chunk = r
            .fill_buf()
            .map_err(|e| format!("reading the reply: {e}"))?;
        if chunk.is_empty() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(format!(
                    "the process closed stdout after {} bytes of a reply without a newline",
                    line.len()
                ))
            };
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if line.len() + take > max {
            return Err(format!(
                "reply longer than {} MiB without a newline (the limit of a process reply)",
                max >> 20
            ));
        }
        line.extend_from_slice(&chunk[..take]);
        r.consume(take + done as usize);
        if done {
            return Ok(Some(line));
        }
    }
}

/// Reads one line, keeping at most `keep` bytes of it in `line` and skipping the rest; returns
/// its whole length, or `None` at the end of the stream.
fn read_capped(r: &mut impl BufRead, line: &mut Vec<u8>, keep: usize) -> Option<usize> {
    line.clear();
    let mut total = 0;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return (total > 0).then_some(total),
        };
        if chunk.is_empty() {
            return (total > 0).then_some(total);
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        let room = keep.saturating_sub(line.len()).min(take);
        line.extend_from_slice(&chunk[..room]);
        total += take;
        r.consume(take + done as usize);
        if done {
            return Some(total);
        }
    }
}

impl ProcessReward {
    pub fn load(settings: ProcessSettings) -> Result<Self, PluginError> {
        let program = PathBuf::from(settings.command.first().cloned().unwrap_or_default());
        let err = crate::load_err(&settings.name, &program);
        if !(settings.trusted_by_pipeline && settings.allowed_by_command_line) {
            return Err(err.clone()(
                "a process reward runs with the user's rights, so it needs `trust: native` in its pipeline entry and `--allow-native` on the command line"
                    .into(),
            ));
        }
        let log = Arc::new(Mutex::new(PluginLog::new(&format!(
            "[process {}]",
            settings.name
        ))));
        let mut me = ProcessReward {
            info: crate::provisional_info(&settings.name),
            settings,
            running: None,
            log,
            interrupted: false,
        };
        let started = me.start();
        me.end_call();
        started.map_err(err)?;
        Ok(me)
    }

    /// Spawns the child (in a process group of its own) and says hello (protocol version and
    /// config); reads its info.
    fn start(&mut self) -> Result<(), String> {
        let s = &self.settings;
        let (program, args) = s.command.split_first().ok_or("empty command")?;
        let mut child = Command::new(program)
            .args(args)
            .current_dir(&s.dir)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {program:?}: {e}"))?;
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (requests, request_rx) = mpsc::channel::<Vec<u8>>();
        let (written_tx, written) = mpsc::channel();
        std::thread::spawn(move || {
            for request in request_rx {
                let r = stdin.write_all(&request).and_then(|()| stdin.flush());
                let failed = r.is_err();
                if written_tx.send(r).is_err() || failed {
                    return;
                }
            }
        });
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let line = read_reply(&mut r, MAX_REPLY);
                let end = !matches!(line, Ok(Some(_)));
                let sent = tx.send(line);
                if end || sent.is_err() {
                    return;
                }
            }
        });
        let log = self.log.clone();
        std::thread::spawn(move || {
            // Drained to the end whatever it holds, so the child never blocks on it.
            let mut r = BufReader::new(stderr);
            let mut line = Vec::new();
            while let Some(total) = read_capped(&mut r, &mut line, 4 * text::MAX_MESSAGE + 4) {
                let (line, total) = match line.strip_suffix(b"\r") {
                    Some(l) if total == line.len() => (l, total - 1),
                    _ => (&line[..], total),
                };
                let printed = crate::lock(&log).line_bytes("", line, total);
                if let Some(l) = printed {
                    eprintln!("{l}");
                }
            }
            let _ = r.read_to_end(&mut Vec::new());
        });
        self.running = Some(Running {
            child,
            requests: Some(requests),
            written,
            replies,
            reaped: false,
        });
        let hello = json!({"op": "hello", "protocol": PROTOCOL, "config": self.settings.config});
        let reply = self.call(&hello, &[])?;
        let str_of = |k: &str| text::name(reply[k].as_str().unwrap_or("?"));
        self.info = RewardInfo {
            name: self.settings.name.clone(),
            version: format!("{} {}", str_of("name"), str_of("version")),
            higher_is_better: reply["higher_is_better"].as_bool().unwrap_or(true),
            batch_hint: reply["batch_hint"]
                .as_u64()
                .and_then(|b| u32::try_from(b).ok()),
        };
        Ok(())
    }

    /// Sends one request (header line + payload) and waits for one reply line, all within one
    /// deadline.
    fn call(&mut self, header: &Value, payload: &[&[u8]]) -> Result<Value, String> {
        let timeout = self.settings.timeout;
        let deadline = Instant::now() + timeout;
        let name = self.settings.name.clone();
        let run = self.running.as_mut().ok_or("not running")?;
        let mut request = header.to_string().into_bytes();
        request.push(b'\n');
        for p in payload {
            request.extend_from_slice(p);
        }
        let late = |what: &str| {
            format!(
                "{what} within {:.1} s (rewards.{name}.timeout_s); the process was stopped",
                timeout.as_secs_f64()
            )
        };
        let interrupted = "interrupted (Ctrl-C or SIGTERM); the process was stopped".to_string();
        let outcome = (|| -> Result<Value, String> {
            let sent = run
                .requests
                .as_ref()
                .is_some_and(|r| r.send(request).is_ok());
            if !sent {
                return Err(format!("the process stopped reading ({})", run.stopped()));
            }
            match wait_until(&run.written, deadline) {
                Waited::Got(Ok(())) => {}
                Waited::Got(Err(e)) => {
                    return Err(format!(
                        "the process stopped reading ({e}; {})",
                        run.stopped()
                    ))
                }
                Waited::Closed => return Err(format!("the process exited ({})", run.stopped())),
                Waited::TimedOut => return Err(late("the request was not read")),
                Waited::Interrupted => return Err(interrupted.clone()),
            }
            let line = match wait_until(&run.replies, deadline) {
                Waited::Got(Ok(Some(line))) => line,
                Waited::Got(Ok(None)) | Waited::Closed => {
                    return Err(format!("the process exited ({})", run.stopped()))
                }
                Waited::Got(Err(e)) => return Err(e),
                Waited::TimedOut => return Err(late("no reply")),
                Waited::Interrupted => return Err(interrupted.clone()),
            };
            let line = std::str::from_utf8(&line).map_err(|e| {
                format!(
                    "reply is not valid UTF-8 ({e}): {}",
                    text::clean_bytes(&line, 200)
                )
            })?;
            serde_json::from_str::<Value>(line)
                .map_err(|e| format!("reply is not JSON ({e}): {}", text::clean(line.trim(), 200)))
        })();
        let reply = match outcome {
            Ok(v) => v,
            Err(e) => {
                self.interrupted |= e == interrupted;
                self.running = None; // the group killed and the child reaped; the next call starts afresh
                return Err(e);
            }
        };
        if reply["ok"] == Value::Bool(true) {
            Ok(reply)
        } else {
            Err(match reply["error"].as_str() {
                Some(e) => text::message(e),
                None => format!("bad reply: {}", text::message(&reply.to_string())),
            })
        }
    }

    fn call_score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, String> {
        if self.interrupted && hrf_core::interrupt::requested() {
            return Err(
                "not called: a stop was requested (Ctrl-C or SIGTERM) and an earlier call was \
                 cut short"
                    .into(),
            );
        }
        if self.running.is_none() {
            self.start()?;
        }
        let header = json!({
            "op": "score",
            "samples": samples.iter().map(|s| json!({
                "width": s.image.width(),
                "height": s.image.height(),
                "channels": s.image.channels().count(),
                "prompt": s.prompt,
                "metadata": s.metadata,
                "bytes": s.image.data().len(),
            })).collect::<Vec<_>>(),
        });
        let payload: Vec<&[u8]> = samples.iter().map(|s| s.image.data()).collect();
        let reply = self.call(&header, &payload)?;
        let values = reply["scores"]
            .as_array()
            .ok_or("reply has no `scores` list")?;
        let extras = reply["extras"].as_array();
        let raw = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let value = v
                    .as_f64()
                    .ok_or_else(|| format!("scores[{i}] is not a number"))?
                    as f32;
                let extras: Vec<(String, f32)> = extras
                    .and_then(|e| e.get(i))
                    .and_then(|e| e.as_object())
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| (k.clone(), v.as_f64().map_or(f32::NAN, |v| v as f32)))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok((value, extras))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let (scores, said) = crate::kept_scores(raw);
        if let Some(said) = said.and_then(|s| crate::lock(&self.log).line("", &s)) {
            eprintln!("{said}");
        }
        Ok(scores)
    }

    /// Ends a call in the log: says how many stderr lines were dropped, if any.
    fn end_call(&self) {
        if let Some(line) = crate::lock(&self.log).end_call() {
            eprintln!("{line}");
        }
    }
}

impl Reward for ProcessReward {
    fn info(&self) -> RewardInfo {
        self.info.clone()
    }

    fn score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, RewardError> {
        let called = self.call_score(samples);
        self.end_call();
        crate::finish_score(
            &self.info,
            format_args!(
                "process {}",
                text::message(&self.settings.command.join(" "))
            ),
            samples.len(),
            called,
        )
    }
}
