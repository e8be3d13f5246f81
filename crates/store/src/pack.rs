//! Packs: many small blobs, or many chunks, in one object.
//!
//! A tree of small files (a test report, a `node_modules`) would otherwise be
//! one object per file: 10,000 PUTs to a bucket, and 10,000 objects to list,
//! pay for and sweep; a GiB cut into chunks would be 12,400. Small blobs
//! written together (one upload batch) are instead written as one pack,
//! and new chunks of large blobs go into shared packs of tens of MiB
//! ([`crate::packer`]). A pack is `p/<2>/<name>`:
//!
//! ```text
//! entry*   each blob encoded on its own by Codec (kind chunk): compressed
//!          and encrypted separately, so one is read with a ranged GET
//! index    Codec-encoded (kind pack index), one row per entry:
//!          digest [u8; 32], offset u64 LE, length u32 LE
//! footer   index length u32 LE, magic "SPK1" (blobs) or "SPC1" (chunks)
//! ```
//!
//! `name` is random (so a pack written again is a new object), and the
//! index is encrypted like everything else, so no plaintext digest shows. Every read still checks the blob against its
//! digest, so a swapped or damaged entry fails instead of serving bad bytes.
//!
//! [`PackIndex`] keeps, in memory, where each packed blob is: loaded from
//! the pack indexes on first use, extended by every pack this process
//! writes, and learnt again (packs written or removed by another process)
//! when a lookup misses: from the [`PackCatalog`] where processes share
//! one (replicas on one database), with one lookup and the index of the
//! one pack it names; else by listing every pack. Packs are immutable; the
//! sweep deletes packs whose blobs are all unreferenced and writes the live
//! part of a mostly dead pack into a new one.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::backend::ObjectBackend;
use crate::codec::{Codec, Kind};
use crate::{Digest, StoreError};

/// A pack is written once its blobs reach this many bytes (and at the end of
/// a batch): large enough that 10,000 files of 4 KiB make 5 objects, small
/// enough to hold in memory per batch in flight.
pub const PACK_TARGET: usize = 8 << 20;
/// Blobs up to this size, written in a batch, go into packs; larger ones are
/// chunked on their own.
pub const PACK_ENTRY_MAX: u64 = 256 * 1024;
/// A batch with fewer small blobs than this stores them as objects of their
/// own: a pack of a few blobs saves little, and each blob as an object is
/// freed by GC at once, where a pack waits until most of it is unused.
pub const PACK_MIN_BLOBS: usize = 16;

const FOOTER: u64 = 8;
/// The footer's magic: a pack of blobs (small files sent together).
const MAGIC: &[u8; 4] = b"SPK1";
/// The footer's magic of a pack of chunks of large blobs (store format 2):
/// the sweep keeps its dead entries as long as unused chunks.
const MAGIC_CHUNKS: &[u8; 4] = b"SPC1";
const ROW: usize = 44;

/// One blob in a pack: its digest and where its encoded bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub digest: Digest,
    pub offset: u64,
    pub len: u32,
}

impl Entry {
    pub fn range(&self) -> Range<u64> {
        self.offset..self.offset + u64::from(self.len)
    }
}

/// Where a packed blob is.
#[derive(Debug, Clone)]
pub(crate) struct Loc {
    pub pack: Arc<str>,
    pub entry: Entry,
}

/// A pack being put together: encoded entries appended one by one, then
/// the index and footer. The one writer of the pack format, for packs of
/// small blobs and packs of chunks alike.
#[derive(Default)]
pub(crate) struct Builder {
    bytes: bytes::BytesMut,
    entries: Vec<Entry>,
}

impl Builder {
    /// An empty pack whose entries fit in `capacity` bytes without the
    /// buffer growing (growing by doubling copies it and, on a busy
    /// server, leaves the allocator holding the smaller buffers).
    pub fn with_capacity(capacity: usize) -> Builder {
        Builder::with_buffer(bytes::BytesMut::with_capacity(capacity))
    }

    /// An empty pack written into `buffer` (emptied first): the buffer of
    /// a pack already written, so a busy server reuses the same memory.
    pub fn with_buffer(mut buffer: bytes::BytesMut) -> Builder {
        buffer.clear();
        Builder {
            bytes: buffer,
            entries: Vec::new(),
        }
    }

    /// Appends one entry, already encoded by the codec (kind chunk).
    pub fn push(&mut self, digest: Digest, encoded: &[u8]) {
        self.entries.push(Entry {
            digest,
            offset: self.bytes.len() as u64,
            len: encoded.len() as u32,
        });
        self.bytes.extend_from_slice(encoded);
    }

    /// Bytes of entries so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether no entry was pushed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends the index and footer: the pack's name, bytes and entries.
    /// The name is random: a pack written again with the same entries
    /// (a rewrite, a refresh) is a new object, never one a sweep listed as
    /// old, and nothing is hashed again to name it.
    pub fn finish(mut self, codec: &Codec, chunks: bool) -> (String, Bytes, Vec<Entry>) {
        let mut rows = Vec::with_capacity(4 + ROW * self.entries.len());
        rows.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            rows.extend_from_slice(&e.digest.0);
            rows.extend_from_slice(&e.offset.to_le_bytes());
            rows.extend_from_slice(&e.len.to_le_bytes());
        }
        let index = codec.encode(Kind::PackIndex, &rows);
        self.bytes.extend_from_slice(&index);
        self.bytes
            .extend_from_slice(&(index.len() as u32).to_le_bytes());
        self.bytes
            .extend_from_slice(if chunks { MAGIC_CHUNKS } else { MAGIC });
        let name = satchel_model::id::random_hex(32);
        (name, self.bytes.freeze(), self.entries)
    }
}

/// Encodes `blobs` as a pack: its name and bytes, and its entries.
pub(crate) fn encode(codec: &Codec, blobs: &[(Digest, Bytes)]) -> (String, Bytes, Vec<Entry>) {
    builder_of(codec, blobs).finish(codec, false)
}

/// A pack of `blobs`, each encoded, not finished yet.
pub(crate) fn builder_of(codec: &Codec, blobs: &[(Digest, Bytes)]) -> Builder {
    let mut b = Builder {
        bytes: bytes::BytesMut::with_capacity(
            blobs.iter().map(|(_, b)| b.len() + 64).sum::<usize>() + 64,
        ),
        entries: Vec::with_capacity(blobs.len()),
    };
    for (digest, data) in blobs {
        b.push(*digest, &codec.encode(Kind::Chunk, data));
    }
    b
}

fn bad(key: &str, what: &str) -> StoreError {
    StoreError::Undecodable(format!("pack {key}: {what}"))
}

/// Where the encoded index of a pack of `size` bytes lies, from its last
/// [`FOOTER`] bytes, and whether it is a pack of chunks.
fn index_span(key: &str, footer: &[u8], size: u64) -> Result<(Range<u64>, bool), StoreError> {
    if size < FOOTER || footer.len() as u64 != FOOTER {
        return Err(bad(key, "shorter than its footer"));
    }
    let chunks = match &footer[4..] {
        m if m == MAGIC => false,
        m if m == MAGIC_CHUNKS => true,
        _ => return Err(bad(key, "bad footer magic")),
    };
    let len = u64::from(u32::from_le_bytes(footer[..4].try_into().expect("4")));
    if len > size - FOOTER {
        return Err(bad(key, "index longer than the pack"));
    }
    Ok((size - FOOTER - len..size - FOOTER, chunks))
}

/// Where the encoded index of pack `key` (of `size` bytes) is.
async fn index_range(
    backend: &dyn ObjectBackend,
    key: &str,
    size: u64,
) -> Result<Option<(Range<u64>, bool)>, StoreError> {
    if size < FOOTER {
        return Err(bad(key, "shorter than its footer"));
    }
    let Some(footer) = backend.get_range(key, size - FOOTER..size).await? else {
        return Ok(None);
    };
    index_span(key, &footer, size).map(Some)
}

/// The encoded index object of pack `key`, and whether it is a pack of
/// chunks; `None` if the pack is gone.
pub(crate) async fn read_index_object(
    backend: &dyn ObjectBackend,
    key: &str,
    size: u64,
) -> Result<Option<(Bytes, bool)>, StoreError> {
    let Some((range, chunks)) = index_range(backend, key, size).await? else {
        return Ok(None);
    };
    Ok(backend.get_range(key, range).await?.map(|b| (b, chunks)))
}

/// Decodes and checks the encoded `index` of pack `key` (of `size`
/// bytes): every entry must lie in the data before the index.
fn decode_entries(
    codec: &Codec,
    key: &str,
    size: u64,
    index: &[u8],
) -> Result<Vec<Entry>, StoreError> {
    let data_end = size
        .checked_sub(FOOTER + index.len() as u64)
        .ok_or_else(|| bad(key, "index longer than the pack"))?;
    let (kind, rows) = codec.decode(index)?;
    if kind != Kind::PackIndex || rows.len() < 4 {
        return Err(bad(key, "index is not a pack index"));
    }
    let n = u32::from_le_bytes(rows[..4].try_into().expect("4")) as usize;
    if Some(rows.len()) != n.checked_mul(ROW).and_then(|r| r.checked_add(4)) {
        return Err(bad(key, "index has the wrong length"));
    }
    let mut out = Vec::with_capacity(n);
    for r in rows[4..].chunks_exact(ROW) {
        let e = Entry {
            digest: Digest(r[..32].try_into().expect("32")),
            offset: u64::from_le_bytes(r[32..40].try_into().expect("8")),
            len: u32::from_le_bytes(r[40..44].try_into().expect("4")),
        };
        if e.offset
            .checked_add(u64::from(e.len))
            .is_none_or(|end| end > data_end)
        {
            return Err(bad(key, "an entry lies outside the pack"));
        }
        out.push(e);
    }
    Ok(out)
}

/// Reads and checks the entries of pack `key`, and whether it is a pack
/// of chunks; `None` if it is gone.
pub(crate) async fn read_entries(
    backend: &dyn ObjectBackend,
    codec: &Arc<Codec>,
    key: &str,
    size: u64,
) -> Result<Option<(Vec<Entry>, bool)>, StoreError> {
    let Some((index, chunks)) = read_index_object(backend, key, size).await? else {
        return Ok(None);
    };
    let (codec, key2) = (codec.clone(), key.to_string());
    tokio::task::spawn_blocking(move || decode_entries(&codec, &key2, size, &index))
        .await
        .expect("decoder panicked")
        .map(|e| Some((e, chunks)))
}

/// The stored bytes of a pack of `blobs`, as the store writes it (its
/// name is their SHA-256).
pub fn encode_pack(codec: &Codec, blobs: &[(Digest, Bytes)]) -> Vec<u8> {
    encode(codec, blobs).1.to_vec()
}

/// Reads the index of a whole pack held in memory, as [`read_entries`]
/// reads a stored one, and answers each entry's digest and byte range.
/// For checks of packs outside a store, and for fuzzing the reader.
pub fn read_index(codec: &Codec, pack: &[u8]) -> Result<Vec<(Digest, Range<u64>)>, StoreError> {
    let size = pack.len() as u64;
    let footer = pack
        .get(pack.len().saturating_sub(FOOTER as usize)..)
        .unwrap_or(&[]);
    let (span, _) = index_span("(in memory)", footer, size)?;
    let index = &pack[span.start as usize..span.end as usize];
    let entries = decode_entries(codec, "(in memory)", size, index)?;
    Ok(entries.into_iter().map(|e| (e.digest, e.range())).collect())
}

/// Where packed blobs are, recorded for every process that shares a store
/// (replicas on one database), so that one finds a pack another wrote
/// without listing every pack of the store. It keeps every pack recorded
/// as holding a blob (one sent again is in several), so deleting one pack
/// leaves the others. Every location is checked against the pack's own
/// index; a blob the catalog cannot place (a pack written by a process
/// without it, or a crash before the record) is found by a listing, at
/// most one per [`LIST_AT_MOST_EVERY`] on reads.
#[async_trait::async_trait]
pub trait PackCatalog: Send + Sync + 'static {
    /// Records that pack `key`, of `size` bytes, holds `digests`. Called
    /// once the pack is durable, before its blobs are reported stored.
    async fn record(&self, key: &str, size: u64, digests: &[Digest]) -> Result<(), StoreError>;
    /// The packs (key and size) recorded as holding `digest`, newest first.
    async fn locate(&self, digest: &Digest) -> Result<Vec<(String, u64)>, StoreError>;
    /// Forgets what pack `key` holds (it was deleted).
    async fn forget(&self, key: &str) -> Result<(), StoreError>;
}

/// How often a store with a catalog lists every pack at most, to find a
/// blob the catalog does not place.
pub const LIST_AT_MOST_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// A [`PackCatalog`] in memory: for stores that share one in a process
/// (tests of what replicas see).
#[derive(Debug, Default)]
pub struct MemoryCatalog {
    /// Each blob's packs, oldest record first.
    map: std::sync::Mutex<HashMap<Digest, Vec<(String, u64)>>>,
}

#[async_trait::async_trait]
impl PackCatalog for MemoryCatalog {
    async fn record(&self, key: &str, size: u64, digests: &[Digest]) -> Result<(), StoreError> {
        let mut map = self.map.lock().expect("catalog");
        for d in digests {
            let packs = map.entry(*d).or_default();
            packs.retain(|(k, _)| k != key);
            packs.push((key.to_string(), size));
        }
        Ok(())
    }

    async fn locate(&self, digest: &Digest) -> Result<Vec<(String, u64)>, StoreError> {
        let map = self.map.lock().expect("catalog");
        Ok(map
            .get(digest)
            .map(|p| p.iter().rev().cloned().collect())
            .unwrap_or_default())
    }

    async fn forget(&self, key: &str) -> Result<(), StoreError> {
        for packs in self.map.lock().expect("catalog").values_mut() {
            packs.retain(|(k, _)| k != key);
        }
        Ok(())
    }
}

#[derive(Default)]
struct State {
    loaded: bool,
    packs: HashMap<Arc<str>, Vec<Entry>>,
    /// Each known pack's size in bytes.
    sizes: HashMap<Arc<str>, u64>,
    /// When each known pack was written, by the store's clock: of two
    /// packs holding one blob, the newer is where it is (a copy sent again
    /// after the older was found damaged), whatever order they were
    /// learnt in.
    ages: HashMap<Arc<str>, std::time::SystemTime>,
    map: HashMap<Digest, Loc>,
    /// Known packs of chunks (the rest hold blobs).
    chunk_packs: HashSet<Arc<str>>,
}

/// Where every packed blob is, in memory.
#[derive(Default)]
pub(crate) struct PackIndex {
    state: RwLock<State>,
    /// One refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
    /// Refreshes (each lists every pack).
    listings: std::sync::atomic::AtomicU64,
    /// When the last refresh began.
    listed_at: std::sync::Mutex<Option<std::time::Instant>>,
}

impl PackIndex {
    /// How many times every pack was listed.
    pub fn listings(&self) -> u64 {
        self.listings.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where blob `d` is packed, if it is.
    pub fn lookup(&self, d: &Digest) -> Option<Loc> {
        self.state.read().expect("pack index").map.get(d).cloned()
    }

    /// Whether `d`'s current location is in pack `key`.
    pub fn points_at(&self, d: &Digest, key: &str) -> bool {
        self.lookup(d).is_some_and(|l| &*l.pack == key)
    }

    /// Records a pack of `size` bytes written at `age` (the store's
    /// clock) and its entries. Each blob points at the newest pack known
    /// to hold it (a tie goes to the pack added last).
    pub fn add(
        &self,
        key: Arc<str>,
        size: u64,
        age: std::time::SystemTime,
        entries: Vec<Entry>,
        chunks: bool,
    ) {
        let mut st = self.state.write().expect("pack index");
        let st = &mut *st;
        for e in &entries {
            let older = match st.map.get(&e.digest) {
                Some(l) => st.ages.get(&l.pack).is_none_or(|a| *a <= age),
                None => true,
            };
            if older {
                let loc = Loc {
                    pack: key.clone(),
                    entry: *e,
                };
                st.map.insert(e.digest, loc);
            }
        }
        st.sizes.insert(key.clone(), size);
        st.ages.insert(key.clone(), age);
        if chunks {
            st.chunk_packs.insert(key.clone());
        }
        st.packs.insert(key, entries);
    }

    /// Forgets every place of `d` (a damaged chunk: other copies may be
    /// damaged too; one sent again is placed afresh).
    pub fn forget_everywhere(&self, d: &Digest) {
        self.state.write().expect("pack index").map.remove(d);
    }

    /// Forgets where `d` is (a blob deleted, or a damaged copy; its bytes
    /// stay until the sweep). It points at the newest other copy in a pack
    /// of chunks instead, if one is known: that copy is a chunk recipes
    /// may use.
    pub fn forget(&self, d: &Digest) {
        let mut st = self.state.write().expect("pack index");
        let st = &mut *st;
        let Some(gone) = st.map.remove(d) else {
            return;
        };
        let mut best: Option<(Option<std::time::SystemTime>, Loc)> = None;
        for (key, entries) in &st.packs {
            if *key == gone.pack || !st.chunk_packs.contains(key) {
                continue;
            }
            let age = st.ages.get(key).copied();
            for e in entries.iter().filter(|e| e.digest == *d) {
                if best.as_ref().is_none_or(|(a, _)| *a <= age) {
                    best = Some((
                        age,
                        Loc {
                            pack: key.clone(),
                            entry: *e,
                        },
                    ));
                }
            }
        }
        if let Some((_, loc)) = best {
            st.map.insert(*d, loc);
        }
    }

    /// Forgets pack `key` and every location in it. A blob it held that
    /// another known pack also holds points there instead: processes that
    /// learned packs in different orders may each point a blob at another
    /// copy, and once one of them sweeps its copy away the other copy is
    /// the blob (without this the blob would read as missing here, and this
    /// process's sweep would count the remaining copy as dead too).
    pub fn remove_pack(&self, key: &str) {
        let mut st = self.state.write().expect("pack index");
        st.sizes.remove(key);
        st.ages.remove(key);
        st.chunk_packs.remove(key);
        let Some(entries) = st.packs.remove(key) else {
            return;
        };
        let mut lost = HashSet::new();
        for e in entries {
            if st.map.get(&e.digest).is_some_and(|l| &*l.pack == key) {
                st.map.remove(&e.digest);
                lost.insert(e.digest);
            }
        }
        if lost.is_empty() {
            return;
        }
        let mut found = Vec::new();
        for (pack, entries) in &st.packs {
            for e in entries.iter().filter(|e| lost.contains(&e.digest)) {
                found.push(Loc {
                    pack: pack.clone(),
                    entry: *e,
                });
            }
        }
        // The newest other copy of each.
        found.sort_by_key(|l| st.ages.get(&l.pack).copied());
        for loc in found {
            st.map.insert(loc.entry.digest, loc);
        }
    }

    /// The size of known pack `key`.
    pub fn size(&self, key: &str) -> Option<u64> {
        self.state
            .read()
            .expect("pack index")
            .sizes
            .get(key)
            .copied()
    }

    /// Every known copy of `d` but the one it points at (slow: every
    /// pack's entries are looked at; for reads that found a damaged copy).
    pub fn other_copies(&self, d: &Digest) -> Vec<Loc> {
        let st = self.state.read().expect("pack index");
        let current = st.map.get(d).map(|l| l.pack.clone());
        let mut out: Vec<Loc> = st
            .packs
            .iter()
            .filter(|(k, _)| Some(*k) != current.as_ref())
            .flat_map(|(k, entries)| {
                entries.iter().filter(|e| e.digest == *d).map(|e| Loc {
                    pack: k.clone(),
                    entry: *e,
                })
            })
            .collect();
        // Newest first.
        out.sort_by_key(|l| std::cmp::Reverse(st.ages.get(&l.pack).copied()));
        out
    }

    /// Whether known pack `key` holds chunks of large blobs.
    pub fn holds_chunks(&self, key: &str) -> bool {
        self.state
            .read()
            .expect("pack index")
            .chunk_packs
            .contains(key)
    }

    /// When known pack `key` was written (or last touched).
    pub fn age(&self, key: &str) -> Option<std::time::SystemTime> {
        self.state
            .read()
            .expect("pack index")
            .ages
            .get(key)
            .copied()
    }

    /// The entries of pack `key` and whether it holds chunks, read
    /// together (a pack forgotten between two reads could otherwise be
    /// taken for a pack of blobs); `None` if not known.
    pub fn entries_and_kind(&self, key: &str) -> Option<(Vec<Entry>, bool)> {
        let st = self.state.read().expect("pack index");
        let entries = st.packs.get(key)?.clone();
        Some((entries, st.chunk_packs.contains(key)))
    }

    /// The entries of pack `key`, if known.
    pub fn entries(&self, key: &str) -> Option<Vec<Entry>> {
        self.state
            .read()
            .expect("pack index")
            .packs
            .get(key)
            .cloned()
    }

    /// Learns pack `key` (of `size` bytes) from its own index, unless it is
    /// known already; whether it exists.
    pub async fn learn(
        &self,
        backend: &dyn ObjectBackend,
        codec: &Arc<Codec>,
        key: &str,
        size: u64,
    ) -> Result<bool, StoreError> {
        if self.entries(key).is_some() {
            return Ok(true);
        }
        let Some(age) = backend.head(key).await? else {
            return Ok(false);
        };
        match read_entries(backend, codec, key, size).await? {
            Some((entries, chunks)) => {
                self.add(key.into(), size, age, entries, chunks);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// [`PackIndex::refresh`], unless one that began less than `min_gap`
    /// ago succeeded (one in flight is waited for); whether it listed.
    pub async fn refresh_at_most_every(
        &self,
        backend: &dyn ObjectBackend,
        codec: &Arc<Codec>,
        min_gap: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let _one = self.refreshing.lock().await;
        let recent = self
            .listed_at
            .lock()
            .expect("pack index")
            .is_some_and(|t| t.elapsed() < min_gap);
        if recent {
            return Ok(false);
        }
        self.refresh_locked(backend, codec).await?;
        Ok(true)
    }

    /// Loads every pack index on first use.
    pub async fn ensure_loaded(
        &self,
        backend: &dyn ObjectBackend,
        codec: &Arc<Codec>,
    ) -> Result<(), StoreError> {
        if self.state.read().expect("pack index").loaded {
            return Ok(());
        }
        self.refresh(backend, codec).await.map(|_| ())
    }

    /// Reads the indexes of packs this process does not know yet and drops
    /// packs that are gone. Returns whether anything changed. A pack whose
    /// index cannot be read is logged and left out (its blobs read as
    /// missing, which fsck reports).
    pub async fn refresh(
        &self,
        backend: &dyn ObjectBackend,
        codec: &Arc<Codec>,
    ) -> Result<bool, StoreError> {
        let _one = self.refreshing.lock().await;
        self.refresh_locked(backend, codec).await
    }

    /// [`PackIndex::refresh`], its lock held by the caller.
    async fn refresh_locked(
        &self,
        backend: &dyn ObjectBackend,
        codec: &Arc<Codec>,
    ) -> Result<bool, StoreError> {
        let began = std::time::Instant::now();
        // Packs known before listing: one added meanwhile is not in the
        // listing but is not gone either.
        let before: HashSet<Arc<str>> = self
            .state
            .read()
            .expect("pack index")
            .packs
            .keys()
            .cloned()
            .collect();
        self.listings
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut listed = backend.list("p").await?;
        listed.sort_by_key(|l| l.modified);
        let mut changed = false;
        let names: HashSet<&str> = listed.iter().map(|l| l.key.as_str()).collect();
        for gone in before.iter().filter(|k| !names.contains(&***k)) {
            self.remove_pack(gone);
            changed = true;
        }
        for l in &listed {
            if before.contains(l.key.as_str()) {
                continue;
            }
            match read_entries(backend, codec, &l.key, l.size).await {
                Ok(Some((entries, chunks))) => {
                    self.add(l.key.as_str().into(), l.size, l.modified, entries, chunks);
                    changed = true;
                }
                Ok(None) => {}
                Err(e @ (StoreError::Undecodable(_) | StoreError::Config(_))) => {
                    tracing::error!(pack = %l.key, error = %e, "unreadable pack index; its blobs read as missing");
                }
                Err(e) => return Err(e),
            }
        }
        self.state.write().expect("pack index").loaded = true;
        *self.listed_at.lock().expect("pack index") = Some(began);
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DirBackend;

    #[test]
    fn a_blob_in_two_packs_survives_removing_the_one_it_pointed_at() {
        let x = Digest([7; 32]);
        let e = |offset| Entry {
            digest: x,
            offset,
            len: 3,
        };
        let index = PackIndex::default();
        let now = std::time::SystemTime::now();
        index.add("p/two".into(), 20, now, vec![e(10)], false);
        index.add("p/one".into(), 10, now, vec![e(0)], false);
        assert!(
            index.points_at(&x, "p/one"),
            "of equal age, the last learned wins"
        );
        index.remove_pack("p/one");
        assert!(
            index.points_at(&x, "p/two"),
            "the other copy is the blob now"
        );
        assert_eq!(index.size("p/two"), Some(20));
        index.remove_pack("p/two");
        assert!(index.lookup(&x).is_none());
    }

    /// Whatever order packs are learnt in (a listing, the catalog, a
    /// write), a blob points at the newest pack that holds it, and at the
    /// newest remaining one when that pack goes.
    #[test]
    fn a_blob_points_at_its_newest_pack_whatever_the_order_learnt() {
        let (x, y) = (Digest([1; 32]), Digest([2; 32]));
        let e = |digest, offset| Entry {
            digest,
            offset,
            len: 3,
        };
        let t = |s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
        let index = PackIndex::default();
        index.add("p/mid".into(), 10, t(20), vec![e(x, 0)], false);
        index.add("p/old".into(), 20, t(10), vec![e(x, 0), e(y, 3)], false);
        assert!(index.points_at(&x, "p/mid"), "an older pack learnt late");
        assert!(index.points_at(&y, "p/old"));
        index.add("p/new".into(), 30, t(30), vec![e(x, 0)], false);
        assert!(index.points_at(&x, "p/new"), "a newer pack learnt late");
        index.remove_pack("p/new");
        assert!(index.points_at(&x, "p/mid"), "the newest remaining copy");
    }

    #[tokio::test]
    async fn a_pack_lists_its_blobs_and_rejects_a_bad_footer() {
        let dir = tempfile::tempdir().unwrap();
        let backend = DirBackend::open(dir.path()).unwrap();
        let codec = Arc::new(Codec::plain());
        let blobs: Vec<(Digest, Bytes)> = (0..3u8)
            .map(|i| {
                let b = Bytes::from(vec![i; 100 + i as usize]);
                (Digest::of(&b), b)
            })
            .collect();
        let (name, bytes, entries) = encode(&codec, &blobs);
        // A random name: the same blobs packed again are a new object.
        assert_eq!(name.len(), 64);
        assert_ne!(name, encode(&codec, &blobs).0);
        let size = bytes.len() as u64;
        backend.put("p/xx/pack", bytes.clone(), true).await.unwrap();
        let read = read_entries(&backend, &codec, "p/xx/pack", size)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read, (entries, false));
        for (e, (d, b)) in read.0.iter().zip(&blobs) {
            let enc = backend.get_range("p/xx/pack", e.range()).await.unwrap();
            let (_, plain) = codec.decode(&enc.unwrap()).unwrap();
            assert_eq!(&plain[..], &b[..]);
            assert_eq!(e.digest, *d);
        }
        let mut broken = bytes.to_vec();
        let n = broken.len();
        broken[n - 1] ^= 1;
        backend
            .put("p/xx/bad", Bytes::from(broken), true)
            .await
            .unwrap();
        let e = read_entries(&backend, &codec, "p/xx/bad", size)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("footer"), "{e}");
        // A flipped bit in the index fails its checksum.
        let mut broken = bytes.to_vec();
        broken[n - 20] ^= 1;
        backend
            .put("p/xx/bad", Bytes::from(broken), true)
            .await
            .unwrap();
        assert!(read_entries(&backend, &codec, "p/xx/bad", size)
            .await
            .is_err());
        assert!(read_entries(&backend, &codec, "p/xx/none", size)
            .await
            .unwrap()
            .is_none());
    }
}
