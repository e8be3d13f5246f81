//! Wire types of the REST API under `/api/v1`.
//!
//! The server and the typed client both use these structs, so the JSON shape
//! is defined once. `docs/api.md` documents them for people scripting against
//! the API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a job is: the producer of an upload. Runs, stages, jobs and attempts
/// named here are created on first use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct JobContext {
    /// Pipeline key.
    pub pipeline: String,
    /// Run number within the pipeline.
    pub run: u64,
    /// Stage key, when the CI has stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Job key.
    pub job: String,
    /// Step key, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Attempt number of the job, 1 for the first; a higher one is a retry.
    #[serde(default = "one")]
    pub attempt: u32,
    /// Branch the run builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Commit the run builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The CI's own id of the build (Buildkite's build UUID,
    /// `GITHUB_RUN_ID`, …), recorded on the run if it has none yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
}

fn one() -> u32 {
    1
}

/// One file announced in an upload manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct NewFile {
    /// Normalized relative path (see `satchel_model::path`).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    /// Unix mode bits (permissions only are kept).
    #[serde(default = "default_mode")]
    pub mode: u32,
    /// Content type; derived from the extension when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Absolute path the file was read from on the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_path: Option<String>,
    /// The upload pattern that matched the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
}

fn default_mode() -> u32 {
    0o644
}

/// `POST /api/v1/uploads`: start adding files to an artifact.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateUpload {
    /// Producing job.
    pub context: JobContext,
    /// Artifact name; absent means the job's default artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Files of this upload.
    pub files: Vec<NewFile>,
    /// Publish semantics (Azure `PublishPipelineArtifact`): the named
    /// artifact must not exist yet in the run; a second publish of the same
    /// name is a conflict (409) instead of adding files to it. A retry of
    /// the owning job (a higher attempt) may publish it again.
    #[serde(default, skip_serializing_if = "is_false")]
    pub exclusive: bool,
    /// Replace semantics (GitHub's `overwrite: true`; needs a name and
    /// `exclusive`): a new artifact of the name is created even if the run
    /// holds a finished one, and finishing it deletes the others in the
    /// same transaction, so readers see the old one or the new one, never
    /// neither. The caller must be allowed to delete those it replaces.
    #[serde(default, skip_serializing_if = "is_false")]
    pub replace: bool,
    /// Seconds until the artifact expires, counted from its creation
    /// (default: the server's retention). Applies when this upload creates
    /// the artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_in_secs: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Answer to [`CreateUpload`].
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UploadCreated {
    /// Id of the upload session.
    pub upload_id: String,
    /// Artifact the files go into.
    pub artifact_id: String,
    /// Name of that artifact.
    pub artifact_name: String,
    /// Content the server lacks: only these must be sent.
    pub missing: Vec<String>,
    /// Files of the manifest that the artifact already holds with the same
    /// content (a repeated upload); they are not added twice.
    pub already_present: u64,
}

/// Answer to finishing an upload.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UploadFinished {
    /// The artifact, now finished and visible.
    pub artifact: Artifact,
    /// Files this upload added.
    pub files_added: u64,
    /// Bytes this upload added.
    pub bytes_added: u64,
}

/// Answer to a blob batch upload.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlobsStored {
    /// Number of blobs stored by the request.
    pub stored: u64,
    /// Bytes stored by the request.
    pub bytes: u64,
}

/// One content-defined chunk of a large file, as the client cut it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ChunkRef {
    /// SHA-256 of the chunk, lowercase hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A large file's chunks, in order: asked about before sending
/// (`POST /uploads/{id}/blobs/{sha256}/chunks`), then assembled
/// (`POST /uploads/{id}/blobs/{sha256}/assemble`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChunkList {
    /// The chunks; their sizes add up to the file's.
    pub chunks: Vec<ChunkRef>,
}

/// Which of a chunk list's chunks the server lacks.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChunksMissing {
    /// Indices into the list, ascending.
    pub missing: Vec<usize>,
}

/// Lifecycle of an artifact.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactState {
    /// Created, no upload finished yet: invisible to downloads.
    Uploading,
    /// Visible.
    Finished,
    /// Its only upload failed or was abandoned.
    Error,
    /// Deleted by a user.
    Deleted,
    /// Removed by retention.
    Expired,
}

impl ArtifactState {
    /// The name stored in the database and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactState::Uploading => "uploading",
            ArtifactState::Finished => "finished",
            ArtifactState::Error => "error",
            ArtifactState::Deleted => "deleted",
            ArtifactState::Expired => "expired",
        }
    }

    /// Parses [`ArtifactState::as_str`] output.
    pub fn parse(s: &str) -> Option<ArtifactState> {
        Some(match s {
            "uploading" => ArtifactState::Uploading,
            "finished" => ArtifactState::Finished,
            "error" => ArtifactState::Error,
            "deleted" => ArtifactState::Deleted,
            "expired" => ArtifactState::Expired,
            _ => return None,
        })
    }
}

/// Lifecycle of an upload (one manifest's files, until they are visible).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UploadState {
    /// Taking content.
    Uploading,
    /// Its files are visible.
    Finished,
    /// Failed, aborted or abandoned: its files were dropped.
    Error,
}

impl UploadState {
    /// The name stored in the database and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            UploadState::Uploading => "uploading",
            UploadState::Finished => "finished",
            UploadState::Error => "error",
        }
    }

    /// Parses [`UploadState::as_str`] output.
    pub fn parse(s: &str) -> Option<UploadState> {
        Some(match s {
            "uploading" => UploadState::Uploading,
            "finished" => UploadState::Finished,
            "error" => UploadState::Error,
            _ => return None,
        })
    }
}

impl std::fmt::Display for UploadState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lifecycle of a run.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Started, not ended.
    Running,
    /// Ended with every job passing.
    Passed,
    /// Ended with a job failing.
    Failed,
    /// Stopped.
    Canceled,
}

impl RunState {
    /// Every state, in the order they are listed to users.
    pub const ALL: [RunState; 4] = [
        RunState::Running,
        RunState::Passed,
        RunState::Failed,
        RunState::Canceled,
    ];

    /// The name stored in the database and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Passed => "passed",
            RunState::Failed => "failed",
            RunState::Canceled => "canceled",
        }
    }

    /// Parses [`RunState::as_str`] output; the error names the states.
    pub fn parse(s: &str) -> Result<RunState, String> {
        RunState::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = RunState::ALL.iter().map(|r| r.as_str()).collect();
                format!("unknown run state {s:?}: use one of {}", all.join(", "))
            })
    }
}

/// Decoded through [`RunState::parse`], so a request naming an unknown
/// state is refused with the message the CLI gives.
impl<'de> Deserialize<'de> for RunState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RunState, D::Error> {
        let s = String::deserialize(d)?;
        RunState::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for ArtifactState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who produced something: pipeline, run, stage, job, attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Producer {
    /// Pipeline key.
    pub pipeline: String,
    /// Run number.
    pub run: u64,
    /// Stage key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Job key.
    pub job: String,
    /// Job attempt.
    pub attempt: u32,
    /// Whether a later attempt of the same job exists.
    pub superseded: bool,
}

/// An artifact: a named bag of files in a run.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Artifact {
    /// Id.
    pub id: String,
    /// Name, unique in the run among named artifacts; a job's default
    /// artifact is called `default` (one per job attempt).
    pub name: String,
    /// Whether this is the job's default (unnamed) artifact.
    pub is_default: bool,
    /// `files`, `image` or `link`.
    pub kind: String,
    /// Lifecycle state.
    pub state: ArtifactState,
    /// Producing job.
    pub producer: Producer,
    /// Number of visible files.
    pub file_count: u64,
    /// Total bytes of visible files.
    pub size: u64,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Steps that added to it (uploads that finished), in no order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<String>,
    /// For kind `image`: the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageInfo>,
    /// For kind `link`: the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkInfo>,
}

impl Artifact {
    /// What a reference to this artifact resolves to: the image reference,
    /// the link URL, or (for files) the API path of its tar archive, which
    /// callers prefix with the server URL.
    pub fn reference_value(&self) -> String {
        if let Some(i) = &self.image {
            return i.reference.clone();
        }
        if let Some(l) = &self.link {
            return l.url.clone();
        }
        format!("/api/v1/artifacts/{}/archive", self.id)
    }
}

/// A container image artifact (Flow's `dockerImage`): metadata only,
/// nothing is pushed or stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ImageInfo {
    /// Image name without tag or digest, e.g. `registry.example.com/ns/demo`.
    pub image: String,
    /// Tag, e.g. `1.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Digest, e.g. `sha256:…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The full reference as given: `image[:tag][@digest]`.
    pub reference: String,
}

impl ImageInfo {
    /// Parses `NAME[:TAG][@DIGEST]`, e.g.
    /// `registry.example.com:5000/ns/demo:1.0@sha256:ab…`. A `:` in the
    /// registry part (a port) is not a tag.
    pub fn parse(reference: &str) -> Result<ImageInfo, String> {
        let reference = reference.trim();
        let bad = |why: &str| {
            Err(format!(
                "invalid image reference {reference:?}: {why}; expected NAME[:TAG][@DIGEST], e.g. registry.example.com/ns/app:1.0"
            ))
        };
        if reference.is_empty() {
            return bad("it is empty");
        }
        if reference.len() > 1024 {
            return bad("it is longer than 1024 bytes");
        }
        if reference
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return bad("it contains whitespace or control characters");
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((r, d)) => {
                let Some((algo, hexpart)) = d.split_once(':') else {
                    return bad("the digest must look like sha256:<hex>");
                };
                if algo.is_empty()
                    || hexpart.len() < 32
                    || !hexpart.chars().all(|c| c.is_ascii_hexdigit())
                {
                    return bad("the digest must look like sha256:<hex>");
                }
                (r, Some(d.to_string()))
            }
            None => (reference, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (image, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(rest[at + 1..].to_string()))
            }
            None => (rest, None),
        };
        if image.is_empty()
            || image.starts_with('/')
            || image.ends_with('/')
            || image.contains("//")
        {
            return bad("the image name is malformed");
        }
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !ok {
                return bad("a tag is 1 to 128 letters, digits, '_', '.' or '-'");
            }
        }
        Ok(ImageInfo {
            image: image.to_string(),
            tag,
            digest,
            reference: reference.to_string(),
        })
    }
}

/// A link artifact (Flow's `flowPublic`): a URL with an optional checksum.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct LinkInfo {
    /// The URL (`http`, `https`, `s3`, `gs`, `az`, `oci`, `ftp` or `file`).
    pub url: String,
    /// Lowercase hex SHA-256 of what the URL serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Lowercase hex MD5 of what the URL serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
}

impl LinkInfo {
    /// Checks the URL scheme and the checksums' shape; lowercases hashes.
    pub fn validated(mut self) -> Result<LinkInfo, String> {
        let url = self.url.trim().to_string();
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        const SCHEMES: &[&str] = &["http", "https", "s3", "gs", "az", "oci", "ftp", "file"];
        match scheme {
            Some(s) if SCHEMES.contains(&s.as_str()) => {}
            _ => {
                return Err(format!(
                    "invalid link URL {url:?}: it must start with one of {}",
                    SCHEMES
                        .iter()
                        .map(|s| format!("{s}://"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        }
        if url.len() > 4096 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "invalid link URL {url:?}: it must be at most 4096 bytes without whitespace"
            ));
        }
        let hexcheck =
            |what: &str, v: &Option<String>, len: usize| -> Result<Option<String>, String> {
                match v {
                    None => Ok(None),
                    Some(h) if h.len() == len && h.chars().all(|c| c.is_ascii_hexdigit()) => {
                        Ok(Some(h.to_ascii_lowercase()))
                    }
                    Some(h) => Err(format!("invalid {what} {h:?}: expected {len} hex digits")),
                }
            };
        self.sha256 = hexcheck("sha256", &self.sha256, 64)?;
        self.md5 = hexcheck("md5", &self.md5, 32)?;
        self.url = url;
        Ok(self)
    }
}

/// `POST /api/v1/artifacts`: publish a typed (metadata-only) artifact.
/// Exactly one of `image` and `link` is set.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateTyped {
    /// Producing job.
    pub context: JobContext,
    /// Artifact name, unique in the run.
    pub name: String,
    /// Image reference `NAME[:TAG][@DIGEST]`, for kind `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The link, for kind `link`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkInfo>,
    /// Seconds until the artifact expires (default: the server's retention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_in_secs: Option<u64>,
}

/// Parses a duration such as `90s`, `15m`, `12h`, `7d`, `2w` (a bare
/// number is seconds) into seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid duration {s:?}: expected a number and a unit, e.g. 7d, 12h, 30m")
    })?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: the unit must be s, m, h, d or w"
            ))
        }
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0 && *v <= 100 * 365 * 86_400)
        .ok_or_else(|| format!("invalid duration {s:?}: between 1 second and 100 years"))
}

/// A stored file with everything a user may scope or check by.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FileInfo {
    /// File id.
    pub id: String,
    /// Artifact id.
    pub artifact_id: String,
    /// Artifact name.
    pub artifact_name: String,
    /// Normalized path.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    /// Mode bits.
    pub mode: u32,
    /// Content type.
    pub content_type: String,
    /// Step that uploaded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Producing job.
    pub producer: Producer,
    /// Absolute path on the agent that uploaded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_path: Option<String>,
    /// Pattern that matched it on upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
    /// Upload time, RFC 3339.
    pub uploaded_at: String,
    /// Upload time in milliseconds since the epoch (for ordering).
    pub uploaded_at_ms: i64,
}

/// A list of files.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileList {
    /// The files.
    pub files: Vec<FileInfo>,
    /// Where the next page starts (`?cursor=`); absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A list of artifacts.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArtifactList {
    /// The artifacts.
    pub artifacts: Vec<Artifact>,
    /// Where the next page starts (`?cursor=`); absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// An artifact with its files.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArtifactWithFiles {
    /// The artifact.
    pub artifact: Artifact,
    /// Its visible files.
    pub files: Vec<FileInfo>,
    /// Where the next page starts (`?cursor=`); absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A run of a pipeline.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Run {
    /// Run id.
    pub id: String,
    /// Pipeline key.
    pub pipeline: String,
    /// Run number.
    pub number: u64,
    /// Branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Its state.
    pub state: RunState,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// When the run got a final state, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// The run that triggered this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggered_from: Option<RunRef>,
    /// The CI's own id of the build (see [`JobContext::build`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// The jobs that did not pass, as the runner that ran it recorded
    /// them (`None`: not recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_jobs: Option<Vec<String>>,
    /// Other pipelines' runs this run takes artifacts from, pinned when the
    /// run started.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, PinnedSource>,
}

/// A run of a pipeline, by number.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RunRef {
    /// Pipeline key.
    pub pipeline: String,
    /// Run number.
    pub run: u64,
}

/// A source as written in a pipeline: a pipeline and a run selector
/// (`42`, `latest`, `lastSuccessfulBuild`, `latestFromBranch:main`,
/// `triggering`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SourceSpec {
    /// Pipeline key.
    pub pipeline: String,
    /// Run selector.
    pub run: String,
}

/// A source resolved to one run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PinnedSource {
    /// Pipeline key.
    pub pipeline: String,
    /// The selector as written.
    pub selector: String,
    /// The run it selected.
    pub run: u64,
}

/// `POST /api/v1/pipelines/{pipeline}/runs`: start a new run (the next
/// number).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewRun {
    /// Branch the run builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Commit the run builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Sources to pin, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, SourceSpec>,
    /// The run that triggered this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggered_from: Option<RunRef>,
    /// The CI's own id of the build (see [`JobContext::build`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
}

/// `PUT /api/v1/pipelines/{pipeline}/runs/{run}/state`: record a run's
/// state (creating the run if needed).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SetRunState {
    /// The state to record.
    pub state: RunState,
    /// Branch, recorded if the run has none yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Commit, recorded if the run has none yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The jobs that did not pass (job keys), recorded with the state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_jobs: Option<Vec<String>>,
}

/// Where a reference is resolved from: the run, and the stage and job
/// (for `jobs.` references, which mean "in my stage").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RunContext {
    /// Pipeline key.
    pub pipeline: String,
    /// Run number.
    pub run: u64,
    /// Stage of the asking job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The asking job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

/// `POST /api/v1/resolve`: resolve one `$[…]` reference.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResolveRequest {
    /// Where from.
    pub context: RunContext,
    /// The expression, with or without `$[` `]`.
    pub expr: String,
    /// Extra sources for this resolution (they win over the run's pinned
    /// sources).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, SourceSpec>,
}

/// Answer to [`ResolveRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Resolved {
    /// The canonical expression.
    pub expr: String,
    /// The value: an image reference, a URL, or for a files artifact the
    /// API path of its tar archive (`/api/v1/artifacts/ID/archive`).
    pub value: String,
    /// The artifact it names.
    pub artifact: Artifact,
}

/// `POST /api/v1/packages`: promote a finished artifact to
/// `repository/name@version`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Promote {
    /// The artifact.
    pub artifact_id: String,
    /// Repository key.
    pub repository: String,
    /// Package key.
    pub package: String,
    /// Version.
    pub version: String,
}

/// A promoted, immutable package version.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Package {
    /// Repository key.
    pub repository: String,
    /// Package key.
    pub name: String,
    /// Version.
    pub version: String,
    /// Kind of the artifact it was promoted from.
    pub kind: String,
    /// For kind `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageInfo>,
    /// For kind `link`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkInfo>,
    /// Number of files.
    pub file_count: u64,
    /// Total bytes.
    pub size: u64,
    /// The artifact it was promoted from.
    pub origin: PackageOrigin,
    /// Promotion time, RFC 3339.
    pub created_at: String,
}

/// Where a package came from.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PackageOrigin {
    /// Artifact id.
    pub artifact_id: String,
    /// Artifact name.
    pub artifact: String,
    /// Producer of the artifact.
    pub producer: Producer,
}

/// A file of a package.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PackageFile {
    /// Normalized path.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    /// Mode bits.
    pub mode: u32,
    /// Content type.
    pub content_type: String,
}

/// A package with its files.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PackageWithFiles {
    /// The package.
    pub package: Package,
    /// Its files.
    pub files: Vec<PackageFile>,
}

/// A list of packages.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PackageList {
    /// Newest first.
    pub packages: Vec<Package>,
    /// Where the next page starts (`?cursor=`); absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Checks a package version: 1 to 128 ASCII letters, digits, `.`, `_`,
/// `-` and `+`, starting with a letter or digit; `latest` is reserved.
pub fn validate_version(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'));
    if !ok {
        return Err(format!(
            "invalid version {v:?}: 1 to 128 ASCII letters, digits, '.', '_', '-' or '+', starting with a letter or digit"
        ));
    }
    if v == "latest" {
        return Err("`latest` is not a version: it names the newest one".into());
    }
    Ok(())
}

/// A list of runs.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunList {
    /// The runs, newest first.
    pub runs: Vec<Run>,
    /// Where the next page starts (`?cursor=`); absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /api/v1/files/content`: fetch many small files in one response.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FetchFiles {
    /// File ids; the response carries them in this order.
    pub ids: Vec<String>,
}

/// The JSON body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `ambiguous_query`.
    pub code: String,
    /// Human-readable message that says what to do.
    pub message: String,
    /// For `ambiguous_query`: the candidate files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<Vec<FileInfo>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        let i = ImageInfo::parse("registry.cn-hangzhou.aliyuncs.com/ns/demo:1.0").unwrap();
        assert_eq!(i.image, "registry.cn-hangzhou.aliyuncs.com/ns/demo");
        assert_eq!(i.tag.as_deref(), Some("1.0"));
        assert_eq!(i.digest, None);
        let d = format!("sha256:{}", "a".repeat(64));
        let i = ImageInfo::parse(&format!("localhost:5000/app@{d}")).unwrap();
        assert_eq!(i.image, "localhost:5000/app");
        assert_eq!(i.tag, None);
        assert_eq!(i.digest.as_deref(), Some(d.as_str()));
        let i = ImageInfo::parse(&format!("localhost:5000/app:2@{d}")).unwrap();
        assert_eq!(i.tag.as_deref(), Some("2"));
        assert_eq!(i.reference, format!("localhost:5000/app:2@{d}"));
        for bad in [
            "",
            "a b",
            "app:",
            "app:t@sha256:zz",
            "/app",
            "app@nope",
            "a//b",
        ] {
            assert!(ImageInfo::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn links() {
        let l = LinkInfo {
            url: "https://example.com/a.tgz".into(),
            sha256: None,
            md5: Some("D41D8CD98F00B204E9800998ECF8427E".into()),
        }
        .validated()
        .unwrap();
        assert_eq!(l.md5.as_deref(), Some("d41d8cd98f00b204e9800998ecf8427e"));
        let bad = LinkInfo {
            url: "javascript:alert(1)".into(),
            sha256: None,
            md5: None,
        };
        assert!(bad.validated().is_err());
        let bad = LinkInfo {
            url: "https://x".into(),
            sha256: Some("abc".into()),
            md5: None,
        };
        assert!(bad.validated().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("2w"), Ok(1_209_600));
        assert_eq!(parse_duration("15m"), Ok(900));
        for bad in ["", "d", "7x", "0s", "-1d", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn versions() {
        for ok in ["1.0.0", "2024-01-02", "1.0.0+build.5", "v3"] {
            validate_version(ok).unwrap();
        }
        for bad in ["", "latest", "-1", "1 0", "a/b", &"9".repeat(129)] {
            assert!(validate_version(bad).is_err(), "{bad:?}");
        }
    }
}

/// A package repository and how many versions it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RepositoryInfo {
    /// Repository key.
    pub repository: String,
    /// Package versions in it, of every pipeline: given to the bootstrap
    /// admin and `admin` tokens only (a listing shows others just the
    /// versions of pipelines they may read, and this count would tell
    /// them of the rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<u64>,
}

/// `GET /api/v1/packages`: the package repositories of the caller's
/// organization, by key.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RepositoryList {
    /// By key.
    pub repositories: Vec<RepositoryInfo>,
}

/// One member of a zip file, from its central directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ZipMember {
    /// Its path in the zip (a directory's ends with `/`).
    pub name: String,
    /// Bytes once read.
    pub size: u64,
    /// Bytes as stored in the zip.
    pub compressed: u64,
    /// Compression method (0 stored, 8 deflated; others cannot be viewed).
    pub method: u16,
    /// Whether it is encrypted (it cannot be viewed).
    pub encrypted: bool,
}

/// `GET /api/v1/files/{id}/members`: what a zip file holds.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ZipMembers {
    /// In the order of its central directory.
    pub members: Vec<ZipMember>,
}
