//! Content as content-defined chunks on any [`ObjectBackend`].
//!
//! A blob is split with FastCDC (32 KiB min, 64 KiB average, 256 KiB max).
//! A blob of one chunk is stored whole as `b/<2>/<name>`. A larger blob is a
//! recipe `r/<2>/<name>` listing its chunks in order, each chunk named by
//! its own SHA-256, so equal chunks of different files are stored once and
//! a file that changed in a few places shares most of its chunks with the
//! old version. New chunks go into packs of chunks (`p/`, tens of MiB each,
//! see [`crate::packer`]): a GiB is a few dozen objects, not 12,400. Chunks
//! stored before packs of chunks existed are objects `c/<2>/<name>` and
//! still read. Blobs (`b/`, `r/`) and chunks live apart, so deleting a
//! blob never touches a chunk another blob uses: only the sweep frees
//! chunks, after checking every recipe. Objects are encoded by [`Codec`]
//! (zstd where it pays, AES-256-GCM when keys are configured).
//!
//! Writes: chunks are hashed, encoded and added to the open pack by up to
//! four tasks at once while the next chunk is read, so memory is bounded
//! (a few chunks per write, two packs per store) whatever the blob size.
//! The blob's own digest is checked before its recipe is written; a blob
//! that fails the check is not stored (chunks it left are unreferenced and
//! collected by [`ChunkStore::sweep_objects`]). Durability: each pack is
//! written durably before the recipe that names its chunks.
//!
//! Reads check every chunk against its digest as it streams; a recipe is
//! protected by its checksum (or GCM tag), so a flipped bit anywhere fails the
//! read instead of delivering bad bytes. A damaged packed copy falls back
//! to any other copy of the chunk.
//!
//! GC: [`ChunkStore::sweep_objects`] deletes blobs not kept, and chunks no
//! remaining recipe uses: packs of chunks all dead are deleted, mostly dead
//! ones rewritten. A chunk (or pack of chunks) is only swept once it is
//! older than twice `refresh_after` (whatever the caller's cutoff); a write
//! reuses only chunks in packs younger than `refresh_after` (older ones are
//! written again), pins every pack it relies on for this process's sweeps,
//! and checks again, before writing its recipe, that every such pack is
//! still there (and, where other processes sweep, young): a chunk an upload
//! relies on is never swept. Writes rely only on packs of chunks, never on
//! a pack of blobs (those go by the blobs' grace).

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesOrdered, StreamExt};
use sha2::Digest as _;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::backend::ObjectBackend;
use crate::codec::{Codec, Kind};
use crate::pack::{self, PackCatalog, PackIndex};
use crate::packer::{Packer, Sink, Ticket, CHUNK_PACK_TARGET};
use crate::{ByteStream, ContentStore, Digest, Durability, StoreError};

/// Smallest chunk FastCDC cuts (except a blob's last).
pub const MIN_CHUNK: usize = 32 * 1024;
/// Average chunk size (FastCDC's nominal figure: a GiB of random data
/// makes ~12,400 chunks of 86 KiB on average). A change costs about itself
/// plus a chunk on each side to resend: 1% of a GiB changed in 100 places
/// sends 2.4% of it, where 128 KiB chunks sent 3.4% (simulated, same data).
pub const AVG_CHUNK: usize = 64 * 1024;
/// Largest chunk.
pub const MAX_CHUNK: usize = 256 * 1024;
const IN_FLIGHT: usize = 4;

/// Where the next chunk of `window` ends. `window` starts at a chunk
/// boundary and holds at least [`MAX_CHUNK`] bytes, or all that remain of
/// the blob.
fn next_cut(window: &[u8]) -> usize {
    fastcdc::v2020::FastCDC::new(window, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
        .next()
        .map_or(window.len(), |c| c.length)
}

/// The store's one chunker: cuts a stream, fed in pieces of any size, into
/// chunks. The store's writes and every client that must cut as the store
/// does (to ask which chunks it lacks) use it, so the cutting loop cannot
/// drift between them.
#[derive(Debug, Default)]
pub struct Chunker {
    buf: BytesMut,
}

impl Chunker {
    /// A chunker at the start of a blob.
    pub fn new() -> Chunker {
        Chunker {
            buf: BytesMut::with_capacity(2 * MAX_CHUNK),
        }
    }

    /// Whether it holds too few bytes to cut a chunk (unless at the end).
    pub fn wants_more(&self) -> bool {
        self.buf.len() < MAX_CHUNK
    }

    /// Where to put more bytes: at least 64 KiB free.
    pub fn buffer(&mut self) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < 64 * 1024 {
            self.buf.reserve(2 * MAX_CHUNK);
        }
        &mut self.buf
    }

    /// The next chunk, once it holds [`MAX_CHUNK`] bytes or `end` says no
    /// more will come; `None` when it cannot cut yet, or is empty at the end.
    pub fn next(&mut self, end: bool) -> Option<Bytes> {
        if self.buf.is_empty() || (self.wants_more() && !end) {
            return None;
        }
        let cut = next_cut(&self.buf);
        Some(self.buf.split_to(cut).freeze())
    }
}

/// The chunks of a whole blob in memory, as ranges, cut by [`Chunker`].
pub fn cuts(data: &[u8]) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at == data.len() {
            return None;
        }
        let end = at + next_cut(&data[at..data.len().min(at + MAX_CHUNK)]);
        let r = at..end;
        at = end;
        Some(r)
    })
}

/// What a sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Objects looked at.
    pub objects: u64,
    /// Objects deleted.
    pub deleted: u64,
    /// Bytes of storage freed.
    pub bytes_freed: u64,
    /// Bytes of the objects looked at (before anything was freed): with
    /// `bytes_freed`, what the store holds after the pass.
    pub bytes_listed: u64,
    /// Unused chunks younger than twice the refresh age were kept though
    /// older than the cutoff (a sweep that is not quiet).
    pub young_kept: bool,
}

/// What a rewrite (key rotation) did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RewriteReport {
    /// Objects looked at.
    pub objects: u64,
    /// Objects re-encoded with the current key and settings.
    pub rewritten: u64,
}

/// Blobs as chunks on a backend. Clones share everything (backend, pack
/// index, open pack).
#[derive(Clone)]
pub struct ChunkStore {
    backend: Arc<dyn ObjectBackend>,
    codec: Arc<Codec>,
    refresh_after: Duration,
    packs: Arc<PackIndex>,
    /// Where packs are recorded for other processes, if they share one.
    catalog: Option<Arc<dyn PackCatalog>>,
    /// The open pack new chunks go into.
    packer: Arc<Packer>,
    /// Packs writes in flight rely on: this process's sweeps skip them.
    pins: Arc<PinTable>,
}

/// Which packs (and chunk objects) writes in this process rely on, and
/// which ones a sweep of this process is deleting. A write pins a key, or
/// fails if a sweep claimed it; a sweep claims a key only if no write
/// pins it, and keys released while a sweep runs stay protected until it
/// ends (the write's recipe may be newer than the sweep's list of recipes).
#[derive(Default)]
struct PinTable(std::sync::Mutex<PinState>);

#[derive(Default)]
struct PinState {
    pinned: HashMap<Arc<str>, usize>,
    /// Sweeps running.
    sweeps: usize,
    /// Keys unpinned while a sweep runs.
    released: HashSet<Arc<str>>,
    /// Keys a sweep is deleting or rewriting.
    claimed: HashSet<Arc<str>>,
}

impl PinTable {
    fn is_pinned(&self, key: &str) -> bool {
        self.0.lock().expect("pins").pinned.contains_key(key)
    }

    /// For a sweep: claims `key` unless a write relies on it (or did since
    /// the sweep began); whether it may be deleted.
    fn claim(&self, key: &str) -> bool {
        let mut st = self.0.lock().expect("pins");
        if st.pinned.contains_key(key) || st.released.contains(key) {
            return false;
        }
        st.claimed.insert(key.into());
        true
    }

    fn unclaim(&self, key: &str) {
        self.0.lock().expect("pins").claimed.remove(key);
    }

    /// A sweep begins; the guard ends it.
    fn sweeping(self: &Arc<Self>) -> SweepGuard {
        self.0.lock().expect("pins").sweeps += 1;
        SweepGuard(self.clone())
    }
}

/// A sweep in progress (see [`PinTable`]).
struct SweepGuard(Arc<PinTable>);

impl Drop for SweepGuard {
    fn drop(&mut self) {
        let mut st = self.0 .0.lock().expect("pins");
        st.sweeps -= 1;
        if st.sweeps == 0 {
            st.released.clear();
            st.claimed.clear();
        }
    }
}

/// The packs one write relies on, pinned until it ends.
struct Pins {
    table: Arc<PinTable>,
    keys: std::sync::Mutex<Vec<Arc<str>>>,
    /// Packs this write looked for, and whether they were still stored
    /// (see `ChunkStore::reusable`).
    seen: tokio::sync::Mutex<HashMap<Arc<str>, bool>>,
}

impl Pins {
    fn new(table: &Arc<PinTable>) -> Pins {
        Pins {
            table: table.clone(),
            keys: std::sync::Mutex::default(),
            seen: tokio::sync::Mutex::default(),
        }
    }

    /// Pins `key`; fails when a sweep is deleting it (the write retries).
    fn pin(&self, key: &str) -> Result<(), StoreError> {
        let key: Arc<str> = key.into();
        let mut st = self.table.0.lock().expect("pins");
        if st.claimed.contains(&key) {
            return Err(StoreError::Retry(format!(
                "{key}, holding a chunk of this upload, is being collected; retry the upload"
            )));
        }
        *st.pinned.entry(key.clone()).or_default() += 1;
        drop(st);
        self.keys.lock().expect("pins").push(key);
        Ok(())
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let mut st = self.table.0.lock().expect("pins");
        let sweeping = st.sweeps > 0;
        for k in self.keys.lock().expect("pins").iter() {
            if let Some(n) = st.pinned.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    st.pinned.remove(k);
                }
            }
            if sweeping {
                st.released.insert(k.clone());
            }
        }
    }
}

impl std::fmt::Debug for ChunkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkStore({})", self.backend.describe())
    }
}

fn fan(name: &str) -> String {
    format!("{}/{}", &name[..2], name)
}

fn parse_recipe(digest: &Digest, payload: &[u8]) -> Result<(u64, Vec<(u32, Digest)>), StoreError> {
    let bad = || StoreError::Corrupt {
        digest: *digest,
        actual: Digest::of(payload),
    };
    if payload.len() < 12 || !(payload.len() - 12).is_multiple_of(36) {
        return Err(bad());
    }
    let total = u64::from_le_bytes(payload[..8].try_into().expect("8"));
    let n = u32::from_le_bytes(payload[8..12].try_into().expect("4")) as usize;
    if n != (payload.len() - 12) / 36 {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(n);
    let mut sum = 0u64;
    for e in payload[12..].chunks_exact(36) {
        let len = u32::from_le_bytes(e[..4].try_into().expect("4"));
        sum += u64::from(len);
        out.push((len, Digest(e[4..].try_into().expect("32"))));
    }
    if sum != total {
        return Err(bad());
    }
    Ok((total, out))
}

fn encode_recipe(total: u64, chunks: &[(u32, Digest)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + 36 * chunks.len());
    v.extend_from_slice(&total.to_le_bytes());
    v.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    for (len, d) in chunks {
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(&d.0);
    }
    v
}

/// What storing a chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reuse {
    /// A stored copy was fresh enough (or refreshed).
    Reused,
    /// Written.
    Written,
    /// Written as is: compression was tried and did not pay.
    Incompressible,
}

/// After a chunk of a blob does not compress, this many of the next chunks
/// (about 2 MiB) are not tried: archives and images stay incompressible,
/// and trying costs more CPU than writing.
const SKIP_AFTER_INCOMPRESSIBLE: u32 = 15;

/// Where a chunk a write relies on is.
enum Held {
    /// In a written pack.
    Pack(Arc<str>),
    /// An object of its own (written before packs of chunks).
    Object(String),
    /// In a pack not written yet.
    Waiting(Ticket),
}

/// The distinct places a write's chunks are held: one entry per pack (a
/// few dozen a GiB), not one per chunk (12,400 a GiB), so a write's
/// memory barely grows with the blob's size.
#[derive(Default)]
struct HeldSet {
    held: Vec<Held>,
    packs: HashSet<Arc<str>>,
    objects: HashSet<String>,
    waiting: HashSet<u64>,
}

impl HeldSet {
    fn add(&mut self, h: Held) {
        let new = match &h {
            Held::Pack(k) => self.packs.insert(k.clone()),
            Held::Object(k) => self.objects.insert(k.clone()),
            Held::Waiting(t) => self.waiting.insert(t.seq()),
        };
        if new {
            self.held.push(h);
        }
    }
}

enum Top {
    Chunk(Bytes),
    Recipe(u64, Vec<(u32, Digest)>),
}

impl ChunkStore {
    /// A store on `backend`, encoding with `codec`.
    pub fn new(backend: Arc<dyn ObjectBackend>, codec: Codec) -> ChunkStore {
        ChunkStore {
            backend,
            codec: Arc::new(codec),
            refresh_after: Duration::from_secs(15 * 60),
            packs: Arc::default(),
            catalog: None,
            packer: Packer::new(CHUNK_PACK_TARGET),
            pins: Arc::default(),
        }
    }

    /// Where this store writes packs.
    fn sink(&self) -> Sink {
        Sink {
            backend: self.backend.clone(),
            codec: self.codec.clone(),
            packs: self.packs.clone(),
            catalog: self.catalog.clone(),
        }
    }

    /// Records the packs this store writes in `catalog`, and finds packs
    /// other processes wrote there instead of listing every pack on a miss
    /// (replicas on one database and one bucket).
    pub fn with_pack_catalog(mut self, catalog: Arc<dyn PackCatalog>) -> ChunkStore {
        self.catalog = Some(catalog);
        self
    }

    /// Finds where blob `d` is packed if another process packed it since
    /// this one last looked. Where there is a catalog: a lookup there and
    /// the index of each pack it names, and, for a `read` the catalog
    /// cannot place, a listing of every pack at most once per
    /// [`pack::LIST_AT_MOST_EVERY`]. Else every pack is listed. Whether `d`
    /// is packed now, as far as this process knows.
    async fn relearn(&self, d: &Digest, read: bool) -> Result<bool, StoreError> {
        let Some(catalog) = &self.catalog else {
            // Whether this listing changed anything does not matter: a
            // concurrent one may have learnt the pack since `d` missed.
            self.packs.refresh(&*self.backend, &self.codec).await?;
            return Ok(self.packs.lookup(d).is_some());
        };
        for (key, size) in catalog.locate(d).await? {
            if self.packs.lookup(d).is_some() {
                break;
            }
            match self
                .packs
                .learn(&*self.backend, &self.codec, &key, size)
                .await
            {
                Ok(_) => {}
                // Another copy may be readable.
                Err(e @ (StoreError::Undecodable(_) | StoreError::Config(_))) => {
                    tracing::error!(pack = %key, error = %e, "unreadable pack index; trying the blob's other packs");
                }
                Err(e) => return Err(e),
            }
        }
        if self.packs.lookup(d).is_none() && read {
            self.packs
                .refresh_at_most_every(&*self.backend, &self.codec, pack::LIST_AT_MOST_EVERY)
                .await?;
        }
        Ok(self.packs.lookup(d).is_some())
    }

    /// Pack `key` is gone (swept or rewritten by another process): forgets
    /// it here, and finds where `d` is packed now.
    async fn pack_gone(&self, key: &str, d: &Digest, read: bool) -> Result<bool, StoreError> {
        if self.catalog.is_some() {
            // (Without one, the listing drops every pack that is gone.)
            self.packs.remove_pack(key);
        }
        self.relearn(d, read).await
    }

    /// Sets how old an existing chunk may be before a write that reuses it
    /// refreshes its age. GC's grace period must be longer than this.
    pub fn with_refresh_after(mut self, d: Duration) -> ChunkStore {
        self.refresh_after = d;
        self
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn ObjectBackend> {
        &self.backend
    }

    /// The pack chunk or blob `d` is read from, as this process knows.
    pub(crate) fn pack_of(&self, d: &Digest) -> Option<String> {
        self.packs.lookup(d).map(|l| l.pack.to_string())
    }

    /// Whether a write in flight in this process relies on pack `key`.
    pub(crate) fn is_pinned(&self, key: &str) -> bool {
        self.pins.is_pinned(key)
    }

    pub(crate) fn chunk_key(&self, d: &Digest) -> String {
        format!("c/{}", fan(&self.codec.name(d)))
    }

    pub(crate) fn blob_key(&self, d: &Digest) -> String {
        format!("b/{}", fan(&self.codec.name(d)))
    }

    pub(crate) fn recipe_key(&self, d: &Digest) -> String {
        format!("r/{}", fan(&self.codec.name(d)))
    }

    /// Keys (blob, recipe, chunk) of objects written before encryption
    /// was turned on.
    fn legacy_keys(&self, d: &Digest) -> Option<[String; 3]> {
        self.codec.keys.as_ref().map(|_| {
            let hex = d.to_hex();
            [
                format!("b/{}", fan(&hex)),
                format!("r/{}", fan(&hex)),
                format!("c/{}", fan(&hex)),
            ]
        })
    }

    async fn decode(&self, stored: Bytes) -> Result<(Kind, Vec<u8>), StoreError> {
        let codec = self.codec.clone();
        tokio::task::spawn_blocking(move || codec.decode(&stored))
            .await
            .expect("decoder panicked")
    }

    /// Reads and checks one chunk of a recipe: from its pack, else from
    /// an object of its own (chunks written before packs of chunks).
    async fn read_chunk(&self, d: Digest) -> Result<Bytes, StoreError> {
        let legacy = self.legacy_keys(&d).map(|[_, _, c]| c);
        match self.packed(&d).await {
            Ok(Some(b)) => return Ok(b),
            Ok(None) => {}
            Err(damaged @ (StoreError::Corrupt { .. } | StoreError::Undecodable(_))) => {
                return match self.read_content(d, self.chunk_key(&d), legacy).await {
                    Ok(b) => Ok(b),
                    Err(_) => Err(damaged),
                };
            }
            Err(e) => return Err(e),
        }
        match self.read_content(d, self.chunk_key(&d), legacy).await {
            // Perhaps packed by another process since this one last looked.
            Err(StoreError::NotFound(_)) if self.relearn(&d, true).await? => {
                self.packed(&d).await?.ok_or(StoreError::NotFound(d))
            }
            other => other,
        }
    }

    /// Reads content stored whole under `key` (or `legacy`), checked
    /// against `d`.
    async fn read_content(
        &self,
        d: Digest,
        key: String,
        legacy: Option<String>,
    ) -> Result<Bytes, StoreError> {
        let mut stored = self.backend.get(&key).await?;
        if stored.is_none() {
            if let Some(k) = legacy {
                stored = self.backend.get(&k).await?;
            }
        }
        let stored = stored.ok_or(StoreError::NotFound(d))?;
        decode_content(self.codec.clone(), d, stored).await
    }

    /// Reads blob `d` from the pack holding it, if one does. A pack that
    /// vanished (swept or rewritten meanwhile) sends the lookup round again.
    async fn packed(&self, d: &Digest) -> Result<Option<Bytes>, StoreError> {
        self.packs
            .ensure_loaded(&*self.backend, &self.codec)
            .await?;
        for _ in 0..2 {
            let Some(loc) = self.packs.lookup(d) else {
                return Ok(None);
            };
            let Some(stored) = self.backend.get_range(&loc.pack, loc.entry.range()).await? else {
                self.pack_gone(&loc.pack, d, true).await?;
                continue;
            };
            let damaged = match decode_content(self.codec.clone(), *d, stored).await {
                Ok(b) => return Ok(Some(b)),
                Err(e @ (StoreError::Corrupt { .. } | StoreError::Undecodable(_))) => e,
                Err(e) => return Err(e),
            };
            // Another copy (sent again after the damage was found, into a
            // pack of the same age by a coarse clock) may be good.
            for loc in self.packs.other_copies(d) {
                let Some(stored) = self.backend.get_range(&loc.pack, loc.entry.range()).await?
                else {
                    continue;
                };
                if let Ok(b) = decode_content(self.codec.clone(), *d, stored).await {
                    return Ok(Some(b));
                }
            }
            return Err(damaged);
        }
        Ok(None)
    }

    async fn top(&self, d: &Digest) -> Result<Top, StoreError> {
        match self.packed(d).await {
            Ok(Some(b)) => return Ok(Top::Chunk(b)),
            Ok(None) => {}
            Err(damaged @ (StoreError::Corrupt { .. } | StoreError::Undecodable(_))) => {
                // A damaged packed copy; another stored copy (re-sent after
                // fsck --forget-damaged) may be good.
                return match self.unpacked_top(d).await {
                    Err(StoreError::NotFound(_)) => Err(damaged),
                    other => other,
                };
            }
            Err(e) => return Err(e),
        }
        match self.unpacked_top(d).await {
            Err(StoreError::NotFound(_)) => {
                // Perhaps packed by another process since we last looked.
                if self.relearn(d, true).await? {
                    if let Some(b) = self.packed(d).await? {
                        return Ok(Top::Chunk(b));
                    }
                }
                Err(StoreError::NotFound(*d))
            }
            other => other,
        }
    }

    async fn unpacked_top(&self, d: &Digest) -> Result<Top, StoreError> {
        let legacy = self.legacy_keys(d).map(|[b, _, _]| b);
        match self.read_content(*d, self.blob_key(d), legacy).await {
            Ok(b) => return Ok(Top::Chunk(b)),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let mut stored = self.backend.get(&self.recipe_key(d)).await?;
        if stored.is_none() {
            if let Some([_, r, _]) = self.legacy_keys(d) {
                stored = self.backend.get(&r).await?;
            }
        }
        let stored = stored.ok_or(StoreError::NotFound(*d))?;
        let (kind, payload) = self.decode(stored).await?;
        if kind != Kind::Recipe {
            return Err(StoreError::Corrupt {
                digest: *d,
                actual: Digest::of(&payload),
            });
        }
        let (total, chunks) = parse_recipe(d, &payload)?;
        Ok(Top::Recipe(total, chunks))
    }

    /// Stores a blob of one chunk whole, under `b/`; the caller checked it.
    async fn store_whole(&self, d: &Digest, data: Bytes, sync: bool) -> Result<(), StoreError> {
        let codec = self.codec.clone();
        let encoded = tokio::task::spawn_blocking(move || codec.encode(Kind::Chunk, &data))
            .await
            .expect("encoder panicked");
        self.backend
            .put(&self.blob_key(d), Bytes::from(encoded), sync)
            .await
    }

    /// A stored or waiting copy of chunk `d` a write may rely on instead
    /// of writing it, refreshed if old; `None` when it must be written.
    /// With `pins`, the pack is pinned at once (a pack a sweep is
    /// collecting is not reused: the chunk is written again).
    async fn reusable(&self, d: &Digest, pins: Option<&Pins>) -> Result<Option<Held>, StoreError> {
        if let Some(t) = self.packer.waiting(d) {
            return Ok(Some(Held::Waiting(t)));
        }
        self.packs
            .ensure_loaded(&*self.backend, &self.codec)
            .await?;
        let Some(loc) = self.packs.lookup(d) else {
            return Ok(None);
        };
        if !self.packs.holds_chunks(&loc.pack) {
            // A pack of blobs is swept by the blobs' grace, which may be
            // shorter than a write takes: written again into a chunk pack.
            return Ok(None);
        }
        let young = self.packs.age(&loc.pack).is_some_and(|a| {
            SystemTime::now().duration_since(a).unwrap_or_default() < self.refresh_after
        });
        // An older one is written again (copied forward) rather than its
        // pack touched: a touched pack would keep its dead chunks for as
        // long as one of its chunks is reused.
        if !young || pins.is_some_and(|p| p.pin(&loc.pack).is_err()) {
            return Ok(None);
        }
        // Where other processes sweep, this index may name a pack one of
        // them deleted (young chunks go at once when no write is in
        // flight anywhere): a write looks once per pack before relying on
        // it, and writes the chunk again if it is gone, instead of failing
        // at its end. A pack it found cannot go while the write is
        // announced (no sweep then takes young chunks).
        if let Some(p) = pins.filter(|_| self.catalog.is_some()) {
            // Held across the look, so the write's other chunks in that
            // pack wait for its answer instead of relying on it meanwhile.
            let mut seen = p.seen.lock().await;
            let stored = match seen.get(&loc.pack) {
                Some(&stored) => stored,
                None => {
                    let stored = self.backend.head(&loc.pack).await?.is_some();
                    seen.insert(loc.pack.clone(), stored);
                    stored
                }
            };
            drop(seen);
            if !stored {
                self.packs.remove_pack(&loc.pack);
                return Ok(None);
            }
        }
        Ok(Some(Held::Pack(loc.pack)))
    }

    /// Stores one chunk of a large blob unless a fresh copy is there or
    /// waiting: a new one goes into the open pack. `known` is its digest
    /// when the caller already has it. Its length, digest, where it is
    /// held, and whether it was reused.
    async fn stage_chunk(
        &self,
        data: Bytes,
        known: Option<Digest>,
        compress: bool,
        pins: Option<&Pins>,
    ) -> Result<(u32, Digest, Held, Reuse), StoreError> {
        let len = data.len() as u32;
        let (d, data) = match known {
            Some(d) => (d, data),
            None => tokio::task::spawn_blocking(move || (Digest::of(&data), data))
                .await
                .expect("hasher panicked"),
        };
        if let Some(held) = self.reusable(&d, pins).await? {
            return Ok((len, d, held, Reuse::Reused));
        }
        let codec = self.codec.clone();
        let (encoded, compressed) =
            tokio::task::spawn_blocking(move || codec.encode_with(Kind::Chunk, &data, compress))
                .await
                .expect("encoder panicked");
        let ticket = self.packer.add(&self.sink(), d, &encoded).await;
        let reuse = if compressed || !compress {
            Reuse::Written
        } else {
            Reuse::Incompressible
        };
        Ok((len, d, Held::Waiting(ticket), reuse))
    }

    /// Where chunk `d` is now, for [`ChunkStore::check_still_fresh`]; as
    /// missing when only a pack of blobs holds it (see `reusable`).
    fn held_now(&self, d: &Digest) -> Result<Held, StoreError> {
        if let Some(t) = self.packer.waiting(d) {
            return Ok(Held::Waiting(t));
        }
        match self.packs.lookup(d) {
            Some(loc) if self.packs.holds_chunks(&loc.pack) => Ok(Held::Pack(loc.pack)),
            Some(_) => Err(StoreError::ChunkMissing(*d)),
            None => Ok(Held::Object(self.chunk_key(d))),
        }
    }

    /// Waits for the packs holding `held` chunks to be written, then checks
    /// that chunks reused from earlier writes are still there, and young
    /// enough that no sweep can take them before the recipe is written.
    ///
    /// Every pack is pinned in `pins` (this process's sweeps skip it until
    /// the write ends). Where no other process sweeps (no catalog), a
    /// pinned pack need only be there; else it must also be young, since
    /// another replica's sweep goes by age: a write that outlasts half the
    /// refresh age past its first pack fails and is retried.
    async fn check_still_fresh(&self, held: &[Held], pins: &Pins) -> Result<(), StoreError> {
        let own = self
            .packer
            .wait(held.iter().filter_map(|h| match h {
                Held::Waiting(t) => Some(t),
                _ => None,
            }))
            .await?;
        let mut keys: std::collections::BTreeSet<&str> = held
            .iter()
            .filter_map(|h| match h {
                Held::Pack(k) => Some(&**k),
                Held::Object(k) => Some(k.as_str()),
                Held::Waiting(_) => None,
            })
            .collect();
        keys.extend(own.iter().map(|k| &**k));
        for key in &keys {
            pins.pin(key)?;
        }
        let by_age = self.catalog.is_some();
        for key in keys {
            let fresh = self.backend.head(key).await?.is_some_and(|m| {
                !by_age
                    || self.refresh_after.is_zero()
                    || SystemTime::now().duration_since(m).unwrap_or_default()
                        < self.refresh_after + self.refresh_after / 2
            });
            if !fresh {
                // Forgotten here, so the retry writes its chunks again.
                self.packs.remove_pack(key);
                return Err(StoreError::Retry(format!(
                    "{key}, holding a chunk of this upload, was collected or aged meanwhile; retry the upload"
                )));
            }
        }
        Ok(())
    }

    /// Writes a blob's recipe; with `sync`, the chunks are made durable
    /// first and the recipe on return.
    async fn write_recipe(
        &self,
        digest: &Digest,
        total: u64,
        chunks: &[(u32, Digest)],
        sync: bool,
    ) -> Result<(), StoreError> {
        if sync {
            // Chunks first, then the recipe that makes them reachable.
            self.backend.flush().await?;
        }
        let recipe = encode_recipe(total, chunks);
        let codec = self.codec.clone();
        let encoded = tokio::task::spawn_blocking(move || codec.encode(Kind::Recipe, &recipe))
            .await
            .expect("encoder panicked");
        self.backend
            .put(&self.recipe_key(digest), Bytes::from(encoded), sync)
            .await
    }

    /// Checks each blob against its digest and writes them all as one pack,
    /// durably. Any mismatch stores nothing.
    pub async fn put_packed_blobs(&self, blobs: Vec<(Digest, Bytes)>) -> Result<(), StoreError> {
        self.write_pack(blobs, false).await.map(|_| ())
    }

    /// [`ChunkStore::put_packed_blobs`], returning the new pack's key
    /// (`None` for no blobs).
    async fn write_pack(
        &self,
        blobs: Vec<(Digest, Bytes)>,
        chunks: bool,
    ) -> Result<Option<String>, StoreError> {
        if blobs.is_empty() {
            return Ok(None);
        }
        self.packs
            .ensure_loaded(&*self.backend, &self.codec)
            .await?;
        let codec = self.codec.clone();
        let builder = tokio::task::spawn_blocking(move || {
            for (expected, data) in &blobs {
                let actual = Digest::of(data);
                if actual != *expected {
                    return Err(StoreError::DigestMismatch {
                        expected: *expected,
                        actual,
                    });
                }
            }
            Ok(pack::builder_of(&codec, &blobs))
        })
        .await
        .expect("packer panicked")?;
        self.sink().write(builder, chunks).await
    }

    /// Deletes pack `key`, here, in the catalog and in the store. Its
    /// blobs that live on in other packs this process knows are recorded
    /// there first (a copy written by a process without the catalog, or
    /// whose record a crash cut short, would otherwise be unplaceable).
    async fn delete_pack(&self, key: &str) -> Result<(), StoreError> {
        let held = self.packs.entries(key).unwrap_or_default();
        self.packs.remove_pack(key);
        if let Some(catalog) = &self.catalog {
            let mut by_pack: HashMap<(Arc<str>, u64), Vec<Digest>> = HashMap::new();
            for e in held {
                let Some(loc) = self.packs.lookup(&e.digest) else {
                    continue;
                };
                let Some(size) = self.packs.size(&loc.pack) else {
                    continue;
                };
                by_pack.entry((loc.pack, size)).or_default().push(e.digest);
            }
            for ((pack, size), digests) in by_pack {
                catalog.record(&pack, size, &digests).await?;
            }
            // Before the object: a crash between the two leaves a pack no
            // catalog names, which the next sweep deletes.
            catalog.forget(key).await?;
        }
        self.backend.delete(key).await?;
        Ok(())
    }

    /// The blobs of `entries` of pack `key`, read and checked; `None` when
    /// the pack is gone. A damaged entry is an error, unless `droppable`
    /// says another copy is the one readers use: then it is left out.
    async fn live_blobs_of(
        &self,
        key: &str,
        entries: &[pack::Entry],
        droppable: HashSet<Digest>,
    ) -> Result<Option<Vec<(Digest, Bytes)>>, StoreError> {
        let Some(whole) = self.backend.get(key).await? else {
            return Ok(None);
        };
        let codec = self.codec.clone();
        let entries = entries.to_vec();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(entries.len());
            for e in entries {
                let r = e.range();
                let stored = whole
                    .get(r.start as usize..r.end as usize)
                    .ok_or_else(|| StoreError::Undecodable(format!("pack {key} is truncated")))?;
                let checked = codec.decode(stored).and_then(|(kind, data)| {
                    let actual = Digest::of(&data);
                    match kind == Kind::Chunk && actual == e.digest {
                        true => Ok(data),
                        false => Err(StoreError::Corrupt {
                            digest: e.digest,
                            actual,
                        }),
                    }
                });
                match checked {
                    Ok(data) => out.push((e.digest, Bytes::from(data))),
                    Err(err) if droppable.contains(&e.digest) => {
                        tracing::warn!(pack = %key, error = %err, "damaged copy left out: readers use another pack's");
                    }
                    Err(err) => return Err(err),
                }
            }
            Ok(Some(out))
        })
        .await
        .expect("decoder panicked")
    }

    /// Writes blobs `live` of pack `key` into a new pack (with the current
    /// codec), then deletes `key`. A damaged entry (not in `droppable`)
    /// leaves the old pack in place and is logged: neither the sweep nor a
    /// rotation ever drops a live blob. `false` when nothing was rewritten
    /// (also when the pack is gone: another replica rewrote or collected it).
    async fn repack(
        &self,
        key: &str,
        chunks: bool,
        live: &[pack::Entry],
        droppable: HashSet<Digest>,
    ) -> Result<bool, StoreError> {
        let blobs = match self.live_blobs_of(key, live, droppable).await {
            Ok(Some(b)) if b.is_empty() => {
                self.delete_pack(key).await?;
                return Ok(true);
            }
            Ok(Some(b)) => b,
            Ok(None) => return Ok(false),
            Err(e @ (StoreError::Corrupt { .. } | StoreError::Undecodable(_))) => {
                tracing::error!(pack = %key, error = %e, "pack not rewritten: it holds a damaged blob");
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        // (A new pack has a new, random name.)
        self.write_pack(blobs, chunks).await?;
        self.delete_pack(key).await?;
        Ok(true)
    }

    /// [`ChunkStore::repack`] for the sweep: a failure (a full disk, say)
    /// is logged and leaves the pack, so the sweep goes on freeing what it
    /// can; whether the pack was rewritten.
    async fn repack_in_sweep(&self, key: &str, chunks: bool, live: &[pack::Entry]) -> bool {
        match self.repack(key, chunks, live, HashSet::new()).await {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(pack = %key, error = %e, "pack not rewritten; the sweep goes on");
                false
            }
        }
    }

    /// The pack part of a sweep: packs of blobs older than `cutoff`, and
    /// packs of chunks older than `chunk_cutoff`, whose entries are all
    /// unkept (neither a blob in `keep` nor a chunk in `chunks`) are
    /// deleted; those mostly unkept are rewritten.
    async fn sweep_packs<F: std::future::Future<Output = Result<(), StoreError>>>(
        &self,
        keep: &HashSet<Digest>,
        chunks: &HashSet<Digest>,
        (cutoff, chunk_cutoff): (SystemTime, SystemTime),
        still_quiet: &impl Fn(SystemTime) -> F,
        report: &mut SweepReport,
    ) -> Result<(), StoreError> {
        self.packs.refresh(&*self.backend, &self.codec).await?;
        for obj in self.backend.list("p").await? {
            report.objects += 1;
            report.bytes_listed += obj.size;
            // A pack the index does not know is not looked at: one being
            // written right now (stored, not yet recorded), or one whose
            // index is unreadable (logged, left for an operator). Its kind,
            // and so its age floor, is unknown: taken for a pack of blobs,
            // a pack of chunks just written was claimed under the blobs'
            // zero grace, and the write that wrote it failed.
            let Some((entries, holds_chunks)) = self.packs.entries_and_kind(&obj.key) else {
                continue;
            };
            if obj.modified >= (if holds_chunks { chunk_cutoff } else { cutoff }) {
                continue;
            }
            // Claimed for the rest of this sweep unless a write relies on it.
            if !self.pins.claim(&obj.key) {
                continue;
            }
            let entry_count = entries.len();
            let entries_bytes: u64 = entries.iter().map(|e| u64::from(e.len)).sum();
            let live: Vec<pack::Entry> = entries
                .into_iter()
                .filter(|e| {
                    (keep.contains(&e.digest) || chunks.contains(&e.digest))
                        // Placed here, or nowhere (a blob deleted whose
                        // digest is also a chunk's): kept.
                        && (self.packs.points_at(&e.digest, &obj.key)
                            || self.packs.lookup(&e.digest).is_none())
                })
                .collect();
            if live.is_empty() {
                if holds_chunks {
                    still_quiet(obj.modified).await?;
                }
                self.delete_pack(&obj.key).await?;
                report.deleted += 1;
                report.bytes_freed += obj.size;
                continue;
            }
            // Rewritten when its live blobs are under half of its blobs'
            // bytes (the index does not count: for tiny blobs it outweighs
            // them, and a pack with nothing dead is never rewritten).
            let live_bytes: u64 = live.iter().map(|e| u64::from(e.len)).sum();
            if live.len() < entry_count && live_bytes * 2 < entries_bytes {
                if holds_chunks {
                    still_quiet(obj.modified).await?;
                }
                if self.repack_in_sweep(&obj.key, holds_chunks, &live).await {
                    report.deleted += 1;
                    report.bytes_freed += obj.size.saturating_sub(live_bytes);
                    continue;
                }
            }
            // Kept: writes may rely on it again.
            self.pins.unclaim(&obj.key);
        }
        Ok(())
    }

    /// Deletes blobs (whole or recipes) not in `keep` and written before
    /// `cutoff`, then chunks that no remaining recipe uses and that are
    /// older than both `cutoff` and twice `refresh_after`: packs of them
    /// are deleted when all dead, rewritten when mostly dead. The caller makes
    /// sure no blob write it does not keep is in flight (GC holds the upload
    /// gate); chunks are protected by their age.
    ///
    /// With `quiet`, the caller promises that no write runs meanwhile, in
    /// this process or any other sharing the store (GC holds the upload
    /// gate and no blob is announced): then unused chunks are deleted by
    /// `cutoff` alone, so an operator's `gc --grace 0s` frees a failed
    /// upload's packs at once. The promise is checked again
    /// ([`crate::Quiet::still`]) before each young object is deleted, and
    /// the sweep stops when it no longer holds. A client between sending
    /// chunks and assembling them is told `chunk_missing` and sends them
    /// again.
    pub async fn sweep_objects(
        &self,
        keep: &HashSet<Digest>,
        cutoff: SystemTime,
        quiet: Option<&dyn crate::Quiet>,
    ) -> Result<SweepReport, StoreError> {
        // Before the recipes are listed: writes that end meanwhile keep
        // their packs protected until the sweep ends.
        let _sweeping = self.pins.sweeping();
        let legacy = self.codec.keys.is_some();
        let keep_names: HashSet<String> = keep
            .iter()
            .flat_map(|d| {
                let mut v = vec![self.codec.name(d)];
                if legacy {
                    v.push(d.to_hex());
                }
                v
            })
            .collect();
        let base = |key: &str| key.rsplit('/').next().unwrap_or("").to_string();
        let mut report = SweepReport::default();
        for obj in self.backend.list("b").await? {
            report.objects += 1;
            report.bytes_listed += obj.size;
            if obj.modified < cutoff && !keep_names.contains(&base(&obj.key)) {
                self.backend.delete(&obj.key).await?;
                report.deleted += 1;
                report.bytes_freed += obj.size;
            }
        }
        let mut live: HashSet<String> = HashSet::new();
        let mut live_chunks: HashSet<Digest> = HashSet::new();
        for obj in self.backend.list("r").await? {
            report.objects += 1;
            report.bytes_listed += obj.size;
            if obj.modified < cutoff && !keep_names.contains(&base(&obj.key)) {
                self.backend.delete(&obj.key).await?;
                report.deleted += 1;
                report.bytes_freed += obj.size;
                continue;
            }
            let Some(stored) = self.backend.get(&obj.key).await? else {
                continue;
            };
            let (_, payload) = self.decode(stored).await?;
            // The recipe's own digest is not needed to list its chunks.
            let (_, chunks) = parse_recipe(&Digest([0; 32]), &payload)?;
            for (_, d) in chunks {
                live_chunks.insert(d);
                live.insert(self.codec.name(&d));
                if legacy {
                    live.insert(d.to_hex());
                }
            }
        }
        let floor = SystemTime::now()
            .checked_sub(2 * self.refresh_after)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let chunk_cutoff = match quiet {
            Some(_) => cutoff,
            None => {
                report.young_kept = floor < cutoff;
                cutoff.min(floor)
            }
        };
        // What only a quiet sweep deletes: checked again first.
        let still_quiet = |modified: SystemTime| async move {
            match quiet {
                Some(q) if modified >= floor => q.still().await,
                _ => Ok(()),
            }
        };
        // Packs of chunks wait as long as chunks do.
        self.sweep_packs(
            keep,
            &live_chunks,
            (cutoff, chunk_cutoff),
            &still_quiet,
            &mut report,
        )
        .await?;
        for obj in self.backend.list("c").await? {
            report.objects += 1;
            report.bytes_listed += obj.size;
            if obj.modified < chunk_cutoff
                && !live.contains(&base(&obj.key))
                && self.pins.claim(&obj.key)
            {
                still_quiet(obj.modified).await?;
                self.backend.delete(&obj.key).await?;
                report.deleted += 1;
                report.bytes_freed += obj.size;
            }
        }
        Ok(report)
    }

    /// Re-encodes every object not written with the active key (or written
    /// before encryption was turned on) with the current settings: the work
    /// behind key rotation. Objects are replaced atomically, one at a time;
    /// `progress` is told after each object.
    pub async fn rewrite_objects(
        &self,
        progress: &(dyn for<'r> Fn(&'r RewriteReport) + Send + Sync),
    ) -> Result<RewriteReport, StoreError> {
        let active = self.codec.keys.as_ref().map(|k| k.active().id);
        let mut report = RewriteReport::default();
        for dir in ["b", "c", "r"] {
            for obj in self.backend.list(dir).await? {
                report.objects += 1;
                let Some(stored) = self.backend.get(&obj.key).await? else {
                    continue;
                };
                let header = Codec::peek(&stored)?;
                let name = obj.key.rsplit('/').next().unwrap_or("").to_string();
                // A plain-named object under encryption: its name is its digest.
                let rename = active.is_some() && header.key_id.is_none();
                if header.key_id == active && !rename {
                    progress(&report);
                    continue;
                }
                let codec = self.codec.clone();
                let (kind, payload) = self.decode(stored).await?;
                let new_key = if rename {
                    let d = Digest::from_hex(&name)?;
                    format!("{dir}/{}", fan(&self.codec.name(&d)))
                } else {
                    obj.key.clone()
                };
                let encoded = tokio::task::spawn_blocking(move || codec.encode(kind, &payload))
                    .await
                    .expect("encoder panicked");
                self.backend
                    .put(&new_key, Bytes::from(encoded), true)
                    .await?;
                if new_key != obj.key {
                    self.backend.delete(&obj.key).await?;
                }
                report.rewritten += 1;
                progress(&report);
            }
        }
        self.packs.refresh(&*self.backend, &self.codec).await?;
        for obj in self.backend.list("p").await? {
            report.objects += 1;
            let Some((index, _)) =
                pack::read_index_object(&*self.backend, &obj.key, obj.size).await?
            else {
                continue;
            };
            let (Some(entries), false) = (
                self.packs.entries(&obj.key),
                Codec::peek(&index)?.key_id == active,
            ) else {
                progress(&report);
                continue;
            };
            // Every readable entry is carried over, whether or not this
            // replica's index points at this copy: another replica's GC may
            // be rewriting the pack an entry points at, and only a GC that
            // holds the upload gate decides what is dead. A damaged entry
            // whose readers use another pack's copy is left out.
            let droppable: HashSet<Digest> = entries
                .iter()
                .filter(|e| !self.packs.points_at(&e.digest, &obj.key))
                .map(|e| e.digest)
                .collect();
            let chunks = self.packs.holds_chunks(&obj.key);
            if !self.repack(&obj.key, chunks, &entries, droppable).await? {
                if self.backend.head(&obj.key).await?.is_none() {
                    // Rewritten or collected by another replica meanwhile.
                    progress(&report);
                    continue;
                }
                return Err(StoreError::Undecodable(format!(
                    "pack {} could not be re-encrypted (see the server log)",
                    obj.key
                )));
            }
            report.rewritten += 1;
            progress(&report);
        }
        Ok(report)
    }

    /// Checks the settings this store was written with (recorded in the
    /// object `satchel-store` on first use) against the current ones:
    /// refuses to run without keys on an encrypted store, or with a key
    /// file whose naming key differs, instead of reporting content as
    /// missing later. Turning encryption on for a plain store is allowed
    /// (its old content stays readable; `keys rotate` encrypts it).
    pub async fn check_settings_marker(&self) -> Result<(), StoreError> {
        const KEY: &str = "satchel-store";
        let want = self.codec.settings_marker();
        let have = self
            .backend
            .get(KEY)
            .await?
            .map(|b| String::from_utf8_lossy(&b).trim().to_string());
        let where_ = self.backend.describe();
        match have {
            Some(h) if h == want => Ok(()),
            Some(h) if h.contains(" encrypted ") && self.codec.keys.is_none() => {
                Err(StoreError::Config(format!(
                    "the content store at {where_} is encrypted: start the server with its key file (--keys-file or SATCHEL_KEYS)"
                )))
            }
            Some(h) if h.contains(" encrypted ") => Err(StoreError::Config(format!(
                "the key file does not belong to the content store at {where_}: its naming key differs from the one the store was written with"
            ))),
            Some(h) if !h.contains(" plain") => Err(StoreError::Config(format!(
                "{where_} holds an unknown settings marker {h:?}; is it a Satchel content store?"
            ))),
            _ => {
                self.backend
                    .put(KEY, Bytes::from(format!("{want}\n")), true)
                    .await
            }
        }
    }

    /// The key ids found in stored objects, with counts (`None`: not
    /// encrypted). Lets an operator see when an old key is no longer used.
    pub async fn count_keys(&self) -> Result<Vec<(Option<u32>, u64)>, StoreError> {
        let mut counts = std::collections::BTreeMap::new();
        for dir in ["b", "c", "r"] {
            for obj in self.backend.list(dir).await? {
                if let Some(stored) = self.backend.get(&obj.key).await? {
                    *counts.entry(Codec::peek(&stored)?.key_id).or_insert(0u64) += 1;
                }
            }
        }
        for obj in self.backend.list("p").await? {
            if let Some((index, _)) =
                pack::read_index_object(&*self.backend, &obj.key, obj.size).await?
            {
                *counts.entry(Codec::peek(&index)?.key_id).or_insert(0u64) += 1;
            }
        }
        Ok(counts.into_iter().collect())
    }
}

#[async_trait]
impl ContentStore for ChunkStore {
    async fn contains(&self, digest: &Digest) -> Result<bool, StoreError> {
        self.packs
            .ensure_loaded(&*self.backend, &self.codec)
            .await?;
        if let Some(loc) = self.packs.lookup(digest) {
            if self.backend.head(&loc.pack).await?.is_some() {
                return Ok(true);
            }
            // Swept or rewritten by another process.
            if self.pack_gone(&loc.pack, digest, false).await? {
                return Ok(true);
            }
        }
        if self.backend.head(&self.blob_key(digest)).await?.is_some()
            || self.backend.head(&self.recipe_key(digest)).await?.is_some()
        {
            return Ok(true);
        }
        if let Some([b, r, _]) = self.legacy_keys(digest) {
            for k in [b, r] {
                if self.backend.head(&k).await?.is_some() {
                    return Ok(true);
                }
            }
        }
        self.relearn(digest, false).await
    }

    async fn put(
        &self,
        digest: &Digest,
        size: u64,
        reader: &mut (dyn AsyncRead + Unpin + Send),
        durability: Durability,
    ) -> Result<(), StoreError> {
        let sync = durability == Durability::Sync;
        let expected = *digest;
        // Exactly `size` bytes: the reader may go on with the next blob of a
        // batch. Fewer is an error; more cannot be told apart.
        let mut limited = (&mut *reader).take(size);
        let read_err = |e: std::io::Error| StoreError::BodyRead(e.to_string());

        // One chunk for sure: hash once, the chunk's digest is the blob's.
        if size <= MIN_CHUNK as u64 {
            let mut data = Vec::with_capacity(size as usize);
            limited.read_to_end(&mut data).await.map_err(read_err)?;
            if data.len() as u64 != size {
                return Err(StoreError::SizeMismatch {
                    digest: expected,
                    expected: size,
                    actual: data.len() as u64,
                });
            }
            let data = Bytes::from(data);
            let check = data.clone();
            let actual = tokio::task::spawn_blocking(move || Digest::of(&check))
                .await
                .expect("hasher panicked");
            if actual != expected {
                return Err(StoreError::DigestMismatch { expected, actual });
            }
            self.store_whole(&expected, data, sync).await?;
            return Ok(());
        }

        let mut whole = sha2::Sha256::new();
        let mut chunker = Chunker::new();
        let mut total: u64 = 0;
        let mut eof = false;
        // The recipe (36 bytes a chunk), and where its chunks are held.
        let mut chunks: Vec<(u32, Digest)> = Vec::new();
        let mut held = HeldSet::default();
        // Packs this write relies on, pinned as soon as known (reused ones
        // at once, its own once written) so this process's sweeps skip
        // them however long the write takes.
        let pins = Pins::new(&self.pins);
        let mut inflight = FuturesOrdered::new();
        let mut unpinned: Vec<Ticket> = Vec::new();
        let mut first: Option<Bytes> = None;
        let mut chunk_count = 0usize;
        let mut skip_compression = 0u32;
        loop {
            while chunker.wants_more() && !eof {
                if limited.read_buf(chunker.buffer()).await.map_err(read_err)? == 0 {
                    eof = true;
                }
            }
            let Some(piece) = chunker.next(eof) else {
                break;
            };
            total += piece.len() as u64;
            if total > size {
                return Err(StoreError::SizeMismatch {
                    digest: expected,
                    expected: size,
                    actual: total,
                });
            }
            whole.update(&piece);
            // The first chunk waits until a second shows up: if it is the only
            // one, it *is* the blob, and must not be stored before the blob's
            // size and digest are checked.
            let to_store = match first.take() {
                None if chunk_count == 0 => {
                    first = Some(piece);
                    chunk_count = 1;
                    continue;
                }
                Some(f) => vec![f, piece],
                None => vec![piece],
            };
            for piece in to_store {
                chunk_count += 1;
                let compress = skip_compression == 0;
                skip_compression = skip_compression.saturating_sub(1);
                inflight.push_back(self.stage_chunk(piece, None, compress, Some(&pins)));
                if inflight.len() >= IN_FLIGHT {
                    let done = inflight.next().await.expect("non-empty")?;
                    if done.3 == Reuse::Incompressible {
                        // Already-compressed data: try again some chunks on.
                        skip_compression = SKIP_AFTER_INCOMPRESSIBLE;
                    }
                    // (A reused pack was pinned when it was chosen.)
                    if let Held::Waiting(t) = &done.2 {
                        unpinned.push(t.clone());
                    }
                    let mut failed = None;
                    unpinned.retain(|t| match t.outcome() {
                        Some(Ok(key)) => {
                            if let Err(e) = pins.pin(&key) {
                                failed.get_or_insert(e);
                            }
                            false
                        }
                        Some(Err(e)) => {
                            failed.get_or_insert(e);
                            false
                        }
                        None => true,
                    });
                    // A pack of this write failed (a full disk), or is being
                    // collected: stop now, not after reading the rest.
                    if let Some(e) = failed {
                        return Err(e);
                    }
                    let (len, d, h, _) = done;
                    chunks.push((len, d));
                    held.add(h);
                }
            }
        }
        while let Some(r) = inflight.next().await {
            let (len, d, h, _) = r?;
            chunks.push((len, d));
            held.add(h);
        }
        if total != size {
            return Err(StoreError::SizeMismatch {
                digest: expected,
                expected: size,
                actual: total,
            });
        }
        let actual = Digest(whole.finalize().into());
        if actual != expected {
            return Err(StoreError::DigestMismatch { expected, actual });
        }
        if let Some(only) = first {
            // One chunk: it is the blob, checked above; store it as such.
            self.store_whole(&expected, only, sync).await?;
            return Ok(());
        }
        self.check_still_fresh(&held.held, &pins).await?;
        self.write_recipe(digest, total, &chunks, sync).await
    }

    async fn put_packed(&self, blobs: Vec<(Digest, Bytes)>) -> Result<(), StoreError> {
        self.put_packed_blobs(blobs).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.packer.flush().await;
        self.backend.flush().await
    }

    async fn size(&self, digest: &Digest) -> Result<u64, StoreError> {
        Ok(match self.top(digest).await? {
            Top::Chunk(b) => b.len() as u64,
            Top::Recipe(total, _) => total,
        })
    }

    async fn get(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, StoreError> {
        let top = self.top(digest).await?;
        let size = match &top {
            Top::Chunk(b) => b.len() as u64,
            Top::Recipe(total, _) => *total,
        };
        let range = range.unwrap_or(0..size);
        if range.start > range.end || range.end > size {
            return Err(StoreError::BadRange {
                start: range.start,
                end: range.end,
                size,
            });
        }
        let chunks = match top {
            Top::Chunk(b) => {
                let b = b.slice(range.start as usize..range.end as usize);
                return Ok(Box::pin(futures_util::stream::once(async move { Ok(b) })));
            }
            Top::Recipe(_, chunks) => chunks,
        };
        // The chunks overlapping the range, with the part of each to keep.
        let mut parts = Vec::new();
        let mut at = 0u64;
        for (len, d) in chunks {
            let (start, end) = (at, at + u64::from(len));
            at = end;
            if end <= range.start || start >= range.end || len == 0 {
                continue;
            }
            let from = range.start.saturating_sub(start) as usize;
            let to = (range.end.min(end) - start) as usize;
            parts.push((d, from, to));
        }
        let me = self.clone();
        let s = futures_util::stream::iter(parts)
            .map(move |(d, from, to)| {
                let me = me.clone();
                async move {
                    me.read_chunk(d)
                        .await
                        .map(|b| b.slice(from..to))
                        .map_err(|e| match e {
                            StoreError::Io { source, .. } => source,
                            // Not bad data: the store failed. Its address
                            // and the key stay in the log.
                            StoreError::Backend(_) => {
                                tracing::error!("reading a chunk: {e}");
                                std::io::Error::other(
                                    "the object store failed while reading (the server log has the details)",
                                )
                            }
                            other => std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                other.to_string(),
                            ),
                        })
                }
            })
            .buffered(IN_FLIGHT);
        Ok(Box::pin(s))
    }

    async fn delete(&self, digest: &Digest) -> Result<(), StoreError> {
        // A copy in a pack of chunks stays placed: recipes may use it.
        if self
            .packs
            .lookup(digest)
            .is_some_and(|l| !self.packs.holds_chunks(&l.pack))
        {
            self.packs.forget(digest);
        }
        self.backend.delete(&self.blob_key(digest)).await?;
        self.backend.delete(&self.recipe_key(digest)).await?;
        if let Some([b, r, _]) = self.legacy_keys(digest) {
            for k in [b, r] {
                self.backend.delete(&k).await?;
            }
        }
        Ok(())
    }

    async fn discard(&self, digest: &Digest) -> Result<u64, StoreError> {
        let mut removed = 0;
        if let Ok(Top::Recipe(_, chunks)) = self.unpacked_top(digest).await {
            for (_, c) in chunks {
                if let Err(StoreError::Corrupt { .. } | StoreError::Undecodable(_)) =
                    self.read_chunk(c).await
                {
                    // Packed copies stay until the sweep; a copy sent
                    // again goes into a newer pack, which readers prefer.
                    self.packs.forget_everywhere(&c);
                    self.backend.delete(&self.chunk_key(&c)).await?;
                    if let Some([_, _, legacy]) = self.legacy_keys(&c) {
                        self.backend.delete(&legacy).await?;
                    }
                    removed += 1;
                }
            }
        }
        self.delete(digest).await?;
        Ok(removed)
    }

    async fn sweep(
        &self,
        keep: &HashSet<Digest>,
        cutoff: SystemTime,
    ) -> Result<SweepReport, StoreError> {
        self.sweep_objects(keep, cutoff, None).await
    }

    async fn sweep_quiet(
        &self,
        keep: &HashSet<Digest>,
        cutoff: SystemTime,
        quiet: &dyn crate::Quiet,
    ) -> Result<SweepReport, StoreError> {
        self.sweep_objects(keep, cutoff, Some(quiet)).await
    }

    async fn rewrite(
        &self,
        progress: &(dyn for<'r> Fn(&'r RewriteReport) + Send + Sync),
    ) -> Result<RewriteReport, StoreError> {
        self.rewrite_objects(progress).await
    }

    async fn key_usage(&self) -> Result<Vec<(Option<u32>, u64)>, StoreError> {
        self.count_keys().await
    }

    fn pack_listings(&self) -> u64 {
        self.packs.listings()
    }

    fn describe(&self) -> String {
        self.backend.describe()
    }

    async fn check_settings(&self) -> Result<(), StoreError> {
        self.check_settings_marker().await
    }

    async fn missing_chunks(&self, chunks: &[Digest]) -> Result<Vec<bool>, StoreError> {
        let me = self.clone();
        // Pinned while asked about, so that on a shared store a pack another
        // process deleted is looked for (and answered missing) rather than
        // trusted from this process's index.
        let pins = Arc::new(Pins::new(&self.pins));
        let checks = chunks.iter().copied().map(move |d| {
            let (me, pins) = (me.clone(), pins.clone());
            async move { Ok::<bool, StoreError>(me.reusable(&d, Some(&pins)).await?.is_none()) }
        });
        futures_util::stream::iter(checks)
            .buffered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    async fn put_chunk(&self, digest: &Digest, data: Bytes) -> Result<(), StoreError> {
        if data.len() > MAX_CHUNK {
            return Err(StoreError::SizeMismatch {
                digest: *digest,
                expected: MAX_CHUNK as u64,
                actual: data.len() as u64,
            });
        }
        let check = data.clone();
        let actual = tokio::task::spawn_blocking(move || Digest::of(&check))
            .await
            .expect("hasher panicked");
        if actual != *digest {
            return Err(StoreError::DigestMismatch {
                expected: *digest,
                actual,
            });
        }
        // (Pinned for the same reason as in `missing_chunks`: a stale index
        // entry must not pass for a stored chunk.)
        let pins = Pins::new(&self.pins);
        let (_, _, held, _) = self
            .stage_chunk(data, Some(actual), true, Some(&pins))
            .await?;
        // Stored when this returns: concurrent chunks share the pack.
        if let Held::Waiting(t) = held {
            self.packer.wait([&t]).await?;
        }
        Ok(())
    }

    async fn assemble(
        &self,
        digest: &Digest,
        size: u64,
        chunks: &[(u32, Digest)],
    ) -> Result<(), StoreError> {
        let total: u64 = chunks.iter().map(|(l, _)| u64::from(*l)).sum();
        if total != size {
            return Err(StoreError::SizeMismatch {
                digest: *digest,
                expected: size,
                actual: total,
            });
        }
        // Every chunk is read back (and checked against its own digest), and
        // the whole must hash to the blob's digest: a client cannot make a
        // blob whose name lies about its content.
        let waiting: Vec<Ticket> = chunks
            .iter()
            .filter_map(|(_, d)| self.packer.waiting(d))
            .collect();
        self.packer.wait(&waiting).await?;
        let reader = self.clone();
        let mut whole = sha2::Sha256::new();
        let list: Vec<(u32, Digest)> = chunks.to_vec();
        let r = reader.clone();
        let mut reads = futures_util::stream::iter(list.into_iter().map(move |(len, d)| {
            let reader = r.clone();
            async move {
                let b = reader.read_chunk(d).await.map_err(|e| match e {
                    StoreError::NotFound(_) => StoreError::ChunkMissing(d),
                    e => e,
                })?;
                if b.len() as u64 != u64::from(len) {
                    return Err(StoreError::SizeMismatch {
                        digest: d,
                        expected: u64::from(len),
                        actual: b.len() as u64,
                    });
                }
                Ok(b)
            }
        }))
        .buffered(IN_FLIGHT);
        while let Some(b) = reads.next().await {
            whole.update(&b?);
        }
        let actual = Digest(whole.finalize().into());
        if actual != *digest {
            return Err(StoreError::DigestMismatch {
                expected: *digest,
                actual,
            });
        }
        let mut held = HeldSet::default();
        for (_, d) in chunks {
            held.add(self.held_now(d)?);
        }
        let pins = Pins::new(&self.pins);
        self.check_still_fresh(&held.held, &pins).await?;
        if chunks.len() == 1 {
            // A one-chunk blob lives whole under b/.
            let data = reader.read_chunk(chunks[0].1).await?;
            return self.store_whole(digest, data, true).await.map(|_| ());
        }
        self.write_recipe(digest, size, chunks, true).await
    }

    fn key_ids(&self) -> Option<(u32, Vec<u32>)> {
        self.codec.keys.as_ref().map(|k| (k.active().id, k.ids()))
    }
}

/// Objects up to this size are decoded and hashed on the calling task
/// (a chunk takes well under a millisecond); larger ones on the blocking
/// pool. Every chunk is decoded inline (the slack covers the codec's
/// header and tag): handing each 64 KiB chunk to the pool cost more in
/// thread wake-ups than the hashing itself (a 1 GiB download took 2.9 s
/// of server CPU that way, 1.9 s inline).
const DECODE_INLINE: usize = MAX_CHUNK + 4096;

/// Decodes stored content and checks it hashes to `d`.
async fn decode_content(codec: Arc<Codec>, d: Digest, stored: Bytes) -> Result<Bytes, StoreError> {
    let inline = stored.len() <= DECODE_INLINE;
    let work = move || {
        let (kind, data) = codec.decode(&stored)?;
        let actual = Digest::of(&data);
        if kind != Kind::Chunk || actual != d {
            return Err(StoreError::Corrupt { digest: d, actual });
        }
        Ok(Bytes::from(data))
    };
    if inline {
        return work();
    }
    tokio::task::spawn_blocking(work)
        .await
        .expect("decoder panicked")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cutting rule is part of the store's format: stored chunks, and
    /// what every client asks for, depend on it, so dedup against content
    /// stored by an older version needs it unchanged. A change to the
    /// sizes or the algorithm moves these boundaries and fails this.
    #[test]
    fn chunk_boundaries_are_part_of_the_format() {
        let data = crate::conformance::random_bytes(4 << 20, 12);
        let mut h = sha2::Sha256::new();
        let mut n = 0;
        for r in cuts(&data) {
            h.update((r.end as u64).to_le_bytes());
            n += 1;
        }
        let ends = hex::encode(h.finalize());
        assert_eq!(
            (n, ends.as_str()),
            (
                51,
                "7d49dfc4b795bfabba27a9b464e90ff50d261bc0531aa98a14139f23b361162e"
            ),
            "chunk boundaries changed"
        );
    }

    /// Fed in pieces of any size, the chunker cuts a stream exactly as a
    /// whole blob in memory is cut.
    #[test]
    fn the_chunker_cuts_a_stream_as_a_whole_blob_is_cut() {
        let data = crate::conformance::random_bytes(3 << 20, 13);
        let want: Vec<&[u8]> = cuts(&data).map(|r| &data[r]).collect();
        for piece in [1, 37, 65_536, 1 << 20, 3 << 20] {
            let mut c = Chunker::new();
            let mut got = Vec::new();
            let mut fed = data.chunks(piece);
            let mut end = false;
            loop {
                while c.wants_more() && !end {
                    match fed.next() {
                        Some(p) => c.buffer().extend_from_slice(p),
                        None => end = true,
                    }
                }
                match c.next(end) {
                    Some(chunk) => got.push(chunk),
                    None => break,
                }
            }
            assert!(
                got.iter().map(|b| &b[..]).eq(want.iter().copied()),
                "pieces of {piece} bytes"
            );
        }
    }
}
