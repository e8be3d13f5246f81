//! `satchel diff FROM TO`: two runs compared from their metadata (no
//! content is read), per artifact: files added, removed and changed, with
//! size deltas and totals. The rule is `satchel_model::diff`'s; the server
//! applies it (`GET /api/v1/diff`), this prints it.

use clap::Args;
use satchel_model::diff::{Change, FileChange, RunDiff, Totals};
use satchel_model::units::human_delta as delta;

use crate::context::ServerArgs;
use crate::output::human;

/// Options of `satchel diff`.
#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The first run, `PIPELINE#RUN` (a number or a selector such as
    /// `lastSuccessfulBuild`).
    from: String,
    /// The second run, `PIPELINE#RUN`.
    to: String,
    /// Compare one artifact (`default:JOB` for a job's default artifact,
    /// `NAME:JOB` for a name several jobs hold).
    #[arg(long)]
    artifact: Option<String>,
    /// Print the comparison as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

fn counts(t: &Totals) -> String {
    format!(
        "{} added, {} removed, {} changed, {} unchanged; {} → {} ({})",
        t.added,
        t.removed,
        t.changed,
        t.unchanged,
        human(t.from_size),
        human(t.to_size),
        delta(t.size_delta())
    )
}

fn file_line(f: &FileChange) -> String {
    let size = |s: Option<u64>| s.map(human).unwrap_or_default();
    match f.change {
        Change::Added => format!("    + {}  {}", f.path, size(f.to_size)),
        Change::Removed => format!("    - {}  {}", f.path, size(f.from_size)),
        _ => {
            let d = i128::from(f.to_size.unwrap_or(0)) - i128::from(f.from_size.unwrap_or(0));
            let mode = match (f.from_mode, f.to_mode) {
                (Some(x), Some(y)) if x != y => format!(", mode {x:o} → {y:o}"),
                _ => String::new(),
            };
            format!(
                "    ~ {}  {} → {} ({}){mode}",
                f.path,
                size(f.from_size),
                size(f.to_size),
                delta(d)
            )
        }
    }
}

/// The comparison for people.
pub fn render(d: &RunDiff) -> String {
    let mut out = format!("{} → {}\n", d.from, d.to);
    for a in &d.artifacts {
        let what = a.change.as_str();
        out.push_str(&format!("  {} ({what}): {}\n", a.name, counts(&a.totals)));
        for f in &a.files {
            out.push_str(&file_line(f));
            out.push('\n');
        }
    }
    if d.truncated {
        out.push_str(&format!(
            "(only the first {} changed files are listed)\n",
            satchel_model::diff::MAX_LISTED
        ));
    }
    out.push_str(&format!("total: {}\n", counts(&d.totals)));
    out
}

pub async fn run(a: DiffArgs) -> anyhow::Result<()> {
    let client = a.server.client()?;
    let d = client.diff(&a.from, &a.to, a.artifact.as_deref()).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        print!("{}", render(&d));
    }
    Ok(())
}
