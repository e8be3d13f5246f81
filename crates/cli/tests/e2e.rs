//! End-to-end: the real `satchel` binary as server and agent.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use serde_json::Value;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn serve_prints_address_and_keeps_a_private_admin_token() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    assert!(s.url.starts_with("http://127.0.0.1:"));
    let meta = std::fs::metadata(d.path().join("data/admin.token")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(d.path().join("data/satchel.db").exists());
    rt().block_on(async {
        let r = s
            .http()
            .get(s.api("/pipelines/p/runs"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
        let r = s
            .http()
            .get(s.api("/pipelines/p/runs"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = s
            .http()
            .get(format!("{}/healthz", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = s.get("/nope").await;
        assert_eq!(r.status(), 404);
        assert_eq!(code(r).await, "not_found");
        let r = s
            .http()
            .put(s.api("/pipelines/p/runs"))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405);
        assert_eq!(code(r).await, "method_not_allowed");
    });
}

#[test]
fn admin_token_from_environment() {
    let d = tmp();
    // Too short a token is refused at start, naming the minimum.
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(d.path().join("short"))
        .env("SATCHEL_ADMIN_TOKEN", "sekrit-token")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 32"), "{err}");
    let s = Server::start_with(
        &d.path().join("data"),
        &[("SATCHEL_ADMIN_TOKEN", "sekrit-token-of-at-least-32-chars")],
    );
    assert!(!d.path().join("data/admin.token").exists());
    rt().block_on(async {
        let r = s
            .http()
            .get(s.api("/pipelines/p/runs"))
            .bearer_auth("sekrit-token-of-at-least-32-chars")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "authenticated, pipeline unknown");
    });
}

#[test]
fn two_jobs_upload_a_third_downloads() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    let (w1, w2, w3) = (
        d.path().join("w1"),
        d.path().join("w2"),
        d.path().join("w3"),
    );
    write(&w1, "logs/a.log", b"log a");
    write(&w1, "logs/deep/b.log", b"log b");
    write(&w1, "logs/skip.txt", b"not a log");
    write(&w1, "bin/tool", b"#!/bin/sh\necho tool\n");
    std::fs::set_permissions(w1.join("bin/tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    write(&w2, "report.json", b"{\"ok\":true}");
    write(&w2, "cov/index.html", b"<html></html>");
    std::fs::create_dir_all(&w3).unwrap();

    let j1 = s
        .agent(&w1, "web", 7, "build")
        .env("SATCHEL_STEP", "compile");
    let out = j1.ok(&["artifact", "upload", "--json", "logs/**/*.log;bin/tool"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["files"], 3);
    assert_eq!(v["artifact"], "default");
    let j2 = s.agent(&w2, "web", 7, "test");
    j2.ok(&["artifact", "upload", "report.json", "cov/*.html"]);

    let j3 = s.agent(&w3, "web", 7, "deploy");
    let listed = j3.ok(&["artifact", "search", "**"]);
    assert_eq!(listed.lines().count(), 5, "{listed}");
    assert!(listed.contains("logs/deep/b.log\t5\t"), "{listed}");
    assert!(listed.contains("job=build\tstep=compile\tattempt=1\tartifact=default"));
    let json: Value =
        serde_json::from_str(&j3.ok(&["artifact", "search", "cov/*", "--json"])).unwrap();
    assert_eq!(json[0]["content_type"], "text/html");
    assert_eq!(json[0]["producer"]["job"], "test");
    let fmt = j3.ok(&["artifact", "search", "report.json", "--format", "%p %s %j"]);
    assert_eq!(fmt, "report.json 11 test\n");

    j3.ok(&["artifact", "download", "**", "out"]);
    assert_eq!(std::fs::read(w3.join("out/logs/a.log")).unwrap(), b"log a");
    assert_eq!(
        std::fs::read(w3.join("out/logs/deep/b.log")).unwrap(),
        b"log b"
    );
    assert_eq!(
        std::fs::read(w3.join("out/cov/index.html")).unwrap(),
        b"<html></html>"
    );
    assert!(!w3.join("out/logs/skip.txt").exists());
    let mode = std::fs::metadata(w3.join("out/bin/tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755, "executable bit survives");

    j3.ok(&["artifact", "download", "logs/*.log", "only"]);
    assert!(w3.join("only/logs/a.log").exists());
    assert!(
        !w3.join("only/logs/deep/b.log").exists(),
        "* stays within a segment"
    );

    let sha = j3.ok(&["artifact", "shasum", "report.json"]);
    let expected = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"{\"ok\":true}"))
    };
    assert_eq!(sha.trim(), expected);
    let err = j3.fails(&["artifact", "shasum", "logs/**"]);
    assert!(err.contains("2 files match"), "{err}");

    // Scoping by another run and pipeline from a job elsewhere.
    let other = s.agent(&w3, "elsewhere", 1, "x");
    let got = other.ok(&[
        "artifact",
        "search",
        "**",
        "--pipeline",
        "web",
        "--build",
        "7",
        "--job",
        "test",
    ]);
    assert_eq!(got.lines().count(), 2);
    let err = other.fails(&[
        "artifact",
        "search",
        "**",
        "--pipeline",
        "web",
        "--run",
        "8",
    ]);
    assert!(err.contains("run 8 of pipeline \"web\" not found"), "{err}");
    let err = other.fails(&[
        "artifact",
        "search",
        "nothing-*",
        "--pipeline",
        "web",
        "--run",
        "7",
    ]);
    assert!(err.contains("no files match"), "{err}");
    other.ok(&[
        "artifact",
        "search",
        "nothing-*",
        "--pipeline",
        "web",
        "--run",
        "7",
        "--allow-empty-results",
    ]);
}

#[test]
fn literal_query_matching_two_jobs_is_ambiguous() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    for (job, body) in [("linux", "L"), ("mac", "M")] {
        let w = d.path().join(job);
        write(&w, "dist/app.tar", body.as_bytes());
        s.agent(&w, "rel", 1, job)
            .env("SATCHEL_STEP", "package")
            .ok(&["artifact", "upload", "dist/app.tar"]);
    }
    let w = d.path().join("deploy");
    std::fs::create_dir_all(&w).unwrap();
    let a = s.agent(&w, "rel", 1, "deploy");
    let err = a.fails(&["artifact", "download", "dist/app.tar", "out"]);
    assert!(
        err.contains("multiple files match query `dist/app.tar`"),
        "{err}"
    );
    assert!(
        err.contains("job linux") && err.contains("job mac"),
        "{err}"
    );
    assert!(err.contains("step package"), "{err}");
    assert!(
        err.contains("--job") && err.contains("--step") && err.contains("--name"),
        "{err}"
    );
    assert!(!w.join("out/dist/app.tar").exists());

    a.ok(&[
        "artifact",
        "download",
        "dist/app.tar",
        "out",
        "--job",
        "mac",
    ]);
    assert_eq!(std::fs::read(w.join("out/dist/app.tar")).unwrap(), b"M");
    // A wildcard takes the most recent per path.
    a.ok(&["artifact", "download", "dist/*", "latest"]);
    assert_eq!(std::fs::read(w.join("latest/dist/app.tar")).unwrap(), b"M");

    rt().block_on(async {
        let r = s
            .get("/pipelines/rel/runs/1/search?query=dist/app.tar&purpose=download")
            .await;
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "ambiguous_query");
        assert_eq!(v["error"]["candidates"].as_array().unwrap().len(), 2);
    });
}

#[test]
fn retried_attempts_supersede_earlier_ones() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    let w = d.path().join("w");
    write(&w, "result.txt", b"attempt one");
    write(&w, "flaky.log", b"only in attempt one");
    s.agent(&w, "ci", 3, "tests")
        .ok(&["artifact", "upload", "result.txt", "flaky.log"]);
    write(&w, "result.txt", b"attempt two");
    s.agent(&w, "ci", 3, "tests")
        .env("SATCHEL_ATTEMPT", "2")
        .ok(&["artifact", "upload", "result.txt"]);

    let r = d.path().join("r");
    std::fs::create_dir_all(&r).unwrap();
    let a = s.agent(&r, "ci", 3, "report");
    a.ok(&["artifact", "download", "result.txt", "out"]);
    assert_eq!(
        std::fs::read(r.join("out/result.txt")).unwrap(),
        b"attempt two"
    );
    let err = a.fails(&["artifact", "download", "flaky.log", "out"]);
    assert!(err.contains("--include-retried-jobs"), "{err}");
    a.ok(&[
        "artifact",
        "download",
        "flaky.log",
        "out",
        "--include-retried-jobs",
    ]);
    assert_eq!(
        std::fs::read(r.join("out/flaky.log")).unwrap(),
        b"only in attempt one"
    );
    let all = a.ok(&["artifact", "search", "result.txt", "--include-retried-jobs"]);
    assert_eq!(all.lines().count(), 2);
    assert!(all.contains("attempt=1") && all.contains("attempt=2"));
}

#[test]
fn upload_errors_are_clear() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    let w = d.path().join("w");
    write(&w, "a.txt", b"a");
    write(&w, "dir/b.txt", b"b");
    std::os::unix::fs::symlink(w.join("a.txt"), w.join("link.txt")).unwrap();
    let a = s.agent(&w, "p", 1, "j");
    let err = a.fails(&["artifact", "upload", "a.txt", "missing/*.bin"]);
    assert!(
        err.contains("no files match pattern \"missing/*.bin\""),
        "{err}"
    );
    let err = a.fails(&["artifact", "upload", "[ab"]);
    assert!(err.contains("invalid pattern"), "{err}");
    let err = s
        .agent(&w, "bad key!", 1, "j")
        .fails(&["artifact", "upload", "a.txt"]);
    assert!(err.contains("pipeline"), "{err}");
    let err = a.fails(&["artifact", "upload", "a.txt", "--name", "a/b"]);
    assert!(err.contains("artifact name"), "{err}");
    // Nothing of the failed uploads is visible.
    let err = a.fails(&["artifact", "search"]);
    assert!(
        err.contains("no files match") || err.contains("not found"),
        "{err}"
    );

    // Symlinks: uploaded as their target unless skipped; --literal; delimiter off.
    let out = a.ok(&["artifact", "upload", "--json", "*.txt", "--skip-symlinks"]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["files"], 1);
    let out = a.ok(&["artifact", "upload", "--json", "link.txt"]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["files"], 1);
    let err = a.fails(&[
        "artifact",
        "upload",
        "--literal",
        "--delimiter",
        "",
        "dir/*.txt",
    ]);
    assert!(
        err.contains("no files match pattern \"dir/*.txt\""),
        "{err}"
    );
    // Same path, same content: fine. Same path, new content: conflict.
    a.ok(&["artifact", "upload", "a.txt"]);
    write(&w, "a.txt", b"changed");
    let err = a.fails(&["artifact", "upload", "a.txt"]);
    assert!(
        err.contains("already in artifact") && err.contains("different content"),
        "{err}"
    );
    // Named artifacts belong to one job.
    a.ok(&["artifact", "upload", "dir/b.txt", "--name", "bundle"]);
    let err = s.agent(&w, "p", 1, "other").fails(&[
        "artifact",
        "upload",
        "dir/b.txt",
        "--name",
        "bundle",
    ]);
    assert!(
        err.contains("artifact \"bundle\" already exists in run 1 of pipeline \"p\""),
        "{err}"
    );
    assert!(err.contains("job \"j\""), "{err}");
    // Missing token.
    let mut no_token = a.clone();
    no_token.token = String::new();
    let out = std::process::Command::new(BIN)
        .current_dir(&w)
        .env_clear()
        .env("SATCHEL_URL", &s.url)
        .args(["artifact", "search", "--pipeline", "p", "--run", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token"));
}

async fn create(s: &Server, body: Value) -> reqwest::Response {
    s.http()
        .post(s.api("/uploads"))
        .bearer_auth(&s.token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn manifest(path: &str, data: &[u8]) -> Value {
    use sha2::Digest;
    serde_json::json!({
        "context": {"pipeline": "p", "run": 1, "job": "j"},
        "files": [{"path": path, "size": data.len(), "sha256": hex::encode(sha2::Sha256::digest(data))}]
    })
}

#[test]
fn bad_input_is_rejected_and_changes_nothing() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    rt().block_on(async {
        for (path, code) in [
            ("../etc/passwd", "invalid_path"),
            ("a/../../b", "invalid_path"),
            ("/etc/passwd", "invalid_path"),
            ("a\u{0}b", "invalid_path"),
            ("a\\..\\b", "invalid_path"),
            ("./a", "invalid_path"),
            ("a//b", "invalid_path"),
        ] {
            let r = create(&s, manifest(path, b"x")).await;
            assert_eq!(r.status(), 400, "{path:?}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], code, "{path:?}: {v}");
        }
        let long = "a".repeat(2000);
        assert_eq!(create(&s, manifest(&long, b"x")).await.status(), 400);
        let mut m = manifest("ok.txt", b"x");
        m["name"] = Value::String("n".repeat(300));
        assert_eq!(create(&s, m).await.status(), 400);
        let mut m = manifest("ok.txt", b"x");
        m["files"][0]["sha256"] = Value::String("zz".into());
        assert_eq!(create(&s, m).await.status(), 400);
        // Invalid UTF-8 and malformed JSON.
        let r = s
            .http()
            .post(s.api("/uploads"))
            .bearer_auth(&s.token)
            .header("content-type", "application/json")
            .body(vec![b'{', 0xff, 0xfe, b'}'])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(code(r).await, "invalid_json");
        // Oversized manifest.
        let r = s
            .http()
            .post(s.api("/uploads"))
            .bearer_auth(&s.token)
            .body(vec![b' '; 65 * 1024 * 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
        // Nothing was created.
        let r = s.get("/pipelines/p/runs").await;
        assert_eq!(r.status(), 404);

        // Wrong content for an announced hash: rejected, never visible.
        let r = create(&s, manifest("x.bin", b"the real content")).await;
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        let (id, sha) = (
            v["upload_id"].as_str().unwrap(),
            v["missing"][0].as_str().unwrap(),
        );
        let r = s
            .http()
            .put(s.api(&format!("/uploads/{id}/blobs/{sha}")))
            .bearer_auth(&s.token)
            .body("forged content!!")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(code(r).await, "digest_mismatch");
        // Content not in the manifest.
        let other = "ab".repeat(32);
        let r = s
            .http()
            .put(s.api(&format!("/uploads/{id}/blobs/{other}")))
            .bearer_auth(&s.token)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = s
            .http()
            .post(s.api(&format!("/uploads/{id}/finish")))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        assert!(r
            .text()
            .await
            .unwrap()
            .contains("content has not been uploaded for: x.bin"));
        let r = s.get("/pipelines/p/runs/1/search?query=**").await;
        assert_eq!(
            r.json::<Value>().await.unwrap()["files"]
                .as_array()
                .unwrap()
                .len(),
            0
        );
        // Unknown and malformed ids, and traversals, sent as they are (an
        // HTTP client would normalize `..` away before the server saw it).
        for (method, path) in [
            ("GET", "/api/v1/artifacts/xyz"),
            ("GET", "/api/v1/files/../../etc/passwd"),
            ("GET", "/api/v1/files/..%2F..%2Fetc%2Fpasswd/content"),
            ("GET", "/api/v1/files/%2e%2e/content"),
            ("POST", "/api/v1/uploads/0123/finish"),
            ("POST", "/api/v1/uploads/..%2F..%2Fx/finish"),
            ("GET", &format!("/api/v1/artifacts/{}", "0".repeat(32))),
        ] {
            let (status, body) = s.raw_request(method, path);
            assert_eq!(status, 404, "{method} {path}: {body}");
            let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{body}"));
            assert_eq!(v["error"]["code"], "not_found", "{method} {path}: {body}");
        }
        let r = s.get("/pipelines/p/runs/1/search?query=%5Bab").await;
        assert_eq!(r.status(), 400);
        assert_eq!(code(r).await, "invalid_glob");
    });
}

#[test]
fn range_requests_delete_and_dedup() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    let w = d.path().join("w");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    write(&w, "big.bin", &data);
    let a = s.agent(&w, "p", 1, "j");
    let first: Value =
        serde_json::from_str(&a.ok(&["artifact", "upload", "--json", "big.bin"])).unwrap();
    assert_eq!(first["bytes_sent"], 3_000_000);
    // Same content in another run: nothing is sent again.
    let again: Value = serde_json::from_str(
        &s.agent(&w, "p", 2, "j")
            .ok(&["artifact", "upload", "--json", "big.bin"]),
    )
    .unwrap();
    assert_eq!(again["bytes_sent"], 0);
    assert_eq!(again["files"], 1);

    let files: Value =
        serde_json::from_str(&a.ok(&["artifact", "search", "big.bin", "--json"])).unwrap();
    let id = files[0]["id"].as_str().unwrap().to_string();
    let artifact = files[0]["artifact_id"].as_str().unwrap().to_string();
    rt().block_on(async {
        let get = |range: &'static str| {
            s.http()
                .get(s.api(&format!("/files/{id}/content")))
                .bearer_auth(&s.token)
                .header("range", range)
                .send()
        };
        let r = get("bytes=100-199").await.unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(r.headers()["content-range"], "bytes 100-199/3000000");
        assert_eq!(r.bytes().await.unwrap(), &data[100..200]);
        let r = get("bytes=-10").await.unwrap();
        assert_eq!(r.bytes().await.unwrap(), &data[data.len() - 10..]);
        let r = get("bytes=2999990-").await.unwrap();
        assert_eq!(r.bytes().await.unwrap().len(), 10);
        let r = get("bytes=5000000-").await.unwrap();
        assert_eq!(r.status(), 416);
        assert_eq!(r.headers()["content-range"], "bytes */3000000");
        let r = s.get(&format!("/files/{id}/content")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["x-checksum-sha256"],
            files[0]["sha256"].as_str().unwrap()
        );
        assert_eq!(r.bytes().await.unwrap(), &data[..]);

        let r = s
            .http()
            .delete(s.api(&format!("/artifacts/{artifact}")))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = s.get(&format!("/files/{id}/content")).await;
        assert_eq!(r.status(), 404);
    });
    let err = a.fails(&["artifact", "download", "big.bin", "out"]);
    assert!(err.contains("no files match"), "{err}");
}

fn api_requests(s: &Server) -> u64 {
    s.metric("satchel_api_requests_total")
}

#[test]
fn a_large_file_downloads_as_ranges_at_once() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    let w = d.path().join("w");
    // 40 MiB of distinct content: five pieces of 8 MiB.
    let mut data = vec![0u8; 40 * 1024 * 1024];
    for (i, c) in data.chunks_mut(8).enumerate() {
        c.copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    }
    write(&w, "big/a.bin", &data);
    let a = s.agent(&w, "p", 1, "j");
    a.ok(&["artifact", "upload", "big/a.bin"]);
    // One stream (the default on loopback), then pieces, asked for.
    let before = api_requests(&s);
    s.agent(&w, "p", 1, "j").env("SATCHEL_RANGES", "0").ok(&[
        "artifact",
        "download",
        "big/a.bin",
        "one",
    ]);
    let one_stream = api_requests(&s) - before;
    assert!(std::fs::read(w.join("one/big/a.bin")).unwrap() == data);
    let a = a.env("SATCHEL_RANGES", "1");
    let before = api_requests(&s);
    let v: Value =
        serde_json::from_str(&a.ok(&["artifact", "download", "--json", "big/a.bin", "out"]))
            .unwrap();
    assert_eq!(v["files"], 1);
    let used = api_requests(&s) - before;
    assert_eq!(
        used,
        one_stream - 1 + 5,
        "one stream took {one_stream} requests, pieces {used}: not five pieces"
    );
    assert!(std::fs::read(w.join("out/big/a.bin")).unwrap() == data);
    let leftovers: Vec<_> = std::fs::read_dir(w.join("out/big"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[test]
fn many_small_files_round_trip() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    let w = d.path().join("w");
    for i in 0..3000 {
        write(
            &w,
            &format!("many/{:02}/f{i}.txt", i % 37),
            format!("file number {i}").as_bytes(),
        );
    }
    let a = s.agent(&w, "p", 1, "j");
    // Manifest, one or two framed batches, finish: not one request per file.
    // (How long it takes is measured in bench/, not asserted here.)
    let before = api_requests(&s);
    let v: Value =
        serde_json::from_str(&a.ok(&["artifact", "upload", "--json", "many/**"])).unwrap();
    assert_eq!(v["files"], 3000);
    let used = api_requests(&s) - before;
    assert!(used <= 5, "uploading 3000 small files took {used} requests");
    let r = d.path().join("r");
    std::fs::create_dir_all(&r).unwrap();
    let v: Value = serde_json::from_str(
        &s.agent(&r, "p", 1, "k")
            .ok(&["artifact", "download", "--json", "many/**", "out"]),
    )
    .unwrap();
    assert_eq!(v["files"], 3000);
    assert!(
        api_requests(&s) - before - used <= 5,
        "downloading 3000 small files took too many requests"
    );
    for i in [0, 1234, 2999] {
        let got =
            std::fs::read_to_string(r.join(format!("out/many/{:02}/f{i}.txt", i % 37))).unwrap();
        assert_eq!(got, format!("file number {i}"));
    }
}

#[test]
fn restart_keeps_everything() {
    let d = tmp();
    let data = d.path().join("data");
    let w = d.path().join("w");
    write(&w, "keep/me.txt", b"persistent");
    let mut s = Server::start(&data);
    s.agent(&w, "p", 1, "j")
        .ok(&["artifact", "upload", "keep/*"]);
    let token = s.token.clone();
    s.stop();
    let s = Server::start(&data);
    assert_eq!(s.token, token, "admin token is kept");
    let r = d.path().join("r");
    std::fs::create_dir_all(&r).unwrap();
    s.agent(&r, "p", 1, "k")
        .ok(&["artifact", "download", "keep/me.txt", "."]);
    assert_eq!(std::fs::read(r.join("keep/me.txt")).unwrap(), b"persistent");
}

#[test]
fn kill_9_during_upload_leaves_no_partial_artifact() {
    let d = tmp();
    let data = d.path().join("data");
    let w = d.path().join("w");
    write(&w, "done/ok.txt", b"finished before the crash");
    let mut s = Server::start(&data);
    s.agent(&w, "p", 1, "early")
        .ok(&["artifact", "upload", "done/ok.txt"]);

    // A large upload (many MiB of distinct content) in flight when the server dies.
    let mut big = vec![0u8; 300 * 1024 * 1024];
    for (i, chunk) in big.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(i as u64).to_le_bytes()[..chunk.len()]);
    }
    write(&w, "huge/a.bin", &big);
    write(&w, "huge/small.txt", b"small companion");
    drop(big);
    let agent = s.agent(&w, "p", 1, "late");
    let mut cmd = std::process::Command::new(BIN);
    cmd.current_dir(&w)
        .env("SATCHEL_URL", &agent.url)
        .env("SATCHEL_TOKEN", &agent.token)
        .env("SATCHEL_PIPELINE", "p")
        .env("SATCHEL_RUN", "1")
        .env("SATCHEL_JOB", "late")
        .args(["artifact", "upload", "huge/*"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    // Wait until the server is writing the big blob, then kill it.
    let tmpdir = data.join("content/tmp");
    wait_until(
        || {
            std::fs::read_dir(&tmpdir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        },
        "the upload to start writing",
    );
    s.kill9();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the upload cannot have succeeded");

    let s = Server::start(&data);
    let r = d.path().join("r");
    std::fs::create_dir_all(&r).unwrap();
    let a = s.agent(&r, "p", 1, "check");
    let listed = a.ok(&["artifact", "search", "**"]);
    assert_eq!(
        listed.lines().count(),
        1,
        "only the finished file is visible: {listed}"
    );
    assert!(listed.starts_with("done/ok.txt"));
    a.ok(&["artifact", "download", "**", "out"]);
    assert_eq!(
        std::fs::read(r.join("out/done/ok.txt")).unwrap(),
        b"finished before the crash"
    );
    assert!(!r.join("out/huge").exists());
    // Leftover temp files were cleaned on start.
    assert_eq!(std::fs::read_dir(&tmpdir).unwrap().count(), 0);
    // The job can retry the upload and succeed.
    s.agent(&w, "p", 1, "late")
        .ok(&["artifact", "upload", "huge/*"]);
    assert_eq!(a.ok(&["artifact", "search", "**"]).lines().count(), 3);
    // And the store is consistent: everything finished reads back intact.
    assert!(a.ok(&["admin", "fsck"]).contains("no problems"));
}

/// Every list comes in cursor pages: following `next_cursor` page by page
/// adds up to the whole list, a search page never splits a path, and the
/// agent follows the pages itself (1,100 files is more than one default
/// page of 1,000). A bad limit or cursor is a 400.
#[test]
fn lists_come_in_cursor_pages_that_add_up_to_the_whole() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    let w = d.path().join("w");
    for i in 0..1_100 {
        write(
            &w,
            &format!("many/{:02}/{i:04}.txt", i % 7),
            format!("{i}").as_bytes(),
        );
    }
    s.agent(&w, "pages", 1, "a")
        .ok(&["artifact", "upload", "many/**"]);
    // The same paths from a second job: two matches per path.
    s.agent(&w, "pages", 1, "b")
        .ok(&["artifact", "upload", "many/03/**"]);
    let listed = s
        .agent(&w, "pages", 1, "c")
        .ok(&["artifact", "search", "**"]);
    let per_dir = (0..1_100).filter(|i| i % 7 == 3).count();
    assert_eq!(listed.lines().count(), 1_100 + per_dir, "{listed:.300}");
    s.agent(&w, "pages", 1, "c")
        .ok(&["artifact", "download", "many/**", "out"]);
    let got = walkdir(&w.join("out"));
    assert_eq!(got, 1_100, "every file downloaded");
    for run in 2..=5 {
        s.agent(&w, "pages", run, "a")
            .ok(&["artifact", "upload", "many/00/0000.txt"]);
    }
    rt().block_on(async {
        let all = |path: String| {
            let s = &s;
            async move {
                let mut pages: Vec<Value> = Vec::new();
                let mut url = path.clone();
                loop {
                    let r = s.get(&url).await;
                    assert_eq!(r.status(), 200, "{url}");
                    let v: Value = r.json().await.unwrap();
                    let next = v["next_cursor"].as_str().map(str::to_string);
                    pages.push(v);
                    match next {
                        Some(c) => url = format!("{path}&cursor={c}"),
                        None => return pages,
                    }
                }
            }
        };
        let pages = all("/pipelines/pages/runs/1/search?query=many/**&limit=50".into()).await;
        let mut paths: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for p in &pages {
            let files = p["files"].as_array().unwrap();
            let mine: std::collections::BTreeSet<&str> =
                files.iter().map(|f| f["path"].as_str().unwrap()).collect();
            for path in mine {
                assert!(seen.insert(path.to_string()), "{path} on two pages");
            }
            paths.extend(
                files
                    .iter()
                    .map(|f| f["path"].as_str().unwrap().to_string()),
            );
        }
        assert_eq!(paths.len(), 1_100 + per_dir);
        assert!(paths.windows(2).all(|w| w[0] <= w[1]), "sorted by path");
        assert!(pages.len() >= 1_100 / 51, "{} pages", pages.len());

        let runs = all("/pipelines/pages/runs?limit=2".into()).await;
        let numbers: Vec<u64> = runs
            .iter()
            .flat_map(|p| p["runs"].as_array().unwrap().clone())
            .map(|r| r["number"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, [5, 4, 3, 2, 1]);
        assert_eq!(runs.len(), 3);

        let arts = all("/pipelines/pages/runs/1/artifacts?limit=1".into()).await;
        assert_eq!(arts.len(), 2, "one artifact per page, two jobs");
        let id = arts[0]["artifacts"][0]["id"].as_str().unwrap().to_string();
        let files = all(format!("/artifacts/{id}?limit=300")).await;
        let n: usize = files
            .iter()
            .map(|p| p["files"].as_array().unwrap().len())
            .sum();
        assert_eq!((files.len(), n), (4, 1_100));

        for bad in [
            "/pipelines/pages/runs?limit=0",
            "/pipelines/pages/runs?limit=10001",
            "/pipelines/pages/runs?cursor=zz",
            "/pipelines/pages/runs/1/search?query=**&cursor=00",
            "/pipelines/pages/runs/1/artifacts?cursor=0",
            &format!("/artifacts/{id}?cursor=xyz"),
        ] {
            let r = s.get(bad).await;
            assert_eq!(r.status(), 400, "{bad}");
            assert_eq!(code(r).await, "bad_request", "{bad}");
        }
    });
}

fn walkdir(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            n += walkdir(&e.path());
        } else {
            n += 1;
        }
    }
    n
}

/// `/metrics`: requests by route and status with latency histograms,
/// bytes in and out, deduplicated bytes, storage figures and GC; the same
/// storage figures per pipeline in the API and the UI.
#[test]
fn metrics_count_routes_bytes_dedup_storage_and_gc() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    let src = d.path().join("src");
    write(&src, "out/a.bin", &noise(100 * 1024, 1));
    write(&src, "out/b.bin", &noise(50 * 1024, 2));
    for run in [1, 2] {
        s.agent(&src, "metered", run, "build")
            .ok(&["artifact", "upload", "out/*", "--name", "bins"]);
    }
    let dl = d.path().join("dl");
    std::fs::create_dir_all(&dl).unwrap();
    s.agent(&dl, "metered", 2, "test").ok(&[
        "artifact",
        "download",
        "out/a.bin",
        ".",
        "--job",
        "build",
    ]);
    rt().block_on(async {
        assert_eq!(s.get("/no/such/thing").await.status(), 404);
    });
    let m = s.metrics_text();
    let value = |name: &str| metric_in(&m, name);
    assert_eq!(
        value(r#"satchel_http_requests_total{method="POST",route="/api/v1/uploads",status="201"}"#),
        2
    );
    assert!(
        m.contains(r#"satchel_http_requests_total{method="GET",route="unmatched",status="404"} 1"#),
        "a path no route took is counted as unmatched, not by its path: {m}"
    );
    assert!(
        !m.contains("/no/such/thing"),
        "no path asked for is a label"
    );
    // The histogram's +Inf bucket and count agree, buckets never fall.
    let route = r#"method="POST",route="/api/v1/uploads""#;
    let count = value(&format!(
        "satchel_http_request_duration_seconds_count{{{route}}}"
    ));
    assert_eq!(count, 2);
    assert_eq!(
        value(&format!(
            "satchel_http_request_duration_seconds_bucket{{{route},le=\"+Inf\"}}"
        )),
        count
    );
    let buckets: Vec<u64> = m
        .lines()
        .filter(|l| {
            l.starts_with(&format!(
                "satchel_http_request_duration_seconds_bucket{{{route},"
            ))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(buckets.len(), 13);
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    // The first upload sent 150 KiB; the second sent nothing of it.
    let kib150 = 150 * 1024;
    assert!(value("satchel_http_received_bytes_total") >= kib150);
    assert_eq!(value("satchel_dedup_bytes_total"), kib150);
    assert!(value("satchel_http_sent_bytes_total") >= 100 * 1024);
    assert_eq!(value(r#"satchel_artifacts{state="finished"}"#), 2);
    assert_eq!(value("satchel_logical_bytes"), 2 * kib150);
    assert_eq!(value("satchel_content_bytes"), kib150);
    assert!(!m.contains("satchel_store_stored_bytes"), "no sweep yet");

    // The API's figures, per pipeline.
    let report: serde_json::Value =
        rt().block_on(async { s.get("/storage").await.json().await.unwrap() });
    let p = &report["pipelines"][0];
    assert_eq!(p["pipeline"], "metered");
    assert_eq!(p["logical_bytes"], 2 * kib150);
    assert_eq!(p["content_bytes"], kib150);
    assert_eq!(p["artifacts"]["finished"], 2);
    // And the UI's pipelines page.
    let home = rt().block_on(async {
        let b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let r = b
            .post(format!("{}/login", s.url))
            .form(&[("token", s.token.as_str()), ("next", "/")])
            .send()
            .await
            .unwrap();
        let cookie = r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        b.get(format!("{}/", s.url))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    for want in ["<td class=\"num\">300.0 KiB</td>", "150.0 KiB", "2.00×"] {
        assert!(home.contains(want), "{want} in {home}");
    }
    // A made-up method is one series, whatever its name.
    let (status, _) = s.raw_request("BREW", "/api/v1/pipelines");
    assert_eq!(status, 405);

    // Deleted and collected: figures follow the GC pass at once.
    for run in [1, 2] {
        s.delete_artifact(&s.artifact_id("metered", run, "bins"));
    }
    s.agent(d.path(), "metered", 3, "gc")
        .ok(&["admin", "gc", "--grace", "0s"]);
    // The pass marks the figures out of date; new ones follow at once, the
    // old served meanwhile.
    wait_until(
        || {
            s.metrics_text()
                .contains("satchel_artifacts{state=\"deleted\"} 2\n")
        },
        "storage figures after the GC pass",
    );
    let m = s.metrics_text();
    let value = |name: &str| metric_in(&m, name);
    assert_eq!(value("satchel_gc_passes_total"), 1);
    assert!(
        m.contains(r#"satchel_http_requests_total{method="other",route="/api/v1/pipelines",status="405"} 1"#),
        "{m}"
    );
    assert!(!m.contains("BREW"));
    // 150 KiB of content deleted, counted once. These files were stored
    // whole, deleted before the sweep: it freed no more than packs and
    // chunks would have held; what is left is the store's own.
    assert_eq!(
        value("satchel_gc_deleted_content_bytes_total"),
        kib150,
        "{m}"
    );
    assert!(value("satchel_gc_swept_bytes_total") < kib150, "{m}");
    assert_eq!(value(r#"satchel_artifacts{state="deleted"}"#), 2);
    assert_eq!(value("satchel_logical_bytes"), 0);
    assert_eq!(value("satchel_content_bytes"), 0);
    assert!(value("satchel_store_stored_bytes") < kib150, "{m}");
}
