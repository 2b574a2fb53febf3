//! `kind: http` entries: their defaults, that the resolved pipeline loads back with them, and
//! their errors named with their field.

use super::*;
use crate::reward::ImageEncoding;

fn with_reward(entry: &str) -> String {
    MINIMAL.replace("  - {kind: jpeg-compressibility}", &format!("  - {entry}"))
}

#[test]
fn http_rewards_resolve_with_their_defaults_and_load_back() {
    let fx = Fixture::new("http");
    let p = fx
        .load(
            &with_reward("{kind: http, url: 'http://127.0.0.1:8080/', model: contrast}"),
            &[],
        )
        .unwrap();
    let RewardKind::Http(h) = &p.rewards[0].kind else {
        panic!("{:?}", p.rewards[0].kind)
    };
    assert_eq!(p.rewards[0].name, "contrast", "named after the model");
    assert_eq!(h.server.url, "http://127.0.0.1:8080", "no trailing /");
    assert_eq!(h.encoding, ImageEncoding::Uint8);
    assert_eq!(
        (
            h.inputs.images.as_str(),
            h.inputs.prompts.as_deref(),
            h.inputs.metadata.as_deref()
        ),
        ("images", Some("prompts"), Some("metadata"))
    );
    assert_eq!(
        (
            h.output.as_str(),
            h.max_batch,
            h.server.concurrency,
            h.server.timeout_s,
            h.server.retries,
            h.server.backoff_s
        ),
        ("score", 64, 4, 30.0, 3, 0.5)
    );
    assert_eq!(
        (h.server.auth_env.as_deref(), h.server.max_reply_mb),
        (None, 16)
    );

    let p = fx
        .load(
            &with_reward(
                "{kind: http, name: judge, url: 'https://rewards.example:443', model: pick, encoding: png,
     inputs: {images: pixels, metadata: null}, output: logits, max_batch: 8, concurrency: 2,
     timeout_s: 5, retries: 0, backoff_s: 1, auth_env: REWARD_TOKEN, max_reply_mb: 4, on_error: skip}",
            ),
            &[],
        )
        .unwrap();
    let text = serde_yaml_text(&p);
    assert!(text.contains("REWARD_TOKEN"), "{text}");
    let back = fx.load(&text, &[]).unwrap();
    assert_eq!(back.rewards, p.rewards);
    let RewardKind::Http(h) = &back.rewards[0].kind else {
        panic!()
    };
    assert_eq!(
        (h.inputs.images.as_str(), h.inputs.metadata.as_deref()),
        ("pixels", None)
    );
    assert_eq!(
        (h.encoding, h.server.retries, h.server.auth_env.as_deref()),
        (ImageEncoding::Png, 0, Some("REWARD_TOKEN"))
    );
}

#[test]
fn bad_http_rewards_are_named_with_their_field() {
    let fx = Fixture::new("http-bad");
    let ok = "url: 'http://127.0.0.1:1', model: m";
    let cases = [
        ("{kind: http, model: m}".to_string(), "rewards[0].url"),
        ("{kind: http, url: 'ftp://x', model: m}".into(), "rewards[0].url: \"ftp://x\""),
        ("{kind: http, url: 'http://x?a=1', model: m}".into(), "no query"),
        ("{kind: http, url: 'http://x'}".into(), "rewards[0].model"),
        ("{kind: http, url: 'http://x', model: 'a/b'}".into(), "rewards[0].model"),
        (format!("{{kind: http, {ok}, max_batch: 0}}"), "rewards[0].max_batch"),
        (format!("{{kind: http, {ok}, concurrency: 65}}"), "rewards[0].concurrency: must be in 1..=64"),
        (format!("{{kind: http, {ok}, retries: 11}}"), "rewards[0].retries: must be in 0..=10"),
        (format!("{{kind: http, {ok}, backoff_s: -1}}"), "rewards[0].backoff_s"),
        (format!("{{kind: http, {ok}, timeout_s: 0}}"), "rewards[0].timeout_s"),
        (format!("{{kind: http, {ok}, max_reply_mb: 0}}"), "rewards[0].max_reply_mb"),
        (format!("{{kind: http, {ok}, auth_env: 'Bearer abc'}}"), "rewards[0].auth_env: give an environment variable's name"),
        ("{kind: http, url: 'http://x', model: '..'}".into(), "rewards[0].model"),
        ("{kind: http, url: 'https://x', model: m, tls_ca: nope.pem}".into(), "rewards[0].tls_ca: "),
        ("{kind: http, url: 'http://x', model: m, tls_ca: prompts.txt}".into(), "rewards[0].tls_ca: only an https:// url uses it"),
        ("{kind: aesthetic, tls_ca: prompts.txt}".into(), "rewards[0].tls_ca: only http and openai-judge"),
        ("{kind: openai-judge, url: 'http://x', model: m, template: q, score_regex: '[0-9]*'}".into(), "matches an empty answer"),
        (format!("{{kind: http, {ok}, output: ''}}"), "rewards[0].output"),
        (format!("{{kind: http, {ok}, inputs: {{images: x, prompts: x}}}}"), "rewards[0].inputs.prompts: \"x\" names two inputs"),
        (format!("{{kind: http, {ok}, inputs: {{imgs: x}}}}"), "imgs"),
        (format!("{{kind: http, {ok}, encoding: jpeg}}"), "jpeg"),
        (format!("{{kind: http, {ok}, memory_mb: 5}}"), "rewards[0].memory_mb: only wasm rewards"),
        (format!("{{kind: http, {ok}, template: hi}}"), "rewards[0].template: only openai-judge rewards"),
        ("{kind: aesthetic, url: 'http://x'}".into(), "rewards[0].url: only http and openai-judge rewards take `url`"),
        ("{kind: aesthetic, timeout_s: 3}".into(), "rewards[0].timeout_s: only wasm, process, http and openai-judge"),
        ("{kind: openai-judge, url: 'http://x', model: m, max_batch: 2, template: q}".into(), "rewards[0].max_batch: only http rewards"),
        ("{kind: openai-judge, url: 'http://x', model: m}".into(), "rewards[0].template: give the question"),
        ("{kind: openai-judge, url: 'http://x', model: m, template: 'Rate {prompt}'}".into(), "rewards[0].template: uses {prompt}, but the run has no `prompts`"),
        ("{kind: openai-judge, url: 'http://x', model: m, template: q, score_regex: '('}".into(), "rewards[0].score_regex"),
        ("{kind: openai-judge, url: 'http://x', model: m, template: q, score_regex: a, score_field: b}".into(), "not both"),
        ("{kind: openai-judge, url: 'http://x', model: m, template: q, score_field: 'a..b'}".into(), "rewards[0].score_field"),
        ("{kind: openai-judge, url: 'http://x', model: m, template: q, temperature: 3}".into(), "rewards[0].temperature"),
        ("{kind: openai-judge, url: 'http://x', model: m, template: q, max_tokens: 0}".into(), "rewards[0].max_tokens"),
    ];
    for (entry, words) in cases {
        let e = fx.load(&with_reward(&entry), &[]).unwrap_err();
        let m = messages(&e);
        assert!(m.contains(words), "{entry}: {m}");
        assert!(
            !m.contains("Bearer abc"),
            "a pasted token is not repeated: {m}"
        );
    }
}

#[test]
fn judges_resolve_with_their_defaults_and_load_back() {
    let fx = Fixture::new("judge");
    let p = fx
        .load(
            &with_reward(
                "{kind: openai-judge, url: 'http://127.0.0.1:8000', model: 'Qwen/Qwen2-VL-2B:q4', template: 'Rate this image from 0 to 10.'}",
            ),
            &[],
        )
        .unwrap();
    assert_eq!(
        p.rewards[0].name, "Qwen2-VL-2B-q4",
        "named after the model's last part"
    );
    let RewardKind::OpenAiJudge(j) = &p.rewards[0].kind else {
        panic!("{:?}", p.rewards[0].kind)
    };
    assert_eq!(
        j.score_from,
        ScoreFrom::Regex(r"-?[0-9]+(?:\.[0-9]+)?".into())
    );
    assert_eq!(
        (j.max_tokens, j.temperature, j.server.timeout_s),
        (32, 0.0, 60.0)
    );
    let text = serde_yaml_text(&p);
    let back = fx.load(&text, &[]).unwrap();
    assert_eq!(back.rewards, p.rewards);
    let p = fx
        .load(
            &with_reward(
                "{kind: openai-judge, name: j, url: 'http://x', model: m, template: q, score_field: verdict.score}",
            ),
            &[],
        )
        .unwrap();
    let back = fx.load(&serde_yaml_text(&p), &[]).unwrap();
    let RewardKind::OpenAiJudge(j) = &back.rewards[0].kind else {
        panic!()
    };
    assert_eq!(j.score_from, ScoreFrom::Field("verdict.score".into()));
}
