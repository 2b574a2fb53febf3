//! Rewards behind real servers started by each test on 127.0.0.1 (installed by
//! tools/servers/env.sh, which test.sh runs): `kind: http` against Seldon MLServer serving the
//! contrast example of plugins/servers/mlserver, `kind: openai-judge` against a FastAPI app of
//! the chat-completions route (tests/fixtures/servers/judge_app.py). Their scores equal the
//! same Python function packaged as a WASM component; a server down at start is named before anything is written;
//! a server killed mid-run fails the run (retried first, the checkpoint intact, resumable) or,
//! with `on_error: skip`, costs only the samples it could not score; the token never reaches a
//! file the run writes.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{metrics_lines as lines, of_kind, pipeline_run, repo, text, tmp};

/// A free port on 127.0.0.1 (free a moment ago).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two free ports on 127.0.0.1, neither of them `taken` nor each other (both are held while
/// they are chosen).
fn free_ports_besides(taken: u16) -> [u16; 2] {
    let mut held = Vec::new();
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        if l.local_addr().unwrap().port() != taken {
            held.push(l);
        }
        if let [a, b] = held.as_slice() {
            return [a, b].map(|l| l.local_addr().unwrap().port());
        }
    }
}

/// A server process on 127.0.0.1:`port`, ready when `ready_path` answers 200; killed on drop.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
    ready_path: String,
}

/// A program of the servers' environment (tools/servers/env.sh).
fn server_bin(name: &str) -> PathBuf {
    let bin = repo().join(".deps/servers/bin").join(name);
    assert!(
        bin.exists(),
        "{} missing: run tools/servers/env.sh (test.sh does)",
        bin.display()
    );
    bin
}

impl Server {
    /// MLServer serving the model folder `models` (its model named `contrast`).
    fn start(models: &Path, port: u16, log: &Path, envs: &[(&str, &str)]) -> Server {
        Self::serving(models, "contrast", port, log, envs)
    }

    /// MLServer serving the model folder `models`, ready when its model `name` is.
    fn serving(models: &Path, name: &str, port: u16, log: &Path, envs: &[(&str, &str)]) -> Server {
        let [grpc, metrics] = free_ports_besides(port);
        let mut c = Command::new(server_bin("mlserver"));
        c.arg("start")
            .arg(models)
            .env("MLSERVER_HOST", "127.0.0.1")
            .env("MLSERVER_HTTP_PORT", port.to_string())
            .env("MLSERVER_GRPC_PORT", grpc.to_string())
            .env("MLSERVER_METRICS_PORT", metrics.to_string())
            .env("MLSERVER_PARALLEL_WORKERS", "0");
        Self::spawn(c, port, log, envs, format!("/v2/models/{name}/ready"))
    }

    /// The OpenAI-compatible test judge (tests/fixtures/servers/judge_app.py) on uvicorn.
    fn judge(port: u16, log: &Path, envs: &[(&str, &str)]) -> Server {
        Self::spawn(uvicorn_judge(port), port, log, envs, "/v1/models".into())
    }

    /// The test judge over TLS with the certificate `cert` and key `key`; ready once its port
    /// takes connections (the readiness probe speaks plain HTTP).
    fn judge_tls(port: u16, log: &Path, cert: &Path, key: &Path) -> Server {
        let mut c = uvicorn_judge(port);
        c.arg("--ssl-certfile")
            .arg(cert)
            .arg("--ssl-keyfile")
            .arg(key);
        Self::spawn(c, port, log, &[], String::new())
    }

    fn spawn(
        mut c: Command,
        port: u16,
        log: &Path,
        envs: &[(&str, &str)],
        ready_path: String,
    ) -> Server {
        let out = std::fs::File::create(log).unwrap();
        c.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (k, v) in envs {
            c.env(k, v);
        }
        let mut s = Server {
            child: c.spawn().expect("the server starts"),
            port,
            log: log.to_path_buf(),
            ready_path,
        };
        s.wait_ready();
        s
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&mut self) {
        let t = Instant::now();
        let ready = format!("127.0.0.1:{}", self.port);
        while t.elapsed() < Duration::from_secs(120) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the server exited ({status}): {}", self.log_text());
            }
            let up = if self.ready_path.is_empty() {
                std::net::TcpStream::connect(&ready).is_ok()
            } else {
                http_get_ok(&ready, &self.ready_path)
            };
            if up {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the server was not ready in 120 s: {}", self.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// uvicorn serving the test judge app on 127.0.0.1:`port`.
fn uvicorn_judge(port: u16) -> Command {
    let mut c = Command::new(server_bin("uvicorn"));
    c.args([
        "judge_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
    ])
    .arg("--app-dir")
    .arg(repo().join("tests/fixtures/servers"));
    c
}

/// A bare HTTP/1.1 GET: whether it answered 200 (or 401: up, but wanting a token).
fn http_get_ok(addr: &str, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && matches!(&head[9..12], b"200" | b"401")
}

fn contrast_models() -> PathBuf {
    repo().join("plugins/servers/mlserver/contrast")
}

fn component(line: &Value) -> f64 {
    line["reward_components"]["contrast"].as_f64().unwrap()
}

/// `hrf run tests/pipelines/tiny-http.yaml` against `url`, with `sets`.
fn run_tiny(run: &Path, url: &str, sets: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let url = format!("rewards[0].url={url}");
    let mut all = vec![url.as_str()];
    all.extend(sets);
    let mut c = pipeline_run("tiny-http.yaml", run, &all, &[]);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("hrf runs")
}

#[test]
fn servers_score_like_the_same_python_in_wasm() {
    let d = tmp("hrf-servers", "equal");
    let server = Server::start(
        &contrast_models(),
        free_port(),
        &d.join("mlserver.log"),
        &[],
    );
    let token = "tok-5e1f9a0c77d2";
    let http = d.join("http");
    let o = run_tiny(
        &http,
        &server.url(),
        &["rewards[0].auth_env=HRF_TEST_REWARD_TOKEN"],
        &[("HRF_TEST_REWARD_TOKEN", token)],
    );
    assert!(o.status.success(), "{}", text(&o));
    let png = d.join("png");
    let o = run_tiny(&png, &server.url(), &["rewards[0].encoding=png"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let wasm = repo().join("plugins/target/python/contrast.wasm");
    assert!(wasm.exists(), "{} missing: run ./setup.sh", wasm.display());
    let local = d.join("wasm");
    let o = run_tiny(
        &local,
        "http://unused:1",
        &[&format!(
            "rewards[0]={{kind: wasm, name: contrast, path: {}, timeout_s: 60}}",
            wasm.display()
        )],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));

    let judge_token = "judge-tok-93b0c4";
    let judge = Server::judge(
        free_port(),
        &d.join("judge.log"),
        &[("HRF_TEST_JUDGE_TOKEN", judge_token)],
    );
    let judged = d.join("judge");
    let o = run_tiny(
        &judged,
        "http://unused:1",
        &[&format!(
            "rewards[0]={{kind: openai-judge, name: contrast, url: '{}', model: test/contrast-judge, \
             template: 'Rate the contrast of this image.', score_field: verdict.score, \
             concurrency: 4, auth_env: HRF_TEST_JUDGE_TOKEN}}",
            judge.url()
        )],
        &[("HRF_TEST_JUDGE_TOKEN", judge_token)],
    );
    assert!(o.status.success(), "{}", text(&o));
    let (j, w) = (lines(&judged), lines(&local));
    assert_eq!(
        (of_kind(&j, "epoch").len(), of_kind(&w, "epoch").len()),
        (2, 2)
    );
    for (a, c) in of_kind(&j, "epoch").iter().zip(of_kind(&w, "epoch")) {
        assert_eq!(component(a), component(c), "judge vs wasm");
        assert_eq!(
            a["reward_requests"]["contrast"]["requests"], 8,
            "one request per image"
        );
    }
    assert_eq!(
        of_kind(&j, "final")[0]["report"]["sample_rewards"],
        of_kind(&w, "final")[0]["report"]["sample_rewards"]
    );
    assert!(!walk(&judged).iter().any(|f| {
        let b = std::fs::read(f).unwrap();
        b.windows(judge_token.len())
            .any(|w| w == judge_token.as_bytes())
    }));
    drop(judge);

    let (h, p) = (lines(&http), lines(&png));
    let (he, pe, we) = (
        of_kind(&h, "epoch"),
        of_kind(&p, "epoch"),
        of_kind(&w, "epoch"),
    );
    assert_eq!((he.len(), pe.len(), we.len()), (2, 2, 2));
    for ((a, b), c) in he.iter().zip(&pe).zip(&we) {
        // The same samples (same seed), the same function: the same f32 scores.
        assert_eq!(component(a), component(c), "uint8 vs wasm");
        assert_eq!(component(b), component(c), "png vs wasm");
        assert_eq!(a["reward_mean"], c["reward_mean"]);
        let calls = &a["reward_requests"]["contrast"];
        assert_eq!(calls["requests"], 2, "8 samples in requests of 4: {calls}");
        assert_eq!(
            (calls["retries"].as_u64(), calls["failures"].as_u64()),
            (Some(0), Some(0))
        );
        assert!(calls["latency_s_max"].as_f64().unwrap() > 0.0);
        assert!(
            c.get("reward_requests").is_none(),
            "no requests for a wasm reward"
        );
    }
    let finals = |l: &[Value]| of_kind(l, "final")[0]["report"]["sample_rewards"].clone();
    assert_eq!(finals(&h), finals(&w));
    assert_eq!(finals(&p), finals(&w));
    // The token is read from the environment and written nowhere.
    for f in walk(&http) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "{} holds the token",
            f.display()
        );
    }
    let resolved = std::fs::read_to_string(http.join("pipeline.resolved.yaml")).unwrap();
    assert!(resolved.contains("HRF_TEST_REWARD_TOKEN"), "{resolved}");
    drop(server);
    std::fs::remove_dir_all(d).unwrap();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_server_down_at_start_is_named_before_anything_is_written() {
    let d = tmp("hrf-servers", "down");
    // Port 1 (tcpmux): nothing listens there, and no test binds it.
    let url = "http://127.0.0.1:1".to_string();
    let run = d.join("run");
    let o = run_tiny(&run, &url, &[], &[]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("reward contrast") && t.contains(&format!("GET {url}/v2/health/ready")),
        "{t}"
    );
    assert!(!run.exists(), "nothing written: {}", run.display());
    std::fs::remove_dir_all(d).unwrap();
}

/// A server that SIGKILLs itself on the second request of epoch 1 (the second of its two
/// sampling batches), once: `tests/fixtures/servers/dying-contrast`.
fn dying_server(d: &Path, port: u16, log: &str) -> Server {
    let marker = d.join("killed");
    Server::start(
        &repo().join("tests/fixtures/servers/dying-contrast"),
        port,
        &d.join(log),
        &[
            ("HRF_TEST_DIE_AT", "1:2"),
            ("HRF_TEST_DIE_MARKER", marker.to_str().unwrap()),
        ],
    )
}

#[test]
fn a_server_killed_mid_run_fails_it_after_retries_and_the_run_resumes() {
    let d = tmp("hrf-servers", "killed");
    let port = free_port();
    let server = dying_server(&d, port, "first.log");
    let run = d.join("run");
    let o = run_tiny(&run, &server.url(), &["training.epochs=3"], &[]);
    assert!(!o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("reward contrast")
            && t.contains(&format!("{}/v2/models/contrast/infer", server.url())),
        "{t}"
    );
    assert!(t.contains("after 3 attempts"), "retried twice: {t}");
    // The checkpoint of epoch 1 is intact; with the server back the run resumes to its end.
    assert!(run.join("checkpoints/0001/state.json").exists());
    assert!(!run.join("summary.json").exists());
    drop(server);
    let _server = dying_server(&d, port, "second.log");
    let o = pipeline_run("tiny-http.yaml", &run, &[], &[])
        .args(["--resume", run.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(of_kind(&lines(&run), "epoch").len(), 3);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn with_on_error_skip_a_server_killed_mid_run_costs_only_what_it_could_not_score() {
    let d = tmp("hrf-servers", "skip");
    let port = free_port();
    let mut server = dying_server(&d, port, "first.log");
    let run = d.join("run");
    let mut hrf = pipeline_run(
        "tiny-http.yaml",
        &run,
        &[
            &format!("rewards[0].url={}", server.url()),
            "rewards[0].on_error=skip",
            "rewards[0].retries=0",
            "training.epochs=3",
            // A longer training phase: the margin in which the test pauses hrf.
            "training.inner_epochs=8",
        ],
        &[],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // The server dies answering epoch 1's second batch; hrf, training that epoch, is paused
    // while the server is started again, so that only that batch goes unscored.
    let t = Instant::now();
    while server.child.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the server never died"
        );
        if let Some(s) = hrf.try_wait().unwrap() {
            panic!("hrf ended first ({s}): {}", server.log_text());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = hrf.id() as libc::pid_t;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    drop(server);
    server = dying_server(&d, port, "second.log");
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let o = hrf.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let l = lines(&run);
    let epochs = of_kind(&l, "epoch");
    let skipped: Vec<u64> = epochs
        .iter()
        .map(|e| e["skipped"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(skipped, [0, 4, 0], "{epochs:?}");
    assert_eq!(epochs[1]["reward_requests"]["contrast"]["failures"], 1);
    assert!(text(&o).contains("4 of 8 samples skipped"), "{}", text(&o));
    drop(server);
    std::fs::remove_dir_all(d).unwrap();
}

/// A model behind a server, the way a heavy reward runs: the testbed's aesthetic reward served
/// by MLServer through Python onnxruntime scores what the built-in `aesthetic` scores.
#[test]
fn an_mlserver_aesthetic_scores_like_the_built_in() {
    let d = tmp("hrf-servers", "aesthetic");
    let server = Server::serving(
        &repo().join("plugins/servers/mlserver/aesthetic"),
        "aesthetic",
        free_port(),
        &d.join("mlserver.log"),
        &[],
    );
    let served = d.join("served");
    let o = run_tiny(
        &served,
        &server.url(),
        &[
            "rewards[0].model=aesthetic",
            "rewards[0].inputs={prompts: null, metadata: null}",
            "training.epochs=1",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let local = d.join("built-in");
    let o = run_tiny(
        &local,
        "http://unused:1",
        &["rewards[0]={kind: aesthetic}", "training.epochs=1"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let (s, b) = (lines(&served), lines(&local));
    // The base model's evaluation: the same samples, scored on both sides.
    let scores = |l: &[Value]| -> Vec<f64> {
        of_kind(l, "eval")[0]["report"]["sample_rewards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (x, y) = (scores(&s), scores(&b));
    assert_eq!(x.len(), 8);
    let err = x
        .iter()
        .zip(&y)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        err <= 1e-5,
        "served vs built-in: max abs error {err:e}\n{x:?}\n{y:?}"
    );
    eprintln!(
        "aesthetic served by MLServer vs built-in: max abs error {err:e} over {} samples",
        x.len()
    );
    let first = |l: &[Value]| {
        of_kind(l, "epoch")[0]["reward_components"]["aesthetic"]
            .as_f64()
            .unwrap()
    };
    assert!(
        (first(&s) - first(&b)).abs() <= 1e-5,
        "{} vs {}",
        first(&s),
        first(&b)
    );
    drop(server);
    std::fs::remove_dir_all(d).unwrap();
}

/// A private certificate authority and a server certificate for 127.0.0.1 it signed, made with
/// the openssl command line (set-up installs it): (CA certificate, server certificate, key).
fn certificates(d: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .expect("openssl runs (./setup.sh installs it)");
        assert!(o.status.success(), "openssl {args:?}: {}", text(&o));
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=hrf test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (d.join("ca.crt"), d.join("server.crt"), d.join("server.key"))
}

/// An https server behind a private CA: scored through with `tls_ca`, refused without it.
#[test]
fn an_https_judge_behind_a_private_ca_needs_tls_ca() {
    let d = tmp("hrf-servers", "tls");
    let (ca, cert, key) = certificates(&d);
    let judge = Server::judge_tls(free_port(), &d.join("judge.log"), &cert, &key);
    let url = format!("https://127.0.0.1:{}", judge.port);
    let entry = |extra: &str| {
        format!(
            "rewards[0]={{kind: openai-judge, name: contrast, url: '{url}', model: test/contrast-judge, \
             template: 'Rate the contrast of this image.', score_field: verdict.score{extra}}}"
        )
    };
    let run = d.join("run");
    let o = run_tiny(
        &run,
        "http://unused:1",
        &[
            &entry(&format!(", tls_ca: {}", ca.display())),
            "training.epochs=1",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let l = lines(&run);
    assert_eq!(
        of_kind(&l, "epoch")[0]["reward_requests"]["contrast"]["requests"],
        8
    );
    // Mozilla's roots do not know this CA: refused at load, naming the URL.
    let o = run_tiny(
        &d.join("refused"),
        "http://unused:1",
        &[&entry(""), "training.epochs=1"],
        &[],
    );
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains(&format!("GET {url}/v1/models")), "{t}");
    assert!(!d.join("refused").exists());
    drop(judge);
    std::fs::remove_dir_all(d).unwrap();
}
