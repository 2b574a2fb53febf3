//! The VAE decoder against diffusers' AutoencoderKL: a tiny random one saved with
//! save_pretrained and its `decode(z / scaling_factor)` of fixed latents (fixture by
//! tools/parity/make_vae_fixture.py), within 1e-4 (fp32, CPU).

use std::path::PathBuf;

use hrf_diffusion::vae::VaeDecoder;
use tch::{Device, Tensor};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vae")
}

fn flat(v: &serde_json::Value, out: &mut Vec<f32>) {
    match v {
        serde_json::Value::Array(a) => a.iter().for_each(|x| flat(x, out)),
        x => out.push(x.as_f64().unwrap() as f32),
    }
}

#[test]
fn decodings_match_diffusers() {
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("decoded.json")).unwrap())
            .unwrap();
    let vae = VaeDecoder::load(&fixture(), Device::Cpu).unwrap();
    assert_eq!(
        vae.config.scaling_factor,
        f["scaling_factor"].as_f64().unwrap()
    );
    let (mut z, mut want) = (Vec::new(), Vec::new());
    flat(&f["latents"], &mut z);
    flat(&f["images"], &mut want);
    let z = Tensor::from_slice(&z).view([2, 4, 8, 8]);
    let want = Tensor::from_slice(&want).view([2, 3, 16, 16]);
    let got = tch::no_grad(|| vae.decode(&(&z / vae.config.scaling_factor)));
    assert_eq!(got.size(), [2, 3, 16, 16]);
    let err = (&got - &want).abs().max().double_value(&[]);
    let spread = want.std(false).double_value(&[]);
    eprintln!("VAE decode: max abs error {err:e} against diffusers (output std {spread:.3})");
    assert!(err <= 1e-4, "max abs error {err:e}");
    assert!(spread > 0.01, "the fixture's images vary");
    // The pipeline's images in [0, 1].
    let img = tch::no_grad(|| vae.decode_latents(&z));
    let expect = (&want / 2.0 + 0.5).clamp(0.0, 1.0);
    assert!((&img - &expect).abs().max().double_value(&[]) <= 1e-4);
}

#[test]
fn a_decoder_of_another_shape_is_refused_naming_the_keys() {
    let dir = std::env::temp_dir().join(format!("hrf-vae-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = std::fs::read_to_string(fixture().join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"latent_channels\": 4", "\"latent_channels\": 8"),
    )
    .unwrap();
    std::fs::copy(
        fixture().join("diffusion_pytorch_model.safetensors"),
        dir.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let e = VaeDecoder::load(&dir, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("post_quant_conv.weight: shape"), "{e}");
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"norm_num_groups\": 4", "\"norm_num_groups\": 3"),
    )
    .unwrap();
    let e = VaeDecoder::load(&dir, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("norm_num_groups 3"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}
