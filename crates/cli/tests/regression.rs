//! Regression tests, one per defect, each named after what it was: every
//! test here failed on the code before its fix. Most come from trying the
//! upload path as an attacker would (issue 10, part 5): a job must not be
//! able to damage content other pipelines share, nor make another job's
//! agent write outside its destination.

mod common;

use common::{code, rt, write, Server};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A manifest could claim any size for content the server already held:
/// only the digest's presence was checked, so the lie was recorded and
/// archives, fsck and range requests trusted it. Now the claim is refused
/// with `400 size_mismatch` and nothing is written, and content recorded
/// after the claim (by an honest upload) is checked again at finish.
#[test]
fn manifest_size_lie_about_held_content_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(&d.path().join("data"));
    let w = d.path().join("w");
    let held = b"content another pipeline stored".repeat(100);
    write(&w, "shared.txt", &held);
    let owner = s.agent(&w, "owner", 1, "build");
    owner.ok(&["artifact", "upload", "shared.txt"]);

    rt().block_on(async {
        let http = s.http();
        let create = |name: &str, path: &str, size: usize, sha256: &str| {
            let body = json!({
                "context": {"pipeline": "liar", "run": 1, "job": "j"},
                "name": name,
                "files": [{"path": path, "size": size, "sha256": sha256}],
            });
            http.post(s.api("/uploads"))
                .bearer_auth(&s.token)
                .json(&body)
                .send()
        };
        for size in [held.len() + 1000, 1, 0] {
            let r = create("lie", "x.txt", size, &sha(&held)).await.unwrap();
            assert_eq!(r.status(), 400, "claimed size {size}");
            assert_eq!(code(r).await, "size_mismatch");
        }
        let r = s.get("/pipelines/liar/runs").await;
        assert_eq!(r.status(), 404, "a refused manifest writes nothing");

        // The lie made before the content exists is caught at finish.
        let later = b"content that arrives after the lie".repeat(50);
        let r = create("late", "y.txt", later.len() + 7, &sha(&later))
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let plan: Value = r.json().await.unwrap();
        write(&w, "later.txt", &later);
        owner.ok(&["artifact", "upload", "later.txt"]);
        let r = http
            .post(s.api(&format!(
                "/uploads/{}/finish",
                plan["upload_id"].as_str().unwrap()
            )))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(code(r).await, "size_mismatch");
        let arts: Value = s
            .get("/pipelines/liar/runs/1/artifacts")
            .await
            .json()
            .await
            .unwrap();
        assert!(
            arts["artifacts"]
                .as_array()
                .unwrap()
                .iter()
                .all(|a| a["state"] != "finished"),
            "{arts}"
        );
    });

    assert!(owner.ok(&["admin", "fsck"]).contains("no problems"));
    let dest = d.path().join("dl");
    owner.ok(&["artifact", "download", "*.txt", dest.to_str().unwrap()]);
    assert_eq!(std::fs::read(dest.join("shared.txt")).unwrap(), held);
}

/// A batch of small files held one of the shared pack buffers for as long
/// as its client took to send the rest, so a few stalled clients stopped
/// every other batch upload. With one buffer, a client that stalls in
/// mid-batch after the server took the buffer for it must not stop
/// another job's upload; its own batch still completes when it resumes.
#[test]
fn stalled_batch_client_does_not_hold_a_pack_buffer() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start_with(&d.path().join("data"), &[("SATCHEL_PACK_BUFFERS", "1")]);
    assert_eq!(s.metric("satchel_pack_buffers"), 1);
    let slow = common::StalledBatch::start(&s, "stall");

    // Another job's batch of small files gets through meanwhile.
    let w = d.path().join("w");
    for i in 0..30u64 {
        write(&w, &format!("o/{i}.txt"), format!("other {i}").as_bytes());
    }
    let agent = s.agent(&w, "other", 1, "fast");
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.current_dir(&w)
        .env_clear()
        .env("SATCHEL_URL", &agent.url)
        .env("SATCHEL_TOKEN", &agent.token)
        .args(["artifact", "upload", "--quiet", "o/*"]);
    for (k, v) in &agent.env {
        cmd.env(k, v);
    }
    let mut other = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(st) = other.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > std::time::Duration::from_secs(60) {
            other.kill().ok();
            panic!("another job's upload waited a minute for the stalled client's pack buffer");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success());
    assert_eq!(
        s.metric("satchel_pack_buffers_in_use"),
        0,
        "the stalled client holds no buffer"
    );

    // The stalled client resumes; its batch is whole.
    let (upload, files) = (slow.upload_id.clone(), slow.files.clone());
    slow.resume();
    rt().block_on(async {
        let r = s
            .http()
            .post(s.api(&format!("/uploads/{upload}/finish")))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    });
    let dest = d.path().join("dl");
    s.agent(&w, "stall", 1, "check")
        .ok(&["artifact", "download", "s/*", dest.to_str().unwrap()]);
    for (i, f) in files.iter().enumerate() {
        assert_eq!(&std::fs::read(dest.join(format!("s/{i}.bin"))).unwrap(), f);
    }
}

/// A server that answers every request with `answer(path)` as JSON (200),
/// or 404: stands in for a hostile or compromised server.
fn hostile_server(answer: impl Fn(&str) -> Option<String> + Send + 'static) -> String {
    hostile_bytes_server(move |p| answer(p).map(String::into_bytes))
}

/// [`hostile_server`] answering raw bytes.
fn hostile_bytes_server(answer: impl Fn(&str) -> Option<Vec<u8>> + Send + 'static) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split(' ').nth(1).unwrap_or("").to_string();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let (status, body) = match answer(&path) {
                Some(b) => ("200 OK", b),
                None => (
                    "404 Not Found",
                    br#"{"error":{"code":"not_found","message":"no"}}"#.to_vec(),
                ),
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(&body);
        }
    });
    url
}

/// The agent trusted the artifact names a server returned: a name like
/// `/tmp/x` made `download-artifact` write outside `--dest` (a path join
/// with an absolute name replaces the root). The client now checks every
/// name, path and id it receives as strictly as the server does.
#[test]
fn server_supplied_artifact_name_cannot_escape_dest() {
    let d = tempfile::tempdir().unwrap();
    let outside = d.path().join("outside");
    let dest = d.path().join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    for evil in [outside.display().to_string(), "..".to_string()] {
        let artifact = json!({
            "id": "0123456789abcdef0123456789abcdef",
            "name": evil,
            "is_default": false,
            "kind": "image",
            "state": "finished",
            "producer": {"pipeline": "p", "run": 1, "job": "j", "attempt": 1, "superseded": false},
            "file_count": 0,
            "size": 0,
            "created_at": "2026-12-01T00:00:00Z",
            "image": {"image": "evil", "reference": "evil:1"},
        });
        let list = json!({ "artifacts": [artifact] }).to_string();
        let url = hostile_server(move |path| path.ends_with("/artifacts").then(|| list.clone()));
        let out = std::process::Command::new(common::BIN)
            .env_clear()
            .env("SATCHEL_URL", &url)
            .env("SATCHEL_TOKEN", "t")
            .args([
                "artifact",
                "download-artifact",
                "--pipeline",
                "p",
                "--run",
                "1",
                "--all",
                "--dest",
            ])
            .arg(&dest)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted artifact name {evil:?}");
        assert!(err.contains("invalid artifact name"), "{err}");
        assert!(!outside.exists(), "wrote outside the destination");
        assert!(!d.path().join("artifact.json").exists());
    }

    // Paths and ids are checked too: a search answer with a traversal.
    let file = json!({
        "id": "0123456789abcdef0123456789abcdef",
        "artifact_id": "0123456789abcdef0123456789abcdef",
        "artifact_name": "default",
        "path": "../escape.txt",
        "size": 1,
        "sha256": "0".repeat(64),
        "mode": 420,
        "content_type": "text/plain",
        "producer": {"pipeline": "p", "run": 1, "job": "j", "attempt": 1, "superseded": false},
        "uploaded_at": "2026-12-01T00:00:00Z",
        "uploaded_at_ms": 0,
    });
    let list = json!({ "files": [file] }).to_string();
    let url = hostile_server(move |path| path.contains("/search").then(|| list.clone()));
    let out = std::process::Command::new(common::BIN)
        .env_clear()
        .env("SATCHEL_URL", &url)
        .env("SATCHEL_TOKEN", "t")
        .args(["artifact", "search", "--pipeline", "p", "--run", "1", "**"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("invalid file path"), "{err}");
}

/// `artifact upload` followed file symlinks that lead outside the working
/// directory and `artifact publish` followed any link out of the published
/// directory, so a link planted in build output (by a dependency, say)
/// carried a secret such as a key into an artifact others can read. Both
/// now refuse by default, naming the link and `--allow-links-outside`.
#[test]
fn symlinks_leading_outside_the_root_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(&d.path().join("data"));
    let secret = d.path().join("secret.key");
    std::fs::write(&secret, "hunter2").unwrap();
    let w = d.path().join("w");
    write(&w, "dist/app.txt", b"app");
    write(&w, "notes.txt", b"notes");
    std::fs::create_dir_all(w.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(&secret, w.join("dist/key")).unwrap();
    // Links that stay inside the working directory (fine for upload, but
    // outside the published directory) and inside `dist` (fine for both).
    std::os::unix::fs::symlink("../notes.txt", w.join("dist/notes")).unwrap();
    std::os::unix::fs::symlink("app.txt", w.join("dist/alias")).unwrap();
    // A linked directory on the way out of the root.
    std::os::unix::fs::symlink(d.path(), w.join("up")).unwrap();
    let agent = s.agent(&w, "p", 1, "j");

    for args in [
        vec!["artifact", "upload", "dist/**"],
        vec!["artifact", "upload", "dist/key"],
        vec!["artifact", "upload", "up/secret.key"],
        vec!["artifact", "upload", "up/*.key"],
        vec!["artifact", "publish", "dist", "--name", "pub"],
        vec!["artifact", "publish", "up", "--name", "pub"],
        vec!["artifact", "publish", "up/secret.key", "--name", "pub"],
    ] {
        let err = agent.fails(&args);
        assert!(
            err.contains("leads outside") && err.contains("--allow-links-outside"),
            "{args:?}: {err}"
        );
    }
    let r = rt().block_on(s.get("/pipelines/p/runs"));
    assert_eq!(r.status(), 404, "nothing was uploaded");

    // Inside links, and outside ones when asked for.
    std::fs::remove_file(w.join("dist/key")).unwrap();
    agent.ok(&["artifact", "upload", "dist/**"]);
    let err = agent.fails(&["artifact", "publish", "dist", "--name", "inside"]);
    assert!(
        err.contains("dist/notes") && err.contains("leads outside"),
        "{err}"
    );
    std::fs::remove_file(w.join("dist/notes")).unwrap();
    // A link that is ignored is never looked at.
    std::fs::write(w.join("dist/.artifactignore"), "key\n").unwrap();
    std::os::unix::fs::symlink(&secret, w.join("dist/key")).unwrap();
    agent.ok(&["artifact", "publish", "dist", "--name", "inside"]);
    std::fs::remove_file(w.join("dist/.artifactignore")).unwrap();
    std::fs::remove_file(w.join("dist/key")).unwrap();
    std::os::unix::fs::symlink(&secret, w.join("dist/key")).unwrap();
    agent.ok(&["artifact", "upload", "--allow-links-outside", "dist/key"]);
    agent.ok(&[
        "artifact",
        "publish",
        "dist",
        "--name",
        "outside",
        "--allow-links-outside",
    ]);
    let found = agent.ok(&["artifact", "search", "--format", "%n %p", "**"]);
    let mut lines: Vec<&str> = found.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "default dist/alias",
            "default dist/app.txt",
            "default dist/key",
            "default dist/notes",
            "inside alias",
            "inside app.txt",
            "outside alias",
            "outside app.txt",
            "outside key",
        ],
        "{found}"
    );
}

/// A file row recorded with a size its content does not have (an upload
/// before sizes were checked, see the first test here) made `fsck` report
/// the *content* as the wrong size, and `fsck --forget-damaged` then
/// deleted content that other pipelines share and had recorded truthfully.
/// fsck now checks content against the size verified when it was stored,
/// and lists lying rows on their own, never repairing content for them.
#[test]
fn fsck_never_forgets_shared_content_for_a_lying_file_row() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let w = d.path().join("w");
    let shared = b"content two pipelines share".repeat(200);
    write(&w, "shared.txt", &shared);
    write(&w, "x.txt", &shared);
    let mut s = Server::start(&data);
    s.agent(&w, "owner", 1, "build")
        .ok(&["artifact", "upload", "shared.txt"]);
    s.agent(&w, "liar", 1, "build")
        .ok(&["artifact", "upload", "x.txt"]);
    s.stop();
    // What an upload before the fix could leave behind.
    let db = rusqlite::Connection::open(data.join("satchel.db")).unwrap();
    let n = db
        .execute(
            "UPDATE files SET size = size + 1000 WHERE path = 'x.txt'",
            [],
        )
        .unwrap();
    assert_eq!(n, 1);
    drop(db);

    let s = Server::start(&data);
    let owner = s.agent(&w, "owner", 1, "build");
    let out = owner.run(&["admin", "fsck", "--forget-damaged", "--json"]);
    assert!(!out.status.success(), "a lying row is a problem to report");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["wrong_size"], json!([]), "{r}");
    assert!(r.get("forgotten").is_none(), "nothing was forgotten: {r}");
    let lies = r["mis_sized_files"].as_array().unwrap();
    assert_eq!(lies.len(), 1, "{r}");
    assert!(
        lies[0]
            .as_str()
            .unwrap()
            .contains("x.txt: claims 6400 bytes"),
        "{r}"
    );
    let dest = d.path().join("dl");
    owner.ok(&["artifact", "download", "shared.txt", dest.to_str().unwrap()]);
    assert_eq!(std::fs::read(dest.join("shared.txt")).unwrap(), shared);
}

/// The agent's check of a large file's SHA-256 as it streams to disk had
/// no test: a server that sends the right number of wrong bytes must get
/// an integrity error, and nothing may be left at the destination.
#[test]
fn a_large_file_with_wrong_bytes_is_refused_and_not_written() {
    let d = tempfile::tempdir().unwrap();
    let size = 3 * 1024 * 1024;
    let file = json!({
        "id": "0123456789abcdef0123456789abcdef",
        "artifact_id": "0123456789abcdef0123456789abcdef",
        "artifact_name": "default",
        "path": "big.bin",
        "size": size,
        "sha256": sha(&vec![1u8; size]),
        "mode": 420,
        "content_type": "application/octet-stream",
        "producer": {"pipeline": "p", "run": 1, "job": "j", "attempt": 1, "superseded": false},
        "uploaded_at": "2026-12-01T00:00:00Z",
        "uploaded_at_ms": 0,
    });
    let list = json!({ "files": [file] }).to_string();
    let url = hostile_bytes_server(move |path| {
        if path.contains("/search") {
            Some(list.clone().into_bytes())
        } else if path.ends_with("/content") {
            Some(vec![2u8; size])
        } else {
            None
        }
    });
    let dest = d.path().join("dest");
    let out = std::process::Command::new(common::BIN)
        .env_clear()
        .env("SATCHEL_URL", &url)
        .env("SATCHEL_TOKEN", "t")
        .args([
            "artifact",
            "download",
            "--pipeline",
            "p",
            "--run",
            "1",
            "big.bin",
        ])
        .arg(&dest)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "wrong bytes accepted");
    assert!(err.contains("integrity check failed for big.bin"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&dest)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}
