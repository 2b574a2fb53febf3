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
//! A reply later than the timeout kills the child and fails the call; a child that exits fails
//! the call; either way the next call starts a new child (and says hello again). The child's
//! stderr goes to hrf's log, line by line.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use hrf_core::{Reward, RewardError, RewardInfo, Sample, Score};
use serde_json::{json, Value};

use crate::PluginError;

pub const PROTOCOL: u64 = 1;

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
    stdin: ChildStdin,
    replies: Receiver<std::io::Result<String>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct ProcessReward {
    settings: ProcessSettings,
    info: RewardInfo,
    running: Option<Running>,
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
        let mut me = ProcessReward {
            info: crate::provisional_info(&settings.name),
            settings,
            running: None,
        };
        me.start().map_err(err)?;
        Ok(me)
    }

    /// Spawns the child and says hello (protocol version and config); reads its info.
    fn start(&mut self) -> Result<(), String> {
        let s = &self.settings;
        let (program, args) = s.command.split_first().ok_or("empty command")?;
        let mut child = Command::new(program)
            .args(args)
            .current_dir(&s.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {program:?}: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut line = String::new();
                match r.read_line(&mut line) {
                    Ok(0) => {
                        let _ = tx.send(Err(std::io::ErrorKind::UnexpectedEof.into()));
                        return;
                    }
                    Ok(_) => {
                        if tx.send(Ok(line)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        let name = s.name.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .take(10_000)
            {
                eprintln!("[process {name}] {}", crate::clip(&line, 4096));
            }
        });
        self.running = Some(Running {
            child,
            stdin,
            replies,
        });
        let hello = json!({"op": "hello", "protocol": PROTOCOL, "config": self.settings.config});
        let reply = self.call(&hello, &[])?;
        let str_of = |k: &str| reply[k].as_str().unwrap_or("?").to_string();
        self.info = RewardInfo {
            name: self.settings.name.clone(),
            version: format!("{} {}", str_of("name"), str_of("version")),
            higher_is_better: reply["higher_is_better"].as_bool().unwrap_or(true),
            batch_hint: reply["batch_hint"].as_u64().map(|b| b as u32),
        };
        Ok(())
    }

    /// Sends one request (header line + payload) and waits for one reply line.
    fn call(&mut self, header: &Value, payload: &[&[u8]]) -> Result<Value, String> {
        let timeout = self.settings.timeout;
        let run = self.running.as_mut().ok_or("not running")?;
        let sent = (|| -> std::io::Result<()> {
            run.stdin.write_all(header.to_string().as_bytes())?;
            run.stdin.write_all(b"\n")?;
            for p in payload {
                run.stdin.write_all(p)?;
            }
            run.stdin.flush()
        })();
        let outcome = match sent {
            Err(e) => Err(format!("the process stopped reading ({e})")),
            Ok(()) => match run.replies.recv_timeout(timeout) {
                Ok(Ok(line)) => serde_json::from_str::<Value>(&line).map_err(|e| {
                    format!("reply is not JSON ({e}): {}", crate::clip(line.trim(), 200))
                }),
                Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => {
                    let status = run.child.wait().map(|s| s.to_string()).unwrap_or_default();
                    Err(format!("the process exited ({status})"))
                }
                Err(RecvTimeoutError::Timeout) => Err(format!(
                    "no reply within {:.1} s (rewards.{}.timeout_s); the process was stopped",
                    timeout.as_secs_f64(),
                    self.settings.name
                )),
            },
        };
        let reply = match outcome {
            Ok(v) => v,
            Err(e) => {
                self.running = None; // killed and reaped; the next call starts afresh
                return Err(e);
            }
        };
        if reply["ok"] == Value::Bool(true) {
            Ok(reply)
        } else {
            Err(reply["error"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| format!("bad reply: {reply}")))
        }
    }

    fn call_score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, String> {
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
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let value = v
                    .as_f64()
                    .ok_or_else(|| format!("scores[{i}] is not a number"))?
                    as f32;
                let extras = extras
                    .and_then(|e| e.get(i))
                    .and_then(|e| e.as_object())
                    .map(|o| {
                        o.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_f64()? as f32)))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(Score { value, extras })
            })
            .collect()
    }
}

impl Reward for ProcessReward {
    fn info(&self) -> RewardInfo {
        self.info.clone()
    }

    fn score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, RewardError> {
        let called = self.call_score(samples);
        crate::finish_score(
            &self.info,
            format_args!("process {}", self.settings.command.join(" ")),
            samples.len(),
            called,
        )
    }
}
