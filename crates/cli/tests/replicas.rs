//! Two `satchel serve` replicas on one PostgreSQL database and one S3
//! bucket (Garage), both from scripts/services.sh: jobs talking to
//! different replicas see one service.

mod common;
use common::*;

use std::path::Path;

/// Two replicas sharing a fresh database and a fresh bucket prefix, and
/// one admin token.
struct Replicas {
    a: Server,
    b: Server,
    dir: tempfile::TempDir,
}

impl Replicas {
    fn start() -> Option<Replicas> {
        Replicas::start_with(&[])
    }

    /// As [`Replicas::start`], with more environment for both servers.
    fn start_with(extra: &[(&str, &str)]) -> Option<Replicas> {
        let pg = satchel_store::conformance::remote_base("SATCHEL_TEST_POSTGRES_URL")?;
        let s3 = satchel_store::conformance::remote_base("SATCHEL_TEST_S3_URL")?;
        let db = rt()
            .block_on(satchel_db::postgres::create_test_database(&pg))
            .unwrap();
        let prefix = format!("replicas-{}", satchel_model::id::random_hex(6));
        let store = match s3.split_once('?') {
            Some((u, q)) => format!("{}/{prefix}?{q}", u.trim_end_matches('/')),
            None => format!("{}/{prefix}", s3.trim_end_matches('/')),
        };
        let token = satchel_model::id::random_hex(24);
        let mut env = vec![
            ("SATCHEL_DATABASE", db.as_str()),
            ("SATCHEL_STORE", store.as_str()),
            ("SATCHEL_ADMIN_TOKEN", token.as_str()),
        ];
        env.extend_from_slice(extra);
        let dir = tempfile::tempdir().unwrap();
        let a = Server::start_with(&dir.path().join("a"), &env);
        let b = Server::start_with(&dir.path().join("b"), &env);
        Some(Replicas { a, b, dir })
    }

    /// A fresh working directory.
    fn work(&self, name: &str) -> std::path::PathBuf {
        let w = self.dir.path().join("work").join(name);
        std::fs::create_dir_all(&w).unwrap();
        w
    }
}

fn read(dir: &Path, rel: &str) -> Vec<u8> {
    std::fs::read(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The spine scenario with every job on another replica than the one
/// before: two jobs upload, a third downloads both; the same content is
/// never sent twice; a literal query matching two jobs is ambiguous; a
/// retried attempt supersedes the first.
#[test]
fn jobs_on_different_replicas_see_one_service() {
    let Some(r) = Replicas::start() else { return };
    let (w1, w2, w3) = (r.work("build"), r.work("test"), r.work("deploy"));
    let big: Vec<u8> = (0..6 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write(&w1, "dist/app.bin", &big);
    write(&w1, "logs/build.log", b"built");
    write(&w2, "report.json", b"{\"ok\":true}");

    r.a.agent(&w1, "web", 1, "build")
        .ok(&["artifact", "upload", "dist/**", "logs/*.log"]);
    r.b.agent(&w2, "web", 1, "test")
        .ok(&["artifact", "upload", "report.json"]);
    // Visible through the other replica as soon as the upload returned.
    let deploy = r.b.agent(&w3, "web", 1, "deploy");
    let listed = deploy.ok(&["artifact", "search", "**"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    deploy.ok(&["artifact", "download", "**", "out"]);
    assert!(read(&w3, "out/dist/app.bin") == big);
    assert_eq!(read(&w3, "out/logs/build.log"), b"built");
    assert_eq!(read(&w3, "out/report.json"), b"{\"ok\":true}");

    // Content stored through A is not sent again through B.
    let again: serde_json::Value = serde_json::from_str(
        &r.b.agent(&w1, "web", 2, "build")
            .ok(&["artifact", "upload", "--json", "dist/**"]),
    )
    .unwrap();
    assert_eq!(
        again["bytes_sent"], 0,
        "deduplicated across replicas: {again}"
    );

    // Ambiguity, whichever replica the jobs used.
    for (job, server) in [("linux", &r.a), ("mac", &r.b)] {
        let w = r.work(job);
        write(&w, "pkg/app.tar", job.as_bytes());
        server
            .agent(&w, "rel", 1, job)
            .ok(&["artifact", "upload", "pkg/app.tar"]);
    }
    let w = r.work("release");
    let err =
        r.a.agent(&w, "rel", 1, "release")
            .fails(&["artifact", "download", "pkg/app.tar", "out"]);
    assert!(
        err.contains("multiple files match query `pkg/app.tar`"),
        "{err}"
    );
    r.b.agent(&w, "rel", 1, "release").ok(&[
        "artifact",
        "download",
        "pkg/app.tar",
        "out",
        "--job",
        "mac",
    ]);
    assert_eq!(read(&w, "out/pkg/app.tar"), b"mac");

    // A retry through B supersedes the first attempt made through A.
    let w = r.work("flaky");
    write(&w, "result.txt", b"attempt one");
    r.a.agent(&w, "ci", 3, "tests")
        .ok(&["artifact", "upload", "result.txt"]);
    write(&w, "result.txt", b"attempt two");
    r.b.agent(&w, "ci", 3, "tests")
        .env("SATCHEL_ATTEMPT", "2")
        .ok(&["artifact", "upload", "result.txt"]);
    let w = r.work("report");
    r.a.agent(&w, "ci", 3, "report")
        .ok(&["artifact", "download", "result.txt", "out"]);
    assert_eq!(read(&w, "out/result.txt"), b"attempt two");

    // Both replicas agree the store is whole.
    assert!(r
        .a
        .agent(&w, "ci", 3, "x")
        .ok(&["admin", "fsck"])
        .contains("no problems"));
}

/// Two jobs publishing one artifact name at the same moment, one through
/// each replica: exactly one wins and the other is told why, 50 times.
#[test]
fn replicas_racing_for_one_name_have_one_winner() {
    let Some(r) = Replicas::start() else { return };
    let w = r.work("race");
    write(&w, "out/file.txt", b"same bytes");
    write(&w, "setup.txt", b"setup");
    for run in 1..=50u64 {
        // The run exists first: writers creating a run queue on its unique
        // index, which would hide a missing name lock.
        r.a.agent(&w, "race", run, "setup")
            .ok(&["artifact", "upload", "setup.txt"]);
        let (x, y) = (
            r.a.agent(&w, "race", run, "left"),
            r.b.agent(&w, "race", run, "right"),
        );
        let publish = ["artifact", "publish", "out", "--name", "shared", "--quiet"];
        let (ox, oy) = std::thread::scope(|s| {
            let hx = s.spawn(|| x.run(&publish));
            let hy = s.spawn(|| y.run(&publish));
            (hx.join().unwrap(), hy.join().unwrap())
        });
        let won = [&ox, &oy].iter().filter(|o| o.status.success()).count();
        assert_eq!(won, 1, "run {run}: one winner ({ox:?}, {oy:?})");
        let loser = if ox.status.success() { &oy } else { &ox };
        let err = String::from_utf8_lossy(&loser.stderr);
        assert!(
            err.contains("artifact \"shared\" already exists in run"),
            "run {run}: the loser is told why: {err}"
        );
    }
}

/// Replica A dies (`kill -9`) in the middle of 20 uploads while B keeps
/// serving; each interrupted upload, retried through B, succeeds, and the
/// store is whole.
#[test]
fn uploads_interrupted_by_a_dead_replica_finish_through_the_other() {
    let Some(mut r) = Replicas::start() else {
        return;
    };
    let jobs: Vec<(String, std::path::PathBuf, Vec<u8>)> = (0..20u32)
        .map(|i| {
            let w = r.work(&format!("job-{i}"));
            let data: Vec<u8> = (0..3 * 1024 * 1024u32)
                .map(|k| (k.wrapping_mul(2_654_435_761).wrapping_add(i) >> 11) as u8)
                .collect();
            write(&w, "out.bin", &data);
            (format!("job-{i}"), w, data)
        })
        .collect();
    let agents: Vec<Agent> = jobs
        .iter()
        .map(|(job, w, _)| r.a.agent(w, "crash", 1, job))
        .collect();
    let results = std::thread::scope(|s| {
        let uploads: Vec<_> = agents
            .iter()
            .map(|a| s.spawn(|| a.run(&["artifact", "upload", "--quiet", "out.bin"])))
            .collect();
        // Some content is on its way through A: kill it now.
        wait_until(
            || r.a.metric("satchel_blobs_being_written") > 0,
            "an upload in flight on replica A",
        );
        r.a.kill9();
        uploads
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let failed = results.iter().filter(|o| !o.status.success()).count();
    assert!(failed > 0, "the kill interrupted some uploads");
    // B serves throughout, and the retries through it succeed.
    for (job, w, _) in &jobs {
        r.b.agent(w, "crash", 1, job)
            .ok(&["artifact", "upload", "--quiet", "out.bin"]);
    }
    for (job, _, data) in &jobs {
        let out = r.work(&format!("check-{job}"));
        r.b.agent(&out, "crash", 1, "check")
            .ok(&["artifact", "download", "out.bin", "got", "--job", job]);
        assert!(read(&out, "got/out.bin") == *data, "{job}'s bytes");
    }
    let w = r.work("fsck");
    assert!(r
        .b
        .agent(&w, "crash", 1, "x")
        .ok(&["admin", "fsck"])
        .contains("no problems"));
}

/// `/readyz` answers 200 while the database answers and 503 once it is
/// gone; `/healthz` stays 200 (the process is up).
#[test]
fn readyz_follows_the_database() {
    let Some(pg) = satchel_store::conformance::remote_base("SATCHEL_TEST_POSTGRES_URL") else {
        return;
    };
    let rt = rt();
    let db = rt
        .block_on(satchel_db::postgres::create_test_database(&pg))
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let s = Server::start_with(&d.path().join("data"), &[("SATCHEL_DATABASE", &db)]);
    let status = |path: &str| {
        rt.block_on(async {
            let r = s
                .http()
                .get(format!("{}{path}", s.url))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    assert_eq!(status("/readyz"), (200, "ready\n".to_string()));
    rt.block_on(satchel_db::postgres::drop_test_database(&pg, &db))
        .unwrap();
    let (code, body) = status("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("metadata database unavailable"), "{body}");
    assert_eq!(status("/healthz").0, 200);
}

/// GC on replica A racing dedup uploads on replica B: the blob-write gate
/// is in the database, so A skips what B is storing (see
/// `common::gc_races_dedup_uploads`).
#[test]
fn gc_on_one_replica_racing_uploads_on_another_never_loses_a_byte() {
    let Some(r) = Replicas::start_with(&[("SATCHEL_CHUNK_REFRESH_SECS", "5")]) else {
        return;
    };
    gc_races_dedup_uploads(&r.a, &r.b);
}

/// `satchel admin migrate` moves a populated embedded data directory into
/// PostgreSQL and a bucket; a server on those serves the same artifacts,
/// packages and runs, fsck is clean, and a second migration into the same
/// database is refused.
#[test]
fn admin_migrate_moves_an_embedded_data_dir_into_postgres_and_a_bucket() {
    let Some(pg) = satchel_store::conformance::remote_base("SATCHEL_TEST_POSTGRES_URL") else {
        return;
    };
    let Some(s3) = satchel_store::conformance::remote_base("SATCHEL_TEST_S3_URL") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let old = d.path().join("old");
    let w = d.path().join("w");
    let big = noise(2 * 1024 * 1024 + 5, 9);
    write(&w, "dist/app.bin", &big);
    write(&w, "dist/notes.txt", b"notes");
    for i in 0..30 {
        write(
            &w,
            &format!("small/{i}.txt"),
            format!("small {i}").as_bytes(),
        );
    }
    let mut s = Server::start(&old);
    let a = s.agent(&w, "web", 1, "build");
    a.ok(&["artifact", "upload", "dist/**", "small/**"]);
    a.ok(&[
        "artifact", "publish", "dist", "--name", "release", "--quiet",
    ]);
    a.ok(&["promote", "release", "--to", "apps/web@1.0"]);
    a.ok(&["promote", "release", "--to", "apps/web@1.1"]);
    s.agent(&w, "web", 2, "build")
        .env("SATCHEL_ATTEMPT", "2")
        .ok(&["artifact", "upload", "dist/notes.txt"]);
    let before = a.ok(&["artifact", "search", "**", "--include-retried-jobs"]);
    let packages = a.ok(&["package", "list", "apps/web"]);
    s.stop();

    let db = rt()
        .block_on(satchel_db::postgres::create_test_database(&pg))
        .unwrap();
    let prefix = format!("migrate-{}", satchel_model::id::random_hex(6));
    let store = match s3.split_once('?') {
        Some((u, q)) => format!("{}/{prefix}?{q}", u.trim_end_matches('/')),
        None => format!("{}/{prefix}", s3.trim_end_matches('/')),
    };
    let migrate = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["admin", "migrate", "--data-dir"])
            .arg(&old)
            .args(["--to", &db, "--to-store", &store])
            .args(extra);
        cmd.output().unwrap()
    };
    let out = migrate(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("files: 35 rows"), "{summary}");
    assert!(
        !summary.contains("satchel-test-password"),
        "no password in output: {summary}"
    );

    let token = satchel_model::id::random_hex(24);
    let new = Server::start_with(
        &d.path().join("new"),
        &[
            ("SATCHEL_DATABASE", &db),
            ("SATCHEL_STORE", &store),
            ("SATCHEL_ADMIN_TOKEN", &token),
        ],
    );
    let b = new.agent(&w, "web", 1, "deploy");
    assert_eq!(
        b.ok(&["artifact", "search", "**", "--include-retried-jobs"]),
        before,
        "the same files, producers and times"
    );
    let r = d.path().join("r");
    std::fs::create_dir_all(&r).unwrap();
    let b = new.agent(&r, "web", 1, "deploy");
    b.ok(&["artifact", "download", "**", "out"]);
    assert!(std::fs::read(r.join("out/dist/app.bin")).unwrap() == big);
    assert_eq!(
        std::fs::read(r.join("out/small/7.txt")).unwrap(),
        b"small 7"
    );
    assert_eq!(
        b.ok(&["package", "list", "apps/web"]),
        packages,
        "versions, newest first"
    );
    b.ok(&["package", "download", "apps/web@latest", "pkg", "--quiet"]);
    assert!(std::fs::read(r.join("pkg/app.bin")).unwrap() == big);
    assert!(b.ok(&["admin", "fsck"]).contains("no problems"));
    // Nothing went to the new data directory's own disk.
    assert!(!d.path().join("new/content").exists());

    let again = migrate(&[]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("not empty"), "{err}");
}

/// Replicas share what makes a token valid: a runtime token minted on one
/// works on the other (one signing secret in the database), and a token
/// revoked through one is refused by the other on the next request.
#[test]
fn tokens_issued_or_revoked_on_one_replica_hold_on_the_other() {
    let Some(r) = Replicas::start() else { return };
    let w = r.work("tokens");
    write(&w, "a.txt", b"a");
    r.a.agent(&w, "app", 1, "build")
        .ok(&["artifact", "upload", "a.txt"]);
    rt().block_on(async {
        let http = reqwest::Client::new();
        let minted: serde_json::Value = http
            .post(r.a.api("/gha/tokens"))
            .bearer_auth(&r.a.token)
            .json(&serde_json::json!({"pipeline": "app", "run": 1, "job": "build"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let runtime = minted["token"].as_str().unwrap();
        let list = http
            .post(format!(
                "{}/twirp/github.actions.results.api.v1.ArtifactService/ListArtifacts",
                r.b.url
            ))
            .bearer_auth(runtime)
            .json(
                &serde_json::json!({"workflow_run_backend_id": "satchel.app.1",
                                      "workflow_job_run_backend_id": "build"}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(list.status(), 200, "{}", list.text().await.unwrap());
    });
    let created: serde_json::Value = serde_json::from_str(
        &r.a.agent(&w, "app", 1, "build")
            .ok(&["admin", "token", "create", "--scope", "read", "--json"]),
    )
    .unwrap();
    let (id, secret) = (
        created["id"].as_str().unwrap(),
        created["token"].as_str().unwrap(),
    );
    let on_b =
        r.b.agent(&w, "app", 1, "build")
            .env("SATCHEL_TOKEN", secret);
    on_b.ok(&["artifact", "search", "**"]);
    r.a.agent(&w, "app", 1, "build")
        .ok(&["admin", "token", "revoke", id]);
    let e = on_b.fails(&["artifact", "search", "**"]);
    assert!(e.contains("revoked"), "{e}");
}

/// Periodic GC (and retention) runs on one replica at a time, under a
/// lease in the shared database; when that replica dies, another takes
/// the work over once the lease expires.
#[test]
fn periodic_gc_runs_on_one_replica_and_moves_when_it_dies() {
    let Some(mut r) = Replicas::start_with(&[("SATCHEL_GC_EVERY_SECS", "1")]) else {
        return;
    };
    let passes = |s: &Server| s.metric("satchel_gc_passes_total");
    wait_up_to(30, || passes(&r.a) + passes(&r.b) >= 4, "four GC passes");
    let (pa, pb) = (passes(&r.a), passes(&r.b));
    assert!(
        pa == 0 || pb == 0,
        "both replicas ran GC: {pa} and {pb} passes"
    );
    let (leader, other) = if pa > 0 {
        (&mut r.a, &r.b)
    } else {
        (&mut r.b, &r.a)
    };
    assert_eq!(
        (
            leader.metric("satchel_gc_leader"),
            other.metric("satchel_gc_leader")
        ),
        (1, 0)
    );
    leader.kill9();
    wait_up_to(
        30,
        || passes(other) > 0,
        "the other replica to take GC over",
    );
    assert_eq!(other.metric("satchel_gc_leader"), 1);
}

/// A GitHub Actions upload whose requests land on different replicas, as
/// behind a load balancer without sticky sessions: created through A,
/// its blocks sent to A and B, its block list committed through B, a GC
/// with no grace run on B before the finalize through A; then listed and
/// downloaded through B. Before uploads lived in the database, B answered
/// 404 to the first block it was sent.
#[test]
fn a_github_actions_upload_spread_over_replicas_is_one_upload() {
    let Some(r) = Replicas::start() else {
        return;
    };
    let (url_a, token) = mint(&r.a, "build", &[]);
    let url_b = format!("{}/", r.b.url);
    let on_b = |u: &str| u.replacen(&r.a.url, &r.b.url, 1);
    let body = noise(3 * 1024 * 1024 + 17, 7);
    let hash = format!("sha256:{}", sha(&body));
    let http = r.a.http();
    rt().block_on(async {
        let (st, v) = twirp(&url_a, &token, "CreateArtifact", ids_with(serde_json::json!({"name": "spread", "version": 4}))).await;
        assert_eq!(st, 200, "{v}");
        let signed = v["signed_upload_url"].as_str().unwrap().to_string();
        assert!(signed.starts_with(&r.a.url), "{signed}");
        let parts = [
            ("QUFB", &body[..1 << 20], signed.clone()),
            ("QkJC", &body[1 << 20..2 << 20], on_b(&signed)),
            ("Q0ND", &body[2 << 20..], signed.clone()),
        ];
        for (id, part, url) in parts {
            let r = http
                .put(format!("{url}&comp=block&blockid={id}"))
                .body(part.to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "block {id} through {url}");
        }
        let r = http
            .put(format!("{}&comp=blocklist", on_b(&signed)))
            .body("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList><Latest>QUFB</Latest><Latest>QkJC</Latest><Latest>Q0ND</Latest></BlockList>")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "the block list through B");
    });
    assert_eq!(r.b.metric("satchel_gha_uploads"), 1, "B sees A's upload");
    // Only the blocks go, dropped at the commit: exactly the body's bytes
    // (over more than one pass if A's announcements, ended in the
    // background, are still in the database at the first).
    let w = r.work("gc");
    let mut freed = 0;
    for _ in 0..50 {
        let gc =
            r.b.agent(&w, "gh", 1, "x")
                .ok(&["admin", "gc", "--grace", "0", "--json"]);
        let gc: serde_json::Value = serde_json::from_str(&gc).unwrap();
        freed += gc["bytes_freed"].as_u64().unwrap();
        if freed >= body.len() as u64 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(freed, body.len() as u64, "GC freed other than the blocks");
    rt().block_on(async {
        let (st, v) = twirp(
            &url_a,
            &token,
            "FinalizeArtifact",
            ids_with(
                serde_json::json!({"name": "spread", "size": body.len().to_string(), "hash": hash}),
            ),
        )
        .await;
        assert_eq!(st, 200, "finalize through A: {v}");
        let (st, v) = twirp(
            &url_b,
            &token,
            "ListArtifacts",
            ids_with(serde_json::json!({})),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["artifacts"][0]["name"], "spread", "{v}");
        let (_, v) = twirp(
            &url_b,
            &token,
            "GetSignedArtifactURL",
            ids_with(serde_json::json!({"name": "spread"})),
        )
        .await;
        let got = http
            .get(v["signed_url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), 200);
        assert!(
            got.bytes().await.unwrap().as_ref() == &body[..],
            "the bytes came back whole"
        );
    });
    assert_eq!(
        r.a.metric("satchel_gha_uploads"),
        0,
        "finalized on every replica"
    );
}

/// Small files uploaded through A are packed; B finds that pack through
/// the database (one lookup and the pack's own index) and serves every
/// file without listing the bucket's packs again. Before pack locations
/// were in the database, B listed every pack on its first miss.
#[test]
fn packs_written_by_one_replica_are_found_by_the_other_without_listing() {
    let Some(r) = Replicas::start() else {
        return;
    };
    let (up, down) = (r.work("up"), r.work("down"));
    // B has loaded where packs are: its first use lists them once.
    write(&up, "warm.txt", b"warm");
    r.b.agent(&up, "packs", 1, "warm")
        .ok(&["artifact", "upload", "warm.txt"]);
    r.b.agent(&down, "packs", 1, "get")
        .ok(&["artifact", "download", "warm.txt", "warm"]);
    let listed = r.b.metric("satchel_store_pack_listings_total");
    assert!(listed >= 1, "B never loaded its pack index");
    let files: Vec<(String, Vec<u8>)> = (0..40u64)
        .map(|i| (format!("s/f{i:02}.txt"), noise(4096 + i as usize, 900 + i)))
        .collect();
    for (path, data) in &files {
        write(&up, path, data);
    }
    r.a.agent(&up, "packs", 1, "build")
        .ok(&["artifact", "upload", "s/**"]);
    r.b.agent(&down, "packs", 1, "get")
        .ok(&["artifact", "download", "s/**", "got", "--job", "build"]);
    for (path, data) in &files {
        assert!(read(&down, &format!("got/{path}")) == *data, "{path}");
    }
    assert_eq!(
        r.b.metric("satchel_store_pack_listings_total"),
        listed,
        "B listed every pack to find A's"
    );
}
