//! What the crate's unit tests build their state from: a fresh directory,
//! a local content store in it, and an [`AppState`] on SQLite there.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::AppState;

/// A fresh directory for one test (the test removes it).
pub fn dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "satchel-{what}-test-{}",
        satchel_model::id::random_hex(8)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A local content store under `dir/c`, encrypted with `keys` (a key file's
/// text) when given.
pub fn store(dir: &Path, keys: Option<&str>) -> Arc<satchel_store::ChunkStore> {
    Arc::new(
        satchel_store::open(&satchel_store::StoreConfig {
            url: dir.join("c").display().to_string(),
            compression: satchel_store::Compression::None,
            keys: keys.map(|k| satchel_store::Keyring::parse(k).unwrap()),
            reserve: 0,
            retry_for: satchel_store::RETRY_FOR_DEFAULT,
        })
        .unwrap(),
    )
}

/// A server state on a fresh SQLite database and a plain store in `dir`.
pub fn state(dir: &Path) -> AppState {
    let db = Arc::new(satchel_db::SqliteStore::open(dir.join("m.db")).unwrap());
    AppState::new(db, store(dir, None), "t")
}
