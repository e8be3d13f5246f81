//! End-to-end: the server's limits (`satchel serve --max-…`, timeouts,
//! failed authentications per address) against the real binary. Each is
//! a clear 4xx (or a closed connection, for headers that never finish)
//! and stores nothing.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{code, rt, Server};
use serde_json::{json, Value};

fn file(path: &str, n: u8) -> Value {
    json!({"path": path, "size": 1, "sha256": format!("{n:02x}").repeat(32)})
}

#[test]
fn sizes_counts_and_quotas_are_refused_whole() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        &d.path().join("data"),
        &[
            ("SATCHEL_MAX_FILES_PER_UPLOAD", "3"),
            ("SATCHEL_MAX_PATH_BYTES", "20"),
            ("SATCHEL_MAX_MANIFEST_BYTES", "2048"),
            ("SATCHEL_MAX_ARTIFACTS_PER_RUN", "2"),
            ("SATCHEL_MAX_FILES_PER_ARTIFACT", "4"),
        ],
    );
    rt().block_on(async {
        let post = |name: &str, files: Vec<Value>| {
            let body = json!({
                "context": {"pipeline": "lim", "run": 1, "job": "j"},
                "name": name,
                "files": files,
            });
            s.http()
                .post(s.api("/uploads"))
                .bearer_auth(&s.token)
                .json(&body)
                .send()
        };
        let r = post("a", (0..4).map(|i| file(&format!("f{i}"), i)).collect()).await.unwrap();
        assert_eq!((r.status().as_u16(), code(r).await.as_str()), (413, "too_large"));
        let r = post("a", vec![file("a-path-longer-than-20-bytes", 1)]).await.unwrap();
        assert_eq!((r.status().as_u16(), code(r).await.as_str()), (400, "invalid_path"));
        let padded = vec![json!({"path": "p", "size": 1, "sha256": "ab".repeat(32), "glob": "x".repeat(3000)})];
        let r = post("a", padded).await.unwrap();
        assert_eq!(r.status(), 413, "a manifest over 2048 bytes");
        assert_eq!(s.get("/pipelines/lim/runs").await.status(), 404, "nothing was created");

        // Quotas: 4 files per artifact over several uploads, 2 artifacts per run.
        for (i, n) in [(0u8, 3), (3, 1)] {
            let files = (i..i + n).map(|k| file(&format!("q{k}"), k)).collect();
            assert_eq!(post("a", files).await.unwrap().status(), 201);
        }
        let r = post("a", vec![file("q9", 9)]).await.unwrap();
        assert_eq!((r.status().as_u16(), code(r).await.as_str()), (409, "limit_exceeded"));
        assert_eq!(post("b", vec![file("b", 1)]).await.unwrap().status(), 201);
        let r = post("c", vec![file("c", 1)]).await.unwrap();
        assert_eq!(r.status(), 409);
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("--max-artifacts-per-run"), "{v}");
        let r = s
            .http()
            .post(s.api("/artifacts"))
            .bearer_auth(&s.token)
            .json(&json!({"context": {"pipeline": "lim", "run": 1, "job": "j"}, "name": "img", "image": "x/y:1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409, "typed artifacts count too");
        let arts: Value = s.get("/pipelines/lim/runs/1/artifacts").await.json().await.unwrap();
        let names: Vec<&str> = arts["artifacts"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
        assert!(!names.contains(&"c") && !names.contains(&"img"), "{names:?}");
    });
}

/// A raw connection to the server with a read timeout.
fn connect(s: &Server) -> std::net::TcpStream {
    let c = std::net::TcpStream::connect(s.url.strip_prefix("http://").unwrap()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    c
}

#[test]
fn stalled_headers_and_bodies_are_cut_off() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        &d.path().join("data"),
        &[
            ("SATCHEL_HEADER_TIMEOUT", "1"),
            ("SATCHEL_BODY_IDLE_TIMEOUT", "1"),
        ],
    );
    // Headers that never end: the connection is closed.
    let mut c = connect(&s);
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let read = c.read_to_end(&mut buf);
    assert!(
        read.is_ok(),
        "the server kept a stalled connection open: {read:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(10));

    // A body that stops: a 400 naming the timeout, and nothing stored.
    let mut c = connect(&s);
    write!(
        c,
        "POST /api/v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{{\"context\":",
        s.token
    )
    .unwrap();
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("sent nothing for 1 s"), "{answer}");

    // A blob body that stops mid-way.
    let plan: Value = rt().block_on(async {
        s.http()
            .post(s.api("/uploads"))
            .bearer_auth(&s.token)
            .json(
                &json!({"context": {"pipeline": "idle", "run": 1, "job": "j"},
                          "files": [{"path": "f", "size": 1000, "sha256": "ab".repeat(32)}]}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let mut c = connect(&s);
    write!(
        c,
        "PUT /api/v1/uploads/{}/blobs/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 1000\r\n\r\nonly a little",
        plan["upload_id"].as_str().unwrap(),
        "ab".repeat(32),
        s.token
    )
    .unwrap();
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[test]
fn failed_authentications_from_one_address_get_429() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        &d.path().join("data"),
        &[("SATCHEL_MAX_AUTH_FAILURES", "3")],
    );
    rt().block_on(async {
        let with = |token: &str| {
            s.http()
                .get(s.api("/pipelines/p/runs"))
                .bearer_auth(token)
                .send()
        };
        assert_eq!(
            with(&s.token).await.unwrap().status(),
            404,
            "a valid token works"
        );
        let bare = s
            .http()
            .get(s.api("/pipelines/p/runs"))
            .send()
            .await
            .unwrap();
        assert_eq!(bare.status(), 401, "no token at all is not a guess");
        for _ in 0..3 {
            assert_eq!(with("wrong").await.unwrap().status(), 401);
        }
        let r = with("wrong").await.unwrap();
        assert_eq!(r.status(), 429);
        let wait: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
        assert_eq!(code(r).await, "too_many_failures");
        assert_eq!(
            with(&s.token).await.unwrap().status(),
            404,
            "a valid token from the same address (a CI job behind the same NAT) still works"
        );
        assert_eq!(with("wrong again").await.unwrap().status(), 429);
        let metrics = s
            .http()
            .get(format!("{}/metrics", s.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("satchel_auth_failures_total 3\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("satchel_auth_throttled_total 2\n"),
            "{metrics}"
        );
        let health = s
            .http()
            .get(format!("{}/healthz", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200, "outside the API nothing changes");
    });
}
