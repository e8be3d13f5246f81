//! Wire types of the REST API under `/api/v1`.
//!
//! The server and the typed client both use these structs, so the JSON shape
//! is defined once. `docs/api.md` documents them for people scripting against
//! the API.

use serde::{Deserialize, Serialize};

/// Where a job is: the producer of an upload. Runs, stages, jobs and attempts
/// named here are created on first use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
}

fn one() -> u32 {
    1
}

/// One file announced in an upload manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateUpload {
    /// Producing job.
    pub context: JobContext,
    /// Artifact name; absent means the job's default artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Files of this upload.
    pub files: Vec<NewFile>,
}

/// Answer to [`CreateUpload`].
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadFinished {
    /// The artifact, now finished and visible.
    pub artifact: Artifact,
    /// Files this upload added.
    pub files_added: u64,
    /// Bytes this upload added.
    pub bytes_added: u64,
}

/// Answer to a blob batch upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobsStored {
    /// Number of blobs stored by the request.
    pub stored: u64,
    /// Bytes stored by the request.
    pub bytes: u64,
}

/// Lifecycle of an artifact.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
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

/// Who produced something: pipeline, run, stage, job, attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Artifact {
    /// Id.
    pub id: String,
    /// Name, unique in the run among named artifacts; a job's default
    /// artifact is called `default` (one per job attempt).
    pub name: String,
    /// Whether this is the job's default (unnamed) artifact.
    pub is_default: bool,
    /// `files` for now; typed kinds come later.
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
}

/// A stored file with everything a user may scope or check by.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileList {
    /// The files.
    pub files: Vec<FileInfo>,
}

/// A list of artifacts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactList {
    /// The artifacts.
    pub artifacts: Vec<Artifact>,
}

/// An artifact with its files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactWithFiles {
    /// The artifact.
    pub artifact: Artifact,
    /// Its visible files.
    pub files: Vec<FileInfo>,
}

/// A run of a pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// `running`, `passed`, `failed` or `canceled`.
    pub state: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

/// A list of runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunList {
    /// The runs, newest first.
    pub runs: Vec<Run>,
}

/// `POST /api/v1/files/content`: fetch many small files in one response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchFiles {
    /// File ids; the response carries them in this order.
    pub ids: Vec<String>,
}

/// The JSON body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `ambiguous_query`.
    pub code: String,
    /// Human-readable message that says what to do.
    pub message: String,
    /// For `ambiguous_query`: the candidate files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<Vec<FileInfo>>,
}

/// Length of the header of a frame in a blob batch body: 32 bytes of raw
/// SHA-256 then the content length as a big-endian `u64`.
pub const BLOB_FRAME_HEADER: usize = 40;

/// Length of the header of a frame in a file batch response: the content
/// length as a big-endian `u64`.
pub const FILE_FRAME_HEADER: usize = 8;
