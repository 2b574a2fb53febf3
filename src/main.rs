//! `hrf-engine`: the hrf command line (started through the `hrf` launcher, which finds libtorch).
//! Thin: parse, set up, call into the host crates, map the outcome to an exit code
//! (0 ok, 1 failed, 2 usage or configuration error, 130 interrupted).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod signals;
mod usage;

use commands::{compare, diagnose, doctor, eval, export, plugins, pretrain, run, sample, testbed};
pub use usage::UsageError;

#[derive(Parser)]
#[command(
    name = "hrf",
    bin_name = "hrf",
    version,
    about = "Fine-tune diffusion models with reinforcement learning without collapsing their diversity (DDPO, HRF, HRF-D)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print what hrf found (device, CUDA, libtorch and onnxruntime versions and paths, the
    /// testbed data) and run a UNet forward pass on the chosen device.
    Doctor {
        /// auto, cpu, cuda or cuda:N
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Pretrain a base model with DDPM (class-conditional with a null class) from a pipeline file.
    Pretrain {
        pipeline: PathBuf,
        /// Continue from the newest checkpoint in the pipeline's output folder.
        #[arg(long)]
        resume: bool,
        /// No progress bar; a log line every `log_every` steps instead.
        #[arg(short, long)]
        quiet: bool,
        /// Override a field: `--set training.steps=8000` (repeatable; recorded in the run's
        /// pipeline.yaml).
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        sets: Vec<String>,
    },
    /// Fine-tune a model with reinforcement learning as a pipeline file says (training.method:
    /// ddpo-is, ddpo-sf, hrf or hrf-d).
    Run(run::RunArgs),
    /// Check a pipeline file: every problem, with its place, at once.
    Validate {
        pipeline: PathBuf,
        /// Overrides, as for `hrf run`.
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        sets: Vec<String>,
    },
    /// Print the JSON schema of pipeline files.
    Schema,
    /// Sample a grid of images from a model folder (deterministic per seed).
    Sample(sample::SampleArgs),
    /// Evaluate a model on fixed-seed samples: diversity, fidelity and class metrics with the
    /// independent evaluation classifier, and the mean of any named rewards.
    Eval(eval::EvalArgs),
    /// Merge a LoRA folder a run wrote into its Stable Diffusion pipeline: a full diffusers
    /// folder (`hrf export --merge RUN/final -o DIR`).
    Export(export::ExportArgs),
    /// Finished runs side by side: a Markdown table (final reward, gain over the base model,
    /// diversity, fidelity, cost) with mean ± std over seeds, plots and sample grids.
    Compare(compare::CompareArgs),
    /// Diagnostics of a model: `renoise` re-noises samples to each step k and measures how much
    /// a re-run from k changes (reward, class, pixels): is the model coarse to fine?
    #[command(subcommand)]
    Diagnose(diagnose::DiagnoseCommand),
    /// Reward plugins: check one (info and a scored batch), list the WIT versions this hrf runs.
    #[command(subcommand)]
    Plugins(plugins::PluginsCommand),
    /// Check the bundled ONNX models on the real Fashion-MNIST test split: both classifiers'
    /// accuracy, and the aesthetic model's preference.
    Testbed {
        /// The models folder (default: HRF_MODELS, ./models, or the repository's models/).
        #[arg(long)]
        models: Option<PathBuf>,
    },
}

/// libtorch frees and allocates its activations anew on every pass; glibc hands blocks over
/// 128 KiB back to the kernel (mmap, then trimming the heap), so each pass pays page faults and
/// the zeroing of fresh pages. Blocks up to 32 MiB (glibc's largest mmap threshold) stay in the
/// heap, and the heap is not trimmed below 1 GiB: a testbed training pass on 2 CPU cores runs
/// about 4% faster (tools/bench/ddpo_epoch.sh). Results do not change: libtorch aligns every
/// buffer to 64 bytes wherever it lies.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    keep_freed_memory();
    // HRF_THREADS caps libtorch's intra-op threads (e.g. to share a small machine).
    if let Some(n) = std::env::var("HRF_THREADS")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        tch::set_num_threads(n.max(1));
    }
    let result = match cli.command {
        Command::Doctor { device } => match hrf_diffusion::device::parse_device(&device) {
            Ok(device) => doctor::run(device),
            Err(e) => {
                eprintln!("error: --{e}");
                return ExitCode::from(2);
            }
        },
        Command::Pretrain {
            pipeline,
            resume,
            quiet,
            sets,
        } => pretrain::run(&pipeline, &sets, resume, quiet),
        Command::Run(args) => run::run(args),
        Command::Validate { pipeline, sets } => run::validate(&pipeline, &sets),
        Command::Schema => run::schema(),
        Command::Sample(args) => sample::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Export(args) => export::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Diagnose(cmd) => diagnose::run(cmd),
        Command::Plugins(cmd) => plugins::run(cmd),
        Command::Testbed { models } => testbed::run(models),
    };
    match result {
        Ok(code) => code,
        Err(e) if e.is::<UsageError>() => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes on one line, each cause once: an error whose message already
/// quotes its source (e.g. "path: No such file (os error 2)") does not repeat it.
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}
