//! Access control end to end, against the real binary: the permission
//! matrix cell by cell (every scope × the token's run, another run of its
//! pipeline, another pipeline of its cluster, other clusters with a rule,
//! without one, with a condition that holds or not, another organization
//! × valid, expired and revoked tokens × read, write, write as another
//! job, delete), each denial found in the audit log; every read path
//! behind the same check; tokens and rules through the CLI; job tokens in
//! `satchel run`.

mod common;

use std::collections::BTreeMap;

use common::{rt, Server};
use serde_json::{json, Value};

const UPLOAD_CONTENT: &[u8] = b"matrix content\n";

struct Api<'a> {
    s: &'a Server,
    http: reqwest::Client,
}

impl Api<'_> {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
        agent: &str,
    ) -> (u16, Value) {
        let mut rb = self
            .http
            .request(method, self.s.api(path))
            .bearer_auth(token)
            .header("user-agent", agent);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let (status, v) = self
            .call(method, path, &self.s.token, Some(&body), "setup")
            .await;
        assert!(status < 300, "{path}: {status} {v}");
        v
    }

    /// Creates a token from `spec` with the bootstrap token; its secret.
    async fn token(&self, spec: Value) -> String {
        let t = self
            .admin(reqwest::Method::POST, "/admin/tokens", spec)
            .await;
        t["token"].as_str().unwrap().to_string()
    }

    async fn get_admin_status(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, &self.s.token, None, "setup")
            .await
    }

    async fn get_admin(&self, path: &str) -> Value {
        let (status, v) = self
            .call(reqwest::Method::GET, path, &self.s.token, None, "setup")
            .await;
        assert!(status < 300, "{path}: {status} {v}");
        v
    }

    /// Uploads one file as `job` of `pipeline` run `run` with `token`;
    /// returns the artifact id.
    async fn upload(&self, token: &str, pipeline: &str, run: u64, job: &str) -> String {
        self.upload_named(token, pipeline, run, job, None).await
    }

    /// The same, into artifact `name` (none: the job's default).
    async fn upload_named(
        &self,
        token: &str,
        pipeline: &str,
        run: u64,
        job: &str,
        name: Option<&str>,
    ) -> String {
        let mut m = manifest(pipeline, run, job);
        m["name"] = json!(name);
        let (status, plan) = self
            .call(reqwest::Method::POST, "/uploads", token, Some(&m), "setup")
            .await;
        assert_eq!(status, 201, "{plan}");
        let id = plan["upload_id"].as_str().unwrap().to_string();
        if !plan["missing"].as_array().unwrap().is_empty() {
            let r = self
                .http
                .put(self.s.api(&format!(
                    "/uploads/{id}/blobs/{}",
                    common::sha(UPLOAD_CONTENT)
                )))
                .bearer_auth(token)
                .body(UPLOAD_CONTENT)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
        let (status, done) = self
            .call(
                reqwest::Method::POST,
                &format!("/uploads/{id}/finish"),
                token,
                None,
                "setup",
            )
            .await;
        assert_eq!(status, 200, "{done}");
        done["artifact"]["id"].as_str().unwrap().to_string()
    }
}

fn manifest(pipeline: &str, run: u64, job: &str) -> Value {
    json!({
        "context": {"pipeline": pipeline, "run": run, "job": job, "stage": "st", "step": "s", "attempt": 1},
        "files": [{
            "path": "f.txt",
            "size": UPLOAD_CONTENT.len(),
            "sha256": common::sha(UPLOAD_CONTENT),
            "mode": 420
        }]
    })
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scope {
    Read,
    Write,
    Delete,
    Admin,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Valid,
    Expired,
    Revoked,
}

/// What each target pipeline is to a token of pipeline `app` (cluster
/// `build` of organization `acme`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    /// `app` itself, the token's run.
    Own,
    /// `app`, its other run.
    OwnOtherRun,
    /// `tool`: same cluster.
    SameCluster,
    /// `lib`: cluster `release`, with a rule `app` → `lib`.
    RuleAllows,
    /// `vault`: cluster `release`, no rule.
    NoRule,
    /// `gated`: cluster `release`, a rule when `source.build.branch == 'main'`.
    Conditional,
    /// `alien`: organization `other`.
    OtherOrg,
}

impl Target {
    const ALL: [Target; 7] = [
        Target::Own,
        Target::OwnOtherRun,
        Target::SameCluster,
        Target::RuleAllows,
        Target::NoRule,
        Target::Conditional,
        Target::OtherOrg,
    ];
    fn pipeline(self) -> &'static str {
        match self {
            Target::Own | Target::OwnOtherRun => "app",
            Target::SameCluster => "tool",
            Target::RuleAllows => "lib",
            Target::NoRule => "vault",
            Target::Conditional => "gated",
            Target::OtherOrg => "alien",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    Read,
    Write,
    /// An upload as another job (`k`) of the run.
    WriteAsOtherJob,
    Delete,
}

/// What a token is narrowed to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// A job token of app: job `j` of run 1 (on `main`) or 2 (on `dev`).
    Job { main: bool },
    /// A token of cluster `build`, not narrowed.
    Cluster,
}

/// The documented model (docs/security.md), stated independently of the
/// server's code: the expected status of one cell.
fn expected(scope: Scope, state: State, kind: Kind, target: Target, action: Action) -> u16 {
    if state != State::Valid {
        return 401;
    }
    if target == Target::OtherOrg {
        return 403;
    }
    if scope == Scope::Admin {
        return ok(action);
    }
    let has = matches!(
        (scope, action),
        (Scope::Read, Action::Read)
            | (Scope::Write, Action::Write | Action::WriteAsOtherJob)
            | (Scope::Delete, Action::Delete)
    );
    if !has {
        return 403;
    }
    let in_cluster = matches!(
        target,
        Target::Own | Target::OwnOtherRun | Target::SameCluster
    );
    let allowed = match (kind, action) {
        // Job tokens write and delete only in their own run of their own
        // pipeline, as their own job.
        (Kind::Job { .. }, Action::Write | Action::Delete) => target == Target::Own,
        (Kind::Job { .. }, Action::WriteAsOtherJob) => false,
        // Cluster tokens anywhere in their cluster, as any job.
        (Kind::Cluster, Action::Write | Action::WriteAsOtherJob | Action::Delete) => in_cluster,
        (_, Action::Read) => match target {
            _ if in_cluster => true,
            // The rules name app as the reader: a token of app only.
            Target::RuleAllows => matches!(kind, Kind::Job { .. }),
            // Its condition looks at the reading build: a job token's.
            Target::Conditional => kind == Kind::Job { main: true },
            _ => false,
        },
    };
    if allowed {
        ok(action)
    } else {
        403
    }
}

fn ok(action: Action) -> u16 {
    match action {
        Action::Read | Action::Delete => 200,
        Action::Write | Action::WriteAsOtherJob => 201,
    }
}

#[test]
fn permission_matrix_cell_by_cell_with_every_denial_audited() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start_with(data.path(), &[("SATCHEL_MAX_AUTH_FAILURES", "100000")]);
    rt().block_on(async {
        let api = Api {
            s: &s,
            http: reqwest::Client::new(),
        };
        use reqwest::Method;
        // Two organizations, three clusters, six pipelines.
        api.admin(Method::POST, "/admin/orgs", json!({"name": "acme"})).await;
        api.admin(Method::POST, "/admin/orgs", json!({"name": "other"})).await;
        for (org, c) in [("acme", "build"), ("acme", "release"), ("other", "x")] {
            api.admin(Method::POST, "/admin/clusters", json!({"name": c, "org": org}))
                .await;
        }
        for (p, org, c) in [
            ("app", "acme", "build"),
            ("tool", "acme", "build"),
            ("lib", "acme", "release"),
            ("vault", "acme", "release"),
            ("gated", "acme", "release"),
            ("alien", "other", "x"),
        ] {
            api.admin(
                Method::POST,
                "/admin/pipelines",
                json!({"name": p, "org": org, "cluster": c}),
            )
            .await;
        }
        let rule = |target: &str, condition: Option<&str>| {
            json!({"type": "pipeline.artifacts_read.pipeline", "org": "acme",
                   "source": {"pipeline": "app"}, "target": {"pipeline": target},
                   "condition": condition})
        };
        api.admin(Method::POST, "/admin/rules", rule("lib", None)).await;
        api.admin(
            Method::POST,
            "/admin/rules",
            rule("gated", Some("source.build.branch == 'main'")),
        )
        .await;
        // Run 1 of app is on main, run 2 on dev; every pipeline has run 1
        // with a finished artifact.
        for branch in ["main", "dev"] {
            api.admin(Method::POST, "/pipelines/app/runs", json!({"branch": branch}))
                .await;
        }
        for t in Target::ALL {
            api.upload(&s.token, t.pipeline(), 1, "seed").await;
        }
        api.upload(&s.token, "app", 2, "seed").await;

        // The tokens: for each non-admin scope, job tokens of app (runs 1
        // and 2, job `j`) and a token of cluster build; an admin token of
        // cluster build; each valid, expired and revoked.
        struct Tok {
            scope: Scope,
            state: State,
            kind: Kind,
            id: String,
            secret: String,
        }
        let mut toks = Vec::new();
        for scope in [Scope::Read, Scope::Write, Scope::Delete, Scope::Admin] {
            for state in [State::Valid, State::Expired, State::Revoked] {
                for kind in [Kind::Job { main: true }, Kind::Job { main: false }, Kind::Cluster] {
                    if scope == Scope::Admin && kind != Kind::Cluster {
                        continue;
                    }
                    let name = format!("{scope:?}").to_lowercase();
                    let mut req = json!({
                        "name": format!("{name}-{state:?}-{kind:?}"),
                        "scopes": [name],
                        "org": "acme", "cluster": "build",
                    });
                    if let Kind::Job { main } = kind {
                        req["pipeline"] = json!("app");
                        req["run"] = json!(if main { 1 } else { 2 });
                        req["job"] = json!("j");
                    }
                    if state == State::Expired {
                        req["expires_in_secs"] = json!(1);
                    }
                    let t = api.admin(Method::POST, "/admin/tokens", req).await;
                    let secret = t["token"].as_str().unwrap().to_string();
                    assert!(secret.starts_with("satchel_") && secret.len() >= 8 + 32);
                    let id = t["id"].as_str().unwrap().to_string();
                    if state == State::Revoked {
                        api.admin(Method::POST, &format!("/admin/tokens/{id}/revoke"), json!({}))
                            .await;
                    }
                    toks.push(Tok {
                        scope,
                        state,
                        kind,
                        id,
                        secret,
                    });
                }
            }
        }
        // Let the expired ones expire.
        std::thread::sleep(std::time::Duration::from_millis(1100));

        // Keyed by the cell's user agent, unique per cell.
        let mut denials: BTreeMap<String, (String, u16)> = BTreeMap::new();
        let mut cells = 0;
        for (ti, t) in toks.iter().enumerate() {
            let run = if t.kind == (Kind::Job { main: false }) { 2 } else { 1 };
            for target in Target::ALL {
                let p = target.pipeline();
                // Reads and deletes of the own pipeline act in the token's
                // run; of the others in run 1.
                let target_run = match target {
                    Target::Own => run,
                    Target::OwnOtherRun => 3 - run,
                    _ => 1,
                };
                for action in [
                    Action::Read,
                    Action::Write,
                    Action::WriteAsOtherJob,
                    Action::Delete,
                ] {
                    let want = expected(t.scope, t.state, t.kind, target, action);
                    let agent = format!("matrix-{ti}-{target:?}-{action:?}");
                    let (got, body) = match action {
                        Action::Read => {
                            api.call(
                                Method::GET,
                                &format!("/pipelines/{p}/runs/{target_run}/search?query=**"),
                                &t.secret,
                                None,
                                &agent,
                            )
                            .await
                        }
                        Action::Write | Action::WriteAsOtherJob => {
                            let job = if action == Action::Write { "j" } else { "k" };
                            api.call(
                                Method::POST,
                                "/uploads",
                                &t.secret,
                                Some(&manifest(p, target_run, job)),
                                &agent,
                            )
                            .await
                        }
                        Action::Delete => {
                            // A fresh artifact of job j for each cell, so an
                            // allowed delete never meets a deleted one.
                            let id = api
                                .upload_named(&s.token, p, target_run, "j", Some(&agent))
                                .await;
                            api.call(
                                Method::DELETE,
                                &format!("/artifacts/{id}"),
                                &t.secret,
                                None,
                                &agent,
                            )
                            .await
                        }
                    };
                    assert_eq!(
                        got, want,
                        "token {:?}/{:?}/{:?} {action:?} {p}: {body}",
                        t.scope, t.state, t.kind
                    );
                    if want == 200 && action == Action::Read {
                        let files = body["files"].as_array().unwrap();
                        assert!(!files.is_empty(), "{agent}: a read sees the files");
                    }
                    if want == 403 {
                        let msg = body["error"]["message"].as_str().unwrap_or_default();
                        if target == Target::NoRule
                            && t.scope == Scope::Read
                            && action == Action::Read
                            && matches!(t.kind, Kind::Job { .. })
                        {
                            assert!(
                                msg.contains("satchel admin rule create pipeline.artifacts_read.pipeline --source app --target vault"),
                                "the denial names the missing rule: {msg}"
                            );
                        }
                    }
                    if want >= 400 {
                        assert!(denials.insert(agent, (t.id.clone(), want)).is_none());
                    }
                    cells += 1;
                }
            }
        }
        assert_eq!(cells, 30 * 7 * 4);

        // Every denial is in the audit log, with its token and status.
        let mut found: BTreeMap<String, Value> = BTreeMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = "/admin/audit?denied=true&limit=1000".to_string();
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = api.get_admin(&path).await;
            for e in page["entries"].as_array().unwrap() {
                assert_eq!(e["allowed"], false, "{e}");
                if let Some(ua) = e["user_agent"].as_str() {
                    found.insert(ua.to_string(), e.clone());
                }
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        for (agent, (token, status)) in &denials {
            let e = found
                .get(agent)
                .unwrap_or_else(|| panic!("denial {agent} is not in the audit log"));
            assert_eq!(e["status"], *status, "{e}");
            assert_eq!(e["token_id"].as_str(), Some(token.as_str()), "{e}");
            let reason = e["reason"].as_str().unwrap_or_default();
            if *status == 401 {
                assert!(reason.contains("revoked") || reason.contains("expired"), "{e}");
            } else {
                assert!(
                    reason.contains("token") || reason.contains("rule"),
                    "the reason is the decision's: {e}"
                );
            }
            assert!(e["action"].as_str().unwrap().contains("/api/v1/"), "{e}");
        }
        // And allowed requests are recorded as allowed, and no secret is
        // anywhere in the log.
        let (mut text, mut allowed, mut cursor) = (String::new(), 0, None::<String>);
        loop {
            let mut path = "/admin/audit?limit=1000".to_string();
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = api.get_admin(&path).await;
            text.push_str(&page["entries"].to_string());
            allowed += page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| {
                    e["allowed"] == true
                        && e["user_agent"].as_str().is_some_and(|u| u.starts_with("matrix-"))
                })
                .count();
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        for t in &toks {
            assert!(!text.contains(&t.secret), "a secret leaked into the audit log");
        }
        assert_eq!(allowed, cells - denials.len(), "every allowed cell is recorded");
        eprintln!(
            "permission matrix: {cells} cells, {} denials, all audited",
            denials.len()
        );
    });
}

/// Every way to read another cluster's artifacts asks the same rule: each
/// is refused without one and works once a cluster rule allows it. A
/// GitHub Actions runtime token is bound by the token that minted it, and
/// stops working when that token is revoked.
#[test]
fn every_read_path_asks_the_same_rule() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path());
    rt().block_on(async {
        use reqwest::Method;
        let api = Api {
            s: &s,
            http: reqwest::Client::new(),
        };
        api.admin(Method::POST, "/admin/clusters", json!({"name": "release"}))
            .await;
        api.admin(
            Method::POST,
            "/admin/pipelines",
            json!({"name": "lib", "cluster": "release"}),
        )
        .await;
        let lib_artifact = api.upload(&s.token, "lib", 1, "build").await;
        let lib_file = api.get_admin(&format!("/artifacts/{lib_artifact}")).await["files"][0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        api.admin(
            Method::POST,
            "/packages",
            json!({"artifact_id": lib_artifact, "repository": "r", "package": "lib", "version": "1.0"}),
        )
        .await;
        // A token of the default cluster that may read and write.
        let t = api
            .admin(
                Method::POST,
                "/admin/tokens",
                json!({"name": "reader", "scopes": ["read", "write"]}),
            )
            .await;
        let (token, token_id) = (
            t["token"].as_str().unwrap().to_string(),
            t["id"].as_str().unwrap().to_string(),
        );
        // Its own pipeline (created in its cluster by its first upload).
        let own = api.upload(&token, "app", 1, "build").await;
        let home = api.get_admin("/pipelines").await;
        assert!(
            home["pipelines"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "app" && p["cluster"] == "default"),
            "{home}"
        );

        let get = |path: String| (Method::GET, path, None::<Value>);
        let post = |path: &str, body: Value| (Method::POST, path.to_string(), Some(body));
        let reads = vec![
            get("/pipelines/lib/runs".into()),
            get("/pipelines/lib/runs/1".into()),
            get("/pipelines/lib/runs/1/artifacts".into()),
            get("/pipelines/lib/runs/1/search?query=**".into()),
            get("/diff?from=app%231&to=lib%231".into()),
            get("/pipelines/lib/runs/1/archive".into()),
            get(format!("/artifacts/{lib_artifact}")),
            get(format!("/artifacts/{lib_artifact}/archive")),
            get(format!("/files/{lib_file}")),
            get(format!("/files/{lib_file}/content")),
            post("/files/content", json!({"ids": [lib_file]})),
            post(
                "/resolve",
                json!({"context": {"pipeline": "app", "run": 1},
                       "expr": "$[sources.up.stages.st.build.s.artifacts.default]",
                       "sources": {"up": {"pipeline": "lib", "run": "latest"}}}),
            ),
            post(
                "/pipelines/app/runs",
                json!({"sources": {"up": {"pipeline": "lib", "run": "latest"}}}),
            ),
            get("/packages/r/lib/1.0".into()),
            get("/packages/r/lib/1.0/archive".into()),
            get("/packages/r/lib/1.0/files/f.txt".into()),
        ];
        for (m, path, body) in &reads {
            let (status, v) = api.call(m.clone(), path, &token, body.as_ref(), "reads").await;
            assert_eq!(status, 403, "{m} {path} without a rule: {v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("--source-cluster default --target lib"),
                "{path}: {v}"
            );
        }
        // Lists leave out what the token cannot read.
        let (_, packages) = api.call(Method::GET, "/packages/r", &token, None, "reads").await;
        assert_eq!(packages["packages"], json!([]), "{packages}");
        // A run of another pipeline of that cluster, named by a build id.
        api.admin(
            Method::POST,
            "/admin/pipelines",
            json!({"name": "lib-nightly", "cluster": "release"}),
        )
        .await;
        api.admin(
            Method::POST,
            "/pipelines/lib-nightly/runs",
            json!({"build_id": "lib-build"}),
        )
        .await;
        let (status, builds) = api
            .call(Method::GET, "/builds/lib-build", &token, None, "reads")
            .await;
        assert_eq!((status, &builds["runs"]), (200, &json!([])), "{builds}");
        let (_, pipelines) = api.call(Method::GET, "/pipelines", &token, None, "reads").await;
        let names: Vec<&str> = pipelines["pipelines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["app"]);

        // One cluster rule opens every path.
        api.admin(
            Method::POST,
            "/admin/rules",
            json!({"type": "pipeline.artifacts_read.pipeline",
                   "source": {"cluster": "default"}, "target": {"cluster": "release"}}),
        )
        .await;
        for (m, path, body) in &reads {
            let (status, v) = api.call(m.clone(), path, &token, body.as_ref(), "reads").await;
            assert!(status == 200 || status == 201, "{m} {path} with a rule: {status} {v}");
        }
        let (_, packages) = api.call(Method::GET, "/packages/r", &token, None, "reads").await;
        assert_eq!(packages["packages"].as_array().unwrap().len(), 1);
        let (_, builds) = api
            .call(Method::GET, "/builds/lib-build", &token, None, "reads")
            .await;
        assert_eq!(builds["runs"][0]["pipeline"], "lib-nightly", "{builds}");
        // Reading is not writing: a rule never lets it write there.
        let (status, _) = api
            .call(Method::POST, "/uploads", &token, Some(&manifest("lib", 1, "x")), "w")
            .await;
        assert_eq!(status, 403);
        let (status, _) = api
            .call(Method::DELETE, &format!("/artifacts/{own}"), &token, None, "w")
            .await;
        assert_eq!(status, 403, "no delete scope");
        // Server-wide maintenance needs the bootstrap token.
        let (status, _) = api
            .call(Method::POST, "/admin/gc", &token, Some(&json!({})), "w")
            .await;
        assert_eq!(status, 403);

        // A GitHub Actions runtime token minted with it acts as it does,
        // and dies with it.
        let (status, gha) = api
            .call(
                Method::POST,
                "/gha/tokens",
                &token,
                Some(&json!({"pipeline": "app", "run": 1, "job": "build"})),
                "gha",
            )
            .await;
        assert_eq!(status, 200, "{gha}");
        let (status, _) = api
            .call(
                Method::POST,
                "/gha/tokens",
                &token,
                Some(&json!({"pipeline": "lib", "run": 1, "job": "build"})),
                "gha",
            )
            .await;
        assert_eq!(status, 403, "no runtime token for another cluster's pipeline");
        let runtime = gha["token"].as_str().unwrap();
        let list = |runtime: String| {
            let http = api.http.clone();
            let url = format!(
                "{}/twirp/github.actions.results.api.v1.ArtifactService/ListArtifacts",
                s.url
            );
            async move {
                http.post(url)
                    .bearer_auth(runtime)
                    .json(&json!({"workflow_run_backend_id": "satchel.app.1",
                                  "workflow_job_run_backend_id": "build"}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        };
        assert_eq!(list(runtime.to_string()).await, 200);
        api.admin(Method::POST, &format!("/admin/tokens/{token_id}/revoke"), json!({}))
            .await;
        assert_eq!(list(runtime.to_string()).await, 401, "revoked with its minter");
        let (status, v) = api.call(Method::GET, "/pipelines", &token, None, "after").await;
        assert_eq!(status, 401, "revocation takes effect on the next request: {v}");
    });
}

/// `satchel admin token|cluster|pipeline|rule|audit` from the command
/// line: the secret is printed once and never listed; revocation works on
/// the next request; denials show in `audit --denied`.
#[test]
fn tokens_rules_and_audit_from_the_cli() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let s = Server::start(data.path());
    let admin = s.agent(work.path(), "app", 1, "j");
    admin.ok(&["admin", "cluster", "create", "release"]);
    admin.ok(&["admin", "pipeline", "create", "lib", "--cluster", "release"]);
    let created: Value = serde_json::from_str(&admin.ok(&[
        "admin",
        "token",
        "create",
        "--scope",
        "read,write",
        "--pipeline",
        "app",
        "--name",
        "ci reader",
        "--expires-in",
        "2h",
        "--json",
    ]))
    .unwrap();
    let (id, secret) = (
        created["id"].as_str().unwrap().to_string(),
        created["token"].as_str().unwrap().to_string(),
    );
    assert!(secret.starts_with("satchel_"));
    let listed = admin.ok(&["admin", "token", "list", "--json"]);
    assert!(listed.contains(&id) && listed.contains("ci reader"));
    assert!(!listed.contains(&secret), "lists never show a secret");
    let text = admin.ok(&["admin", "token", "list"]);
    assert!(text.contains(&id) && text.contains("live"), "{text}");

    // The token works as itself: uploads to its pipeline, is refused
    // elsewhere with the reason, and cannot administer.
    common::write(work.path(), "a.txt", b"a\n");
    admin
        .clone()
        .env("SATCHEL_PIPELINE", "lib")
        .ok(&["artifact", "upload", "a.txt"]);
    let me = admin.clone().env("SATCHEL_TOKEN", &secret);
    me.ok(&["artifact", "upload", "a.txt"]);
    let e = me
        .clone()
        .env("SATCHEL_PIPELINE", "lib")
        .fails(&["artifact", "upload", "a.txt"]);
    assert!(e.contains("is in cluster \"release\""), "{e}");
    let e = me.fails(&["admin", "token", "list"]);
    assert!(e.contains("lacks the `admin` scope"), "{e}");
    let e = me
        .clone()
        .env("SATCHEL_PIPELINE", "lib")
        .fails(&["artifact", "search", "**"]);
    assert!(e.contains("--source app --target lib"), "{e}");

    // A rule for it, as Buildkite spells it, lets it read lib.
    let rule = admin.ok(&[
        "admin",
        "rule",
        "create",
        "pipeline.artifacts_read.pipeline",
        "--source",
        "app",
        "--target",
        "lib",
    ]);
    let rule_id = rule.trim().to_string();
    assert!(admin.ok(&["admin", "rule", "list"]).contains(&rule_id));
    let e = admin.fails(&[
        "admin",
        "rule",
        "create",
        "pipeline.artifacts_read.pipeline",
        "--source",
        "app",
        "--target",
        "lib",
        "--condition",
        "source.build.branch = main",
    ]);
    assert!(e.contains("--condition"), "{e}");
    me.clone()
        .env("SATCHEL_PIPELINE", "lib")
        .ok(&["artifact", "search", "**"]);
    admin.ok(&["admin", "rule", "delete", &rule_id]);

    admin.ok(&["admin", "token", "revoke", &id]);
    let e = me.fails(&["artifact", "search", "**"]);
    assert!(e.contains("revoked"), "{e}");
    assert!(admin.ok(&["admin", "token", "list"]).contains("revoked"));

    let denied = admin.ok(&["admin", "audit", "--denied", "--json", "--since", "1h"]);
    let entries: Vec<Value> = denied
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(entries.iter().all(|e| e["allowed"] == false));
    assert!(
        entries
            .iter()
            .filter(|e| e["token_id"] == id.as_str())
            .count()
            >= 4,
        "{denied}"
    );
    let mine = admin.ok(&["admin", "audit", "--token-id", &id, "--limit", "3"]);
    assert_eq!(mine.lines().count(), 3, "{mine}");
}

/// `satchel run` gives each job a token of its own: steps upload as their
/// job and no other, cannot administer, and the token is revoked when the
/// job ends.
#[test]
fn satchel_run_gives_each_job_its_own_token() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let s = Server::start(data.path());
    let file = work.path().join("pipeline.yml");
    std::fs::write(
        &file,
        r#"name: jobs
stages:
  - key: s
    jobs:
      - key: a
        steps:
          - run: |
              set -e
              case "$SATCHEL_TOKEN" in satchel_*) ;; *) echo "not a job token"; exit 1;; esac
              echo hi > out.txt
              satchel artifact upload out.txt
              if SATCHEL_JOB=b satchel artifact upload out.txt 2> other.txt; then echo "uploaded as job b"; exit 1; fi
              grep -q 'acts as job "a" attempt 1 only' other.txt
              if satchel admin token list 2> admin.txt; then echo "administered"; exit 1; fi
              grep -q "lacks the .admin. scope" admin.txt
              echo "$SATCHEL_TOKEN" > "$SATCHEL_SOURCE_DIR/token-a"
  - key: t
    jobs:
      - key: b
        steps:
          - run: satchel artifact search '**' --job a
"#,
    )
    .unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["run", "--server", &s.url, "--token", &s.token])
        .arg(&file)
        .env_remove("SATCHEL_BRANCH")
        .env_remove("SATCHEL_COMMIT")
        .arg("--work-dir")
        .arg(work.path().join("w"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("out.txt"), "job b found a's file: {text}");
    let job_token = std::fs::read_to_string(work.path().join("token-a")).unwrap();
    assert_ne!(job_token.trim(), s.token);
    let agent = s.agent(work.path(), "jobs", 1, "a");
    let list: Value =
        serde_json::from_str(&agent.ok(&["admin", "token", "list", "--json"])).unwrap();
    let jobs: Vec<&Value> = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["pipeline"] == "jobs")
        .collect();
    assert_eq!(jobs.len(), 2, "{list}");
    for t in jobs {
        assert!(
            t["revoked_at"].is_string(),
            "revoked when its job ended: {t}"
        );
        assert_eq!(t["run"], 1);
        assert!(t["expires_at"].is_string());
    }
    let e = agent
        .clone()
        .env("SATCHEL_TOKEN", job_token.trim())
        .fails(&["artifact", "search", "**"]);
    assert!(e.contains("revoked"), "{e}");
}

/// Regressions from review: a job token cannot give its run a branch (and
/// so meet a rule's condition) nor start a run; an upload id carries no
/// authority; a package repository stays its organization's; an admin
/// token is not narrowed; input a client sends never stops the audit log.
#[test]
fn job_tokens_cannot_forge_their_build_or_borrow_uploads() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path());
    rt().block_on(async {
        use reqwest::Method;
        let api = Api {
            s: &s,
            http: reqwest::Client::new(),
        };
        api.admin(Method::POST, "/admin/clusters", json!({"name": "release"}))
            .await;
        api.admin(
            Method::POST,
            "/admin/pipelines",
            json!({"name": "gated", "cluster": "release"}),
        )
        .await;
        api.upload(&s.token, "gated", 1, "seed").await;
        api.admin(
            Method::POST,
            "/admin/rules",
            json!({"type": "pipeline.artifacts_read.pipeline", "source": {"pipeline": "app"},
                   "target": {"pipeline": "gated"}, "condition": "source.build.branch == 'main'"}),
        )
        .await;
        // Run 1 of app has no branch.
        api.admin(Method::POST, "/pipelines/app/runs", json!({})).await;
        let job = api.token(json!({"scopes": ["read", "write"], "pipeline": "app", "run": 1, "job": "j"})).await;
        let mut m = manifest("app", 1, "j");
        m["context"]["branch"] = json!("main");
        let (status, v) = api.call(Method::POST, "/uploads", &job, Some(&m), "t").await;
        assert_eq!(status, 201, "{v}");
        let run = api.get_admin("/pipelines/app/runs/1").await;
        assert!(run["branch"].is_null(), "the job gave its run a branch: {run}");
        let (status, v) = api
            .call(Method::GET, "/pipelines/gated/runs/1/search?query=**", &job, None, "t")
            .await;
        assert_eq!(status, 403, "the condition met by a forged branch: {v}");
        let early = api.token(json!({"scopes": ["write"], "pipeline": "app", "run": 9, "job": "j"})).await;
        let (status, v) = api
            .call(Method::POST, "/uploads", &early, Some(&manifest("app", 9, "j")), "t")
            .await;
        assert_eq!(status, 403, "{v}");
        let (status, _) = api.get_admin_status("/pipelines/app/runs/9").await;
        assert_eq!(status, 404, "no run was started");
        assert!(v.to_string().contains("cannot start runs"), "{v}");
        let forged = json!({"context": {"pipeline": "app", "run": 1, "job": "j", "attempt": 1,
                                        "branch": "main"},
                            "name": "img", "image": "example.com/app:1"});
        let (status, v) = api.call(Method::POST, "/artifacts", &job, Some(&forged), "t").await;
        assert_eq!(status, 201, "{v}");
        assert!(api.get_admin("/pipelines/app/runs/1").await["branch"].is_null());

        // Another cluster's token cannot use app's upload id.
        let (_, plan) = api
            .call(Method::POST, "/uploads", &job, Some(&manifest("app", 1, "j")), "t")
            .await;
        let upload = plan["upload_id"].as_str().unwrap();
        let other = api.token(json!({"scopes": ["read", "write", "delete"], "cluster": "release"})).await;
        for (m, path) in [
            (Method::POST, format!("/uploads/{upload}/finish")),
            (Method::POST, format!("/uploads/{upload}/abort")),
            (Method::POST, format!("/uploads/{upload}/blobs")),
            (
                Method::PUT,
                format!("/uploads/{upload}/blobs/{}", common::sha(UPLOAD_CONTENT)),
            ),
        ] {
            let (status, v) = api.call(m.clone(), &path, &other, None, "t").await;
            assert_eq!(status, 403, "{m} {path}: {v}");
        }

        // A repository is its organization's.
        api.admin(Method::POST, "/admin/orgs", json!({"name": "other"})).await;
        api.admin(Method::POST, "/admin/clusters", json!({"name": "x", "org": "other"}))
            .await;
        let app_artifact = api.upload(&s.token, "app", 1, "j").await;
        api.admin(
            Method::POST,
            "/packages",
            json!({"artifact_id": app_artifact, "repository": "r", "package": "p", "version": "1"}),
        )
        .await;
        let outsider = api.token(json!({"scopes": ["read", "write"], "org": "other", "cluster": "x"})).await;
        let theirs = api.upload(&outsider, "theirs", 1, "j").await;
        let (status, v) = api
            .call(
                Method::POST,
                "/packages",
                &outsider,
                Some(&json!({"artifact_id": theirs, "repository": "r", "package": "p", "version": "2"})),
                "t",
            )
            .await;
        assert_eq!(status, 403, "{v}");
        let latest = api.get_admin("/packages/r/p/latest").await;
        assert_eq!(latest["package"]["version"], "1");

        // Admin tokens administer a whole organization; no narrowing.
        let (status, v) = api
            .call(
                Method::POST,
                "/admin/tokens",
                &s.token,
                Some(&json!({"scopes": ["admin"], "pipeline": "app"})),
                "t",
            )
            .await;
        assert_eq!(status, 400, "{v}");

        // What a client sends (a NUL, an escape) is kept, escaped, and the
        // log goes on.
        let (status, _) = api
            .call(Method::GET, "/pipelines/%00%1b[31m/runs", &job, None, "t")
            .await;
        assert!(status < 500, "{status}");
        let (status, _) = api
            .call(Method::POST, "/admin/orgs", &job, Some(&json!({"name": "a\u{0}b"})), "t")
            .await;
        assert_eq!(status, 403);
        let page = api.get_admin("/admin/audit?limit=5").await;
        let text = page.to_string();
        assert!(text.contains("\\\\u{0}") || text.contains("\\\\u{1b}"), "{text}");
        let after = api.get_admin("/admin/audit?limit=1").await;
        assert_eq!(after["entries"][0]["action"], "GET /api/v1/admin/audit");
    });
}

/// Naming a digest is not owning it: content held only for another
/// organization must be sent before an upload of it can finish (so a
/// leaked SHA-256 is no key to another organization's file), while
/// content the uploader's own organization holds is still deduplicated.
#[test]
fn a_digest_is_no_key_to_another_organizations_content() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path());
    rt().block_on(async {
        use reqwest::Method;
        let api = Api {
            s: &s,
            http: reqwest::Client::new(),
        };
        api.admin(Method::POST, "/admin/orgs", json!({"name": "other"})).await;
        api.admin(Method::POST, "/admin/clusters", json!({"name": "x", "org": "other"}))
            .await;
        let token = |org: &str, cluster: &str| {
            json!({"scopes": ["read", "write"], "org": org, "cluster": cluster})
        };
        let ours = api.token(token("default", "default")).await;
        let theirs = api.token(token("other", "x")).await;
        // Our organization stores the content.
        api.upload(&ours, "secret", 1, "build").await;

        // Theirs names it without sending it: told it is missing, and
        // cannot finish until it sends the bytes.
        let (status, plan) = api
            .call(Method::POST, "/uploads", &theirs, Some(&manifest("claim", 1, "j")), "t")
            .await;
        assert_eq!(status, 201, "{plan}");
        let digest = common::sha(UPLOAD_CONTENT);
        assert_eq!(plan["missing"], json!([digest]), "{plan}");
        let id = plan["upload_id"].as_str().unwrap();
        let (status, v) = api
            .call(Method::POST, &format!("/uploads/{id}/finish"), &theirs, None, "t")
            .await;
        assert_eq!(status, 409, "{v}");
        assert!(v.to_string().contains("asked to send"), "{v}");
        // Wrong bytes prove nothing.
        let r = api
            .http
            .put(s.api(&format!("/uploads/{id}/blobs/{digest}")))
            .bearer_auth(&theirs)
            .body(vec![b'x'; UPLOAD_CONTENT.len()])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let (status, _) = api
            .call(Method::POST, &format!("/uploads/{id}/finish"), &theirs, None, "t")
            .await;
        assert_eq!(status, 409);
        // The right bytes do.
        let r = api
            .http
            .put(s.api(&format!("/uploads/{id}/blobs/{digest}")))
            .bearer_auth(&theirs)
            .body(UPLOAD_CONTENT)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let (status, v) = api
            .call(Method::POST, &format!("/uploads/{id}/finish"), &theirs, None, "t")
            .await;
        assert_eq!(status, 200, "{v}");

        // A large file: no assembling it from chunks another cluster
        // stored, even knowing every chunk; sending it whole works.
        // Above the CLI's chunked threshold (8 MiB), so it asks for chunks.
        let big = common::noise(9 << 20, 7);
        let big_sha = common::sha(&big);
        let work = tempfile::tempdir().unwrap();
        common::write(work.path(), "big.bin", &big);
        s.agent(work.path(), "secret", 3, "build")
            .env("SATCHEL_TOKEN", &ours)
            .ok(&["artifact", "upload", "big.bin"]);
        let chunks: Vec<Value> = satchel_store::chunked::cuts(&big)
            .map(|r| json!({"sha256": common::sha(&big[r.clone()]), "size": r.len()}))
            .collect();
        let mut m = manifest("claim", 2, "j");
        m["files"] = json!([{"path": "big.bin", "size": big.len(), "sha256": big_sha, "mode": 420}]);
        let (_, plan) = api.call(Method::POST, "/uploads", &theirs, Some(&m), "t").await;
        assert_eq!(plan["missing"], json!([big_sha]), "{plan}");
        let id = plan["upload_id"].as_str().unwrap().to_string();
        let list = json!({"chunks": chunks});
        let (status, v) = api
            .call(Method::POST, &format!("/uploads/{id}/blobs/{big_sha}/chunks"), &theirs, Some(&list), "t")
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["missing"].as_array().unwrap().len(), chunks.len(), "every chunk is asked for");
        let (status, v) = api
            .call(Method::POST, &format!("/uploads/{id}/blobs/{big_sha}/assemble"), &theirs, Some(&list), "t")
            .await;
        assert_eq!(status, 409, "assembled from chunks it never sent: {v}");
        assert_eq!(v["error"]["code"], "send_whole", "{v}");
        let (status, _) = api
            .call(Method::POST, &format!("/uploads/{id}/finish"), &theirs, None, "t")
            .await;
        assert_eq!(status, 409);
        // The CLI, which has the file, sends it whole and finishes.
        s.agent(work.path(), "claim", 2, "k")
            .env("SATCHEL_TOKEN", &theirs)
            .ok(&["artifact", "upload", "big.bin"]);

        // Small files go in batches; a batch pays what it sends.
        common::write(work.path(), "small.txt", b"small secret\n");
        s.agent(work.path(), "secret", 4, "build")
            .env("SATCHEL_TOKEN", &ours)
            .ok(&["artifact", "upload", "small.txt"]);
        let out = s
            .agent(work.path(), "claim", 3, "k")
            .env("SATCHEL_TOKEN", &theirs)
            .run(&["artifact", "upload", "small.txt"]);
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("(1 new blob)"), "sent, not deduplicated: {text}");

        // Another cluster of the same organization owes it too.
        api.admin(Method::POST, "/admin/clusters", json!({"name": "c2"})).await;
        let c2 = api.token(token("default", "c2")).await;
        let (_, plan) = api
            .call(Method::POST, "/uploads", &c2, Some(&manifest("c2-pipe", 1, "j")), "t")
            .await;
        assert_eq!(plan["missing"], json!([digest]), "held by default, not c2: {plan}");

        // Content nobody holds yet is owed too: stored by another cluster
        // meanwhile, it is still not this upload's.
        let race = b"not stored yet\n";
        let mut m = manifest("claim", 5, "j");
        m["files"] = json!([{"path": "r.txt", "size": race.len(), "sha256": common::sha(race), "mode": 420}]);
        let (_, plan) = api.call(Method::POST, "/uploads", &theirs, Some(&m), "t").await;
        let id = plan["upload_id"].as_str().unwrap().to_string();
        let (_, p2) = api.call(Method::POST, "/uploads", &ours, Some(&{
            let mut m = manifest("secret", 5, "j");
            m["files"] = json!([{"path": "r.txt", "size": race.len(), "sha256": common::sha(race), "mode": 420}]);
            m
        }), "t").await;
        let id2 = p2["upload_id"].as_str().unwrap();
        let r = api
            .http
            .put(s.api(&format!("/uploads/{id2}/blobs/{}", common::sha(race))))
            .bearer_auth(&ours)
            .body(&race[..])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let (status, _) = api
            .call(Method::POST, &format!("/uploads/{id2}/finish"), &ours, None, "t")
            .await;
        assert_eq!(status, 200);
        let (status, v) = api
            .call(Method::POST, &format!("/uploads/{id}/finish"), &theirs, None, "t")
            .await;
        assert_eq!(status, 409, "finished on another's bytes: {v}");

        // Within one organization, held content is not sent again.
        let (_, plan) = api
            .call(Method::POST, "/uploads", &ours, Some(&manifest("secret", 2, "j")), "t")
            .await;
        assert_eq!(plan["missing"], json!([]), "{plan}");
        let id = plan["upload_id"].as_str().unwrap();
        let (status, _) = api
            .call(Method::POST, &format!("/uploads/{id}/finish"), &ours, None, "t")
            .await;
        assert_eq!(status, 200);
    });
}
