//! Where encoded objects live: a flat key → bytes namespace.
//!
//! Objects are small (a chunk is at most a few MiB encoded), so a backend
//! moves whole objects as [`Bytes`] and never needs multipart uploads or
//! streaming bodies; that is what lets every `object_store` backend,
//! including plain HTTP/WebDAV servers, hold content of any size.
//!
//! [`DirBackend`] is the embedded default: files under a directory, written
//! atomically (temp + rename) and made durable with `fsync`/`syncfs`: a
//! synced write syncs the file, its directory, and the directories above
//! it whose names are not yet known to be durable (a new fan-out
//! directory would otherwise vanish in a crash with what it holds).
//! [`crate::remote::RemoteBackend`] covers S3, Azure Blob, GCS and HTTP.

use std::collections::HashSet;
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use crate::StoreError;

/// One stored object as listed.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its key.
    pub key: String,
    /// Bytes stored.
    pub size: u64,
    /// When it was last written (or touched).
    pub modified: SystemTime,
}

/// A flat object namespace. Keys are `/`-separated ASCII paths.
#[async_trait]
pub trait ObjectBackend: Send + Sync + 'static {
    /// Writes an object atomically: readers see the old object, or none, or
    /// the whole new one. With `sync`, it is durable on return; otherwise
    /// after the next [`ObjectBackend::flush`].
    async fn put(&self, key: &str, data: Bytes, sync: bool) -> Result<(), StoreError>;

    /// Reads a whole object; `None` if there is none.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError>;

    /// Reads bytes `range` of an object; `None` if there is none. A range
    /// that ends past the object is an error.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Option<Bytes>, StoreError> {
        let Some(all) = self.get(key).await? else {
            return Ok(None);
        };
        if range.start > range.end || range.end > all.len() as u64 {
            return Err(StoreError::Backend(format!(
                "range {range:?} is outside {key} ({} bytes)",
                all.len()
            )));
        }
        Ok(Some(all.slice(range.start as usize..range.end as usize)))
    }

    /// When the object was last written, if it exists.
    async fn head(&self, key: &str) -> Result<Option<SystemTime>, StoreError>;

    /// Marks an existing object as recently used (so GC's grace period
    /// starts again). Returns false if the backend cannot do that cheaply;
    /// the caller then writes the object again.
    async fn touch(&self, _key: &str) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Deletes an object; deleting a missing one is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Every object under the directory `dir` (a key prefix ending at a
    /// `/`, given without it), at any depth.
    async fn list(&self, dir: &str) -> Result<Vec<Listed>, StoreError>;

    /// Makes every completed unsynced `put` durable.
    async fn flush(&self) -> Result<(), StoreError>;

    /// A short description for logs and errors (no secrets).
    fn describe(&self) -> String;
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// Objects as files under a local directory.
#[derive(Debug, Clone)]
pub struct DirBackend {
    root: PathBuf,
    /// Directories whose own name is known to be durable in their parent
    /// (so a synced write into one needs no more than a sync of it).
    durable_dirs: Arc<Mutex<HashSet<PathBuf>>>,
    /// Bytes a write must leave free on the directory's file system.
    reserve: u64,
    /// Bytes of writes under way: the space they are about to take.
    in_flight: Arc<std::sync::atomic::AtomicU64>,
}

impl DirBackend {
    /// Keeps `bytes` free on the directory's file system: a write that
    /// would leave less fails as full (`ErrorKind::StorageFull`) before
    /// anything is written, so what shares the disk (the metadata
    /// database) can still write.
    pub fn with_reserve(mut self, bytes: u64) -> DirBackend {
        self.reserve = bytes;
        self
    }
}

/// Fails as full when writing `len` bytes under `root` would leave less
/// than `reserve` bytes free, counting `in_flight` bytes of other writes
/// as taken.
fn check_room(root: &Path, reserve: u64, in_flight: u64, len: usize) -> Result<(), StoreError> {
    if reserve == 0 {
        return Ok(());
    }
    let free = free_bytes(root)
        .map_err(io_err("measuring free space"))?
        .saturating_sub(in_flight);
    if free < reserve.saturating_add(len as u64) {
        return Err(StoreError::Io {
            context: "writing content".into(),
            source: io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "{free} bytes free, and {} MiB are kept free for the metadata",
                    reserve >> 20
                ),
            ),
        });
    }
    Ok(())
}

impl DirBackend {
    /// Opens (creating if needed) the directory and removes temp files left
    /// by a crash.
    pub fn open(root: impl Into<PathBuf>) -> Result<DirBackend, StoreError> {
        let root = root.into();
        // Directories this call creates (the root itself, perhaps some of
        // its parents) must be durable before anything is stored in them:
        // a crash must not lose `objects/` with what it holds.
        let mut created = Vec::new();
        let mut p = root.join("objects");
        while !p.exists() {
            created.push(p.clone());
            match p.parent() {
                Some(up) if !up.as_os_str().is_empty() => p = up.to_path_buf(),
                _ => break,
            }
        }
        for d in ["objects", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io_err(format!("creating {}", p.display())))?;
        }
        // The names of what this call created must be durable; the root's
        // own name is synced too when it already existed (an earlier start
        // may have died before syncing it), but not insisted on then (its
        // parent may not be ours to read).
        let parent_of = |d: &Path| -> PathBuf {
            match d.parent() {
                Some(up) if !up.as_os_str().is_empty() => up.to_path_buf(),
                _ => PathBuf::from("."),
            }
        };
        let mut parents: Vec<PathBuf> = created.iter().map(|d| parent_of(d)).collect();
        if !parents.contains(&root) {
            parents.push(root.clone());
        }
        for p in &parents {
            sync_dir(p)?;
        }
        if !created.contains(&root) {
            if let Err(e) = sync_dir(&parent_of(&root)) {
                tracing::warn!("could not sync the directory above the store: {e}");
            }
        }
        let durable_dirs = Arc::new(Mutex::new(HashSet::from([
            root.clone(),
            root.join("objects"),
        ])));
        if let Ok(entries) = std::fs::read_dir(root.join("tmp")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(DirBackend {
            root,
            durable_dirs,
            reserve: 0,
            in_flight: Arc::default(),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join("objects").join(key)
    }
}

/// Bytes an unprivileged writer may still use on `dir`'s file system.
#[allow(unsafe_code, clippy::useless_conversion)]
fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` is written by the call
    // before it is read (only on success).
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Ok(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("syncing {}", dir.display())))
}

/// Makes the name of `dir`, and of each directory above it up to `root`,
/// durable in its parent, unless already known to be: a directory created
/// for a synced write (a new fan-out directory) is lost in a crash, with
/// what it holds, until its parent is synced. Another writer may have
/// created it and not synced its parent yet, so existing is not enough.
/// A directory is recorded as known only once every name above it is
/// durable too, so a writer that stops at a known one stops safely.
fn sync_names_up_to(
    dir: &Path,
    root: &Path,
    known: &Mutex<HashSet<PathBuf>>,
) -> Result<(), StoreError> {
    let mut chain = Vec::new();
    let mut d = dir;
    while d != root && !known.lock().unwrap_or_else(|p| p.into_inner()).contains(d) {
        let Some(up) = d.parent() else {
            break;
        };
        chain.push(d);
        d = up;
    }
    for d in &chain {
        sync_dir(d.parent().expect("a directory below the root has a parent"))?;
    }
    known
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(chain.iter().map(|d| d.to_path_buf()));
    Ok(())
}

fn write_file(
    tmp: &Path,
    dest: &Path,
    data: &[u8],
    durable: Option<(&Path, &Mutex<HashSet<PathBuf>>)>,
) -> Result<(), StoreError> {
    let sync = durable.is_some();
    let mut f =
        std::fs::File::create(tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    let res = f
        .write_all(data)
        .and_then(|()| if sync { f.sync_data() } else { Ok(()) });
    drop(f);
    if let Err(e) = res {
        let _ = std::fs::remove_file(tmp);
        return Err(io_err(format!("writing {}", tmp.display()))(e));
    }
    let parent = dest.parent().expect("object path has a parent");
    let renamed = std::fs::rename(tmp, dest).or_else(|e| {
        if e.kind() != io::ErrorKind::NotFound {
            return Err(e);
        }
        std::fs::create_dir_all(parent)?;
        std::fs::rename(tmp, dest)
    });
    if let Err(e) = renamed {
        let _ = std::fs::remove_file(tmp);
        return Err(io_err(format!("renaming into {}", dest.display()))(e));
    }
    if let Some((root, known)) = durable {
        sync_dir(parent)?;
        sync_names_up_to(parent, root, known)?;
    }
    Ok(())
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<Listed>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let key = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let meta = e.metadata()?;
        if meta.is_dir() {
            walk(&e.path(), &key, out)?;
        } else {
            out.push(Listed {
                key,
                size: meta.len(),
                modified: meta.modified()?,
            });
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectBackend for DirBackend {
    async fn put(&self, key: &str, data: Bytes, sync: bool) -> Result<(), StoreError> {
        let dest = self.path(key);
        let tmp = self
            .root
            .join("tmp")
            .join(satchel_model::id::random_hex(16));
        let (root, known, reserve) = (self.root.clone(), self.durable_dirs.clone(), self.reserve);
        let in_flight = self.in_flight.clone();
        tokio::task::spawn_blocking(move || {
            use std::sync::atomic::Ordering::SeqCst;
            let len = data.len() as u64;
            let others = in_flight.fetch_add(len, SeqCst);
            let written = check_room(&root, reserve, others, data.len())
                .and_then(|()| write_file(&tmp, &dest, &data, sync.then_some((&*root, &*known))));
            in_flight.fetch_sub(len, SeqCst);
            written
        })
        .await
        .expect("object writer panicked")
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let path = self.path(key);
        tokio::task::spawn_blocking(move || match std::fs::read(&path) {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
        })
        .await
        .expect("object reader panicked")
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Option<Bytes>, StoreError> {
        use std::os::unix::fs::FileExt;
        let path = self.path(key);
        tokio::task::spawn_blocking(move || {
            let f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
            };
            if range.start > range.end {
                return Err(StoreError::Backend(format!("empty range {range:?}")));
            }
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            f.read_exact_at(&mut buf, range.start)
                .map_err(io_err(format!("reading {range:?} of {}", path.display())))?;
            Ok(Some(Bytes::from(buf)))
        })
        .await
        .expect("object reader panicked")
    }

    async fn head(&self, key: &str) -> Result<Option<SystemTime>, StoreError> {
        match tokio::fs::metadata(self.path(key)).await {
            Ok(m) => Ok(Some(m.modified().map_err(io_err("reading mtime"))?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(format!("checking {key}"))(e)),
        }
    }

    async fn touch(&self, key: &str) -> Result<bool, StoreError> {
        let path = self.path(key);
        tokio::task::spawn_blocking(move || {
            let f = match std::fs::File::options().append(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(io_err(format!("touching {}", path.display()))(e)),
            };
            f.set_modified(SystemTime::now())
                .map_err(io_err(format!("touching {}", path.display())))?;
            Ok(true)
        })
        .await
        .expect("touch panicked")
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("deleting {key}"))(e)),
        }
    }

    async fn list(&self, dir: &str) -> Result<Vec<Listed>, StoreError> {
        let start = self.root.join("objects").join(dir);
        let dir = dir.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&start, &dir, &mut out).map_err(io_err(format!("listing {dir}")))?;
            Ok(out)
        })
        .await
        .expect("lister panicked")
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || sync_filesystem(&root))
            .await
            .expect("flush panicked")
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
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
