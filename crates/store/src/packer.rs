//! The open pack that new chunks of large blobs are written into.
//!
//! Every write of a [`ChunkStore`](crate::chunked::ChunkStore) that stores
//! a chunk the store lacks appends it, encoded, to one open pack shared by
//! all writes. The pack is sealed and written when it reaches
//! [`CHUNK_PACK_TARGET`] bytes, or as soon as a write with a chunk in it
//! needs that chunk stored (the end of a blob, a chunk sent on its own).
//! Packs are written one at a time, in order: while one is written the
//! next fills, so concurrent writes share packs (group commit), a GiB is
//! a few dozen objects, and memory stays near two packs whatever the number
//! of uploads. A chunk already waiting in a pack is not added twice: the
//! second writer waits for the same pack.
//!
//! A write relies on a chunk only once its pack is written (durable, its
//! index learnt here and recorded in the catalog). A failed pack write
//! fails every write with a chunk in it; no recipe names those chunks, and
//! the sweep deletes whatever part of the pack reached the store.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use futures_util::future::{BoxFuture, FutureExt, Shared};

use crate::backend::ObjectBackend;
use crate::codec::Codec;
use crate::pack::{Builder, PackCatalog, PackIndex};
use crate::{Digest, StoreError};

/// A pack of chunks is sealed once its entries reach this many bytes: a
/// GiB of incompressible content makes 43 packs (the goal is at most 64
/// objects a GiB, recipe included), and two packs in memory stay well
/// under the server's memory budget.
pub const CHUNK_PACK_TARGET: usize = 24 << 20;

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
        if b.is_empty() {
            return Ok(None);
        }
        let (codec, self_chunks) = (self.codec.clone(), chunks);
        let (name, bytes, entries) =
            tokio::task::spawn_blocking(move || b.finish(&codec, self_chunks))
                .await
                .expect("packer panicked");
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

type Done = Shared<BoxFuture<'static, Result<(), Arc<StoreError>>>>;

/// A chunk's place in a pack not yet written: wait on it before relying
/// on the chunk.
#[derive(Clone)]
pub(crate) struct Ticket {
    seq: u64,
    done: Done,
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
    /// Chunks in the open pack or in one being written.
    waiting: HashMap<Digest, Ticket>,
    /// Packs sealed and not written yet.
    writing: usize,
    /// The pack sealed last: the next is written after it.
    last: Option<Done>,
}

/// The open pack and the packs being written; see the module doc.
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
    /// the open pack is full and another is being written.
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
                if st.writing == 0 {
                    Self::seal(&mut st);
                    continue;
                }
                st.last.clone()
            };
            if let Some(w) = wait {
                let _ = w.await;
            }
        }
    }

    /// Seals the packs of `tickets` that are still open and waits until
    /// each is written.
    pub async fn wait<'a>(
        &self,
        tickets: impl IntoIterator<Item = &'a Ticket>,
    ) -> Result<(), StoreError> {
        let mut seen = HashSet::new();
        let mut dones = Vec::new();
        {
            let mut st = self.state.lock().expect("packer");
            for t in tickets {
                if !seen.insert(t.seq) {
                    continue;
                }
                if st.open.as_ref().is_some_and(|o| o.seq == t.seq) {
                    Self::seal(&mut st);
                }
                dones.push(t.done.clone());
            }
        }
        for d in dones {
            d.await.map_err(|e| e.duplicate())?;
        }
        Ok(())
    }

    /// Seals the open pack, if any, and waits for every pack in flight.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let last = {
            let mut st = self.state.lock().expect("packer");
            if st.open.is_some() {
                Self::seal(&mut st);
            }
            st.last.clone()
        };
        // Packs are written in order: the last one done means all are.
        match last {
            Some(l) => l.await.map_err(|e| e.duplicate()),
            None => Ok(()),
        }
    }

    /// A new open pack, written to `sink` once sealed and once the pack
    /// sealed before it is written.
    fn open(self: &Arc<Self>, st: &mut State, sink: &Sink) -> Open {
        let seq = st.next_seq;
        st.next_seq += 1;
        let (seal, sealed) = tokio::sync::oneshot::channel::<Builder>();
        let before = st.last.clone();
        let me: Weak<Packer> = Arc::downgrade(self);
        let sink = sink.clone();
        let done = async move {
            let Ok(builder) = sealed.await else {
                return Err(Arc::new(StoreError::Backend(
                    "the store was closed before a pack of chunks was written".into(),
                )));
            };
            if let Some(b) = before {
                let _ = b.await;
            }
            let written = sink.write(builder, true).await;
            if let Some(me) = me.upgrade() {
                let mut st = me.state.lock().expect("packer");
                st.writing -= 1;
                // Written: the index places them now. Failed: written again
                // by the next write that needs them.
                st.waiting.retain(|_, t| t.seq != seq);
            }
            written.map(|_| ()).map_err(Arc::new)
        }
        .boxed()
        .shared();
        tokio::spawn(done.clone());
        Open {
            seq,
            builder: Builder::default(),
            seal,
            done,
        }
    }

    fn seal(st: &mut State) {
        let Some(open) = st.open.take() else {
            return;
        };
        st.writing += 1;
        st.last = Some(open.done.clone());
        // The receiver lives in the spawned write until it gets this.
        let _ = open.seal.send(open.builder);
    }
}
