//! A fault-injecting HTTP proxy for end-to-end tests. It forwards every
//! request to one upstream server (an agent's requests to satchel, or
//! satchel's requests to an object store) unless its rule answers the
//! request itself with an error status. The rule runs on a
//! blocking thread, so it may also do slow work first (run a GC) and
//! then let the request through.

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};

/// What the proxy does with one request.
pub enum Fault {
    /// Sends it on, and its answer back.
    Forward,
    /// Sends it on without this header (a proxy that drops `Range`).
    ForwardWithout(&'static str),
    /// Sends it on, and cuts the answer's body off after this many bytes
    /// (the connection breaks).
    CutAfter(usize),
    /// Answers it with this status and JSON body; upstream never sees it.
    Answer(u16, &'static str),
}

type Rule = dyn Fn(&str, &str) -> Fault + Send + Sync;

#[derive(Clone)]
struct Shared {
    upstream: String,
    http: reqwest::Client,
    rule: Arc<Rule>,
    seen: Arc<Mutex<Vec<String>>>,
}

/// A running proxy; stops with the test process.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// Proxies to `upstream` (`http://host:port`), asking `rule(method,
    /// path)` about each request.
    pub fn start(
        upstream: &str,
        rule: impl Fn(&str, &str) -> Fault + Send + Sync + 'static,
    ) -> Proxy {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            rule: Arc::new(rule),
            seen: seen.clone(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new().fallback(forward).with_state(shared);
                axum::serve(listener, app).await.unwrap();
            });
        });
        let addr = rx.recv().unwrap();
        Proxy {
            url: format!("http://{addr}"),
            seen,
        }
    }

    /// Every request so far, as `METHOD /path STATUS`.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests so far start with `prefix` (`"PUT /x"`) and were
    /// answered `status`.
    pub fn count(&self, prefix: &str, status: u16) -> usize {
        self.seen()
            .iter()
            .filter(|l| l.starts_with(prefix) && l.ends_with(&format!(" {status}")))
            .count()
    }
}

async fn forward(State(st): State<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let method = parts.method.to_string();
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let path = parts.uri.path().to_string();
    let rule = st.rule.clone();
    let (m, p) = (method.clone(), path.clone());
    let fault = tokio::task::spawn_blocking(move || rule(&m, &p))
        .await
        .unwrap();
    let record = |status: &str| {
        st.seen
            .lock()
            .unwrap()
            .push(format!("{method} {path} {status}"));
    };
    match fault {
        Fault::Answer(status, json) => {
            // Read first: a client still sending its body would see the
            // connection close instead of the answer.
            let _ = axum::body::to_bytes(body, usize::MAX).await;
            record(&status.to_string());
            return (
                axum::http::StatusCode::from_u16(status).unwrap(),
                [("content-type", "application/json")],
                json,
            )
                .into_response();
        }
        Fault::Forward | Fault::ForwardWithout(_) | Fault::CutAfter(_) => {}
    }
    let cut = match fault {
        Fault::CutAfter(n) => Some(n),
        _ => None,
    };
    let dropped = match fault {
        Fault::ForwardWithout(h) => Some(h),
        _ => None,
    };
    let mut rb = st
        .http
        .request(parts.method.clone(), format!("{}{target}", st.upstream));
    for (k, v) in &parts.headers {
        if !matches!(
            k.as_str(),
            "host" | "connection" | "transfer-encoding" | "keep-alive"
        ) && dropped.is_none_or(|h| !k.as_str().eq_ignore_ascii_case(h))
        {
            rb = rb.header(k, v);
        }
    }
    let rb = rb.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    match rb.send().await {
        Ok(resp) => {
            record(&resp.status().as_u16().to_string());
            let mut out = Response::builder().status(resp.status().as_u16());
            for (k, v) in resp.headers() {
                if !matches!(
                    k.as_str(),
                    "connection" | "transfer-encoding" | "keep-alive"
                ) {
                    out = out.header(k, v);
                }
            }
            let mut left = cut.unwrap_or(usize::MAX);
            let body = resp.bytes_stream().map(move |r| {
                let b = r.map_err(std::io::Error::other)?;
                if b.len() > left {
                    return Err(std::io::Error::other("the proxy cut the answer"));
                }
                left -= b.len();
                Ok(b)
            });
            out.body(Body::from_stream(body)).unwrap()
        }
        Err(e) => {
            record("502");
            (axum::http::StatusCode::BAD_GATEWAY, format!("proxy: {e}")).into_response()
        }
    }
}
