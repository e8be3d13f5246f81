//! A large file downloaded as several byte ranges at once.
//!
//! Each range is its own request, streamed into the temp file at its
//! offset with positioned writes, so one slow stream (or one busy server
//! core decoding and checking chunks) no longer bounds the download. The
//! file's SHA-256 is still computed once, in order: a hashing thread
//! follows the ranges as they land, reading back what was just written
//! (from the page cache), and the file is renamed into place only if size
//! and digest match, as for every download ([`crate::download`]).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use satchel_client::ClientError;
use sha2::{Digest as _, Sha256};

use crate::download::{check, finish_temp, prepare_temp, Expected};

/// Bytes gathered from a range's stream before one positioned write.
const WRITE_BYTES: usize = 1024 * 1024;

/// One range of the file, `start..end`, and the stream of its bytes.
pub struct Part {
    pub start: u64,
    pub end: u64,
    pub bytes: BoxStream<'static, Result<Bytes, ClientError>>,
}

/// How far each range has been written, for the hashing thread.
struct Landed {
    state: Mutex<(Vec<u64>, bool)>,
    moved: Condvar,
}

impl Landed {
    /// Range `i` is written up to `upto` bytes from its start.
    fn advance(&self, i: usize, upto: u64) {
        self.state.lock().expect("landed").0[i] = upto;
        self.moved.notify_all();
    }

    /// The download failed: the hashing thread stops.
    fn fail(&self) {
        self.state.lock().expect("landed").1 = true;
        self.moved.notify_all();
    }

    /// Waits until range `i` holds more than `hashed` bytes; how many.
    fn wait_beyond(&self, i: usize, hashed: u64) -> Option<u64> {
        let mut st = self.state.lock().expect("landed");
        loop {
            if st.1 {
                return None;
            }
            if st.0[i] > hashed {
                return Some(st.0[i]);
            }
            st = self.moved.wait(st).expect("landed");
        }
    }
}

/// Stops the hashing thread when dropped (after it finished, harmless).
struct Release(Arc<Landed>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.fail();
    }
}

/// Hashes the file in order as its ranges land; its size and SHA-256.
fn hash_in_order(
    file: &std::fs::File,
    ranges: &[(u64, u64)],
    landed: &Landed,
) -> anyhow::Result<(u64, [u8; 32])> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; WRITE_BYTES];
    let mut total = 0u64;
    for (i, &(start, end)) in ranges.iter().enumerate() {
        let mut hashed = 0u64;
        while hashed < end - start {
            let Some(upto) = landed.wait_beyond(i, hashed) else {
                bail!("the download stopped");
            };
            while hashed < upto {
                let n = (upto - hashed).min(buf.len() as u64) as usize;
                file.read_exact_at(&mut buf[..n], start + hashed)
                    .context("reading back what was downloaded")?;
                h.update(&buf[..n]);
                hashed += n as u64;
            }
        }
        total += hashed;
    }
    Ok((total, h.finalize().into()))
}

/// Streams range `i` into `file` at its offset.
async fn fetch_part(
    i: usize,
    mut part: Part,
    file: Arc<std::fs::File>,
    landed: Arc<Landed>,
    bar: indicatif::ProgressBar,
    path: String,
) -> anyhow::Result<()> {
    let want = part.end - part.start;
    let mut written = 0u64;
    let mut buf = Vec::with_capacity(WRITE_BYTES);
    loop {
        let next = match part.bytes.next().await {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => return Err(e).with_context(|| format!("downloading {path}")),
            None => None,
        };
        if let Some(chunk) = &next {
            if written + (buf.len() + chunk.len()) as u64 > want {
                bail!(
                    "the server sent more than the {want} bytes asked for at offset {} of {path}",
                    part.start
                );
            }
            buf.extend_from_slice(chunk);
            bar.inc(chunk.len() as u64);
        }
        if buf.len() >= WRITE_BYTES || (next.is_none() && !buf.is_empty()) {
            let (f, at) = (file.clone(), part.start + written);
            let data = std::mem::take(&mut buf);
            let data =
                tokio::task::spawn_blocking(move || f.write_all_at(&data, at).map(|()| data))
                    .await?
                    .with_context(|| format!("writing {path}"))?;
            written += data.len() as u64;
            landed.advance(i, written);
            buf = data;
            buf.clear();
        }
        if next.is_none() {
            break;
        }
    }
    if written != want {
        bail!(
            "the server sent {written} of the {want} bytes asked for at offset {} of {path}",
            part.start
        );
    }
    Ok(())
}

/// Downloads `f` under `root` from `parts` (its ranges, in order, covering
/// it whole), all at once; renamed into place only if it checks out.
pub async fn write_parts(
    root: &Path,
    f: &Expected,
    parts: Vec<Part>,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let (target, tmp) = prepare_temp(root, f).await?;
    let res = async {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        file.set_len(f.size)
            .with_context(|| format!("sizing {}", tmp.display()))?;
        let file = Arc::new(file);
        let ranges: Vec<(u64, u64)> = parts.iter().map(|p| (p.start, p.end)).collect();
        if ranges.first().map(|r| r.0) != Some(0)
            || ranges.last().map(|r| r.1) != Some(f.size)
            || ranges.windows(2).any(|w| w[0].1 != w[1].0)
        {
            bail!("the ranges of {} do not cover it", f.path);
        }
        let landed = Arc::new(Landed {
            state: Mutex::new((vec![0; ranges.len()], false)),
            moved: Condvar::new(),
        });
        let hasher = {
            let (file, landed) = (file.clone(), landed.clone());
            tokio::task::spawn_blocking(move || hash_in_order(&file, &ranges, &landed))
        };
        // However this ends (an error, or the download dropped when another
        // file failed), the hashing thread must not wait on for ever: the
        // runtime would wait for it at exit.
        let _release = Release(landed.clone());
        let fetched =
            futures_util::future::try_join_all(parts.into_iter().enumerate().map(|(i, p)| {
                fetch_part(
                    i,
                    p,
                    file.clone(),
                    landed.clone(),
                    bar.clone(),
                    f.path.clone(),
                )
            }))
            .await;
        if fetched.is_err() {
            landed.fail();
        }
        let hashed = hasher.await?;
        fetched?;
        let (n, digest) = hashed?;
        check(f, n, &digest)?;
        anyhow::Ok(())
    }
    .await;
    finish_temp(res, f, &tmp, &target).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(data: &[u8]) -> Expected {
        Expected {
            path: "d/big.bin".into(),
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(data)),
            mode: 0o640,
        }
    }

    /// `data` cut into `n` ranges, each a stream of 7 KiB pieces.
    fn parts(data: &[u8], n: usize) -> Vec<Part> {
        let step = data.len().div_ceil(n);
        (0..n)
            .map(|i| {
                let (a, b) = (i * step, ((i + 1) * step).min(data.len()));
                let pieces: Vec<Result<Bytes, ClientError>> = data[a..b]
                    .chunks(7 * 1024)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                Part {
                    start: a as u64,
                    end: b as u64,
                    bytes: futures_util::stream::iter(pieces).boxed(),
                }
            })
            .collect()
    }

    fn data() -> Vec<u8> {
        (0..5_000_000u32).map(|i| (i * 7 % 253) as u8).collect()
    }

    fn run(root: &Path, f: &Expected, p: Vec<Part>) -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let bar = indicatif::ProgressBar::hidden();
        rt.block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(30),
                write_parts(root, f, p, &bar),
            )
            .await
            .expect("the download hung")
        })
    }

    fn leftovers(root: &Path) -> Vec<String> {
        std::fs::read_dir(root.join("d"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn ranges_land_in_place_and_the_file_checks_out() {
        let d = tempfile::tempdir().unwrap();
        let data = data();
        run(d.path(), &expected(&data), parts(&data, 4)).unwrap();
        assert_eq!(std::fs::read(d.path().join("d/big.bin")).unwrap(), data);
        assert_eq!(leftovers(d.path()), vec!["big.bin".to_string()]);
    }

    #[test]
    fn ranges_are_fetched_at_once() {
        // The first range's stream ends only after the last range's stream
        // has been read: fetched one after another, this would hang.
        let d = tempfile::tempdir().unwrap();
        let data = data();
        let mut p = parts(&data, 3);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let last = std::mem::replace(&mut p[2].bytes, futures_util::stream::empty().boxed());
        p[2].bytes = last
            .chain(futures_util::stream::once(async move {
                let _ = tx.send(());
                Ok(Bytes::new())
            }))
            .boxed();
        let first = std::mem::replace(&mut p[0].bytes, futures_util::stream::empty().boxed());
        p[0].bytes = first
            .chain(
                futures_util::stream::once(async move {
                    rx.await.unwrap();
                    Ok(Bytes::new())
                })
                .boxed(),
            )
            .boxed();
        run(d.path(), &expected(&data), p).unwrap();
        assert_eq!(std::fs::read(d.path().join("d/big.bin")).unwrap(), data);
    }

    #[test]
    fn a_wrong_byte_in_any_range_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let data = data();
        let mut bad = data.clone();
        bad[3_900_000] ^= 1;
        let err = run(d.path(), &expected(&data), parts(&bad, 4))
            .unwrap_err()
            .to_string();
        assert!(err.contains("integrity check failed"), "{err}");
        assert!(leftovers(d.path()).is_empty(), "{:?}", leftovers(d.path()));
    }

    #[test]
    fn a_short_or_long_or_failed_range_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let data = data();
        let f = expected(&data);
        // Short: the third range's last piece never comes.
        let mut p = parts(&data, 4);
        let short = std::mem::replace(&mut p[2].bytes, futures_util::stream::empty().boxed());
        p[2].bytes = short.take(174).boxed();
        let err = format!("{:#}", run(d.path(), &f, p).unwrap_err());
        assert!(
            err.contains("the server sent 1247232 of the 1250000 bytes"),
            "{err}"
        );
        // Long: the second range sends 10 bytes more than asked.
        let mut p = parts(&data, 4);
        let long = std::mem::replace(&mut p[1].bytes, futures_util::stream::empty().boxed());
        p[1].bytes = long
            .chain(futures_util::stream::once(async {
                Ok(Bytes::from_static(b"0123456789"))
            }))
            .boxed();
        let err = format!("{:#}", run(d.path(), &f, p).unwrap_err());
        assert!(err.contains("more than the 1250000 bytes"), "{err}");
        // Failed mid-way: the error is the server's, and nothing hangs.
        let mut p = parts(&data, 4);
        let broken = std::mem::replace(&mut p[1].bytes, futures_util::stream::empty().boxed());
        p[1].bytes = broken
            .take(20)
            .chain(futures_util::stream::once(async {
                Err(ClientError::Protocol("connection reset".into()))
            }))
            .boxed();
        let err = format!("{:#}", run(d.path(), &f, p).unwrap_err());
        assert!(err.contains("connection reset"), "{err}");
        assert!(leftovers(d.path()).is_empty(), "{:?}", leftovers(d.path()));
    }
}
