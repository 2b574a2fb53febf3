//! Named Stable Diffusion configs: the `config.json`s of the UNet, VAE and text encoder of
//! Stable Diffusion 1.5 and 2.1 (base, 512), as published with the models (each file in
//! `host/hrf-diffusion/named/` names its source), so that hrf can build the architectures without
//! the weights. A test checks that each part built from them has exactly the parameter count
//! diffusers and transformers report for the same configs.

use crate::clip_text::ClipTextConfig;
use crate::unet_cond::UNetCondConfig;
use crate::vae::VaeConfig;

/// The named pipelines: `sd-1.5`, `sd-2.1-base`.
pub const NAMES: [&str; 2] = ["sd-1.5", "sd-2.1-base"];

/// A named pipeline's three configs, as JSON text: (unet, vae, text_encoder).
fn texts(name: &str) -> Option<(&'static str, &'static str, &'static str)> {
    match name {
        "sd-1.5" => Some((
            include_str!("../named/sd-1.5/unet.json"),
            include_str!("../named/sd-1.5/vae.json"),
            include_str!("../named/sd-1.5/text_encoder.json"),
        )),
        "sd-2.1-base" => Some((
            include_str!("../named/sd-2.1-base/unet.json"),
            include_str!("../named/sd-2.1-base/vae.json"),
            include_str!("../named/sd-2.1-base/text_encoder.json"),
        )),
        _ => None,
    }
}

/// The configs of a named pipeline; an unknown name lists the known ones.
pub fn named(name: &str) -> Result<(UNetCondConfig, VaeConfig, ClipTextConfig), String> {
    let (u, v, t) = texts(name).ok_or_else(|| {
        format!(
            "unknown pipeline {name:?}; named ones: {}",
            NAMES.join(", ")
        )
    })?;
    let parse = |what: &str, e: serde_json::Error| format!("{name}/{what}.json: {e}");
    Ok((
        serde_json::from_str(u).map_err(|e| parse("unet", e))?,
        serde_json::from_str(v).map_err(|e| parse("vae", e))?,
        serde_json::from_str(t).map_err(|e| parse("text_encoder", e))?,
    ))
}
