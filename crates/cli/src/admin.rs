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
