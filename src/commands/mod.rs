//! One file per `hrf` command: each parses nothing itself (clap does, in main.rs), sets up what
//! the command needs from the host crates, and returns the exit code.

pub mod compare;
pub mod diagnose;
pub mod doctor;
pub mod eval;
pub mod export;
pub mod plugins;
pub mod pretrain;
pub mod run;
pub mod run_model;
pub mod sample;
pub mod testbed;
