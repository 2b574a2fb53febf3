//! A reward plugin that misbehaves on request, for the host's sandbox tests. `config.mode`:
//! `ok` (score = mean pixel / 255), `loop` (never returns), `alloc` (grows memory without end),
//! `panic`, `fs` (score 1 if `config.file` or any of a few host paths could be read, else 0),
//! `net` (score 1 if a TCP connection to 127.0.0.1:`config.port` succeeded, else 0), `env`
//! (score = number of environment variables), `print` (writes a line to stdout and stderr per
//! call), `wrong-count` (one score too few), `nan`, `inf`. With `config.flagged: true` it
//! misbehaves only on batches whose first sample's metadata has `"misbehave": true`, and scores
//! like `ok` otherwise (so a test can check that the next batch is scored correctly).

use std::cell::Cell;

use hrf_reward_sdk::serde_json::Value;
use hrf_reward_sdk::{export_reward, log, Info, Level, Reward, RewardError, Sample, Score};

struct Misbehave {
    mode: String,
    flagged: bool,
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
        Ok(Misbehave {
            mode,
            flagged: config
                .get("flagged")
                .and_then(|o| o.as_bool())
                .unwrap_or(false),
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
        let mode = if self.flagged && !flag {
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
            _ => Ok(samples.iter().map(|s| Score::new(mean(s))).collect()),
        }
    }
}

export_reward!(Misbehave);
