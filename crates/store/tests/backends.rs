//! The conformance story against every backend.
//!
//! Local directory and memory always run. S3, Azure Blob, HTTP/WebDAV and
//! GCS run against servers whose URLs `scripts/test.sh` exports after
//! starting them (Garage, Azurite, nginx, fake-gcs-server behind
//! `scripts/gcs-xml-shim.py`): `SATCHEL_TEST_S3_URL`,
//! `SATCHEL_TEST_AZURE_URL`, `SATCHEL_TEST_WEBDAV_URL`,
//! `SATCHEL_TEST_GCS_URL`. Without them these tests fail, unless
//! `SATCHEL_SKIP_REMOTE_TESTS=1` says to skip them (and they say so): never
//! passing silently.

use std::sync::Arc;

use satchel_store::{conformance, DirBackend, ObjectBackend, RemoteBackend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance::run_all(Arc::new(DirBackend::open(dir.path()).unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_conforms() {
    conformance::run_all(Arc::new(RemoteBackend::from_url("memory://").unwrap())).await;
}

/// A fresh, empty area of the server `var` names: a random prefix, so runs
/// never see each other's objects.
fn remote(var: &str) -> Option<Arc<dyn ObjectBackend>> {
    let base = conformance::remote_base(var)?;
    let prefix = format!("conformance-{}", satchel_model::id::random_hex(6));
    let url = match base.split_once('?') {
        Some((u, q)) => format!("{}/{prefix}?{q}", u.trim_end_matches('/')),
        None => format!("{}/{prefix}", base.trim_end_matches('/')),
    };
    Some(Arc::new(RemoteBackend::from_url(&url).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_garage_conforms() {
    if let Some(b) = remote("SATCHEL_TEST_S3_URL") {
        conformance::run_all(b).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_azurite_conforms() {
    if let Some(b) = remote("SATCHEL_TEST_AZURE_URL") {
        conformance::run_all(b).await;
    }
}

/// GCS through object_store's real GCS client, against fake-gcs-server
/// (whose missing XML object PUT the shim supplies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_fake_gcs_server_conforms() {
    if let Some(b) = remote("SATCHEL_TEST_GCS_URL") {
        conformance::run_all(b).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_nginx_conforms() {
    if let Some(b) = remote("SATCHEL_TEST_WEBDAV_URL") {
        conformance::run_all(b).await;
    }
}

#[test]
fn store_urls_are_checked() {
    for (url, want) in [
        ("ftp://x", "unsupported store URL scheme"),
        ("s3://bucket?no_such_option=1", "unknown s3:// store option"),
        ("http://h/p?x=1", "take no query options"),
        ("not a url://", "does not parse"),
    ] {
        let e = RemoteBackend::from_url(url).unwrap_err().to_string();
        assert!(e.contains(want), "{url}: {e}");
    }
}

#[test]
fn reopening_clears_stale_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    DirBackend::open(dir.path()).unwrap();
    std::fs::write(dir.path().join("tmp/leftover"), b"half an object").unwrap();
    DirBackend::open(dir.path()).unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}
