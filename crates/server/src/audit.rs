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
/// The longest a flush waits.
pub const FLUSH_WAIT: Duration = Duration::from_secs(10);

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

/// Longest text kept of one field, in characters.
const MAX_FIELD_CHARS: usize = 500;

/// `s` as the log keeps it: control characters (NUL included, which
/// PostgreSQL refuses in text, and terminal escapes) written as `\u{…}`,
/// and at most [`MAX_FIELD_CHARS`] characters. Notes are taken before a
/// request's input is validated, so they hold whatever a client sent.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_FIELD_CHARS));
    for (i, c) in s.chars().enumerate() {
        if i == MAX_FIELD_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

impl AuditNote {
    /// Notes who a request was authenticated as.
    pub fn principal(&self, p: &crate::access::Principal) {
        match p {
            crate::access::Principal::Admin => self.token("admin", "bootstrap admin", None),
            crate::access::Principal::Token(t) => self.token(&t.id, &t.name, Some(&t.org)),
        }
    }

    /// Who made the request.
    pub fn token(&self, id: &str, name: &str, org: Option<&str>) {
        let mut n = self.0.lock().unwrap_or_else(|p| p.into_inner());
        n.token_id = Some(clean(id));
        n.token_name = Some(clean(name));
        n.org = org.map(clean);
    }

    /// What it acted on.
    pub fn resource(&self, r: String) {
        let r = clean(&r);
        let mut n = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !n.resources.contains(&r) {
            n.resources.push(r);
        }
    }

    /// Why it was refused.
    pub fn deny(&self, reason: &str) {
        let mut n = self.0.lock().unwrap_or_else(|p| p.into_inner());
        n.denied.get_or_insert_with(|| clean(reason));
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

    /// Queues an entry without waiting (from a destructor): at once if
    /// there is room, else from a task of its own (one per request dropped
    /// while the queue is full; they wait for the writer like requests
    /// do).
    fn push_soon(&self, e: AuditEntry) {
        if let Err(mpsc::error::TrySendError::Full(m)) = self.tx.try_send(Msg::Entry(Box::new(e))) {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(m).await;
            });
        }
    }

    /// Returns once everything queued before the call is written, or
    /// after [`FLUSH_WAIT`] (a database that is down must not hang the
    /// caller; the entries stay queued and are written when it is back).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        let wait = async {
            if self.tx.send(Msg::Flush(tx)).await.is_ok() {
                let _ = rx.await;
            }
        };
        if tokio::time::timeout(FLUSH_WAIT, wait).await.is_err() {
            tracing::warn!(
                "the audit log is not written within {} s; entries stay queued",
                FLUSH_WAIT.as_secs()
            );
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
        write(&*db, &mut batch).await;
        for w in waiting.drain(..) {
            let _ = w.send(());
        }
    }
}

/// Writes `batch` (and empties it), retrying with backoff for as long as
/// the database fails: entries are never dropped (a database that is down
/// makes requests wait on the full queue instead). Fields are [`clean`],
/// so no entry is one the database refuses.
async fn write(db: &dyn MetaStore, batch: &mut Vec<AuditEntry>) {
    let mut delay = Duration::from_millis(100);
    while !batch.is_empty() {
        match db.append_audit(batch).await {
            Ok(()) => batch.clear(),
            Err(e) => {
                tracing::error!("writing {} audit entries: {e}; retrying", batch.len());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One request's entry in the making. Dropped before the answer (the
/// client went away and its future was dropped), it records the request
/// as status 499.
struct Pending {
    /// The entry being queued (a request dropped while it waits for room
    /// in the queue still records it).
    ready: Option<AuditEntry>,
    log: AuditLog,
    note: AuditNote,
    action: String,
    client: Option<String>,
    user_agent: Option<String>,
    status: Option<u16>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(e) = self.ready.take() {
            self.log.push_soon(e);
        } else if self.status.is_none() {
            let e = self.entry();
            self.log.push_soon(e);
        }
    }
}

impl Pending {
    /// The entry, as of now (the note is taken).
    fn entry(&mut self) -> AuditEntry {
        let status = self.status.unwrap_or(499);
        let n = {
            let mut n = self.note.0.lock().unwrap_or_else(|p| p.into_inner());
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
        let reason = n.denied.or_else(|| {
            if !allowed {
                Some(format!("HTTP {status}"))
            } else if self.status.is_none() {
                Some("the client went away before the answer".into())
            } else {
                None
            }
        });
        AuditEntry {
            id: satchel_model::id::new_id(),
            at: satchel_model::id::rfc3339_millis(now),
            at_ms: now,
            token_id: n.token_id,
            token_name: n.token_name,
            org: n.org,
            action: std::mem::take(&mut self.action),
            resource,
            allowed,
            status,
            reason,
            client: self.client.take(),
            user_agent: self.user_agent.take(),
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
        .unwrap_or_else(|| req.uri().path().to_string());
    let client = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let user_agent = req
        .headers()
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(clean);
    let mut pending = Pending {
        ready: None,
        log: state.audit.clone(),
        note,
        action: clean(&format!("{} {route}", req.method())),
        client,
        user_agent,
        status: None,
    };
    let response = next.run(req).await;
    pending.status = Some(response.status().as_u16());
    // Waits while the queue is full: back-pressure, never a lost entry.
    // Dropped while waiting, `pending` queues its copy instead; once the
    // send is done no await follows, so it is never recorded twice.
    let entry = pending.entry();
    pending.ready = Some(entry.clone());
    state.audit.push(entry).await;
    pending.ready = None;
    response
}
