//! Object-store backends through the `object_store` crate: S3 and
//! S3-compatible servers (Garage, MinIO, Ceph), Azure Blob (and Azurite),
//! Google Cloud Storage, and HTTP/WebDAV servers (nginx `dav_methods`,
//! Artifactory generic repositories). Chosen by URL:
//!
//! | URL | store |
//! |---|---|
//! | `s3://bucket[/prefix]?endpoint=…&region=…&allow_http=true` | S3 |
//! | `az://container[/prefix]?use_emulator=true` | Azure Blob |
//! | `gs://bucket[/prefix]` | Google Cloud Storage |
//! | `http(s)://host/path` | WebDAV-style HTTP |
//! | `memory://` | in memory (tests) |
//!
//! Query parameters are the `object_store` config keys of that store (an
//! unknown key is an error, never ignored); credentials come from the
//! provider's usual environment variables (`AWS_ACCESS_KEY_ID`,
//! `AZURE_STORAGE_ACCOUNT_KEY`, `GOOGLE_SERVICE_ACCOUNT`, …), so they never
//! need to be in a URL that ends up in logs.

use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};

use crate::backend::{Listed, ObjectBackend};
use crate::StoreError;

/// An `object_store` store holding Satchel's objects.
#[derive(Debug, Clone)]
pub struct RemoteBackend {
    store: Arc<dyn ObjectStore>,
    described: String,
    /// WebDAV servers (nginx) do not list recursively: walk level by level.
    walk_lists: bool,
    /// The base URL's path, which WebDAV listings include in every name.
    strip: String,
}

fn remote_err(what: &str, e: object_store::Error) -> StoreError {
    let text = format!("{what}: {e}");
    if says_full(&text) {
        // The one answer for a full store, whatever its kind (HTTP 507);
        // the store's address stays in the log.
        tracing::warn!("{text}");
        return StoreError::Io {
            context: "writing to the object store".into(),
            source: std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "the object store is full",
            ),
        };
    }
    StoreError::Backend(text)
}

/// Whether an object store's error says it is full: HTTP 507 (WebDAV,
/// MinIO's `XMinioStorageFull`; made final by [`FullIsFinal`]), or a
/// quota exceeded (Ceph RGW answers 403 `QuotaExceeded`). `object_store`
/// keeps the status only in its message.
fn says_full(text: &str) -> bool {
    text.contains(FULL_MARK)
        || text.contains("status code: 507")
        || text.contains("XMinioStorageFull")
        || text.contains("QuotaExceeded")
}

/// The body [`FullIsFinal`] gives a store's 507.
const FULL_MARK: &str = "satchel: the object store answered 507 Insufficient Storage";

/// The HTTP client of every remote store: `object_store`'s own, except
/// that a 507 (the store is full) comes back as a 400 whose body says so.
/// `object_store` retries every 5xx for the whole retry time; a full store
/// stays full, so the client would wait 30 s for a 507. A 4xx is final.
#[derive(Debug)]
struct FullIsFinal(object_store::client::HttpClient);

#[async_trait]
impl object_store::client::HttpService for FullIsFinal {
    async fn call(
        &self,
        req: object_store::client::HttpRequest,
    ) -> Result<object_store::client::HttpResponse, object_store::client::HttpError> {
        let resp = self.0.execute(req).await?;
        if resp.status().as_u16() != 507 {
            return Ok(resp);
        }
        let (mut parts, _) = resp.into_parts();
        parts.status = 400u16.try_into().expect("400 is a status");
        Ok(object_store::client::HttpResponse::from_parts(
            parts,
            object_store::client::HttpResponseBody::from(FULL_MARK.to_string()),
        ))
    }
}

/// Connects [`FullIsFinal`] clients.
#[derive(Debug, Default)]
struct FullIsFinalConnector;

impl object_store::client::HttpConnector for FullIsFinalConnector {
    fn connect(
        &self,
        options: &object_store::ClientOptions,
    ) -> object_store::Result<object_store::client::HttpClient> {
        let inner = object_store::client::ReqwestConnector::default().connect(options)?;
        Ok(object_store::client::HttpClient::new(FullIsFinal(inner)))
    }
}

/// Retries with backoff (100 ms doubling to 4 s) for at most `retry_for`.
fn retry_config(retry_for: std::time::Duration) -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(4),
            base: 2.0,
        },
        max_retries: if retry_for.is_zero() { 0 } else { 20 },
        retry_timeout: retry_for,
    }
}

fn config_err(msg: impl Into<String>) -> StoreError {
    StoreError::Config(msg.into())
}

fn apply<B, K: std::str::FromStr>(
    builder: B,
    scheme: &str,
    pairs: &[(String, String)],
    with: impl Fn(B, K, String) -> B,
) -> Result<B, StoreError> {
    let mut b = builder;
    for (k, v) in pairs {
        let key: K = k.parse().map_err(|_| {
            config_err(format!(
                "unknown {scheme}:// store option {k:?} (see docs/storage.md for the keys)"
            ))
        })?;
        b = with(b, key, v.clone());
    }
    Ok(b)
}

impl RemoteBackend {
    /// Wraps an existing store (tests, embedding).
    pub fn new(store: Arc<dyn ObjectStore>, described: impl Into<String>) -> RemoteBackend {
        RemoteBackend {
            store,
            described: described.into(),
            walk_lists: false,
            strip: String::new(),
        }
    }

    /// Opens the store a URL names (see the module docs), retrying
    /// failed requests for [`crate::RETRY_FOR_DEFAULT`].
    pub fn from_url(url: &str) -> Result<RemoteBackend, StoreError> {
        RemoteBackend::from_url_retrying(url, crate::RETRY_FOR_DEFAULT)
    }

    /// As [`RemoteBackend::from_url`], retrying failed requests (server
    /// errors, timeouts, broken connections) for at most `retry_for`.
    pub fn from_url_retrying(
        url: &str,
        retry_for: std::time::Duration,
    ) -> Result<RemoteBackend, StoreError> {
        use object_store::aws::AmazonS3Builder;
        use object_store::azure::MicrosoftAzureBuilder;
        use object_store::gcp::GoogleCloudStorageBuilder;
        use object_store::http::HttpBuilder;

        let parsed = url::Url::parse(url)
            .map_err(|e| config_err(format!("store URL {url:?} does not parse: {e}")))?;
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut bare = parsed.clone();
        bare.set_query(None);
        let prefix = bare.path().trim_matches('/').to_string();
        // What logs may show: no query (could hold secrets), no password.
        let mut shown = bare.clone();
        let _ = shown.set_password(None);
        let described = shown.to_string();
        let bucket_url = format!("{}://{}", bare.scheme(), bare.host_str().unwrap_or(""));
        let store: Arc<dyn ObjectStore> = match bare.scheme() {
            "s3" | "s3a" => {
                let b = AmazonS3Builder::from_env()
                    .with_url(bucket_url)
                    .with_retry(retry_config(retry_for))
                    .with_http_connector(FullIsFinalConnector);
                let b = apply(b, "s3", &pairs, |b, k, v| b.with_config(k, v))?;
                Arc::new(b.build().map_err(|e| remote_err("configuring S3", e))?)
            }
            "az" | "azure" | "abfs" => {
                let b = MicrosoftAzureBuilder::from_env()
                    .with_url(bucket_url)
                    .with_retry(retry_config(retry_for))
                    .with_http_connector(FullIsFinalConnector);
                let b = apply(b, "az", &pairs, |b, k, v| b.with_config(k, v))?;
                Arc::new(
                    b.build()
                        .map_err(|e| remote_err("configuring Azure Blob", e))?,
                )
            }
            "gs" => {
                let b = GoogleCloudStorageBuilder::from_env()
                    .with_url(bucket_url)
                    .with_retry(retry_config(retry_for))
                    .with_http_connector(FullIsFinalConnector);
                let b = apply(b, "gs", &pairs, |b, k, v| b.with_config(k, v))?;
                Arc::new(
                    b.build()
                        .map_err(|e| remote_err("configuring Google Cloud Storage", e))?,
                )
            }
            "http" | "https" => {
                if !pairs.is_empty() {
                    return Err(config_err(
                        "http(s):// stores take no query options; put credentials in the URL's user:password",
                    ));
                }
                let base = bare.to_string().trim_end_matches('/').to_string();
                let store = HttpBuilder::new()
                    .with_url(base)
                    .with_retry(retry_config(retry_for))
                    .with_http_connector(FullIsFinalConnector)
                    .with_client_options(
                        object_store::ClientOptions::new().with_allow_http(true),
                    )
                    .build()
                    .map_err(|e| remote_err("configuring HTTP store", e))?;
                return Ok(RemoteBackend {
                    store: Arc::new(store),
                    described,
                    walk_lists: true,
                    strip: prefix,
                });
            }
            "memory" => Arc::new(object_store::memory::InMemory::new()),
            other => {
                return Err(config_err(format!(
                    "unsupported store URL scheme {other:?}: use file://, s3://, az://, gs://, http(s):// or memory://"
                )))
            }
        };
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            store
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(
                store,
                Path::from(prefix.as_str()),
            ))
        };
        Ok(RemoteBackend {
            store,
            described,
            walk_lists: false,
            strip: String::new(),
        })
    }

    /// A listed name relative to the store's base.
    fn relative(&self, p: &Path) -> String {
        let p = p.as_ref();
        if self.strip.is_empty() {
            return p.to_string();
        }
        p.strip_prefix(self.strip.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or(p)
            .to_string()
    }

    async fn walk(&self, dir: &str) -> Result<Vec<Listed>, StoreError> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_string()];
        while let Some(d) = todo.pop() {
            let p = Path::from(d.as_str());
            let res = match self.store.list_with_delimiter(Some(&p)).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(remote_err(&format!("listing {d}"), e)),
            };
            for sub in res.common_prefixes {
                let sub = self.relative(&sub);
                // A WebDAV listing names the directory itself, too.
                if sub.len() > d.len() && sub.starts_with(&d) {
                    todo.push(sub);
                }
            }
            for m in res.objects {
                let key = self.relative(&m.location);
                out.push(Listed { key, ..listed(m) });
            }
        }
        Ok(out)
    }
}

fn listed(m: object_store::ObjectMeta) -> Listed {
    Listed {
        key: m.location.to_string(),
        size: m.size,
        modified: SystemTime::from(m.last_modified),
    }
}

#[async_trait]
impl ObjectBackend for RemoteBackend {
    async fn put(&self, key: &str, data: Bytes, _sync: bool) -> Result<(), StoreError> {
        // Every supported store makes a completed PUT durable and atomic.
        self.store
            .put(&Path::from(key), PutPayload::from_bytes(data))
            .await
            .map_err(|e| remote_err(&format!("writing {key} to {}", self.described), e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match self.store.get(&Path::from(key)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| {
                remote_err(&format!("reading {key} from {}", self.described), e)
            })?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote_err(
                &format!("reading {key} from {}", self.described),
                e,
            )),
        }
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Option<Bytes>, StoreError> {
        if range.is_empty() {
            return Ok(self.head(key).await?.map(|_| Bytes::new()));
        }
        match self.store.get_range(&Path::from(key), range.clone()).await {
            Ok(b) if b.len() as u64 == range.end - range.start => Ok(Some(b)),
            Ok(b) => Err(StoreError::Backend(format!(
                "reading {range:?} of {key} from {}: got {} bytes",
                self.described,
                b.len()
            ))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote_err(
                &format!("reading {range:?} of {key} from {}", self.described),
                e,
            )),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<SystemTime>, StoreError> {
        match self.store.head(&Path::from(key)).await {
            Ok(m) => Ok(Some(SystemTime::from(m.last_modified))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote_err(
                &format!("checking {key} in {}", self.described),
                e,
            )),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(remote_err(
                &format!("deleting {key} from {}", self.described),
                e,
            )),
        }
    }

    async fn list(&self, dir: &str) -> Result<Vec<Listed>, StoreError> {
        if self.walk_lists {
            return self.walk(dir).await;
        }
        let p = Path::from(dir);
        self.store
            .list(Some(&p))
            .map_ok(listed)
            .try_collect()
            .await
            .map_err(|e| remote_err(&format!("listing {dir} in {}", self.described), e))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn describe(&self) -> String {
        self.described.clone()
    }
}
