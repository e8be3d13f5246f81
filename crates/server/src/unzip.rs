//! Reading the members of a stored zip file in place, never extracting it:
//! the central directory from ranged reads at the end of the blob, one
//! member's bytes from one ranged read, inflated as they stream and checked
//! against the member's CRC-32 and size. This is how an artifact that
//! arrived as one zip (GitHub Actions' `upload-artifact`) is browsed and
//! viewed file by file. Writing zips is [`crate::routes`]' `zip` module.
//!
//! Stored (0) and deflated (8) members are read, zip64 included; encrypted
//! members and other methods are refused by name. A directory of more than
//! [`MAX_DIRECTORY_BYTES`] or [`MAX_MEMBERS`] is refused rather than read.

use std::ops::Range;
use std::sync::Arc;

use axum::http::StatusCode;
use bytes::Bytes;
use futures_util::StreamExt;
use satchel_store::{ByteStream, ContentStore, Digest};

use crate::error::ApiError;

/// Largest central directory read.
pub const MAX_DIRECTORY_BYTES: u64 = 64 << 20;
/// Most members listed.
pub const MAX_MEMBERS: u64 = 200_000;
/// Largest member read in place (inflated), so that no request inflates
/// without end.
pub const MAX_MEMBER_READ: u64 = 4 << 30;
/// End of central directory record: signature and fixed size.
const EOCD: u32 = 0x0605_4b50;
const EOCD_LEN: usize = 22;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const ZIP64_EOCD: u32 = 0x0606_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;

/// One member of a zip, from its central directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its path in the zip (`/`-separated; a directory's ends with `/`).
    pub name: String,
    /// Compression method: 0 stored, 8 deflated.
    pub method: u16,
    /// CRC-32 of its bytes.
    pub crc32: u32,
    /// Bytes as stored in the zip.
    pub compressed: u64,
    /// Bytes once read.
    pub size: u64,
    /// Where its local header starts.
    pub local_offset: u64,
    /// Whether it is encrypted (never read).
    pub encrypted: bool,
}

impl Member {
    /// Whether this is a directory entry.
    pub fn is_dir(&self) -> bool {
        self.name.ends_with('/')
    }
}

fn bad(message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_zip", message)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Where the end of central directory record starts in `tail` (the last
/// bytes of the file): the last signature whose comment ends exactly at
/// the end.
fn find_eocd(tail: &[u8]) -> Option<usize> {
    if tail.len() < EOCD_LEN {
        return None;
    }
    (0..=tail.len() - EOCD_LEN).rev().find(|&at| {
        u32_at(tail, at) == EOCD && at + EOCD_LEN + usize::from(u16_at(tail, at + 20)) == tail.len()
    })
}

/// Where the central directory lies and how many entries it holds, from
/// the end of the file (`tail`, starting at byte `tail_start` of a file of
/// `size` bytes). A zip64 record, when the classic one says so, is read
/// through `read`.
async fn directory_extent<F, Fut>(
    tail: &[u8],
    tail_start: u64,
    size: u64,
    read: F,
) -> Result<(u64, Range<u64>), ApiError>
where
    F: FnOnce(Range<u64>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>, ApiError>>,
{
    let at = find_eocd(tail)
        .ok_or_else(|| bad("not a zip file (no end of central directory)".into()))?;
    let e = &tail[at..];
    let (mut count, mut length, mut offset) = (
        u64::from(u16_at(e, 10)),
        u64::from(u32_at(e, 12)),
        u64::from(u32_at(e, 16)),
    );
    if count == 0xFFFF || length == 0xFFFF_FFFF || offset == 0xFFFF_FFFF {
        // zip64: a locator just before the record points at the zip64 one.
        if at < 20 || u32_at(tail, at - 20) != ZIP64_LOCATOR {
            return Err(bad("a zip64 file without its zip64 locator".into()));
        }
        let record = u64_at(tail, at - 20 + 8);
        if record.checked_add(56).is_none_or(|end| end > size) {
            return Err(bad("the zip64 record lies outside the file".into()));
        }
        let r = match record.checked_sub(tail_start) {
            Some(i) if i + 56 <= tail.len() as u64 => tail[i as usize..i as usize + 56].to_vec(),
            _ => read(record..record + 56).await?,
        };
        if u32_at(&r, 0) != ZIP64_EOCD {
            return Err(bad("the zip64 record is not where its locator says".into()));
        }
        (count, length, offset) = (u64_at(&r, 32), u64_at(&r, 40), u64_at(&r, 48));
    }
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(bad("the central directory lies outside the file".into()));
    }
    if length > MAX_DIRECTORY_BYTES || count > MAX_MEMBERS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "this zip lists {count} members in {length} bytes; at most {MAX_MEMBERS} members and {MAX_DIRECTORY_BYTES} bytes are browsed"
            ),
        ));
    }
    Ok((count, offset..offset + length))
}

/// The members a central directory lists (`count` of them).
fn parse_directory(cd: &[u8], count: u64) -> Result<Vec<Member>, ApiError> {
    // Each entry takes 46 bytes at least: the directory bounds the count.
    let mut members = Vec::with_capacity(count.min(cd.len() as u64 / 46) as usize);
    let mut at = 0usize;
    for i in 0..count {
        if at + 46 > cd.len() || u32_at(cd, at) != CENTRAL {
            return Err(bad(format!("central directory entry {i} is damaged")));
        }
        let flags = u16_at(cd, at + 8);
        let method = u16_at(cd, at + 10);
        let crc32 = u32_at(cd, at + 16);
        let mut compressed = u64::from(u32_at(cd, at + 20));
        let mut size = u64::from(u32_at(cd, at + 24));
        let name_len = usize::from(u16_at(cd, at + 28));
        let extra_len = usize::from(u16_at(cd, at + 30));
        let comment_len = usize::from(u16_at(cd, at + 32));
        let mut local_offset = u64::from(u32_at(cd, at + 42));
        let end = at + 46 + name_len + extra_len + comment_len;
        if end > cd.len() {
            return Err(bad(format!(
                "central directory entry {i} runs past its end"
            )));
        }
        let name = String::from_utf8_lossy(&cd[at + 46..at + 46 + name_len]).into_owned();
        // zip64 extra field: the 8-byte values of the fields that say
        // 0xFFFFFFFF, in this order.
        let mut extra = &cd[at + 46 + name_len..at + 46 + name_len + extra_len];
        while extra.len() >= 4 {
            let (id, len) = (u16_at(extra, 0), usize::from(u16_at(extra, 2)));
            let body = &extra[4..(4 + len).min(extra.len())];
            if id == 0x0001 {
                let mut values = body.chunks_exact(8).map(|c| u64_at(c, 0));
                for field in [&mut size, &mut compressed, &mut local_offset] {
                    if *field == 0xFFFF_FFFF {
                        *field = values
                            .next()
                            .ok_or_else(|| bad(format!("{name:?}: a zip64 field is missing")))?;
                    }
                }
            }
            extra = &extra[(4 + len).min(extra.len())..];
        }
        members.push(Member {
            name,
            method,
            crc32,
            compressed,
            size,
            local_offset,
            encrypted: flags & 1 != 0,
        });
        at = end;
    }
    Ok(members)
}

/// Bytes `range` of blob `digest`.
async fn read_range(
    store: &dyn ContentStore,
    digest: &Digest,
    range: Range<u64>,
) -> Result<Vec<u8>, ApiError> {
    let mut stream = store.get(digest, Some(range.clone())).await?;
    let mut out = Vec::with_capacity((range.end - range.start) as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::internal(format!("reading a zip: {e}")))?;
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A zip's members, in directory order, and an index of their names.
#[derive(Debug)]
pub struct Directory {
    /// In the order of the central directory.
    pub members: Vec<Member>,
    /// Indexes into `members`, ordered by name (each name is kept once).
    by_name: Vec<u32>,
    /// Bytes it takes in memory, about.
    weight: usize,
}

impl Directory {
    fn new(members: Vec<Member>) -> Directory {
        let mut by_name: Vec<u32> = (0..members.len() as u32).collect();
        // Stable: of repeated names, the first in the directory wins.
        by_name.sort_by(|&a, &b| members[a as usize].name.cmp(&members[b as usize].name));
        let weight = members
            .iter()
            .map(|m| std::mem::size_of::<Member>() + 4 + m.name.len())
            .sum();
        Directory {
            members,
            by_name,
            weight,
        }
    }

    /// The member named `name` (the first, if a zip repeats a name).
    pub fn get(&self, name: &str) -> Option<&Member> {
        let at = self
            .by_name
            .partition_point(|&i| self.members[i as usize].name.as_str() < name);
        let &i = self.by_name.get(at)?;
        let m = &self.members[i as usize];
        (m.name == name).then_some(m)
    }
}

/// Memory the cached directories may take in all, and the most one may
/// take to be cached (a larger one is read for each request, under
/// [`COLD_READS`]): blobs never change, so a report's every stylesheet and
/// image reads its zip's directory once.
const CACHE_BYTES: usize = 128 << 20;
const CACHE_ONE_BYTES: usize = 32 << 20;
/// Directories read from the store at once, in this process, and how long
/// one read may take.
const COLD_READS: usize = 2;
const COLD_READ_TIME: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a zip that could not be read is answered from memory.
const FAILURE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// A directory, or why it could not be read (and when).
#[derive(Clone)]
enum Entry {
    Read(Arc<Directory>),
    Failed(StatusCode, &'static str, String, std::time::Instant),
}

impl Entry {
    fn weight(&self) -> usize {
        match self {
            Entry::Read(d) => d.weight,
            Entry::Failed(.., m, _) => m.len() + 64,
        }
    }
}

/// Entries by blob, most recently used at the back.
type Cache = std::sync::Mutex<std::collections::VecDeque<(Digest, Entry)>>;

fn cache() -> &'static Cache {
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn cold_reads() -> &'static tokio::sync::Semaphore {
    static COLD: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    COLD.get_or_init(|| tokio::sync::Semaphore::new(COLD_READS))
}

/// The cached answer for `digest`, if any (an expired failure is none).
fn cached(digest: &Digest) -> Option<Result<Arc<Directory>, ApiError>> {
    let mut c = cache().lock().unwrap_or_else(|p| p.into_inner());
    let at = c.iter().position(|(d, _)| d == digest)?;
    let hit = c.remove(at)?;
    let answer = match &hit.1 {
        Entry::Read(d) => Ok(d.clone()),
        Entry::Failed(_, _, _, when) if when.elapsed() > FAILURE_TTL => return None,
        Entry::Failed(status, code, message, _) => {
            Err(ApiError::new(*status, code, message.clone()))
        }
    };
    c.push_back(hit);
    Some(answer)
}

/// Keeps `entry` for `digest` (once), evicting the least recently used
/// beyond [`CACHE_BYTES`].
fn keep(digest: &Digest, entry: Entry) {
    if entry.weight() > CACHE_ONE_BYTES {
        return;
    }
    let mut c = cache().lock().unwrap_or_else(|p| p.into_inner());
    c.retain(|(d, _)| d != digest);
    c.push_back((*digest, entry));
    let mut total: usize = c.iter().map(|(_, e)| e.weight()).sum();
    while total > CACHE_BYTES && c.len() > 1 {
        if let Some((_, gone)) = c.pop_front() {
            total -= gone.weight();
        }
    }
}

/// The directory of stored zip `digest` (`size` bytes): from the cache,
/// else read (at most [`COLD_READS`] at a time, each within
/// [`COLD_READ_TIME`]) and kept; a zip that cannot be read is answered
/// from memory for [`FAILURE_TTL`].
pub async fn directory(
    store: &dyn ContentStore,
    digest: &Digest,
    size: u64,
) -> Result<Arc<Directory>, ApiError> {
    if let Some(answer) = cached(digest) {
        return answer;
    }
    let _turn = cold_reads()
        .acquire()
        .await
        .map_err(|e| ApiError::internal(format!("zip directory reads: {e}")))?;
    // Another request may have read it while this one waited.
    if let Some(answer) = cached(digest) {
        return answer;
    }
    let read = match tokio::time::timeout(COLD_READ_TIME, members(store, digest, size)).await {
        Ok(read) => read,
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "slow_store",
                format!(
                    "reading this zip's directory took over {} s; try again later",
                    COLD_READ_TIME.as_secs()
                ),
            ))
        }
    };
    match read {
        Ok(members) => {
            let dir = Arc::new(Directory::new(members));
            keep(digest, Entry::Read(dir.clone()));
            Ok(dir)
        }
        // What the zip is (damaged, too large) does not change: kept. A
        // store failure may pass: not kept.
        Err(e) if e.status.is_client_error() => {
            keep(
                digest,
                Entry::Failed(
                    e.status,
                    e.code,
                    e.message.clone(),
                    std::time::Instant::now(),
                ),
            );
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// The members of stored zip `digest` (`size` bytes), as its central
/// directory lists them (uncached; see [`directory`]).
pub async fn members(
    store: &dyn ContentStore,
    digest: &Digest,
    size: u64,
) -> Result<Vec<Member>, ApiError> {
    let tail_start = size.saturating_sub((EOCD_LEN + usize::from(u16::MAX)) as u64);
    let tail = read_range(store, digest, tail_start..size).await?;
    let (count, cd) =
        directory_extent(&tail, tail_start, size, |r| read_range(store, digest, r)).await?;
    let directory = match cd.start.checked_sub(tail_start) {
        Some(i) => tail[i as usize..(cd.end - tail_start) as usize].to_vec(),
        None => read_range(store, digest, cd).await?,
    };
    parse_directory(&directory, count)
}

/// Whether member `m` can be read in place: not encrypted, stored or
/// deflated, and not claiming more than deflate can give or than
/// [`MAX_MEMBER_READ`].
fn readable(m: &Member) -> Result<(), ApiError> {
    if m.encrypted {
        return Err(bad(format!("{:?} is encrypted; download the zip", m.name)));
    }
    if m.method != 0 && m.method != 8 {
        return Err(bad(format!(
            "{:?} is compressed with method {}; only stored and deflated members are read, download the zip",
            m.name, m.method
        )));
    }
    // Deflate cannot expand more than about 1032 to 1: a member that
    // claims more is a bomb or a lie, and is not inflated.
    if m.method == 8 && m.size > m.compressed.saturating_mul(1032).saturating_add(64) {
        return Err(bad(format!(
            "{:?} claims to inflate {} bytes from {}, more than deflate can; download the zip",
            m.name, m.size, m.compressed
        )));
    }
    if m.size > MAX_MEMBER_READ {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "{:?} is {} bytes once inflated; members of at most {MAX_MEMBER_READ} bytes are read in place, download the zip",
                m.name, m.size
            ),
        ));
    }
    Ok(())
}

/// Member `m` of stored zip `digest` (`size` bytes), as it reads once
/// unpacked: streamed, never held whole, and failing (mid-stream, as an
/// I/O error) if its bytes do not match its size and CRC-32.
pub async fn open(
    store: Arc<dyn ContentStore>,
    digest: &Digest,
    size: u64,
    m: &Member,
) -> Result<ByteStream, ApiError> {
    readable(m)?;
    if m.local_offset.checked_add(30).is_none_or(|end| end > size) {
        return Err(bad(format!("{:?} lies outside the zip", m.name)));
    }
    let header = read_range(&*store, digest, m.local_offset..m.local_offset + 30).await?;
    if u32_at(&header, 0) != LOCAL {
        return Err(bad(format!("{:?}: its local header is damaged", m.name)));
    }
    let start =
        m.local_offset + 30 + u64::from(u16_at(&header, 26)) + u64::from(u16_at(&header, 28));
    let end = start
        .checked_add(m.compressed)
        .filter(|end| *end <= size)
        .ok_or_else(|| bad(format!("{:?} lies outside the zip", m.name)))?;
    let raw = store.get(digest, Some(start..end)).await?;
    if m.method == 0 && m.compressed != m.size {
        return Err(bad(format!("{:?}: stored, but its sizes differ", m.name)));
    }
    let reader = Reader {
        input: raw,
        inflate: (m.method == 8).then(|| flate2::Decompress::new(false)),
        pending: Bytes::new(),
        input_done: false,
        finished: false,
        produced: 0,
        crc: crc32fast::Hasher::new(),
        want_size: m.size,
        want_crc: m.crc32,
        name: m.name.clone(),
        held: None,
    };
    Ok(Box::pin(futures_util::stream::try_unfold(
        reader,
        |mut r| async move { Ok(r.next().await?.map(|b| (b, r))) },
    )))
}

/// A member's bytes, inflated if deflated, checked at the end.
struct Reader {
    input: ByteStream,
    inflate: Option<flate2::Decompress>,
    pending: Bytes,
    input_done: bool,
    finished: bool,
    produced: u64,
    crc: crc32fast::Hasher,
    want_size: u64,
    want_crc: u32,
    name: String,
    /// The piece given out next (see [`Reader::next`]).
    held: Option<Bytes>,
}

/// Bytes inflated per step.
const OUT_STEP: usize = 64 * 1024;

impl Reader {
    fn fail(&self, what: &str) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("zip member {:?}: {what}", self.name),
        )
    }

    /// Counts and hashes `b`; at the end, checks size and CRC.
    fn account(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.crc.update(b);
        self.produced += b.len() as u64;
        if self.produced > self.want_size {
            return Err(self.fail("longer than its recorded size"));
        }
        Ok(())
    }

    fn check_end(&self) -> std::io::Result<()> {
        if self.produced != self.want_size {
            return Err(self.fail("shorter than its recorded size"));
        }
        if self.crc.clone().finalize() != self.want_crc {
            return Err(self.fail("its CRC-32 does not match"));
        }
        Ok(())
    }

    /// The next piece, one piece behind what is read: the last piece is
    /// given out only once the member's size and CRC-32 are checked, so a
    /// reader whose length was announced (a `Content-Length`) never gets
    /// a damaged member whole, even where the damage keeps its length.
    async fn next(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            match self.produce().await? {
                Some(b) if b.is_empty() => {}
                Some(b) => {
                    if let Some(earlier) = self.held.replace(b) {
                        return Ok(Some(earlier));
                    }
                }
                None => return Ok(self.held.take()),
            }
        }
    }

    /// The next piece as read, checked at the end.
    async fn produce(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            if self.finished {
                return Ok(None);
            }
            if self.pending.is_empty() && !self.input_done {
                match self.input.next().await {
                    Some(chunk) => self.pending = chunk?,
                    None => self.input_done = true,
                }
                continue;
            }
            let Some(z) = self.inflate.as_mut() else {
                // Stored: the bytes as they are.
                if self.input_done {
                    self.finished = true;
                    self.check_end()?;
                    return Ok(None);
                }
                let b = std::mem::take(&mut self.pending);
                self.account(&b)?;
                return Ok(Some(b));
            };
            let mut out = vec![0u8; OUT_STEP];
            let (was_in, was_out) = (z.total_in(), z.total_out());
            let flush = if self.input_done {
                flate2::FlushDecompress::Finish
            } else {
                flate2::FlushDecompress::None
            };
            let status = z.decompress(&self.pending, &mut out, flush);
            let used = (z.total_in() - was_in) as usize;
            let made = (z.total_out() - was_out) as usize;
            let status = status.map_err(|e| self.fail(&format!("not valid deflate data: {e}")))?;
            self.pending = self.pending.slice(used..);
            let ended = status == flate2::Status::StreamEnd;
            if made > 0 {
                out.truncate(made);
                self.account(&out)?;
            }
            if ended {
                self.finished = true;
                self.check_end()?;
            }
            if made > 0 {
                return Ok(Some(Bytes::from(out)));
            }
            if ended {
                return Ok(None);
            }
            if used == 0 {
                if self.input_done {
                    return Err(self.fail("its deflate data ends too soon"));
                }
                // Needs more input than is pending: join the next chunk.
                match self.input.next().await {
                    Some(chunk) => {
                        let mut joined = self.pending.to_vec();
                        joined.extend_from_slice(&chunk?);
                        self.pending = Bytes::from(joined);
                    }
                    None => self.input_done = true,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_record_is_found_past_a_comment_and_not_inside_one() {
        let mut z = vec![0u8; 10];
        // A comment that itself holds a signature (one that cannot be a
        // record ending at the end): the real record is found.
        let mut comment = b"xx".to_vec();
        comment.extend_from_slice(&EOCD.to_le_bytes());
        comment.extend_from_slice(b"abcdefghijklmnop");
        let mut record = EOCD.to_le_bytes().to_vec();
        record.extend_from_slice(&[0u8; 16]);
        record.extend_from_slice(&(comment.len() as u16).to_le_bytes());
        z.extend_from_slice(&record);
        z.extend_from_slice(&comment);
        assert_eq!(find_eocd(&z), Some(10));
        assert_eq!(find_eocd(&z[..20]), None);
        assert_eq!(find_eocd(b"PK"), None);
    }

    fn member(method: u16, compressed: u64, size: u64) -> Member {
        Member {
            name: "m".into(),
            method,
            crc32: 0,
            compressed,
            size,
            local_offset: 0,
            encrypted: false,
        }
    }

    #[test]
    fn bombs_and_unreadable_members_are_refused_before_any_read() {
        assert!(readable(&member(8, 1000, 1_000_000)).is_ok());
        let bomb = readable(&member(8, 1000, 2_000_000)).unwrap_err();
        assert!(
            bomb.message.contains("more than deflate can"),
            "{}",
            bomb.message
        );
        let huge = readable(&member(8, 10 << 30, MAX_MEMBER_READ + 1)).unwrap_err();
        assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(readable(&member(12, 10, 10)).is_err(), "bzip2 is not read");
        let mut locked = member(0, 10, 10);
        locked.encrypted = true;
        assert!(readable(&locked).is_err());
    }

    #[test]
    fn a_directory_finds_each_name_and_the_first_of_repeats() {
        let mut ms = vec![member(0, 1, 1), member(0, 2, 2), member(0, 3, 3)];
        ms[0].name = "b".into();
        ms[1].name = "a".into();
        ms[2].name = "b".into();
        let d = Directory::new(ms);
        assert_eq!(d.get("a").unwrap().size, 2);
        assert_eq!(d.get("b").unwrap().size, 1, "the first of a repeated name");
        assert!(d.get("c").is_none() && d.get("").is_none());
    }

    #[test]
    fn a_damaged_directory_is_refused_not_misread() {
        let err = parse_directory(&[0u8; 10], 1).unwrap_err();
        assert_eq!(err.code, "bad_zip");
        assert!(parse_directory(&[], 0).unwrap().is_empty());
    }
}
