//! End-to-end: requests that fail on the way, through a fault-injecting
//! proxy ([`faulty`]). Between the agent and the server: a 503 and
//! chunks collected between sending and assembling are sent again, and
//! the upload succeeds. Between the server and its object store (nginx
//! WebDAV): failures the store recovers from are retried and invisible;
//! a store that stays down answers 502 and records nothing; a full one
//! answers 507 naming the limit; and uploads work again once it is back.

mod common;
#[path = "common/faulty.rs"]
mod faulty;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use common::{noise, sha, write, Server, BIN};
use faulty::{Fault, Proxy};

const RETRY: &str = r#"{"error":{"code":"retry","message":"content this write relied on was being collected; retry"}}"#;

#[test]
fn the_agent_sends_again_what_a_503_or_a_collection_refused() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(&d.path().join("data"));
    let w = d.path().join("w");
    // v1 is on the server; v2 differs in one place, so it goes chunk by
    // chunk: only the chunks around the change are sent.
    let v1 = noise(20 << 20, 1);
    write(&w, "app.bin", &v1);
    s.agent(&w, "p", 1, "j")
        .ok(&["artifact", "upload", "--name", "app", "app.bin"]);
    let mut v2 = v1.clone();
    v2[10 << 20] ^= 1;
    write(&w, "app.bin", &v2);

    let (url, token) = (s.url.clone(), s.token.clone());
    let chunk_puts = Arc::new(AtomicUsize::new(0));
    let assembles = Arc::new(AtomicUsize::new(0));
    let (c, a) = (chunk_puts.clone(), assembles.clone());
    let stale = std::sync::atomic::AtomicBool::new(false);
    let proxy = Proxy::start(&s.url, move |method, path| {
        if method == "PUT" && path.contains("/chunks/") && c.fetch_add(1, SeqCst) == 0 {
            return Fault::Answer(503, RETRY);
        }
        let assemble = method == "POST" && path.ends_with("/assemble");
        if method == "POST" && path.ends_with("/chunks") {
            stale.store(false, SeqCst);
        }
        if assemble && (a.load(SeqCst) == 1 || stale.load(SeqCst)) {
            // Then a pack it relied on aged: the same assembly fails the
            // same way until the agent asks again which chunks to send.
            a.fetch_add(1, SeqCst);
            stale.store(true, SeqCst);
            return Fault::Answer(503, RETRY);
        }
        if assemble && a.fetch_add(1, SeqCst) == 0 {
            // GC with no grace while no file is being written takes the
            // chunks just sent: nothing names them yet.
            let out = std::process::Command::new(BIN)
                .args(["admin", "gc", "--grace", "0s", "--json"])
                .env("SATCHEL_URL", &url)
                .env("SATCHEL_TOKEN", &token)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert!(r["objects_deleted"].as_u64().unwrap() >= 1, "{r}");
        }
        Fault::Forward
    });
    let mut agent = s.agent(&w, "p", 2, "j");
    agent.url = proxy.url.clone();
    let out = agent.run(&["artifact", "upload", "--name", "app", "app.bin"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{:?}", proxy.seen());
    assert!(stderr.contains("trying again in 1s"), "{stderr}");
    assert!(
        stderr.contains("sending the missing chunks again"),
        "{stderr}"
    );
    assert_eq!(assembles.load(SeqCst), 3, "{:?}", proxy.seen());
    for status in [409, 503, 201] {
        let n = proxy.count("POST /api/v1/uploads/", status);
        assert_eq!(n, 1, "{status}: {:?}", proxy.seen());
    }
    let dl = d.path().join("dl");
    s.agent(&w, "p", 2, "j")
        .ok(&["artifact", "download", "app.bin", dl.to_str().unwrap()]);
    assert_eq!(sha(&std::fs::read(dl.join("app.bin")).unwrap()), sha(&v2));
}

/// Downloads whose answers break off half way (a large file's stream, a
/// batch of small files) are asked for again, and every file arrives
/// whole; nothing partial is left behind.
#[test]
fn a_download_cut_short_is_fetched_again() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(&d.path().join("data"));
    let w = d.path().join("w");
    let big = noise(20 << 20, 11);
    write(&w, "out/big.bin", &big);
    for i in 0..20 {
        write(&w, &format!("out/small-{i}.txt"), &noise(3_000, 100 + i));
    }
    s.agent(&w, "p", 1, "j")
        .ok(&["artifact", "upload", "--name", "out", "out/**"]);
    let (gets, batches) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (g, b) = (gets.clone(), batches.clone());
    let proxy = Proxy::start(&s.url, move |method, path| {
        if method == "GET" && path.ends_with("/content") && g.fetch_add(1, SeqCst) == 0 {
            return Fault::CutAfter(1 << 20);
        }
        if method == "POST" && path == "/api/v1/files/content" && b.fetch_add(1, SeqCst) == 0 {
            return Fault::CutAfter(10_000);
        }
        Fault::Forward
    });
    let mut agent = s.agent(&w, "p", 1, "j");
    agent.url = proxy.url.clone();
    let dl = d.path().join("dl");
    let out = agent.run(&["artifact", "download", "out/**", dl.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{:?}", proxy.seen());
    assert!(stderr.contains("trying again"), "{stderr}");
    assert_eq!(gets.load(SeqCst), 2, "{:?}", proxy.seen());
    assert_eq!(batches.load(SeqCst), 2, "{:?}", proxy.seen());
    assert_eq!(
        sha(&std::fs::read(dl.join("out/big.bin")).unwrap()),
        sha(&big)
    );
    for i in 0..20 {
        let got = std::fs::read(dl.join(format!("out/small-{i}.txt"))).unwrap();
        assert_eq!(sha(&got), sha(&noise(3_000, 100 + i)));
    }
    assert_eq!(std::fs::read_dir(dl.join("out")).unwrap().count(), 21);
}

/// The same for one piece of a large file downloaded in pieces.
#[test]
fn a_piece_cut_short_is_fetched_again() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(&d.path().join("data"));
    let w = d.path().join("w");
    let big = noise(40 << 20, 12);
    write(&w, "big.bin", &big);
    s.agent(&w, "p", 1, "j")
        .ok(&["artifact", "upload", "--name", "big", "big.bin"]);
    let gets = Arc::new(AtomicUsize::new(0));
    let g = gets.clone();
    let proxy = Proxy::start(&s.url, move |method, path| {
        if method == "GET" && path.ends_with("/content") && g.fetch_add(1, SeqCst) == 1 {
            return Fault::CutAfter(1 << 20);
        }
        Fault::Forward
    });
    let mut agent = s.agent(&w, "p", 1, "j").env("SATCHEL_RANGES", "1");
    agent.url = proxy.url.clone();
    let dl = d.path().join("dl");
    let out = agent.run(&["artifact", "download", "big.bin", dl.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{:?}", proxy.seen());
    assert!(stderr.contains("trying again"), "{stderr}");
    assert!(!stderr.contains("ignored a Range"), "{stderr}");
    assert_eq!(sha(&std::fs::read(dl.join("big.bin")).unwrap()), sha(&big));
    assert_eq!(std::fs::read_dir(&dl).unwrap().count(), 1);
}

/// A proxy that drops `Range` headers: the server answers each piece of
/// a large download with the whole file; the agent notices at the first
/// piece and fetches each large file as one stream instead.
#[test]
fn a_proxy_that_ignores_ranges_makes_the_agent_fall_back_to_one_stream() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(&d.path().join("data"));
    let w = d.path().join("w");
    let big = noise(40 << 20, 7);
    write(&w, "big.bin", &big);
    s.agent(&w, "p", 1, "j")
        .ok(&["artifact", "upload", "--name", "big", "big.bin"]);
    let proxy = Proxy::start(&s.url, |_, _| Fault::ForwardWithout("range"));
    let mut agent = s.agent(&w, "p", 1, "j").env("SATCHEL_RANGES", "1");
    agent.url = proxy.url.clone();
    let dl = d.path().join("dl");
    let out = agent.run(&["artifact", "download", "big.bin", dl.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("ignored a Range request"), "{stderr}");
    assert_eq!(sha(&std::fs::read(dl.join("big.bin")).unwrap()), sha(&big));
    let leftovers: Vec<_> = std::fs::read_dir(&dl).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    // Pieces were asked for (answered whole), then one stream.
    let gets = proxy.count("GET /api/v1/files/", 200);
    assert!(gets >= 2, "{:?}", proxy.seen());
}

/// How the proxy in front of the object store behaves.
const NORMAL: usize = 0;
const FLAKY: usize = 1;
const DOWN: usize = 2;
const FULL: usize = 3;

#[test]
fn an_object_store_that_fails_is_retried_then_answered_502_or_507_and_nothing_is_recorded() {
    let Some(webdav) = satchel_store::conformance::remote_base("SATCHEL_TEST_WEBDAV_URL") else {
        return;
    };
    let base = url::Url::parse(&webdav).unwrap();
    let upstream = format!(
        "http://{}:{}",
        base.host_str().unwrap(),
        base.port().unwrap_or(80)
    );
    let mode = Arc::new(AtomicUsize::new(NORMAL));
    let writes = Arc::new(AtomicUsize::new(0));
    let (m, n) = (mode.clone(), writes.clone());
    let proxy = Proxy::start(&upstream, move |method, _| {
        let write = matches!(method, "PUT" | "MKCOL" | "DELETE");
        match m.load(SeqCst) {
            // Every third write fails once; the server's retry succeeds.
            FLAKY if write && n.fetch_add(1, SeqCst) % 3 == 0 => {
                Fault::Answer(503, r#"{"error":"slow down"}"#)
            }
            DOWN => Fault::Answer(503, r#"{"error":"unavailable"}"#),
            FULL if method == "PUT" => Fault::Answer(507, r#"{"error":"insufficient storage"}"#),
            _ => Fault::Forward,
        }
    });
    let store = format!(
        "{}{}/faults-{}",
        proxy.url,
        base.path().trim_end_matches('/'),
        std::process::id()
    );
    let d = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        &d.path().join("data"),
        &[("SATCHEL_STORE", &store), ("SATCHEL_STORE_RETRY_SECS", "3")],
    );
    let w = d.path().join("w");
    let agent = s.agent(&w, "faults", 1, "j");
    let upload = |name: &str, size: usize, seed: u64| {
        let body = noise(size, seed);
        write(&w, name, &body);
        (
            agent.run(&["artifact", "upload", "--name", name, name]),
            body,
        )
    };

    // Flaky: writes fail now and then; nobody notices.
    mode.store(FLAKY, SeqCst);
    let (out, big) = upload("big.bin", 30 << 20, 1);
    assert!(out.status.success(), "{out:?}");
    let (out, small) = upload("small.bin", 5_000, 2);
    assert!(out.status.success(), "{out:?}");
    assert!(proxy.count("PUT", 503) >= 1, "{:?}", proxy.seen());

    // Down: the upload fails with 502 after the server's retries, and
    // nothing of it is recorded.
    mode.store(DOWN, SeqCst);
    let started = std::time::Instant::now();
    let (out, _) = upload("down.bin", 3 << 20, 3);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("object store failed"), "{err}");
    assert!(!err.contains(&proxy.url), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "a store that is down held the upload for {:?}",
        started.elapsed()
    );
    let answered = |status: &str| {
        s.metrics_text()
            .lines()
            .filter(|l| l.contains(&format!("status=\"{status}\"")))
            .count()
    };
    assert!(answered("502") >= 1, "{}", s.metrics_text());

    // Full: 507 naming the limit, never the store's address, and at once
    // (not after the 3 s of retries a server error gets).
    mode.store(FULL, SeqCst);
    let started = std::time::Instant::now();
    let (out, _) = upload("full.bin", 3 << 20, 4);
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        took < std::time::Duration::from_millis(2500),
        "a full store was retried: {took:?}"
    );
    assert!(err.contains("no space left"), "{err}");
    assert!(!err.contains(&proxy.url), "{err}");

    // Back: uploads work, what failed was never recorded, what succeeded
    // reads back whole.
    mode.store(NORMAL, SeqCst);
    let (out, again) = upload("again.bin", 3 << 20, 5);
    assert!(out.status.success(), "{out:?}");
    let listed = agent.ok(&["artifact", "search", "**"]);
    for name in ["big.bin", "small.bin", "again.bin"] {
        assert!(listed.contains(name), "{listed}");
    }
    for name in ["down.bin", "full.bin"] {
        assert!(
            !listed.contains(name),
            "a failed upload was recorded: {listed}"
        );
    }
    let dl = d.path().join("dl");
    for (name, body) in [
        ("big.bin", &big),
        ("small.bin", &small),
        ("again.bin", &again),
    ] {
        agent.ok(&["artifact", "download", name, dl.to_str().unwrap()]);
        assert_eq!(sha(&std::fs::read(dl.join(name)).unwrap()), sha(body));
    }
    assert!(agent.ok(&["admin", "fsck"]).contains("no problems"));
}
