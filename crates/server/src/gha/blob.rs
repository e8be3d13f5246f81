//! The signed blob URLs of the GitHub Actions protocol: the subset of the
//! Azure Blob block API that the client's Azure SDK uses to upload, and a
//! plain download. Any replica takes any of these requests: the upload
//! lives in the database ([`satchel_db::gha`]) and its bytes in the
//! content store.
//!
//! - `PUT …?comp=block&blockid=ID`: one block. It is received into a
//!   scratch file while it is hashed, stored in the content store as a
//!   blob of its own (once: identical blocks are stored once), and recorded
//!   under the upload by id. Blocks arrive concurrently and out of order; a
//!   retry with the same id replaces the block. Answers 201.
//! - `PUT …?comp=blocklist` with `<BlockList><Latest>ID</Latest>…`: the
//!   blob is the listed blocks in list order. They are read back from the
//!   store once, hashed and copied into a scratch file, which is then
//!   stored durably (a list of one block is that block, stored already)
//!   and recorded as the upload's committed blob; the blocks are dropped
//!   (Azure drops uncommitted blocks at commit, and a retry of the same
//!   list answers 201 again, even one that raced the request it retries).
//!   FinalizeArtifact then checks the client's size and digest against
//!   it. Answers 201.
//! - `PUT …` without `comp`: the whole blob in one request (Put Blob),
//!   committed at once.
//!
//! Every stored blob stays announced to GC ([`crate::gate`]) until the
//! upload's row references it; from then on the row keeps it, until the
//! upload is finalized, replaced or reaped. An upload holds at most
//! [`super::Gha::max_session_bytes`] of blocks (413 past that), and uploads
//! idle for a day are reaped by the periodic maintenance task
//! ([`super::reap_idle`]).
//! - `GET /gha-blob/d/…`: the file, 200, `application/zip` for archives.

use std::path::PathBuf;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use satchel_db::{GhaBlock, GhaCommitted};
use satchel_store::{Digest, Durability, StoreError};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::{now_secs, TwirpError};
use crate::AppState;

/// Largest block accepted (Azure allows 4000 MiB; the client sends 8 MiB).
const MAX_BLOCK: u64 = 256 * 1024 * 1024;
/// Most blocks in one blob (Azure's limit).
const MAX_BLOCKS: usize = 50_000;

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

fn gone() -> TwirpError {
    TwirpError::not_found("no upload in progress for this URL (finalized, replaced or reaped)")
}

fn too_large(max: u64) -> TwirpError {
    TwirpError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_argument",
        format!("an upload may hold at most {max} bytes"),
    )
}

/// A block list's blocks changed (were replaced, and their old content
/// collected) while it was committed: the client's to retry.
fn changed() -> TwirpError {
    TwirpError::new(
        StatusCode::CONFLICT,
        "aborted",
        "the blocks changed while the block list was being committed; commit it again",
    )
}

/// Most bytes in a block id, once base64-decoded (Azure's limit).
const MAX_BLOCK_ID: usize = 64;

/// A block id (base64 of 1 to 64 bytes, as Azure requires) as it is
/// recorded: the hex of its decoded bytes, so at most 128 characters.
fn block_name(id: &str) -> Result<String, TwirpError> {
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
    Ok(hex::encode(raw))
}

/// Bytes received into a scratch file (removed when dropped), with their
/// digest and size.
struct Received {
    path: PathBuf,
    digest: Digest,
    size: u64,
}

impl Drop for Received {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn scratch_error(e: std::io::Error) -> TwirpError {
    if satchel_store::is_full(&e) {
        // Scratch lives on the data disk: a full disk is 507, and what
        // failed writes left there is released.
        return satchel_store::StoreError::Io {
            context: "scratch write".into(),
            source: e,
        }
        .into();
    }
    TwirpError::internal(format!("scratch write: {e}"))
}

impl Received {
    /// A new, empty scratch file.
    async fn create(s: &AppState) -> Result<(Received, tokio::fs::File), TwirpError> {
        tokio::fs::create_dir_all(&s.gha.scratch)
            .await
            .map_err(scratch_error)?;
        let r = Received {
            path: s
                .gha
                .scratch
                .join(format!("{}.part", satchel_model::id::random_hex(8))),
            digest: Digest([0; 32]),
            size: 0,
        };
        let f = tokio::fs::File::create(&r.path)
            .await
            .map_err(scratch_error)?;
        Ok((r, f))
    }
}

/// Receives `body` into a scratch file, hashing it on the way; more than
/// `max` bytes is a 413.
async fn receive(s: &AppState, body: Body, max: u64) -> Result<Received, TwirpError> {
    let (mut r, mut f) = Received::create(s).await?;
    let mut h = Sha256::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| TwirpError::invalid(format!("reading the body: {e}")))?;
        r.size += chunk.len() as u64;
        if r.size > max {
            return Err(TwirpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_argument",
                format!("a block may hold at most {max} bytes"),
            ));
        }
        h.update(&chunk);
        f.write_all(&chunk).await.map_err(scratch_error)?;
    }
    // Not synced: the content store makes what it keeps durable.
    f.flush().await.map_err(scratch_error)?;
    r.digest = Digest(h.finalize().into());
    Ok(r)
}

/// Stores what was received durably, unless the blob is recorded already.
/// The caller announces its digest first.
async fn store_received(s: &AppState, r: &Received) -> Result<(), TwirpError> {
    if !s.db.known_blobs(&[r.digest.to_hex()]).await?.is_empty() {
        return Ok(());
    }
    let mut f = tokio::fs::File::open(&r.path)
        .await
        .map_err(|e| TwirpError::internal(format!("scratch read: {e}")))?;
    match s
        .store
        .put(&r.digest, r.size, &mut f, Durability::Sync)
        .await
    {
        // Its input is our own scratch file, hashed as it was written:
        // failing to read it, or reading other bytes, is the server's fault.
        Err(e) if e.is_client_error() => {
            Err(TwirpError::internal(format!("storing from scratch: {e}")))
        }
        r => r.map_err(Into::into),
    }
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
    Path((upload, _file)): Path<(String, String)>,
    Query(p): Query<Params>,
    note: Option<axum::Extension<crate::audit::AuditNote>>,
    body: Body,
) -> Result<Response, TwirpError> {
    if let Some(n) = note {
        n.resource(format!("gha-upload={upload}"));
    }
    check_signature(&s, &format!("u/{upload}"), &p)?;
    let cap = s.gha.max_session_bytes();
    match p.comp.as_deref() {
        Some("block") => {
            let id = p
                .blockid
                .as_deref()
                .ok_or_else(|| TwirpError::invalid("comp=block needs a blockid"))?;
            let block = block_name(id)?;
            let (_, held) =
                s.db.gha_touch(&upload, Some(&block))
                    .await?
                    .ok_or_else(gone)?;
            let allowance = cap.saturating_sub(held);
            let r = match receive(&s, body, MAX_BLOCK.min(allowance)).await {
                Err(e) if e.status == StatusCode::PAYLOAD_TOO_LARGE && allowance < MAX_BLOCK => {
                    return Err(too_large(cap))
                }
                r => r?,
            };
            let b = GhaBlock {
                block,
                sha256: r.digest.to_hex(),
                size: r.size,
            };
            let mut writing = s.blob_gate.writer();
            writing.add(&b.sha256).await?;
            store_received(&s, &r).await?;
            // Concurrent blocks may together pass the cap: the last loses.
            if !s.db.gha_put_block(&upload, &b, cap).await? {
                return Err(too_large(cap));
            }
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
            let names = ids
                .iter()
                .map(|id| block_name(id))
                .collect::<Result<Vec<_>, _>>()?;
            let list = Digest::of(names.join("\n").as_bytes()).to_hex();
            let same =
                |u: &satchel_db::GhaUpload| u.committed.as_ref().is_some_and(|c| c.list == list);
            let (u, _) = s.db.gha_touch(&upload, None).await?.ok_or_else(gone)?;
            // A retry of the list that was committed (its blocks are gone).
            if same(&u) {
                return Ok(created());
            }
            let committed = async {
                let blocks = listed_blocks(&s, &upload, &ids, &names, cap).await?;
                commit_blocks(&s, &upload, list.clone(), &blocks).await
            }
            .await;
            match committed {
                Ok(()) => Ok(created()),
                // A retry that raced the request it retries (whose answer
                // was lost): that one committed this very list meanwhile,
                // dropping the blocks this one was reading.
                Err(e) if e.status.is_client_error() => {
                    match s.db.gha_touch(&upload, None).await? {
                        Some((u, _)) if same(&u) => Ok(created()),
                        _ => Err(e),
                    }
                }
                Err(e) => Err(e),
            }
        }
        None => {
            s.db.gha_touch(&upload, None).await?.ok_or_else(gone)?;
            let r = receive(&s, body, cap).await.map_err(|e| {
                if e.status == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large(cap)
                } else {
                    e
                }
            })?;
            let done = GhaCommitted {
                // No block list ever hashes to this.
                list: String::new(),
                sha256: r.digest.to_hex(),
                size: r.size,
            };
            let mut writing = s.blob_gate.writer();
            writing.add(&done.sha256).await?;
            store_received(&s, &r).await?;
            if !s.db.gha_commit(&upload, &done).await? {
                return Err(gone());
            }
            Ok(created())
        }
        Some(other) => Err(TwirpError::invalid(format!(
            "comp={other} is not supported (block and blocklist are)"
        ))),
    }
}

/// The blocks a block list names, in its order, refused past the upload's
/// byte cap counting a block as often as the list names it: a list that
/// names one block many times must not assemble more than the upload
/// could hold as distinct blocks.
async fn listed_blocks(
    s: &AppState,
    upload: &str,
    ids: &[String],
    names: &[String],
    cap: u64,
) -> Result<Vec<GhaBlock>, TwirpError> {
    let found = s.db.gha_blocks(upload, names).await?;
    let mut total = 0u64;
    let mut blocks = Vec::with_capacity(found.len());
    for (id, b) in ids.iter().zip(found) {
        let b = b.ok_or_else(|| {
            TwirpError::invalid(format!(
                "the block list names block {id:?}, which was never uploaded"
            ))
        })?;
        total = total
            .checked_add(b.size)
            .filter(|&t| t <= cap)
            .ok_or_else(|| too_large(cap))?;
        blocks.push(b);
    }
    Ok(blocks)
}

/// Reads `blocks` from the content store in order into a scratch file,
/// hashing them on the way. A block gone meanwhile (replaced, and its old
/// content collected) is a 409; a store that fails, a 5xx.
async fn assemble(s: &AppState, blocks: &[GhaBlock]) -> Result<Received, TwirpError> {
    let (mut r, mut f) = Received::create(s).await?;
    let mut h = Sha256::new();
    for b in blocks {
        let digest = Digest::from_hex(&b.sha256)?;
        let read = async {
            let mut stream = s.store.get(&digest, None).await?;
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| StoreError::Io {
                    context: format!("reading block content {digest}"),
                    source: e,
                })?;
                n += chunk.len() as u64;
                h.update(&chunk);
                f.write_all(&chunk).await.map_err(|e| StoreError::Io {
                    context: "scratch write".into(),
                    source: e,
                })?;
            }
            Ok::<u64, StoreError>(n)
        };
        match read.await {
            Ok(n) if n == b.size => r.size += n,
            Ok(_) => return Err(changed()),
            Err(e) => {
                // Still recorded: the store failed. Gone: the race above.
                let still = s.db.known_blobs(std::slice::from_ref(&b.sha256)).await?;
                return Err(if still.is_empty() {
                    changed()
                } else {
                    // The store's own answer: 507 full, 503 retry, 502 down.
                    TwirpError::from(e)
                });
            }
        }
    }
    f.flush().await.map_err(scratch_error)?;
    r.digest = Digest(h.finalize().into());
    Ok(r)
}

/// Makes the blob of `blocks` (in order) upload `upload`'s committed
/// content, stored durably, under block list hash `list`.
async fn commit_blocks(
    s: &AppState,
    upload: &str,
    list: String,
    blocks: &[GhaBlock],
) -> Result<(), TwirpError> {
    let mut writing = s.blob_gate.writer();
    let done = match blocks {
        // One block is the blob, stored already.
        [one] => {
            // Unless it was replaced and collected since it was listed.
            writing.add(&one.sha256).await?;
            if s.db
                .known_blobs(std::slice::from_ref(&one.sha256))
                .await?
                .is_empty()
            {
                return Err(changed());
            }
            GhaCommitted {
                list,
                sha256: one.sha256.clone(),
                size: one.size,
            }
        }
        _ => {
            let r = assemble(s, blocks).await?;
            let done = GhaCommitted {
                list,
                sha256: r.digest.to_hex(),
                size: r.size,
            };
            writing.add(&done.sha256).await?;
            store_received(s, &r).await?;
            done
        }
    };
    if !s.db.gha_commit(upload, &done).await? {
        return Err(gone());
    }
    drop(writing);
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
    // Also a replaced artifact's file, while a reader may still fetch it.
    let f =
        s.db.gha_file(&file_id)
            .await?
            .ok_or_else(|| TwirpError::not_found("no such file"))?;
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

    /// Every block id is either refused with a 400 or recorded under a
    /// name of at most 128 characters.
    #[test]
    fn block_ids_are_capped_at_64_decoded_bytes() {
        use base64::Engine as _;
        let b64 = &base64::engine::general_purpose::STANDARD;
        let mut ids: Vec<String> = (1..=130).map(|n| "A".repeat(n)).collect();
        ids.extend((1..=100).map(|n| b64.encode(vec![b'x'; n])));
        for id in &ids {
            match block_name(id) {
                Ok(name) => assert!((2..=128).contains(&name.len()), "{id}: {name}"),
                Err(e) => assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", e.msg),
            }
        }
        assert_eq!(block_name(&b64.encode([7u8; 64])).unwrap().len(), 128);
        let e = block_name(&b64.encode([7u8; 65])).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(block_name("not base64!").is_err());
        assert!(block_name("").is_err());
    }

    fn state() -> (AppState, PathBuf) {
        let dir = crate::testing::dir("gha");
        let s = crate::testing::state(&dir).with_scratch(dir.join("scratch"));
        (s, dir)
    }

    async fn new_upload(s: &AppState, name: &str) -> String {
        let u = satchel_db::GhaUpload {
            id: satchel_model::id::random_hex(16),
            key: satchel_db::GhaKey {
                pipeline: "p".into(),
                run: 1,
                job: "j".into(),
                name: name.into(),
            },
            file_name: format!("{name}.zip"),
            mime: "application/zip".into(),
            committed: None,
        };
        s.db.gha_start(&u).await.unwrap();
        u.id
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

    /// How many of upload `id`'s blocks `QUFB`, `QkJC` and `Q0ND` are
    /// recorded.
    async fn blocks(s: &AppState, id: &str) -> usize {
        let names: Vec<String> = ["QUFB", "QkJC", "Q0ND"]
            .iter()
            .map(|b| block_name(b).unwrap())
            .collect();
        s.db.gha_blocks(id, &names)
            .await
            .unwrap()
            .iter()
            .flatten()
            .count()
    }

    async fn committed(s: &AppState, id: &str) -> Option<satchel_db::GhaCommitted> {
        s.db.gha_touch(id, None).await.unwrap().unwrap().0.committed
    }

    /// The content of a stored blob.
    async fn content(s: &AppState, hex: &str) -> Vec<u8> {
        let mut st = s
            .store
            .get(&Digest::from_hex(hex).unwrap(), None)
            .await
            .unwrap();
        let mut out = Vec::new();
        while let Some(c) = st.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    const LIST: &str = "<BlockList><Latest>QUFB</Latest><Latest>QkJC</Latest></BlockList>";

    #[tokio::test]
    async fn blocks_are_stored_and_dropped_once_committed() {
        let (s, dir) = state();
        let id = new_upload(&s, "a").await;
        send(&s, &id, Some("block"), Some("QUFB"), "hello ")
            .await
            .unwrap();
        send(&s, &id, Some("block"), Some("QkJC"), "world")
            .await
            .unwrap();
        send(&s, &id, Some("block"), Some("Q0ND"), "unused")
            .await
            .unwrap();
        assert_eq!(blocks(&s, &id).await, 3);
        assert_eq!(
            content(&s, &Digest::of(b"world").to_hex()).await,
            b"world",
            "a block is a stored blob"
        );
        send(&s, &id, Some("blocklist"), None, LIST).await.unwrap();
        assert_eq!(blocks(&s, &id).await, 0);
        let done = committed(&s, &id).await.unwrap();
        assert_eq!(done.size, 11);
        assert_eq!(done.sha256, Digest::of(b"hello world").to_hex());
        assert_eq!(content(&s, &done.sha256).await, b"hello world");
        // A retried block list (its answer lost) still succeeds.
        let r = send(&s, &id, Some("blocklist"), None, LIST).await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(committed(&s, &id).await.as_ref(), Some(&done));
        // A list of blocks never sent is refused, and changes nothing.
        let one = "<BlockList><Latest>Q0ND</Latest></BlockList>";
        let e = send(&s, &id, Some("blocklist"), None, one)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", e.msg);
        assert_eq!(committed(&s, &id).await, Some(done));
        // A whole blob in one request is committed at once.
        let whole = new_upload(&s, "b").await;
        send(&s, &whole, None, None, "all at once").await.unwrap();
        let done = committed(&s, &whole).await.unwrap();
        assert_eq!(content(&s, &done.sha256).await, b"all at once");
        let left = std::fs::read_dir(&s.gha.scratch).unwrap().count();
        assert_eq!(left, 0, "no scratch file outlives its request");
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn a_session_holds_at_most_its_byte_cap() {
        let (s, dir) = state();
        s.gha.set_max_session_bytes(10);
        let id = new_upload(&s, "a").await;
        send(&s, &id, Some("block"), Some("QUFB"), "123456")
            .await
            .unwrap();
        let e = send(&s, &id, Some("block"), Some("QkJC"), "123456")
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", e.msg);
        assert_eq!(
            blocks(&s, &id).await,
            1,
            "the refused block is not recorded"
        );
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
        let whole = new_upload(&s, "b").await;
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
        let id = new_upload(&s, "a").await;
        send(&s, &id, Some("block"), Some("QUFB"), "1234")
            .await
            .unwrap();
        let twice = "<BlockList><Latest>QUFB</Latest><Latest>QUFB</Latest></BlockList>";
        send(&s, &id, Some("blocklist"), None, twice).await.unwrap();
        assert_eq!(
            content(&s, &committed(&s, &id).await.unwrap().sha256).await,
            b"12341234"
        );
        let id = new_upload(&s, "b").await;
        send(&s, &id, Some("block"), Some("QUFB"), "1234")
            .await
            .unwrap();
        let thrice = "<BlockList><Latest>QUFB</Latest><Latest>QUFB</Latest><Latest>QUFB</Latest></BlockList>";
        let e = send(&s, &id, Some("blocklist"), None, thrice)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", e.msg);
        assert!(committed(&s, &id).await.is_none(), "nothing was committed");
        assert_eq!(blocks(&s, &id).await, 1, "the block stays for a retry");
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn idle_sessions_are_reaped() {
        let (s, dir) = state();
        let old = new_upload(&s, "old").await;
        send(&s, &old, Some("block"), Some("QUFB"), "x")
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let fresh = new_upload(&s, "fresh").await;
        let idle = std::time::Duration::from_millis(1000);
        assert_eq!(super::super::reap_idle(&s, idle).await.unwrap(), 1);
        let e = send(&s, &old, Some("block"), Some("QUFB"), "x")
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        send(&s, &fresh, Some("block"), Some("QUFB"), "x")
            .await
            .unwrap();
        assert_eq!(super::super::reap_idle(&s, idle).await.unwrap(), 0);
        std::fs::remove_dir_all(dir).ok();
    }
}
