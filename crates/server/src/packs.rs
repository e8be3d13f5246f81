//! The content store's [`PackCatalog`] in the metadata database, for
//! replicas that share one: a replica finds a pack another wrote with one
//! indexed lookup (`pack_entries`) instead of listing every pack of the
//! bucket on a miss. A single server (SQLite) has no use for it: no other
//! process writes its packs.

use std::sync::Arc;

use satchel_db::{DbError, MetaStore};
use satchel_store::{Digest, PackCatalog, StoreError};

/// Pack locations kept in the metadata database.
pub struct DbPackCatalog {
    db: Arc<dyn MetaStore>,
}

impl DbPackCatalog {
    /// A catalog in `db`.
    pub fn new(db: Arc<dyn MetaStore>) -> DbPackCatalog {
        DbPackCatalog { db }
    }
}

fn store_error(e: DbError) -> StoreError {
    StoreError::Backend(format!("pack catalog: {e}"))
}

#[async_trait::async_trait]
impl PackCatalog for DbPackCatalog {
    async fn record(&self, key: &str, size: u64, digests: &[Digest]) -> Result<(), StoreError> {
        let hex: Vec<String> = digests.iter().map(Digest::to_hex).collect();
        self.db
            .record_pack(key, size, &hex)
            .await
            .map_err(store_error)
    }

    async fn locate(&self, digest: &Digest) -> Result<Vec<(String, u64)>, StoreError> {
        self.db
            .locate_pack(&digest.to_hex())
            .await
            .map_err(store_error)
    }

    async fn forget(&self, key: &str) -> Result<(), StoreError> {
        self.db.forget_pack(key).await.map_err(store_error)
    }
}
