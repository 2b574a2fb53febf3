//! The named Stable Diffusion configs (SD 1.5, SD 2.1 base) build, on CPU with random weights,
//! UNets, VAE decoders and text encoders with exactly the parameter counts diffusers and
//! transformers report for the same configs (fixture by tools/parity/make_named_counts.py:
//! SD 1.5's UNet 859,520,964, text encoder 123,060,480). One model at a time (the UNets are
//! 3.4 GB in fp32).

use std::path::PathBuf;

use hrf_diffusion::clip_text::ClipTextModel;
use hrf_diffusion::named::{named, NAMES};
use hrf_diffusion::unet_cond::UNet2DConditionModel;
use hrf_diffusion::vae::VaeDecoder;
use tch::{nn::VarStore, Device};

fn count(vs: &VarStore) -> u64 {
    vs.variables().values().map(|t| t.numel() as u64).sum()
}

#[test]
fn named_configs_have_diffusers_parameter_counts() {
    let f: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/named_counts.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for name in NAMES {
        let want = &f["counts"][name];
        let (unet, vae, text) = named(name).unwrap();
        let n = count(&UNet2DConditionModel::new(unet, Device::Cpu).unwrap().vs);
        assert_eq!(n, want["unet"].as_u64().unwrap(), "{name} unet");
        let n = count(&VaeDecoder::new(vae, Device::Cpu).unwrap().vs);
        assert_eq!(
            n,
            want["vae_decoder"].as_u64().unwrap(),
            "{name} vae decoder"
        );
        let n = count(&ClipTextModel::new(text, Device::Cpu).unwrap().vs);
        assert_eq!(
            n,
            want["text_encoder"].as_u64().unwrap(),
            "{name} text encoder"
        );
    }
    assert!(named("sd-3").unwrap_err().contains("sd-1.5, sd-2.1-base"));
}
