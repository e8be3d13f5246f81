//! Whole artifacts and packages as one streamed tar archive
//! (`GET /artifacts/{id}/archive`), the download URL a `$[…]` reference to
//! a files artifact resolves to: `curl … | tar x` needs nothing else.
//!
//! POSIX ustar, with a PAX extended header for paths over 100 bytes or
//! files of 8 GiB and more. The length is known before the first byte, so
//! the response carries `Content-Length`. `?format=tar.zst` compresses the
//! same stream with zstd as it passes (chunked, no length known).

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use futures_util::{StreamExt, TryStreamExt};
use satchel_store::{ContentStore, Digest};

use crate::error::ApiError;

const BLOCK: u64 = 512;
/// Largest size the ustar size field holds (11 octal digits).
const USTAR_MAX_SIZE: u64 = 0o77777777777;

/// One member of an archive.
pub(crate) struct Member {
    pub path: String,
    pub size: u64,
    pub mode: u32,
    pub sha256: String,
    pub mtime_secs: u64,
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

fn ustar_header(name: &[u8], size: u64, mode: u32, mtime: u64, kind: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    // Permission bits only: a downloaded archive must never carry setuid,
    // setgid or sticky bits that `tar x` (as root, or with -p) would keep.
    octal(&mut h[100..108], u64::from(mode & 0o777));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size.min(USTAR_MAX_SIZE));
    octal(&mut h[136..148], mtime.min(0o77777777777));
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// A PAX record `"LEN key=value\n"`, where LEN counts the whole record.
fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    loop {
        let candidate = format!("{len}{body}");
        if candidate.len() == len {
            return candidate;
        }
        len = candidate.len();
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// The header blocks of one member (PAX header first when needed).
pub(crate) fn member_header(m: &Member) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let mut pax = String::new();
    if m.path.len() > 100 {
        pax.push_str(&pax_record("path", &m.path));
    }
    if m.size > USTAR_MAX_SIZE {
        pax.push_str(&pax_record("size", &m.size.to_string()));
    }
    if !pax.is_empty() {
        let name = format!("PaxHeaders/{}", &m.sha256[..16]);
        out.extend_from_slice(&ustar_header(
            name.as_bytes(),
            pax.len() as u64,
            0o644,
            m.mtime_secs,
            b'x',
        ));
        out.extend_from_slice(pax.as_bytes());
        out.resize(out.len() + padding(pax.len() as u64) as usize, 0);
    }
    // A long path is cut on a character boundary in the fallback name.
    let mut cut = m.path.len().min(100);
    while !m.path.is_char_boundary(cut) {
        cut -= 1;
    }
    out.extend_from_slice(&ustar_header(
        &m.path.as_bytes()[..cut],
        m.size,
        m.mode,
        m.mtime_secs,
        b'0',
    ));
    out
}

/// A tar stream's bytes.
type ByteStream = futures_util::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>;

/// Streams `members` as a tar archive named `filename`.
pub(crate) fn tar_response(
    store: std::sync::Arc<dyn ContentStore>,
    members: Vec<Member>,
    filename: &str,
) -> Result<Response, ApiError> {
    let (body, total) = tar_stream(store, members)?;
    Ok(archive_body(
        Body::from_stream(body),
        "application/x-tar",
        total,
        filename,
        "tar",
    ))
}

/// Streams `members` as a tar archive compressed with zstd, named
/// `filename.tar.zst`; its length is not known in advance.
fn tar_zst_response(
    store: std::sync::Arc<dyn ContentStore>,
    members: Vec<Member>,
    filename: &str,
) -> Result<Response, ApiError> {
    let (body, _) = tar_stream(store, members)?;
    let mut resp = Response::new(Body::from_stream(zstd_stream(body)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zstd"),
    );
    h.insert(header::CONTENT_DISPOSITION, attachment(filename, "tar.zst"));
    Ok(resp)
}

/// `input` compressed with zstd (level 3) as it passes: one frame, each
/// chunk compressed on the blocking pool (the encoder moves there and
/// back), nothing buffered whole.
fn zstd_stream(input: ByteStream) -> ByteStream {
    use zstd::stream::raw::{Encoder, Operation, OutBuffer};
    const OUT: usize = 128 * 1024;
    /// Compresses `chunk` (or, with `None`, ends the frame) into new bytes.
    fn step(
        mut enc: Encoder<'static>,
        mut buf: Vec<u8>,
        chunk: Option<bytes::Bytes>,
    ) -> std::io::Result<(Encoder<'static>, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        match chunk {
            Some(chunk) => {
                let mut at = 0;
                while at < chunk.len() {
                    let st = enc.run_on_buffers(&chunk[at..], &mut buf)?;
                    at += st.bytes_read;
                    out.extend_from_slice(&buf[..st.bytes_written]);
                }
            }
            None => loop {
                let mut ob = OutBuffer::around(&mut buf[..]);
                let left = enc.finish(&mut ob, true)?;
                let n = ob.pos();
                out.extend_from_slice(&buf[..n]);
                if left == 0 {
                    break;
                }
            },
        }
        Ok((enc, buf, out))
    }
    let start = Encoder::new(3).map(|enc| (enc, vec![0u8; OUT]));
    futures_util::stream::unfold((input, Some(start)), |(mut input, state)| async move {
        let (enc, buf) = match state? {
            Ok(s) => s,
            Err(e) => return Some((Err(e), (input, None))),
        };
        let chunk = match input.next().await {
            Some(Ok(chunk)) => Some(chunk),
            Some(Err(e)) => return Some((Err(e), (input, None))),
            None => None,
        };
        let last = chunk.is_none();
        let done = tokio::task::spawn_blocking(move || step(enc, buf, chunk))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match done {
            Ok((enc, buf, out)) => {
                let next = (!last).then_some(Ok((enc, buf)));
                Some((Ok(bytes::Bytes::from(out)), (input, next)))
            }
            Err(e) => Some((Err(e), (input, None))),
        }
    })
    .boxed()
}

/// The tar stream of `members` and its length.
fn tar_stream(
    store: std::sync::Arc<dyn ContentStore>,
    members: Vec<Member>,
) -> Result<(ByteStream, u64), ApiError> {
    let mut parts = Vec::with_capacity(members.len());
    let mut total = 2 * BLOCK;
    for m in members {
        let digest = Digest::from_hex(&m.sha256)?;
        let head = member_header(&m);
        total += head.len() as u64 + m.size + padding(m.size);
        parts.push((head, digest, m.size));
    }
    let body = futures_util::stream::iter(parts)
        .map(move |(head, digest, size)| {
            let store = store.clone();
            async move {
                let head = futures_util::stream::once(async move {
                    Ok::<_, std::io::Error>(bytes::Bytes::from(head))
                });
                let pad = padding(size) as usize;
                // Content of another length than the header says would
                // misalign every member after it: the stream fails instead
                // (tar's Content-Length catches it too, tar.zst has none).
                let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
                let counted = seen.clone();
                let tail = futures_util::stream::once(async move {
                    let got = seen.load(std::sync::atomic::Ordering::Relaxed);
                    if got != size {
                        return Err(std::io::Error::other(format!(
                            "content {digest} has {got} bytes where {size} were recorded"
                        )));
                    }
                    Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; pad]))
                });
                match store.get(&digest, None).await {
                    Ok(s) => head
                        .chain(s.inspect_ok(move |b| {
                            counted.fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        }))
                        .chain(tail)
                        .boxed(),
                    Err(e) => head
                        .chain(futures_util::stream::once(async move {
                            Err(std::io::Error::other(e.to_string()))
                        }))
                        .boxed(),
                }
            }
        })
        .buffered(8)
        .flatten()
        .chain(futures_util::stream::once(async {
            Ok(bytes::Bytes::from(vec![0u8; 2 * BLOCK as usize]))
        }));
    Ok((body.boxed(), total))
}

/// A streamed archive download of `total` bytes, named `name.ext`.
pub(crate) fn archive_body(
    body: Body,
    content_type: &'static str,
    total: u64,
    name: &str,
    ext: &str,
) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    h.insert(header::CONTENT_DISPOSITION, attachment(name, ext));
    resp
}

/// `?format=tar|tar.zst|zip&path=DIR` on an archive download: the container
/// (tar by default) and, optionally, one directory of the artifact.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ArchiveParams {
    format: Option<String>,
    path: Option<String>,
}

/// Streams `members` (or those under `params.path`) as the archive format
/// `params` asks for, named after `name` (and the directory, if any).
pub(crate) fn archive_response(
    store: std::sync::Arc<dyn ContentStore>,
    params: &ArchiveParams,
    mut members: Vec<Member>,
    name: &str,
) -> Result<Response, ApiError> {
    let mut name = name.to_string();
    if let Some(dir) = params.path.as_deref().filter(|d| !d.is_empty()) {
        let dir = satchel_model::path::normalize(dir)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let prefix = format!("{dir}/");
        members.retain(|m| m.path.starts_with(&prefix));
        if members.is_empty() {
            return Err(ApiError::not_found(format!(
                "{name} has no directory {dir:?} (no file path starts with {prefix:?})"
            )));
        }
        name = format!("{name}-{}", dir.replace('/', "-"));
    }
    match params.format.as_deref().unwrap_or("tar") {
        "tar" => tar_response(store, members, &name),
        "tar.zst" => tar_zst_response(store, members, &name),
        "zip" => super::zip::zip_response(store, members, &name),
        other => Err(ApiError::bad_request(format!(
            "unknown archive format {other:?}: use `tar`, `tar.zst` or `zip`"
        ))),
    }
}

/// `Content-Disposition` of a download named `name.ext`, its name cut
/// to the characters every browser and shell takes as they are.
fn attachment(name: &str, ext: &str) -> HeaderValue {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    HeaderValue::from_str(&format!("attachment; filename=\"{safe}.{ext}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn member(path: &str, size: u64) -> Member {
        Member {
            path: path.into(),
            size,
            mode: 0o755,
            sha256: "ab".repeat(32),
            mtime_secs: 1_700_000_000,
        }
    }

    fn checksum_ok(h: &[u8]) -> bool {
        let mut copy = h.to_vec();
        copy[148..156].copy_from_slice(b"        ");
        let sum: u64 = copy.iter().map(|&b| u64::from(b)).sum();
        let field = std::str::from_utf8(&h[148..154]).unwrap();
        u64::from_str_radix(field, 8).unwrap() == sum
    }

    #[test]
    fn short_paths_get_one_ustar_block() {
        let h = member_header(&member("dir/a.txt", 5));
        assert_eq!(h.len(), 512);
        assert_eq!(&h[..9], b"dir/a.txt");
        assert_eq!(&h[257..263], b"ustar\0");
        assert_eq!(&h[124..136], b"00000000005\0");
        assert_eq!(&h[100..108], b"0000755\0");
        assert!(checksum_ok(&h));
    }

    #[test]
    fn modes_keep_permission_bits_only() {
        for (mode, want) in [
            (0o4755, b"0000755\0"),
            (0o2755, b"0000755\0"),
            (0o1777, b"0000777\0"),
            (0o107644, b"0000644\0"),
            (0o7000, b"0000000\0"),
        ] {
            let mut m = member("a", 1);
            m.mode = mode;
            let h = member_header(&m);
            assert_eq!(&h[100..108], want, "{mode:o}");
            assert!(checksum_ok(&h));
        }
    }

    #[test]
    fn long_paths_get_a_pax_header() {
        let long = format!("{}/é.txt", "d".repeat(150));
        let h = member_header(&member(&long, 1));
        assert_eq!(h.len(), 512 * 3);
        assert_eq!(h[156], b'x');
        let rec = pax_record("path", &long);
        assert_eq!(&h[512..512 + rec.len()], rec.as_bytes());
        assert!(checksum_ok(&h[..512]));
        assert!(checksum_ok(&h[1024..]));
    }

    #[test]
    fn pax_record_length_counts_itself() {
        for n in [1, 5, 93, 94, 95, 994, 995, 996, 5000] {
            let r = pax_record("path", &"x".repeat(n));
            let (len, _) = r.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), r.len(), "{n}");
        }
    }

    #[test]
    fn huge_sizes_use_pax() {
        let h = member_header(&member("big", USTAR_MAX_SIZE + 1));
        assert_eq!(h.len(), 512 * 3);
        assert!(String::from_utf8_lossy(&h[512..1024]).contains("size=8589934592"));
    }
}
