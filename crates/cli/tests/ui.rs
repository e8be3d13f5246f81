//! End-to-end: what people see in a browser — archives as zip, the web UI's
//! pages, its login, permalinks, and the sandboxed view of uploaded files —
//! against the real `satchel` binary.

mod common;

use std::io::Write as _;
use std::process::Command;

use common::*;
use futures_util::StreamExt as _;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Streams an authenticated GET of `url` into `dest`; returns the status
/// and the `Content-Length` the server promised.
async fn download(s: &Server, url: &str, dest: &std::path::Path) -> (u16, Option<u64>) {
    let r = s
        .http()
        .get(url)
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let len = r.content_length();
    let mut f = std::io::BufWriter::new(std::fs::File::create(dest).unwrap());
    let mut body = r.bytes_stream();
    while let Some(piece) = body.next().await {
        f.write_all(&piece.unwrap()).unwrap();
    }
    f.flush().unwrap();
    (status, len)
}

/// Downloads artifact `id` as a zip into `dest`; returns the promised
/// length.
async fn download_zip(s: &Server, id: &str, dest: &std::path::Path) -> u64 {
    let url = s.api(&format!("/artifacts/{id}/archive?format=zip"));
    let (status, len) = download(s, &url, dest).await;
    assert_eq!(status, 200);
    len.expect("a zip download has a Content-Length")
}

/// Python's `zipfile`: every member's name, size and mode, after checking
/// every CRC (`testzip`).
fn python_zip_listing(zip: &std::path::Path) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, zipfile\n\
             z = zipfile.ZipFile(sys.argv[1])\n\
             bad = z.testzip()\n\
             assert bad is None, bad\n\
             for i in z.infolist():\n\
             \x20   print(i.filename, i.file_size, oct(i.external_attr >> 16))\n",
        )
        .arg(zip)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python zipfile: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn unzip_test(zip: &std::path::Path) {
    let out = Command::new("unzip").arg("-tq").arg(zip).output().unwrap();
    assert!(
        out.status.success(),
        "unzip -t: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_artifact_downloads_as_a_zip_that_unzip_and_python_open() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    let src = d.path().join("src");
    write(&src, "dist/app.bin", &noise(300_000, 1));
    write(&src, "dist/docs/readme.md", b"# app\n");
    write(&src, "dist/docs/caf\u{e9}.txt", b"accents survive");
    write(&src, "dist/empty", b"");
    let tool = src.join("dist/tool.sh");
    write(&src, "dist/tool.sh", b"#!/bin/sh\necho hi\n");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o4755)).unwrap();
    s.agent(&src, "zips", 1, "build")
        .ok(&["artifact", "publish", "dist", "--name", "app"]);
    let id = s.artifact_id("zips", 1, "app");

    rt().block_on(async {
        let zip = d.path().join("app.zip");
        let len = download_zip(&s, &id, &zip).await;
        assert_eq!(len, std::fs::metadata(&zip).unwrap().len());
        unzip_test(&zip);
        let listing = python_zip_listing(&zip);
        assert!(listing.contains("app.bin 300000 0o100644"), "{listing}");
        assert!(listing.contains("docs/caf\u{e9}.txt 15 "), "{listing}");
        assert!(listing.contains("empty 0 "), "{listing}");
        // Permission bits only: no setuid bit survives into the archive.
        assert!(listing.contains("tool.sh 18 0o100755"), "{listing}");
        let x = d.path().join("x");
        let st = Command::new("unzip")
            .arg("-q")
            .arg(&zip)
            .arg("-d")
            .arg(&x)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(std::fs::read(x.join("app.bin")).unwrap(), noise(300_000, 1));
        assert_eq!(std::fs::read(x.join("docs/readme.md")).unwrap(), b"# app\n");

        // One directory of it.
        let docs = d.path().join("docs.zip");
        let (status, _) = download(
            &s,
            &s.api(&format!("/artifacts/{id}/archive?format=zip&path=docs/")),
            &docs,
        )
        .await;
        assert_eq!(status, 200);
        let listing = python_zip_listing(&docs);
        assert_eq!(listing.lines().count(), 2, "{listing}");
        assert!(listing.contains("docs/readme.md"), "{listing}");

        // The tar stays the default, and takes the directory too.
        let r = s.get(&format!("/artifacts/{id}/archive?path=docs")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/x-tar");
        assert!(r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("app-docs.tar"));

        let r = s.get(&format!("/artifacts/{id}/archive?format=rar")).await;
        assert_eq!(r.status(), 400);
        let r = s.get(&format!("/artifacts/{id}/archive?path=nope")).await;
        assert_eq!(r.status(), 404);
        let r = s.get(&format!("/artifacts/{id}/archive?path=../etc")).await;
        assert_eq!(r.status(), 400);
    });
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_zip_of_a_5_gib_sparse_file_is_zip64_and_streams_in_flat_memory() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    let src = d.path().join("src");
    write(&src, "big/small.txt", b"next to a big one");
    // After the big one, so it starts past 4 GiB.
    write(&src, "big/z.txt", b"far out");
    let big = std::fs::File::create(src.join("big/sparse.img")).unwrap();
    big.set_len(5 << 30).unwrap();
    drop(big);
    s.agent(&src, "big", 1, "build")
        .ok(&["artifact", "publish", "big", "--name", "disk"]);
    let id = s.artifact_id("big", 1, "disk");
    let before = peak_rss_kib(s.child.id());
    rt().block_on(async {
        let zip = d.path().join("disk.zip");
        let len = download_zip(&s, &id, &zip).await;
        let on_disk = std::fs::metadata(&zip).unwrap().len();
        assert_eq!(len, on_disk);
        assert!(on_disk > 5 << 30);
        let after = peak_rss_kib(s.child.id());
        // 5 GiB went through; the server's peak grew by far less than one.
        assert!(
            after.saturating_sub(before) < 128 * 1024,
            "peak RSS grew from {before} KiB to {after} KiB while streaming"
        );
        unzip_test(&zip);
        let listing = python_zip_listing(&zip);
        assert!(
            listing.contains(&format!("sparse.img {} ", 5u64 << 30)),
            "{listing}"
        );
        assert!(listing.contains("small.txt 17 "), "{listing}");
        assert!(listing.contains("z.txt 7 "), "{listing}");
        std::fs::remove_file(&zip).unwrap();
    });
}
