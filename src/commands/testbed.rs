//! The bundled testbed's files (models/) and `hrf testbed`: checks of the shipped ONNX models on
//! the real Fashion-MNIST test split.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use hrf_core::{Channels, Image, Sample};
use hrf_rewards::builtin::{self, EVAL_CLASSIFIER, REWARD_CLASSIFIER};
use hrf_rewards::onnx::{preprocess, ImageInput, OnnxModel};

/// Class names beside a model's config.json (written by `hrf pretrain`).
pub const CLASSES_FILE: &str = "classes.json";

/// Where the shipped models live: `HRF_MODELS`, else `./models`, else the repository's
/// `models/` two levels above the binary (target/release/).
pub fn models_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HRF_MODELS") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from("models");
    if local.join(REWARD_CLASSIFIER).exists() {
        return local;
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| {
            e.parent()
                .and_then(|p| p.parent())
                .and_then(|p| p.parent())
                .map(|p| p.join("models"))
        })
        .filter(|p| p.exists())
        .unwrap_or(local)
}

/// The class names of a model folder, if it is class-conditional.
pub fn class_names(model_dir: &Path, num_class_embeds: Option<i64>) -> anyhow::Result<Vec<String>> {
    let file = hrf_diffusion::DiffusersModel::resolve_dir(model_dir).join(CLASSES_FILE);
    if file.exists() {
        let text = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
        return serde_json::from_str(&text).with_context(|| file.display().to_string());
    }
    // Without a classes.json, classes are numbered (the last embedding is the null class).
    Ok((0..num_class_embeds.unwrap_or(1) - 1)
        .map(|i| format!("class {i}"))
        .collect())
}

fn accuracy(model: &Path, images: &[Image], labels: &[u16]) -> anyhow::Result<f64> {
    let mut m = OnnxModel::load(model)?;
    let mut correct = 0usize;
    for (chunk, lab) in images.chunks(1000).zip(labels.chunks(1000)) {
        let (shape, data) = preprocess(&ImageInput::default(), m.input_shape(), chunk)
            .map_err(anyhow::Error::msg)?;
        let outs = m.run(None, shape, data)?;
        let probs = &outs[0].1;
        let k = probs.len() / chunk.len();
        for (row, &y) in probs.chunks(k).zip(lab) {
            let pred = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i);
            correct += usize::from(pred == y as usize);
        }
    }
    Ok(correct as f64 / images.len() as f64)
}

/// "Detail", what the aesthetic model prefers: mean |difference| between neighbouring pixels
/// (horizontal plus vertical) of the 28×28 original scaled to [0, 1].
pub fn detail(pixels: &[u8], w: usize, h: usize) -> f64 {
    let px = |x: usize, y: usize| pixels[y * w + x] as f64 / 255.0;
    let dx: f64 = (0..h)
        .flat_map(|y| (1..w).map(move |x| (x, y)))
        .map(|(x, y)| (px(x, y) - px(x - 1, y)).abs())
        .sum::<f64>()
        / (h * (w - 1)) as f64;
    let dy: f64 = (1..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .map(|(x, y)| (px(x, y) - px(x, y - 1)).abs())
        .sum::<f64>()
        / ((h - 1) * w) as f64;
    dx + dy
}

pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let ranks = |v: &[f64]| {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        for (rank, i) in idx.into_iter().enumerate() {
            r[i] = rank as f64;
        }
        r
    };
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// `hrf testbed`: accuracy of both classifiers on the 10k real test images, and what the aesthetic
/// model prefers (Spearman with "detail" on 1,000 test images; a blank image's score).
pub fn run(models: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let models = models.unwrap_or_else(models_dir);
    let raw = hrf_data::fashion_mnist(None, hrf_data::Split::Test)?;
    let test = raw.clone().fit_to(32, 0);
    let images: Vec<Image> = (0..test.len()).map(|i| test.image(i)).collect();
    let mut ok = true;
    for (name, file) in [
        ("reward classifier", REWARD_CLASSIFIER),
        ("eval classifier", EVAL_CLASSIFIER),
    ] {
        let acc = accuracy(&models.join(file), &images, &test.labels)?;
        ok &= acc >= 0.9;
        println!(
            "{name:<18} {file:<24} test accuracy {:.2}% on {} real images",
            acc * 100.0,
            images.len()
        );
    }
    let mut aesthetic = builtin::builtin("aesthetic", &models, &[]).map_err(anyhow::Error::msg)?;
    let samples: Vec<Sample> = images[..1000]
        .iter()
        .map(|img| Sample {
            image: img.clone(),
            prompt: None,
            metadata: serde_json::Value::Null,
        })
        .collect();
    let scores: Vec<f64> = aesthetic
        .score(&samples)?
        .iter()
        .map(|s| s.value as f64)
        .collect();
    let details: Vec<f64> = (0..1000).map(|i| detail(raw.pixels(i), 28, 28)).collect();
    let rho = spearman(&scores, &details);
    let blank = Sample {
        image: Image::new(32, 32, Channels::L8, vec![0; 1024])?,
        prompt: None,
        metadata: serde_json::Value::Null,
    };
    let blank_score = aesthetic.score(&[blank])?[0].value as f64;
    let max = scores.iter().copied().fold(f64::MIN, f64::max);
    let median = {
        let mut s = scores.clone();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    ok &= rho >= 0.8 && blank_score < max;
    println!("aesthetic          prefers detail (mean |neighbour difference|): Spearman {rho:.3} on 1000 real test images");
    println!("aesthetic          blank image scores {blank_score:.3}; real images: median {median:.3}, max {max:.3}");
    println!(
        "{}",
        if ok {
            "testbed: ok"
        } else {
            "testbed: below target (see above)"
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn spearman_and_detail() {
        assert!((super::spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 35.0]) - 1.0).abs() < 1e-12);
        assert!((super::spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(super::detail(&[0; 16], 4, 4), 0.0);
        // A vertical stripe pattern: every horizontal neighbour differs by 1, no vertical one does.
        let stripes: Vec<u8> = (0..16).map(|i| if i % 2 == 0 { 0 } else { 255 }).collect();
        assert!((super::detail(&stripes, 4, 4) - 1.0).abs() < 1e-12);
    }
}
