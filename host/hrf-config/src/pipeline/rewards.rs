//! The `rewards:` section. `validate` checks what every entry shares (its name, weight, batch
//! size, the fields its kind takes and refuses, `trust`, `timeout_s`), then hands the entry to
//! the function of its kind: `builtin`, `onnx`, `wasm`, `native`, `process`, `http` or
//! `openai-judge`. Every problem
//! goes into the pipeline's one list, named `rewards[i].field`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::defaults;
use super::problems::{valid_name, Base, Problems};
use super::raw::{RewardKindName, RewardRaw, ScoreRaw};
use super::resolved::{
    HttpSpec, JudgeSpec, NativeSpec, ProcessSpec, RewardKind, RewardSpec, ScoreFrom, ScoreSpec,
    ServerSpec, WasmSpec,
};
use crate::reward::StageSpec;

/// The place of entry `i`'s fields in its list: `rewards[i].field`, `evaluation.gold[i].field`.
#[derive(Clone, Copy)]
struct At(&'static str, usize);

impl At {
    fn field(self, field: &str) -> String {
        format!("{}[{}].{field}", self.0, self.1)
    }
}

/// Checks every entry of `rewards:` (at least one; names unique) and resolves it.
pub(super) fn validate(
    p: &mut Problems<'_>,
    rewards: Vec<RewardRaw>,
    base: &Base,
    conditional: bool,
) -> Vec<RewardSpec> {
    if rewards.is_empty() {
        p.push("rewards", "give at least one reward");
    }
    list(p, "rewards", rewards, base, conditional)
}

/// Checks every entry of `evaluation.gold` (names unique among them; none is trained on, so
/// a name may also be a training reward's) and resolves it.
pub(super) fn validate_gold(
    p: &mut Problems<'_>,
    gold: Vec<RewardRaw>,
    base: &Base,
    conditional: bool,
) -> Vec<RewardSpec> {
    list(p, "evaluation.gold", gold, base, conditional)
}

fn list(
    p: &mut Problems<'_>,
    section: &'static str,
    rewards: Vec<RewardRaw>,
    base: &Base,
    conditional: bool,
) -> Vec<RewardSpec> {
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for (i, r) in rewards.into_iter().enumerate() {
        out.push(entry(p, At(section, i), r, base, conditional, &mut names));
    }
    out
}

/// One entry: what every kind shares, then its kind's own checks.
fn entry(
    p: &mut Problems<'_>,
    at: At,
    r: RewardRaw,
    base: &Base,
    conditional: bool,
    names: &mut BTreeSet<String>,
) -> RewardSpec {
    let kind = r.kind.as_str();
    let name = match (&r.name, r.kind) {
        (Some(n), _) => n.clone(),
        (None, _) => defaults::reward_name(&r).unwrap_or_else(|| {
            p.push(at.field("name"), "an onnx reward needs a name");
            String::new()
        }),
    };
    if !name.is_empty() {
        if !valid_name(&name) {
            p.push(
                at.field("name"),
                format!("{name:?}: use letters, digits, '.', '_' and '-'"),
            );
        } else if !names.insert(name.clone()) {
            p.push(at.field("name"), format!("duplicate reward name {name:?}"));
        }
    }
    if !(r.weight.is_finite() && r.weight != 0.0) {
        p.push(
            at.field("weight"),
            format!("must be finite and non-zero, got {}", r.weight),
        );
    }
    p.at_least(at.field("batch_size"), r.batch_size, 1);
    let wasm_fields = [
        ("memory_mb", r.memory_mb.is_some()),
        ("fuel", r.fuel.is_some()),
        ("sha256", r.sha256.is_some()),
        ("models", r.models.is_some()),
    ];
    let onnx_fields = [
        ("stages", r.stages.is_some()),
        ("input", r.input.is_some()),
        ("score", r.score.is_some()),
        ("classes", r.classes.is_some()),
    ];
    let server_fields = [
        ("url", r.url.is_some()),
        ("model", r.model.is_some()),
        ("concurrency", r.concurrency.is_some()),
        ("retries", r.retries.is_some()),
        ("backoff_s", r.backoff_s.is_some()),
        ("auth_env", r.auth_env.is_some()),
        ("max_reply_mb", r.max_reply_mb.is_some()),
        ("tls_ca", r.tls_ca.is_some()),
    ];
    let http_fields = [
        ("encoding", r.encoding.is_some()),
        ("inputs", r.inputs.is_some()),
        ("output", r.output.is_some()),
        ("max_batch", r.max_batch.is_some()),
    ];
    let judge_fields = [
        ("template", r.template.is_some()),
        ("score_regex", r.score_regex.is_some()),
        ("score_field", r.score_field.is_some()),
        ("max_tokens", r.max_tokens.is_some()),
        ("temperature", r.temperature.is_some()),
    ];
    let refuse = |p: &mut Problems<'_>, fields: &[(&str, bool)], who: &str| {
        for (field, given) in fields {
            if *given {
                p.push(
                    at.field(field),
                    format!("only {who} rewards take `{field}`; this one is {kind}"),
                );
            }
        }
    };
    use RewardKindName::{Http, Native, Onnx, OpenAiJudge, Process, Wasm};
    if !matches!(r.kind, Wasm | Native) {
        refuse(p, &[("path", r.path.is_some())], "wasm and native");
    }
    if !matches!(r.kind, Wasm | Native | Process) {
        refuse(p, &[("config", r.config.is_some())], "plugin");
    }
    if !matches!(r.kind, Wasm | Process | Http | OpenAiJudge) {
        refuse(
            p,
            &[("timeout_s", r.timeout_s.is_some())],
            "wasm, process, http and openai-judge",
        );
    }
    if !matches!(r.kind, Http | OpenAiJudge) {
        refuse(p, &server_fields, "http and openai-judge");
    }
    if r.kind != Http {
        refuse(p, &http_fields, "http");
    }
    if r.kind != OpenAiJudge {
        refuse(p, &judge_fields, "openai-judge");
    }
    if r.kind != Wasm {
        refuse(p, &wasm_fields, "wasm");
    }
    if !matches!(r.kind, Native | Process) {
        refuse(p, &[("trust", r.trust.is_some())], "native and process");
    }
    if r.kind != Process {
        refuse(p, &[("command", r.command.is_some())], "process");
    }
    if let Some(t) = r.trust.as_deref().filter(|t| *t != "native") {
        p.push(
            at.field("trust"),
            format!("{t:?}: the only value is `native`"),
        );
    }
    let timeout_s = r.timeout_s.unwrap_or(defaults::reward_timeout_s(r.kind));
    p.real(
        at.field("timeout_s"),
        timeout_s,
        |v| v > 0.0 && v <= 3600.0,
        "in (0, 3600]",
    );
    if r.kind != Onnx {
        refuse(p, &onnx_fields, "onnx");
    }
    let (weight, batch_size, on_error, transform) =
        (r.weight, r.batch_size, r.on_error, r.transform);
    let kind = match r.kind {
        Process => process(p, at, r, base, timeout_s),
        Native => native(p, at, r, base),
        Wasm => wasm(p, at, r, base, timeout_s),
        Onnx => onnx(p, at, r, base, conditional),
        Http => http(p, at, r, base, timeout_s),
        OpenAiJudge => judge(p, at, r, base, timeout_s, conditional),
        builtin_kind => builtin(p, at, builtin_kind, conditional),
    };
    RewardSpec {
        name,
        weight,
        kind,
        batch_size,
        on_error,
        transform,
    }
}

/// The plugin file of a `wasm` or `native` reward, resolved; it must exist.
fn plugin_path(
    p: &mut Problems<'_>,
    at: At,
    path: Option<&Path>,
    kind: RewardKindName,
    base: &Base,
) -> PathBuf {
    match path {
        Some(rel) => {
            let path = base.at(rel);
            if !path.is_file() {
                p.push(at.field("path"), format!("{} not found", path.display()));
            }
            path
        }
        None => {
            p.push(
                at.field("path"),
                format!("a {} reward needs the plugin file's path", kind.as_str()),
            );
            PathBuf::new()
        }
    }
}

/// A built-in reward (`jpeg-compressibility`, `aesthetic`, …); prompt alignment needs prompts.
fn builtin(p: &mut Problems<'_>, at: At, kind: RewardKindName, conditional: bool) -> RewardKind {
    if kind == RewardKindName::PromptAlignment && !conditional {
        p.push(at.field("kind"), "prompt-alignment needs `prompts`");
    }
    RewardKind::Builtin(kind.as_str().to_string())
}

/// `kind: onnx`: the model chain (each file must exist), the input preparation, the score.
fn onnx(p: &mut Problems<'_>, at: At, r: RewardRaw, base: &Base, conditional: bool) -> RewardKind {
    let stages = r.stages.unwrap_or_default();
    if stages.is_empty() {
        p.push(
            at.field("stages"),
            "an onnx reward needs at least one model",
        );
    }
    let stages: Vec<StageSpec> = stages
        .into_iter()
        .enumerate()
        .map(|(k, mut s)| {
            s.model = base.at(&s.model);
            if !s.model.is_file() {
                p.push(
                    at.field(&format!("stages[{k}].model")),
                    format!("{} not found", s.model.display()),
                );
            }
            s
        })
        .collect();
    let score = match r.score.unwrap_or(defaults::onnx_score()) {
        ScoreRaw::Column(c) => {
            if r.classes.is_some() {
                p.push(
                    at.field("classes"),
                    "only `score: prompted-class` takes classes",
                );
            }
            ScoreSpec::Column(c)
        }
        ScoreRaw::PromptedClass => {
            if !conditional {
                p.push(at.field("score"), "prompted-class needs `prompts`");
            }
            if r.classes.as_ref().is_some_and(|c| c.is_empty()) {
                p.push(
                    at.field("classes"),
                    "empty: give the class names or leave it out",
                );
            }
            ScoreSpec::PromptedClass(r.classes)
        }
    };
    RewardKind::Onnx {
        stages,
        input: r.input.unwrap_or_default(),
        score,
    }
}

/// `kind: wasm`: the component file, its sandbox (memory cap, fuel, timeout), its checksum and
/// the ONNX models it may run through the host (each file must exist).
fn wasm(p: &mut Problems<'_>, at: At, r: RewardRaw, base: &Base, timeout_s: f64) -> RewardKind {
    let path = plugin_path(p, at, r.path.as_deref(), r.kind, base);
    let memory_mb = r.memory_mb.unwrap_or(defaults::wasm_memory_mb());
    if !(1..=65_536).contains(&memory_mb) {
        p.push(
            at.field("memory_mb"),
            format!("must be in 1..=65536, got {memory_mb}"),
        );
    }
    if r.fuel == Some(0) {
        p.push(at.field("fuel"), "must be ≥ 1 (leave it out for no limit)");
    }
    if let Some(h) = &r.sha256 {
        if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
            p.push(at.field("sha256"), format!("{h:?}: 64 hex digits expected"));
        }
    }
    let models = r
        .models
        .unwrap_or_default()
        .into_iter()
        .map(|(name, rel)| {
            let path = base.at(&rel);
            if !path.is_file() {
                p.push(
                    at.field(&format!("models.{name}")),
                    format!("{} not found", path.display()),
                );
            }
            (name, path)
        })
        .collect();
    RewardKind::Wasm(WasmSpec {
        models,
        path,
        config: r.config.unwrap_or_else(defaults::plugin_config),
        timeout_s,
        memory_mb,
        fuel: r.fuel,
        sha256: r.sha256.map(|h| h.to_lowercase()),
    })
}

/// `kind: native`: the shared library's file and its configuration.
fn native(p: &mut Problems<'_>, at: At, r: RewardRaw, base: &Base) -> RewardKind {
    let path = plugin_path(p, at, r.path.as_deref(), r.kind, base);
    RewardKind::Native(NativeSpec {
        path,
        config: r.config.unwrap_or_else(defaults::plugin_config),
        trust: r.trust,
    })
}

/// `kind: process`: the program and its arguments (run in the YAML file's folder).
fn process(p: &mut Problems<'_>, at: At, r: RewardRaw, base: &Base, timeout_s: f64) -> RewardKind {
    let command = r.command.unwrap_or_default();
    if command.first().is_none_or(|c| c.is_empty()) {
        p.push(
            at.field("command"),
            "give the program and its arguments, e.g. [python3, reward.py]",
        );
    }
    RewardKind::Process(ProcessSpec {
        command,
        dir: base.dir().to_path_buf(),
        config: r.config.unwrap_or_else(defaults::plugin_config),
        timeout_s,
        trust: r.trust,
    })
}

/// What `http` and `openai-judge` share: the server's URL and the model on it, and the bounds
/// on requests in flight, retries and replies. `model_chars` says what a model name may hold
/// besides letters and digits (KServe puts it in the URL's path; OpenAI-compatible servers
/// take `org/name:tag`).
fn server(
    p: &mut Problems<'_>,
    at: At,
    r: &RewardRaw,
    base: &Base,
    timeout_s: f64,
    model_chars: &str,
) -> ServerSpec {
    let url = r
        .url
        .clone()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_string();
    let scheme_ok = ["http://", "https://"]
        .iter()
        .any(|s| url.len() > s.len() && url.to_ascii_lowercase().starts_with(s));
    if !scheme_ok {
        p.push(
            at.field("url"),
            format!("{url:?}: give the server's base URL, http://host:port or https://…"),
        );
    } else if url.contains(['?', '#', ' ']) {
        p.push(
            at.field("url"),
            format!("{url:?}: the base URL takes no query, fragment or spaces"),
        );
    }
    let model = r.model.clone().unwrap_or_default();
    // Not only dots: the name is a path segment of the KServe URLs.
    let model_ok = !model.is_empty()
        && !model.chars().all(|c| c == '.')
        && model
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || model_chars.contains(c));
    if !model_ok {
        p.push(
            at.field("model"),
            format!(
                "{model:?}: give the model's name on the server (letters, digits and {})",
                model_chars
                    .chars()
                    .map(|c| format!("'{c}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    let concurrency = r.concurrency.unwrap_or(4);
    if !(1..=64).contains(&concurrency) {
        p.push(
            at.field("concurrency"),
            format!("must be in 1..=64, got {concurrency}"),
        );
    }
    let retries = r.retries.unwrap_or(3);
    if retries > 10 {
        p.push(
            at.field("retries"),
            format!("must be in 0..=10, got {retries}"),
        );
    }
    let backoff_s = r.backoff_s.unwrap_or(0.5);
    p.real(
        at.field("backoff_s"),
        backoff_s,
        |v| (0.0..=60.0).contains(&v),
        "in [0, 60]",
    );
    if let Some(var) = &r.auth_env {
        let ok = !var.is_empty()
            && !var.starts_with(|c: char| c.is_ascii_digit())
            && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            // The value is not repeated: it may be a token pasted in by mistake.
            p.push(
                at.field("auth_env"),
                "give an environment variable's name (letters, digits, '_'), not the token",
            );
        }
    }
    let max_reply_mb = r.max_reply_mb.unwrap_or(16);
    if !(1..=1024).contains(&max_reply_mb) {
        p.push(
            at.field("max_reply_mb"),
            format!("must be in 1..=1024, got {max_reply_mb}"),
        );
    }
    let tls_ca = r.tls_ca.as_deref().map(|rel| {
        let path = base.at(rel);
        if !path.is_file() {
            p.push(at.field("tls_ca"), format!("{} not found", path.display()));
        } else if url.to_ascii_lowercase().starts_with("http://") {
            p.push(at.field("tls_ca"), "only an https:// url uses it");
        }
        path
    });
    ServerSpec {
        url,
        model,
        concurrency,
        timeout_s,
        retries,
        backoff_s,
        auth_env: r.auth_env.clone(),
        max_reply_mb,
        tls_ca,
    }
}

/// `kind: http`: the server, what is sent (the encoding, the input tensors' names) and read
/// (the output's name), and the images per request.
fn http(p: &mut Problems<'_>, at: At, r: RewardRaw, base: &Base, timeout_s: f64) -> RewardKind {
    let server = server(p, at, &r, base, timeout_s, "._-");
    let inputs = r.inputs.unwrap_or_default();
    let names = [
        ("inputs.images", Some(&inputs.images)),
        ("inputs.prompts", inputs.prompts.as_ref()),
        ("inputs.metadata", inputs.metadata.as_ref()),
    ];
    let mut seen = BTreeSet::new();
    for (field, name) in names {
        if let Some(name) = name {
            if name.is_empty() {
                p.push(at.field(field), "empty: give the tensor's name or null");
            } else if !seen.insert(name.as_str()) {
                p.push(at.field(field), format!("{name:?} names two inputs"));
            }
        }
    }
    let output = r.output.unwrap_or_else(|| "score".into());
    if output.is_empty() {
        p.push(at.field("output"), "empty: give the output tensor's name");
    }
    let max_batch = r.max_batch.unwrap_or(64);
    p.at_least(at.field("max_batch"), max_batch, 1);
    RewardKind::Http(HttpSpec {
        server,
        encoding: r.encoding.unwrap_or_default(),
        inputs,
        output,
        max_batch,
    })
}

/// `kind: openai-judge`: the server, the question (a `{prompt}` in it needs prompts), where
/// the score is in the reply, and the reply's length and temperature.
fn judge(
    p: &mut Problems<'_>,
    at: At,
    r: RewardRaw,
    base: &Base,
    timeout_s: f64,
    conditional: bool,
) -> RewardKind {
    let server = server(p, at, &r, base, timeout_s, "._-/:");
    let template = r.template.clone().unwrap_or_default();
    if template.trim().is_empty() {
        p.push(
            at.field("template"),
            "give the question asked with each image, e.g. \"Rate this image of {prompt} from 0 to 10.\"",
        );
    } else if template.contains("{prompt}") && !conditional {
        p.push(
            at.field("template"),
            "uses {prompt}, but the run has no `prompts`",
        );
    }
    let score_from = match (r.score_regex.clone(), r.score_field.clone()) {
        (Some(_), Some(_)) => {
            p.push(
                at.field("score_field"),
                "give score_regex or score_field, not both",
            );
            ScoreFrom::Regex(String::new())
        }
        (_, Some(field)) => {
            if field.is_empty() || field.split('.').any(str::is_empty) {
                p.push(
                    at.field("score_field"),
                    format!("{field:?}: give a field name, `a.b` for a nested one"),
                );
            }
            ScoreFrom::Field(field)
        }
        (regex, None) => {
            let regex = regex.unwrap_or_else(|| r"-?[0-9]+(?:\.[0-9]+)?".into());
            match regex::Regex::new(&regex) {
                Err(e) => p.push(at.field("score_regex"), format!("{regex:?}: {e}")),
                Ok(re) if re.is_match("") => p.push(
                    at.field("score_regex"),
                    format!("{regex:?} matches an empty answer; make it need at least one digit"),
                ),
                Ok(_) => {}
            }
            ScoreFrom::Regex(regex)
        }
    };
    let max_tokens = r.max_tokens.unwrap_or(32);
    if !(1..=4096).contains(&max_tokens) {
        p.push(
            at.field("max_tokens"),
            format!("must be in 1..=4096, got {max_tokens}"),
        );
    }
    let temperature = r.temperature.unwrap_or(0.0);
    p.real(
        at.field("temperature"),
        temperature,
        |v| (0.0..=2.0).contains(&v),
        "in [0, 2]",
    );
    RewardKind::OpenAiJudge(JudgeSpec {
        server,
        template,
        score_from,
        max_tokens,
        temperature,
    })
}
