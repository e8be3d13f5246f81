//! The open pack that new chunks of large blobs are written into.
//!
//! Every write of a [`ChunkStore`](crate::chunked::ChunkStore) that stores
//! a chunk the store lacks appends it, encoded, to one open pack shared by
//! all writes. The pack is sealed and written when it reaches
//! [`CHUNK_PACK_TARGET`] bytes, or as soon as a write with a chunk in it
//! needs that chunk stored (the end of a blob, a chunk sent on its own).
//! One pack is written at a time: while it is written the next fills, and
//! a write that needs the open pack has it sealed as soon as the write in
//! progress is done. So concurrent writes share packs (group commit), a GiB
//! is a few dozen objects, and memory stays at two packs whatever the
//! number of uploads (a write waits while both are full). A chunk already
//! waiting in a pack is not added twice: the second writer waits for the
//! same pack.
//!
//! A write relies on a chunk only once its pack is written (durable, its
//! index learnt here and recorded in the catalog). A failed pack write
//! fails every write with a chunk in it; no recipe names those chunks, and
//! the sweep deletes whatever part of the pack reached the store.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use bytes::{Bytes, BytesMut};
use futures_util::future::{BoxFuture, FutureExt, Shared};

use crate::backend::ObjectBackend;
use crate::codec::Codec;
use crate::pack::{Builder, PackCatalog, PackIndex};
use crate::{Digest, StoreError};

/// A pack of chunks is sealed once its entries reach this many bytes: a
/// GiB of incompressible content makes 52 packs (the goal is at most 64
/// objects a GiB, recipe included), and the two packs in memory are 40
/// MiB of the server's memory budget.
pub const CHUNK_PACK_TARGET: usize = 20 << 20;

/// Room in a pack's buffer beyond the target: the chunk that crosses it
/// (at most [`MAX_CHUNK`](crate::chunked::MAX_CHUNK), plus the codec's
/// header) and the index of the smallest chunks.
const PACK_SLACK: usize = crate::chunked::MAX_CHUNK + 128 * 1024;

/// Where packs go: writes a finished pack durably and makes it known.
#[derive(Clone)]
pub(crate) struct Sink {
    pub backend: Arc<dyn ObjectBackend>,
    pub codec: Arc<Codec>,
    pub packs: Arc<PackIndex>,
    pub catalog: Option<Arc<dyn PackCatalog>>,
}

impl Sink {
    /// Writes pack `b` durably, learns where its entries are and records
    /// them in the catalog; the pack's key (`None` for no entries).
    /// `chunks` says whether it is a pack of chunks (kept by the sweep as
    /// long as unused chunks are) or of blobs.
    pub async fn write(&self, b: Builder, chunks: bool) -> Result<Option<String>, StoreError> {
        self.write_keeping_buffer(b, chunks).await.0
    }

    /// As [`Sink::write`], also giving back the pack's buffer once written
    /// (unless the backend still holds it), for the next pack.
    pub async fn write_keeping_buffer(
        &self,
        b: Builder,
        chunks: bool,
    ) -> (Result<Option<String>, StoreError>, Option<BytesMut>) {
        if b.is_empty() {
            return (Ok(None), None);
        }
        let (codec, self_chunks) = (self.codec.clone(), chunks);
        let (name, bytes, entries) =
            tokio::task::spawn_blocking(move || b.finish(&codec, self_chunks))
                .await
                .expect("packer panicked");
        let kept = bytes.clone();
        let written = self.put(name, bytes, entries, chunks).await;
        (written, kept.try_into_mut().ok())
    }

    /// Stores a finished pack and makes its entries known.
    async fn put(
        &self,
        name: String,
        bytes: Bytes,
        entries: Vec<crate::pack::Entry>,
        chunks: bool,
    ) -> Result<Option<String>, StoreError> {
        let key = format!("p/{}/{}", &name[..2], name);
        let size = bytes.len() as u64;
        self.backend.put(&key, bytes, true).await?;
        // Its age by the store's clock, as a listing would give it.
        let age = self
            .backend
            .head(&key)
            .await?
            .unwrap_or_else(std::time::SystemTime::now);
        if let Some(catalog) = &self.catalog {
            let digests: Vec<Digest> = entries.iter().map(|e| e.digest).collect();
            catalog.record(&key, size, &digests).await?;
        }
        self.packs
            .add(key.as_str().into(), size, age, entries, chunks);
        Ok(Some(key))
    }
}

type Done = Shared<BoxFuture<'static, Result<Arc<str>, Arc<StoreError>>>>;

/// A chunk's place in a pack not yet written: wait on it before relying
/// on the chunk.
#[derive(Clone)]
pub(crate) struct Ticket {
    seq: u64,
    done: Done,
}

impl Ticket {
    /// Which pack this is (packs are numbered as they are opened).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The key of the pack once it is written, or why it was not; `None`
    /// while it is not done.
    pub fn outcome(&self) -> Option<Result<Arc<str>, StoreError>> {
        self.done
            .peek()
            .map(|r| r.clone().map_err(|e| e.duplicate()))
    }
}

struct Open {
    seq: u64,
    builder: Builder,
    seal: tokio::sync::oneshot::Sender<Builder>,
    done: Done,
}

#[derive(Default)]
struct State {
    next_seq: u64,
    open: Option<Open>,
    /// Chunks in the open pack or in the one being written.
    waiting: HashMap<Digest, Ticket>,
    /// Whether a pack is being written (at most one is).
    writing: Option<Done>,
    /// Whether a write waits for the open pack: sealed as soon as the
    /// pack being written is done.
    seal_wanted: bool,
    /// The buffer of the last pack written, for the next one (so at most
    /// two pack buffers exist, and a stream of packs allocates none).
    spare: Option<BytesMut>,
}

/// The open pack and the pack being written; see the module doc.
pub(crate) struct Packer {
    target: usize,
    state: Mutex<State>,
}

impl Packer {
    pub fn new(target: usize) -> Arc<Packer> {
        Arc::new(Packer {
            target,
            state: Mutex::default(),
        })
    }

    /// The ticket of chunk `d` if it waits in a pack.
    pub fn waiting(&self, d: &Digest) -> Option<Ticket> {
        self.state.lock().expect("packer").waiting.get(d).cloned()
    }

    /// Adds chunk `d`, `encoded` by the codec (kind chunk), to the open
    /// pack, unless it waits in a pack already; its ticket. Waits while
    /// the open pack is full and another is being written, so at most two
    /// packs are in memory.
    pub async fn add(self: &Arc<Self>, sink: &Sink, d: Digest, encoded: &[u8]) -> Ticket {
        loop {
            let wait = {
                let mut st = self.state.lock().expect("packer");
                if let Some(t) = st.waiting.get(&d) {
                    return t.clone();
                }
                let full = st
                    .open
                    .as_ref()
                    .is_some_and(|o| o.builder.len() >= self.target);
                if !full {
                    if st.open.is_none() {
                        let open = self.open(&mut st, sink);
                        st.open = Some(open);
                    }
                    let open = st.open.as_mut().expect("open pack");
                    open.builder.push(d, encoded);
                    let t = Ticket {
                        seq: open.seq,
                        done: open.done.clone(),
                    };
                    st.waiting.insert(d, t.clone());
                    return t;
                }
                match st.writing.clone() {
                    None => {
                        Self::seal(&mut st);
                        continue;
                    }
                    Some(w) => {
                        st.seal_wanted = true;
                        w
                    }
                }
            };
            let _ = wait.await;
        }
    }

    /// Waits until the packs of `tickets` are written (sealing the open
    /// one, or having it sealed once the pack being written is done);
    /// the keys of those packs.
    pub async fn wait<'a>(
        &self,
        tickets: impl IntoIterator<Item = &'a Ticket>,
    ) -> Result<Vec<Arc<str>>, StoreError> {
        let mut seen = HashSet::new();
        let mut dones = Vec::new();
        {
            let mut st = self.state.lock().expect("packer");
            for t in tickets {
                if !seen.insert(t.seq) {
                    continue;
                }
                if st.open.as_ref().is_some_and(|o| o.seq == t.seq) {
                    if st.writing.is_none() {
                        Self::seal(&mut st);
                    } else {
                        st.seal_wanted = true;
                    }
                }
                dones.push(t.done.clone());
            }
        }
        let mut keys = Vec::with_capacity(dones.len());
        for d in dones {
            keys.push(d.await.map_err(|e| e.duplicate())?);
        }
        Ok(keys)
    }

    /// Has the open pack sealed and waits until it is written (packs are
    /// written in order: so is everything added before). A failed pack
    /// fails the writes with chunks in it, not this.
    pub async fn flush(&self) {
        let wait = {
            let mut st = self.state.lock().expect("packer");
            match st.open.as_ref().map(|o| o.done.clone()) {
                Some(open) => {
                    if st.writing.is_none() {
                        Self::seal(&mut st);
                    } else {
                        st.seal_wanted = true;
                    }
                    Some(open)
                }
                None => st.writing.clone(),
            }
        };
        if let Some(w) = wait {
            let _ = w.await;
        }
    }

    /// A new open pack, written to `sink` once sealed.
    fn open(self: &Arc<Self>, st: &mut State, sink: &Sink) -> Open {
        let seq = st.next_seq;
        st.next_seq += 1;
        let (seal, sealed) = tokio::sync::oneshot::channel::<Builder>();
        let me: Weak<Packer> = Arc::downgrade(self);
        let sink = sink.clone();
        let done = async move {
            let Ok(builder) = sealed.await else {
                return Err(Arc::new(StoreError::Backend(
                    "the store was closed before a pack of chunks was written".into(),
                )));
            };
            // A panic must not leave `writing` set (every later write
            // would wait on it forever): it fails this pack's writes.
            let (written, buffer) =
                std::panic::AssertUnwindSafe(sink.write_keeping_buffer(builder, true))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| {
                        let e = "writing a pack of chunks panicked (see the server log)";
                        (Err(StoreError::Backend(e.into())), None)
                    });
            if let Some(me) = me.upgrade() {
                let mut st = me.state.lock().expect("packer");
                st.writing = None;
                // Kept while packs follow each other; an idle server
                // gives it back.
                st.spare = if st.open.is_some() { buffer } else { None };
                // Written: the index places them now. Failed: written again
                // by the next write that needs them.
                st.waiting.retain(|_, t| t.seq != seq);
                if std::mem::take(&mut st.seal_wanted) {
                    Self::seal(&mut st);
                }
            }
            match written {
                Ok(Some(key)) => Ok(Arc::from(key)),
                Ok(None) => Err(Arc::new(StoreError::Backend(
                    "an empty pack of chunks was sealed".into(),
                ))),
                Err(e) => Err(Arc::new(e)),
            }
        }
        .boxed()
        .shared();
        tokio::spawn(done.clone());
        Open {
            seq,
            builder: match st.spare.take() {
                Some(buffer) => Builder::with_buffer(buffer),
                None => Builder::with_capacity(self.target + PACK_SLACK),
            },
            seal,
            done,
        }
    }

    /// Seals the open pack (if any) and starts its write; only while no
    /// other pack is being written.
    fn seal(st: &mut State) {
        debug_assert!(st.writing.is_none());
        let Some(open) = st.open.take() else {
            return;
        };
        st.writing = Some(open.done.clone());
        // The receiver lives in the spawned write until it gets this.
        let _ = open.seal.send(open.builder);
    }
}
