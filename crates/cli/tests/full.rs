//! End-to-end: a data directory that fills up (a 96 MiB tmpfs, so the
//! disk really is full). An upload larger than the disk fails with 507
//! naming the limit, never a path; the database can still record aborts,
//! deletes and GC thanks to the reserve; nothing stored before is harmed;
//! and uploads work again once GC has freed the space.

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

#[test]
fn a_full_disk_answers_507_and_uploads_work_again_once_gc_frees_space() {
    let disk = Tmpfs::mount(96);
    let data = disk.path().join("data");
    let mut s = Server::start_with(
        &data,
        &[
            ("SATCHEL_RESERVE_MIB", "16"),
            // GC may take unused chunks after 10 s instead of 30 minutes.
            ("SATCHEL_CHUNK_REFRESH_SECS", "5"),
        ],
    );
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    let early = noise(300_000, 3);
    write(w, "early.bin", &early);
    let agent = s.agent(w, "full", 1, "j");
    agent.ok(&["artifact", "upload", "--name", "early", "early.bin"]);

    // 150 MiB into a 96 MiB disk (80 MiB of it usable for content).
    big_file(w, "big.bin", 150, 7);
    let err = agent.fails(&["artifact", "upload", "--name", "big", "big.bin"]);
    // Its packs may go once 10 s old (whether the first GC below finds
    // them so or not does not matter).
    let failed_at = std::time::Instant::now();
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
    // Metadata writes still work on the full disk: an artifact is deleted,
    // GC runs (unreferenced chunks are young, so kept), an upload of
    // content the store holds already is recorded.
    let id = s.artifact_id("full", 1, "fill-1048576-0");
    s.delete_artifact(&id);
    agent.ok(&["admin", "gc", "--grace", "0s"]);
    // (content the store holds already: only metadata is written)
    s.agent(w, "full", 2, "j")
        .ok(&["artifact", "upload", "--name", "again", "early.bin"]);
    // Once the failed upload's chunks are old enough, GC takes them, and
    // uploads work again.
    std::thread::sleep(Duration::from_secs(11).saturating_sub(failed_at.elapsed()));
    write(w, "more.bin", &noise(20 << 20, 9));
    agent.ok(&["admin", "gc", "--grace", "0s"]);
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
