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

use std::collections::HashMap;
use std::sync::Mutex;

/// Coordinates blob writers with GC; one per server.
#[derive(Debug, Default)]
pub struct BlobGate {
    sweep: tokio::sync::RwLock<()>,
    writing: Mutex<HashMap<String, usize>>,
}

/// Digests a writer is storing; dropping it ends the announcements. Drop
/// it only after the blobs are recorded (or the write failed).
#[derive(Debug)]
pub struct Writing<'a> {
    gate: &'a BlobGate,
    digests: Vec<String>,
}

/// GC's exclusive hold on the gate.
#[derive(Debug)]
pub struct Sweep<'a> {
    gate: &'a BlobGate,
    _exclusive: tokio::sync::RwLockWriteGuard<'a, ()>,
}

impl BlobGate {
    /// A writer with no digests announced yet.
    pub fn writer(&self) -> Writing<'_> {
        Writing {
            gate: self,
            digests: Vec::new(),
        }
    }

    /// How many digests are announced now (for `/metrics`).
    pub fn announced(&self) -> usize {
        self.writing.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Waits for running writers' announcements to settle and excludes
    /// new ones until the returned guard is dropped.
    pub async fn sweep(&self) -> Sweep<'_> {
        Sweep {
            gate: self,
            _exclusive: self.sweep.write().await,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.writing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Writing<'_> {
    /// Announces that `digest` (hex) is about to be stored. Waits only
    /// while a GC sweep is deleting.
    pub async fn add(&mut self, digest: &str) {
        let _shared = self.gate.sweep.read().await;
        *self.gate.map().entry(digest.to_string()).or_default() += 1;
        self.digests.push(digest.to_string());
    }
}

impl Drop for Writing<'_> {
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
    }
}

impl Sweep<'_> {
    /// Every digest (hex) being written right now.
    pub fn announced(&self) -> Vec<String> {
        self.gate.map().keys().cloned().collect()
    }

    /// Whether a writer is storing `digest` (hex) right now: GC must
    /// neither forget nor delete it.
    pub fn is_being_written(&self, digest: &str) -> bool {
        self.gate.map().contains_key(digest)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_slow_writer_blocks_neither_gc_nor_other_writers() {
        let gate = BlobGate::default();
        let mut slow = gate.writer();
        slow.add("aa").await;
        // GC gets the gate while the slow writer is still writing, and
        // sees its digest.
        let sweep = tokio::time::timeout(Duration::from_secs(5), gate.sweep())
            .await
            .expect("a writer that is streaming must not hold the gate");
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
            .expect("announcing after the sweep");
        let mut twice = gate.writer();
        twice.add("aa").await;
        drop(slow);
        let sweep = gate.sweep().await;
        assert!(sweep.is_being_written("aa"), "counted per writer");
        assert!(sweep.is_being_written("bb"));
        drop(sweep);
        drop((twice, other));
        let sweep = gate.sweep().await;
        assert!(!sweep.is_being_written("aa") && !sweep.is_being_written("bb"));
    }
}
