//! Guards and gold rewards end to end on the testbed (docs/GUARDS.md): a DDPO run at a
//! learning rate that collapses its diversity is stopped by `vendi_floor` before its last
//! epoch, while the same pipeline without the guard runs to the end; a rollback goes back to
//! the last passing checkpoint and trains on at a lower rate; a gold reward that is the
//! training reward's opposite fires `gold_drop`.

use std::path::{Path, PathBuf};

use serde_json::Value;

mod common;
use common::{hrf, metrics_lines as lines, of_kind, repo, text, tmp};

const EPOCHS: u64 = 8;
/// The Vendi floor, as a fraction of the base model's: the testbed at lr 3e-3 passes it after
/// one epoch (0.58 of the base's Vendi) and fails it after two (0.16).
const FLOOR: f64 = 0.5;

/// DDPO on JPEG compressibility at a rate that collapses the testbed's diversity within a few
/// epochs (measured: see `a_vendi_floor_stops_a_collapsing_run`), evaluated every epoch on
/// 48 fixed seeds; `extra` is appended (a `guard:` section) and `gold` goes into
/// `evaluation:` (`, gold: [...]`).
fn pipeline(dir: &Path, extra: &str, gold: &str) -> PathBuf {
    let text = format!(
        "model: {{weights: {}, device: cpu}}
sampling: {{steps: 8, eta: 1.0, batch_size: 8, batches_per_epoch: 2}}
training:
  method: ddpo-is
  epochs: {EPOCHS}
  batch_size: 8
  clip_range: 1.0e-4
  optimizer: {{lr: 3.0e-3}}
rewards:
  - {{kind: jpeg-compressibility}}
evaluation: {{every: 1, samples: 48, final_samples: 64, batch_size: 64, eta: 1.0, seed: 11{gold}}}
{extra}
run: {{name: guarded, output: {}, seed: 3, save_every: 100, keep: 1}}
",
        repo().join("models/testbed").display(),
        dir.join("out").display()
    );
    let file = dir.join("p.yaml");
    std::fs::write(&file, text).unwrap();
    file
}

/// Runs the pipeline to its end in `dir/run`; returns the run folder.
fn run(dir: &Path, extra: &str) -> PathBuf {
    run_with_gold(dir, extra, "")
}

fn run_with_gold(dir: &Path, extra: &str, gold: &str) -> PathBuf {
    let file = pipeline(dir, extra, gold);
    let run = dir.join("run");
    let o = hrf(
        &[
            "run",
            file.to_str().unwrap(),
            "-q",
            "--run-dir",
            run.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "hrf run: {}", text(&o));
    run
}

fn summary(run: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

/// Vendi of the evaluations during training, by epoch (base first).
fn vendi_curve(lines: &[Value]) -> Vec<(u64, f64)> {
    of_kind(lines, "eval")
        .iter()
        .map(|l| {
            let r = &l["report"];
            (
                r["epoch"].as_u64().unwrap(),
                r["diversity"]["vendi"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_vendi_floor_stops_a_collapsing_run_before_its_last_epoch() {
    // Unguarded, the run trains all its epochs and its Vendi falls below the floor.
    let free_dir = tmp("guards", "free");
    let free = run(&free_dir, "");
    let free_lines = lines(&free);
    assert_eq!(of_kind(&free_lines, "epoch").len() as u64, EPOCHS);
    assert!(of_kind(&free_lines, "guard").is_empty());
    assert!(summary(&free).get("guard").is_none());
    let curve = vendi_curve(&free_lines);
    let base = curve[0].1;
    let first_below = curve
        .iter()
        .find(|(_, v)| *v < FLOOR * base)
        .unwrap_or_else(|| panic!("the unguarded run never fell below the floor: {curve:?}"))
        .0;
    assert!(first_below < EPOCHS, "{curve:?}");

    // Guarded, it stops at that evaluation: the same numbers up to there (keyed noise).
    let dir = tmp("guards", "stop");
    let guarded = run(&dir, &format!("guard: {{vendi_floor: {FLOOR}}}"));
    let l = lines(&guarded);
    assert_eq!(vendi_curve(&l), curve[..=first_below as usize]);
    assert_eq!(of_kind(&l, "epoch").len() as u64, first_below);
    let guards = of_kind(&l, "guard");
    let stop = guards
        .iter()
        .find(|g| g["action"] == "stop")
        .expect("a stop");
    assert_eq!(stop["epoch"].as_u64(), Some(first_below));
    let check = &stop["checks"][0];
    assert_eq!(check["guard"], "vendi_floor");
    assert_eq!(check["failed"], true);
    assert!((check["limit"].as_f64().unwrap() - FLOOR * base).abs() < 1e-9);
    // Every evaluation before it passed; the final one was judged too.
    assert!(guards[..guards.len() - 2]
        .iter()
        .all(|g| g["action"] == "ok"));
    assert_eq!(guards.last().unwrap()["action"], "final");
    // It still evaluated and wrote final/, best/ and a summary that says where it stopped.
    let s = summary(&guarded);
    assert_eq!(s["guard"]["stopped_at"].as_u64(), Some(first_below));
    assert_eq!(s["guard"]["fired"][0]["action"], "stop");
    assert_eq!(s["epochs"].as_u64(), Some(first_below));
    assert_eq!(of_kind(&l, "final").len(), 1);
    for f in [
        "final/diffusion_pytorch_model.safetensors",
        "best/diffusion_pytorch_model.safetensors",
        "plots/diversity.png",
    ] {
        assert!(guarded.join(f).exists(), "{f}");
    }
    // best/ is an evaluation that passed the floor.
    let best = s["best"]["vendi"].as_f64().unwrap();
    assert!(best >= FLOOR * base, "best {best} vs base {base}");

    // `hrf compare` lists what fired.
    let out = dir.join("cmp");
    let o = hrf(
        &[
            "compare",
            free.to_str().unwrap(),
            guarded.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "hrf compare: {}", text(&o));
    let md = std::fs::read_to_string(out.join("comparison.md")).unwrap();
    assert!(md.contains("Guards that acted"), "{md}");
    assert!(
        md.contains(&format!("stop at epoch {first_below}: vendi_floor")),
        "{md}"
    );
    let _ = std::fs::remove_dir_all(&free_dir);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_rollback_goes_back_to_the_last_passing_checkpoint_at_a_lower_rate() {
    let dir = tmp("guards", "rollback");
    let run = run(
        &dir,
        &format!(
            "guard: {{vendi_floor: {FLOOR}, action: rollback, lr_factor: 0.1, max_rollbacks: 1}}"
        ),
    );
    let l = lines(&run);
    let guards = of_kind(&l, "guard");
    let back = guards
        .iter()
        .find(|g| g["action"] == "rollback")
        .expect("a rollback");
    let (at, to) = (
        back["epoch"].as_u64().unwrap(),
        back["to_epoch"].as_u64().unwrap(),
    );
    assert!(to < at);
    assert_eq!(back["lr_scale"].as_f64(), Some(0.1));
    // `to` is the newest evaluation that passed before it.
    let passed: Vec<u64> = guards
        .iter()
        .take_while(|g| g["action"] != "rollback")
        .filter(|g| g["action"] == "ok")
        .map(|g| g["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(to, passed.last().copied().unwrap_or(0));
    // After it, the epochs from `to` train again at a tenth of the rate.
    let epochs = of_kind(&l, "epoch");
    let after: Vec<&&Value> = epochs
        .iter()
        .skip_while(|e| e["epoch"].as_u64().unwrap() + 1 < at)
        .skip(1)
        .collect();
    assert_eq!(after[0]["epoch"].as_u64(), Some(to));
    assert!(
        (after[0]["lr"].as_f64().unwrap() - 3e-4).abs() < 1e-12,
        "{}",
        after[0]
    );
    // The run ends at its last epoch or at the stop after its one rollback; either way the
    // plots and compare read the branch it ended on, epochs in order.
    let s = summary(&run);
    assert_eq!(s["guard"]["rollbacks"].as_u64(), Some(1));
    let current = hrf_current(&l);
    let order: Vec<u64> = current
        .iter()
        .filter(|x| x["kind"] == "epoch")
        .map(|x| x["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(order, (0..order.len() as u64).collect::<Vec<_>>());
    assert_eq!(s["epochs"].as_u64(), Some(order.len() as u64));
    // Only the checkpoint it went back to was removed from the newer ones: the newest is the
    // branch's own.
    assert!(run
        .join("final/diffusion_pytorch_model.safetensors")
        .exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The lines a rollback did not supersede (hrf-report's `current_lines`, restated: an epoch
/// line e ≥ to_epoch or an evaluation after to_epoch written before the rollback is dropped).
fn hrf_current(lines: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for l in lines {
        if let Some(to) = l["to_epoch"].as_u64().filter(|_| l["kind"] == "guard") {
            out.retain(|o| match o["kind"].as_str() {
                Some("epoch") => o["epoch"].as_u64().unwrap() < to,
                Some("eval") => o["report"]["epoch"].as_u64().unwrap() <= to,
                _ => true,
            });
        }
        out.push(l.clone());
    }
    out
}

#[test]
fn a_gold_reward_that_falls_while_the_training_reward_rises_fires_gold_drop() {
    // The gold reward is the JPEG size itself (jpeg-incompressibility): exactly the opposite of
    // the training reward, so every gain in training is a loss in gold.
    let dir = tmp("guards", "gold");
    let run = run_with_gold(
        &dir,
        "guard: {gold_drop: 0.05}",
        ", gold: [{kind: jpeg-incompressibility, name: size-kb}]",
    );
    let l = lines(&run);
    // Gold is scored on the evaluation's own samples: its value is minus the reward's.
    for e in of_kind(&l, "eval")
        .iter()
        .chain(of_kind(&l, "final").iter())
    {
        let r = &e["report"];
        let gold = r["gold"]["size-kb"].as_f64().unwrap();
        let reward = r["reward_mean"].as_f64().unwrap();
        assert!((gold + reward).abs() < 1e-9, "gold {gold}, reward {reward}");
    }
    let stop = of_kind(&l, "guard")
        .into_iter()
        .find(|g| g["action"] == "stop")
        .expect("gold_drop fired");
    let check = &stop["checks"][0];
    assert_eq!(
        (check["guard"].as_str(), check["gold"].as_str()),
        (Some("gold_drop"), Some("size-kb"))
    );
    assert!(check["value"].as_f64().unwrap() > 0.05);
    let s = summary(&run);
    assert!(s["guard"]["stopped_at"].as_u64().unwrap() < EPOCHS);
    let _ = std::fs::remove_dir_all(&dir);
}
