//! End-to-end: the real `@actions/artifact` clients (2.3.x, as
//! upload-artifact@v4 uses, and 6.x) against the real server, driven by
//! tests/gha/conformance.mjs; then the same artifacts through the CLI, and
//! the protocol's refusals (tokens, signatures, ids).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

fn gha_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/gha")
}

fn node(which: &str, work: &Path, results: &str, token: &str) {
    let dir = gha_dir();
    assert!(
        dir.join("node_modules/artifact-v2").exists() && dir.join("node_modules/artifact-v6").exists(),
        "the @actions/artifact clients are not installed: run `npm ci` in tests/gha (scripts/test.sh does)"
    );
    let child = spawn_node(which, work, "round-trip", results, token);
    finished(child, &format!("node conformance.mjs {which}"));
}

/// `node conformance.mjs WHICH WORK MODE` as the job `token` is for.
fn spawn_node(
    which: &str,
    work: &Path,
    mode: &str,
    results: &str,
    token: &str,
) -> std::process::Child {
    Command::new("node")
        .arg(gha_dir().join("conformance.mjs"))
        .args([which, work.to_str().unwrap(), mode])
        .current_dir(gha_dir())
        .env("ACTIONS_RESULTS_URL", results)
        .env("ACTIONS_RUNTIME_TOKEN", token)
        .env("ACTIONS_ARTIFACT_UPLOAD_CONCURRENCY", "4")
        .env_remove("GITHUB_SERVER_URL")
        .env_remove("ACTIONS_RUNTIME_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running node (scripts/test.sh installs it)")
}

#[test]
fn real_actions_artifact_clients_round_trip() {
    let d = tempfile::tempdir().unwrap();
    // DeleteArtifact's wait outlasts the test however slow the machine.
    let s = Server::start_with(
        &d.path().join("data"),
        &[("SATCHEL_GHA_DELETE_WAIT_MS", "3600000")],
    );
    let (url, token) = mint(&s, "build", &[]);
    assert_eq!(url, format!("{}/", s.url));
    node("v2", d.path(), &url, &token);
    let (_, token6) = mint(&s, "build6", &[]);
    node("v6", d.path(), &url, &token6);

    // The same artifacts are ordinary Satchel artifacts.
    let ws = d.path().join("ws");
    let agent = s.agent(d.path(), "gh", 1, "later");
    agent.ok(&[
        "artifact",
        "download-artifact",
        "bundle-v2",
        "report.txt",
        "--dest",
        ws.to_str().unwrap(),
    ]);
    let zip = std::fs::read(ws.join("bundle-v2/bundle-v2.zip")).unwrap();
    assert_eq!(&zip[..2], b"PK", "a zip archive");
    assert_eq!(
        std::fs::read_to_string(ws.join("report.txt/report.txt")).unwrap(),
        "raw report\n"
    );
    let list = agent.ok(&["artifact", "search", "--json", "**"]);
    let files: Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = files
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["artifact_name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"bundle-v6"));
    // The scratch artifacts' DeleteArtifact is pending: gone for the job
    // that deleted them, live for everyone else until the wait runs out
    // (`overwrite_swaps_in_place_for_readers_in_other_jobs` goes further).
    assert!(names.contains(&"scratch-v2") && names.contains(&"scratch-v6"));
}

/// [`spawn_node`] with a token minted for job `job`.
fn node_mode(s: &Server, which: &str, work: &Path, mode: &str, job: &str) -> std::process::Child {
    let (url, token) = mint(s, job, &[]);
    spawn_node(which, work, mode, &url, &token)
}

fn finished(child: std::process::Child, what: &str) -> String {
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    assert!(text.contains("all checks passed"), "{what}: {text}");
    text
}

/// Users of GitHub's service report that a FinalizeArtifact that failed
/// reserves the name, so the step's retry gets 409, and that a finalize
/// whose answer was lost fails on retry. The real clients, through a
/// proxy that breaks one finalize each way, retry and succeed.
#[test]
fn real_clients_retry_a_finalize_that_failed_or_lost_its_answer() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(&d.path().join("data"));
    for which in ["v2", "v6"] {
        let c = node_mode(&s, which, d.path(), "retries", &format!("retry-{which}"));
        finished(c, &format!("{which} retries"));
    }
}

/// `overwrite: true` while another job downloads the artifact in a loop
/// (the real clients, both ways round): every download is one version
/// whole with a matching digest, none finds nothing, and the reader sees
/// every version. The writer waits for the reader to see each version
/// before the next, so every swap happens during the reader's loop.
#[test]
fn real_clients_overwrite_while_another_job_downloads() {
    if !gha_dir().join("node_modules/artifact-v6").exists() {
        panic!("the @actions/artifact clients are not installed: run `npm ci` in tests/gha (scripts/test.sh does)");
    }
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(&d.path().join("data"));
    for (writer, reader) in [("v2", "v6"), ("v6", "v2")] {
        let work = d.path().join(format!("{writer}-{reader}"));
        std::fs::create_dir_all(&work).unwrap();
        let r = node_mode(
            &s,
            reader,
            &work,
            "overwrite-reader",
            &format!("reader-{reader}"),
        );
        let w = node_mode(
            &s,
            writer,
            &work,
            "overwrite-writer",
            &format!("writer-{writer}"),
        );
        // The writer's failure is often the reader's: show both.
        let w = w.wait_with_output().unwrap();
        if !w.status.success() {
            let r = r.wait_with_output().unwrap();
            panic!(
                "writer {writer} failed:\n{}{}\nreader {reader}:\n{}{}",
                String::from_utf8_lossy(&w.stdout),
                String::from_utf8_lossy(&w.stderr),
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&r.stderr)
            );
        }
        let text = finished(r, &format!("reader {reader}"));
        assert!(text.contains("downloads per version"), "{text}");
    }
}

/// The Twirp-level contract behind `overwrite: true`, step by step: a
/// delete is pending for other jobs until its job's upload of the name
/// swaps the new artifact in; a reader that listed the old artifact just
/// before the swap still gets the old artifact's URL and bytes; another
/// job that uploads a name whose delete no upload follows takes it at once
/// (the wait for a delete's own upload is the DB story's).
#[test]
fn overwrite_swaps_in_place_for_readers_in_other_jobs() {
    let d = tempfile::tempdir().unwrap();
    // An hour: only a swap, or another job's upload, carries a delete out.
    let s = Server::start_with(
        &d.path().join("data"),
        &[("SATCHEL_GHA_DELETE_WAIT_MS", "3600000")],
    );
    let (url, w) = mint(&s, "writer", &[]);
    let (_, r) = mint(&s, "reader", &[]);
    let (_, late) = mint(&s, "late", &[]);
    let (w, r, late): (&'static str, &'static str, &'static str) =
        (w.leak(), r.leak(), late.leak());
    let ids = |job: &str, extra: serde_json::Value| {
        let mut v = serde_json::json!({
            "workflow_run_backend_id": "satchel.gh.1",
            "workflow_job_run_backend_id": job,
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    let http = s.http();
    rt().block_on(async {
        let call = |token: &str, job: &str, method: &str, extra: serde_json::Value| {
            let (url, token, body) = (url.clone(), token.to_string(), ids(job, extra));
            let method = method.to_string();
            async move { twirp(&url, &token, &method, body).await }
        };
        // Create and send one whole blob; finalize separately.
        let start = |(token, job): (&'static str, &'static str), body: &'static [u8]| {
            let (call, http) = (&call, &http);
            async move {
                let name = "site";
                let (st, v) = call(
                    token,
                    job,
                    "CreateArtifact",
                    serde_json::json!({"name": name, "version": 4}),
                )
                .await;
                assert_eq!(st, 200, "{v}");
                let r = http
                    .put(v["signed_upload_url"].as_str().unwrap())
                    .header("x-ms-blob-type", "BlockBlob")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
            }
        };
        let finalize = |(token, job): (&'static str, &'static str)| {
            let call = &call;
            async move {
                let (st, v) = call(
                    token,
                    job,
                    "FinalizeArtifact",
                    serde_json::json!({"name": "site"}),
                )
                .await;
                assert_eq!(st, 200, "{v}");
                v["artifact_id"].as_str().unwrap().to_string()
            }
        };
        let listed = |token: &'static str, job: &'static str, filter: serde_json::Value| {
            let call = &call;
            async move {
                let (st, v) = call(token, job, "ListArtifacts", filter).await;
                assert_eq!(st, 200, "{v}");
                v["artifacts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a["database_id"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            }
        };
        let fetch = |token: &'static str, job: &'static str| {
            let (call, http) = (&call, &http);
            async move {
                let (st, v) = call(
                    token,
                    job,
                    "GetSignedArtifactURL",
                    serde_json::json!({"name": "site"}),
                )
                .await;
                if st != 200 {
                    return None;
                }
                let r = http
                    .get(v["signed_url"].as_str().unwrap())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                Some(r.bytes().await.unwrap().to_vec())
            }
        };
        let writer = (w, "writer");
        start(writer, b"old site").await;
        let old = finalize(writer).await;
        // The reader picks the old one (as download-artifact lists first).
        assert_eq!(
            listed(r, "reader", serde_json::json!({"name_filter": "site"})).await,
            vec![old.clone()]
        );
        // overwrite: the writer deletes, then creates.
        let (st, v) = call(
            w,
            "writer",
            "DeleteArtifact",
            serde_json::json!({"name": "site"}),
        )
        .await;
        assert_eq!(
            (st, v["artifact_id"].as_str()),
            (200, Some(old.as_str())),
            "{v}"
        );
        assert!(
            listed(w, "writer", serde_json::json!({})).await.is_empty(),
            "gone for the writer"
        );
        assert_eq!(
            listed(r, "reader", serde_json::json!({"name_filter": "site"})).await,
            vec![old.clone()],
            "pending: live for the reader"
        );
        start(writer, b"new site").await;
        assert_eq!(
            listed(r, "reader", serde_json::json!({"name_filter": "site"})).await,
            vec![old.clone()],
            "still live while the new one uploads"
        );
        let new = finalize(writer).await;
        assert_ne!(new, old);
        // Swapped: the reader's next URL is still for what it listed.
        assert_eq!(fetch(r, "reader").await.unwrap(), b"old site");
        assert_eq!(
            listed(r, "reader", serde_json::json!({"id_filter": old})).await,
            vec![old.clone()],
            "replaced moments ago"
        );
        assert_eq!(fetch(r, "reader").await.unwrap(), b"old site");
        // A new listing by name moves it on to the new one.
        assert_eq!(
            listed(r, "reader", serde_json::json!({"name_filter": "site"})).await,
            vec![new.clone()]
        );
        assert_eq!(fetch(r, "reader").await.unwrap(), b"new site");
        assert_eq!(
            listed(r, "reader", serde_json::json!({})).await,
            vec![new.clone()]
        );
        assert_eq!(
            listed(w, "writer", serde_json::json!({})).await,
            vec![new.clone()]
        );
        // A plain delete, then another job uploads the name: it takes the
        // name at once (the delete is carried out), and readers move on.
        let (st, _) = call(
            w,
            "writer",
            "DeleteArtifact",
            serde_json::json!({"name": "site"}),
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(
            listed(r, "reader", serde_json::json!({})).await,
            vec![new.clone()],
            "pending"
        );
        start((late, "late"), b"late site").await;
        let third = finalize((late, "late")).await;
        assert_eq!(
            listed(r, "reader", serde_json::json!({"name_filter": "site"})).await,
            vec![third]
        );
        assert_eq!(fetch(r, "reader").await.unwrap(), b"late site");
    });
    // The REST API agrees: one artifact of that name, the late job's.
    let agent = s.agent(d.path(), "gh", 1, "later");
    let found: Value =
        serde_json::from_str(&agent.ok(&["artifact", "search", "--json", "**"])).unwrap();
    let producers: Vec<(&str, &str)> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["artifact_name"].as_str().unwrap(),
                f["producer"]["job"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(producers, [("site", "late")]);
}

#[test]
fn protocol_refusals() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(&d.path().join("data"));
    let (url, token) = mint(&s, "build", &[]);
    let ids = ids_with(serde_json::json!({}));
    rt().block_on(async {
        // Tokens: missing, foreign, tampered, another job's ids.
        let (st, v) = twirp(&url, "", "ListArtifacts", ids.clone()).await;
        assert_eq!((st, v["code"].as_str()), (401, Some("unauthenticated")));
        // The first character of the signature carries six whole bits, so
        // another one is still valid base64url and must fail the signature
        // check itself (the last one may only change padding bits).
        let dot = token.rfind('.').unwrap();
        let mut bad = token.clone();
        let first = &token[dot + 1..dot + 2];
        bad.replace_range(dot + 1..dot + 2, if first == "A" { "B" } else { "A" });
        let (st, v) = twirp(&url, &bad, "ListArtifacts", ids.clone()).await;
        assert_eq!(st, 401);
        assert!(v["msg"].as_str().unwrap().contains("signature is not valid"), "{v}");
        let other = serde_json::json!({
            "workflow_run_backend_id": "satchel.gh.2",
            "workflow_job_run_backend_id": "build",
        });
        let (st, v) = twirp(&url, &token, "ListArtifacts", other).await;
        assert_eq!((st, v["code"].as_str()), (403, Some("permission_denied")));
        let deploy = serde_json::json!({
            "workflow_run_backend_id": "satchel.gh.1",
            "workflow_job_run_backend_id": "deploy",
            "name": "x",
        });
        let (st, v) = twirp(&url, &token, "CreateArtifact", deploy).await;
        assert_eq!((st, v["code"].as_str()), (403, Some("permission_denied")));
        // Bad input: names, int64s, unknown methods; nothing is created.
        let (st, v) = twirp(&url, &token, "CreateArtifact", ids_with(serde_json::json!({"name": "a/b"}))).await;
        assert_eq!((st, v["code"].as_str()), (400, Some("invalid_argument")), "{v}");
        let (st, _) = twirp(&url, &token, "FinalizeArtifact", ids_with(serde_json::json!({"name": "x", "size": "nope"}))).await;
        assert_eq!(st, 400);
        let (st, v) = twirp(&url, &token, "FinalizeArtifact", ids_with(serde_json::json!({"name": "x", "size": "1"}))).await;
        assert_eq!((st, v["code"].as_str()), (404, Some("not_found")));
        let (st, v) = twirp(&url, &token, "Nope", ids.clone()).await;
        assert_eq!((st, v["code"].as_str()), (404, Some("bad_route")));
        let (st, v) = twirp(&url, &token, "ListArtifacts", ids.clone()).await;
        assert_eq!(st, 200);
        assert_eq!(v["artifacts"], serde_json::json!([]));

        // Signed URLs: tampering and wrong hashes are refused.
        let (st, v) = twirp(&url, &token, "CreateArtifact", ids_with(serde_json::json!({"name": "art", "version": 4}))).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["ok"], true);
        let signed = v["signed_upload_url"].as_str().unwrap().to_string();
        let http = s.http();
        let tampered = signed.replace("sig=", "sig=00");
        let r = http
            .put(format!("{tampered}&comp=block&blockid=QUFB"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let unsigned = signed.split('?').next().unwrap().to_string();
        let r = http.put(format!("{unsigned}?comp=block&blockid=QUFB")).body("x").send().await.unwrap();
        assert_eq!(r.status(), 403);
        // Blocks out of order, one retried; the list decides the order.
        for (id, body) in [("QkJC", "world"), ("QUFB", "hello "), ("QkJC", "world!")] {
            let r = http
                .put(format!("{signed}&comp=block&blockid={id}"))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
        let r = http
            .put(format!("{signed}&comp=blocklist"))
            .body("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList><Latest>QUFB</Latest><Latest>Q0ND</Latest></BlockList>")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "an unknown block is refused");
        let r = http
            .put(format!("{signed}&comp=blocklist"))
            .body("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList><Latest>QUFB</Latest><Latest>QkJC</Latest></BlockList>")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let wrong = format!("sha256:{}", "0".repeat(64));
        let (st, v) = twirp(&url, &token, "FinalizeArtifact", ids_with(serde_json::json!({"name": "art", "size": "12", "hash": wrong}))).await;
        assert_eq!((st, v["code"].as_str()), (400, Some("invalid_argument")), "{v}");
        assert!(v["msg"].as_str().unwrap().contains("digest mismatch"));
        let right = {
            use sha2::Digest as _;
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(b"hello world!")))
        };
        let (st, v) = twirp(&url, &token, "FinalizeArtifact", ids_with(serde_json::json!({"name": "art", "size": "12", "hash": right.clone()}))).await;
        assert_eq!(st, 200, "{v}");
        assert!(v["artifact_id"].as_str().unwrap().parse::<i64>().unwrap() > 0);
        // A retried finalize (the answer was lost) gets the same answer;
        // one that claims other content does not.
        let first = v["artifact_id"].clone();
        let (st, v) = twirp(&url, &token, "FinalizeArtifact", ids_with(serde_json::json!({"name": "art", "size": "12", "hash": right}))).await;
        assert_eq!((st, &v["artifact_id"]), (200, &first), "{v}");
        let (st, v) = twirp(&url, &token, "FinalizeArtifact", ids_with(serde_json::json!({"name": "art", "size": "13"}))).await;
        assert_eq!((st, v["code"].as_str()), (409, Some("already_exists")), "{v}");
        let (st, v) = twirp(&url, &token, "CreateArtifact", ids_with(serde_json::json!({"name": "art"}))).await;
        assert_eq!((st, v["code"].as_str()), (409, Some("already_exists")));
        let (_, v) = twirp(&url, &token, "GetSignedArtifactURL", ids_with(serde_json::json!({"name": "art"}))).await;
        let dl = v["signed_url"].as_str().unwrap().to_string();
        let r = http.get(&dl).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/zip");
        assert_eq!(r.bytes().await.unwrap().as_ref(), b"hello world!");
        let r = http.get(dl.replace("sig=", "sig=1")).send().await.unwrap();
        assert_eq!(r.status(), 403);
    });

    // An expired token is refused.
    let (_, short) = mint(&s, "build", &["--ttl", "1"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    rt().block_on(async {
        let (st, v) = twirp(&url, &short, "ListArtifacts", ids.clone()).await;
        assert_eq!(st, 401);
        assert!(v["msg"].as_str().unwrap().contains("expired"), "{v}");
    });
}

/// download-artifact in a job other than the uploader's was refused with
/// 403: the client names, in GetSignedArtifactURL (and DeleteArtifact),
/// the job ListArtifacts reported as the artifact's producer, and the
/// server wanted the token's own job there. Uploads must still be the
/// token's own job's.
#[test]
fn another_job_of_the_run_downloads_and_deletes_an_artifact() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(&d.path().join("data"));
    let (url, build) = mint(&s, "build", &[]);
    let (_, reader) = mint(&s, "reader", &[]);
    let as_job = |job: &str, extra: serde_json::Value| {
        let mut v = ids_with(extra);
        v["workflow_job_run_backend_id"] = job.into();
        v
    };
    rt().block_on(async {
        let (st, v) = twirp(
            &url,
            &build,
            "CreateArtifact",
            ids_with(serde_json::json!({"name": "out"})),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        let r = s
            .http()
            .put(v["signed_upload_url"].as_str().unwrap())
            .header("x-ms-blob-type", "BlockBlob")
            .body("built")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let (st, v) = twirp(
            &url,
            &build,
            "FinalizeArtifact",
            ids_with(serde_json::json!({"name": "out"})),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        // What download-artifact does in job `reader`.
        let (st, v) = twirp(
            &url,
            &reader,
            "ListArtifacts",
            as_job("reader", serde_json::json!({"name_filter": "out"})),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        let producer = v["artifacts"][0]["workflow_job_run_backend_id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(producer, "build");
        let (st, v) = twirp(
            &url,
            &reader,
            "GetSignedArtifactURL",
            as_job(&producer, serde_json::json!({"name": "out"})),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        let got = s
            .http()
            .get(v["signed_url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(got.bytes().await.unwrap().as_ref(), b"built");
        // Uploading as another job stays refused; so does another run.
        let (st, v) = twirp(
            &url,
            &reader,
            "CreateArtifact",
            as_job("build", serde_json::json!({"name": "x"})),
        )
        .await;
        assert_eq!(
            (st, v["code"].as_str()),
            (403, Some("permission_denied")),
            "{v}"
        );
        let mut other_run = as_job("build", serde_json::json!({"name": "out"}));
        other_run["workflow_run_backend_id"] = "satchel.gh.2".into();
        let (st, _) = twirp(&url, &reader, "GetSignedArtifactURL", other_run).await;
        assert_eq!(st, 403);
        // A cleanup job deletes it, naming its producer as the client does.
        let (st, v) = twirp(
            &url,
            &reader,
            "DeleteArtifact",
            as_job(&producer, serde_json::json!({"name": "out"})),
        )
        .await;
        assert_eq!(st, 200, "{v}");
    });
}

/// Runtime tokens were signed with a key derived from the admin token, so
/// anyone who learned how could mint them from the admin token alone, and
/// every server sharing an admin token accepted each other's tokens. The
/// key now comes from the data directory's own random secret
/// (`signing.key`, mode 0600): tokens survive a restart of the same server
/// and mean nothing to another with the same admin token.
#[test]
fn runtime_tokens_are_signed_with_the_data_dirs_own_secret() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let admin = [(
        "SATCHEL_ADMIN_TOKEN",
        "one-admin-token-for-both-servers-here",
    )];
    let list = |s: &Server, url: &str, token: &str| {
        let u = format!("{url}twirp/github.actions.results.api.v1.ArtifactService/ListArtifacts");
        let body = serde_json::json!({
            "workflow_run_backend_id": "satchel.gh.1",
            "workflow_job_run_backend_id": "build",
        });
        rt().block_on(async {
            s.http()
                .post(u)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let mut a = Server::start_with(&d.path().join("a"), &admin);
    let (url, token) = mint(&a, "build", &[]);
    assert_eq!(list(&a, &url, &token), 200);
    let mode = std::fs::metadata(d.path().join("a/signing.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    a.stop();
    let b = Server::start_with(&d.path().join("b"), &admin);
    let other = format!("{}/", b.url);
    assert_eq!(list(&b, &other, &token), 401, "another server's token");
    drop(b);
    let a = Server::start_with(&d.path().join("a"), &admin);
    let url = format!("{}/", a.url);
    assert_eq!(
        list(&a, &url, &token),
        200,
        "the same server after a restart"
    );
}

/// The client commits its block list, then calls FinalizeArtifact: two
/// requests, with nothing referencing the committed blob in between but
/// the upload session. A GC in that gap (an operator's `admin gc --grace
/// 0`, or any pass once the gap outlasts the grace period) found the blob
/// unreferenced and deleted it, so the finalize that followed failed and
/// the upload was lost, its blocks already gone. A committed session now
/// keeps its blob until it is finalized or reaped.
#[test]
fn gc_between_block_list_commit_and_finalize_keeps_the_content() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(&d.path().join("data"));
    let (url, token) = mint(&s, "build", &[]);
    let agent = s.agent(Path::new("."), "gh", 1, "build");
    // Several chunks, so the chunk path is swept too.
    let body = noise(3 * 1024 * 1024 + 17, 41);
    let hash = format!("sha256:{}", sha(&body));
    let http = s.http();
    let signed = rt().block_on(async {
        let (st, v) = twirp(&url, &token, "CreateArtifact", ids_with(serde_json::json!({"name": "late", "version": 4}))).await;
        assert_eq!(st, 200, "{v}");
        let signed = v["signed_upload_url"].as_str().unwrap().to_string();
        for (id, part) in [("QUFB", &body[..1 << 20]), ("QkJC", &body[1 << 20..])] {
            let r = http
                .put(format!("{signed}&comp=block&blockid={id}"))
                .body(part.to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
        let r = http
            .put(format!("{signed}&comp=blocklist"))
            .body("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList><Latest>QUFB</Latest><Latest>QkJC</Latest></BlockList>")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        signed
    });
    let gc: Value =
        serde_json::from_str(&agent.ok(&["admin", "gc", "--grace", "0", "--json"])).unwrap();
    // Only the blocks go, dropped at the commit: exactly the body's bytes.
    assert_eq!(gc["bytes_freed"], body.len() as u64, "{gc}");
    rt().block_on(async {
        let (st, v) = twirp(
            &url,
            &token,
            "FinalizeArtifact",
            ids_with(
                serde_json::json!({"name": "late", "size": body.len().to_string(), "hash": hash}),
            ),
        )
        .await;
        assert_eq!(st, 200, "finalize after a GC: {v}");
        // The session is gone with the finalize; its URL takes no more.
        let r = http
            .put(format!("{signed}&comp=block&blockid=Q0ND"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    });
    // Referenced now, it survives GC for good.
    agent.ok(&["admin", "gc", "--grace", "0"]);
    rt().block_on(async {
        let (_, v) = twirp(
            &url,
            &token,
            "GetSignedArtifactURL",
            ids_with(serde_json::json!({"name": "late"})),
        )
        .await;
        let r = http
            .get(v["signed_url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.bytes().await.unwrap().as_ref() == &body[..],
            "the content came back whole"
        );
    });
}

/// The stored object of a small file (one chunk, stored whole, unencrypted).
fn whole_object(data: &Path, content: &[u8]) -> PathBuf {
    let h = sha(content);
    data.join("content/objects/b").join(&h[..2]).join(h)
}

/// The periodic task of a running server, not a function called by a
/// test: GC passes every second with no grace keep what is referenced and
/// free what an artifact deletion left; GitHub Actions uploads in progress
/// keep their blocks and committed blob, and once reaped for going idle
/// those are garbage too.
#[test]
fn a_running_server_collects_garbage_and_reaps_idle_uploads_on_its_own() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = Server::start_with(
        &data,
        &[
            ("SATCHEL_GC_EVERY_SECS", "1"),
            ("SATCHEL_GC_GRACE_SECS", "0"),
            ("SATCHEL_GHA_UPLOAD_IDLE_SECS", "10"),
        ],
    );
    let work = d.path().join("work");
    let (kept, dropped) = (
        b"content that stays".as_slice(),
        b"content that goes".as_slice(),
    );
    write(&work, "keep.txt", kept);
    write(&work, "drop.txt", dropped);
    let agent = s.agent(&work, "gh", 1, "build");
    agent.ok(&["artifact", "upload", "--name", "keep", "keep.txt"]);
    agent.ok(&["artifact", "upload", "--name", "drop", "drop.txt"]);
    let passes = s.metric("satchel_gc_passes_total");
    wait_up_to(
        30,
        || s.metric("satchel_gc_passes_total") >= passes + 2,
        "two GC passes",
    );
    assert!(whole_object(&data, kept).exists() && whole_object(&data, dropped).exists());
    s.delete_artifact(&s.artifact_id("gh", 1, "drop"));
    wait_up_to(
        30,
        || !whole_object(&data, dropped).exists(),
        "GC to free the deleted artifact's content",
    );
    assert!(
        whole_object(&data, kept).exists(),
        "GC freed referenced content"
    );
    agent.ok(&["artifact", "download", "keep.txt", "out", "--name", "keep"]);
    assert_eq!(std::fs::read(work.join("out/keep.txt")).unwrap(), kept);

    // Two uploads left idle: one with a block and no block list, one
    // committed and never finalized.
    let (url, token) = mint(&s, "build", &[]);
    let committed = b"committed and abandoned";
    let idle_block = b"a block never committed";
    let http = s.http();
    let idle = rt().block_on(async {
        let mut signed = Vec::new();
        for (name, block) in [("idle", idle_block), ("abandoned", committed)] {
            let (st, v) = twirp(&url, &token, "CreateArtifact", ids_with(serde_json::json!({"name": name, "version": 4}))).await;
            assert_eq!(st, 200, "{v}");
            let u = v["signed_upload_url"].as_str().unwrap().to_string();
            let r = http
                .put(format!("{u}&comp=block&blockid=QUFB"))
                .body(block.to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            signed.push(u);
        }
        let r = http
            .put(format!("{}&comp=blocklist", signed[1]))
            .body("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList><Latest>QUFB</Latest></BlockList>")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        signed.swap_remove(0)
    });
    assert_eq!(s.metric("satchel_gha_uploads"), 2);
    // The idle upload's block and the abandoned one's committed blob (a
    // list of one block) outlive GC passes with no grace while the uploads
    // live: their rows hold them.
    let passes = s.metric("satchel_gc_passes_total");
    wait_up_to(
        30,
        || s.metric("satchel_gc_passes_total") >= passes + 2,
        "two GC passes",
    );
    assert!(
        whole_object(&data, idle_block).exists(),
        "GC took the block of an upload in progress"
    );
    assert!(
        whole_object(&data, committed).exists(),
        "GC took the committed blob of an upload in progress"
    );
    wait_up_to(
        30,
        || s.metric("satchel_gha_uploads_reaped_total") == 2,
        "idle uploads reaped",
    );
    assert_eq!(s.metric("satchel_gha_uploads"), 0);
    wait_up_to(
        30,
        || !whole_object(&data, committed).exists() && !whole_object(&data, idle_block).exists(),
        "the reaped uploads' blobs freed",
    );
    let scratch = std::fs::read_dir(data.join("scratch")).map_or(0, |d| d.count());
    assert_eq!(scratch, 0, "no scratch file outlives its request");
    rt().block_on(async {
        let r = http
            .put(format!("{idle}&comp=block&blockid=QkJC"))
            .body("late")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "a reaped upload takes no more blocks");
    });
}

/// Builds a zip at `path` with Python's zipfile: deflated and stored
/// members, a directory entry, and one member written with zip64 records.
fn python_zip(path: &Path, damaged: bool) {
    let script = r#"
import sys, zipfile, random
path, damaged = sys.argv[1], sys.argv[2] == "1"
random.seed(7)
big = bytes(random.getrandbits(8) for _ in range(300_000))
log = "".join(f"step {i} of 3000\n" for i in range(1, 3001))
with zipfile.ZipFile(path, "w") as z:
    z.writestr(zipfile.ZipInfo("report/"), b"")
    z.writestr("report/index.html", '<link rel="stylesheet" href="style.css"><h1>Coverage</h1>', zipfile.ZIP_DEFLATED)
    z.writestr("report/style.css", "h1{color:#c00}", zipfile.ZIP_STORED)
    z.writestr("logs/build.log", log, zipfile.ZIP_DEFLATED)
    z.writestr("big.bin", big, zipfile.ZIP_DEFLATED)
    with z.open("z64.txt", "w", force_zip64=True) as f:
        f.write(b"zip64 member\n")
    z.writestr("a/../dots.html", "<p>dots</p>")
open(path + ".big", "wb").write(big)
if damaged:
    data = bytearray(open(path, "rb").read())
    at = data.find(b"logs/build.log") + len("logs/build.log") + 40
    data[at] ^= 0xFF
    # A stored member, same length: only its CRC-32 can tell.
    at = data.find(b"h1{color:#c00}") + 3
    data[at] ^= 0x20
    open(path, "wb").write(bytes(data))
"#;
    let st = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .arg(if damaged { "1" } else { "0" })
        .status()
        .unwrap();
    assert!(st.success());
}

/// Uploads `bytes` through the protocol as artifact `name` of job `build`.
async fn protocol_upload(s: &Server, url: &str, token: &str, name: &str, bytes: Vec<u8>) {
    let (st, v) = twirp(
        url,
        token,
        "CreateArtifact",
        ids_with(serde_json::json!({"name": name})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let r = s
        .http()
        .put(v["signed_upload_url"].as_str().unwrap())
        .header("x-ms-blob-type", "BlockBlob")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (st, v) = twirp(
        url,
        token,
        "FinalizeArtifact",
        ids_with(serde_json::json!({"name": name})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
}

/// An artifact that arrived as one zip (upload-artifact's way) is browsed
/// and viewed file by file in the UI, read from the zip in place: deflated,
/// stored and zip64 members, an HTML report whose relative stylesheet
/// loads, a log by lines; a damaged member fails its CRC instead of being
/// served as good, and a file that is no zip says so.
#[test]
fn a_protocol_zip_is_browsed_file_by_file() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(&d.path().join("data"));
    let (url, token) = mint(&s, "build", &[]);
    let good = d.path().join("good.zip");
    python_zip(&good, false);
    let bad = d.path().join("bad.zip");
    python_zip(&bad, true);
    let big = std::fs::read(d.path().join("good.zip.big")).unwrap();
    rt().block_on(async {
        protocol_upload(&s, &url, &token, "cov", std::fs::read(&good).unwrap()).await;
        protocol_upload(&s, &url, &token, "damaged", std::fs::read(&bad).unwrap()).await;
        protocol_upload(&s, &url, &token, "nozip", b"not a zip at all".to_vec()).await;
    });
    let id = s.artifact_id("gh", 1, "cov");
    let damaged = s.artifact_id("gh", 1, "damaged");
    let nozip = s.artifact_id("gh", 1, "nozip");
    let b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    rt().block_on(async {
        let session = ui_login(&s, &s.token).await;
        let get = |path: String| {
            let r = b
                .get(format!("{}{path}", s.url))
                .header("cookie", &session)
                .send();
            async move { r.await.unwrap() }
        };
        let page = get(format!("/artifacts/{id}")).await.text().await.unwrap();
        assert!(page.contains("<h2>In <code>cov.zip</code></h2>"), "{page}");
        for member in [
            "report/index.html",
            "report/style.css",
            "logs/build.log",
            "big.bin",
            "z64.txt",
        ] {
            assert!(
                page.contains(&format!(">{member}</a>")),
                "{member} listed: {page}"
            );
        }
        assert!(!page.contains(">report/</a>"), "directories are not files");
        // The report, in its sandbox, and its stylesheet by relative path.
        let start = page.find("/view/").unwrap();
        let view = &page[start..start + page[start..].find('"').unwrap()];
        let prefix = &view[..view.rfind('/').unwrap() + 1];
        let r = get(format!("{prefix}report/index.html")).await;
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("sandbox"));
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert!(r.text().await.unwrap().contains("<h1>Coverage</h1>"));
        let r = get(format!("{prefix}report/style.css")).await;
        assert_eq!(r.headers()["content-type"], "text/css");
        assert_eq!(r.text().await.unwrap(), "h1{color:#c00}");
        let r = get(format!("{prefix}big.bin")).await;
        assert_eq!(
            r.headers()["content-length"],
            big.len().to_string().as_str()
        );
        assert!(
            r.bytes().await.unwrap() == big,
            "a deflated member, byte for byte"
        );
        let r = get(format!("{prefix}z64.txt")).await;
        assert_eq!(r.text().await.unwrap(), "zip64 member\n");
        let r = get(format!("{prefix}nope.txt")).await;
        assert_eq!(r.status(), 404);
        // A `..` in a member's name: no URL can name it (every parser
        // folds `..` and `%2E%2E` away), so it is listed without a link
        // rather than linked to another path.
        assert!(
            page.contains("a/../dots.html <span class=\"cut\">(a . or .."),
            "{page}"
        );
        assert!(!page.contains("dots.html\""), "no link to it: {page}");
        // The log by lines, read through the inflater.
        let lines = get(format!("/artifacts/{id}/lines/logs/build.log?start=2001"))
            .await
            .text()
            .await
            .unwrap();
        assert!(lines.contains("<pre>step 2001 of 3000</pre>"), "{lines}");
        assert!(lines.contains("<tr id=\"L3000\">"), "{lines}");
        // A damaged member: refused by its lines page (read to its end,
        // where the CRC is checked), cut short as a view. The stored one
        // has its length: its CRC-32 alone tells.
        let r = get(format!("/artifacts/{damaged}/lines/report/style.css")).await;
        assert_eq!(r.status(), 422);
        let text = r.text().await.unwrap();
        assert!(text.contains("CRC-32"), "{text}");
        let r = get(format!(
            "/artifacts/{damaged}/lines/logs/build.log?start=9999"
        ))
        .await;
        assert_eq!(r.status(), 422);
        let text = r.text().await.unwrap();
        assert!(text.contains("zip member"), "{text}");
        let dpage = get(format!("/artifacts/{damaged}"))
            .await
            .text()
            .await
            .unwrap();
        let start = dpage.find("/view/").unwrap();
        let dview = &dpage[start..start + dpage[start..].find('"').unwrap()];
        let dprefix = &dview[..dview.rfind('/').unwrap() + 1];
        for member in ["logs/build.log", "report/style.css"] {
            // Cut short: before the answer's head, or in its body.
            let whole = match b
                .get(format!("{}{dprefix}{member}", s.url))
                .header("cookie", &session)
                .send()
                .await
            {
                Ok(r) => r.bytes().await.is_ok(),
                Err(_) => false,
            };
            assert!(!whole, "damaged {member} was served whole");
        }
        // The API twin lists the members, directories too.
        let file = s
            .get(&format!("/artifacts/{id}"))
            .await
            .json::<Value>()
            .await
            .unwrap()["files"][0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let listed: Value = s
            .get(&format!("/files/{file}/members"))
            .await
            .json()
            .await
            .unwrap();
        let names: Vec<&str> = listed["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "report/",
                "report/index.html",
                "report/style.css",
                "logs/build.log",
                "big.bin",
                "z64.txt",
                "a/../dots.html"
            ]
        );
        assert_eq!(listed["members"][4]["size"], big.len());
        assert_eq!(listed["members"][4]["method"], 8);
        // Not a zip: the page says so and still shows the file.
        let npage = get(format!("/artifacts/{nozip}"))
            .await
            .text()
            .await
            .unwrap();
        assert!(
            npage.contains("Its files cannot be listed: not a zip file"),
            "{npage}"
        );
        assert!(npage.contains(">nozip.zip</a>"), "{npage}");
    });
}
