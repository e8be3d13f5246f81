//! The web UI at `/`: plain server-rendered HTML (maud templates compiled
//! into the binary; one small script, `/ui.js`, only for copy buttons,
//! which stay hidden without it), served by the same process as the API
//! and deciding access the same way ([`Caller`]).
//!
//! Pages: pipelines → runs → a run's jobs and artifacts → an artifact's
//! files, each paged like its `/api/v1` twin; a text file by lines
//! (`/artifacts/ID/lines/PATH`, streamed, one page held). Permalinks take a run
//! selector where a run number goes (`/p/web/runs/lastSuccessfulBuild/…`,
//! `/p/web/branches/main/latest/…`), down to an artifact, a file of it, or
//! its zip.
//!
//! **Sessions.** `POST /login` takes a token (any scoped token) and sets it
//! as an `HttpOnly`, `SameSite=Strict` cookie, `Secure` when the request
//! came over TLS (`X-Forwarded-Proto: https` from the proxy that ends it);
//! every page authenticates it again, so a revoked token logs out at once.
//! Forms that change state (login, logout) are refused unless the browser
//! says they come from this origin (`Origin`, `Sec-Fetch-Site`).
//!
//! **Uploaded files are never served in the UI's origin context.** A file
//! opens under `/view/{artifact}/{holder}/{expires}/{signature}/{path}`: a
//! URL signed for one artifact and the token of the session that opened it
//! (`holder`) for [`VIEW_TTL_SECS`]; each request checks that the token
//! is still live and may still read the artifact's pipeline, so revoking
//! it ends its links too. It is served with
//! `Content-Security-Policy: sandbox` (scripts allowed, same origin not),
//! so an HTML report's scripts run in an opaque origin that cannot read the
//! UI's cookie, DOM or API. Its relative links (CSS, images, other pages)
//! resolve under the same signed prefix, so they load without a cookie.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup, DOCTYPE};
use satchel_db::PageRequest;
use satchel_model::api::{Artifact, FileInfo, Run};
use satchel_model::path::url_segment;
use satchel_model::selector::RunSelector;
use serde::Deserialize;

use crate::access::Caller;
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "satchel_session";
/// How long a signed view URL stays valid, in seconds.
pub const VIEW_TTL_SECS: u64 = 3600;
/// Items per UI page.
const PAGE: usize = 100;

/// The UI's routes: pages behind the session, login and the signed view
/// outside it.
pub(crate) fn routes(state: AppState) -> Router<AppState> {
    let pages = Router::new()
        .route("/", get(pipelines))
        .route("/p/{pipeline}", get(runs))
        .route("/p/{pipeline}/runs/{run}", get(run_page))
        .route(
            "/p/{pipeline}/runs/{run}/artifacts/{name}",
            get(artifact_by_name),
        )
        .route(
            "/p/{pipeline}/runs/{run}/artifacts/{name}/{*rest}",
            get(artifact_by_name_rest),
        )
        .route("/p/{pipeline}/branches/{branch}/latest", get(branch_latest))
        .route("/p/{pipeline}/runs/{run}/search", get(search_page))
        .route("/packages", get(repositories_page))
        .route("/packages/{repo}", get(packages_page))
        .route("/artifacts/{id}", get(artifact_page))
        .route("/artifacts/{id}/lines/{*path}", get(lines_page))
        .route("/diff", get(diff_page))
        .route("/diff/file", get(file_diff_page))
        // The API's archive handler, behind the session: a browser sends
        // a cookie, not a bearer token.
        .route(
            "/artifacts/{id}/archive",
            get(crate::routes::artifact_archive),
        )
        .route(
            "/p/{pipeline}/runs/{run}/archive",
            get(crate::routes::run_archive),
        )
        .layer(axum::middleware::from_fn_with_state(state.clone(), session))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::audit::record,
        ));
    Router::new()
        .merge(pages)
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        // Every view (a report's each stylesheet and image too) is in the
        // audit log, as the holder's read.
        .route(
            "/view/{artifact}/{holder}/{expires}/{sig}/{*path}",
            get(view).layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::audit::record,
            )),
        )
        .route("/ui.css", get(stylesheet))
        .route("/ui.js", get(script))
        .layer(axum::middleware::from_fn_with_state(
            state,
            crate::metrics::track,
        ))
}

/// A page's failure, shown as a page.
struct UiError(ApiError);

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> UiError {
        UiError(e)
    }
}

impl From<satchel_db::DbError> for UiError {
    fn from(e: satchel_db::DbError) -> UiError {
        UiError(e.into())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = e.status;
        if status.is_server_error() {
            // The API boundary logs it once; so does this one.
            tracing::error!("ui: {}", e.message);
        }
        let title = status.canonical_reason().unwrap_or("Error");
        let body = layout(
            title,
            html! {
                h1 { (status.as_u16()) " " (title) }
                p { (e.message) }
                p { a href="/" { "All pipelines" } }
            },
        );
        (status, body).into_response()
    }
}

type Page = Result<Markup, UiError>;

fn layout(title: &str, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Satchel" }
                link rel="stylesheet" href="/ui.css";
            }
            body {
                header {
                    nav aria-label="Site" {
                        span.site {
                            a href="/" { strong { "Satchel" } }
                            a href="/" { "Pipelines" }
                            a href="/packages" { "Packages" }
                        }
                        form method="post" action="/logout" {
                            button type="submit" { "Log out" }
                        }
                    }
                }
                script src="/ui.js" defer {}
                main { (main) }
            }
        }
    }
}

const CSS: &str = "\
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fff}\
header nav{display:flex;justify-content:space-between;align-items:center;padding:.5rem 1rem;background:#24292f}\
header a,header button{color:#fff;background:none;border:0;font:inherit;cursor:pointer}header .site{display:flex;gap:1rem;flex-wrap:wrap}\
form.search{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end}form.search input[name=query]{min-width:16rem}\
main{padding:1rem;max-width:72rem;margin:auto}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}dd{margin:0}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #ddd;vertical-align:top}\
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}\
code,.mono{font-family:ui-monospace,monospace;font-size:.9em;word-break:break-all}\
.superseded{color:#777}p.note{color:#555;font-size:.9em}.state-passed{color:#1a7f37}.state-failed{color:#cf222e}\
nav.crumbs ol{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.3rem}\
nav.crumbs li+li:before{content:'/';padding-right:.3rem;color:#777}\
a:focus,button:focus,input:focus{outline:2px solid #0969da;outline-offset:2px}\
.change-added{color:#1a7f37}.change-removed{color:#cf222e}.change-changed{color:#9a6700}\
table.lines{width:auto}table.lines td{border:0;padding:0 .5rem}table.lines td.ln{text-align:right;user-select:none;width:1%}table.lines td.ln a{color:#777;text-decoration:none}\
table.lines pre{margin:0;white-space:pre-wrap;word-break:break-all}table.lines tr:target{background:#fff8c5}.cut,a.raw{color:#777;font-size:.85em}\
pre.diff{overflow-x:auto;font-size:.85em}pre.diff .add{background:#dafbe1}pre.diff .del{background:#ffebe9}pre.diff .hunk{color:#0969da}\
@media (max-width:40rem){td.hide,th.hide{display:none}}";

/// The UI's only script: copy buttons (hidden until it runs, and where
/// the browser offers no clipboard, as on plain HTTP off localhost).
const SCRIPT: &str = "\
if(navigator.clipboard)document.querySelectorAll('button[data-copy]').forEach(function(b){\
b.hidden=false;b.addEventListener('click',function(){\
var t=document.getElementById(b.dataset.copy).textContent;\
navigator.clipboard.writeText(t).then(function(){b.textContent='Copied';},function(){b.textContent='Copy failed';});});});";

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        SCRIPT,
    )
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        CSS,
    )
}

fn crumbs(items: &[(String, Option<String>)]) -> Markup {
    html! {
        nav.crumbs aria-label="Breadcrumb" {
            ol {
                li { a href="/" { "Pipelines" } }
                @for (label, href) in items {
                    li {
                        @if let Some(h) = href { a href=(h) { (label) } } @else { span aria-current="page" { (label) } }
                    }
                }
            }
        }
    }
}

fn pager(next: Option<&str>, base: &str) -> Markup {
    html! {
        @if let Some(c) = next {
            p { a rel="next" href={ (base) "?cursor=" (url_segment(c)) } { "Next page →" } }
        }
    }
}

// ---- Sessions --------------------------------------------------------------

/// The token in the session cookie, if any.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Pages need a live session; without one the browser goes to the login
/// form, and comes back after.
async fn session(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let back = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let to_login = Redirect::to(&format!("/login?next={}", url_segment(&back))).into_response();
    let Some(token) = cookie_token(req.headers()) else {
        return to_login;
    };
    match s.authenticate(&token).await {
        Ok(Ok(principal)) => {
            if let Some(note) = req.extensions().get::<crate::audit::AuditNote>() {
                note.principal(&principal);
            }
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Ok(Err(refused)) => {
            // A wrong cookie is a guess like a wrong bearer token: counted,
            // audited, throttled.
            if let Some(note) = req.extensions().get::<crate::audit::AuditNote>() {
                note.deny(&refused.why);
            }
            let peer = req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip());
            let e = s.auth_refused(peer, refused.why);
            if e.status == StatusCode::TOO_MANY_REQUESTS {
                return UiError(e).into_response();
            }
            to_login
        }
        Err(e) => UiError(e).into_response(),
    }
}

/// Whether a state-changing form comes from this origin: the browser's
/// `Sec-Fetch-Site`, else its `Origin`, must say so.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site == "same-origin" || site == "none";
    }
    match (headers.get(header::ORIGIN), headers.get(header::HOST)) {
        (Some(origin), Some(host)) => {
            let origin = origin.to_str().unwrap_or("");
            let host = host.to_str().unwrap_or("");
            origin == format!("http://{host}") || origin == format!("https://{host}")
        }
        // Not from a browser form (curl, a script): nothing to forge.
        (None, _) => true,
        (Some(_), None) => false,
    }
}

fn secure(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

fn cross_site() -> UiError {
    UiError(ApiError::new(
        StatusCode::FORBIDDEN,
        "cross_site",
        "this form must be sent from Satchel's own pages",
    ))
}

/// Where to go after logging in: only a path on this server.
fn local_target(next: Option<&str>) -> String {
    match next {
        // Visible ASCII only: browsers drop tabs and newlines from URLs, so
        // `/\t/evil` would become `//evil`, another site.
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            n.into()
        }
        _ => "/".into(),
    }
}

#[derive(Deserialize)]
struct Next_ {
    next: Option<String>,
}

fn login_page(next: &str, error: Option<&str>) -> Markup {
    layout(
        "Log in",
        html! {
            h1 { "Log in" }
            @if let Some(e) = error { p role="alert" { (e) } }
            form method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                label for="token" { "Token" }
                " "
                input id="token" name="token" type="password" autocomplete="current-password" required autofocus;
                " "
                button type="submit" { "Log in" }
            }
            p { "Any Satchel token works; the pages show only what it may read." }
        },
    )
}

async fn login_form(Query(q): Query<Next_>) -> Markup {
    login_page(&local_target(q.next.as_deref()), None)
}

/// Largest login form accepted.
const LOGIN_FORM_BYTES: usize = 16 * 1024;

async fn login(State(s): State<AppState>, req: Request) -> Response {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    if !same_origin(&headers) {
        return cross_site().into_response();
    }
    let Ok(body) = axum::body::to_bytes(body, LOGIN_FORM_BYTES).await else {
        return UiError(ApiError::bad_request(format!(
            "the login form is larger than {LOGIN_FORM_BYTES} bytes or was cut off"
        )))
        .into_response();
    };
    let mut token = None;
    let mut next = None;
    for (k, v) in url::form_urlencoded::parse(&body) {
        match &*k {
            "token" => token = Some(v.trim().to_string()),
            "next" => next = Some(v.into_owned()),
            _ => {}
        }
    }
    let next = local_target(next.as_deref());
    let token = token.unwrap_or_default();
    let refused = match s.authenticate(&token).await {
        Ok(Ok(_)) => None,
        Ok(Err(r)) => Some(r.why),
        Err(e) => return UiError(e).into_response(),
    };
    if let Some(why) = refused {
        // Counted with the API's failures: the form is no way around them.
        let e = s.auth_refused(peer, why);
        let mut r = (e.status, login_page(&next, Some(&e.message))).into_response();
        if let Some(wait) = e.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
        }
        return r;
    }
    // A cookie value may not hold every byte; tokens are URL-safe text.
    if !token
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
    {
        return (
            StatusCode::BAD_REQUEST,
            login_page(&next, Some("that token cannot be kept in a cookie")),
        )
            .into_response();
    }
    let cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{}",
        if secure(&headers) { "; Secure" } else { "" }
    );
    let mut r = Redirect::to(&next).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("checked above"),
    );
    r
}

async fn logout(headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return cross_site().into_response();
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        ))
        .expect("ascii"),
    );
    r
}

// ---- Pages -----------------------------------------------------------------

#[derive(Deserialize)]
struct Cursor {
    cursor: Option<String>,
}

impl Cursor {
    fn page(self) -> PageRequest {
        PageRequest {
            cursor: self.cursor,
            limit: PAGE,
            ..PageRequest::default()
        }
    }
}

async fn pipelines(State(s): State<AppState>, caller: Caller) -> Page {
    use satchel_model::units::human_bytes;
    let list = caller.readable_pipelines(&s).await?;
    // Without figures (the database slow or failing to compute them) the
    // page still lists the pipelines.
    let storage = match crate::routes::storage_report(&s, &list).await {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!("ui: storage figures: {}", e.message);
            None
        }
    };
    let figures: std::collections::HashMap<&str, &satchel_model::access::PipelineStorage> = storage
        .iter()
        .flat_map(|r| &r.pipelines)
        .map(|p| (p.pipeline.as_str(), p))
        .collect();
    Ok(layout(
        "Pipelines",
        html! {
            h1 { "Pipelines" }
            @if list.is_empty() { p { "No pipelines yet, or none this token may read." } }
            @else {
                table {
                    thead { tr {
                        th { "Pipeline" } th.hide { "Organization" } th.hide { "Cluster" }
                        th.num { "Artifacts" } th.num { "Size" }
                        th.num.hide title="Distinct contents: each file content once" { "Content" }
                        th.num.hide { "Dedup" }
                    } }
                    tbody {
                        @for p in &list {
                            @let f = figures.get(p.name.as_str()).copied();
                            tr {
                                td { a href={ "/p/" (url_segment(&p.name)) } { (p.name) } }
                                td.hide { (p.org) }
                                td.hide { (p.cluster) }
                                @if let Some(f) = f {
                                    td.num { (f.artifacts.get("finished").copied().unwrap_or(0)) }
                                    td.num { (human_bytes(f.logical_bytes)) }
                                    td.num.hide { (human_bytes(f.content_bytes)) }
                                    td.num.hide { (format!("{:.2}×", f.dedup_ratio())) }
                                } @else {
                                    td.num { "—" } td.num { "—" } td.num.hide { "—" } td.num.hide { "—" }
                                }
                            }
                        }
                    }
                }
                p.note {
                    "Size: the files of finished artifacts, as downloaded. Content: each distinct file content once. "
                    @if let Some(storage) = &storage {
                        "Server-wide, " (human_bytes(storage.content_bytes)) " of distinct content"
                        @if let Some(stored) = storage.stored_bytes {
                            ", stored in " (human_bytes(stored)) " after chunk deduplication and compression (as of the last garbage collection pass)"
                        }
                        ". Figures as of " (storage.computed_at) ", refreshed at most once a minute (— for a pipeline newer than them)."
                    } @else {
                        "The storage figures cannot be computed now (see the server's log)."
                    }
                }
            }
        },
    ))
}

fn duration(run: &Run) -> String {
    let (Some(start), Some(end)) = (
        satchel_model::id::parse_rfc3339_millis(&run.created_at),
        run.finished_at
            .as_deref()
            .and_then(satchel_model::id::parse_rfc3339_millis),
    ) else {
        return String::new();
    };
    let secs = (end - start).max(0) / 1000;
    if secs >= 3600 {
        format!("{}h {:02}m", secs / 3600, secs % 3600 / 60)
    } else {
        format!("{}m {:02}s", secs / 60, secs % 60)
    }
}

async fn runs(
    State(s): State<AppState>,
    caller: Caller,
    Path(pipeline): Path<String>,
    Query(c): Query<Cursor>,
) -> Page {
    caller.read(&s, &pipeline).await?;
    let page = s.db.list_runs(&pipeline, &c.page()).await?;
    let base = format!("/p/{}", url_segment(&pipeline));
    Ok(layout(
        &pipeline,
        html! {
            (crumbs(&[(pipeline.clone(), None)]))
            h1 { (pipeline) }
            p {
                "Permalinks: "
                a href={ (base) "/runs/latest" } { "latest run" } ", "
                a href={ (base) "/runs/lastSuccessfulBuild" } { "last successful build" }
            }
            table {
                thead { tr { th.num { "Run" } th { "State" } th { "Branch" } th.hide { "Commit" } th.hide { "Started" } th.hide { "Duration" } th.hide { "Triggered from" } } }
                tbody {
                    @for r in &page.items {
                        tr {
                            td.num { a href={ (base) "/runs/" (r.number) } { "#" (r.number) } }
                            td class={ "state-" (r.state) } { (r.state) }
                            td { @if let Some(b) = &r.branch { (b) } }
                            td.hide.mono { @if let Some(c) = &r.commit { (c.chars().take(12).collect::<String>()) } }
                            td.hide { (r.created_at) }
                            td.hide { (duration(r)) }
                            td.hide { @if let Some(t) = &r.triggered_from {
                                a href={ "/p/" (url_segment(&t.pipeline)) "/runs/" (t.run) } { (t.pipeline) " #" (t.run) }
                            } }
                        }
                    }
                }
            }
            (pager(page.next.as_deref(), &base))
        },
    ))
}

/// The run a path segment names: a number or a run selector.
async fn run_page(
    State(s): State<AppState>,
    caller: Caller,
    Path((pipeline, run)): Path<(String, String)>,
) -> Page {
    caller.read(&s, &pipeline).await?;
    let run = crate::routes::pick_run(&s, &pipeline, &run).await?;
    let jobs = s.db.list_jobs(&run.id).await?;
    let artifacts = crate::routes::run_artifacts(&s, &run, true).await?;
    let base = format!("/p/{}", url_segment(&pipeline));
    let title = format!("{pipeline} #{}", run.number);
    Ok(layout(
        &title,
        html! {
            (crumbs(&[(pipeline.clone(), Some(base.clone())), (format!("#{}", run.number), None)]))
            h1 { (title) }
            dl {
                dt { "State" } dd class={ "state-" (run.state) } { (run.state) }
                @if let Some(b) = &run.branch { dt { "Branch" } dd { a href={ (base) "/branches/" (url_segment(b)) "/latest" } { (b) } } }
                @if let Some(c) = &run.commit { dt { "Commit" } dd.mono { (c) } }
                dt { "Started" } dd { (run.created_at) }
                @if let Some(f) = &run.finished_at { dt { "Finished" } dd { (f) " (" (duration(&run)) ")" } }
                @if let Some(t) = &run.triggered_from { dt { "Triggered from" } dd {
                    a href={ "/p/" (url_segment(&t.pipeline)) "/runs/" (t.run) } { (t.pipeline) " #" (t.run) }
                } }
            }
            h2 { "Jobs" }
            table {
                thead { tr { th { "Stage" } th { "Job" } th.num { "Attempt" } } }
                tbody {
                    @for j in &jobs {
                        tr {
                            td { @if let Some(st) = &j.stage { (st) } }
                            td { (j.key) }
                            td.num { (j.attempt) }
                        }
                    }
                }
            }
            h2 { "Artifacts" }
            (artifact_table(&artifacts))
            @if artifacts.iter().any(|a| a.kind == "files" && a.state == satchel_model::api::ArtifactState::Finished) {
                @let all = format!("{base}/runs/{}/archive", run.number);
                p {
                    "All artifacts, each in a folder of its name: "
                    a href={ (all) "?format=zip" } download { ".zip" } " · "
                    a href={ (all) } download { ".tar" } " · "
                    a href={ (all) "?format=tar.zst" } download { ".tar.zst" }
                }
            }
            h2 { "Find files" }
            (search_form(&pipeline, run.number, &crate::routes::SearchParams::default()))
            h2 { "Compare" }
            form method="get" action="/diff" {
                label { "What changed since run " input name="from" required
                    value={ (pipeline) "#" (run.number.saturating_sub(1).max(1)) }; }
                input type="hidden" name="to" value={ (pipeline) "#" (run.number) };
                " "
                button type="submit" { "Compare" }
            }
        },
    ))
}

/// Largest file the run diff compares line by line.
const TEXT_DIFF_MAX: u64 = 1 << 20;
/// Most lines of a file diff shown.
const DIFF_LINES_MAX: usize = 20_000;

/// `old` and `new` as unified diff lines with their class (`hunk`, `del`,
/// `add`, `ctx`), three lines of context, at most [`DIFF_LINES_MAX`]
/// (then `true`); the line diff gives up refining after 2 s.
fn unified_lines(old: &str, new: &str) -> (Vec<(&'static str, String)>, bool) {
    use similar::ChangeTag;
    let diff = similar::TextDiff::configure()
        .timeout(std::time::Duration::from_secs(2))
        .diff_lines(old, new);
    let mut lines = Vec::new();
    for hunk in diff.unified_diff().context_radius(3).iter_hunks() {
        lines.push(("hunk", hunk.header().to_string()));
        for change in hunk.iter_changes() {
            if lines.len() >= DIFF_LINES_MAX {
                return (lines, true);
            }
            let (class, sign) = match change.tag() {
                ChangeTag::Delete => ("del", '-'),
                ChangeTag::Insert => ("add", '+'),
                ChangeTag::Equal => ("ctx", ' '),
            };
            let text = change.value().trim_end_matches(['\n', '\r']);
            lines.push((class, format!("{sign}{text}")));
        }
    }
    (lines, false)
}

/// A file's content (at most [`TEXT_DIFF_MAX`] bytes) as text, if it is
/// UTF-8.
async fn small_text(s: &AppState, f: &FileInfo) -> Result<Option<String>, UiError> {
    use futures_util::StreamExt;
    if f.size > TEXT_DIFF_MAX {
        return Ok(None);
    }
    let digest = satchel_store::Digest::from_hex(&f.sha256).map_err(ApiError::from)?;
    let mut stream = s.store.get(&digest, None).await.map_err(ApiError::from)?;
    let mut buf = Vec::with_capacity(f.size as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::internal(format!("reading {}: {e}", f.path)))?;
        buf.extend_from_slice(&chunk);
        if buf.len() as u64 > TEXT_DIFF_MAX {
            return Ok(None);
        }
    }
    Ok(String::from_utf8(buf).ok())
}

#[derive(Deserialize)]
struct FileDiffQuery {
    from: String,
    to: String,
}

/// Two versions of a text file as a unified diff (each at most 1 MiB).
async fn file_diff_page(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<FileDiffQuery>,
) -> Page {
    for id in [&q.from, &q.to] {
        if !satchel_model::id::is_id(id) {
            return Err(ApiError::bad_request(format!("{id:?} is not a file id")).into());
        }
    }
    let files = s.db.get_files(&[q.from.clone(), q.to.clone()]).await?;
    for f in &files {
        caller.read(&s, &f.producer.pipeline).await?;
    }
    let (a, b) = (&files[0], &files[1]);
    let label = |f: &FileInfo| {
        format!(
            "{}#{} {}/{}",
            f.producer.pipeline, f.producer.run, f.artifact_name, f.path
        )
    };
    let (la, lb) = (label(a), label(b));
    let body = match (small_text(&s, a).await?, small_text(&s, b).await?) {
        (Some(x), Some(y)) => {
            // Off the async workers: a line diff of 1 MiB texts takes time.
            let (lines, cut) = tokio::task::spawn_blocking(move || unified_lines(&x, &y))
                .await
                .map_err(|e| ApiError::internal(format!("comparing texts: {e}")))?;
            html! {
                @if lines.is_empty() { p { "The two files have the same text." } }
                @else {
                    pre.diff {
                        @for (class, line) in &lines { span class=(class) { (line) } "\n" }
                    }
                    @if cut { p { "Only the first " (DIFF_LINES_MAX) " lines of the diff are shown." } }
                }
            }
        }
        _ => html! {
            p { "Only text files (UTF-8) of at most 1 MiB are compared line by line; download both to compare these." }
        },
    };
    Ok(layout(
        &format!("{} → {}", a.path, b.path),
        html! {
            h1 { (la) " → " (lb) }
            (body)
        },
    ))
}

#[derive(Deserialize)]
struct DiffQuery {
    from: String,
    to: String,
    #[serde(default)]
    artifact: Option<String>,
}

/// Two runs compared from metadata (the API's `/api/v1/diff`).
async fn diff_page(State(s): State<AppState>, caller: Caller, Query(q): Query<DiffQuery>) -> Page {
    use satchel_model::diff::Change;
    let d =
        crate::routes::diff::run_diff(&s, &caller, &q.from, &q.to, q.artifact.as_deref()).await?;
    let size = |n: Option<u64>| n.map(satchel_model::units::human_bytes).unwrap_or_default();
    let delta = satchel_model::units::human_delta;
    let word = Change::as_str;
    let title = format!("{} → {}", d.from, d.to);
    let t = &d.totals;
    Ok(layout(
        &title,
        html! {
            h1 { (title) }
            p {
                (t.added) " added, " (t.removed) " removed, " (t.changed) " changed, "
                (t.unchanged) " unchanged; "
                (satchel_model::units::human_bytes(t.from_size)) " → "
                (satchel_model::units::human_bytes(t.to_size)) " (" (delta(t.size_delta())) ")"
            }
            @if d.artifacts.is_empty() { p { "Neither run has artifacts to compare." } }
            @if d.truncated { p { "Only the first " (satchel_model::diff::MAX_LISTED) " changed files are listed; the counts include them all." } }
            @for a in &d.artifacts {
                h2 { (a.name) " " small class={ "change-" (word(a.change)) } { (word(a.change)) } }
                p {
                    (a.totals.added) " added, " (a.totals.removed) " removed, "
                    (a.totals.changed) " changed, " (a.totals.unchanged) " unchanged; "
                    (delta(a.totals.size_delta()))
                }
                @if !a.files.is_empty() {
                    table {
                        thead { tr { th { "" } th { "Path" } th.num { "Before" } th.num { "After" } th.num { "Δ" } th { "" } } }
                        tbody {
                            @for f in &a.files {
                                tr class={ "change-" (word(f.change)) } {
                                    td { (match f.change { Change::Added => "+", Change::Removed => "−", _ => "~" }) }
                                    td.mono { (f.path) }
                                    td.num { (size(f.from_size)) }
                                    td.num { (size(f.to_size)) }
                                    td.num { (delta(i128::from(f.to_size.unwrap_or(0)) - i128::from(f.from_size.unwrap_or(0)))) }
                                    td {
                                        @if let (Change::Changed, Some(x), Some(y)) = (f.change, &f.from_file, &f.to_file) {
                                            @if f.from_sha256 != f.to_sha256 && f.from_size.unwrap_or(0).max(f.to_size.unwrap_or(0)) <= TEXT_DIFF_MAX {
                                                a href={ "/diff/file?from=" (x) "&to=" (y) } { "diff" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    ))
}

fn artifact_table(artifacts: &[Artifact]) -> Markup {
    html! {
        @if artifacts.is_empty() { p { "No artifacts." } }
        @else {
            table {
                thead { tr { th { "Name" } th { "Kind" } th.num { "Files" } th.num { "Size" } th { "Producer" } th.hide { "State" } } }
                tbody {
                    @for a in artifacts {
                        tr class=[a.producer.superseded.then_some("superseded")] {
                            td { a href={ "/artifacts/" (a.id) } { (a.name) } }
                            td { (a.kind) }
                            td.num { (a.file_count) }
                            td.num { (satchel_model::units::human_bytes(a.size)) }
                            td {
                                @if let Some(st) = &a.producer.stage { (st) " / " }
                                (a.producer.job) " (attempt " (a.producer.attempt) ")"
                                @if a.producer.superseded { " — superseded by a retry" }
                            }
                            td.hide { (a.state.as_str()) }
                        }
                    }
                }
            }
        }
    }
}

/// Who a view link acts for: the session's token id, or `admin` for the
/// bootstrap admin token.
fn view_holder(caller: &Caller) -> String {
    caller
        .token()
        .map(|t| t.id.clone())
        .unwrap_or_else(|| VIEW_ADMIN.to_string())
}

/// What a view link's signature covers: the artifact, the holder and, for
/// the bootstrap admin, a fingerprint of its token, so that restarting
/// with another admin token ends the old one's links.
fn view_payload(s: &AppState, id: &str, holder: &str) -> String {
    if holder == VIEW_ADMIN {
        let fp: String = s.admin_token_hash[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("ui-view\n{id}\n{holder}\n{fp}")
    } else {
        format!("ui-view\n{id}\n{holder}")
    }
}

/// The holder of view links opened with the bootstrap admin token.
const VIEW_ADMIN: &str = "admin";

/// The signed view URL of `path` in artifact `id`, for `caller`.
fn view_url(s: &AppState, caller: &Caller, id: &str, path: &str) -> String {
    let holder = view_holder(caller);
    let expires = satchel_model::id::now_millis() as u64 / 1000 + VIEW_TTL_SECS;
    let sig = s.gha.keys.sign_url(&view_payload(s, id, &holder), expires);
    format!(
        "/view/{id}/{holder}/{expires}/{sig}/{}",
        path_segments(path)
    )
}

#[derive(Deserialize)]
struct MembersAt {
    /// The first member of a protocol zip listed.
    #[serde(default)]
    members: usize,
}

async fn artifact_page(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(c): Query<Cursor>,
    Query(m): Query<MembersAt>,
) -> Page {
    crate::routes::check_id("artifact", &id)?;
    let a = s.db.get_artifact(&id).await?;
    caller.note(format!("artifact={id}"));
    caller.read(&s, &a.producer.pipeline).await?;
    let files = s.db.artifact_files_page(&id, &c.page()).await?;
    // An artifact that arrived as one zip lists what is in it too; a zip
    // that cannot be read says why, and the page still shows the rest.
    let zip = protocol_zip(&s, &a).await?;
    let members = match &zip {
        Some(z) => Some(zip_directory(&s, z).await),
        None => None,
    };
    let run_href = format!(
        "/p/{}/runs/{}",
        url_segment(&a.producer.pipeline),
        a.producer.run
    );
    let api = format!("/artifacts/{id}/archive");
    Ok(layout(
        &a.name,
        html! {
            (crumbs(&[
                (a.producer.pipeline.clone(), Some(format!("/p/{}", url_segment(&a.producer.pipeline)))),
                (format!("#{}", a.producer.run), Some(run_href)),
                (a.name.clone(), None),
            ]))
            h1 { (a.name) }
            dl {
                dt { "Kind" } dd { (a.kind) }
                dt { "State" } dd { (a.state.as_str()) }
                dt { "Files" } dd { (a.file_count) ", " (satchel_model::units::human_bytes(a.size)) }
                dt { "Producer" } dd { (a.producer.job) " attempt " (a.producer.attempt) @if a.producer.superseded { " (superseded)" } }
                dt { "Created" } dd { (a.created_at) }
            }
            @if a.kind != "files" {
                p { "Reference: " code id="reference" { (a.reference_value()) } " "
                    button type="button" data-copy="reference" hidden { "Copy" } }
            } @else {
                p {
                    a href={ (api) "?format=zip" } download { "Download .zip" } " · "
                    a href={ (api) } download { "Download .tar" } " · "
                    a href={ (api) "?format=tar.zst" } download { "Download .tar.zst" }
                }
                table {
                    thead { tr { th { "Path" } th.num { "Size" } th.hide { "Type" } th.hide { "Mode" } th.hide { "SHA-256" } } }
                    tbody {
                        @for f in &files.items {
                            (file_row(&s, &caller, f))
                        }
                    }
                }
                (pager(files.next.as_deref(), &format!("/artifacts/{id}")))
                @if let (Some(z), Some(listed)) = (&zip, &members) {
                    h2 { "In " code { (z.path) } }
                    p { "This artifact arrived as one zip through the GitHub Actions protocol; its files open in place, read from the zip." }
                    @match listed {
                        Ok(dir) => {
                            @let files = || dir.members.iter().filter(|m| !m.is_dir());
                            @let shown: Vec<&crate::unzip::Member> = files().skip(m.members).take(PAGE).collect();
                            table {
                                thead { tr { th { "Path" } th.num { "Size" } th.num.hide { "In the zip" } th.hide { "Type" } } }
                                tbody {
                                    @for member in &shown {
                                        @let ct = satchel_model::mime::content_type_for(&member.name);
                                        tr {
                                            td.mono {
                                                @if !addressable(&member.name) {
                                                    (member.name) " " span.cut { "(a . or .. in its path: no URL can name it; download the zip)" }
                                                } @else if is_text(ct) {
                                                    a href=(lines_url(&a.id, &member.name)) { (member.name) }
                                                    " " a.raw href=(view_url(&s, &caller, &a.id, &member.name)) aria-label={ "raw " (member.name) } { "raw" }
                                                } @else {
                                                    a href=(view_url(&s, &caller, &a.id, &member.name)) { (member.name) }
                                                }
                                            }
                                            td.num { (satchel_model::units::human_bytes(member.size)) }
                                            td.num.hide { (satchel_model::units::human_bytes(member.compressed)) }
                                            td.hide { (ct) }
                                        }
                                    }
                                }
                            }
                            @if m.members.saturating_add(PAGE) < files().count() {
                                p { a rel="next" href={ "/artifacts/" (a.id) "?members=" (m.members + PAGE) } { "Next files of the zip →" } }
                            }
                        }
                        Err(e) => { p { "Its files cannot be listed: " (e.0.message) } }
                    }
                }
            }
        },
    ))
}

/// Where a file's link goes: its lines when it is text, else the file in
/// its sandbox.
fn file_href(s: &AppState, caller: &Caller, f: &FileInfo) -> String {
    if is_text(&f.content_type) {
        lines_url(&f.artifact_id, &f.path)
    } else {
        view_url(s, caller, &f.artifact_id, &f.path)
    }
}

fn file_row(s: &AppState, caller: &Caller, f: &FileInfo) -> Markup {
    html! {
        tr {
            td.mono {
                a href=(file_href(s, caller, f)) { (f.path) }
                @if is_text(&f.content_type) {
                    " " a.raw href=(view_url(s, caller, &f.artifact_id, &f.path)) aria-label={ "raw " (f.path) } { "raw" }
                }
            }
            td.num { (satchel_model::units::human_bytes(f.size)) }
            td.hide { (f.content_type) }
            td.hide.mono { (format!("{:o}", f.mode & 0o7777)) }
            td.hide.mono { (f.sha256) }
        }
    }
}

async fn artifact_by_name(
    State(s): State<AppState>,
    caller: Caller,
    Path((pipeline, run, name)): Path<(String, String, String)>,
) -> Result<Response, UiError> {
    caller.read(&s, &pipeline).await?;
    let run = crate::routes::pick_run(&s, &pipeline, &run).await?;
    let a = crate::routes::artifact_named(&s, &run, &name).await?;
    Ok(Redirect::to(&format!("/artifacts/{}", a.id)).into_response())
}

/// `…/artifacts/NAME/files/PATH` (the file, viewed), `…/artifacts/NAME/zip`
/// or `…/tar` (the archive).
async fn artifact_by_name_rest(
    State(s): State<AppState>,
    caller: Caller,
    Path((pipeline, run, name, rest)): Path<(String, String, String, String)>,
) -> Result<Response, UiError> {
    caller.read(&s, &pipeline).await?;
    let run = crate::routes::pick_run(&s, &pipeline, &run).await?;
    let a = crate::routes::artifact_named(&s, &run, &name).await?;
    let to = match rest.as_str() {
        "zip" => format!("/artifacts/{}/archive?format=zip", a.id),
        "tar" => format!("/artifacts/{}/archive", a.id),
        "tar.zst" => format!("/artifacts/{}/archive?format=tar.zst", a.id),
        r => match r.strip_prefix("files/") {
            Some(path) => view_url(&s, &caller, &a.id, path),
            None => {
                return Err(ApiError::not_found(format!(
                "no such page {r:?}: use files/PATH, zip, tar or tar.zst after the artifact name"
            ))
                .into())
            }
        },
    };
    Ok(Redirect::to(&to).into_response())
}

async fn branch_latest(
    State(s): State<AppState>,
    caller: Caller,
    Path((pipeline, branch)): Path<(String, String)>,
) -> Result<Response, UiError> {
    caller.read(&s, &pipeline).await?;
    let sel = RunSelector::LatestFromBranch(branch);
    let run = s.db.select_run(&pipeline, &sel, None).await?;
    Ok(Redirect::to(&format!(
        "/p/{}/runs/{}",
        url_segment(&pipeline),
        run.number
    ))
    .into_response())
}

// ---- Search ------------------------------------------------------------------

/// The search form of a run: a path glob and the CLI's scope options.
fn search_form(pipeline: &str, run: u64, p: &crate::routes::SearchParams) -> Markup {
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    html! {
        form.search method="get" role="search" action={ "/p/" (url_segment(pipeline)) "/runs/" (run) "/search" } {
            label { "Path glob " input type="search" name="query" placeholder="**/*.xml" value=(v(&p.query)); }
            label { "Job " input name="job" size="10" value=(v(&p.job)); }
            label { "Step " input name="step" size="10" value=(v(&p.step)); }
            label { "Artifact " input name="name" size="10" value=(v(&p.name)); }
            label { input type="checkbox" name="include_retried_jobs" value="true" checked[p.include_retried_jobs]; " retried jobs too" }
            button type="submit" { "Search" }
        }
    }
}

/// A run's files that a glob and scope select, as `satchel artifact
/// search` finds them (the API's `…/search`), 100 a page.
async fn search_page(
    State(s): State<AppState>,
    caller: Caller,
    Path((pipeline, run)): Path<(String, String)>,
    Query(p): Query<crate::routes::SearchParams>,
    Query(c): Query<Cursor>,
) -> Page {
    let p = p.without_blanks();
    caller.read(&s, &pipeline).await?;
    let run = crate::routes::pick_run(&s, &pipeline, &run).await?;
    let (glob, scope) = p.glob_and_scope()?;
    let found = s.db.search_files(&run.id, &glob, &scope, &c.page()).await?;
    let base = format!("/p/{}", url_segment(&pipeline));
    let title = format!("{pipeline} #{}: {}", run.number, glob.as_str());
    let mut next_base = format!("{base}/runs/{}/search?", run.number);
    for (k, v) in [
        ("query", &p.query),
        ("job", &p.job),
        ("step", &p.step),
        ("name", &p.name),
    ] {
        if let Some(v) = v {
            next_base.push_str(&format!("{k}={}&", url_segment(v)));
        }
    }
    if p.include_retried_jobs {
        next_base.push_str("include_retried_jobs=true&");
    }
    Ok(layout(
        &title,
        html! {
            (crumbs(&[
                (pipeline.clone(), Some(base.clone())),
                (format!("#{}", run.number), Some(format!("{base}/runs/{}", run.number))),
                ("Search".into(), None),
            ]))
            h1 { "Files of " (pipeline) " #" (run.number) }
            (search_form(&pipeline, run.number, &p))
            @if found.items.is_empty() { p { "No files match." } }
            @else {
                table {
                    thead { tr { th { "Path" } th { "Artifact" } th.hide { "Job" } th.num { "Size" } } }
                    tbody {
                        @for f in &found.items {
                            tr class=[f.producer.superseded.then_some("superseded")] {
                                td.mono { a href=(file_href(&s, &caller, f)) { (f.path) } }
                                td { a href={ "/artifacts/" (f.artifact_id) } { (f.artifact_name) } }
                                td.hide { (f.producer.job) " (attempt " (f.producer.attempt) ")" @if f.producer.superseded { " — superseded" } }
                                td.num { (satchel_model::units::human_bytes(f.size)) }
                            }
                        }
                    }
                }
                @if let Some(c) = &found.next {
                    p { a rel="next" href={ (next_base) "cursor=" (url_segment(c)) } { "Next page →" } }
                }
            }
        },
    ))
}

// ---- Packages ----------------------------------------------------------------

/// The package repositories of the session's organization.
async fn repositories_page(State(s): State<AppState>, caller: Caller) -> Page {
    let list = crate::routes::repositories(&s, &caller).await?;
    Ok(layout(
        "Packages",
        html! {
            h1 { "Packages" }
            @if list.repositories.is_empty() { p { "No package repositories yet. " code { "satchel artifact promote" } " creates one." } }
            @else {
                table {
                    thead { tr { th { "Repository" } th.num { "Versions" } } }
                    tbody {
                        @for r in &list.repositories {
                            tr {
                                td { a href={ "/packages/" (url_segment(&r.repository)) } { (r.repository) } }
                                td.num { @if let Some(n) = r.versions { (n) } @else { "—" } }
                            }
                        }
                    }
                }
            }
        },
    ))
}

/// A repository's package versions, newest first, 100 a page (only those
/// promoted from pipelines the session may read).
async fn packages_page(
    State(s): State<AppState>,
    caller: Caller,
    Path(repo): Path<String>,
    Query(f): Query<crate::routes::PackageFilter>,
    Query(c): Query<Cursor>,
) -> Page {
    let package = f.package.filter(|p| !p.trim().is_empty());
    let list =
        crate::routes::readable_packages(&s, &caller, &repo, package.as_deref(), &c.page()).await?;
    let here = format!("/packages/{}", url_segment(&repo));
    Ok(layout(
        &repo,
        html! {
            nav.crumbs aria-label="Breadcrumb" { ol {
                li { a href="/packages" { "Packages" } }
                li { span aria-current="page" { (repo) } }
            } }
            h1 { (repo) }
            form.search method="get" action=(here) {
                label { "Package " input name="package" value=(package.clone().unwrap_or_default()); }
                button type="submit" { "Filter" }
            }
            @if list.packages.is_empty() { p { "No versions here that this token may read." } }
            @else {
                table {
                    thead { tr {
                        th { "Package" } th { "Version" } th.hide { "Kind" } th.num { "Files" } th.num { "Size" }
                        th { "From" } th.hide { "Promoted" }
                    } }
                    tbody {
                        @for p in &list.packages {
                            tr {
                                td { (p.name) }
                                td.mono { (p.version) }
                                td.hide { (p.kind) }
                                td.num { (p.file_count) }
                                td.num { (satchel_model::units::human_bytes(p.size)) }
                                td {
                                    a href={ "/p/" (url_segment(&p.origin.producer.pipeline)) "/runs/" (p.origin.producer.run) } {
                                        (p.origin.producer.pipeline) " #" (p.origin.producer.run)
                                    }
                                    " · "
                                    a href={ "/artifacts/" (p.origin.artifact_id) } { (p.origin.artifact) }
                                    @if let Some(i) = &p.image { " · " code { (i.reference) } }
                                    @if let Some(l) = &p.link { " · " code { (l.url) } }
                                }
                                td.hide { (p.created_at) }
                            }
                        }
                    }
                }
                @if let Some(c) = &list.next_cursor {
                    @let more = match &package { Some(p) => format!("{here}?package={}&", url_segment(p)), None => format!("{here}?") };
                    p { a rel="next" href={ (more) "cursor=" (url_segment(c)) } { "Next page →" } }
                }
            }
        },
    ))
}

// ---- Text, line by line -----------------------------------------------------

/// Lines one text page shows.
const TEXT_LINES: u64 = 1000;
/// Bytes one text page shows at most: a page of very long lines stops
/// early, and a longer line is cut.
const TEXT_BYTES: usize = 1 << 20;

/// Whether a content type is text the line view shows (HTML is not: it
/// opens as a page, in the sandbox).
fn is_text(content_type: &str) -> bool {
    let t = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    (t.starts_with("text/") && t != "text/html")
        || matches!(
            t.as_str(),
            "application/json"
                | "application/x-ndjson"
                | "application/xml"
                | "application/yaml"
                | "application/toml"
                | "application/javascript"
                | "application/x-sh"
                | "application/sql"
        )
}

/// The line view of `path` in artifact `id`.
fn lines_url(id: &str, path: &str) -> String {
    format!("/artifacts/{id}/lines/{}", path_segments(path))
}

/// `path` in a URL, segment by segment.
fn path_segments(path: &str) -> String {
    let segments: Vec<String> = path.split('/').map(url_segment).collect();
    segments.join("/")
}

/// Whether a URL can name `path`: a `.` or `..` segment (a zip member may
/// have one) is folded away by every URL parser, encoded or not
/// (`%2E%2E` is `..` to WHATWG URLs), so such a member gets no link.
fn addressable(path: &str) -> bool {
    !path.split('/').any(|seg| seg == "." || seg == "..")
}

/// One page of a text file: its lines from `start` on.
struct TextPage {
    /// The lines, each with whether it was cut at [`TEXT_BYTES`].
    lines: Vec<(String, bool)>,
    /// Whether the file goes on after them.
    more: bool,
    /// Lines seen before `start` (all of them when the file ends first).
    skipped: u64,
}

/// Up to [`TEXT_LINES`] lines (and [`TEXT_BYTES`]) of a file from line
/// `start` (1-based), streamed from the store: lines before `start` are
/// counted, never kept, so memory stays within one page whatever the
/// file's size.
async fn text_page(
    mut stream: satchel_store::ByteStream,
    path: &str,
    start: u64,
) -> Result<TextPage, UiError> {
    use futures_util::StreamExt;
    let mut page = TextPage {
        lines: Vec::new(),
        more: false,
        skipped: 0,
    };
    // The line being read (numbered `line`), kept only from `start` on.
    let mut line = 1u64;
    let mut cur: Vec<u8> = Vec::new();
    let mut cut = false;
    // Whether part of a line was read since the last newline.
    let mut partial = false;
    let mut used = 0usize;
    let full =
        |page: &TextPage, used: usize| page.lines.len() as u64 >= TEXT_LINES || used >= TEXT_BYTES;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                // A damaged member of an uploaded zip: the upload's fault.
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_zip", e.to_string())
            } else {
                ApiError::internal(format!("reading {path}: {e}"))
            }
        })?;
        let mut rest: &[u8] = &chunk;
        while !rest.is_empty() {
            if full(&page, used) {
                page.more = true;
                return Ok(page);
            }
            let (segment, ends) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            rest = &rest[segment.len() + usize::from(ends)..];
            partial = !ends;
            if line >= start {
                // A line that does not fit what is left of the page starts
                // the next page, whole; only a page's first line is cut.
                if !page.lines.is_empty() && used + cur.len() + segment.len() > TEXT_BYTES {
                    page.more = true;
                    return Ok(page);
                }
                let room = TEXT_BYTES.saturating_sub(cur.len());
                let take = segment.len().min(room);
                cur.extend_from_slice(&segment[..take]);
                cut |= take < segment.len();
            }
            if ends {
                if line >= start {
                    used += cur.len() + 1;
                    let text = String::from_utf8_lossy(&cur)
                        .trim_end_matches('\r')
                        .to_string();
                    page.lines.push((text, cut));
                    cur.clear();
                    cut = false;
                } else {
                    page.skipped += 1;
                }
                line += 1;
            }
        }
    }
    // A last line without a newline.
    if partial && line >= start {
        page.lines
            .push((String::from_utf8_lossy(&cur).into_owned(), cut));
    } else if partial {
        page.skipped += 1;
    }
    Ok(page)
}

/// Line views reading at once, in this process.
const LINE_VIEWS: usize = 4;

fn line_views() -> &'static tokio::sync::Semaphore {
    static VIEWS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    VIEWS.get_or_init(|| tokio::sync::Semaphore::new(LINE_VIEWS))
}

#[derive(Deserialize)]
struct LinesQuery {
    #[serde(default)]
    start: Option<u64>,
}

/// A text file as numbered lines, [`TEXT_LINES`] a page; each line has an
/// anchor (`#L42`) and a link to itself.
async fn lines_page(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, path)): Path<(String, String)>,
    Query(q): Query<LinesQuery>,
) -> Page {
    crate::routes::check_id("artifact", &id)?;
    let a = s.db.get_artifact(&id).await?;
    caller.note(format!("artifact={id}"));
    caller.read(&s, &a.producer.pipeline).await?;
    caller.note(format!("path={path}"));
    // Reaching line `start` reads the file up to it: a few at a time, so
    // readers paging through huge logs cannot take every worker.
    let _turn = line_views()
        .acquire()
        .await
        .map_err(|e| ApiError::internal(format!("line views: {e}")))?;
    let f = content_of(&s, &a, &path).await?;
    let start = q.start.unwrap_or(1).max(1);
    let page = text_page(f.stream(&s).await?, f.path(), start).await?;
    let here = lines_url(&id, f.path());
    let shown = page.lines.len() as u64;
    let run_href = format!(
        "/p/{}/runs/{}",
        url_segment(&a.producer.pipeline),
        a.producer.run
    );
    Ok(layout(
        f.path(),
        html! {
            (crumbs(&[
                (a.producer.pipeline.clone(), Some(format!("/p/{}", url_segment(&a.producer.pipeline)))),
                (format!("#{}", a.producer.run), Some(run_href)),
                (a.name.clone(), Some(format!("/artifacts/{id}"))),
                (f.path().to_string(), None),
            ]))
            h1 { code { (f.path()) } }
            p {
                (satchel_model::units::human_bytes(f.size())) ", " (f.content_type()) " · "
                a href=(view_url(&s, &caller, &id, f.path())) { "raw" }
            }
            @if shown == 0 {
                p { "The file has " (page.skipped) " lines; there is no line " (start) ". "
                    a href=(here) { "Go to the first line" } }
            } @else {
                nav aria-label="Lines" {
                    p {
                        "Lines " (start) "–" (start + shown - 1)
                        @if start > 1 { " · " a rel="prev" href={ (here) "?start=" (start.saturating_sub(TEXT_LINES).max(1)) } { "← previous" } }
                        @if page.more { " · " a rel="next" href={ (here) "?start=" (start + shown) } { "next →" } }
                    }
                }
                table.lines {
                    tbody {
                        @for (i, (text, cut)) in page.lines.iter().enumerate() {
                            @let n = start + i as u64;
                            tr id={ "L" (n) } {
                                td.ln { a href={ (here) "?start=" (start) "#L" (n) } { (n) } }
                                td { pre { (text) @if *cut { span.cut { " … (line cut)" } } } }
                            }
                        }
                    }
                }
                @if page.more {
                    p { a rel="next" href={ (here) "?start=" (start + shown) } { "Next lines →" } }
                }
            }
            form method="get" action=(here) {
                label { "Go to line " input type="number" name="start" min="1" value=(start); }
                " " button type="submit" { "Go" }
            }
        },
    ))
}

// ---- The sandboxed view ----------------------------------------------------

/// The file at `path` in finished artifact `id`, found through the run's
/// name index (a report's every stylesheet and image is one such lookup),
/// not by reading the artifact's whole file list.
async fn file_of(s: &AppState, a: &Artifact, path: &str) -> Result<FileInfo, UiError> {
    Ok(crate::routes::file_in(s, a, path).await?)
}

/// What a path of an artifact names: one of its files, or, for an artifact
/// that arrived as one zip through the GitHub Actions protocol, a member
/// of that zip, read in place ([`crate::unzip`]).
enum Content {
    File(FileInfo),
    Member {
        zip: FileInfo,
        member: crate::unzip::Member,
    },
}

impl Content {
    fn path(&self) -> &str {
        match self {
            Content::File(f) => &f.path,
            Content::Member { member, .. } => &member.name,
        }
    }

    fn size(&self) -> u64 {
        match self {
            Content::File(f) => f.size,
            Content::Member { member, .. } => member.size,
        }
    }

    fn content_type(&self) -> String {
        match self {
            Content::File(f) => f.content_type.clone(),
            Content::Member { member, .. } => {
                satchel_model::mime::content_type_for(&member.name).to_string()
            }
        }
    }

    /// Its bytes, streamed.
    async fn stream(&self, s: &AppState) -> Result<satchel_store::ByteStream, ApiError> {
        match self {
            Content::File(f) => {
                let digest = satchel_store::Digest::from_hex(&f.sha256)?;
                Ok(s.store.get(&digest, None).await?)
            }
            Content::Member { zip, member } => {
                let digest = satchel_store::Digest::from_hex(&zip.sha256)?;
                crate::unzip::open(s.store.clone(), &digest, zip.size, member).await
            }
        }
    }
}

/// The zip an artifact arrived as through the GitHub Actions protocol (its
/// one file, `glob` `gha-zip`), if it did.
async fn protocol_zip(s: &AppState, a: &Artifact) -> Result<Option<FileInfo>, UiError> {
    if a.file_count != 1 || a.state != satchel_model::api::ArtifactState::Finished {
        return Ok(None);
    }
    let page = PageRequest {
        limit: 1,
        ..PageRequest::default()
    };
    let files = s.db.artifact_files_page(&a.id, &page).await?;
    Ok(files
        .items
        .into_iter()
        .find(|f| f.glob.as_deref() == Some("gha-zip")))
}

/// The directory of a protocol zip (cached: a report's every asset asks).
async fn zip_directory(
    s: &AppState,
    zip: &FileInfo,
) -> Result<std::sync::Arc<crate::unzip::Directory>, UiError> {
    let digest = satchel_store::Digest::from_hex(&zip.sha256).map_err(ApiError::from)?;
    Ok(crate::unzip::directory(&*s.store, &digest, zip.size).await?)
}

/// The file at `path` in artifact `a`, or the member at `path` of the zip
/// the artifact arrived as.
async fn content_of(s: &AppState, a: &Artifact, path: &str) -> Result<Content, UiError> {
    match file_of(s, a, path).await {
        Ok(f) => Ok(Content::File(f)),
        // Not a file (a member's name need not be a valid file path).
        Err(e) if matches!(e.0.status, StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST) => {
            let Some(zip) = protocol_zip(s, a).await? else {
                return Err(e);
            };
            let member = zip_directory(s, &zip)
                .await?
                .get(path)
                .filter(|m| !m.is_dir())
                .cloned();
            match member {
                Some(member) => Ok(Content::Member { zip, member }),
                None => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// What a viewed file is served with: its own origin-less sandbox.
const SANDBOX: &str = "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads";

async fn view(
    State(s): State<AppState>,
    note: Option<axum::Extension<crate::audit::AuditNote>>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    Path((id, holder, expires, sig, path)): Path<(String, String, String, String, String)>,
) -> Result<Response, UiError> {
    let note = note.map(|n| n.0).unwrap_or_default();
    let now = satchel_model::id::now_millis() as u64 / 1000;
    // A link of another shape (from before holders) is just not valid.
    let signed = expires.parse::<u64>().is_ok_and(|expires| {
        s.gha
            .keys
            .check_url(&view_payload(&s, &id, &holder), expires, &sig, now)
    });
    if !signed {
        // A forged link is a guess like a wrong token: counted against the
        // address, and refused with 429 after too many. A genuine link
        // that merely expired (an old tab) is not.
        let genuine = expires.parse::<u64>().is_ok_and(|expires| {
            s.gha
                .keys
                .check_url(&view_payload(&s, &id, &holder), expires, &sig, 0)
        });
        if genuine {
            note.deny("view link expired");
        } else {
            note.deny("view link not valid");
            let refused = s.auth_refused(peer.map(|p| p.0 .0.ip()), "view link not valid".into());
            if refused.status == StatusCode::TOO_MANY_REQUESTS {
                return Err(refused.into());
            }
        }
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_signature",
            "this view link is expired or not valid; open the file again from its artifact page",
        )
        .into());
    }
    crate::routes::check_id("artifact", &id)?;
    note.resource(format!("artifact={id}"));
    let a = s.db.get_artifact(&id).await?;
    // The token that opened the link must still be live and allowed.
    if holder == VIEW_ADMIN {
        note.principal(&crate::access::Principal::Admin);
    } else {
        let ended = || {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "session_ended",
                "the session that opened this view link has ended (its token was revoked or expired); log in and open the file again",
            )
        };
        let Some(token) = s.db.token_by_id(&holder).await? else {
            note.deny("the view link's token is gone");
            return Err(ended().into());
        };
        note.token(&token.id, &token.name, Some(&token.org));
        if !token.is_live(satchel_model::id::now_millis()) {
            note.deny("the view link's token was revoked or expired");
            return Err(ended().into());
        }
        let principal = crate::access::Principal::Token(Box::new(token));
        let caller = Caller::new(principal, note.clone());
        caller.read(&s, &a.producer.pipeline).await?;
    }
    let path = if path.is_empty() || path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path
    };
    note.resource(format!("path={path}"));
    let mut r = match content_of(&s, &a, &path).await? {
        Content::File(f) => crate::routes::stream_blob_inline(&s, &f).await?,
        member => {
            let mut r = Response::new(axum::body::Body::from_stream(member.stream(&s).await?));
            let h = r.headers_mut();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(member.size()));
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(&member.content_type())
                    .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
            );
            h.insert(
                header::CONTENT_DISPOSITION,
                crate::routes::disposition("inline", member.path()),
            );
            r
        }
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(SANDBOX),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=300"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    Ok(r)
}
