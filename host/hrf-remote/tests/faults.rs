//! `kind: http` against a scripted KServe v2 server on 127.0.0.1 (a real TCP server in a thread
//! of the test): scores in order across split, concurrent requests; retries on 500, none on
//! 400; a request hanging past its timeout; the wrong number of scores; NaN; a 100 MB reply
//! read only up to its bound; a server that is down at load; the bearer token sent and never in
//! an error. Each test has its own server.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hrf_config::pipeline::{HttpSpec, JudgeSpec, ScoreFrom, ServerSpec};
use hrf_config::reward::{HttpInputs, ImageEncoding};
use hrf_core::{Channels, Image, Reward, Sample};
use hrf_remote::{InferenceReward, JudgeReward, LoadError};
use serde_json::{json, Value};

/// What the server does with the next infer request.
#[derive(Clone)]
enum Reply {
    /// Each image's score: the sum of its bytes (UINT8) or its PNG file's length (BYTES).
    Scores,
    /// A status and a body, as given.
    Raw(u16, String),
    /// Sleeps this long before answering with `Scores`.
    Hang(Duration),
    /// A 200 with a body of this many bytes.
    Huge(usize),
}

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
    body: Value,
}

struct Server {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A server answering readiness and metadata, and infer requests from `script` in order (the
/// last entry repeats).
fn serve(script: Vec<Reply>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let (log, script) = (log.clone(), script.clone());
            std::thread::spawn(move || handle(conn, &log, &script));
        }
    });
    Server { url, seen }
}

fn handle(mut conn: TcpStream, log: &Mutex<Vec<Seen>>, script: &Mutex<VecDeque<Reply>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let (mut len, mut authorization) = (0usize, None);
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().unwrap(),
            "authorization" => authorization = Some(v.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    log.lock().unwrap().push(Seen {
        path: path.clone(),
        authorization,
        body: body.clone(),
    });
    let respond = |conn: &mut TcpStream, status: u16, text: &str| {
        let _ = write!(
            conn,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        );
    };
    if path == "/v1/models" {
        let models = json!({"object": "list", "data": [{"id": "org/judge-vl", "object": "model"}]});
        return respond(&mut conn, 200, &models.to_string());
    }
    if !path.ends_with("/infer") && !path.ends_with("/chat/completions") {
        let mut meta = json!({"name": "m", "versions": ["7"], "platform": "test",
                          "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1]}]});
        // A model at /v2/models/strict declares its inputs, as Triton's do.
        if path.starts_with("/v2/models/strict") {
            meta["inputs"] =
                json!([{"name": "images", "datatype": "UINT8", "shape": [-1, -1, -1, 1]}]);
        }
        return respond(&mut conn, 200, &meta.to_string());
    }
    let reply = {
        let mut s = script.lock().unwrap();
        if s.len() > 1 {
            s.pop_front().unwrap()
        } else {
            s.front().cloned().unwrap()
        }
    };
    match reply {
        Reply::Scores => respond(&mut conn, 200, &scores_for(&body).to_string()),
        Reply::Raw(status, text) => respond(&mut conn, status, &text),
        Reply::Hang(d) => {
            std::thread::sleep(d);
            respond(&mut conn, 200, &scores_for(&body).to_string())
        }
        Reply::Huge(n) => {
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
            );
            let chunk = vec![b' '; 1 << 20];
            let mut left = n;
            while left > 0 {
                let k = left.min(chunk.len());
                if conn.write_all(&chunk[..k]).is_err() {
                    return;
                }
                left -= k;
            }
        }
    }
}

fn scores_for(body: &Value) -> Value {
    let images = &body["inputs"][0];
    let b = images["shape"][0].as_u64().unwrap() as usize;
    let scores: Vec<f64> = if images["datatype"] == "UINT8" {
        let data = images["data"].as_array().unwrap();
        let per = data.len() / b;
        data.chunks(per)
            .map(|c| c.iter().map(|v| v.as_f64().unwrap()).sum())
            .collect()
    } else {
        use base64::Engine;
        images["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let png = base64::engine::general_purpose::STANDARD
                    .decode(s.as_str().unwrap())
                    .unwrap();
                assert_eq!(&png[1..4], b"PNG");
                png.len() as f64
            })
            .collect()
    };
    json!({"model_name": "m", "outputs": [{"name": "score", "shape": [b], "datatype": "FP32", "data": scores}]})
}

fn server(url: &str) -> ServerSpec {
    ServerSpec {
        url: url.into(),
        model: "m".into(),
        concurrency: 4,
        timeout_s: 5.0,
        retries: 2,
        backoff_s: 0.01,
        auth_env: None,
        max_reply_mb: 16,
        tls_ca: None,
    }
}

fn spec(url: &str) -> HttpSpec {
    HttpSpec {
        server: server(url),
        encoding: ImageEncoding::Uint8,
        inputs: HttpInputs::default(),
        output: "score".into(),
        max_batch: 64,
    }
}

/// `spec(url)` with its server settings changed by `f`.
fn spec_with(url: &str, f: impl FnOnce(&mut ServerSpec)) -> HttpSpec {
    let mut s = spec(url);
    f(&mut s.server);
    s
}

fn samples(n: usize) -> Vec<Sample> {
    (0..n)
        .map(|i| Sample {
            image: Image::new(
                4,
                3,
                Channels::L8,
                (0..12).map(|k| (i * 7 + k) as u8).collect(),
            )
            .unwrap(),
            prompt: Some(format!("a photo of sample {i}")),
            metadata: json!({"i": i}),
        })
        .collect()
}

fn sums(s: &[Sample]) -> Vec<f32> {
    s.iter()
        .map(|s| s.image.data().iter().map(|&b| b as f32).sum())
        .collect()
}

fn infers(server: &Server) -> usize {
    let seen = server.seen.lock().unwrap();
    seen.iter()
        .filter(|s| s.path.ends_with("/infer") || s.path.ends_with("/chat/completions"))
        .count()
}

#[test]
fn scores_keep_their_order_across_split_concurrent_requests() {
    let server = serve(vec![Reply::Scores]);
    let mut r = InferenceReward::load(
        "m",
        &HttpSpec {
            max_batch: 4,
            ..spec_with(&server.url, |s| s.concurrency = 3)
        },
    )
    .unwrap();
    assert_eq!(r.info().version, "7");
    let s = samples(10);
    let got: Vec<f32> = r.score(&s).unwrap().iter().map(|s| s.value).collect();
    assert_eq!(got, sums(&s));
    assert_eq!(infers(&server), 3, "10 samples in requests of at most 4");
    let stats = r.take_call_stats().unwrap();
    assert_eq!((stats.requests, stats.retries, stats.failures), (3, 0, 0));
    assert!(stats.latency_s_max > 0.0 && stats.latency_s_sum >= stats.latency_s_max);
    assert!(r.take_call_stats().is_none(), "taken once");
    // Each request carries its images as UINT8 [B, H, W, C], the prompts and the metadata.
    // The three are in flight at once, so the server may see them in any order.
    let seen = server.seen.lock().unwrap();
    let infers: Vec<_> = seen
        .iter()
        .filter(|s| s.path == "/v2/models/m/infer")
        .map(|s| &s.body)
        .collect();
    let mut batches: Vec<_> = infers
        .iter()
        .map(|b| b["inputs"][0]["shape"][0].as_u64())
        .collect();
    batches.sort();
    assert_eq!(batches, [Some(2), Some(4), Some(4)]);
    let body = infers
        .iter()
        .find(|b| b["inputs"][0]["shape"][0] == 4)
        .unwrap();
    assert_eq!(body["inputs"][0]["shape"], json!([4, 3, 4, 1]));
    assert_eq!(body["inputs"][1]["name"], "prompts");
    assert_eq!(body["inputs"][2]["name"], "metadata");
    assert_eq!(body["outputs"], json!([{"name": "score"}]));
}

#[test]
fn only_declared_inputs_are_sent() {
    let server = serve(vec![Reply::Scores]);
    let mut strict = spec(&server.url);
    strict.server.model = "strict".into();
    let mut r = InferenceReward::load("m", &strict).unwrap();
    r.score(&samples(2)).unwrap();
    let seen = server.seen.lock().unwrap();
    let body = &seen
        .iter()
        .find(|s| s.path.ends_with("/infer"))
        .unwrap()
        .body;
    assert_eq!(body["inputs"].as_array().unwrap().len(), 1, "{body}");
    drop(seen);
    strict.inputs.images = "pixels".into();
    let e = InferenceReward::load("m", &strict)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("inputs.images") && e.contains("no input \"pixels\"") && e.contains("images"),
        "{e}"
    );
}

#[test]
fn png_encoding_sends_png_files() {
    let server = serve(vec![Reply::Scores]);
    let mut r = InferenceReward::load(
        "m",
        &HttpSpec {
            encoding: ImageEncoding::Png,
            ..spec(&server.url)
        },
    )
    .unwrap();
    let got = r.score(&samples(3)).unwrap();
    assert!(got.iter().all(|s| s.value > 50.0), "PNG lengths: {got:?}");
}

#[test]
fn a_500_is_retried_and_a_400_is_not() {
    let server = serve(vec![
        Reply::Raw(500, "{\"error\":\"busy\"}".into()),
        Reply::Scores,
    ]);
    let mut r = InferenceReward::load("m", &spec(&server.url)).unwrap();
    let s = samples(2);
    let got: Vec<f32> = r.score(&s).unwrap().iter().map(|s| s.value).collect();
    assert_eq!(got, sums(&s));
    assert_eq!(r.take_call_stats().unwrap().retries, 1);

    let server = serve(vec![
        Reply::Raw(400, "{\"error\":\"bad input\"}".into()),
        Reply::Scores,
    ]);
    let mut r = InferenceReward::load("m", &spec(&server.url)).unwrap();
    let e = r.score(&s).unwrap_err().to_string();
    assert!(e.contains("HTTP 400") && e.contains("bad input"), "{e}");
    assert!(
        e.contains(&format!("{}/v2/models/m/infer", server.url)),
        "{e}"
    );
    assert_eq!(infers(&server), 1, "a 400 is not retried");
    assert_eq!(r.take_call_stats().unwrap().failures, 1);
}

#[test]
fn retries_are_bounded() {
    let server = serve(vec![Reply::Raw(503, "down".into())]);
    let mut r = InferenceReward::load("m", &spec_with(&server.url, |s| s.retries = 3)).unwrap();
    let e = r.score(&samples(1)).unwrap_err().to_string();
    assert!(
        e.contains("HTTP 503") && e.contains("after 4 attempts"),
        "{e}"
    );
    assert_eq!(infers(&server), 4);
}

#[test]
fn a_request_hanging_past_its_timeout_fails_in_bounded_time() {
    let server = serve(vec![Reply::Hang(Duration::from_secs(30))]);
    let mut r = InferenceReward::load(
        "m",
        &spec_with(&server.url, |s| (s.timeout_s, s.retries) = (1.0, 1)),
    )
    .unwrap();
    let t = Instant::now();
    let e = r.score(&samples(2)).unwrap_err().to_string();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        e.contains("in time") && e.contains("after 2 attempts"),
        "{e}"
    );
}

#[test]
fn a_wrong_count_or_a_nan_is_the_rewards_failure() {
    let reply = |data: &str| {
        format!(r#"{{"outputs":[{{"name":"score","datatype":"FP32","shape":[2],"data":{data}}}]}}"#)
    };
    let server = serve(vec![Reply::Raw(200, reply("[1.0, 2.0, 3.0]"))]);
    let mut r = InferenceReward::load("m", &spec(&server.url)).unwrap();
    let e = r.score(&samples(2)).unwrap_err().to_string();
    assert!(e.contains("3 scores for the 2 images"), "{e}");
    // Python's json writes NaN as a bare word: it reads as NaN, for on_error to judge.
    let server = serve(vec![Reply::Raw(200, reply("[1.0, NaN]"))]);
    let mut r = InferenceReward::load("m", &spec(&server.url)).unwrap();
    let got = r.score(&samples(2)).unwrap();
    assert_eq!(got[0].value, 1.0);
    assert!(got[1].value.is_nan());
    let info = r.info();
    assert!(hrf_core::check_scores(&info, 2, &got).is_err());
    // A reply without the named output names what it has.
    let server = serve(vec![Reply::Raw(
        200,
        r#"{"outputs":[{"name":"other","data":[1,2]}]}"#.into(),
    )]);
    let mut r = InferenceReward::load("m", &spec(&server.url)).unwrap();
    let e = r.score(&samples(2)).unwrap_err().to_string();
    assert!(
        e.contains("no output \"score\"") && e.contains("other"),
        "{e}"
    );
}

#[test]
fn a_100_mb_reply_is_read_only_up_to_its_bound() {
    let server = serve(vec![Reply::Huge(100 << 20)]);
    let mut r =
        InferenceReward::load("m", &spec_with(&server.url, |s| s.max_reply_mb = 1)).unwrap();
    let t = Instant::now();
    let e = r.score(&samples(2)).unwrap_err().to_string();
    assert!(e.contains("longer than max_reply_mb (1 MiB)"), "{e}");
    assert_eq!(infers(&server), 1, "not retried");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_server_that_is_down_at_load_is_named() {
    // A port that was free a moment ago: nothing listens on it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let e = match InferenceReward::load("judge", &spec(&url)) {
        Err(e @ LoadError::NotReady { .. }) => e.to_string(),
        other => panic!("{:?}", other.err()),
    };
    assert!(
        e.contains("reward judge") && e.contains(&format!("GET {url}/v2/health/ready")),
        "{e}"
    );
}

#[test]
fn a_missing_output_is_refused_at_load() {
    let server = serve(vec![Reply::Scores]);
    let e = InferenceReward::load(
        "m",
        &HttpSpec {
            output: "aesthetic".into(),
            ..spec(&server.url)
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("no output \"aesthetic\"") && e.contains("score"),
        "{e}"
    );
}

const TOKEN_VAR: &str = "HRF_REMOTE_TEST_TOKEN_7F3A";
const TOKEN: &str = "s3cr3t-token-1b9d";

/// The token reaches hrf through the environment. Setting a variable inside this test process
/// would race the other test threads' reads of the environment, so the check runs in a child
/// process of this test binary started with the variable set.
#[test]
fn the_token_is_sent_and_never_shown() {
    let name = "token_check_in_a_child_process";
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", name, "--test-threads", "1"])
        .env(TOKEN_VAR, TOKEN)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "the child ran no test:\n{stdout}"
    );
}

#[test]
#[ignore = "run by the_token_is_sent_and_never_shown, in a child process with the token set"]
fn token_check_in_a_child_process() {
    let (var, token) = (TOKEN_VAR, TOKEN);
    assert_eq!(
        std::env::var(var).as_deref(),
        Ok(token),
        "started with the token set"
    );
    let server = serve(vec![
        Reply::Raw(403, format!("forbidden for {token}")),
        Reply::Scores,
    ]);
    let spec = spec_with(&server.url, |s| s.auth_env = Some(var.into()));
    let mut r = InferenceReward::load("m", &spec).unwrap();
    let e = r.score(&samples(1)).unwrap_err().to_string();
    assert!(
        e.contains("HTTP 403") && e.contains("forbidden for [token]"),
        "{e}"
    );
    assert!(!e.contains(token), "{e}");
    let seen = server.seen.lock().unwrap();
    assert!(seen
        .iter()
        .all(|s| s.authorization.as_deref() == Some(&format!("Bearer {token}"))));
    let mut spec_missing = spec.clone();
    spec_missing.server.auth_env = Some("HRF_REMOTE_TEST_UNSET_9C2E".into());
    let e = InferenceReward::load("m", &spec_missing)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("HRF_REMOTE_TEST_UNSET_9C2E is not set"), "{e}");
}

fn judge_spec(url: &str, score_from: ScoreFrom) -> JudgeSpec {
    let mut server = server(url);
    server.model = "org/judge-vl".into();
    JudgeSpec {
        server,
        template: "Rate {prompt} from 0 to 10.".into(),
        score_from,
        max_tokens: 16,
        temperature: 0.0,
    }
}

fn chat(content: &str) -> Reply {
    Reply::Raw(
        200,
        json!({"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})
            .to_string(),
    )
}

#[test]
fn a_judge_reads_its_score_from_the_answer() {
    let regex = ScoreFrom::Regex(r"-?[0-9]+(?:\.[0-9]+)?".into());
    let server = serve(vec![chat("Score: 7.5/10, sharp"), chat("I'd say 3")]);
    let mut j = JudgeReward::load("judge", &judge_spec(&server.url, regex.clone())).unwrap();
    let got: Vec<f32> = j
        .score(&samples(2))
        .unwrap()
        .iter()
        .map(|s| s.value)
        .collect();
    let mut sorted = got.clone();
    sorted.sort_by(f32::total_cmp);
    assert_eq!(sorted, [3.0, 7.5], "one request per image");
    assert_eq!(j.take_call_stats().unwrap().requests, 2);
    // The question names the prompt and carries the image as a PNG data URL.
    let seen = server.seen.lock().unwrap();
    let body = &seen
        .iter()
        .find(|s| s.path == "/v1/chat/completions")
        .unwrap()
        .body;
    assert_eq!(body["model"], "org/judge-vl");
    let content = &body["messages"][0]["content"];
    assert!(content[0]["text"]
        .as_str()
        .unwrap()
        .starts_with("Rate a photo of sample "));
    assert!(content[1]["image_url"]["url"]
        .as_str()
        .unwrap()
        .starts_with("data:image/png;base64,"));
    drop(seen);

    // A JSON field, through a Markdown fence.
    let server = serve(vec![chat("```json\n{\"verdict\": {\"score\": 0.25}}\n```")]);
    let mut j = JudgeReward::load(
        "judge",
        &judge_spec(&server.url, ScoreFrom::Field("verdict.score".into())),
    )
    .unwrap();
    assert_eq!(j.score(&samples(1)).unwrap()[0].value, 0.25);

    // An answer without a score is the reward's failure, naming the answer.
    let server = serve(vec![chat("I cannot rate images.")]);
    let mut j = JudgeReward::load("judge", &judge_spec(&server.url, regex.clone())).unwrap();
    let e = j.score(&samples(1)).unwrap_err().to_string();
    assert!(
        e.contains("\"I cannot rate images.\" has no match of score_regex"),
        "{e}"
    );
    let server = serve(vec![chat("{\"other\": 1}")]);
    let mut j = JudgeReward::load(
        "judge",
        &judge_spec(&server.url, ScoreFrom::Field("score".into())),
    )
    .unwrap();
    let e = j.score(&samples(1)).unwrap_err().to_string();
    assert!(e.contains("has no field \"score\""), "{e}");
    // A 500 is retried like any server's.
    let server = serve(vec![Reply::Raw(500, "x".into()), chat("5")]);
    let mut j = JudgeReward::load("judge", &judge_spec(&server.url, regex.clone())).unwrap();
    assert_eq!(j.score(&samples(1)).unwrap()[0].value, 5.0);

    // A model the server does not list is refused at load, naming what it serves.
    let mut other = judge_spec(&server.url, regex);
    other.server.model = "gpt-4o".into();
    let e = JudgeReward::load("judge", &other)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("does not serve \"gpt-4o\"") && e.contains("org/judge-vl"),
        "{e}"
    );
}
