//! One HTTP server as rewards talk to it: a base URL, an optional bearer token, and the bounds
//! every network reward keeps — a timeout per request, retries with exponential back-off only
//! where a retry can help (connection errors, timeouts, 429, 5xx; never another 4xx), and a
//! bounded read of every reply. Errors name the method, the URL and the status; never the token.

use std::time::{Duration, Instant};

use hrf_config::pipeline::ServerSpec;
use hrf_core::{text, CallStats};

/// The most bytes of an error reply's body kept for the message.
const ERROR_BODY: u64 = 64 << 10;
/// The longest wait between two attempts, however many retries and whatever `backoff_s`.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A server's bounds (from the reward's YAML entry).
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// `http://host:port` or `https://…`, without a trailing `/`.
    pub url: String,
    /// Per request: connecting, sending and reading the whole reply.
    pub timeout: Duration,
    pub retries: u32,
    /// Before the first retry; doubled for each next one.
    pub backoff: Duration,
    /// Replies longer than this are an error (not retried).
    pub max_reply_bytes: u64,
    /// Sent as `Authorization: Bearer …`.
    pub token: Option<String>,
    /// The certificate authorities an https server must chain to; `None`: Mozilla's roots.
    pub roots: Option<Vec<ureq::tls::Certificate<'static>>>,
}

/// Why a request failed for good.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{method} {url}: {message}")]
pub struct RequestError {
    pub method: &'static str,
    pub url: String,
    /// The HTTP status of the last answer, if there was one.
    pub status: Option<u16>,
    pub message: String,
}

/// An answer worth retrying, or the end of the request.
enum Attempt {
    Done(Vec<u8>),
    Retry(Option<u16>, String),
    Fail(Option<u16>, String),
}

/// Why a reward behind a server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reward {name}: auth_env: the environment variable {var} is not set")]
    NoToken { name: String, var: String },
    #[error("reward {name}: the server is not ready: {source}")]
    NotReady {
        name: String,
        #[source]
        source: RequestError,
    },
    #[error("reward {name}: {message}")]
    Model { name: String, message: String },
    #[error("reward {name}: tls_ca: {}: {message}", path.display())]
    Tls {
        name: String,
        path: std::path::PathBuf,
        message: String,
    },
}

pub struct ServerClient {
    agent: ureq::Agent,
    settings: ServerSettings,
}

impl ServerClient {
    /// The client of reward `name`'s validated server settings; the token is read from the
    /// environment variable they name.
    pub fn for_reward(name: &str, spec: &ServerSpec) -> Result<Self, LoadError> {
        let token = match &spec.auth_env {
            Some(var) => Some(std::env::var(var).map_err(|_| LoadError::NoToken {
                name: name.into(),
                var: var.clone(),
            })?),
            None => None,
        };
        let roots = match &spec.tls_ca {
            Some(path) => {
                let tls = |message: String| LoadError::Tls {
                    name: name.into(),
                    path: path.clone(),
                    message,
                };
                let pem = std::fs::read(path).map_err(|e| tls(e.to_string()))?;
                let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                        Ok(_) => None,
                        Err(e) => Some(Err(e)),
                    })
                    .collect::<Result<_, _>>()
                    .map_err(|e| tls(e.to_string()))?;
                if certs.is_empty() {
                    return Err(tls("holds no PEM certificate".into()));
                }
                Some(certs)
            }
            None => None,
        };
        Ok(Self::new(ServerSettings {
            url: spec.url.clone(),
            timeout: Duration::from_secs_f64(spec.timeout_s),
            retries: spec.retries,
            backoff: Duration::from_secs_f64(spec.backoff_s),
            max_reply_bytes: spec.max_reply_mb << 20,
            token,
            roots,
        }))
    }

    pub fn new(settings: ServerSettings) -> Self {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(roots) = &settings.roots {
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(roots));
        }
        let agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .timeout_global(Some(settings.timeout))
            .http_status_as_error(false)
            .user_agent(concat!("hrf/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self { agent, settings }
    }

    /// `s` with the bearer token, wherever a server echoed it, replaced by `[token]`: every
    /// message made from a server's reply passes here before it leaves the reward.
    pub fn redact(&self, s: &str) -> String {
        match self.settings.token.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => s.replace(t, "[token]"),
            None => s.to_string(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.url)
    }

    /// One GET without retries (readiness checks at load): the body of a 2xx answer.
    pub fn get(&self, path: &str) -> Result<Vec<u8>, RequestError> {
        let url = self.url(path);
        let err = |status, message| RequestError {
            method: "GET",
            url: url.clone(),
            status,
            message,
        };
        let mut req = self.agent.get(&url);
        if let Some(t) = &self.settings.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        match self.read(req.call()) {
            Attempt::Done(body) => Ok(body),
            Attempt::Retry(status, m) | Attempt::Fail(status, m) => Err(err(status, m)),
        }
    }

    /// POSTs a JSON body, retrying as the settings allow; the 2xx reply's body.
    pub fn post_json(
        &self,
        path: &str,
        body: &[u8],
        stats: &mut CallStats,
    ) -> Result<Vec<u8>, RequestError> {
        let url = self.url(path);
        let started = Instant::now();
        let mut attempts = 0u32;
        let outcome = loop {
            if attempts > 0 {
                let wait = self
                    .settings
                    .backoff
                    .saturating_mul(1 << (attempts - 1).min(16))
                    .min(MAX_BACKOFF);
                if !sleep_unless_stopped(wait) {
                    break Err((None, "stopped on request".to_string()));
                }
                stats.retries += 1;
            }
            attempts += 1;
            let mut req = self
                .agent
                .post(&url)
                .header("Content-Type", "application/json");
            if let Some(t) = &self.settings.token {
                req = req.header("Authorization", &format!("Bearer {t}"));
            }
            match self.read(req.send(body)) {
                Attempt::Done(reply) => break Ok(reply),
                Attempt::Fail(status, m) => break Err((status, m)),
                Attempt::Retry(status, m) if attempts > self.settings.retries => {
                    let tries = if attempts == 1 {
                        "1 attempt".into()
                    } else {
                        format!("{attempts} attempts")
                    };
                    break Err((status, format!("{m} (after {tries})")));
                }
                Attempt::Retry(..) => continue,
            }
        };
        let latency = started.elapsed().as_secs_f64();
        stats.requests += 1;
        stats.latency_s_sum += latency;
        stats.latency_s_max = stats.latency_s_max.max(latency);
        outcome.map_err(|(status, message)| {
            stats.failures += 1;
            RequestError {
                method: "POST",
                url,
                status,
                message,
            }
        })
    }

    /// Reads an answer within the reply bound and sorts it: done, worth a retry, or failed.
    fn read(&self, sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Attempt {
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => return transport(e),
        };
        let status = resp.status().as_u16();
        let ok = (200..300).contains(&status);
        let limit = if ok {
            self.settings.max_reply_bytes
        } else {
            ERROR_BODY
        };
        let body = match resp.body_mut().with_config().limit(limit).read_to_vec() {
            Ok(b) => b,
            Err(ureq::Error::BodyExceedsLimit(_)) if ok => {
                return Attempt::Fail(
                    Some(status),
                    format!(
                        "the reply is longer than max_reply_mb ({} MiB); not read further",
                        self.settings.max_reply_bytes >> 20
                    ),
                )
            }
            Err(ureq::Error::BodyExceedsLimit(_)) => Vec::new(),
            Err(e) => return transport(e),
        };
        if ok {
            return Attempt::Done(body);
        }
        let reason = resp.status().canonical_reason().unwrap_or("");
        // Redacted before it is cut, so that no part of an echoed token survives the cut.
        let body = self.redact(&String::from_utf8_lossy(&body));
        let message = format!("HTTP {status} {reason}: {}", text::clean(&body, 300));
        if status == 429 || status >= 500 {
            Attempt::Retry(Some(status), message)
        } else {
            Attempt::Fail(Some(status), message)
        }
    }
}

/// A request that got no (complete) answer: connection errors and timeouts are worth a retry.
fn transport(e: ureq::Error) -> Attempt {
    let message = text::message(&e.to_string());
    match e {
        ureq::Error::Timeout(_) => {
            Attempt::Retry(None, format!("no complete answer in time ({message})"))
        }
        ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
            Attempt::Retry(None, message)
        }
        _ => Attempt::Fail(None, message),
    }
}

/// Sleeps `wait` in short steps; false when a stop was asked for meanwhile.
fn sleep_unless_stopped(wait: Duration) -> bool {
    let until = Instant::now() + wait;
    loop {
        if hrf_core::interrupt::requested() {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}
