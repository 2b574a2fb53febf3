//! A UNet with its variables and scheduler settings, as a diffusers model folder holds them:
//! `config.json`, `diffusion_pytorch_model.safetensors`, and optionally `scheduler_config.json`
//! (beside them, or in `../scheduler/` when the folder is a pipeline's `unet/`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::{DiffusionError, SchedulerConfig, UNet2DModel, UNetConfig};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
pub const SCHEDULER_FILE: &str = "scheduler_config.json";

pub struct DiffusersModel {
    pub vs: VarStore,
    pub unet: UNet2DModel,
    /// From the folder's scheduler_config.json, when it has one.
    pub scheduler: Option<SchedulerConfig>,
}

/// Older diffusers checkpoints (google/ddpm-*) name attention weights query/key/value/proj_attn.
pub(crate) fn modern_key(key: &str) -> String {
    for (old, new) in [
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ] {
        if key.contains(".attentions.") && key.contains(old) {
            return key.replacen(old, new, 1);
        }
    }
    key.to_string()
}

/// Writes a folder atomically: `fill` writes into a temporary folder beside `dir`, which then
/// replaces `dir` by renames, so a crash leaves either the old folder or the new one.
pub fn write_folder(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), DiffusionError>,
) -> Result<(), DiffusionError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DiffusionError::Io { path, source }
    };
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    fill(&tmp)?;
    if dir.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(dir, &old).map_err(io(dir))?;
        std::fs::rename(&tmp, dir).map_err(io(dir))?;
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    } else {
        std::fs::rename(&tmp, dir).map_err(io(dir))?;
    }
    Ok(())
}

fn torch_err(op: &'static str, path: &Path) -> impl FnOnce(tch::TchError) -> DiffusionError {
    let path = path.to_path_buf();
    move |source| DiffusionError::Torch { op, path, source }
}

impl DiffusersModel {
    /// A freshly initialised model (PyTorch's default initialisation, as diffusers).
    pub fn new(config: &UNetConfig, device: Device) -> Result<Self, DiffusionError> {
        config
            .validate()
            .map_err(|message| DiffusionError::Model { message })?;
        let vs = VarStore::new(device);
        let unet = UNet2DModel::new(&vs.root(), config);
        Ok(Self {
            vs,
            unet,
            scheduler: None,
        })
    }

    /// A freshly initialised model whose initial weights depend on `seed` alone: PyTorch's default
    /// distributions drawn from streams keyed by (seed, variable name), never from libtorch's
    /// process-global generator (which concurrent callers would race on).
    pub fn new_seeded(
        config: &UNetConfig,
        device: Device,
        seed: u64,
    ) -> Result<Self, DiffusionError> {
        let model = Self::new(config, device)?;
        crate::init::init_keyed(&model.vs, seed);
        Ok(model)
    }

    /// Resolves a model folder: a UNet folder, or a pipeline folder with `unet/`.
    pub fn resolve_dir(dir: &Path) -> PathBuf {
        if !dir.join(CONFIG_FILE).exists() && dir.join("unet").join(CONFIG_FILE).exists() {
            dir.join("unet")
        } else {
            dir.to_path_buf()
        }
    }

    /// Loads a diffusers UNet2DModel folder onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<Self, DiffusionError> {
        let dir = Self::resolve_dir(dir);
        let config = UNetConfig::from_json_file(&dir.join(CONFIG_FILE))?;
        let mut model = Self::new(&config, device)?;
        model.load_weights(&dir.join(WEIGHTS_FILE))?;
        let sched = [
            dir.join(SCHEDULER_FILE),
            dir.join("..").join("scheduler").join(SCHEDULER_FILE),
        ]
        .into_iter()
        .find(|p| p.exists());
        model.scheduler = sched
            .map(|p| SchedulerConfig::from_json_file(&p))
            .transpose()?;
        Ok(model)
    }

    /// Copies a safetensors file into the variables; every variable must be present with its shape,
    /// and no tensor may be left over. Half-precision weights are converted.
    pub fn load_weights(&mut self, path: &Path) -> Result<(), DiffusionError> {
        if !path.exists() {
            let bin = path.with_file_name("diffusion_pytorch_model.bin");
            let hint = if bin.exists() {
                " (only a .bin pickle is there: convert it with Python `safetensors.torch.save_file`)"
            } else {
                ""
            };
            return Err(DiffusionError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("weights file not found{hint}"),
                ),
            });
        }
        load_strict(&self.vs, path, |k| Some(modern_key(k)))
    }
    /// Writes the folder (config, weights, scheduler settings) to `dir` atomically: everything is
    /// written under a temporary name beside it, then renamed into place.
    pub fn save(
        &self,
        dir: &Path,
        scheduler: Option<&SchedulerConfig>,
    ) -> Result<(), DiffusionError> {
        write_folder(dir, |tmp| {
            let io = |source| DiffusionError::Io {
                path: tmp.to_path_buf(),
                source,
            };
            let json =
                |v: serde_json::Value| serde_json::to_string_pretty(&v).expect("json") + "\n";
            std::fs::write(
                tmp.join(CONFIG_FILE),
                json(self.unet.config().to_diffusers_json()),
            )
            .map_err(io)?;
            if let Some(s) = scheduler.or(self.scheduler.as_ref()) {
                std::fs::write(tmp.join(SCHEDULER_FILE), json(s.to_diffusers_json()))
                    .map_err(io)?;
            }
            let mut named: Vec<(String, Tensor)> = self
                .vs
                .variables()
                .into_iter()
                .map(|(k, v)| (k, v.detach().to_device(Device::Cpu).contiguous()))
                .collect();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            let weights = tmp.join(WEIGHTS_FILE);
            Tensor::write_safetensors(&named, &weights).map_err(torch_err("writing", &weights))
        })
    }

    pub fn num_parameters(&self) -> i64 {
        self.vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }
}

/// A part of a model folder (`unet/`, `vae/`, `text_encoder/`): `dir/config.json` read and
/// validated, the model built from it, and its weights file `weights` loaded by
/// [`load_strict`] (file keys through `rename`).
pub(crate) fn load_part<C: serde::de::DeserializeOwned, M>(
    dir: &Path,
    weights: &str,
    validate: impl FnOnce(&C) -> Result<(), String>,
    build: impl FnOnce(C) -> Result<M, String>,
    vs: fn(&M) -> &tch::nn::VarStore,
    rename: impl Fn(&str) -> Option<String>,
) -> Result<M, DiffusionError> {
    let config_path = dir.join("config.json");
    let config: C = crate::read_json_config(&config_path, validate)?;
    let model = build(config).map_err(|message| DiffusionError::Config {
        path: config_path,
        message,
    })?;
    let weights = weights_file(dir, weights).map_err(|path| DiffusionError::Io {
        path,
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "weights file not found"),
    })?;
    load_strict(vs(&model), &weights, rename)?;
    Ok(model)
}

/// The weights file `name` of a part folder, else its half-precision variant as
/// `from_pretrained(…, variant="fp16")` downloads it (`name.fp16.safetensors`, or `.bf16`);
/// the path of the file looked for when neither is there.
pub fn weights_file(dir: &Path, name: &str) -> Result<PathBuf, PathBuf> {
    let full = dir.join(name);
    if full.exists() {
        return Ok(full);
    }
    let stem = name.strip_suffix(".safetensors").unwrap_or(name);
    ["fp16", "bf16"]
        .iter()
        .map(|v| dir.join(format!("{stem}.{v}.safetensors")))
        .find(|p| p.exists())
        .ok_or(full)
}

/// Copies the safetensors file `path` into the variables of `vs`, each file key passed through
/// `rename` first (`None`: a tensor of another part of the file, read past): every variable must
/// be present with its shape, and no other tensor may be left over. Half-precision weights are
/// converted.
pub(crate) fn load_strict(
    vs: &tch::nn::VarStore,
    path: &Path,
    rename: impl Fn(&str) -> Option<String>,
) -> Result<(), DiffusionError> {
    let tensors = Tensor::read_safetensors(path).map_err(torch_err("reading", path))?;
    let mut given: HashMap<String, Tensor> = tensors
        .into_iter()
        .filter_map(|(k, t)| Some((rename(&k)?, t)))
        .collect();
    let mut vars = vs.variables();
    let mut problems = Vec::new();
    let mut missing = BTreeSet::new();
    for (name, var) in vars.iter_mut() {
        match given.remove(name) {
            None => {
                missing.insert(name.clone());
            }
            Some(src) if src.size() != var.size() => {
                problems.push(format!(
                    "{name}: shape {:?} in file, {:?} in model",
                    src.size(),
                    var.size()
                ));
            }
            Some(src) => {
                tch::no_grad(|| var.f_copy_(&src.to_kind(var.kind())))
                    .map_err(torch_err("loading", path))?;
            }
        }
    }
    if !missing.is_empty() {
        problems.push(format!(
            "missing keys: {}",
            missing.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if !given.is_empty() {
        let extra: BTreeSet<_> = given.into_keys().collect();
        problems.push(format!(
            "unexpected keys: {}",
            extra.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(DiffusionError::Weights {
            path: path.to_path_buf(),
            message: problems.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_attention_keys_are_renamed() {
        assert_eq!(
            modern_key("down_blocks.1.attentions.0.query.weight"),
            "down_blocks.1.attentions.0.to_q.weight"
        );
        assert_eq!(
            modern_key("mid_block.attentions.0.proj_attn.bias"),
            "mid_block.attentions.0.to_out.0.bias"
        );
        assert_eq!(modern_key("conv_in.weight"), "conv_in.weight");
    }

    #[test]
    fn save_then_load_gives_the_same_outputs() {
        let dir = std::env::temp_dir().join(format!("hrf-model-test-{}", std::process::id()));
        let cfg = UNetConfig::testbed();
        let a = DiffusersModel::new(&cfg, Device::Cpu).unwrap();
        let sched = SchedulerConfig::default();
        a.save(&dir.join("unet"), Some(&sched)).unwrap();
        // Saving again over an existing folder replaces it.
        a.save(&dir.join("unet"), Some(&sched)).unwrap();
        let b = DiffusersModel::load(&dir.join("unet"), Device::Cpu).unwrap();
        assert_eq!(b.scheduler.as_ref(), Some(&sched));
        let x = crate::init::keyed_normal(&[260], &[2, 1, 32, 32]);
        let t = Tensor::from_slice(&[10i64, 900]);
        let y = Tensor::from_slice(&[3i64, 10]);
        let (oa, ob) = tch::no_grad(|| {
            (
                a.unet.forward(&x, &t, Some(&y)),
                b.unet.forward(&x, &t, Some(&y)),
            )
        });
        assert_eq!(f64::try_from((oa - ob).abs().max()).unwrap(), 0.0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wrong_weights_are_named() {
        let dir = std::env::temp_dir().join(format!("hrf-model-bad-{}", std::process::id()));
        let small = DiffusersModel::new(&UNetConfig::testbed(), Device::Cpu).unwrap();
        small.save(&dir, None).unwrap();
        let mut other_cfg = UNetConfig::testbed();
        other_cfg.block_out_channels = vec![32, 64, 128];
        let mut other = DiffusersModel::new(&other_cfg, Device::Cpu).unwrap();
        let err = other
            .load_weights(&dir.join(WEIGHTS_FILE))
            .unwrap_err()
            .to_string();
        assert!(err.contains("shape") && err.contains(WEIGHTS_FILE), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
