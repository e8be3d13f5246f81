//! The `satchel` binary: `satchel serve` runs the server; `satchel artifact …`
//! is the agent CLI used inside CI jobs.
//!
//! Errors print once as `error: …` with their causes (`{:#}`) and exit 1;
//! usage errors exit 2 (clap); a closed stdout pipe is not an error.

mod context;
mod download;
mod output;
mod serve;
mod transfer;
mod upload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Satchel: artifacts for CI/CD pipelines.
#[derive(Parser)]
#[command(name = "satchel", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (SQLite + local disk under --data-dir).
    Serve(serve::ServeArgs),
    /// Upload, download and find artifacts from inside a job.
    #[command(subcommand)]
    Artifact(Box<ArtifactCommand>),
}

#[derive(Subcommand)]
enum ArtifactCommand {
    /// Upload files matching glob patterns into the job's artifact.
    Upload(upload::UploadArgs),
    /// Download files whose path matches QUERY into DEST.
    Download(download::DownloadArgs),
    /// List files matching QUERY.
    Search(download::SearchArgs),
    /// Print the SHA-256 of the one file matching QUERY.
    Shasum(download::ShasumArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve(a) => serve::run(a).await,
            Command::Artifact(cmd) => match *cmd {
                ArtifactCommand::Upload(a) => upload::run(a).await,
                ArtifactCommand::Download(a) => download::run_download(a).await,
                ArtifactCommand::Search(a) => download::run_search(a).await,
                ArtifactCommand::Shasum(a) => download::run_shasum(a).await,
            },
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
