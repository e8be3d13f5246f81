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
