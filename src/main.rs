//! `hrf-engine`: the hrf command line (started through the `hrf` launcher, which finds libtorch).
//! Thin: parse, set up, call into the host crates, map the outcome to an exit code
//! (0 ok, 1 failed, 2 usage or configuration error).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod doctor;

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
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let result = match cli.command {
        Command::Doctor { device } => match hrf_diffusion::device::parse_device(&device) {
            Ok(device) => doctor::run(device),
            Err(e) => {
                eprintln!("error: --{e}");
                return ExitCode::from(2);
            }
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
