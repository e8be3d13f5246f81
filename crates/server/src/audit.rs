//! The audit log: one entry per API request (REST, the GitHub Actions
//! protocol and its blob URLs), allowed or denied.
//!
//! [`record`] wraps every route: it gives the request an [`AuditNote`],
//! which authentication fills with the token and [`crate::access`] with
//! what the request acted on and why it was denied; once the response is
//! ready, the entry (time, token id and name, never the secret, action,
//! resource, result, status, client address, user agent) goes to the
//! [`AuditLog`]. Entries are written by one background task in batches
//! (one transaction per batch, not a synchronous commit per request); a
//! queue that fills up makes requests wait rather than drop entries, and a
//! failing database is retried. What a crash can lose is the batch in
//! flight, at most [`FLUSH_EVERY`] of requests. Reads of content are one
//! entry per request, naming the artifact or file, never per byte range.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use satchel_db::MetaStore;
use satchel_model::access::AuditEntry;
use tokio::sync::{mpsc, oneshot};

use crate::AppState;

/// How long an entry may wait before its batch is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Entries waiting at most; further requests wait for the writer.
const QUEUE: usize = 10_000;
/// Entries per write.
const BATCH: usize = 1000;

/// What a request did, filled in while it runs.
#[derive(Debug, Clone, Default)]
pub struct AuditNote(Arc<Mutex<Note>>);

#[derive(Debug, Default)]
struct Note {
    token_id: Option<String>,
    token_name: Option<String>,
    org: Option<String>,
    resources: Vec<String>,
    denied: Option<String>,
}

/// Most resources one entry lists (a batch download of 10,000 files is
/// one entry naming the first of them and how many more).
const MAX_RESOURCES: usize = 20;

impl AuditNote {
    /// Who made the request.
    pub fn token(&self, id: &str, name: &str, org: Option<&str>) {
        let mut n = self.0.lock().unwrap_or_else(|p| p.into_inner());
        n.token_id = Some(id.to_string());
        n.token_name = Some(name.to_string());
        n.org = org.map(str::to_string);
    }

    /// What it acted on.
    pub fn resource(&self, r: String) {
        let mut n = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !n.resources.contains(&r) {
            n.resources.push(r);
        }
    }

    /// Why it was refused.
    pub fn deny(&self, reason: &str) {
        let mut n = self.0.lock().unwrap_or_else(|p| p.into_inner());
        n.denied.get_or_insert_with(|| reason.to_string());
    }
}

enum Msg {
    Entry(Box<AuditEntry>),
    Flush(oneshot::Sender<()>),
}

/// The writer of audit entries.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
}

impl AuditLog {
    /// Starts the writer into `db` (on the current Tokio runtime).
    pub fn start(db: Arc<dyn MetaStore>) -> AuditLog {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(db, rx));
        AuditLog { tx }
    }

    /// Queues an entry; waits while the queue is full.
    pub async fn push(&self, e: AuditEntry) {
        if self.tx.send(Msg::Entry(Box::new(e))).await.is_err() {
            tracing::error!("audit writer is gone; an entry was not recorded");
        }
    }

    /// Returns once everything queued before the call is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn writer(db: Arc<dyn MetaStore>, mut rx: mpsc::Receiver<Msg>) {
    let mut batch: Vec<AuditEntry> = Vec::new();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let take = |m: Msg, batch: &mut Vec<AuditEntry>, waiting: &mut Vec<_>| match m {
        Msg::Entry(e) => batch.push(*e),
        Msg::Flush(done) => waiting.push(done),
    };
    let mut open = true;
    while open {
        match rx.recv().await {
            Some(m) => take(m, &mut batch, &mut waiting),
            None => return,
        }
        // Gather until the first entry has waited long enough, the batch
        // is full, or someone waits for a flush.
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH && waiting.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => take(m, &mut batch, &mut waiting),
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        let mut delay = Duration::from_millis(100);
        while !batch.is_empty() {
            match db.append_audit(&batch).await {
                Ok(()) => batch.clear(),
                Err(e) => {
                    tracing::error!("writing {} audit entries: {e}; retrying", batch.len());
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        for w in waiting.drain(..) {
            let _ = w.send(());
        }
    }
}

/// Middleware: records one entry per request.
pub async fn record(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let note = AuditNote::default();
    req.extensions_mut().insert(note.clone());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().chars().take(200).collect());
    let action = format!("{} {route}", req.method());
    let client = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let user_agent = req
        .headers()
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(200).collect());
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let n = {
        let mut n = note.0.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *n)
    };
    let mut resource = n
        .resources
        .iter()
        .take(MAX_RESOURCES)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if n.resources.len() > MAX_RESOURCES {
        resource.push_str(&format!("; and {} more", n.resources.len() - MAX_RESOURCES));
    }
    let now = satchel_model::id::now_millis();
    // Refused before or by authorization: 401, 403, 429.
    let allowed = n.denied.is_none() && !matches!(status, 401 | 403 | 429);
    let reason = n
        .denied
        .or_else(|| (!allowed).then(|| format!("HTTP {status}")));
    state
        .audit
        .push(AuditEntry {
            id: satchel_model::id::new_id(),
            at: satchel_model::id::rfc3339_millis(now),
            at_ms: now,
            token_id: n.token_id,
            token_name: n.token_name,
            org: n.org,
            action,
            resource,
            allowed,
            status,
            reason,
            client,
            user_agent,
        })
        .await;
    response
}
