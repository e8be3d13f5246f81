//! How blob writers and garbage collection stay out of each other's way
//! without a writer holding a lock while a client sends its bytes.
//!
//! A writer announces each digest before it starts storing it
//! ([`BlobGate::writer`], [`Writing::add`]) and keeps the announcement
//! until the blob is recorded in the metadata store (the [`Writing`] guard
//! is dropped). GC holds the gate exclusively ([`BlobGate::sweep`]) while
//! it forgets rows and deletes content, and skips every digest announced
//! at that moment.
//!
//! Announcing needs the gate shared for an instant only, so it cannot
//! happen during a sweep: a digest is either announced before the sweep
//! starts (and is skipped), or its content is written after the sweep
//! finished deleting (and survives). Once the writer has recorded the blob
//! it is young again, and GC only forgets blobs older than its grace
//! cutoff, so the announcement may end at any time after that. A slow
//! upload therefore never holds the gate, and a GC waiting for the gate
//! never waits for one.
//!
//! The gate has two halves. This process's (a read-write lock and a map)
//! is all there is on a database only this process writes (SQLite). On a
//! database that several replicas share (PostgreSQL), announcements are
//! also rows in the database and the sweep also holds the database's gate
//! ([`MetaStore::announce_writes`], [`MetaStore::hold_write_gate`]), so GC
//! on any replica skips what writers on every replica are storing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use satchel_db::{DbError, MetaStore, WriteGateHold};

/// Coordinates blob writers with GC; one per server.
#[derive(Default)]
pub struct BlobGate {
    sweep: tokio::sync::RwLock<()>,
    writing: Mutex<HashMap<String, usize>>,
    /// The database, for its half of the gate.
    db: Option<Arc<dyn MetaStore>>,
}

impl std::fmt::Debug for BlobGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobGate")
            .field("announced", &self.announced())
            .finish()
    }
}

/// Digests a writer is storing; dropping it ends the announcements. Drop
/// it only once a row references the blobs (or the write failed).
#[derive(Debug)]
pub struct Writing {
    gate: Arc<BlobGate>,
    /// This write's id in the database's announcements.
    id: String,
    digests: Vec<String>,
    /// Whether an announcement was sent to the database (it may have
    /// landed even if the call never returned: the writer was cancelled).
    in_db: bool,
}

/// GC's exclusive hold on the gate.
#[derive(Debug)]
pub struct Sweep<'a> {
    gate: &'a BlobGate,
    _exclusive: tokio::sync::RwLockWriteGuard<'a, ()>,
    /// The database's half, where replicas share it.
    shared: Option<WriteGateHold>,
}

impl BlobGate {
    /// A gate whose announcements also go to `db` (they do something
    /// only where other processes share it).
    pub fn new(db: Arc<dyn MetaStore>) -> BlobGate {
        BlobGate {
            db: Some(db),
            ..BlobGate::default()
        }
    }

    /// A writer with no digests announced yet.
    pub fn writer(self: &Arc<Self>) -> Writing {
        Writing {
            gate: self.clone(),
            id: satchel_model::id::new_id(),
            digests: Vec::new(),
            in_db: false,
        }
    }

    /// How many digests this process announced now (for `/metrics`).
    pub fn announced(&self) -> usize {
        self.writing.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Waits for running writers' announcements to settle and excludes
    /// new ones, here and on every replica, until the returned guard is
    /// dropped.
    pub async fn sweep(&self) -> Result<Sweep<'_>, DbError> {
        let exclusive = self.sweep.write().await;
        let shared = match &self.db {
            Some(db) => db.hold_write_gate().await?,
            None => None,
        };
        Ok(Sweep {
            gate: self,
            _exclusive: exclusive,
            shared,
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.writing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Writing {
    /// Announces that `digest` (hex) is about to be stored. Waits only
    /// while a GC sweep is deleting (on any replica).
    pub async fn add(&mut self, digest: &str) -> Result<(), DbError> {
        self.add_all(&[digest.to_string()]).await
    }

    /// [`Writing::add`] for many digests at once: one call to the database
    /// (a pack's worth of small files would otherwise be a transaction
    /// each).
    pub async fn add_all(&mut self, digests: &[String]) -> Result<(), DbError> {
        if digests.is_empty() {
            return Ok(());
        }
        let _shared = self.gate.sweep.read().await;
        if let Some(db) = &self.gate.db {
            // Set first: a request cancelled while this call is in flight
            // must still end what it may have announced.
            self.in_db = true;
            db.announce_writes(&self.id, digests).await?;
        }
        let mut map = self.gate.map();
        for d in digests {
            *map.entry(d.clone()).or_default() += 1;
        }
        drop(map);
        self.digests.extend_from_slice(digests);
        Ok(())
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        let mut map = self.gate.map();
        for d in self.digests.drain(..) {
            if let Some(n) = map.get_mut(&d) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&d);
                }
            }
        }
        drop(map);
        // The database's rows go later, which is safe (a blob stays
        // protected a little longer); rows a crash leaves behind stop
        // counting after satchel_db::WRITE_ANNOUNCEMENT_MAX_MS.
        if !self.in_db {
            return;
        }
        if let (Some(db), Ok(rt)) = (&self.gate.db, tokio::runtime::Handle::try_current()) {
            let (db, id) = (db.clone(), std::mem::take(&mut self.id));
            rt.spawn(async move {
                if let Err(e) = db.end_writes(&id).await {
                    tracing::warn!("ending blob-write announcements: {e}");
                }
            });
        }
    }
}

/// A quiet content-store sweep asks the gate before each young deletion:
/// the database's half may have been lost (a restart frees the lock).
#[async_trait::async_trait]
impl satchel_store::Quiet for Sweep<'_> {
    async fn still(&self) -> Result<(), satchel_store::StoreError> {
        // Not the store's failure: the sweep stops, and GC may run again.
        self.check()
            .await
            .map_err(|e| satchel_store::StoreError::Retry(e.to_string()))
    }
}

impl Sweep<'_> {
    /// Fails when the database's half of the gate is no longer held (see
    /// [`WriteGateHold::check`]); call it before each step that deletes.
    pub async fn check(&self) -> Result<(), DbError> {
        match &self.shared {
            Some(h) => h.check().await,
            None => Ok(()),
        }
    }

    /// Every digest (hex) being written right now, by any replica.
    pub fn announced(&self) -> Vec<String> {
        let mut all: Vec<String> = self.gate.map().keys().cloned().collect();
        if let Some(h) = &self.shared {
            all.extend(h.announced.iter().cloned());
        }
        all
    }

    /// Whether a writer is storing `digest` (hex) right now: GC must
    /// neither forget nor delete it.
    pub fn is_being_written(&self, digest: &str) -> bool {
        self.gate.map().contains_key(digest)
            || self
                .shared
                .as_ref()
                .is_some_and(|h| h.announced.contains(digest))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_slow_writer_blocks_neither_gc_nor_other_writers() {
        let gate = Arc::new(BlobGate::default());
        let mut slow = gate.writer();
        slow.add("aa").await.unwrap();
        // GC gets the gate while the slow writer is still writing, and
        // sees its digest.
        let sweep = tokio::time::timeout(Duration::from_secs(5), gate.sweep())
            .await
            .expect("a writer that is streaming must not hold the gate")
            .unwrap();
        assert!(sweep.is_being_written("aa"));
        assert!(!sweep.is_being_written("bb"));
        // New announcements wait for the sweep, and only for it.
        let mut other = gate.writer();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), other.add("bb"))
                .await
                .is_err(),
            "announcing during a sweep must wait"
        );
        drop(sweep);
        tokio::time::timeout(Duration::from_secs(5), other.add("bb"))
            .await
            .expect("announcing after the sweep")
            .unwrap();
        let mut twice = gate.writer();
        twice.add("aa").await.unwrap();
        drop(slow);
        let sweep = gate.sweep().await.unwrap();
        assert!(sweep.is_being_written("aa"), "counted per writer");
        assert!(sweep.is_being_written("bb"));
        drop(sweep);
        drop((twice, other));
        let sweep = gate.sweep().await.unwrap();
        assert!(!sweep.is_being_written("aa") && !sweep.is_being_written("bb"));
    }
}
