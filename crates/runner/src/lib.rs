//! Satchel's local pipeline runner (`satchel run PIPELINE.yml`).
//!
//! [`pipeline`] is the file format: strict parsing and validation.
//! [`exec`] runs a parsed pipeline against a Satchel server (the embedded
//! one or a remote one): stages in order, jobs of a stage in parallel, each
//! job in a fresh directory, with the artifact semantics of a real server
//! because every artifact operation goes through it.

pub mod exec;
pub mod pipeline;
pub mod shell;

pub use exec::{run_pipeline, summary, Outcome, RunReport, RunnerConfig};
pub use pipeline::Pipeline;
