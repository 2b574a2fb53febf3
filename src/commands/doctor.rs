//! `hrf doctor`: what this machine gives hrf, and a UNet forward pass to prove libtorch works.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use hrf_diffusion::{device, DiffusersModel, UNetConfig};
use tch::{Device, Kind, Tensor};

const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

fn line(what: &str, value: impl std::fmt::Display) {
    println!("{what:<14} {value}");
}

pub fn run(dev: Device) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    line("hrf", env!("CARGO_PKG_VERSION"));

    let lt = device::libtorch();
    line(
        "libtorch",
        format!(
            "{} at {}",
            lt.version.as_deref().unwrap_or("unknown version"),
            lt.lib_dir
                .as_deref()
                .map_or("?".into(), |p| p.display().to_string())
        ),
    );
    let cuda = match (&lt.cuda_library, &lt.cuda_error) {
        (Some(p), _) => format!(
            "backend {} ; available: {} ; devices: {} ; cuDNN: {}",
            p.display(),
            tch::Cuda::is_available(),
            tch::Cuda::device_count(),
            tch::Cuda::cudnn_is_available()
        ),
        (None, Some(e)) => format!("libtorch_cuda.so failed to load: {e}"),
        (None, None) => "no (this libtorch has no CUDA backend)".into(),
    };
    line("CUDA", cuda);
    line("device", format!("{dev:?}"));
    line("threads", tch::get_num_threads());

    match hrf_rewards::onnx_runtime::init() {
        Ok(rt) => line(
            "onnxruntime",
            format!("{} at {}", rt.version, rt.path.display()),
        ),
        Err(e) => {
            ok = false;
            line("onnxruntime", format!("MISSING: {e}"));
        }
    }

    let data = Path::new(FASHION_MNIST);
    let files = [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ];
    let missing: Vec<_> = files.iter().filter(|f| !data.join(f).exists()).collect();
    if missing.is_empty() {
        line("Fashion-MNIST", format!("{} (4 IDX files)", data.display()));
    } else {
        ok = false;
        line(
            "Fashion-MNIST",
            format!(
                "MISSING {missing:?} under {} (apt-get install dataset-fashion-mnist)",
                data.display()
            ),
        );
    }

    let cfg = UNetConfig::testbed();
    let model = DiffusersModel::new_seeded(&cfg, dev, 0).context("building the testbed UNet")?;
    let b = 8;
    let x = hrf_diffusion::init::keyed_normal(&[0], &[b, cfg.in_channels, 32, 32]).to_device(dev);
    let t = Tensor::arange_start_step(0, 1000, 1000 / b, (Kind::Int64, dev));
    let y = Tensor::arange(b, (Kind::Int64, dev)).remainder(11);
    let forward = || tch::no_grad(|| model.unet.forward(&x, &t, Some(&y)));
    let _ = forward(); // warm-up
    let start = Instant::now();
    let out = forward();
    if dev != Device::Cpu {
        tch::Cuda::synchronize(0);
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let finite = out.isfinite().all().int64_value(&[]) == 1;
    ok &= finite && out.size() == x.size();
    line(
        "UNet forward",
        format!(
            "testbed UNet ({} parameters), batch {b}: output {:?} in {ms:.1} ms, {}",
            model.num_parameters(),
            out.size(),
            if finite { "finite" } else { "NOT FINITE" }
        ),
    );
    println!(
        "{}",
        if ok {
            "doctor: ok"
        } else {
            "doctor: problems found (see above)"
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
