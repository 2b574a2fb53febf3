//! hrf-report: what a run leaves on disk and what is made of it, with no libtorch. The run
//! folder's records and file names (`records`), the diversity metrics (`diversity`), the run's
//! plots (`run_plots`), `hrf compare`'s comparison of finished runs (`comparison`), and the
//! chart renderer they draw with (`chart`); the summary statistics both sides use (`stats`);
//! the reward–diversity frontier arithmetic of the comparison's verdicts (`frontier`).

pub mod chart;
pub mod comparison;
pub mod diversity;
pub mod frontier;
pub mod records;
pub mod run_plots;
pub mod stats;
