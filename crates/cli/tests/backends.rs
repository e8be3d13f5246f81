//! End to end through the real binary: encryption at rest with key rotation,
//! and a server whose content lives on each remote backend (Garage S3,
//! Azurite, nginx WebDAV), started by scripts/services.sh.

mod common;

use common::*;
use sha2::Digest as _;

fn sha_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

/// Every file under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

fn marked_bytes(n: usize, marker: &[u8]) -> Vec<u8> {
    let mut x = 0x1234_5678_9abc_def1u64;
    let mut v: Vec<u8> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for at in (0..n - marker.len()).step_by(500_000) {
        v[at..at + marker.len()].copy_from_slice(marker);
    }
    v
}

#[test]
fn encryption_at_rest_hides_content_and_hashes_and_keys_rotate() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let keys = d.path().join("keys");
    let w = d.path().join("w");
    let marker = b"SATCHEL-PLAINTEXT-MARKER-42";
    let small = [&marker[..], b" in a small file\n"].concat();
    let big = marked_bytes(6 * 1024 * 1024 + 5, marker);
    write(&w, "small.txt", &small);
    write(&w, "big.bin", &big);

    let out = std::process::Command::new(BIN)
        .args(["admin", "keys", "generate", "--out"])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&keys).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Never overwrites a key file.
    let again = std::process::Command::new(BIN)
        .args(["admin", "keys", "generate", "--out"])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(!again.status.success());

    let keys_env = [("SATCHEL_KEYS_FILE", keys.to_str().unwrap())];
    let mut s = Server::start_with(&data, &keys_env);
    let agent = s.agent(&w, "p", 1, "j");
    agent.ok(&["artifact", "upload", "small.txt", "big.bin"]);
    let r = d.path().join("r1");
    agent.ok(&["artifact", "download", "**", r.to_str().unwrap()]);
    assert_eq!(std::fs::read(r.join("small.txt")).unwrap(), small);
    assert!(std::fs::read(r.join("big.bin")).unwrap() == big);

    // The raw content store shows neither the marker nor any hash, of a
    // file or of a chunk, and every object in it is encrypted.
    let chunks = satchel_store::conformance::chunk_digests(&big);
    assert!(chunks.len() > 20, "{} chunks", chunks.len());
    let mut hashes = vec![sha_hex(&small), sha_hex(&big)];
    hashes.extend(chunks.iter().map(|d| d.to_hex()));
    let mut raw_hashes: Vec<Vec<u8>> = [&small[..], &big[..]]
        .iter()
        .map(|b| sha2::Sha256::digest(b).to_vec())
        .collect();
    raw_hashes.extend(chunks.iter().map(|d| d.0.to_vec()));
    let content = files(&data.join("content"));
    // The big file's chunks are in a pack.
    assert!(
        content
            .iter()
            .any(|f| f.to_string_lossy().contains("/objects/p/")),
        "{content:?}"
    );
    for f in &content {
        let name = f.to_string_lossy();
        if !name.ends_with("/satchel-store") {
            let header = satchel_store::Codec::peek(&std::fs::read(f).unwrap()).unwrap();
            assert!(header.key_id.is_some(), "{name} was stored in plain");
        }
        for h in &hashes {
            assert!(!name.contains(h.as_str()), "{name} shows a hash");
        }
        let bytes = std::fs::read(f).unwrap();
        assert!(!bytes.windows(marker.len()).any(|x| x == marker), "{name}");
        for h in &hashes {
            assert!(!bytes.windows(64).any(|x| x == h.as_bytes()), "{name}");
        }
        for h in &raw_hashes {
            assert!(!bytes.windows(32).any(|x| x == &h[..]), "{name}");
        }
    }
    let status = agent.ok(&["admin", "keys", "status"]);
    assert!(status.contains("active key 1"), "{status}");

    // Rotate: add key 2, restart, re-encrypt everything, drop key 1.
    agent.ok(&["admin", "keys", "add", "--file", keys.to_str().unwrap()]);
    s.stop();
    let s = Server::start_with(&data, &keys_env);
    let agent = s.agent(&w, "p", 1, "j");
    let rotated = agent.ok(&["admin", "keys", "rotate", "--wait"]);
    assert!(rotated.contains("active key 2"), "{rotated}");
    assert!(rotated.contains("key 2: "), "{rotated}");
    assert!(!rotated.contains("key 1: "), "{rotated}");
    drop(s);
    let text = std::fs::read_to_string(&keys).unwrap();
    let without_1: String = text
        .lines()
        .filter(|l| !l.starts_with("1:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&keys, without_1).unwrap();
    let mut s = Server::start_with(&data, &keys_env);
    let agent = s.agent(&w, "p", 1, "j");
    let r = d.path().join("r2");
    agent.ok(&["artifact", "download", "**", r.to_str().unwrap()]);
    assert!(std::fs::read(r.join("big.bin")).unwrap() == big);
    assert!(agent.ok(&["admin", "fsck"]).contains("no problems"));
    s.stop();

    // Without keys (or with another key file) the server refuses to start
    // on this store, and says why, instead of calling the content missing.
    for env in [vec![], vec![("SATCHEL_KEYS", satchel_store_keys_sample())]] {
        // (Under `timeout`: a server that wrongly starts must not hang the test.)
        let mut cmd = std::process::Command::new("timeout");
        cmd.args(["20", BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .env_remove("SATCHEL_KEYS_FILE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("is encrypted: start the server with its key file")
                || err.contains("does not belong to the content store"),
            "{err}"
        );
    }
}

#[test]
fn bad_key_configuration_is_refused_at_start() {
    let d = tempfile::tempdir().unwrap();
    let keys = d.path().join("keys");
    std::fs::write(&keys, "1:not-base64\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(d.path().join("data"))
        .env("SATCHEL_KEYS_FILE", &keys)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not valid base64"), "{err}");
    // A world-readable key file is refused too.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&keys, satchel_store_keys_sample()).unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(d.path().join("data"))
        .env("SATCHEL_KEYS_FILE", &keys)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    // So is an unknown store option.
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(d.path().join("data2"))
        .env("SATCHEL_STORE", "s3://bucket?endpiont=http://x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown s3:// store option"));
}

fn satchel_store_keys_sample() -> &'static str {
    "1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
}

/// Upload, dedup, download, delete + GC and fsck with the content on a
/// remote store whose URL `var` holds (set by scripts/services.sh).
fn round_trip_on(var: &str) {
    let Some(base) = satchel_store::conformance::remote_base(var) else {
        return;
    };
    let prefix = format!("e2e-{}", satchel_model::id::random_hex(6));
    let url = match base.split_once('?') {
        Some((u, q)) => format!("{}/{prefix}?{q}", u.trim_end_matches('/')),
        None => format!("{}/{prefix}", base.trim_end_matches('/')),
    };
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let w = d.path().join("w");
    let big = marked_bytes(9 * 1024 * 1024 + 3, b"x");
    write(&w, "big.bin", &big);
    for i in 0..50 {
        write(
            &w,
            &format!("small/{i}.txt"),
            format!("file {i}\n").as_bytes(),
        );
    }
    let s = Server::start_with(&data, &[("SATCHEL_STORE", &url)]);
    let agent = s.agent(&w, "p", 1, "j");
    agent.ok(&["artifact", "upload", "big.bin", "small/**"]);
    // Nothing went to the local disk.
    assert!(!data.join("content").exists() || files(&data.join("content")).is_empty());
    let r = d.path().join("r");
    agent.ok(&["artifact", "download", "**", r.to_str().unwrap()]);
    assert!(std::fs::read(r.join("big.bin")).unwrap() == big);
    assert_eq!(std::fs::read(r.join("small/7.txt")).unwrap(), b"file 7\n");
    assert!(agent.ok(&["admin", "fsck"]).contains("no problems"));
    // A second run's copy is deduplicated; deleting the first and
    // collecting keeps the second intact.
    let a2 = s.agent(&w, "p", 2, "j");
    let sent: serde_json::Value =
        serde_json::from_str(&a2.ok(&["artifact", "upload", "--json", "big.bin"])).unwrap();
    assert_eq!(sent["bytes_sent"], 0, "the store already holds it: {sent}");
    let id = s.artifact_id("p", 1, "default");
    s.delete_artifact(&id);
    agent.ok(&["admin", "gc", "--grace", "0s"]);
    let r2 = d.path().join("r2");
    s.agent(&w, "p", 2, "k")
        .ok(&["artifact", "download", "big.bin", r2.to_str().unwrap()]);
    assert!(std::fs::read(r2.join("big.bin")).unwrap() == big);
    assert!(agent.ok(&["admin", "fsck"]).contains("no problems"));
}

#[test]
fn server_on_s3_garage() {
    round_trip_on("SATCHEL_TEST_S3_URL");
}

#[test]
fn server_on_azure_azurite() {
    round_trip_on("SATCHEL_TEST_AZURE_URL");
}

#[test]
fn server_on_webdav_nginx() {
    round_trip_on("SATCHEL_TEST_WEBDAV_URL");
}

#[test]
fn server_on_gcs_fake_gcs_server() {
    round_trip_on("SATCHEL_TEST_GCS_URL");
}
