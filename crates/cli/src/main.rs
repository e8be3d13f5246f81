//! The `satchel` binary: `satchel serve` runs the server; `satchel artifact …`
//! is the agent CLI used inside CI jobs; `satchel run` runs a pipeline
//! locally; `satchel resolve`, `run-state`, `promote` and `package` work
//! with references, runs and promoted packages. Started as
//! `buildkite-agent`, it takes that agent's artifact commands
//! ([`buildkite`]).
//!
//! Errors print once as `error: …` with their causes (`{:#}`) and exit 1;
//! usage errors exit 2 (clap); a closed stdout pipe is not an error.

mod access;
mod admin;
mod buildkite;
mod context;
mod diff;
mod download;
mod merge;
mod migrate;
mod output;
mod publish;
mod ranged;
mod refs;
mod run;
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
    /// Run a pipeline file locally (embedded server unless --server).
    Run(run::RunArgs),
    /// Resolve a `$[…]` artifact reference to its value.
    Resolve(refs::ResolveArgs),
    /// Compare two runs' artifacts from metadata: files added, removed and
    /// changed, with sizes.
    Diff(diff::DiffArgs),
    /// Record a run's state (passed, failed, canceled) from another CI.
    RunState(refs::RunStateArgs),
    /// Promote a finished artifact to an immutable REPO/PACKAGE@VERSION.
    Promote(refs::PromoteArgs),
    /// Download and list promoted packages.
    #[command(subcommand)]
    Package(refs::PackageCommand),
    /// Show the job context the CLI detects (flags, SATCHEL_*, or the CI's
    /// own variables) and where each value comes from.
    Context(context::ShowArgs),
    /// Operator commands: tokens, clusters, rules, audit, gc, fsck, keys,
    /// GitHub Actions runtime tokens.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
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
    /// Publish a file or directory as a named artifact (once per run).
    Publish(publish::PublishArgs),
    /// Publish a container image reference as a named artifact.
    PublishImage(publish::PublishImageArgs),
    /// Publish a URL (with optional checksum) as a named artifact.
    PublishLink(publish::PublishLinkArgs),
    /// Download named artifacts, each into DEST/<name>/.
    DownloadArtifact(publish::DownloadArtifactArgs),
    /// Merge artifacts of the run into one, by reference (no content moves).
    Merge(merge::MergeArgs),
}

/// Keeps memory flat under many concurrent transfers. By default glibc
/// gives each thread that allocates its own arena (up to 8 per core), each
/// keeping the chunk buffers freed in it; with two arenas, freed buffers
/// are reused across threads.
///
/// A server (`serving`) fixes the mmap threshold too. glibc raises it to
/// the size of any mapped buffer freed (up to 32 MiB), and the trim
/// threshold to twice that: once a pack buffer (20 MiB) was freed, every
/// arena kept up to 40 MiB of freed chunk buffers, and 16 concurrent
/// uploads peaked 60 MiB above their live heap. Fixed at 1 MiB, with 8 MiB
/// kept before trimming, chunk buffers still come from the arenas (no page
/// faults per chunk) and pack buffers are mapped and given back. (A 128 KiB
/// threshold with the default trim doubled the server's system time per
/// GiB.) The agent keeps glibc's adaptive thresholds: it is short-lived,
/// and a fixed one mapped and unmapped each 8 MiB batch buffer it reuses.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_allocator(serving: bool) {
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        if serving {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator(_serving: bool) {}

fn main() -> ExitCode {
    let cli = if buildkite::invoked_as_agent() {
        match buildkite::translate(std::env::args_os()) {
            Ok(args) => Cli::parse_from(args),
            Err(e) => {
                eprintln!("{}: error: {e:#}", buildkite::AGENT);
                return ExitCode::FAILURE;
            }
        }
    } else {
        Cli::parse()
    };
    tune_allocator(matches!(cli.command, Command::Serve(_)));
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
        let done = match cli.command {
            Command::Serve(a) => serve::run(a).await,
            Command::Diff(a) => diff::run(a).await,
            Command::Artifact(cmd) => match *cmd {
                ArtifactCommand::Upload(a) => upload::run(a).await,
                ArtifactCommand::Download(a) => download::run_download(a).await,
                ArtifactCommand::Search(a) => download::run_search(a).await,
                ArtifactCommand::Shasum(a) => download::run_shasum(a).await,
                ArtifactCommand::Publish(a) => publish::run_publish(a).await,
                ArtifactCommand::PublishImage(a) => publish::run_publish_image(a).await,
                ArtifactCommand::PublishLink(a) => publish::run_publish_link(a).await,
                ArtifactCommand::DownloadArtifact(a) => publish::run_download_artifact(a).await,
                ArtifactCommand::Merge(a) => merge::run(a).await,
            },
            Command::Run(a) => return run::run(a).await,
            Command::Resolve(a) => refs::run_resolve(a).await,
            Command::RunState(a) => refs::run_run_state(a).await,
            Command::Promote(a) => refs::run_promote(a).await,
            Command::Package(cmd) => refs::run_package(cmd).await,
            Command::Admin(cmd) => admin::run(cmd).await,
            Command::Context(a) => context::run_show(a),
        };
        done.map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
