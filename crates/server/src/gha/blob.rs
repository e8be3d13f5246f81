//! The signed blob URLs of the GitHub Actions protocol: the subset of the
//! Azure Blob block API that the client's Azure SDK uses to upload, and a
//! plain download.
//!
//! - `PUT …?comp=block&blockid=ID`: one block, stored as a scratch file
//!   named after its id. Blocks arrive concurrently and out of order; a
//!   retry with the same id replaces the block. Answers 201.
//! - `PUT …?comp=blocklist` with `<BlockList><Latest>ID</Latest>…`: the
//!   blob is the listed blocks in list order. It is hashed, stored in the
//!   content store durably, and recorded; FinalizeArtifact then checks the
//!   client's size and digest against it. Until then the session keeps the
//!   blob announced to GC ([`crate::gate`]), since no file references it. The scratch blocks are deleted
//!   then (a retry of the same list answers 201 again). Answers 201.
//!
//! A session holds at most [`super::Gha::max_session_bytes`] of blocks
//! (413 past that), and sessions idle for a day are reaped by the periodic
//! maintenance task ([`super::Gha::reap_idle`]).
//! - `PUT …` without `comp`: the whole blob in one request (Put Blob).
//! - `GET /gha-blob/d/…`: the file, 200, `application/zip` for archives.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, TryStreamExt};
use satchel_store::{Digest, Durability};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::{now_secs, TwirpError};
use crate::AppState;

/// Largest block accepted (Azure allows 4000 MiB; the client sends 8 MiB).
const MAX_BLOCK: u64 = 256 * 1024 * 1024;
/// Most blocks in one blob (Azure's limit).
const MAX_BLOCKS: usize = 50_000;

/// An upload between CreateArtifact and FinalizeArtifact.
#[derive(Debug)]
pub struct Session {
    /// Random id, in the signed URL.
    pub id: String,
    /// The stored file's name: `NAME.zip`, or the raw file's name.
    pub file_name: String,
    /// Content type of the stored file.
    pub mime: String,
    /// Scratch directory of the blocks.
    dir: PathBuf,
    /// The committed blob: sha256 (hex) and size.
    pub assembled: Option<(String, u64)>,
    /// The block ids of the committed block list.
    committed: Option<Vec<String>>,
    /// Keeps GC (on every replica) off the committed blob, which nothing
    /// else references until FinalizeArtifact records its file; ends when
    /// the session does (finalized, replaced or reaped).
    holds: Option<crate::gate::Writing>,
    /// When `holds` began, in seconds since the epoch.
    held_since: Option<u64>,
    /// Sizes of the blocks in scratch, by file name.
    blocks: HashMap<PathBuf, u64>,
    /// When the session was last used, in seconds since the epoch.
    pub(super) touched: u64,
}

impl Session {
    /// A new session with its scratch directory.
    pub fn new(scratch: &FsPath, file_name: String, mime: String) -> std::io::Result<Session> {
        let id = satchel_model::id::random_hex(16);
        let dir = scratch.join(&id);
        std::fs::create_dir_all(&dir)?;
        Ok(Session {
            id,
            file_name,
            mime,
            dir,
            assembled: None,
            committed: None,
            holds: None,
            held_since: None,
            blocks: HashMap::new(),
            touched: now_secs(),
        })
    }

    /// Bytes of the blocks in scratch, except `but`.
    fn scratch_bytes(&self, but: &FsPath) -> u64 {
        self.blocks
            .iter()
            .filter(|(p, _)| p.as_path() != but)
            .map(|(_, n)| n)
            .sum()
    }

    /// When the announcement that keeps the committed blob from GC began
    /// (seconds since the epoch), if there is one.
    pub fn committed_at(&self) -> Option<u64> {
        self.held_since.filter(|_| self.holds.is_some())
    }

    /// Takes the announcement (and when it began) out, for a finalize to
    /// hold until the blob's file row is committed, whatever becomes of
    /// the session meanwhile.
    pub(super) fn take_hold(&mut self) -> Option<(crate::gate::Writing, u64)> {
        Some((self.holds.take()?, self.held_since?))
    }

    /// Puts back an announcement a failed finalize took, unless another
    /// commit replaced it meanwhile.
    pub(super) fn put_hold(&mut self, hold: (crate::gate::Writing, u64)) {
        if self.holds.is_none() {
            self.holds = Some(hold.0);
            self.held_since = Some(hold.1);
        }
    }

    /// Removes the scratch blocks.
    pub fn discard(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct Params {
    se: Option<u64>,
    sig: Option<String>,
    comp: Option<String>,
    blockid: Option<String>,
}

fn forbidden(msg: &str) -> TwirpError {
    TwirpError::new(StatusCode::FORBIDDEN, "permission_denied", msg)
}

fn check_signature(s: &AppState, what: &str, p: &Params) -> Result<(), TwirpError> {
    let (Some(se), Some(sig)) = (p.se, p.sig.as_deref()) else {
        return Err(forbidden("this URL is not signed"));
    };
    if se <= now_secs() {
        return Err(forbidden("this signed URL has expired"));
    }
    if !s.gha.keys.check_url(what, se, sig, now_secs()) {
        return Err(forbidden("the signature of this URL is not valid"));
    }
    Ok(())
}

/// Runs `f` on the live session with this id, marking it used.
fn with_session<T>(
    s: &AppState,
    id: &str,
    f: impl FnOnce(&mut Session) -> T,
) -> Result<T, TwirpError> {
    let mut sessions = s.gha.sessions.lock().unwrap_or_else(|p| p.into_inner());
    let x = sessions.values_mut().find(|x| x.id == id).ok_or_else(|| {
        TwirpError::not_found("no upload in progress for this URL (finalized or replaced)")
    })?;
    x.touched = now_secs();
    Ok(f(x))
}

fn too_large(max: u64) -> TwirpError {
    TwirpError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_argument",
        format!("an upload may hold at most {max} bytes"),
    )
}

/// Streams a block (or a whole blob) into `path` within the session's
/// byte allowance and accounts for it.
async fn write_block(
    s: &AppState,
    session: &str,
    path: &FsPath,
    body: Body,
    max: u64,
) -> Result<(), TwirpError> {
    let cap = s.gha.max_session_bytes();
    let allowance = with_session(s, session, |x| cap.saturating_sub(x.scratch_bytes(path)))?;
    let n = match write_body(body, path, max.min(allowance)).await {
        Err(e) if e.status == StatusCode::PAYLOAD_TOO_LARGE && allowance < max => {
            return Err(too_large(cap))
        }
        r => r?,
    };
    // Concurrent blocks may together pass the cap: the last one loses.
    let over = with_session(s, session, |x| {
        x.blocks.insert(path.to_path_buf(), n);
        let over = x.scratch_bytes(FsPath::new("")) > cap;
        if over {
            x.blocks.remove(path);
        }
        over
    })?;
    if over {
        let _ = tokio::fs::remove_file(path).await;
        return Err(too_large(cap));
    }
    Ok(())
}

/// Most bytes in a block id, once base64-decoded (Azure's limit).
const MAX_BLOCK_ID: usize = 64;

/// A block id (base64 of 1 to 64 bytes, as Azure requires) as a safe file
/// name: hex of its decoded bytes, so at most 128 characters.
fn block_file(dir: &FsPath, id: &str) -> Result<PathBuf, TwirpError> {
    use base64::Engine as _;
    let b64 = &base64::engine::general_purpose::STANDARD;
    let raw = b64
        .decode(id)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(id))
        .map_err(|_| TwirpError::invalid("a block id must be base64"))?;
    if raw.is_empty() || raw.len() > MAX_BLOCK_ID {
        return Err(TwirpError::invalid(format!(
            "a block id must be base64 of 1 to {MAX_BLOCK_ID} bytes ({} given)",
            raw.len()
        )));
    }
    Ok(dir.join(format!("{}.block", hex::encode(raw))))
}

/// Streams `body` into `path` (via a temp file and rename), at most `max` bytes.
async fn write_body(body: Body, path: &FsPath, max: u64) -> Result<u64, TwirpError> {
    let tmp = path.with_extension(format!("tmp{}", satchel_model::id::random_hex(4)));
    let res = async {
        let mut f = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| TwirpError::internal(format!("scratch write: {e}")))?;
        let mut stream = body.into_data_stream();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| TwirpError::invalid(format!("reading the body: {e}")))?;
            n += chunk.len() as u64;
            if n > max {
                return Err(TwirpError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_argument",
                    format!("a block may hold at most {max} bytes"),
                ));
            }
            f.write_all(&chunk)
                .await
                .map_err(|e| TwirpError::internal(format!("scratch write: {e}")))?;
        }
        f.flush()
            .await
            .map_err(|e| TwirpError::internal(format!("scratch write: {e}")))?;
        tokio::fs::rename(&tmp, path)
            .await
            .map_err(|e| TwirpError::internal(format!("scratch rename: {e}")))?;
        Ok(n)
    }
    .await;
    if res.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    res
}

/// The block ids of a block list, in order (`Latest`, `Uncommitted` and
/// `Committed` entries alike). Every slice is taken at the position of an
/// ASCII delimiter just found, so no input can make it panic.
pub fn parse_block_list(xml: &str) -> Result<Vec<String>, String> {
    const OPEN: &str = "<BlockList>";
    let start = xml.find(OPEN).ok_or("the body is not a <BlockList>")? + OPEN.len();
    let end = xml[start..]
        .find("</BlockList>")
        .ok_or("the <BlockList> is not closed")?
        + start;
    let mut rest = &xml[start..end];
    let mut ids = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let unexpected = |s: &str| {
            let shown: String = s.chars().take(40).collect();
            format!("unexpected {shown:?} in the block list")
        };
        let Some(entry) = rest.strip_prefix('<') else {
            return Err(unexpected(rest));
        };
        let Some(open_end) = entry.find('>') else {
            return Err("a block list entry is not closed".into());
        };
        let tag = &entry[..open_end];
        if !matches!(tag, "Latest" | "Uncommitted" | "Committed") {
            return Err(unexpected(rest));
        }
        let body = &entry[open_end + 1..];
        let close = format!("</{tag}>");
        let body_end = body
            .find(&close)
            .ok_or_else(|| format!("<{tag}> is not closed"))?;
        let id = body[..body_end].trim();
        ids.push(
            id.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &body[body_end + close.len()..];
    }
    Ok(ids)
}

fn created() -> Response {
    let mut r = StatusCode::CREATED.into_response();
    r.headers_mut().insert(
        "x-ms-request-server-encrypted",
        HeaderValue::from_static("true"),
    );
    r
}

pub(super) async fn put(
    State(s): State<AppState>,
    Path((session, _file)): Path<(String, String)>,
    Query(p): Query<Params>,
    note: Option<axum::Extension<crate::audit::AuditNote>>,
    body: Body,
) -> Result<Response, TwirpError> {
    if let Some(n) = note {
        n.resource(format!("gha-upload={session}"));
    }
    check_signature(&s, &format!("u/{session}"), &p)?;
    let dir = with_session(&s, &session, |x| x.dir.clone())?;
    match p.comp.as_deref() {
        Some("block") => {
            let id = p
                .blockid
                .as_deref()
                .ok_or_else(|| TwirpError::invalid("comp=block needs a blockid"))?;
            let path = block_file(&dir, id)?;
            write_block(&s, &session, &path, body, MAX_BLOCK).await?;
            Ok(created())
        }
        Some("blocklist") => {
            let xml = axum::body::to_bytes(body, 16 * 1024 * 1024)
                .await
                .map_err(|e| TwirpError::invalid(format!("reading the block list: {e}")))?;
            let xml = String::from_utf8(xml.to_vec())
                .map_err(|_| TwirpError::invalid("the block list is not UTF-8"))?;
            let ids = parse_block_list(&xml).map_err(TwirpError::invalid)?;
            if ids.len() > MAX_BLOCKS {
                return Err(TwirpError::invalid(format!(
                    "a block list may name at most {MAX_BLOCKS} blocks"
                )));
            }
            // A retry of the list that was committed (its blocks are gone).
            if with_session(&s, &session, |x| x.committed.as_ref() == Some(&ids))? {
                return Ok(created());
            }
            let mut files = Vec::with_capacity(ids.len());
            for id in &ids {
                files.push(block_file(&dir, id)?);
            }
            let size = listed_size(&s, &session, &ids, &files)?;
            commit(&s, &session, files, Some(ids), size).await?;
            Ok(created())
        }
        None => {
            let path = dir.join("whole.blob");
            write_block(&s, &session, &path, body, u64::MAX).await?;
            let cap = s.gha.max_session_bytes();
            commit(&s, &session, vec![path], None, cap).await?;
            Ok(created())
        }
        Some(other) => Err(TwirpError::invalid(format!(
            "comp={other} is not supported (block and blocklist are)"
        ))),
    }
}

/// The size of the blob a block list describes, counting a block as often
/// as the list names it, refused past the session's byte cap: a list that
/// names one block many times must not assemble more than the session
/// could hold as distinct blocks.
fn listed_size(
    s: &AppState,
    session: &str,
    ids: &[String],
    files: &[PathBuf],
) -> Result<u64, TwirpError> {
    let cap = s.gha.max_session_bytes();
    with_session(s, session, |x| {
        let mut total = 0u64;
        for (id, f) in ids.iter().zip(files) {
            let Some(&n) = x.blocks.get(f) else {
                return Err(TwirpError::invalid(format!(
                    "the block list names block {id:?}, which was never uploaded"
                )));
            };
            total = total
                .checked_add(n)
                .filter(|&t| t <= cap)
                .ok_or_else(|| too_large(cap))?;
        }
        Ok(total)
    })?
}

/// Hashes the blob made of `files` in order, stores it durably, records it,
/// remembers it as the session's content (and `ids` as its committed block
/// list), and deletes the session's scratch blocks.
async fn commit(
    s: &AppState,
    session: &str,
    files: Vec<PathBuf>,
    ids: Option<Vec<String>>,
    expected: u64,
) -> Result<(), TwirpError> {
    let to_hash = files.clone();
    // A block may be replaced (or the session discarded) while its list
    // commits: reading stops at the size the list was checked for, so the
    // work stays bounded, and such a race is the client's to retry (409).
    let changed = || {
        TwirpError::new(
            StatusCode::CONFLICT,
            "aborted",
            "the blocks changed while the block list was being committed; commit it again",
        )
    };
    let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<Option<(Digest, u64)>> {
        let mut h = Sha256::new();
        let mut n = 0u64;
        let mut buf = vec![0u8; 1024 * 1024];
        for f in &to_hash {
            let mut file = std::fs::File::open(f)?;
            loop {
                let k = std::io::Read::read(&mut file, &mut buf)?;
                if k == 0 {
                    break;
                }
                n += k as u64;
                if n > expected {
                    return Ok(None);
                }
                h.update(&buf[..k]);
            }
        }
        Ok(Some((Digest(h.finalize().into()), n)))
    })
    .await
    .map_err(|e| TwirpError::internal(e.to_string()))?;
    let (digest, size) = match hashed {
        Ok(Some(x)) => x,
        Ok(None) => return Err(changed()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(changed()),
        Err(e) => return Err(TwirpError::internal(format!("reading blocks: {e}"))),
    };
    let stream = futures_util::stream::iter(files)
        .then(|f| async move { tokio::fs::File::open(f).await })
        .map_ok(|f| tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024))
        .try_flatten()
        .boxed();
    let hex = digest.to_hex();
    let mut writing = s.blob_gate.writer();
    let started = now_secs();
    writing.add(&hex).await?;
    let mut reader = tokio_util::io::StreamReader::new(stream);
    s.store
        .put(&digest, size, &mut reader, Durability::Sync)
        .await?;
    s.db.record_blobs(&[(hex.clone(), size)]).await?;
    // The announcement moves into the session: it must not lapse before
    // FinalizeArtifact references the blob (if the session is gone, it
    // ends here and the blob is garbage).
    let scratch = with_session(s, session, |x| {
        x.assembled = Some((hex, size));
        x.committed = ids;
        // This commit's own announcement, begun before the blob was stored,
        // replaces any earlier commit's.
        x.held_since = Some(started);
        x.holds = Some(writing);
        std::mem::take(&mut x.blocks)
    })?;
    // Azure drops uncommitted blocks at commit; the content is stored.
    for path in scratch.keys() {
        let _ = tokio::fs::remove_file(path).await;
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
pub(super) struct DownloadParams {
    se: Option<u64>,
    sig: Option<String>,
}

pub(super) async fn download(
    State(s): State<AppState>,
    Path((file_id, _file)): Path<(String, String)>,
    Query(p): Query<DownloadParams>,
    note: Option<axum::Extension<crate::audit::AuditNote>>,
) -> Result<Response, TwirpError> {
    if let Some(n) = note {
        n.resource(format!("file={file_id}"));
    }
    let params = Params {
        se: p.se,
        sig: p.sig,
        comp: None,
        blockid: None,
    };
    check_signature(&s, &format!("d/{file_id}"), &params)?;
    if !satchel_model::id::is_id(&file_id) {
        return Err(TwirpError::not_found("no such file"));
    }
    let f =
        s.db.get_files(std::slice::from_ref(&file_id))
            .await?
            .remove(0);
    let digest = Digest::from_hex(&f.sha256)?;
    let stream = s.store.get(&digest, None).await?;
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(f.size));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&f.content_type)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
    );
    let name: String = f
        .path
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_lists_keep_their_order() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?><BlockList><Latest>QUFB</Latest><Latest>QkJC</Latest>
            <Uncommitted>Q0ND</Uncommitted><Latest>a&amp;b</Latest></BlockList>"#;
        assert_eq!(
            parse_block_list(xml).unwrap(),
            ["QUFB", "QkJC", "Q0ND", "a&b"]
        );
        assert_eq!(
            parse_block_list("<BlockList></BlockList>").unwrap(),
            Vec::<String>::new()
        );
        for bad in [
            "",
            "<BlockList><Latest>x</BlockList>",
            "<BlockList><Evil>x</Evil></BlockList>",
            "<BlockList>",
            "<BlockList>></BlockList>",
            "<BlockList>é</BlockList>",
            "<BlockList>éLatest></BlockList>",
            "<BlockList><</BlockList>",
            "<BlockList><Latest></BlockList>",
            "<BlockList><Latest>x</Latest>></BlockList>",
            "</BlockList><BlockList>",
            "<BlockList><é>x</é></BlockList>",
        ] {
            assert!(parse_block_list(bad).is_err(), "{bad:?}");
        }
    }

    /// Random strings built from the block list's own pieces, multibyte
    /// characters and noise: parsing answers, it never panics.
    #[test]
    fn garbage_block_lists_never_panic() {
        const PIECES: &[&str] = &[
            "<BlockList>",
            "</BlockList>",
            "<Latest>",
            "</Latest>",
            "<Committed>",
            "</Uncommitted>",
            "<",
            ">",
            "/",
            " ",
            "\n",
            "é",
            "日本",
            "🦀",
            "QUFB",
            "&amp;",
            "&",
            "x",
        ];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let n = (next() % 12) as usize;
            let mut s = String::new();
            if next() % 2 == 0 {
                s.push_str("<BlockList>");
            }
            for _ in 0..n {
                s.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            if next() % 2 == 0 {
                s.push_str("</BlockList>");
            }
            let _ = parse_block_list(&s);
        }
    }

    /// Every block id is either refused with a 400 or can be written: no
    /// id makes a file name too long (a 500).
    #[tokio::test]
    async fn block_ids_are_capped_at_64_decoded_bytes() {
        use base64::Engine as _;
        let dir = std::env::temp_dir().join(format!(
            "satchel-block-test-{}",
            satchel_model::id::random_hex(8)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let b64 = &base64::engine::general_purpose::STANDARD;
        let mut ids: Vec<String> = (1..=130).map(|n| "A".repeat(n)).collect();
        ids.extend((1..=100).map(|n| b64.encode(vec![b'x'; n])));
        for id in &ids {
            match block_file(&dir, id) {
                Ok(path) => {
                    write_body(Body::from("data"), &path, 16)
                        .await
                        .unwrap_or_else(|e| panic!("id of {} chars: {}", id.len(), e.msg));
                }
                Err(e) => assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", e.msg),
            }
        }
        assert!(block_file(&dir, &b64.encode([7u8; 64])).is_ok());
        let e = block_file(&dir, &b64.encode([7u8; 65])).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(block_file(&dir, "not base64!").is_err());
        assert!(block_file(&dir, "").is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    fn state() -> (AppState, PathBuf) {
        let dir = crate::testing::dir("gha");
        let s = crate::testing::state(&dir).with_scratch(dir.join("scratch"));
        (s, dir)
    }

    fn new_session(s: &AppState, name: &str) -> String {
        let sess = Session::new(
            &s.gha.scratch,
            format!("{name}.zip"),
            "application/zip".into(),
        )
        .unwrap();
        let id = sess.id.clone();
        let key = ("p".to_string(), 1, "j".to_string(), name.to_string());
        s.gha.sessions.lock().unwrap().insert(key, sess);
        id
    }

    async fn send(
        s: &AppState,
        id: &str,
        comp: Option<&str>,
        block: Option<&str>,
        body: impl Into<Body>,
    ) -> Result<Response, TwirpError> {
        let se = now_secs() + 60;
        let params = Params {
            se: Some(se),
            sig: Some(s.gha.keys.sign_url(&format!("u/{id}"), se)),
            comp: comp.map(String::from),
            blockid: block.map(String::from),
        };
        put(
            State(s.clone()),
            Path((id.to_string(), "a.zip".to_string())),
            Query(params),
            None,
            body.into(),
        )
        .await
    }

    fn scratch_files(s: &AppState, id: &str) -> Vec<String> {
        std::fs::read_dir(s.gha.scratch.join(id))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    const LIST: &str = "<BlockList><Latest>QUFB</Latest><Latest>QkJC</Latest></BlockList>";

    #[tokio::test]
    async fn blocks_are_deleted_once_committed() {
        let (s, dir) = state();
        let id = new_session(&s, "a");
        send(&s, &id, Some("block"), Some("QUFB"), "hello ")
            .await
            .unwrap();
        send(&s, &id, Some("block"), Some("QkJC"), "world")
            .await
            .unwrap();
        send(&s, &id, Some("block"), Some("Q0ND"), "unused")
            .await
            .unwrap();
        assert_eq!(scratch_files(&s, &id).len(), 3);
        send(&s, &id, Some("blocklist"), None, LIST).await.unwrap();
        assert_eq!(scratch_files(&s, &id), Vec::<String>::new());
        // A retried block list (its answer lost) still succeeds.
        let r = send(&s, &id, Some("blocklist"), None, LIST).await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let sessions = s.gha.sessions.lock().unwrap();
        let x = sessions.values().next().unwrap();
        assert_eq!(x.assembled.as_ref().unwrap().1, 11);
        drop(sessions);
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn a_session_holds_at_most_its_byte_cap() {
        let (s, dir) = state();
        s.gha.set_max_session_bytes(10);
        let id = new_session(&s, "a");
        send(&s, &id, Some("block"), Some("QUFB"), "123456")
            .await
            .unwrap();
        let e = send(&s, &id, Some("block"), Some("QkJC"), "123456")
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", e.msg);
        assert_eq!(scratch_files(&s, &id).len(), 1, "the refused block is gone");
        // Replacing a block counts its new size only.
        send(&s, &id, Some("block"), Some("QUFB"), "1234567890")
            .await
            .unwrap();
        send(&s, &id, Some("block"), Some("QUFB"), "1234")
            .await
            .unwrap();
        send(&s, &id, Some("block"), Some("QkJC"), "123456")
            .await
            .unwrap();
        let whole = new_session(&s, "b");
        let e = send(&s, &whole, None, None, "12345678901")
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        send(&s, &whole, None, None, "1234567890").await.unwrap();
        std::fs::remove_dir_all(dir).ok();
    }

    /// Regression: a block list could name one block any number of times
    /// (up to 50,000), so a session capped at a few bytes assembled an
    /// unbounded blob. The listed size now counts repeats and is held to
    /// the session's cap; nothing is stored when it is refused.
    #[tokio::test]
    async fn block_list_repeating_a_block_cannot_pass_the_session_cap() {
        let (s, dir) = state();
        s.gha.set_max_session_bytes(10);
        let id = new_session(&s, "a");
        send(&s, &id, Some("block"), Some("QUFB"), "1234")
            .await
            .unwrap();
        let twice = "<BlockList><Latest>QUFB</Latest><Latest>QUFB</Latest></BlockList>";
        send(&s, &id, Some("blocklist"), None, twice).await.unwrap();
        let id = new_session(&s, "b");
        send(&s, &id, Some("block"), Some("QUFB"), "1234")
            .await
            .unwrap();
        let thrice = "<BlockList><Latest>QUFB</Latest><Latest>QUFB</Latest><Latest>QUFB</Latest></BlockList>";
        let e = send(&s, &id, Some("blocklist"), None, thrice)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", e.msg);
        let sessions = s.gha.sessions.lock().unwrap();
        let x = sessions.values().find(|x| x.id == id).unwrap();
        assert!(x.assembled.is_none(), "nothing was committed");
        drop(sessions);
        assert_eq!(
            scratch_files(&s, &id).len(),
            1,
            "the block stays for a retry"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn idle_sessions_are_reaped() {
        let (s, dir) = state();
        let old = new_session(&s, "old");
        let fresh = new_session(&s, "fresh");
        send(&s, &old, Some("block"), Some("QUFB"), "x")
            .await
            .unwrap();
        let now = now_secs();
        for x in s.gha.sessions.lock().unwrap().values_mut() {
            if x.id == old {
                x.touched = now - super::super::SESSION_IDLE_SECS - 1;
            }
        }
        assert_eq!(s.gha.reap_idle(super::super::SESSION_IDLE_SECS, now), 1);
        assert!(!s.gha.scratch.join(&old).exists(), "its blocks are gone");
        assert!(s.gha.scratch.join(&fresh).exists());
        let e = send(&s, &old, Some("block"), Some("QUFB"), "x")
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        send(&s, &fresh, Some("block"), Some("QUFB"), "x")
            .await
            .unwrap();
        assert_eq!(s.gha.reap_idle(super::super::SESSION_IDLE_SECS, now), 0);
        std::fs::remove_dir_all(dir).ok();
    }

    /// Other replicas stop honouring a blob announcement a day after it
    /// began, so a committed upload never outlives its own, however
    /// recently it was used or however long idle ones may live.
    #[tokio::test]
    async fn a_committed_upload_goes_before_its_announcement_lapses() {
        let (s, dir) = state();
        let id = new_session(&s, "committed");
        send(&s, &id, Some("block"), Some("QUFB"), "x")
            .await
            .unwrap();
        let list = "<BlockList><Latest>QUFB</Latest></BlockList>";
        send(&s, &id, Some("blocklist"), None, list).await.unwrap();
        let now = now_secs();
        // An hour before the announcement's day is up.
        let lapse = (satchel_db::WRITE_ANNOUNCEMENT_MAX_MS / 1000) as u64 - 3600;
        assert_eq!(s.gha.reap_idle(u64::MAX, now), 0, "fresh");
        assert_eq!(s.gha.reap_idle(u64::MAX, now + lapse - 2), 0, "just before");
        assert_eq!(s.gha.reap_idle(u64::MAX, now + lapse + 1), 1, "just after");
        std::fs::remove_dir_all(dir).ok();
    }
}
