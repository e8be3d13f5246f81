//! Typed HTTP client for Satchel's REST API (`docs/api.md`).
//!
//! Used by the CLI and the tests. It speaks the wire types of
//! `satchel_model::api` and turns every non-2xx answer into
//! [`ClientError::Api`] with the server's code and message.

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use reqwest::{Method, StatusCode};
use satchel_model::api::{
    Artifact, ArtifactList, ArtifactWithFiles, BlobsStored, CreateTyped, CreateUpload, ErrorBody,
    FetchFiles, FileInfo, FileList, NewRun, Package, PackageList, PackageWithFiles, Promote,
    ResolveRequest, Resolved, Run, RunList, SetRunState, UploadCreated, UploadFinished,
};
use satchel_model::frames;
use serde::de::DeserializeOwned;

/// Errors talking to the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Machine-readable code.
        code: String,
        /// Human-readable message.
        message: String,
        /// Candidates of an ambiguous query.
        candidates: Option<Vec<FileInfo>>,
    },
    /// The request did not complete.
    #[error("cannot reach satchel at {url}: {source}")]
    Transport {
        /// Server URL.
        url: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// An answer broke off while its body streamed (a download).
    #[error("the answer from satchel at {url} broke off: {source}")]
    Interrupted {
        /// Server URL.
        url: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The server sent something unexpected.
    #[error("unexpected answer from satchel: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Whether the same request may succeed if sent again shortly: the
    /// server asked for it (`503`, e.g. content it relied on was being
    /// collected), or the connection failed or broke before an answer (a
    /// server restarting). Requests of uploads and downloads are
    /// idempotent, so the agent resends them after such a failure.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Api { status, .. } => *status == 503,
            // (A local file that cannot be read while it streams is a
            // request error too: retried, in vain, for 7 seconds.)
            ClientError::Transport { source, .. } => {
                source.is_connect() || source.is_timeout() || source.is_request()
            }
            ClientError::Interrupted { .. } => true,
            ClientError::Protocol(_) => false,
        }
    }
}

/// Parameters of a file search within one run.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    /// Path glob.
    pub query: String,
    /// Job key scope.
    pub job: Option<String>,
    /// Step key scope.
    pub step: Option<String>,
    /// Artifact name scope.
    pub name: Option<String>,
    /// Include files of superseded attempts.
    pub include_retried_jobs: bool,
}

/// A client for one server and token.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`) using `token`.
    pub fn new(base: &str, token: &str) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .pool_max_idle_per_host(16)
            // Below the server's 30 s header timeout, which also closes
            // idle keep-alive connections: never reuse one it is closing.
            .pool_idle_timeout(std::time::Duration::from_secs(15))
            .build()
            .map_err(|e| ClientError::Transport {
                url: base.into(),
                source: e,
            })?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http,
        })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token)
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = rb.send().await.map_err(|e| self.transport(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => ClientError::Api {
                status: status.as_u16(),
                code: b.error.code,
                message: b.error.message,
                candidates: b.error.candidates,
            },
            Err(_) => ClientError::Api {
                status: status.as_u16(),
                code: "http".into(),
                message: format!("HTTP {status}: {}", text.trim()),
                candidates: None,
            },
        })
    }

    /// A response body as a stream of chunks with transport errors mapped.
    fn body_stream(
        &self,
        resp: reqwest::Response,
    ) -> impl Stream<Item = Result<Bytes, ClientError>> + use<> {
        let url = self.base.clone();
        resp.bytes_stream()
            .map_err(move |e| ClientError::Interrupted {
                url: url.clone(),
                source: e,
            })
    }

    fn transport(&self, e: reqwest::Error) -> ClientError {
        ClientError::Transport {
            url: self.base.clone(),
            source: e,
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = self.send(rb).await?;
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<(), ClientError> {
        let r = self
            .http
            .get(format!("{}/healthz", self.base))
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        if r.status() == StatusCode::OK {
            Ok(())
        } else {
            Err(ClientError::Protocol(format!(
                "health check answered {}",
                r.status()
            )))
        }
    }

    /// Starts an upload.
    pub async fn create_upload(&self, req: &CreateUpload) -> Result<UploadCreated, ClientError> {
        let u: UploadCreated = self
            .json(self.request(Method::POST, "/uploads").json(req))
            .await?;
        received::id(&u.upload_id)?;
        received::id(&u.artifact_id)?;
        u.missing.iter().try_for_each(|d| received::sha256(d))?;
        Ok(u)
    }

    /// Sends one blob as a stream.
    pub async fn put_blob<S>(
        &self,
        upload_id: &str,
        sha256: &str,
        size: u64,
        body: S,
    ) -> Result<BlobsStored, ClientError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
    {
        let rb = self
            .request(Method::PUT, &format!("/uploads/{upload_id}/blobs/{sha256}"))
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(body));
        self.json(rb).await
    }

    /// Sends many small blobs framed in one body (see `docs/api.md`).
    pub async fn put_blob_batch(
        &self,
        upload_id: &str,
        framed: Bytes,
    ) -> Result<BlobsStored, ClientError> {
        self.json(
            self.request(Method::POST, &format!("/uploads/{upload_id}/blobs"))
                .body(framed),
        )
        .await
    }

    /// Which chunks of a large missing file the server lacks.
    pub async fn chunks_missing(
        &self,
        upload_id: &str,
        sha256: &str,
        chunks: &[frames::ChunkRecord],
    ) -> Result<satchel_model::api::ChunksMissing, ClientError> {
        let path = format!("/uploads/{upload_id}/blobs/{sha256}/chunks");
        self.send_chunk_list(&path, chunks).await
    }

    /// Posts a chunk list in its binary form; to a server from before it
    /// (which answers `400 invalid_json`), once more as JSON.
    async fn send_chunk_list<T: DeserializeOwned>(
        &self,
        path: &str,
        chunks: &[frames::ChunkRecord],
    ) -> Result<T, ClientError> {
        let mut body = Vec::with_capacity(chunks.len() * frames::CHUNK_RECORD);
        for (size, digest) in chunks {
            frames::push_chunk_record(&mut body, *size, digest);
        }
        let binary = self
            .request(Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, frames::CHUNK_LIST_TYPE)
            .body(body);
        match self.json(binary).await {
            Err(ClientError::Api {
                status: 400, code, ..
            }) if code == "invalid_json" => {
                let list = satchel_model::api::ChunkList {
                    chunks: chunks
                        .iter()
                        .map(|(size, digest)| satchel_model::api::ChunkRef {
                            sha256: hex::encode(digest),
                            size: u64::from(*size),
                        })
                        .collect(),
                };
                self.json(self.request(Method::POST, path).json(&list))
                    .await
            }
            other => other,
        }
    }

    /// Sends one chunk of a large file.
    pub async fn put_chunk(
        &self,
        upload_id: &str,
        sha256: &str,
        data: Bytes,
    ) -> Result<BlobsStored, ClientError> {
        self.json(
            self.request(
                Method::PUT,
                &format!("/uploads/{upload_id}/chunks/{sha256}"),
            )
            .body(data),
        )
        .await
    }

    /// Asks the server to make a large file out of its stored chunks.
    pub async fn assemble(
        &self,
        upload_id: &str,
        sha256: &str,
        chunks: &[frames::ChunkRecord],
    ) -> Result<BlobsStored, ClientError> {
        let path = format!("/uploads/{upload_id}/blobs/{sha256}/assemble");
        self.send_chunk_list(&path, chunks).await
    }

    /// Makes an upload's files visible.
    pub async fn finish_upload(&self, upload_id: &str) -> Result<UploadFinished, ClientError> {
        self.json(self.request(Method::POST, &format!("/uploads/{upload_id}/finish")))
            .await
    }

    /// Abandons an upload.
    pub async fn abort_upload(&self, upload_id: &str) -> Result<(), ClientError> {
        self.send(self.request(Method::POST, &format!("/uploads/{upload_id}/abort")))
            .await
            .map(|_| ())
    }

    /// Every page of a list at `path` with `params`: `page` reads one
    /// response into its items and its `next_cursor`.
    async fn all_pages<L: DeserializeOwned, T>(
        &self,
        path: &str,
        params: &[(&str, String)],
        mut page: impl FnMut(L) -> Result<(Vec<T>, Option<String>), ClientError>,
    ) -> Result<Vec<T>, ClientError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        // A server that hands out a cursor twice would keep this loop going.
        let mut seen = std::collections::HashSet::new();
        loop {
            let mut q: Vec<(&str, String)> = params.to_vec();
            if let Some(c) = cursor.take() {
                q.push(("cursor", c));
            }
            let l: L = self.json(self.request(Method::GET, path).query(&q)).await?;
            let (items, next) = page(l)?;
            out.extend(items);
            match next {
                Some(next) if !seen.insert(next.clone()) => {
                    return Err(ClientError::Protocol(format!(
                        "{path} gave the cursor {next:?} twice"
                    )))
                }
                Some(next) => cursor = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Runs of a pipeline, newest first (every page).
    pub async fn list_runs(&self, pipeline: &str) -> Result<Vec<Run>, ClientError> {
        self.all_pages(&format!("/pipelines/{pipeline}/runs"), &[], |l: RunList| {
            l.runs.iter().try_for_each(received::run)?;
            Ok((l.runs, l.next_cursor))
        })
        .await
    }

    /// Artifacts of a run, but those of superseded job attempts (every page).
    pub async fn list_artifacts(
        &self,
        pipeline: &str,
        run: u64,
    ) -> Result<Vec<Artifact>, ClientError> {
        self.all_pages(
            &format!("/pipelines/{pipeline}/runs/{run}/artifacts"),
            &[],
            |l: ArtifactList| {
                l.artifacts.iter().try_for_each(received::artifact)?;
                Ok((l.artifacts, l.next_cursor))
            },
        )
        .await
    }

    /// One artifact with all its files (every page).
    pub async fn get_artifact(&self, id: &str) -> Result<ArtifactWithFiles, ClientError> {
        let mut artifact = None;
        let files = self
            .all_pages(&format!("/artifacts/{id}"), &[], |a: ArtifactWithFiles| {
                received::artifact(&a.artifact)?;
                a.files.iter().try_for_each(received::file)?;
                artifact = Some(a.artifact);
                Ok((a.files, a.next_cursor))
            })
            .await?;
        Ok(ArtifactWithFiles {
            artifact: artifact.expect("at least one page"),
            files,
            next_cursor: None,
        })
    }

    /// Deletes an artifact.
    pub async fn delete_artifact(&self, id: &str) -> Result<Artifact, ClientError> {
        self.json(self.request(Method::DELETE, &format!("/artifacts/{id}")))
            .await
    }

    /// Searches files of a run; `for_download` applies the download rules
    /// (ambiguity error, latest per path).
    pub async fn search(
        &self,
        pipeline: &str,
        run: u64,
        q: &SearchQuery,
        for_download: bool,
    ) -> Result<Vec<FileInfo>, ClientError> {
        let mut params: Vec<(&str, String)> = vec![("query", q.query.clone())];
        for (k, v) in [("job", &q.job), ("step", &q.step), ("name", &q.name)] {
            if let Some(v) = v {
                params.push((k, v.clone()));
            }
        }
        if q.include_retried_jobs {
            params.push(("include_retried_jobs", "true".into()));
        }
        params.push((
            "purpose",
            if for_download { "download" } else { "list" }.into(),
        ));
        self.all_pages(
            &format!("/pipelines/{pipeline}/runs/{run}/search"),
            &params,
            |l: FileList| {
                l.files.iter().try_for_each(received::file)?;
                Ok((l.files, l.next_cursor))
            },
        )
        .await
    }

    /// Streams one file's whole content (pieces: [`Client::file_range`]).
    pub async fn file_content(
        &self,
        id: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, ClientError>> + use<>, ClientError> {
        let rb = self.request(Method::GET, &format!("/files/{id}/content"));
        let resp = self.send(rb).await?;
        Ok(self.body_stream(resp))
    }

    /// Bytes `start..end` of one file, all of them: `Ok(None)` when the
    /// server (or a proxy before it) ignored the range and answered with
    /// the whole file (nothing of that answer is read).
    pub async fn file_range(
        &self,
        id: &str,
        start: u64,
        end: u64,
    ) -> Result<Option<Bytes>, ClientError> {
        if start >= end {
            return Err(ClientError::Protocol(format!(
                "an empty range ({start}..{end}) of file {id} was asked for"
            )));
        }
        let rb = self
            .request(Method::GET, &format!("/files/{id}/content"))
            .header(reqwest::header::RANGE, format!("bytes={start}-{}", end - 1));
        let resp = self.send(rb).await?;
        if resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            return Ok(None);
        }
        let want = format!("bytes {start}-{}/", end - 1);
        let got = resp
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !got.starts_with(&want) {
            return Err(ClientError::Protocol(format!(
                "asked for bytes {start}-{} of file {id}, got Content-Range {got:?}",
                end - 1
            )));
        }
        let body = resp.bytes().await.map_err(|e| ClientError::Interrupted {
            url: self.base.clone(),
            source: e,
        })?;
        if body.len() as u64 != end - start {
            return Err(ClientError::Protocol(format!(
                "asked for {} bytes at offset {start} of file {id}, got {}",
                end - start,
                body.len()
            )));
        }
        Ok(Some(body))
    }

    /// Streams many files' content framed (big-endian u64 length, bytes), in
    /// the order of `ids`.
    pub async fn files_content(
        &self,
        ids: Vec<String>,
    ) -> Result<impl Stream<Item = Result<Bytes, ClientError>> + use<>, ClientError> {
        let resp = self
            .send(
                self.request(Method::POST, "/files/content")
                    .json(&FetchFiles { ids }),
            )
            .await?;
        Ok(self.body_stream(resp))
    }

    /// One run.
    pub async fn get_run(&self, pipeline: &str, run: u64) -> Result<Run, ClientError> {
        let r: Run = self
            .json(self.request(Method::GET, &format!("/pipelines/{pipeline}/runs/{run}")))
            .await?;
        received::run(&r)?;
        Ok(r)
    }

    /// Runs `from` and `to` (each `PIPELINE#RUN`) compared from metadata;
    /// `artifact` compares one artifact.
    pub async fn diff(
        &self,
        from: &str,
        to: &str,
        artifact: Option<&str>,
    ) -> Result<satchel_model::diff::RunDiff, ClientError> {
        let mut req = self
            .request(Method::GET, "/diff")
            .query(&[("from", from), ("to", to)]);
        if let Some(a) = artifact {
            req = req.query(&[("artifact", a)]);
        }
        self.json(req).await
    }

    /// The runs, in pipelines this token may read, whose CI build id is
    /// `build` (a Buildkite build UUID, `GITHUB_RUN_ID`, …).
    pub async fn runs_of_build(
        &self,
        build: &str,
        pipeline: Option<&str>,
    ) -> Result<Vec<Run>, ClientError> {
        let mut req = self.request(Method::GET, &format!("/builds/{build}"));
        if let Some(p) = pipeline {
            req = req.query(&[("pipeline", p)]);
        }
        let l: RunList = self.json(req).await?;
        l.runs.iter().try_for_each(received::run)?;
        Ok(l.runs)
    }

    /// Starts the next run of a pipeline.
    pub async fn create_run(&self, pipeline: &str, req: &NewRun) -> Result<Run, ClientError> {
        let r: Run = self
            .json(
                self.request(Method::POST, &format!("/pipelines/{pipeline}/runs"))
                    .json(req),
            )
            .await?;
        received::run(&r)?;
        Ok(r)
    }

    /// Records a run's state.
    pub async fn set_run_state(
        &self,
        pipeline: &str,
        run: u64,
        req: &SetRunState,
    ) -> Result<Run, ClientError> {
        let r: Run = self
            .json(
                self.request(
                    Method::PUT,
                    &format!("/pipelines/{pipeline}/runs/{run}/state"),
                )
                .json(req),
            )
            .await?;
        received::run(&r)?;
        Ok(r)
    }

    /// Publishes a typed (image or link) artifact.
    pub async fn create_typed(&self, req: &CreateTyped) -> Result<Artifact, ClientError> {
        self.json(self.request(Method::POST, "/artifacts").json(req))
            .await
    }

    /// Resolves a `$[…]` reference.
    pub async fn resolve(&self, req: &ResolveRequest) -> Result<Resolved, ClientError> {
        self.json(self.request(Method::POST, "/resolve").json(req))
            .await
    }

    /// The absolute URL of an API path such as a resolved files artifact's
    /// `/api/v1/artifacts/ID/archive`.
    pub fn absolute(&self, api_path: &str) -> String {
        if api_path.starts_with('/') {
            format!("{}{api_path}", self.base)
        } else {
            api_path.to_string()
        }
    }

    /// Promotes an artifact to a package version.
    pub async fn promote(&self, req: &Promote) -> Result<Package, ClientError> {
        self.json(self.request(Method::POST, "/packages").json(req))
            .await
    }

    /// Package versions of a repository, newest first.
    pub async fn list_packages(
        &self,
        repository: &str,
        package: Option<&str>,
    ) -> Result<Vec<Package>, ClientError> {
        let params: Vec<(&str, String)> = package
            .map(|p| ("package", p.to_string()))
            .into_iter()
            .collect();
        self.all_pages(
            &format!("/packages/{}", encode(repository)),
            &params,
            |l: PackageList| Ok((l.packages, l.next_cursor)),
        )
        .await
    }

    /// One package version (`latest` for the newest) with its files.
    pub async fn get_package(
        &self,
        repository: &str,
        package: &str,
        version: &str,
    ) -> Result<PackageWithFiles, ClientError> {
        let p: PackageWithFiles = self
            .json(self.request(
                Method::GET,
                &format!(
                    "/packages/{}/{}/{}",
                    encode(repository),
                    encode(package),
                    encode(version)
                ),
            ))
            .await?;
        for f in &p.files {
            received::path(&f.path)?;
            received::sha256(&f.sha256)?;
        }
        Ok(p)
    }

    /// Streams one file of a package version.
    pub async fn package_file(
        &self,
        repository: &str,
        package: &str,
        version: &str,
        path: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, ClientError>> + use<>, ClientError> {
        let path: Vec<String> = path.split('/').map(encode).collect();
        let resp = self
            .send(self.request(
                Method::GET,
                &format!(
                    "/packages/{}/{}/{}/files/{}",
                    encode(repository),
                    encode(package),
                    encode(version),
                    path.join("/")
                ),
            ))
            .await?;
        Ok(self.body_stream(resp))
    }

    /// Runs garbage collection now (admin): expires due artifacts and
    /// deletes content nothing live references that is older than
    /// `grace_seconds` (default: the server's, one hour).
    pub async fn admin_gc(
        &self,
        grace_seconds: Option<u64>,
    ) -> Result<serde_json::Value, ClientError> {
        self.json(
            self.request(Method::POST, "/admin/gc")
                .json(&serde_json::json!({ "grace_seconds": grace_seconds })),
        )
        .await
    }

    /// Encryption keys and their use (admin).
    pub async fn admin_keys(&self) -> Result<serde_json::Value, ClientError> {
        self.json(self.request(Method::GET, "/admin/keys")).await
    }

    /// Starts re-encrypting stored content with the active key (admin).
    pub async fn admin_rotate_keys(&self) -> Result<serde_json::Value, ClientError> {
        self.json(self.request(Method::POST, "/admin/keys/rotate"))
            .await
    }

    /// Checks every referenced blob (admin); reports, never repairs.
    pub async fn admin_fsck(&self, forget_damaged: bool) -> Result<serde_json::Value, ClientError> {
        let path = if forget_damaged {
            "/admin/fsck?forget_damaged=true"
        } else {
            "/admin/fsck"
        };
        self.json(self.request(Method::POST, path)).await
    }

    /// Issues a GitHub Actions runtime token for one job (admin only):
    /// `{token, expires_at, workflow_run_backend_id, workflow_job_run_backend_id}`.
    pub async fn mint_gha_token(
        &self,
        pipeline: &str,
        run: u64,
        job: &str,
        ttl_seconds: Option<u64>,
    ) -> Result<serde_json::Value, ClientError> {
        self.json(
            self.request(Method::POST, "/gha/tokens")
                .json(&serde_json::json!({
                    "pipeline": pipeline,
                    "run": run,
                    "job": job,
                    "ttl_seconds": ttl_seconds,
                })),
        )
        .await
    }

    /// Creates a token; the answer carries its secret, this once.
    pub async fn create_token(
        &self,
        req: &satchel_model::access::NewToken,
    ) -> Result<satchel_model::access::TokenCreated, ClientError> {
        self.json(self.request(Method::POST, "/admin/tokens").json(req))
            .await
    }

    /// Tokens (never their secrets).
    pub async fn list_tokens(&self) -> Result<satchel_model::access::TokenList, ClientError> {
        self.json(self.request(Method::GET, "/admin/tokens")).await
    }

    /// Revokes a token; it stops working on the next request.
    pub async fn revoke_token(
        &self,
        id: &str,
    ) -> Result<satchel_model::access::TokenInfo, ClientError> {
        self.json(self.request(
            Method::POST,
            &format!("/admin/tokens/{}/revoke", encode(id)),
        ))
        .await
    }

    /// Creates an organization (bootstrap admin).
    pub async fn create_org(
        &self,
        name: &str,
    ) -> Result<satchel_model::access::OrgInfo, ClientError> {
        self.json(
            self.request(Method::POST, "/admin/orgs")
                .json(&serde_json::json!({ "name": name })),
        )
        .await
    }

    /// Organizations.
    pub async fn list_orgs(&self) -> Result<satchel_model::access::OrgList, ClientError> {
        self.json(self.request(Method::GET, "/admin/orgs")).await
    }

    /// Creates a cluster.
    pub async fn create_cluster(
        &self,
        name: &str,
        org: Option<&str>,
    ) -> Result<satchel_model::access::ClusterInfo, ClientError> {
        self.json(
            self.request(Method::POST, "/admin/clusters")
                .json(&serde_json::json!({ "name": name, "org": org })),
        )
        .await
    }

    /// Clusters.
    pub async fn list_clusters(&self) -> Result<satchel_model::access::ClusterList, ClientError> {
        self.json(self.request(Method::GET, "/admin/clusters"))
            .await
    }

    /// Creates a pipeline in a cluster.
    pub async fn create_pipeline(
        &self,
        name: &str,
        org: Option<&str>,
        cluster: &str,
    ) -> Result<satchel_model::access::PipelineInfo, ClientError> {
        self.json(
            self.request(Method::POST, "/admin/pipelines")
                .json(&serde_json::json!({ "name": name, "org": org, "cluster": cluster })),
        )
        .await
    }

    /// Moves a pipeline to another cluster.
    pub async fn move_pipeline(
        &self,
        name: &str,
        org: Option<&str>,
        cluster: &str,
    ) -> Result<satchel_model::access::PipelineInfo, ClientError> {
        self.json(
            self.request(
                Method::POST,
                &format!("/admin/pipelines/{}/move", encode(name)),
            )
            .json(&serde_json::json!({ "org": org, "cluster": cluster })),
        )
        .await
    }

    /// The pipelines this token may read.
    pub async fn list_pipelines(&self) -> Result<satchel_model::access::PipelineList, ClientError> {
        self.json(self.request(Method::GET, "/pipelines")).await
    }

    /// Creates an artifact-read rule.
    pub async fn create_rule(
        &self,
        req: &satchel_model::access::NewRule,
    ) -> Result<satchel_model::access::RuleInfo, ClientError> {
        self.json(self.request(Method::POST, "/admin/rules").json(req))
            .await
    }

    /// Rules.
    pub async fn list_rules(&self) -> Result<satchel_model::access::RuleList, ClientError> {
        self.json(self.request(Method::GET, "/admin/rules")).await
    }

    /// Deletes a rule.
    pub async fn delete_rule(
        &self,
        id: &str,
    ) -> Result<satchel_model::access::RuleInfo, ClientError> {
        self.json(self.request(Method::DELETE, &format!("/admin/rules/{}", encode(id))))
            .await
    }

    /// One page of the audit log, newest first.
    pub async fn audit(
        &self,
        q: &satchel_model::access::AuditQuery,
    ) -> Result<satchel_model::access::AuditPage, ClientError> {
        self.json(self.request(Method::GET, "/admin/audit").query(q))
            .await
    }
}

/// Percent-encodes one path segment (RFC 3986 unreserved characters stay).
pub fn encode(segment: &str) -> String {
    satchel_model::path::url_segment(segment)
}

/// What a server sends is checked as strictly as the server checks what
/// it receives, because the CLI turns names and paths into local file
/// names and ids into URLs: a server (or anything between it and the
/// agent) answering `/tmp/x` as an artifact name or `../../x` as a path
/// must not make a job write outside its destination.
mod received {
    use satchel_model::api::{Artifact, FileInfo, Run};

    use super::ClientError;

    fn invalid(what: &str, value: &str, why: impl std::fmt::Display) -> ClientError {
        ClientError::Protocol(format!(
            "the server sent an invalid {what} {value:?}: {why}"
        ))
    }

    pub(super) fn id(value: &str) -> Result<(), ClientError> {
        if satchel_model::id::is_id(value) {
            Ok(())
        } else {
            Err(invalid("id", value, "ids are 32 lowercase hex digits"))
        }
    }

    fn name(value: &str) -> Result<(), ClientError> {
        satchel_model::names::validate_artifact_name(value)
            .map_err(|e| invalid("artifact name", value, e))
    }

    pub(super) fn path(value: &str) -> Result<(), ClientError> {
        satchel_model::path::validate(value).map_err(|e| invalid("file path", value, e))
    }

    pub(super) fn sha256(value: &str) -> Result<(), ClientError> {
        if value.len() == 64
            && value
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            Ok(())
        } else {
            Err(invalid("sha256", value, "expected 64 lowercase hex digits"))
        }
    }

    pub(super) fn run(r: &Run) -> Result<(), ClientError> {
        id(&r.id)?;
        satchel_model::names::validate_key("pipeline", &r.pipeline)
            .map_err(|e| invalid("pipeline", &r.pipeline, e))
    }

    pub(super) fn artifact(a: &Artifact) -> Result<(), ClientError> {
        id(&a.id)?;
        name(&a.name)
    }

    pub(super) fn file(f: &FileInfo) -> Result<(), ClientError> {
        id(&f.id)?;
        id(&f.artifact_id)?;
        name(&f.artifact_name)?;
        path(&f.path)?;
        sha256(&f.sha256)
    }
}

/// A chunk list in its binary form ([`frames`]): 36 bytes a chunk where
/// JSON takes about 90, and it is sent twice per large file.
#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    /// A server from before binary chunk lists: `400 invalid_json` to
    /// anything but JSON. Answers `count` requests; the content types seen.
    fn old_server(count: usize) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..count {
                let (mut stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (mut len, mut kind) = (0usize, String::new());
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let line = line.trim_end().to_ascii_lowercase();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if let Some(v) = line.strip_prefix("content-type:") {
                        kind = v.trim().to_string();
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let (status, answer) = if kind == "application/json" {
                    ("200 OK", r#"{"missing":[0]}"#)
                } else {
                    (
                        "400 Bad Request",
                        r#"{"error":{"code":"invalid_json","message":"the JSON body must be an object"}}"#,
                    )
                };
                write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                )
                .unwrap();
                seen.push(kind);
            }
            seen
        });
        (url, seen)
    }

    #[test]
    fn chunk_lists_fall_back_to_json_for_an_older_server() {
        let (url, seen) = old_server(2);
        let client = Client::new(&url, "t").unwrap();
        let list = [(10, [0xab; 32])];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let missing = rt
            .block_on(client.chunks_missing(&"0".repeat(32), &"cd".repeat(32), &list))
            .unwrap();
        assert_eq!(missing.missing, vec![0]);
        assert_eq!(
            seen.join().unwrap(),
            vec![
                frames::CHUNK_LIST_TYPE.to_string(),
                "application/json".into()
            ]
        );
    }
}
