//! What `/metrics` reports beyond the plain counters of [`crate::Counters`]:
//! requests by route and status with latency histograms, bytes in and out,
//! requests in flight, and the storage figures (logical, distinct and
//! stored bytes, artifacts by state) that the UI shows per pipeline.
//!
//! Requests are counted by the route pattern they matched (`GET
//! /api/v1/artifacts/{id}`), never by the path asked for, so the number of
//! series stays bounded whatever clients send; a request no route took is
//! counted as `unmatched`. Latency is the time until the response starts
//! (a long download's streaming is not in it). Storage figures are
//! aggregates over whole tables, computed at most once a minute.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use satchel_model::access::PipelineStorage;

use crate::error::ApiError;
use crate::AppState;

/// Content store operations that failed through no fault of the client,
/// in this process: counted where a store error becomes an answer (the
/// API's [`crate::error::ApiError`], the protocol's Twirp error). A
/// failure in the middle of a streamed download ends the stream and is
/// logged, not counted.
static STORAGE_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Counts one content store failure that is the server's.
pub fn storage_error() {
    STORAGE_ERRORS.fetch_add(1, Relaxed);
}

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How long storage figures are reused.
pub const STORAGE_TTL: Duration = Duration::from_secs(60);
/// How long a caller waits for the first figures before giving up (503).
const STORAGE_WAIT: Duration = Duration::from_secs(20);

/// Requests of one method and route.
#[derive(Debug, Default)]
struct RouteStats {
    by_status: BTreeMap<u16, u64>,
    /// Requests at or under each of [`BUCKETS`] (not cumulative here).
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_secs: f64,
}

/// Process-wide figures of the HTTP layer and the store.
#[derive(Debug, Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<(String, String), RouteStats>>,
    /// Request body bytes received.
    pub bytes_in: AtomicU64,
    /// Response body bytes sent.
    pub bytes_out: AtomicU64,
    /// Requests being handled now (until their response starts).
    in_flight: AtomicU64,
    /// Bytes of files and chunks an upload did not send because the server
    /// already held them.
    pub dedup_bytes: AtomicU64,
    /// Storage bytes the content store's sweep freed (packs, chunks and
    /// orphaned objects).
    pub gc_bytes_freed: AtomicU64,
    /// Bytes of the distinct contents garbage collection deleted (each
    /// content's size, whatever it took in storage).
    pub gc_content_deleted: AtomicU64,
    /// Bytes the content store held after this process's last sweep, plus
    /// one (0: no sweep yet).
    stored_after_sweep: AtomicU64,
    storage: Mutex<StorageSlot>,
    /// Told when a computation of the storage figures ends.
    storage_done: tokio::sync::Notify,
}

/// The storage figures and their one computation.
#[derive(Debug, Default)]
struct StorageSlot {
    figures: Option<Arc<StorageFigures>>,
    /// When the figures, or the failure, were taken.
    at: Option<Instant>,
    /// Why the last computation failed, if it did.
    failed: Option<String>,
    /// Whether a computation is running (there is never more than one).
    computing: bool,
    /// Bumped by [`Metrics::forget_storage`]: a computation started
    /// before is not kept.
    generation: u64,
}

/// Storage figures from metadata, as of `computed_at`.
#[derive(Debug, Clone)]
pub struct StorageFigures {
    /// Every pipeline's, by key.
    pub pipelines: Vec<PipelineStorage>,
    /// Bytes of the distinct contents known to be stored.
    pub content_bytes: u64,
    /// When, RFC 3339.
    pub computed_at: String,
}

impl Metrics {
    /// Counts one request of `method` on `route` (a pattern, or
    /// `unmatched`) answered with `status` after `took`.
    pub fn observe(&self, method: &str, route: &str, status: u16, took: Duration) {
        // Any other method a client makes up is one series, not many.
        let method = match method {
            "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS" => method,
            _ => "other",
        };
        let secs = took.as_secs_f64();
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let r = routes
            .entry((method.to_string(), route.to_string()))
            .or_default();
        *r.by_status.entry(status).or_default() += 1;
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            r.buckets[i] += 1;
        }
        r.count += 1;
        r.sum_secs += secs;
    }

    /// Records what a sweep left in the store.
    pub fn swept(&self, listed: u64, freed: u64) {
        self.stored_after_sweep
            .store(listed.saturating_sub(freed) + 1, Relaxed);
    }

    /// Marks the storage figures out of date (a GC pass changed them): the
    /// next caller starts new ones and, like everyone until they are
    /// ready, is served the old.
    pub fn forget_storage(&self) {
        let mut slot = self.storage.lock().unwrap_or_else(|p| p.into_inner());
        slot.at = None;
        slot.failed = None;
        slot.generation += 1;
    }

    /// What the content store held after this process's last sweep.
    pub fn stored_bytes(&self) -> Option<u64> {
        self.stored_after_sweep.load(Relaxed).checked_sub(1)
    }

    /// The storage figures. Older than [`STORAGE_TTL`], they are computed
    /// again in a task of their own, one at a time whoever asks, and
    /// meanwhile the old ones are served; a caller waits only when there
    /// are none. A failure is kept for [`STORAGE_TTL`] too, so a slow or
    /// failing database is not asked again by every request, and a
    /// caller that gives up (a client gone) cancels nothing.
    pub async fn storage(&self, s: &AppState) -> Result<Arc<StorageFigures>, ApiError> {
        let deadline = tokio::time::Instant::now() + STORAGE_WAIT;
        loop {
            let done = self.storage_done.notified();
            tokio::pin!(done);
            {
                let mut slot = self.storage.lock().unwrap_or_else(|p| p.into_inner());
                let fresh = slot.at.is_some_and(|at| at.elapsed() < STORAGE_TTL);
                if !fresh && !slot.computing {
                    slot.computing = true;
                    tokio::spawn(compute_storage(s.clone(), slot.generation));
                }
                if let Some(f) = &slot.figures {
                    return Ok(f.clone());
                }
                if let (true, Some(why)) = (fresh, &slot.failed) {
                    return Err(ApiError::internal(format!(
                        "computing storage figures: {why}"
                    )));
                }
                // Registered before the lock is let go: no end is missed.
                done.as_mut().enable();
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return Err(ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "not_ready",
                    "the storage figures are still being computed; ask again shortly",
                ));
            }
        }
    }

    /// The HTTP and storage series in Prometheus text format.
    pub fn render(&self, out: &mut String, storage: Option<&StorageFigures>) {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str(
            "# HELP satchel_http_requests_total Requests answered, by method, route pattern and status.\n\
             # TYPE satchel_http_requests_total counter\n",
        );
        for ((method, route), r) in routes.iter() {
            for (status, n) in &r.by_status {
                let _ = writeln!(
                    out,
                    "satchel_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                    escape(route)
                );
            }
        }
        out.push_str(
            "# HELP satchel_http_request_duration_seconds Time until the response starts, by method and route pattern.\n\
             # TYPE satchel_http_request_duration_seconds histogram\n",
        );
        for ((method, route), r) in routes.iter() {
            let labels = format!("method=\"{method}\",route=\"{}\"", escape(route));
            let mut cumulative = 0;
            for (b, n) in BUCKETS.iter().zip(r.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "satchel_http_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "satchel_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n\
                 satchel_http_request_duration_seconds_sum{{{labels}}} {}\n\
                 satchel_http_request_duration_seconds_count{{{labels}}} {}",
                r.count, r.sum_secs, r.count
            );
        }
        drop(routes);
        let counter = |out: &mut String, name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        counter(
            out,
            "satchel_http_requests_in_flight",
            "Requests being handled now (until their response starts).",
            "gauge",
            self.in_flight.load(Relaxed),
        );
        counter(
            out,
            "satchel_http_received_bytes_total",
            "Request body bytes received.",
            "counter",
            self.bytes_in.load(Relaxed),
        );
        counter(
            out,
            "satchel_http_sent_bytes_total",
            "Response body bytes sent.",
            "counter",
            self.bytes_out.load(Relaxed),
        );
        counter(
            out,
            "satchel_dedup_bytes_total",
            "Bytes of uploaded files and chunks not sent because the server already held them.",
            "counter",
            self.dedup_bytes.load(Relaxed),
        );
        counter(
            out,
            "satchel_gc_deleted_content_bytes_total",
            "Bytes of the distinct contents garbage collection deleted (each content's size).",
            "counter",
            self.gc_content_deleted.load(Relaxed),
        );
        counter(
            out,
            "satchel_gc_swept_bytes_total",
            "Storage bytes the content store's sweep freed (packs, chunks, orphaned objects; a whole stored blob is deleted before the sweep and not in it).",
            "counter",
            self.gc_bytes_freed.load(Relaxed),
        );
        counter(
            out,
            "satchel_storage_errors_total",
            "Content store operations that failed through no fault of the client.",
            "counter",
            STORAGE_ERRORS.load(Relaxed),
        );
        if let Some(stored) = self.stored_bytes() {
            counter(
                out,
                "satchel_store_stored_bytes",
                "Bytes the content store held after this process's last garbage collection pass (after chunk deduplication and compression).",
                "gauge",
                stored,
            );
        }
        let Some(f) = storage else {
            return;
        };
        let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
        let mut logical = 0;
        for p in &f.pipelines {
            logical += p.logical_bytes;
            for (state, n) in &p.artifacts {
                *by_state.entry(state).or_default() += n;
            }
        }
        out.push_str(
            "# HELP satchel_artifacts Artifacts by state (every pipeline; computed at most once a minute).\n\
             # TYPE satchel_artifacts gauge\n",
        );
        for (state, n) in by_state {
            let _ = writeln!(out, "satchel_artifacts{{state=\"{}\"}} {n}", escape(state));
        }
        counter(
            out,
            "satchel_logical_bytes",
            "Bytes of the files of finished artifacts, as downloaded (computed at most once a minute).",
            "gauge",
            logical,
        );
        counter(
            out,
            "satchel_content_bytes",
            "Bytes of the distinct contents known to be stored, each once, before chunk deduplication and compression (computed at most once a minute).",
            "gauge",
            f.content_bytes,
        );
    }
}

/// Computes the storage figures and keeps them (unless forgotten since
/// `generation`), then wakes whoever waits.
async fn compute_storage(s: AppState, generation: u64) {
    /// Ends the computation however the task ends (done, cancelled,
    /// panicked), so a later caller can start another, and wakes waiters.
    struct Done(Arc<Metrics>);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0
                .storage
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .computing = false;
            self.0.storage_done.notify_waiters();
        }
    }
    let _done = Done(s.metrics.clone());
    let result = s.db.storage_stats().await;
    let m = &s.metrics;
    {
        let mut slot = m.storage.lock().unwrap_or_else(|p| p.into_inner());
        // Figures begun before a GC pass are still newer than the ones
        // served: kept, but left out of date, so the next caller starts
        // fresh ones.
        let current = slot.generation == generation;
        match result {
            Ok((pipelines, content_bytes)) => {
                if current {
                    slot.at = Some(Instant::now());
                }
                slot.failed = None;
                slot.figures = Some(Arc::new(StorageFigures {
                    pipelines,
                    content_bytes,
                    computed_at: satchel_model::id::rfc3339_millis(satchel_model::id::now_millis()),
                }));
            }
            Err(e) => {
                // Tried again a minute later, whatever the generation.
                tracing::warn!("computing storage figures: {e}");
                slot.at = Some(Instant::now());
                slot.failed = Some(e.to_string());
            }
        }
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Leaves the in-flight count when the request is done or dropped.
struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Middleware: counts each request under the route it matched, times it,
/// and counts its response's body bytes as they are sent. Applied where
/// routes are (the matched route is known only inside a router).
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let m = state.metrics.clone();
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    m.in_flight.fetch_add(1, Relaxed);
    let guard = InFlight(m.clone());
    let started = Instant::now();
    let response = next.run(req).await;
    drop(guard);
    if response.extensions().get::<crate::error::Full>().is_some() {
        crate::maintenance::release_soon(&state);
    }
    m.observe(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response.map(|body| {
        axum::body::Body::new(Counted {
            inner: body,
            metrics: m,
        })
    })
}

/// A response body that adds what it yields to [`Metrics::bytes_out`],
/// keeping the inner body's size hint (so a known length is still sent
/// as `Content-Length`).
struct Counted {
    inner: axum::body::Body,
    metrics: Arc<Metrics>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.metrics.bytes_out.fetch_add(data.len() as u64, Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
