//! `hrf plugins`: inspect and try reward plugins outside a run.

use std::path::PathBuf;
use std::process::ExitCode;

use hrf_config::pipeline::WasmSpec;
use hrf_core::{Channels, Image, Reward, Sample};
use hrf_plugins::factory::wasm_settings;
use hrf_plugins::native::{NativeReward, NativeSettings};
use hrf_plugins::WasmReward;

use crate::usage::UsageError;

#[derive(clap::Subcommand)]
pub enum PluginsCommand {
    /// Load a reward plugin (a WASM component, or with --allow-native a native .so), print its
    /// info, and score a batch of real Fashion-MNIST test images (blank ones without the data).
    Check {
        /// The component (.wasm) or native library (.so, .dylib).
        file: PathBuf,
        /// Load a native plugin (it runs with all of hrf's rights).
        #[arg(long)]
        allow_native: bool,
        /// The plugin's config, as JSON (what a pipeline's `config:` would hold).
        #[arg(long, default_value = "{}")]
        config: String,
        /// Samples to score.
        #[arg(short, default_value_t = 8)]
        n: usize,
        #[arg(long, default_value_t = 5.0)]
        timeout_s: f64,
        #[arg(long, default_value_t = 256)]
        memory_mb: u64,
        #[arg(long)]
        fuel: Option<u64>,
        /// An ONNX model the plugin may run through the host, as NAME=PATH (repeatable).
        #[arg(long = "model")]
        models: Vec<String>,
    },
    /// The `hrf:reward` WIT versions this hrf runs.
    Versions,
}

fn test_images(n: usize) -> Vec<Image> {
    match hrf_data::fashion_mnist(None, hrf_data::Split::Test) {
        Ok(test) => {
            let test = test.fit_to(32, 0);
            (0..n.min(test.len())).map(|i| test.image(i)).collect()
        }
        Err(e) => {
            eprintln!("note: {e}; scoring blank 32×32 images");
            (0..n)
                .map(|_| Image::new(32, 32, Channels::L8, vec![0; 32 * 32]).expect("size"))
                .collect()
        }
    }
}

pub fn run(cmd: PluginsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PluginsCommand::Versions => {
            for v in hrf_plugins::SUPPORTED_VERSIONS {
                println!("{}@{v}", hrf_plugins::PACKAGE);
            }
            Ok(ExitCode::SUCCESS)
        }
        PluginsCommand::Check {
            file,
            config,
            n,
            timeout_s,
            memory_mb,
            fuel,
            models,
            allow_native,
        } => {
            let config: serde_json::Value = serde_json::from_str(&config)
                .map_err(|e| UsageError(format!("--config: not JSON: {e}")))?;
            let name = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "plugin".into());
            let spec = WasmSpec {
                path: file.clone(),
                config,
                timeout_s,
                memory_mb,
                fuel,
                sha256: None,
                models: models
                    .iter()
                    .map(|m| {
                        m.split_once('=')
                            .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
                            .ok_or_else(|| UsageError(format!("--model {m}: NAME=PATH expected")))
                    })
                    .collect::<Result<_, _>>()?,
            };
            let started = std::time::Instant::now();
            let native = matches!(
                file.extension().and_then(|e| e.to_str()),
                Some("so" | "dylib")
            );
            let (mut r, interface): (Box<dyn Reward>, String) = if native {
                let r = NativeReward::load(NativeSettings {
                    name: name.clone(),
                    path: file.clone(),
                    config: spec.config.clone(),
                    trusted_by_pipeline: true,
                    allowed_by_command_line: allow_native,
                })?;
                (
                    Box::new(r),
                    format!("native ABI {}", hrf_plugins::native::ABI_VERSION),
                )
            } else {
                let r = WasmReward::load(wasm_settings(&name, &spec, 0))?;
                let v = format!("{}@{}", hrf_plugins::PACKAGE, r.interface_version());
                (Box::new(r), v)
            };
            let load_s = started.elapsed().as_secs_f64();
            let info = r.info();
            println!(
                "{}: {interface}, {} {}, higher is better: {}, batch hint: {}, sha256 {}",
                file.display(),
                name,
                info.version,
                info.higher_is_better,
                info.batch_hint
                    .map_or("none".to_string(), |b| b.to_string()),
                hrf_plugins::file_sha256(&file)?
            );
            let samples: Vec<Sample> = test_images(n)
                .into_iter()
                .map(|image| Sample {
                    image,
                    prompt: None,
                    metadata: serde_json::json!({"check": true}),
                })
                .collect();
            let t = std::time::Instant::now();
            let scores = r.score(&samples)?;
            hrf_core::check_scores(&r.info(), samples.len(), &scores)?;
            let score_s = t.elapsed().as_secs_f64();
            for (i, s) in scores.iter().enumerate() {
                let extras: Vec<String> =
                    s.extras.iter().map(|(k, v)| format!("{k} {v}")).collect();
                println!("  sample {i}: {}  {}", s.value, extras.join(", "));
            }
            println!(
                "loaded (compiled or cached, instantiated, configured) in {load_s:.3} s; scored {} samples in {score_s:.4} s",
                samples.len()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
