//! `satchel admin …`: operator commands (access control's in
//! [`crate::access`]). `gha-token` issues a GitHub
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
    /// Check that every finished artifact's content is present and intact,
    /// and report (never repair) what is wrong, exiting 1 if anything is
    /// wrong.
    Fsck(FsckArgs),
    /// Move an embedded data directory (SQLite and its content) into an
    /// empty PostgreSQL database and, with --to-store, another content
    /// store, for several replicas. Stop the server first.
    Migrate(crate::migrate::MigrateArgs),
    /// Encryption keys: generate a key file, add a key, rotate, status.
    #[command(subcommand)]
    Keys(KeysCommand),
    #[command(flatten)]
    Access(crate::access::AccessCommand),
}

/// `satchel admin keys …`.
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Write a new key file (mode 0600) with one key and a naming key.
    Generate {
        /// Where to write it; refuses to overwrite.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Append a new key to a key file; after restarting the server with it,
    /// new content uses the new key and `rotate` moves the old content.
    Add {
        /// The key file.
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// Re-encrypt stored content with the active key, in the background.
    Rotate {
        /// Wait, showing progress, until it is done.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show the keys, how many objects each encrypts, and rotation progress.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

fn write_new_secret(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn print_keys(v: &serde_json::Value) {
    if v["encryption"] != true {
        println!("encryption at rest: off");
    } else {
        println!(
            "encryption at rest: on, active key {}, known keys {}",
            v["active_key"], v["keys"]
        );
    }
    for u in v["usage"].as_array().into_iter().flatten() {
        let key = if u[0].is_null() {
            "unencrypted".to_string()
        } else {
            format!("key {}", u[0])
        };
        println!("  {key}: {} objects", u[1]);
    }
    let r = &v["rotation"];
    println!(
        "rotation: {} ({} of {} objects re-encrypted){}",
        r["state"].as_str().unwrap_or("?"),
        r["rewritten"],
        r["objects"],
        r["error"]
            .as_str()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
}

async fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Generate { out } => {
            write_new_secret(&out, &satchel_store::Keyring::generate())?;
            eprintln!(
                "wrote {}: start the server with --keys-file {} and back the file up; content cannot be read without it",
                out.display(),
                out.display()
            );
            Ok(())
        }
        KeysCommand::Add { file } => {
            let ring = satchel_store::Keyring::load(&file).map_err(|e| anyhow::anyhow!("{e}"))?;
            let line = ring.next_key_line();
            let mut text = std::fs::read_to_string(&file)?;
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&line);
            text.push('\n');
            let tmp = file.with_extension("new");
            let _ = std::fs::remove_file(&tmp);
            write_new_secret(&tmp, &text)?;
            std::fs::rename(&tmp, &file)?;
            let id = line.split(':').next().unwrap_or("?");
            eprintln!(
                "added key {id} to {}: restart the server, then run `satchel admin keys rotate --wait`; remove an old key's line only once `keys status` shows no objects on it",
                file.display()
            );
            Ok(())
        }
        KeysCommand::Rotate { wait, server } => {
            let client = server.client()?;
            let mut v = client.admin_rotate_keys().await?;
            if !wait {
                println!(
                    "rotation {}: follow it with `satchel admin keys status`",
                    v["state"].as_str().unwrap_or("?")
                );
                return Ok(());
            }
            loop {
                let s = client.admin_keys().await?;
                let r = &s["rotation"];
                eprint!(
                    "\rrotation {}: {} objects checked, {} re-encrypted   ",
                    r["state"].as_str().unwrap_or("?"),
                    r["objects"],
                    r["rewritten"]
                );
                if r["state"] != "running" {
                    eprintln!();
                    v = s;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            print_keys(&v);
            if v["rotation"]["state"] == "done" {
                Ok(())
            } else {
                anyhow::bail!("key rotation did not finish")
            }
        }
        KeysCommand::Status { json, server } => {
            let v = server.client()?.admin_keys().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_keys(&v);
            }
            Ok(())
        }
    }
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
    /// Then forget the damaged blobs it finds (their records and what is
    /// stored of them), so that uploading the same files again restores
    /// every artifact that refers to them. Without it, fsck changes nothing.
    #[arg(long)]
    forget_damaged: bool,
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
        AdminCommand::Keys(k) => keys(k).await,
        AdminCommand::Access(c) => crate::access::run(c).await,
        AdminCommand::Migrate(a) => crate::migrate::run(a).await,
        AdminCommand::Gc(a) => {
            let r = a.server.client()?.admin_gc(a.grace).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "gc: {} artifacts expired, {} blobs and {} stored objects deleted, {} freed",
                    r["expired_artifacts"],
                    r["blobs_deleted"],
                    r["objects_deleted"],
                    crate::output::human(r["bytes_freed"].as_u64().unwrap_or(0))
                );
                if r["young_chunks_kept"].as_bool() == Some(true) {
                    println!(
                        "gc: uploads were in flight, so unused chunks younger than twice the chunk refresh age (30 minutes by default) were kept; run it again when none are"
                    );
                }
            }
            Ok(())
        }
        AdminCommand::Fsck(a) => {
            let r = a.server.client()?.admin_fsck(a.forget_damaged).await?;
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
                    ("file with a wrong size", "mis_sized_files"),
                    ("miscounted artifact", "miscounted_artifacts"),
                ] {
                    for d in r[key].as_array().into_iter().flatten() {
                        println!("  {what}: {}", d.as_str().unwrap_or_default());
                    }
                }
            }
            let forgotten = r["forgotten"].as_array().map_or(0, Vec::len);
            if !a.json && forgotten > 0 {
                println!(
                    "fsck: forgot {forgotten} damaged blobs; upload the same files again (from any job that has them) to restore every artifact that refers to them"
                );
            }
            if r["ok"] == true {
                if !a.json {
                    println!("fsck: no problems");
                }
                Ok(())
            } else if a.forget_damaged {
                anyhow::bail!("fsck found problems (listed above); {forgotten} damaged blobs forgotten, waiting to be uploaded again")
            } else {
                anyhow::bail!("fsck found problems (listed above); nothing was repaired (--forget-damaged lets a re-upload repair them)")
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
