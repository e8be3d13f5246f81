//! `satchel artifact merge`: several artifacts of the run into one, by
//! reference, as `actions/upload-artifact/merge` does by downloading and
//! uploading them again. Here no content moves: the new artifact's
//! manifest names the sources' files by digest, which the server already
//! holds, so the merge costs one upload's metadata whatever the size.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use clap::Args;
use satchel_model::api::{ArtifactState, CreateUpload, NewFile};
use satchel_model::glob::Glob;
use serde::Serialize;

use crate::context::{JobArgs, ServerArgs};
use crate::output::human;

/// Options of `satchel artifact merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Name of the merged artifact (unique in the run).
    #[arg(long, default_value = "merged-artifacts")]
    name: String,
    /// Glob over the names of the run's artifacts to merge.
    #[arg(long, default_value = "*")]
    pattern: String,
    /// Put each artifact's files under a directory named after it (else
    /// all land at the root, and a later artifact's file replaces an
    /// earlier one's at the same path, as when the action extracts them
    /// into one directory).
    #[arg(long)]
    separate_directories: bool,
    /// Delete the merged artifacts once the merged one is stored (those
    /// the token may delete; the others are kept, with a warning).
    #[arg(long)]
    delete_merged: bool,
    /// Keep files whose path has a part starting with `.` (left out by
    /// default, as upload-artifact does).
    #[arg(long)]
    include_hidden: bool,
    /// Expire the merged artifact after this long (e.g. 7d; default: the
    /// server's retention).
    #[arg(long, value_parser = crate::upload::parse_expire)]
    expire_in: Option<u64>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    job: JobArgs,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Serialize)]
struct Summary {
    artifact: String,
    artifact_id: String,
    merged: Vec<String>,
    files: u64,
    bytes: u64,
    deleted: Vec<String>,
    kept: Vec<String>,
}

/// The merged manifest of `sources` (each an artifact name and its
/// files, oldest first).
fn merged_files(
    sources: &[(String, Vec<satchel_model::api::FileInfo>)],
    separate: bool,
    include_hidden: bool,
) -> anyhow::Result<Vec<NewFile>> {
    let mut by_path: BTreeMap<String, NewFile> = BTreeMap::new();
    for (name, files) in sources {
        for f in files {
            if f.glob.as_deref() == Some("gha-zip") {
                bail!(
                    "artifact {name:?} came through the GitHub Actions protocol as one zip; merging it by reference would store the zip, not its files"
                );
            }
            let path = if separate {
                format!("{name}/{}", f.path)
            } else {
                f.path.clone()
            };
            if !include_hidden && path.split('/').any(|p| p.starts_with('.')) {
                continue;
            }
            satchel_model::path::validate(&path)
                .with_context(|| format!("file {:?} of artifact {name:?}", f.path))?;
            by_path.insert(
                path.clone(),
                NewFile {
                    path,
                    size: f.size,
                    sha256: f.sha256.clone(),
                    mode: f.mode,
                    content_type: Some(f.content_type.clone()),
                    source_path: None,
                    glob: None,
                },
            );
        }
    }
    Ok(by_path.into_values().collect())
}

pub async fn run(a: MergeArgs) -> anyhow::Result<()> {
    let ctx = a.job.context()?;
    satchel_model::names::validate_artifact_name(&a.name)?;
    if a.name == "default" {
        bail!("`default` names a job's default artifact; choose another name");
    }
    let pattern = Glob::new(&a.pattern).with_context(|| format!("--pattern {:?}", a.pattern))?;
    let client = a.server.client()?;
    let mut artifacts: Vec<_> = client
        .list_artifacts(&ctx.pipeline, ctx.run)
        .await?
        .into_iter()
        .filter(|x| {
            x.state == ArtifactState::Finished
                && !x.producer.superseded
                && !x.is_default
                && x.kind == "files"
                && x.name != a.name
                && pattern.is_match(&x.name)
        })
        .collect();
    artifacts.sort_by(|x, y| (&x.created_at, &x.id).cmp(&(&y.created_at, &y.id)));
    if artifacts.is_empty() {
        bail!(
            "no artifact of run {} of pipeline {:?} matches {:?}",
            ctx.run,
            ctx.pipeline,
            a.pattern
        );
    }
    let mut sources = Vec::with_capacity(artifacts.len());
    for x in &artifacts {
        let got = client.get_artifact(&x.id).await?;
        sources.push((x.name.clone(), got.files));
    }
    let files = merged_files(&sources, a.separate_directories, a.include_hidden)?;
    if files.is_empty() {
        bail!(
            "the artifacts matching {:?} hold no files to merge",
            a.pattern
        );
    }
    let req = CreateUpload {
        context: ctx.clone(),
        name: Some(a.name.clone()),
        files,
        exclusive: true,
        replace: false,
        expire_in_secs: a.expire_in,
    };
    let created = client.create_upload(&req).await?;
    if !created.missing.is_empty() {
        // The sources are live, so this is content the server lost.
        let _ = client.abort_upload(&created.upload_id).await;
        bail!(
            "the server no longer holds {} of the merged files' content (first: sha256 {}); run `satchel admin fsck`",
            created.missing.len(),
            created.missing[0]
        );
    }
    let done = client.finish_upload(&created.upload_id).await?;
    // The merged artifact is stored: a source this token may not delete
    // (a job token deletes only its own job's artifacts) is kept, with a
    // warning, rather than failing a merge that succeeded.
    let (mut deleted, mut kept) = (Vec::new(), Vec::new());
    if a.delete_merged {
        for x in &artifacts {
            match client.delete_artifact(&x.id).await {
                Ok(_) => deleted.push(x.name.clone()),
                Err(satchel_client::ClientError::Api {
                    status: 403,
                    message,
                    ..
                }) => kept.push((x.name.clone(), message)),
                Err(e) => {
                    return Err(e).with_context(|| format!("deleting merged artifact {:?}", x.name))
                }
            }
        }
    }
    for (name, why) in &kept {
        eprintln!("warning: kept merged artifact {name:?}: {why}");
    }
    let summary = Summary {
        artifact: a.name.clone(),
        artifact_id: done.artifact.id.clone(),
        merged: artifacts.iter().map(|x| x.name.clone()).collect(),
        files: done.artifact.file_count,
        bytes: done.artifact.size,
        deleted,
        kept: kept.into_iter().map(|(n, _)| n).collect(),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprintln!(
            "merged {} artifacts ({}) into {:?}: {} files, {}, by reference (no content sent){}",
            summary.merged.len(),
            summary.merged.join(", "),
            summary.artifact,
            summary.files,
            human(summary.bytes),
            if summary.deleted.is_empty() {
                String::new()
            } else {
                format!("; deleted {}", summary.deleted.join(", "))
            }
        );
    }
    Ok(())
}
