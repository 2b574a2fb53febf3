//! `kind: openai-judge`: a vision-language model behind an OpenAI-compatible chat-completions
//! endpoint (what vLLM, SGLang and llama.cpp's server serve) asked about each image.
//!
//! At load `GET {url}/v1/models` must list the model. Each image is one request,
//! `concurrency` of them in flight: `POST {url}/v1/chat/completions` with one user message of
//! the question (`template`, its `{prompt}` replaced by the sample's prompt) and the image as a
//! PNG data URL; the score is the first match of `score_regex` in the answer (its first group,
//! if it has one) or the field `score_field` of the answer read as JSON. An answer without a
//! score fails the request, like any reward failure (`on_error`).

use hrf_config::pipeline::{JudgeSpec, ScoreFrom};
use hrf_core::{text, CallStats, Reward, RewardError, RewardInfo, Sample, Score};
use serde_json::{json, Value};

use crate::client::{LoadError, ServerClient};
use crate::image::png_data_url;
use crate::json::parse_reply;
use crate::pool::{in_flight, redacted, scores};

pub struct JudgeReward {
    name: String,
    spec: JudgeSpec,
    client: ServerClient,
    regex: Option<regex::Regex>,
    stats: CallStats,
}

impl JudgeReward {
    /// Connects to the server named in `spec` and checks that it serves the model.
    pub fn load(name: &str, spec: &JudgeSpec) -> Result<Self, LoadError> {
        let client = ServerClient::for_reward(name, &spec.server)?;
        let listed = client
            .get("/v1/models")
            .map_err(|source| LoadError::NotReady {
                name: name.into(),
                source,
            })?;
        let ids: Vec<String> = serde_json::from_slice::<Value>(&listed)
            .ok()
            .and_then(|v| {
                v["data"].as_array().map(|d| {
                    d.iter()
                        .filter_map(|m| m["id"].as_str().map(String::from))
                        .collect()
                })
            })
            .unwrap_or_default();
        if !ids.contains(&spec.server.model) {
            return Err(LoadError::Model {
                name: name.into(),
                message: format!(
                    "model: {} does not serve {:?}; it serves {}",
                    client.url("/v1/models"),
                    spec.server.model,
                    if ids.is_empty() {
                        "none".into()
                    } else {
                        text::message(&ids.join(", "))
                    }
                ),
            });
        }
        let regex = match &spec.score_from {
            ScoreFrom::Regex(r) => Some(regex::Regex::new(r).map_err(|e| LoadError::Model {
                name: name.into(),
                message: format!("score_regex: {e}"),
            })?),
            ScoreFrom::Field(_) => None,
        };
        Ok(Self {
            name: name.into(),
            spec: spec.clone(),
            client,
            regex,
            stats: CallStats::default(),
        })
    }

    /// One image's question and answer: its score.
    fn judge(&self, sample: &Sample, stats: &mut CallStats) -> Result<f32, String> {
        let question = self
            .spec
            .template
            .replace("{prompt}", sample.prompt.as_deref().unwrap_or(""));
        let body = json!({
            "model": self.spec.server.model,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": question},
                {"type": "image_url", "image_url": {"url": png_data_url(&sample.image)?}},
            ]}],
            "max_tokens": self.spec.max_tokens,
            "temperature": self.spec.temperature,
        });
        let path = "/v1/chat/completions";
        let reply = self
            .client
            .post_json(
                path,
                &serde_json::to_vec(&body).expect("a request serialises"),
                stats,
            )
            .map_err(|e| format!("model {}: {e}", self.spec.server.model))?;
        let url = self.client.url(path);
        let reply =
            parse_reply(&reply).map_err(|e| format!("{url}: the reply is not JSON: {e}"))?;
        let answer = answer_of(&reply).ok_or_else(|| {
            format!(
                "{url}: the reply has no choices[0].message.content: {}",
                text::message(&reply.to_string())
            )
        })?;
        self.score_in(&answer)
            .map_err(|why| format!("{url}: the answer {:?} {why}", text::clean(&answer, 200)))
    }

    /// The score in an answer, as `score_regex` or `score_field` finds it.
    fn score_in(&self, answer: &str) -> Result<f32, String> {
        match (&self.spec.score_from, &self.regex) {
            (ScoreFrom::Regex(pattern), Some(re)) => {
                let caps = re
                    .captures(answer)
                    .ok_or_else(|| format!("has no match of score_regex {pattern:?}"))?;
                let m = caps.get(1).or_else(|| caps.get(0)).expect("a match");
                // Through f64, as a number in JSON is read: the f32 nearest the answer's value.
                m.as_str()
                    .trim()
                    .parse::<f64>()
                    .map(|v| v as f32)
                    .map_err(|_| format!("matches score_regex with {:?}, not a number", m.as_str()))
            }
            (ScoreFrom::Field(field), _) => {
                let json = parse_reply(strip_fences(answer).as_bytes())
                    .map_err(|_| "is not JSON (score_field reads it as JSON)".to_string())?;
                let v = field
                    .split('.')
                    .try_fold(&json, |v, k| v.get(k))
                    .ok_or_else(|| format!("has no field {field:?}"))?;
                match v {
                    Value::Number(n) => Ok(n.as_f64().unwrap_or(f64::NAN) as f32),
                    Value::Null => Ok(f32::NAN),
                    Value::String(s) => s
                        .trim()
                        .parse::<f64>()
                        .map(|v| v as f32)
                        .map_err(|_| format!("has {field:?} = {s:?}, not a number")),
                    other => Err(format!("has {field:?} = {other}, not a number")),
                }
            }
            (ScoreFrom::Regex(_), None) => unreachable!("compiled at load"),
        }
    }
}

/// The answer's text: `choices[0].message.content`, a string or a list of text parts.
fn answer_of(reply: &Value) -> Option<String> {
    let content = &reply["choices"][0]["message"]["content"];
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(""),
        ),
        _ => None,
    }
}

/// An answer without the Markdown code fence models like to put around JSON.
fn strip_fences(answer: &str) -> &str {
    let t = answer.trim();
    let Some(inner) = t.strip_prefix("```") else {
        return t;
    };
    let inner = inner.strip_suffix("```").unwrap_or(inner);
    // Drop a language tag on the opening fence's line (```json).
    match inner.split_once('\n') {
        Some((tag, rest)) if !tag.trim_start().starts_with(['{', '[']) => rest.trim(),
        _ => inner.trim(),
    }
}

impl Reward for JudgeReward {
    fn info(&self) -> RewardInfo {
        RewardInfo {
            name: self.name.clone(),
            version: text::name(&self.spec.server.model),
            higher_is_better: true,
            batch_hint: None,
        }
    }

    fn score(&mut self, samples: &[Sample]) -> Result<Vec<Score>, RewardError> {
        let this = &*self;
        let (results, stats) =
            in_flight(samples.len(), self.spec.server.concurrency, |i, stats| {
                this.judge(&samples[i], stats).map(|v| vec![v])
            });
        self.stats.add(&stats);
        scores(results, || self.info().label()).map_err(|e| redacted(e, &self.client))
    }

    fn take_call_stats(&mut self) -> Option<CallStats> {
        self.stats.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_and_parts_are_read_through() {
        assert_eq!(
            strip_fences("```json\n{\"score\": 3}\n```"),
            "{\"score\": 3}"
        );
        assert_eq!(strip_fences("```{\"a\":1}```"), "{\"a\":1}");
        assert_eq!(strip_fences(" {\"a\":1} "), "{\"a\":1}");
        let reply = json!({"choices": [{"message": {"content": [{"type": "text", "text": "Score: "}, {"type": "text", "text": "7"}]}}]});
        assert_eq!(answer_of(&reply).unwrap(), "Score: 7");
        assert_eq!(answer_of(&json!({"choices": []})), None);
    }
}
