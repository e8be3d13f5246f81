//! Blobs as files on the local filesystem: the embedded default.
//!
//! Layout under the root: `blobs/<first two hex>/<64 hex>` for content and
//! `tmp/` for writes in progress (same filesystem, so rename is atomic).
//! A write streams through a blocking writer thread that hashes and writes
//! in 512 KiB buffers, so memory per upload is bounded whatever the size.

use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use sha2::Digest as _;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::io::ReaderStream;

use crate::{ByteStream, ContentStore, Digest, Durability, StoreError};

const BUF: usize = 512 * 1024;
/// Blobs up to this size are read whole and written in one blocking call.
const SMALL: u64 = 256 * 1024;

/// Content on a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`, and removes
    /// leftovers of writes interrupted by a crash.
    pub fn open(root: impl Into<PathBuf>) -> Result<LocalStore, StoreError> {
        let root = root.into();
        for d in ["blobs", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io_err(format!("creating {}", p.display())))?;
        }
        let tmp = root.join("tmp");
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(LocalStore { root })
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.to_hex();
        self.root.join("blobs").join(&hex[..2]).join(hex)
    }

    fn temp_path(&self) -> PathBuf {
        self.root
            .join("tmp")
            .join(satchel_model::id::random_hex(16))
    }
}

/// Moves a verified temp file into place; with `sync`, also makes the rename
/// durable by syncing the directory.
fn install(tmp: &Path, dest: &Path, sync: bool) -> Result<(), StoreError> {
    let parent = dest.parent().expect("blob path has a parent");
    if let Err(e) = std::fs::rename(tmp, dest) {
        if e.kind() != io::ErrorKind::NotFound {
            return Err(io_err(format!("renaming into {}", dest.display()))(e));
        }
        std::fs::create_dir_all(parent)
            .map_err(io_err(format!("creating {}", parent.display())))?;
        std::fs::rename(tmp, dest).map_err(io_err(format!("renaming into {}", dest.display())))?;
    }
    if sync {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_err(format!("syncing {}", parent.display())))?;
    }
    Ok(())
}

enum Opened {
    Whole(bytes::Bytes),
    File(std::fs::File, u64, bool),
}

struct TempGuard(Option<PathBuf>);
impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[async_trait]
impl ContentStore for LocalStore {
    async fn contains(&self, digest: &Digest) -> Result<bool, StoreError> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(format!("checking {digest}"))(e)),
        }
    }

    async fn put(
        &self,
        digest: &Digest,
        size: u64,
        reader: &mut (dyn AsyncRead + Unpin + Send),
        durability: Durability,
    ) -> Result<(), StoreError> {
        let sync = durability == Durability::Sync;
        let tmp = self.temp_path();
        let dest = self.blob_path(digest);
        let expected = *digest;
        if size <= SMALL {
            let mut data = Vec::with_capacity(size as usize);
            (&mut *reader)
                .take(size)
                .read_to_end(&mut data)
                .await
                .map_err(io_err("reading upload body"))?;
            if data.len() as u64 != size {
                return Err(StoreError::SizeMismatch {
                    digest: expected,
                    expected: size,
                    actual: data.len() as u64,
                });
            }
            return tokio::task::spawn_blocking(move || {
                let actual = Digest::of(&data);
                if actual != expected {
                    return Err(StoreError::DigestMismatch { expected, actual });
                }
                let mut guard = TempGuard(Some(tmp.clone()));
                let mut f = std::fs::File::create(&tmp)
                    .map_err(io_err(format!("creating {}", tmp.display())))?;
                f.write_all(&data)
                    .map_err(io_err(format!("writing {}", tmp.display())))?;
                if sync {
                    f.sync_all()
                        .map_err(io_err(format!("syncing {}", tmp.display())))?;
                }
                drop(f);
                install(&tmp, &dest, sync)?;
                guard.0 = None;
                Ok(())
            })
            .await
            .expect("blob writer panicked");
        }

        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
        let tmp2 = tmp.clone();
        let writer = tokio::task::spawn_blocking(move || -> Result<Digest, StoreError> {
            let mut f = std::fs::File::create(&tmp2)
                .map_err(io_err(format!("creating {}", tmp2.display())))?;
            let mut h = sha2::Sha256::new();
            while let Some(buf) = rx.blocking_recv() {
                h.update(&buf);
                f.write_all(&buf)
                    .map_err(io_err(format!("writing {}", tmp2.display())))?;
            }
            if sync {
                f.sync_all()
                    .map_err(io_err(format!("syncing {}", tmp2.display())))?;
            }
            Ok(Digest(h.finalize().into()))
        });
        let _guard = TempGuard(Some(tmp.clone()));
        let mut remaining = size;
        let mut read_err = None;
        while remaining > 0 {
            let want = remaining.min(BUF as u64) as usize;
            let mut buf = vec![0u8; want];
            let mut filled = 0;
            while filled < want {
                match reader.read(&mut buf[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => {
                        read_err = Some(e);
                        break;
                    }
                }
            }
            if read_err.is_some() || filled < want {
                remaining -= filled as u64;
                break;
            }
            remaining -= want as u64;
            if tx.send(buf).await.is_err() {
                break; // the writer failed; its error is reported below
            }
        }
        drop(tx);
        let written = writer.await.expect("blob writer panicked");
        if let Some(e) = read_err {
            return Err(io_err("reading upload body")(e));
        }
        let actual = written?;
        if remaining > 0 {
            return Err(StoreError::SizeMismatch {
                digest: expected,
                expected: size,
                actual: size - remaining,
            });
        }
        if actual != expected {
            return Err(StoreError::DigestMismatch { expected, actual });
        }
        let (t, d) = (tmp.clone(), dest);
        tokio::task::spawn_blocking(move || install(&t, &d, sync))
            .await
            .expect("blob installer panicked")?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || sync_filesystem(&root))
            .await
            .expect("flush panicked")
    }

    async fn size(&self, digest: &Digest) -> Result<u64, StoreError> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound(*digest)),
            Err(e) => Err(io_err(format!("reading {digest}"))(e)),
        }
    }

    async fn get(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, StoreError> {
        let path = self.blob_path(digest);
        let d = *digest;
        // Open, size, and (for small blobs) read in one blocking call: many
        // small files must not each cost several trips to the blocking pool.
        let opened = tokio::task::spawn_blocking(move || -> Result<Opened, StoreError> {
            let mut f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StoreError::NotFound(d))
                }
                Err(e) => return Err(io_err(format!("opening {}", path.display()))(e)),
            };
            let size = f
                .metadata()
                .map_err(io_err(format!("reading {}", path.display())))?
                .len();
            let range = range.unwrap_or(0..size);
            if range.start > range.end || range.end > size {
                return Err(StoreError::BadRange {
                    start: range.start,
                    end: range.end,
                    size,
                });
            }
            if range.start > 0 {
                std::io::Seek::seek(&mut f, io::SeekFrom::Start(range.start))
                    .map_err(io_err(format!("seeking {}", path.display())))?;
            }
            let len = range.end - range.start;
            let whole = len == size;
            if len <= SMALL {
                let mut buf = Vec::with_capacity(len as usize);
                std::io::Read::read_to_end(&mut std::io::Read::take(&mut f, len), &mut buf)
                    .map_err(io_err(format!("reading {}", path.display())))?;
                if whole {
                    let actual = Digest::of(&buf);
                    if actual != d {
                        return Err(StoreError::Corrupt { digest: d, actual });
                    }
                }
                return Ok(Opened::Whole(bytes::Bytes::from(buf)));
            }
            Ok(Opened::File(f, len, whole))
        })
        .await
        .expect("blob reader panicked")?;
        Ok(match opened {
            Opened::Whole(b) => Box::pin(futures_util::stream::once(async move { Ok(b) })),
            Opened::File(f, len, whole) => {
                let s: ByteStream = Box::pin(ReaderStream::with_capacity(
                    tokio::fs::File::from_std(f).take(len),
                    BUF,
                ));
                // Whole reads are checked as they stream; ranges cannot be.
                if whole {
                    crate::verified(s, d)
                } else {
                    s
                }
            }
        })
    }

    async fn delete(&self, digest: &Digest) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.blob_path(digest)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("deleting {digest}"))(e)),
        }
    }
}

/// Flushes every dirty page and metadata change of the filesystem that holds
/// `root`: one call makes a whole batch of deferred writes durable.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn sync_filesystem(root: &Path) -> Result<(), StoreError> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(root).map_err(io_err(format!("opening {}", root.display())))?;
    // SAFETY: `dir` is an open file descriptor for the duration of the call.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if rc != 0 {
        return Err(io_err(format!("syncing filesystem of {}", root.display()))(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Portable fallback: sync the whole system.
#[cfg(not(target_os = "linux"))]
#[allow(unsafe_code)]
fn sync_filesystem(_root: &Path) -> Result<(), StoreError> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    Ok(())
}
