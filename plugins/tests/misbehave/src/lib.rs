//! A reward plugin that misbehaves on request, for the host's sandbox tests. `config.mode`:
//! `ok` (score = mean pixel / 255), `loop` (never returns), `alloc` (grows memory without end),
//! `panic`, `fs` (score 1 if `config.file` or any of a few host paths could be read, else 0),
//! `net` (score 1 if a TCP connection to 127.0.0.1:`config.port` succeeded, else 0), `env`
//! (score = number of environment variables), `print` (writes a line to stdout and stderr per
//! call), `wrong-count` (one score too few), `nan`, `inf`, and for the host's text and time
//! bounds: `sleep` (logs "sleeping", then blocks in a WASI clock poll for `config.sleep_s`
//! seconds, default an hour; with `config.sleep_in_configure: true` it does so in `configure`),
//! `huge-error` (fails with a message of `config.bytes` bytes, default 100 MiB), `inject` (log
//! lines, stdout and an extra's name full of ESC, CR, NUL and `\r\n`, a NaN extra, and
//! `config.extras` extras more, default 0), `inject-error` (fails with such a message),
//! `log-flood` (`config.lines` log lines per call, default 10 000), `huge-extra` (an extra whose
//! name has `config.bytes` bytes). With `config.flagged: true` it misbehaves only on batches
//! whose first sample's metadata has `"misbehave": true`, and scores like `ok` otherwise (so a
//! test can check that the next batch is scored correctly); with `config.later_batches: true`
//! only on batches whose first sample's metadata has a `"group"` above 0 (in `hrf run`: every
//! training batch but the first of each epoch; evaluation batches have no group).

use std::cell::Cell;

use hrf_reward_sdk::serde_json::Value;
use hrf_reward_sdk::{export_reward, log, Info, Level, Reward, RewardError, Sample, Score};

/// The text a hostile plugin would use to forge hrf's output or take over the terminal.
const FORGERY: &str = "\x1b[31mred\x1b[0m\r\nepoch 9/9: reward 99.0 (forged)\0nul\x1b]0;title\x07";

struct Misbehave {
    mode: String,
    flagged: bool,
    later_batches: bool,
    sleep_s: f64,
    bytes: usize,
    lines: usize,
    extras: usize,
    file: Option<String>,
    port: u16,
    calls: Cell<u32>,
}

impl Reward for Misbehave {
    fn info() -> Info {
        Info::new("misbehave", env!("CARGO_PKG_VERSION"))
    }

    fn configure(config: &Value) -> Result<Self, RewardError> {
        let mode = config
            .get("mode")
            .and_then(|m| m.as_str())
            .unwrap_or("ok")
            .to_string();
        let flag = |k: &str| config.get(k).and_then(|o| o.as_bool()).unwrap_or(false);
        let number =
            |k: &str, default: f64| config.get(k).and_then(|o| o.as_f64()).unwrap_or(default);
        let sleep_s = number("sleep_s", 3600.0);
        if flag("sleep_in_configure") {
            log(Level::Info, "sleeping");
            std::thread::sleep(std::time::Duration::from_secs_f64(sleep_s));
        }
        Ok(Misbehave {
            mode,
            flagged: flag("flagged"),
            later_batches: flag("later_batches"),
            sleep_s,
            bytes: number("bytes", (100 << 20) as f64) as usize,
            lines: number("lines", 10_000.0) as usize,
            extras: number("extras", 0.0) as usize,
            file: config
                .get("file")
                .and_then(|f| f.as_str())
                .map(String::from),
            port: config.get("port").and_then(|p| p.as_u64()).unwrap_or(1) as u16,
            calls: Cell::new(0),
        })
    }

    fn score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, RewardError> {
        let call = self.calls.get();
        self.calls.set(call + 1);
        let mean = |s: &Sample| {
            s.image.data.iter().map(|&b| b as f32).sum::<f32>()
                / s.image.data.len().max(1) as f32
                / 255.0
        };
        let each = |v: f32| Ok(vec![Score::new(v); samples.len()]);
        let flag = samples
            .first()
            .is_some_and(|s| s.metadata.get("misbehave").and_then(|m| m.as_bool()) == Some(true));
        let later = samples.first().is_some_and(|s| {
            s.metadata
                .get("group")
                .and_then(|g| g.as_u64())
                .is_some_and(|g| g > 0)
        });
        let mode = if (self.flagged && !flag) || (self.later_batches && !later) {
            "ok"
        } else {
            self.mode.as_str()
        };
        match mode {
            "loop" => {
                let mut x: u64 = 1;
                loop {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    if x == 0 {
                        return each(x as f32);
                    }
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    if hoard.len() == usize::MAX {
                        return each(0.0);
                    }
                }
            }
            "panic" => panic!("misbehave: asked to panic"),
            "fs" => {
                let mut paths = vec!["/etc/passwd", "/", ".", "/tmp"];
                if let Some(f) = &self.file {
                    paths.push(f);
                }
                let read = paths
                    .iter()
                    .any(|p| std::fs::read(p).is_ok() || std::fs::read_dir(p).is_ok());
                each(if read { 1.0 } else { 0.0 })
            }
            "net" => {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
                let connected = std::net::TcpStream::connect(addr).is_ok();
                each(if connected { 1.0 } else { 0.0 })
            }
            "env" => each(std::env::vars().count() as f32),
            "print" => {
                println!("misbehave stdout, call {call}");
                eprintln!("misbehave stderr, call {call}");
                log(Level::Info, &format!("misbehave log, call {call}"));
                Ok(samples.iter().map(|s| Score::new(mean(s))).collect())
            }
            "wrong-count" => each(0.0).map(|mut v| {
                v.pop();
                v
            }),
            "nan" => each(f32::NAN),
            // NaN for the samples at odd positions of the batch, the mean pixel for the others.
            "nan-odd" => Ok(samples
                .iter()
                .enumerate()
                .map(|(i, s)| Score::new(if i % 2 == 1 { f32::NAN } else { mean(s) }))
                .collect()),
            "inf" => each(f32::INFINITY),
            "sleep" => {
                log(Level::Info, "sleeping");
                // std's sleep on wasip2: a poll on a monotonic-clock pollable, inside the host.
                std::thread::sleep(std::time::Duration::from_secs_f64(self.sleep_s));
                each(0.5)
            }
            "huge-error" => Err(RewardError::Failed("E".repeat(self.bytes))),
            "inject" => {
                log(Level::Warn, FORGERY);
                println!("stdout {FORGERY}");
                eprint!("stderr without a newline {FORGERY}");
                Ok(samples
                    .iter()
                    .map(|s| {
                        let mut sc = Score::new(mean(s))
                            .with_extra(FORGERY, 1.0)
                            .with_extra("not-a-number", f32::NAN);
                        for i in 0..self.extras {
                            sc = sc.with_extra(&format!("extra-{i:04}"), i as f32);
                        }
                        sc
                    })
                    .collect())
            }
            "inject-error" => Err(RewardError::Failed(format!("failed: {FORGERY}"))),
            "log-flood" => {
                for i in 0..self.lines {
                    log(Level::Debug, &format!("flood line {i}"));
                }
                Ok(samples.iter().map(|s| Score::new(mean(s))).collect())
            }
            "huge-extra" => Ok(samples
                .iter()
                .map(|s| Score::new(mean(s)).with_extra(&"N".repeat(self.bytes), 1.0))
                .collect()),
            _ => Ok(samples.iter().map(|s| Score::new(mean(s))).collect()),
        }
    }
}

export_reward!(Misbehave);
