//! UNet2DConditionModel against diffusers: two tiny random ones (SD 1.x's shape: heads from
//! attention_head_dim, conv projections; SD 2.x's: per-level heads, linear projections) saved
//! with save_pretrained, and their noise predictions for fixed latents, timesteps and text
//! states (fixture by tools/parity/make_unet_cond_fixture.py), within 1e-4 (fp32, CPU).

use std::path::PathBuf;

use hrf_diffusion::unet_cond::UNet2DConditionModel;
use tch::{Device, Tensor};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet-cond")
}

fn flat(v: &serde_json::Value, out: &mut Vec<f32>) {
    match v {
        serde_json::Value::Array(a) => a.iter().for_each(|x| flat(x, out)),
        x => out.push(x.as_f64().unwrap() as f32),
    }
}

fn tensor(v: &serde_json::Value, shape: &[i64]) -> Tensor {
    let mut out = Vec::new();
    flat(v, &mut out);
    Tensor::from_slice(&out).view(shape)
}

#[test]
fn noise_predictions_match_diffusers() {
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("outputs.json")).unwrap())
            .unwrap();
    let x = tensor(&f["x"], &[2, 4, 8, 8]);
    let ctx = tensor(&f["context"], &[2, 7, 16]);
    let t = Tensor::from_slice(&[10i64, 700]);
    let mut outputs = Vec::new();
    for name in ["sd1", "sd2"] {
        let unet = UNet2DConditionModel::load(&fixture().join(name), Device::Cpu).unwrap();
        let got = tch::no_grad(|| unet.forward(&x, &t, &ctx));
        let want = tensor(&f["outputs"][name], &[2, 4, 8, 8]);
        let err = (&got - &want).abs().max().double_value(&[]);
        let spread = want.std(false).double_value(&[]);
        eprintln!("{name}: max abs error {err:e} against diffusers (output std {spread:.3})");
        assert!(err <= 1e-4, "{name}: max abs error {err:e}");
        outputs.push(got);
    }
    // The text states matter: other states, another prediction.
    let unet = UNet2DConditionModel::load(&fixture().join("sd1"), Device::Cpu).unwrap();
    let other = tch::no_grad(|| unet.forward(&x, &t, &(&ctx * -1.0)));
    let moved = (&other - &outputs[0]).abs().max().double_value(&[]);
    assert!(
        moved > 1e-3,
        "cross-attention moved the output by {moved:e}"
    );
}
