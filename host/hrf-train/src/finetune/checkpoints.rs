//! Checkpoints: written whole into a temporary folder and renamed into place, the newest
//! `run.keep` kept (and the one a guard would roll back to); loading one for an exact resume,
//! and a guard's rollback to an earlier one.

use std::path::PathBuf;

use super::{
    file_len, io_err, kill_now, KillPoint, Run, RunError, RunState, Verbosity, MODEL_DIR,
    OPTIMIZER_FILE, STATE_FILE,
};
use crate::epoch::Ddpo;
use crate::guard::branch_seed;

impl Run<'_> {
    fn checkpoints(&self) -> Vec<(u64, PathBuf)> {
        let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(self.dir.join("checkpoints"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().parse::<u64>().ok()?;
                Some((n, e.path()))
            })
            .filter(|(_, p)| p.join(STATE_FILE).exists())
            .collect();
        v.sort();
        v
    }

    pub(super) fn write_checkpoint(
        &self,
        ddpo: &Ddpo<'_>,
        state: &RunState,
    ) -> Result<(), RunError> {
        let root = self.dir.join("checkpoints");
        let name = format!("{:04}", state.epochs_done);
        let dir = root.join(&name);
        let tmp = root.join(format!(".{name}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        self.model
            .save(&tmp.join(MODEL_DIR), self.scheduler.config())?;
        let opt = tmp.join(OPTIMIZER_FILE);
        ddpo.optimizer
            .save(&opt)
            .map_err(|e| RunError::Checkpoint {
                path: opt.clone(),
                message: e.to_string(),
            })?;
        if state.epochs_done > 0
            && self.kill_at == Some(KillPoint::Checkpoint(state.epochs_done - 1))
        {
            kill_now();
        }
        let json = serde_json::to_string_pretty(state).expect("state serialises");
        std::fs::write(tmp.join(STATE_FILE), json).map_err(io_err(&tmp))?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        std::fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
        // Keep the newest `keep`, and the one a guard would roll back to.
        let all = self.checkpoints();
        let keep = self.pipeline.run.keep.max(1);
        for (e, old) in all.iter().take(all.len().saturating_sub(keep)) {
            if Some(*e) != state.guard.last_good {
                std::fs::remove_dir_all(old).map_err(io_err(old))?;
            }
        }
        Ok(())
    }

    pub(super) fn load_checkpoint(
        &self,
        ddpo: &mut Ddpo<'_>,
    ) -> Result<Option<RunState>, RunError> {
        let Some((_, dir)) = self.checkpoints().pop() else {
            return Ok(None);
        };
        let bad = |message: String| RunError::Checkpoint {
            path: dir.clone(),
            message,
        };
        let text = std::fs::read_to_string(dir.join(STATE_FILE)).map_err(io_err(&dir))?;
        let state: RunState = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        self.model.restore(&dir.join(MODEL_DIR))?;
        ddpo.optimizer
            .load(&dir.join(OPTIMIZER_FILE))
            .map_err(bad)?;
        ddpo.tracker.clone_from(&state.tracker);
        Ok(Some(state))
    }

    /// Goes back to the checkpoint of epoch `to` (a guard's rollback): the checkpoints after it
    /// are removed, its weights, optimiser moments and tracker loaded, and it is written again
    /// with the guards' state as it is now (the rollback counted, the guard line in
    /// metrics.jsonl), so that a resume goes on from the rollback.
    pub(super) fn roll_back(
        &self,
        ddpo: &mut Ddpo<'_>,
        state: &mut RunState,
        to: u64,
        wall_s: f64,
    ) -> Result<(), RunError> {
        for (e, dir) in self.checkpoints() {
            if e > to {
                std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
            }
        }
        let restored = self
            .load_checkpoint(ddpo)?
            .ok_or_else(|| RunError::Checkpoint {
                path: self.dir.join("checkpoints"),
                message: format!("no checkpoint of epoch {to} to roll back to"),
            })?;
        if restored.epochs_done != to {
            return Err(RunError::Checkpoint {
                path: self.dir.join("checkpoints"),
                message: format!(
                    "rolling back to epoch {to}, found the checkpoint of epoch {}",
                    restored.epochs_done
                ),
            });
        }
        state.epochs_done = to;
        state.tracker = restored.tracker;
        state.metrics_len = file_len(&self.metrics_path());
        state.wall_s = wall_s;
        ddpo.training.seed = branch_seed(self.pipeline.training.seed, state.guard.rollbacks);
        ddpo.lr_scale = state.guard.lr_scale;
        self.write_checkpoint(ddpo, state)?;
        if self.verbosity != Verbosity::Quiet {
            eprintln!(
                "guard: rolled back to epoch {to} (lr × {}), rollback {}",
                state.guard.lr_scale, state.guard.rollbacks
            );
        }
        Ok(())
    }
}
