//! Satchel's local pipeline runner (`satchel run PIPELINE.yml`).
//!
//! [`pipeline`] is the file format: strict parsing and validation.
//! [`formats`] detects a file's format and translates other CI systems'
//! files (Azure Pipelines so far) into that model.
//! [`exec`] runs a parsed pipeline against a Satchel server (the embedded
//! one or a remote one): stages in order, jobs of a stage in parallel, each
//! job in a fresh directory holding its own copy of the source
//! ([`checkout`]), with the artifact semantics of a real server because
//! every artifact operation goes through it.

pub mod checkout;
pub mod exec;
pub mod formats;
pub mod outputs;
pub mod pipeline;
pub mod shell;

pub use exec::{run_pipeline, summary, Outcome, RunReport, RunnerConfig};
pub use pipeline::Pipeline;
