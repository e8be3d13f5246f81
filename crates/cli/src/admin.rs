//! `satchel admin …`: operator commands. `gha-token` issues a GitHub
//! Actions runtime token so an unmodified `actions/upload-artifact` /
//! `download-artifact` (or `@actions/artifact`) in a self-hosted runner
//! stores its artifacts in Satchel.

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::context::ServerArgs;

/// `satchel admin …`.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Print `export ACTIONS_RESULTS_URL=…` and `export
    /// ACTIONS_RUNTIME_TOKEN=…` for one job, ready for `eval`.
    GhaToken(GhaTokenArgs),
    /// Expire due artifacts and delete content nothing live references.
    Gc(GcArgs),
    /// Check that every finished artifact's content is present and intact;
    /// report (never repair) what is wrong. Exits 1 if anything is.
    Fsck(FsckArgs),
}

/// Options of `satchel admin gc`.
#[derive(Args, Debug)]
pub struct GcArgs {
    /// Keep content recorded less than this long ago (e.g. 0s, 1h;
    /// default: the server's grace, one hour).
    #[arg(long, value_parser = parse_grace)]
    grace: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

fn parse_grace(s: &str) -> Result<u64, String> {
    if s.trim_end_matches(['s', 'm', 'h', 'd', 'w']) == "0" {
        return Ok(0);
    }
    satchel_model::api::parse_duration(s)
}

/// Options of `satchel admin fsck`.
#[derive(Args, Debug)]
pub struct FsckArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// Options of `satchel admin gha-token`.
#[derive(Args, Debug)]
pub struct GhaTokenArgs {
    /// Pipeline key the job's artifacts go to.
    #[arg(long, env = "SATCHEL_PIPELINE")]
    pipeline: String,
    /// Run number.
    #[arg(long, env = "SATCHEL_RUN")]
    run: u64,
    /// Job key.
    #[arg(long, env = "SATCHEL_JOB")]
    job: String,
    /// Token lifetime in seconds (default 6 hours, at most 7 days).
    #[arg(long)]
    ttl: Option<u64>,
    #[command(flatten)]
    server: ServerArgs,
}

/// Quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `satchel admin …`.
pub async fn run(cmd: AdminCommand) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::Gc(a) => {
            let r = a.server.client()?.admin_gc(a.grace).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "gc: {} artifacts expired, {} blobs deleted, {} freed",
                    r["expired_artifacts"],
                    r["blobs_deleted"],
                    crate::output::human(r["bytes_freed"].as_u64().unwrap_or(0))
                );
            }
            Ok(())
        }
        AdminCommand::Fsck(a) => {
            let r = a.server.client()?.admin_fsck().await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "fsck: checked {} blobs ({})",
                    r["checked"],
                    crate::output::human(r["bytes"].as_u64().unwrap_or(0))
                );
                for (what, key) in [
                    ("missing", "missing"),
                    ("wrong size", "wrong_size"),
                    ("corrupt", "corrupt"),
                ] {
                    for d in r[key].as_array().into_iter().flatten() {
                        println!("  {what}: {}", d.as_str().unwrap_or_default());
                    }
                }
            }
            if r["ok"] == true {
                if !a.json {
                    println!("fsck: no problems");
                }
                Ok(())
            } else {
                anyhow::bail!("fsck found problems (listed above); nothing was repaired")
            }
        }
        AdminCommand::GhaToken(a) => {
            let client = a.server.client()?;
            let v = client
                .mint_gha_token(&a.pipeline, a.run, &a.job, a.ttl)
                .await?;
            let token = v["token"]
                .as_str()
                .context("the server answered no token")?;
            println!(
                "export ACTIONS_RESULTS_URL={}",
                shell_quote(&format!("{}/", client.base()))
            );
            println!("export ACTIONS_RUNTIME_TOKEN={}", shell_quote(token));
            eprintln!(
                "runtime token for job {:?} of run {} of pipeline {:?}, valid until {}",
                a.job,
                a.run,
                a.pipeline,
                v["expires_at"].as_str().unwrap_or("?")
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting() {
        assert_eq!(super::shell_quote("a'b"), "'a'\\''b'");
    }
}
