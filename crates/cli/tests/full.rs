//! End-to-end: a data directory that fills up (a 96 MiB tmpfs, so the
//! disk really is full). An upload larger than the disk fails with 507
//! naming the limit, never a path; the database can still record aborts,
//! deletes and GC thanks to the reserve; nothing stored before is harmed;
//! the server frees what the failed upload wrote by itself, and an
//! operator's `gc --grace 0s` frees deleted content at once.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{noise, sha, write, Server};

/// A tmpfs of `mib` MiB mounted on a fresh directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u32) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "this test needs root to mount a small tmpfs (the suite runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn big_file(dir: &Path, name: &str, mib: usize, seed: u64) -> PathBuf {
    let data = satchel_store::conformance::random_bytes(mib << 20, seed);
    write(dir, name, &data);
    dir.join(name)
}

/// Regression (issue 12, part 5): a failed upload's chunks stayed on the
/// full disk for 30 minutes, even under `gc --grace 0s`, and every upload
/// meanwhile answered 507. Now the server frees them by itself as soon as
/// no write is in flight, and uploads work again without an operator.
#[test]
fn a_full_disk_answers_507_and_frees_a_failed_uploads_chunks_by_itself() {
    let disk = Tmpfs::mount(96);
    let data = disk.path().join("data");
    let mut s = Server::start_with(&data, &[("SATCHEL_RESERVE_MIB", "16")]);
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let early = noise(300_000, 3);
    write(w, "early.bin", &early);
    let agent = s.agent(w, "full", 1, "j");
    agent.ok(&["artifact", "upload", "--name", "early", "early.bin"]);

    // 150 MiB into a 96 MiB disk (80 MiB of it usable for content).
    big_file(w, "big.bin", 150, 7);
    let err = agent.fails(&["artifact", "upload", "--name", "big", "big.bin"]);
    assert!(
        err.contains("content store has no space left"),
        "the failure names the limit: {err}"
    );
    let answered_507 = |s: &Server| {
        s.metrics_text()
            .lines()
            .filter(|l| l.contains("status=\"507\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum::<u64>()
    };
    assert!(answered_507(&s) >= 1, "{}", s.metrics_text());
    let mount = disk.path().display().to_string();
    assert!(
        !err.contains(&mount),
        "the answer shows a server path: {err}"
    );
    // The failed upload's chunks (about 80 MiB) are freed by the server
    // itself, soon and with no GC run.
    let swept = || s.metric("satchel_gc_swept_bytes_total");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while swept() < 60 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the failed upload's chunks are still there: {} bytes freed",
            swept()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    write(w, "after.bin", &noise(40 << 20, 8));
    agent.ok(&["artifact", "upload", "--name", "after", "after.bin"]);

    // Fill what is left with uploads, smaller and smaller, until one fails
    // (507 each time).
    let mut filled = 0;
    let full_before = answered_507(&s);
    'fill: for size in [1 << 20, 64 << 10, 4 << 10] {
        for i in 0..200 {
            let name = format!("fill-{size}-{i}");
            write(w, &name, &noise(size, filled + 100));
            let out = agent.run(&["artifact", "upload", "--name", &name, &name]);
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr).to_string();
                assert!(err.contains("no space left"), "{err}");
                continue 'fill;
            }
            filled += 1;
        }
        panic!("{size}-byte uploads never filled the disk");
    }
    assert!(answered_507(&s) >= full_before + 3);
    // Metadata writes still work on the full disk: artifacts are deleted,
    // GC runs and frees them, an upload of content the store holds
    // already is recorded.
    s.delete_artifact(&s.artifact_id("full", 1, "after"));
    let gc = agent.ok(&["admin", "gc", "--grace", "0s", "--json"]);
    let gc: serde_json::Value = serde_json::from_str(&gc).unwrap();
    assert!(gc["bytes_freed"].as_u64().unwrap() >= 30 << 20, "{gc}");
    assert_eq!(gc["young_chunks_kept"], false, "{gc}");
    s.agent(w, "full", 2, "j")
        .ok(&["artifact", "upload", "--name", "again", "early.bin"]);
    write(w, "more.bin", &noise(20 << 20, 9));
    agent.ok(&["artifact", "upload", "--name", "more", "more.bin"]);
    assert!(agent.ok(&["admin", "fsck"]).contains("no problems"));
    let dl = w.join("dl");
    agent.ok(&["artifact", "download", "early.bin", dl.to_str().unwrap()]);
    assert_eq!(
        sha(&std::fs::read(dl.join("early.bin")).unwrap()),
        sha(&early)
    );
    agent.ok(&["artifact", "download", "more.bin", dl.to_str().unwrap()]);
    assert_eq!(
        sha(&std::fs::read(dl.join("more.bin")).unwrap()),
        sha(&noise(20 << 20, 9))
    );
    s.stop();
}
