//! A large file downloaded as pieces, several at once.
//!
//! Each piece ([`PIECE`] bytes) is one range request, fetched on its own
//! task so that up to `window` pieces travel at once whatever the rest
//! is doing. Pieces are taken in file order: each is written at its offset
//! and hashed from memory, so the file's SHA-256 is computed once, with
//! no read-back, and at most `window` pieces are held at a time. The file
//! is renamed into place only if size and digest match, as for every
//! download ([`crate::download`]). A server (or proxy) that ignores ranges
//! is reported as [`RangesIgnored`], for the caller to fall back to one
//! stream.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use satchel_client::ClientError;
use sha2::{Digest as _, Sha256};

use crate::download::{check, prepare_temp, Expected};
use crate::transfer::pieces;
#[cfg(doc)]
use crate::transfer::PIECE;

/// The server answered a range request with the whole file.
#[derive(Debug)]
pub struct RangesIgnored;

impl std::fmt::Display for RangesIgnored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the server ignored a Range request (a proxy in between?)")
    }
}

impl std::error::Error for RangesIgnored {}

/// Fetches bytes `start..end` of the file: all of them, or `None` when
/// the server answered with the whole file instead.
pub type FetchPiece =
    Arc<dyn Fn(u64, u64) -> BoxFuture<'static, Result<Option<Bytes>, ClientError>> + Send + Sync>;

/// A spawned piece fetch, aborted if the download is dropped.
struct Fetching(tokio::task::JoinHandle<anyhow::Result<Bytes>>);

impl Drop for Fetching {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Downloads `f` under `root` in pieces, up to `window` at once (each
/// also holding a permit of `requests`, shared by the whole download);
/// renamed into place only if it checks out. On failure the progress it
/// made is taken back from `bar`.
pub async fn write_pieces(
    root: &Path,
    f: &Expected,
    fetch: FetchPiece,
    window: usize,
    requests: Arc<tokio::sync::Semaphore>,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let mut n = 0u64;
    let res = async {
        let temp = prepare_temp(root, f).await?;
        let path = temp.path().to_path_buf();
        let file = tokio::task::spawn_blocking(move || -> anyhow::Result<std::fs::File> {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            Ok(file)
        })
        .await??;
        let file = Arc::new(file);
        let name = f.path.clone();
        // A piece takes its permit in file order, before it is fetched, and
        // keeps it until it is written: across every file of the download
        // at most `requests` pieces are fetched or held, and the lowest
        // unwritten piece of each file always has one.
        let mut arriving = Box::pin(
            futures_util::stream::iter(pieces(f.size))
                .then(|(start, end)| {
                    let requests = requests.clone();
                    async move { (start, end, requests.acquire_owned().await) }
                })
                .map(|(start, end, permit)| {
                    let (fetch, name) = (fetch.clone(), name.clone());
                    let task = Fetching(tokio::spawn(async move {
                        match fetch(start, end).await {
                            Ok(Some(b)) => Ok(b),
                            Ok(None) => Err(anyhow::Error::new(RangesIgnored)),
                            Err(e) => Err(e).with_context(|| format!("downloading {name}")),
                        }
                    }));
                    async move {
                        let permit = permit?;
                        let mut task = task;
                        let got = (&mut task.0).await;
                        let data = got.context("a piece's download stopped")??;
                        anyhow::Ok((start, data, permit))
                    }
                })
                .buffered(window.max(1)),
        );
        let mut hash = Sha256::new();
        while let Some(piece) = arriving.next().await {
            let (start, data, permit) = piece?;
            let len = data.len() as u64;
            let file = file.clone();
            hash = tokio::task::spawn_blocking(move || -> anyhow::Result<Sha256> {
                file.write_all_at(&data, start)?;
                hash.update(&data);
                Ok(hash)
            })
            .await?
            .with_context(|| format!("writing {}", temp.path().display()))?;
            drop(permit);
            n += len;
            bar.inc(len);
        }
        drop(arriving);
        check(f, n, &hash.finalize())?;
        temp.finish(f).await
    }
    .await;
    if res.is_err() {
        bar.dec(n);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::PIECE;

    fn expected(data: &[u8]) -> Expected {
        Expected {
            path: "d/big.bin".into(),
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(data)),
            mode: 0o640,
        }
    }

    fn data() -> Arc<Vec<u8>> {
        Arc::new(
            (0..(5 * PIECE + 12_345) as u32)
                .map(|i| (i * 7 % 253) as u8)
                .collect(),
        )
    }

    /// Serves pieces of `data`.
    fn serving(data: Arc<Vec<u8>>) -> FetchPiece {
        Arc::new(move |a, b| {
            let data = data.clone();
            Box::pin(async move { Ok(Some(Bytes::copy_from_slice(&data[a as usize..b as usize]))) })
        })
    }

    fn run(root: &Path, f: &Expected, fetch: FetchPiece, window: usize) -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let bar = indicatif::ProgressBar::hidden();
        rt.block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(30),
                write_pieces(
                    root,
                    f,
                    fetch,
                    window,
                    Arc::new(tokio::sync::Semaphore::new(window)),
                    &bar,
                ),
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
    fn pieces_land_in_place_and_the_file_checks_out() {
        let d = tempfile::tempdir().unwrap();
        let data = data();
        run(d.path(), &expected(&data), serving(data.clone()), 4).unwrap();
        assert_eq!(std::fs::read(d.path().join("d/big.bin")).unwrap(), *data);
        assert_eq!(leftovers(d.path()), vec!["big.bin".to_string()]);
    }

    #[test]
    fn pieces_are_fetched_at_once() {
        // The first piece arrives only once the third was asked for: fetched
        // one after another, this would hang.
        let d = tempfile::tempdir().unwrap();
        let data = data();
        let third = Arc::new(tokio::sync::Notify::new());
        let inner = serving(data.clone());
        let fetch: FetchPiece = Arc::new(move |a, b| {
            let (inner, third) = (inner.clone(), third.clone());
            Box::pin(async move {
                if a == 2 * PIECE {
                    third.notify_one();
                } else if a == 0 {
                    third.notified().await;
                }
                inner(a, b).await
            })
        });
        run(d.path(), &expected(&data), fetch, 3).unwrap();
        assert_eq!(std::fs::read(d.path().join("d/big.bin")).unwrap(), *data);
    }

    #[test]
    fn files_sharing_one_request_budget_all_finish() {
        // Two files with a window of 3 and one permit between them: pieces
        // fetched out of order and held for their turn would starve.
        let d = tempfile::tempdir().unwrap();
        let data = data();
        let f = expected(&data);
        let mut g = expected(&data);
        g.path = "d/other.bin".into();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let bar = indicatif::ProgressBar::hidden();
        let budget = Arc::new(tokio::sync::Semaphore::new(1));
        rt.block_on(async {
            let both = futures_util::future::try_join(
                write_pieces(d.path(), &f, serving(data.clone()), 3, budget.clone(), &bar),
                write_pieces(d.path(), &g, serving(data.clone()), 3, budget.clone(), &bar),
            );
            tokio::time::timeout(std::time::Duration::from_secs(30), both)
                .await
                .expect("the downloads starved")
                .unwrap();
        });
        assert_eq!(std::fs::read(d.path().join("d/other.bin")).unwrap(), *data);
        assert_eq!(bar.position(), 2 * data.len() as u64);
    }

    #[test]
    fn no_more_pieces_are_held_than_the_request_budget() {
        // Window 4, budget 2, the first piece slow: pieces fetched past it
        // and held for their turn without a permit would be 4 at once.
        struct Counted(Vec<u8>, Arc<std::sync::atomic::AtomicUsize>);
        impl AsRef<[u8]> for Counted {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }
        impl Drop for Counted {
            fn drop(&mut self) {
                self.1.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let d = tempfile::tempdir().unwrap();
        let data = data();
        let alive = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (a2, m2, data2) = (alive.clone(), most.clone(), data.clone());
        let fetch: FetchPiece = Arc::new(move |a, b| {
            let (alive, most, data) = (a2.clone(), m2.clone(), data2.clone());
            Box::pin(async move {
                if a == 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                }
                let n = alive.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                most.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                let piece = data[a as usize..b as usize].to_vec();
                Ok(Some(Bytes::from_owner(Counted(piece, alive))))
            })
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let bar = indicatif::ProgressBar::hidden();
        let budget = Arc::new(tokio::sync::Semaphore::new(2));
        rt.block_on(write_pieces(
            d.path(),
            &expected(&data),
            fetch,
            4,
            budget,
            &bar,
        ))
        .unwrap();
        assert_eq!(std::fs::read(d.path().join("d/big.bin")).unwrap(), *data);
        assert_eq!(alive.load(std::sync::atomic::Ordering::SeqCst), 0);
        let most = most.load(std::sync::atomic::Ordering::SeqCst);
        assert!(most <= 2, "{most} pieces held at once, with a budget of 2");
    }

    #[test]
    fn a_wrong_byte_in_any_piece_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let data = data();
        let mut bad = (*data).clone();
        bad[(3 * PIECE + 17) as usize] ^= 1;
        let err = run(d.path(), &expected(&data), serving(Arc::new(bad)), 4)
            .unwrap_err()
            .to_string();
        assert!(err.contains("integrity check failed"), "{err}");
        assert!(leftovers(d.path()).is_empty(), "{:?}", leftovers(d.path()));
    }

    #[test]
    fn a_failed_or_ignored_range_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let data = data();
        let f = expected(&data);
        let failing = |ignored: bool| -> FetchPiece {
            let inner = serving(data.clone());
            Arc::new(move |a, b| {
                let inner = inner.clone();
                Box::pin(async move {
                    if a != 2 * PIECE {
                        inner(a, b).await
                    } else if ignored {
                        Ok(None)
                    } else {
                        Err(ClientError::Protocol("connection reset".into()))
                    }
                })
            })
        };
        let err = format!("{:#}", run(d.path(), &f, failing(false), 4).unwrap_err());
        assert!(err.contains("connection reset"), "{err}");
        assert!(leftovers(d.path()).is_empty(), "{:?}", leftovers(d.path()));
        let err = run(d.path(), &f, failing(true), 4).unwrap_err();
        assert!(err.downcast_ref::<RangesIgnored>().is_some(), "{err:#}");
        assert!(leftovers(d.path()).is_empty(), "{:?}", leftovers(d.path()));
    }
}
