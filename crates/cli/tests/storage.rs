//! End-to-end: retention, garbage collection (also racing 1,000 rounds of
//! dedup uploads), fsck and its repair path, and downloads that refuse
//! corrupted content.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

/// Where the local store keeps a blob's top object: the chunk itself, or
/// the recipe of a blob of several chunks (unencrypted layout).
fn blob_path(data_dir: &Path, data: &[u8]) -> PathBuf {
    let h = sha(data);
    let chunk = data_dir.join("content/objects/b").join(&h[..2]).join(&h);
    if chunk.exists() {
        return chunk;
    }
    data_dir.join("content/objects/r").join(&h[..2]).join(h)
}

/// A JSON array of strings, sorted.
fn sorted_strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn gc_frees_only_what_nothing_live_references() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = Server::start(&data);
    let w = d.path().join("w");
    write(&w, "a.txt", b"only in a");
    write(&w, "b.txt", b"only in b");
    write(&w, "shared.txt", b"in a and b");
    write(&w, "kept.txt", b"promoted");
    let agent = s.agent(&w, "p", 1, "j");
    agent.ok(&["artifact", "upload", "--name", "a", "a.txt", "shared.txt"]);
    agent.ok(&["artifact", "upload", "--name", "b", "b.txt", "shared.txt"]);
    agent.ok(&["artifact", "publish", "kept.txt", "--name", "rel"]);
    agent.ok(&["promote", "rel", "--to", "r/app@1"]);
    for f in ["a.txt", "b.txt", "shared.txt", "kept.txt"] {
        assert!(blob_path(&data, &std::fs::read(w.join(f)).unwrap()).exists());
    }
    s.delete_artifact(&s.artifact_id("p", 1, "a"));
    s.delete_artifact(&s.artifact_id("p", 1, "rel"));
    // The default grace keeps young content.
    let out = agent.ok(&["admin", "gc", "--json"]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["blobs_deleted"], 0);
    let out = agent.ok(&["admin", "gc", "--grace", "0s", "--json"]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["blobs_deleted"], 1, "{r}");
    assert_eq!(r["bytes_freed"], 9);
    assert!(!blob_path(&data, b"only in a").exists());
    assert!(blob_path(&data, b"in a and b").exists());
    assert!(
        blob_path(&data, b"promoted").exists(),
        "packages keep content"
    );
    let ws = d.path().join("ws");
    agent.ok(&[
        "artifact",
        "download-artifact",
        "b",
        "--dest",
        ws.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(ws.join("b/shared.txt")).unwrap(),
        b"in a and b"
    );
    let pkg = d.path().join("pkg");
    agent.ok(&["package", "download", "r/app@1", pkg.to_str().unwrap()]);
    assert_eq!(std::fs::read(pkg.join("kept.txt")).unwrap(), b"promoted");
    // Re-uploading collected content works: it is missing again, so sent.
    agent.ok(&["artifact", "upload", "--name", "a2", "a.txt"]);
    assert!(blob_path(&data, b"only in a").exists());
    let out = agent.ok(&["admin", "fsck"]);
    assert!(out.contains("no problems"), "{out}");
}

#[test]
fn artifacts_expire_except_the_newest_passed_run() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = Server::start(&data);
    let w = d.path().join("w");
    write(&w, "one.txt", b"run one");
    write(&w, "two.txt", b"run two");
    write(&w, "forever.txt", b"no expiry asked: server default");
    let one = s.agent(&w, "q", 1, "j");
    let two = s.agent(&w, "q", 2, "j");
    one.ok(&[
        "artifact",
        "publish",
        "one.txt",
        "--name",
        "out",
        "--expire-in",
        "1s",
    ]);
    one.ok(&["artifact", "publish", "forever.txt", "--name", "keep"]);
    two.ok(&[
        "artifact",
        "publish",
        "two.txt",
        "--name",
        "out",
        "--expire-in",
        "1s",
    ]);
    one.ok(&["run-state", "passed"]);
    two.ok(&["run-state", "passed"]);
    let err = one.fails(&[
        "artifact",
        "publish",
        "one.txt",
        "--name",
        "x",
        "--expire-in",
        "soon",
    ]);
    assert!(err.contains("invalid duration"), "{err}");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = one.ok(&["admin", "gc", "--grace", "0s", "--json"]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["expired_artifacts"], 1, "{r}");
    // Run 1's artifact expired and its content went; run 2 is the newest
    // passed run of the branch, so it stays.
    let err = one.fails(&["artifact", "download-artifact", "out", "--dest", "x"]);
    assert!(err.contains("no finished artifact named \"out\""), "{err}");
    assert!(!blob_path(&data, b"run one").exists());
    let ws = d.path().join("ws");
    two.ok(&[
        "artifact",
        "download-artifact",
        "out",
        "--dest",
        ws.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(ws.join("out/two.txt")).unwrap(), b"run two");
    one.ok(&[
        "artifact",
        "download-artifact",
        "keep",
        "--dest",
        ws.to_str().unwrap(),
    ]);
    rt().block_on(async {
        let v: Value = s
            .get("/pipelines/q/runs/1/artifacts")
            .await
            .json()
            .await
            .unwrap();
        let out = v["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "out")
            .unwrap()
            .clone();
        assert_eq!(out["state"], "expired");
    });
}

/// Retention keeps the newest *passed* run *of each branch*: run 4 is the
/// newest run (failed), run 3 the newest passed one (on another branch),
/// and run 2 the newest passed run of main, so "keep the newest run" or
/// "keep the newest passed run" would each expire an artifact that must
/// stay.
#[test]
fn expiry_keeps_the_newest_passed_run_of_each_branch() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = Server::start(&data);
    let w = d.path().join("w");
    let runs = [
        (1, "main", "passed"),
        (2, "main", "passed"),
        (3, "feature", "passed"),
        (4, "main", "failed"),
    ];
    for (run, branch, state) in runs {
        let content = format!("run {run}");
        write(&w, &format!("r{run}.txt"), content.as_bytes());
        let agent = s.agent(&w, "b", run, "j").env("SATCHEL_BRANCH", branch);
        agent.ok(&[
            "artifact",
            "publish",
            &format!("r{run}.txt"),
            "--name",
            "out",
            "--expire-in",
            "1s",
        ]);
        agent.ok(&["run-state", state]);
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = s
        .agent(&w, "b", 1, "j")
        .ok(&["admin", "gc", "--grace", "0s", "--json"]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["expired_artifacts"], 2, "{r}");
    for (run, _, _) in runs {
        let state = rt().block_on(async {
            let v: Value = s
                .get(&format!("/pipelines/b/runs/{run}/artifacts"))
                .await
                .json()
                .await
                .unwrap();
            v["artifacts"][0]["state"].as_str().unwrap().to_string()
        });
        let kept = matches!(run, 2 | 3);
        assert_eq!(
            state,
            if kept { "finished" } else { "expired" },
            "run {run}"
        );
        assert_eq!(
            blob_path(&data, format!("run {run}").as_bytes()).exists(),
            kept,
            "content of run {run}"
        );
    }
}

#[test]
fn fsck_reports_and_downloads_refuse_corruption() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = Server::start(&data);
    let w = d.path().join("w");
    let small = b"small and precious".to_vec();
    let large: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let gone = b"will vanish".to_vec();
    write(&w, "small.txt", &small);
    write(&w, "large.bin", &large);
    write(&w, "gone.txt", &gone);
    let agent = s.agent(&w, "c", 1, "j");
    agent.ok(&["artifact", "upload", "small.txt", "large.bin", "gone.txt"]);
    assert!(agent.ok(&["admin", "fsck"]).contains("no problems"));
    // Flip one bit in the small blob and in the *last* chunk of the large
    // one (its recipe and first chunks stay good, so the damage shows only
    // mid-stream), remove a third.
    let last_chunk = satchel_store::chunked::cuts(&large).last().unwrap();
    let last = satchel_store::Digest::of(&large[last_chunk.start..]);
    let mut bytes = std::fs::read(blob_path(&data, &small)).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(blob_path(&data, &small), bytes).unwrap();
    // The chunk is in a pack: flip a bit in the middle of its entry.
    let packs: Vec<_> = walkdir(&data.join("content/objects/p"));
    let mut flipped = 0;
    for p in packs {
        let mut bytes = std::fs::read(&p).unwrap();
        let index =
            satchel_store::pack::read_index(&satchel_store::Codec::plain(), &bytes).unwrap();
        for (d, range) in index {
            if d == last {
                let at = ((range.start + range.end) / 2) as usize;
                bytes[at] ^= 0x01;
                flipped += 1;
            }
        }
        std::fs::write(&p, bytes).unwrap();
    }
    assert_eq!(flipped, 1, "the last chunk is in one pack");
    std::fs::remove_file(blob_path(&data, &gone)).unwrap();
    let out = agent.run(&["admin", "fsck", "--json"]);
    assert!(!out.status.success(), "fsck must fail");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let corrupt = sorted_strings(&r["corrupt"]);
    let mut want = vec![sha(&small), sha(&large)];
    want.sort();
    assert_eq!(corrupt, want);
    assert_eq!(r["missing"], json!([sha(&gone)]));
    // fsck repaired nothing: the flipped bit is still there.
    assert_ne!(std::fs::read(blob_path(&data, &small)).unwrap(), small);
    // Downloads fail instead of delivering the bad bytes.
    for f in ["small.txt", "large.bin"] {
        let dest = d.path().join(format!("dl-{f}"));
        let err = agent.fails(&["artifact", "download", f, dest.to_str().unwrap()]);
        assert!(!dest.join(f).exists(), "{f} must not be written: {err}");
    }
    rt().block_on(async {
        let v: Value = s
            .get("/pipelines/c/runs/1/search?query=large.bin")
            .await
            .json()
            .await
            .unwrap();
        let id = v["files"][0]["id"].as_str().unwrap().to_string();
        let r = s.get(&format!("/files/{id}/content")).await;
        // A damaged later chunk is found only as the body streams, after a
        // 200: the body must then end in an error, never in bad bytes.
        assert_eq!(r.status(), 200);
        let mut body = r.bytes_stream();
        let mut got = 0usize;
        let mut failed = false;
        while let Some(part) = futures_util::StreamExt::next(&mut body).await {
            match part {
                Ok(b) => got += b.len(),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "bad bytes delivered as good ({got} bytes)");
        assert!(
            got < large.len(),
            "the body stopped before the damaged chunk ({got} bytes)"
        );
        let v: Value = s
            .get("/pipelines/c/runs/1/search?query=small.txt")
            .await
            .json()
            .await
            .unwrap();
        let id = v["files"][0]["id"].as_str().unwrap().to_string();
        let r = s.get(&format!("/files/{id}/content")).await;
        assert_eq!(r.status(), 500);
        assert_eq!(code(r).await, "integrity_error");
    });
    // The repair path: forget what is damaged, then upload the files again.
    let out = agent.run(&["admin", "fsck", "--forget-damaged", "--json"]);
    assert!(!out.status.success(), "the problems are still reported");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let forgotten = sorted_strings(&r["forgotten"]);
    let mut damaged = vec![sha(&small), sha(&large), sha(&gone)];
    damaged.sort();
    assert_eq!(forgotten, damaged);
    // Until the content comes back, fsck still reports it missing.
    let err = agent.fails(&["admin", "fsck"]);
    assert!(err.contains("--forget-damaged"), "{err}");
    let again = s.agent(&w, "c", 2, "j");
    let out = again.ok(&[
        "artifact",
        "upload",
        "--json",
        "small.txt",
        "large.bin",
        "gone.txt",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["files_sent"], 3, "forgotten content is sent again: {v}");
    assert!(agent.ok(&["admin", "fsck"]).contains("no problems"));
    // Run 1's artifact reads again.
    let dest = d.path().join("restored");
    agent.ok(&["artifact", "download", "**", dest.to_str().unwrap()]);
    assert_eq!(std::fs::read(dest.join("small.txt")).unwrap(), small);
    assert_eq!(std::fs::read(dest.join("large.bin")).unwrap(), large);
    assert_eq!(std::fs::read(dest.join("gone.txt")).unwrap(), gone);
}

#[test]
fn gc_racing_dedup_uploads_never_loses_a_byte() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        &d.path().join("data"),
        &[("SATCHEL_CHUNK_REFRESH_SECS", "5")],
    );
    gc_races_dedup_uploads(&s, &s);
}

/// A client that sends its blob slowly must not hold up GC, nor (through
/// a GC waiting for the gate) every other upload.
#[test]
fn a_slow_upload_stalls_neither_gc_nor_other_uploads() {
    use std::time::Duration;
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(&d.path().join("data"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (url, token) = (s.url.clone(), s.token.clone());
    rt.block_on(async move {
        let http = reqwest::Client::new();
        let api = |p: &str| format!("{url}/api/v1{p}");
        let create = |run: u64, name: &str, data: &[u8]| {
            let body = json!({
                "context": {"pipeline": "slow", "run": run, "job": "j"},
                "name": name,
                "files": [{"path": "f.bin", "size": data.len(), "sha256": sha(data)}],
            });
            let req = http.post(api("/uploads")).bearer_auth(&token).json(&body);
            async move {
                let v: Value = req.send().await.unwrap().json().await.unwrap();
                v
            }
        };
        let put = |upload: &Value, data: &[u8]| {
            http.put(api(&format!(
                "/uploads/{}/blobs/{}",
                upload["upload_id"].as_str().unwrap(),
                sha(data)
            )))
            .bearer_auth(&token)
        };
        let finish = |upload: &Value| {
            http.post(api(&format!(
                "/uploads/{}/finish",
                upload["upload_id"].as_str().unwrap()
            )))
            .bearer_auth(&token)
            .send()
        };
        // Garbage for GC to collect, so that it takes the gate.
        let garbage = b"garbage".repeat(100);
        let u = create(1, "garbage", &garbage).await;
        assert!(put(&u, &garbage)
            .body(garbage.clone())
            .send()
            .await
            .unwrap()
            .status()
            .is_success());
        assert!(finish(&u).await.unwrap().status().is_success());
        let r = http
            .delete(api(&format!(
                "/artifacts/{}",
                u["artifact_id"].as_str().unwrap()
            )))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());

        // A slow client: half its body now, the rest when we say so.
        let slow: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let su = create(2, "slow", &slow).await;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
        tx.send(Ok(slow[..slow.len() / 2].to_vec())).await.unwrap();
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
            );
        let slow_put = tokio::spawn(
            put(&su, &slow)
                .body(reqwest::Body::wrap_stream(stream))
                .send(),
        );
        // Certain, not timed: the server holds the slow blob mid-body.
        let metrics = format!("{url}/metrics");
        let mut polls = 0;
        loop {
            let text = http
                .get(&metrics)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if text.contains("\nsatchel_blobs_being_written 1\n") {
                break;
            }
            polls += 1;
            assert!(
                polls < 400,
                "the slow upload never reached the server: {text}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }

        let gc = tokio::spawn(
            http.post(api("/admin/gc"))
                .bearer_auth(&token)
                .json(&json!({"grace_seconds": 0}))
                .send(),
        );

        // Another upload goes through while the slow one is still sending.
        let fast = b"fast".repeat(100);
        let fu = create(3, "fast", &fast).await;
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            put(&fu, &fast).body(fast.clone()).send(),
        )
        .await
        .expect("an upload must not wait for a slow client's upload (and a GC waiting for it)")
        .unwrap();
        assert!(r.status().is_success());
        assert!(finish(&fu).await.unwrap().status().is_success());
        let report: Value = tokio::time::timeout(Duration::from_secs(10), gc)
            .await
            .expect("GC must not wait for a slow client")
            .unwrap()
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(report["blobs_deleted"], 1, "{report}");
        assert!(!slow_put.is_finished());

        // The slow upload completes and its content is intact.
        tx.send(Ok(slow[slow.len() / 2..].to_vec())).await.unwrap();
        drop(tx);
        let r = slow_put.await.unwrap().unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        assert!(finish(&su).await.unwrap().status().is_success());
        for (run, data) in [(2, &slow), (3, &fast)] {
            let v: Value = http
                .get(api(&format!(
                    "/pipelines/slow/runs/{run}/search?query=f.bin"
                )))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let body =
                file_content(&http, &url, &token, v["files"][0]["id"].as_str().unwrap()).await;
            assert_eq!(body.as_ref(), data.as_slice(), "run {run}");
        }
    });
}

/// Content GC cannot delete is not forgotten: its row stays, and a later
/// pass deletes it.
#[test]
fn gc_keeps_what_it_could_not_delete() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = Server::start(&data);
    let w = d.path().join("w");
    write(&w, "a.txt", b"stubborn content");
    let agent = s.agent(&w, "p", 1, "j");
    agent.ok(&["artifact", "upload", "--name", "a", "a.txt"]);
    s.delete_artifact(&s.artifact_id("p", 1, "a"));
    // A directory where the blob file was: deleting it fails.
    let blob = blob_path(&data, b"stubborn content");
    let saved = std::fs::read(&blob).unwrap();
    std::fs::remove_file(&blob).unwrap();
    std::fs::create_dir_all(blob.join("in-the-way")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let err = agent.fails(&["admin", "gc", "--grace", "0s", "--json"]);
    assert!(err.contains("could not be deleted"), "{err}");
    std::fs::remove_dir_all(&blob).unwrap();
    std::fs::write(&blob, saved).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let out = agent.ok(&["admin", "gc", "--grace", "0s", "--json"]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["blobs_deleted"], 1, "the next pass deletes it: {r}");
    assert!(!blob.exists());
}

/// A large file changed in a few places is sent as the chunks that
/// changed, not whole; the server assembles and checks it.
#[test]
fn a_changed_large_file_sends_only_changed_chunks() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = Server::start(&data);
    let w = d.path().join("w");
    let mut big = noise(32 * 1024 * 1024, 7);
    write(&w, "big.bin", &big);
    let first: Value = serde_json::from_str(
        &s.agent(&w, "p", 1, "j")
            .ok(&["artifact", "upload", "--json", "big.bin"]),
    )
    .unwrap();
    assert_eq!(first["bytes_sent"], big.len() as u64, "{first}");
    // Change 1% of it, in four places.
    for at in [1_000_000usize, 9_000_000, 17_000_000, 30_000_000] {
        for b in &mut big[at..at + 80_000] {
            *b = !*b;
        }
    }
    write(&w, "big.bin", &big);
    let second: Value = serde_json::from_str(
        &s.agent(&w, "p", 2, "j")
            .ok(&["artifact", "upload", "--json", "big.bin"]),
    )
    .unwrap();
    let sent = second["bytes_sent"].as_u64().unwrap();
    eprintln!("1% changed in 4 places: sent {sent} of {} bytes", big.len());
    assert!(
        sent > 0 && sent * 100 < big.len() as u64 * 10,
        "sent {sent} of {} bytes",
        big.len()
    );
    let r = d.path().join("r");
    std::fs::create_dir_all(&r).unwrap();
    s.agent(&r, "p", 2, "k")
        .ok(&["artifact", "download", "big.bin", "."]);
    assert!(std::fs::read(r.join("big.bin")).unwrap() == big);
    assert!(s
        .agent(&r, "p", 2, "k")
        .ok(&["admin", "fsck"])
        .contains("no problems"));
}

/// Chunk uploads and assembly refuse lies: a chunk that does not hash to
/// its name, chunk lists that do not add up or do not hash to the file.
#[test]
fn chunked_uploads_refuse_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(&d.path().join("data"));
    let file = noise(512 * 1024, 9);
    let (a, b) = file.split_at(300 * 1024);
    let chunk = |c: &[u8]| json!({"sha256": sha(c), "size": c.len()});
    rt().block_on(async {
        let http = s.http();
        let r = http
            .post(s.api("/uploads"))
            .bearer_auth(&s.token)
            .json(&json!({
                "context": {"pipeline": "p", "run": 1, "job": "j", "attempt": 1},
                "files": [{"path": "f.bin", "size": file.len(), "sha256": sha(&file), "mode": 420}]
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        let id = v["upload_id"].as_str().unwrap().to_string();
        let f = sha(&file);
        let post_as = |path: String, content_type: &'static str, body: Vec<u8>| {
            let http = http.clone();
            let token = s.token.clone();
            let url = s.api(&path);
            async move {
                http.post(url)
                    .bearer_auth(token)
                    .header("content-type", content_type)
                    .body(body)
                    .send()
                    .await
                    .unwrap()
            }
        };
        let post = |path: String, body: Value| {
            post_as(path, "application/json", serde_json::to_vec(&body).unwrap())
        };
        let post_binary =
            |path: String, body: Vec<u8>| post_as(path, "application/vnd.satchel.chunk-list", body);
        // Sizes that do not add up.
        let r = post(
            format!("/uploads/{id}/blobs/{f}/chunks"),
            json!({"chunks": [chunk(a)]}),
        )
        .await;
        assert_eq!(r.status(), 400);
        // A chunk over the 256 KiB maximum.
        let r = post(
            format!("/uploads/{id}/blobs/{f}/chunks"),
            json!({"chunks": [chunk(&file)]}),
        )
        .await;
        assert_eq!(r.status(), 400);
        // Three chunks under the maximum.
        let (a1, a2) = a.split_at(150 * 1024);
        let list = json!({"chunks": [chunk(a1), chunk(a2), chunk(b)]});
        let r = post(format!("/uploads/{id}/blobs/{f}/chunks"), list.clone()).await;
        assert_eq!(r.status(), 200);
        let m: Value = r.json().await.unwrap();
        assert_eq!(m["missing"], json!([0, 1, 2]));
        // The same list in its binary form (what the agent sends): 36 bytes
        // a chunk, size big-endian then the SHA-256.
        let binary: Vec<u8> = [a1, a2, b]
            .iter()
            .flat_map(|c| {
                let mut r = (c.len() as u32).to_be_bytes().to_vec();
                r.extend(hex::decode(sha(c)).unwrap());
                r
            })
            .collect();
        let r = post_binary(format!("/uploads/{id}/blobs/{f}/chunks"), binary.clone()).await;
        assert_eq!(r.status(), 200);
        let m: Value = r.json().await.unwrap();
        assert_eq!(m["missing"], json!([0, 1, 2]));
        // A binary list cut inside a record.
        let r = post_binary(
            format!("/uploads/{id}/blobs/{f}/chunks"),
            binary[..binary.len() - 1].to_vec(),
        )
        .await;
        assert_eq!(r.status(), 400);
        assert_eq!(code(r).await, "invalid_chunk_list");
        // A chunk whose bytes do not hash to its name.
        let r = http
            .put(s.api(&format!("/uploads/{id}/chunks/{}", sha(a1))))
            .bearer_auth(&s.token)
            .body(a2.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        // Assembling before the chunks are there fails, and records nothing.
        let r = post(format!("/uploads/{id}/blobs/{f}/assemble"), list.clone()).await;
        assert_eq!(
            r.status(),
            409,
            "chunks never sent are the client's to send"
        );
        assert_eq!(code(r).await, "chunk_missing");
        for c in [a1, a2, b] {
            let r = http
                .put(s.api(&format!("/uploads/{id}/chunks/{}", sha(c))))
                .bearer_auth(&s.token)
                .body(c.to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
        // Chunks in the wrong order do not hash to the file.
        let wrong = json!({"chunks": [chunk(a2), chunk(a1), chunk(b)]});
        let r = post(format!("/uploads/{id}/blobs/{f}/assemble"), wrong).await;
        assert_eq!(r.status(), 400);
        assert_eq!(code(r).await, "digest_mismatch");
        let r = post(format!("/uploads/{id}/finish"), json!({})).await;
        assert!(!r.status().is_success(), "finished with content missing");
        let r = post_binary(format!("/uploads/{id}/blobs/{f}/assemble"), binary).await;
        assert_eq!(r.status(), 201);
        let r = post(format!("/uploads/{id}/finish"), json!({})).await;
        assert!(r.status().is_success());
    });
    let r = d.path().join("r");
    std::fs::create_dir_all(&r).unwrap();
    s.agent(&r, "p", 1, "k")
        .ok(&["artifact", "download", "f.bin", "."]);
    assert!(std::fs::read(r.join("f.bin")).unwrap() == file);
}

/// Objects of each kind the local store holds (`b`, `c`, `p`, `r`).
fn object_counts(data_dir: &Path) -> std::collections::BTreeMap<String, usize> {
    fn walk(p: &Path) -> usize {
        match std::fs::read_dir(p) {
            Err(_) => 0,
            Ok(rd) => rd
                .flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else {
                        1
                    }
                })
                .sum(),
        }
    }
    ["b", "c", "p", "r"]
        .into_iter()
        .map(|k| {
            (
                k.to_string(),
                walk(&data_dir.join("content/objects").join(k)),
            )
        })
        .collect()
}

fn api_requests(s: &Server) -> u64 {
    rt().block_on(async {
        let text = reqwest::get(format!("{}/metrics", s.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("satchel_api_requests_total "))
            .expect("request counter")
            .trim()
            .parse()
            .unwrap()
    })
}

/// Thousands of small files cost a handful of requests and a handful of
/// stored objects (packs), read back intact; GC frees the packs once
/// nothing uses them.
#[test]
fn many_small_files_become_a_few_packs() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    // A busy machine must not split a batch on a pause: only counts here.
    let s = Server::start_with(&data, &[("SATCHEL_PACK_HOLD_MS", "30000")]);
    let w = d.path().join("w");
    let n = 3000u64;
    for i in 0..n {
        write(
            &w,
            &format!("small/{:02}/f{i:05}.bin", i % 30),
            &noise(4096, 2 * i + 1),
        );
    }
    // Two tiny files alone in a batch stay objects of their own.
    write(&w, "few/a.txt", b"alone a");
    write(&w, "few/b.txt", b"alone b");
    let agent = s.agent(&w, "p", 1, "j");
    let before = api_requests(&s);
    let out = agent.ok(&[
        "artifact", "upload", "--json", "--name", "small", "small/**",
    ]);
    let requests = api_requests(&s) - before;
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["files_sent"], n, "{v}");
    let counts = object_counts(&data);
    println!("{n} files of 4 KiB: {requests} API requests, stored objects {counts:?}");
    assert!(requests <= 8, "{requests} requests for {n} small files");
    assert_eq!(counts["b"], 0, "{counts:?}");
    assert!((1..=3).contains(&counts["p"]), "{counts:?}");
    agent.ok(&["artifact", "upload", "--name", "few", "few/*"]);
    assert_eq!(object_counts(&data)["b"], 2);
    assert!(agent.ok(&["admin", "fsck"]).contains("no problems"));
    // A new server process reads the packs it did not write.
    let mut s = s;
    s.stop();
    let s = Server::start(&data);
    let agent = s.agent(&w, "p", 1, "j");
    let dest = d.path().join("dl");
    agent.ok(&["artifact", "download", "small/**", dest.to_str().unwrap()]);
    for i in (0..n).step_by(7) {
        let rel = format!("small/{:02}/f{i:05}.bin", i % 30);
        assert_eq!(
            std::fs::read(dest.join(&rel)).unwrap(),
            noise(4096, 2 * i + 1),
            "{rel}"
        );
    }
    s.delete_artifact(&s.artifact_id("p", 1, "small"));
    let out = agent.ok(&["admin", "gc", "--grace", "0s", "--json"]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["blobs_deleted"], n, "{r}");
    assert_eq!(object_counts(&data)["p"], 0, "dead packs are deleted");
    assert_eq!(object_counts(&data)["b"], 2, "live blobs stay");
    assert!(agent.ok(&["admin", "fsck"]).contains("no problems"));
}

/// A batch mixing small files with files too large for packs (but still
/// sent in the batch) keeps the small ones together in one pack: the
/// larger frames are stored on their own without cutting the pack short.
#[test]
fn a_batch_mixing_small_and_medium_files_writes_one_pack() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    // A busy machine must not split a batch on a pause: only counts here.
    let s = Server::start_with(&data, &[("SATCHEL_PACK_HOLD_MS", "30000")]);
    let w = d.path().join("w");
    for i in 0..40u64 {
        write(&w, &format!("m/f{i:02}.bin"), &noise(3000, 2 * i + 1));
        if i % 10 == 5 {
            write(
                &w,
                &format!("m/f{i:02}m.bin"),
                &noise(400 * 1024, 2 * i + 1001),
            );
        }
    }
    let agent = s.agent(&w, "mix", 1, "j");
    agent.ok(&["artifact", "upload", "m/*"]);
    // One pack of the small files; the medium ones' chunks go into packs
    // of chunks (footer magic SPC1).
    let packs = walkdir(&data.join("content/objects/p"));
    let of_blobs = packs
        .iter()
        .filter(|p| std::fs::read(p).unwrap().ends_with(b"SPK1"))
        .count();
    assert_eq!(of_blobs, 1, "{packs:?}");
    let dest = d.path().join("dl");
    agent.ok(&["artifact", "download", "m/*", dest.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(dest.join("m/f25m.bin")).unwrap(),
        noise(400 * 1024, 2 * 25 + 1001)
    );
    assert!(agent.ok(&["admin", "fsck"]).contains("no problems"));
}

/// More batches of small files than the server gathers packs for at once
/// wait their turn, none fails, and every file comes back intact. The
/// contention is certain: with one buffer, held by a stalled client (and a
/// long hold), every batch is seen waiting on `/metrics` before the
/// buffer is released.
#[test]
fn concurrent_small_file_batches_wait_for_pack_buffers() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = Server::start_with(
        &data,
        &[
            ("SATCHEL_PACK_BUFFERS", "1"),
            ("SATCHEL_PACK_HOLD_MS", "600000"),
            ("SATCHEL_BODY_IDLE_TIMEOUT", "600"),
        ],
    );
    let w = d.path().join("w");
    let jobs = 12u64;
    for j in 0..jobs {
        for i in 0..40u64 {
            write(
                &w,
                &format!("j{j}/f{i}.bin"),
                &noise(3000, 2 * (j * 100 + i) + 1),
            );
        }
    }
    let slow = StalledBatch::start(&s, "stall");
    std::thread::scope(|scope| {
        for j in 0..jobs {
            let agent = s.agent(&w, "p", 1, &format!("job{j}"));
            scope.spawn(move || {
                agent.ok(&[
                    "artifact",
                    "upload",
                    "--name",
                    &format!("a{j}"),
                    &format!("j{j}/*"),
                ]);
            });
        }
        wait_up_to(
            120,
            || s.metric("satchel_pack_buffer_waits_total") >= jobs,
            "every batch to wait for the one pack buffer",
        );
        assert_eq!(s.metric("satchel_pack_buffers_in_use"), 1);
        slow.resume();
    });
    assert_eq!(
        object_counts(&data)["p"],
        jobs as usize + 1,
        "one pack per batch"
    );
    let agent = s.agent(&w, "p", 1, "check");
    let dest = d.path().join("dl");
    agent.ok(&["artifact", "download", "**", dest.to_str().unwrap()]);
    for j in 0..jobs {
        for i in 0..40u64 {
            let rel = format!("j{j}/f{i}.bin");
            assert_eq!(
                std::fs::read(dest.join(&rel)).unwrap(),
                noise(3000, 2 * (j * 100 + i) + 1),
                "{rel}"
            );
        }
    }
    assert!(agent.ok(&["admin", "fsck"]).contains("no problems"));
}

/// Every file under `dir`, at any depth.
fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}
