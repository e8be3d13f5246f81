//! Harness for end-to-end tests: starts the real `satchel` binary on a free
//! loopback port with a temporary data directory, and runs agent commands
//! against it the way a CI job would (environment variables, working dir).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_satchel");

pub struct Server {
    pub child: Child,
    pub url: String,
    pub token: String,
    pub data: PathBuf,
}

impl Server {
    pub fn start(data: &Path) -> Server {
        Server::start_with(data, &[])
    }

    pub fn start_with(data: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_under(&[], data, env)
    }

    /// [`Server::start_with`], the server started by `wrapper` (a command
    /// and its arguments, such as `strace -o LOG`) when not empty.
    pub fn start_under(wrapper: &[&str], data: &Path, env: &[(&str, &str)]) -> Server {
        let mut cmd = match wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env_remove("SATCHEL_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting satchel serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let token = env
            .iter()
            .find(|(k, _)| *k == "SATCHEL_ADMIN_TOKEN")
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| {
                std::fs::read_to_string(data.join("admin.token"))
                    .unwrap()
                    .trim()
                    .to_string()
            });
        Server {
            child,
            url,
            token,
            data: data.to_path_buf(),
        }
    }

    /// Kills the server with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    /// Stops the server with SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "server exited with {status}");
    }

    /// An agent command as job `job` (attempt 1) of run `run` in pipeline `p`.
    pub fn agent(&self, cwd: &Path, p: &str, run: u64, job: &str) -> Agent {
        Agent {
            url: self.url.clone(),
            token: self.token.clone(),
            cwd: cwd.to_path_buf(),
            env: vec![
                ("SATCHEL_PIPELINE".into(), p.into()),
                ("SATCHEL_RUN".into(), run.to_string()),
                ("SATCHEL_JOB".into(), job.into()),
            ],
        }
    }

    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    /// An authenticated GET of an API path.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http()
            .get(self.api(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }

    /// Sends `METHOD PATH` exactly as given (no client normalizes the path
    /// or picks the method), with the admin token; returns the status and
    /// the body.
    pub fn raw_request(&self, method: &str, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let addr = self.url.strip_prefix("http://").unwrap();
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            c,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.token
        )
        .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {answer:?}"));
        let body = answer
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        (status, body)
    }

    /// The value of `name` in `/metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        metric_in(&self.metrics_text(), name)
    }

    /// `/metrics`, whole.
    pub fn metrics_text(&self) -> String {
        rt().block_on(async {
            self.http()
                .get(format!("{}/metrics", self.url))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }

    /// The id of the artifact named `name` in a run.
    pub fn artifact_id(&self, pipeline: &str, run: u64, name: &str) -> String {
        rt().block_on(async {
            let v: serde_json::Value = self
                .get(&format!("/pipelines/{pipeline}/runs/{run}/artifacts"))
                .await
                .json()
                .await
                .unwrap();
            v["artifacts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["name"] == name)
                .unwrap_or_else(|| panic!("no artifact {name} in {v}"))["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
    }

    /// Deletes an artifact through the API.
    pub fn delete_artifact(&self, id: &str) {
        rt().block_on(async {
            let r = self
                .http()
                .delete(self.api(&format!("/artifacts/{id}")))
                .bearer_auth(&self.token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        });
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

#[derive(Clone)]
pub struct Agent {
    pub url: String,
    pub token: String,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Agent {
    pub fn env(mut self, k: &str, v: &str) -> Agent {
        self.env.retain(|(a, _)| a != k);
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(&self.cwd)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SATCHEL_URL", &self.url)
            .env("SATCHEL_TOKEN", &self.token)
            .args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.output().expect("running satchel")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "satchel {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "satchel {args:?} unexpectedly succeeded"
        );
        String::from_utf8(out.stderr).unwrap()
    }
}

pub fn write(dir: &Path, rel: &str, data: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// Logs in to the web UI with `token`: the session cookie (`name=value`).
pub async fn ui_login(s: &Server, token: &str) -> String {
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}/login", s.url))
        .form(&[("token", token), ("next", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "login refused");
    r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// The value of series `name` (with its labels, if any) in Prometheus
/// text.
pub fn metric_in(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .unwrap()
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn wait_until(f: impl FnMut() -> bool, what: &str) {
    wait_up_to(10, f, what)
}

/// [`wait_until`] for up to `secs` seconds (for work that starts many
/// processes on a busy machine).
pub fn wait_up_to(secs: u64, mut f: impl FnMut() -> bool, what: &str) {
    for _ in 0..secs * 40 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting for {what}");
}

/// The `error.code` of an error response.
pub async fn code(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.unwrap();
    v["error"]["code"].as_str().unwrap_or_default().to_string()
}

/// A batch upload whose client stops in mid-body after two whole frames,
/// holding its connection open, once the server has taken a pack buffer
/// for it (polled on `/metrics`, so the state is certain, not timed).
pub struct StalledBatch {
    pub files: Vec<Vec<u8>>,
    pub upload_id: String,
    conn: std::net::TcpStream,
    body: Vec<u8>,
    sent: usize,
}

impl StalledBatch {
    /// Stages `pipeline` run 1 job `slow` with 20 small files and stalls.
    pub fn start(s: &Server, pipeline: &str) -> StalledBatch {
        use sha2::Digest as _;
        use std::io::Write;
        let files: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1000 + i as usize]).collect();
        let taken = s.metric("satchel_pack_buffers_taken_total");
        let plan: serde_json::Value = rt().block_on(async {
            let manifest: Vec<serde_json::Value> = files
                .iter()
                .enumerate()
                .map(|(i, f)| serde_json::json!({"path": format!("s/{i}.bin"), "size": f.len(), "sha256": hex::encode(sha2::Sha256::digest(f))}))
                .collect();
            s.http()
                .post(s.api("/uploads"))
                .bearer_auth(&s.token)
                .json(&serde_json::json!({"context": {"pipeline": pipeline, "run": 1, "job": "slow"}, "files": manifest}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        });
        let mut body = Vec::new();
        for f in &files {
            body.extend_from_slice(&sha2::Sha256::digest(f));
            body.extend_from_slice(&(f.len() as u64).to_be_bytes());
            body.extend_from_slice(f);
        }
        let upload_id = plan["upload_id"].as_str().unwrap().to_string();
        let sent = 2 * (40 + 1000) + 40 + 500;
        let addr = s.url.strip_prefix("http://").unwrap();
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        write!(
            conn,
            "POST /api/v1/uploads/{upload_id}/blobs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            s.token,
            body.len()
        )
        .unwrap();
        conn.write_all(&body[..sent]).unwrap();
        conn.flush().unwrap();
        wait_until(
            || s.metric("satchel_pack_buffers_taken_total") > taken,
            "the stalled batch to take a pack buffer",
        );
        StalledBatch {
            files,
            upload_id,
            conn,
            body,
            sent,
        }
    }

    /// Sends the rest; the server must answer 200.
    pub fn resume(mut self) {
        use std::io::{Read, Write};
        self.conn.write_all(&self.body[self.sent..]).unwrap();
        let mut answer = String::new();
        self.conn.read_to_string(&mut answer).ok();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}

/// The SHA-256 of `data`, hex.
pub fn sha(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// The content of file `id`, read through the API of the server at `url`.
pub async fn file_content(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    id: &str,
) -> bytes::Bytes {
    http.get(format!("{url}/api/v1/files/{id}/content"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
}

/// Deterministic incompressible bytes.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// GC runs flat out (zero grace) on server `gc` while 1,000 rounds of
/// uploads through server `uploads` (the same server, or another replica
/// of one database and bucket; both started with chunks trusted for 5 s:
/// `SATCHEL_CHUNK_REFRESH_SECS=5`) reuse the same content and each round
/// deletes the previous round's artifact, so the shared content keeps
/// becoming garbage and being re-sent: three small contents in turn, and
/// every 7th round a large file cut into chunks that most rounds' large
/// files share. Every 10th round is kept, with content of its own (so it
/// pins nothing the race needs). Deletions and re-sends must go on to the
/// last quarter, and every artifact kept must download intact.
pub fn gc_races_dedup_uploads(gc: &Server, uploads: &Server) {
    use serde_json::{json, Value};
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let contents: Vec<Vec<u8>> = (0..3)
        .map(|i| format!("shared content {i}").repeat(100).into_bytes())
        .collect();
    let base = noise(700_000, 77);
    let content_of = |round: u64| -> Vec<u8> {
        if round.is_multiple_of(20) {
            noise(700_000, 1000 + round)
        } else if round.is_multiple_of(10) {
            format!("kept {round} ").repeat(100).into_bytes()
        } else if round.is_multiple_of(7) {
            let mut big = base.clone();
            big.extend_from_slice(&round.to_be_bytes());
            big
        } else {
            contents[(round % 3) as usize].clone()
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (url, token) = (uploads.url.clone(), uploads.token.clone());
    let gc_url = gc.url.clone();
    rt.block_on(async move {
        let http = reqwest::Client::new();
        let api = |p: &str| format!("{url}/api/v1{p}");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let deleted = std::sync::Arc::new(AtomicU64::new(0));
        let objects = std::sync::Arc::new(AtomicU64::new(0));
        let gc = {
            let (http, url, token, stop) = (http.clone(), gc_url.clone(), token.clone(), stop.clone());
            let (deleted, objects) = (deleted.clone(), objects.clone());
            tokio::spawn(async move {
                let mut passes = 0u64;
                while !stop.load(Relaxed) {
                    let r: Value = http
                        .post(format!("{url}/api/v1/admin/gc"))
                        .bearer_auth(&token)
                        .json(&json!({"grace_seconds": 0}))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    passes += 1;
                    deleted.fetch_add(r["blobs_deleted"].as_u64().unwrap(), Relaxed);
                    objects.fetch_add(r["objects_deleted"].as_u64().unwrap(), Relaxed);
                }
                passes
            })
        };
        let mut kept = Vec::new();
        let mut previous: Option<(u64, String)> = None;
        let mut resent = 0u64;
        let mut big_resent = 0u64;
        let mut at_three_quarters = (0, 0, 0);
        for round in 1..=1000u64 {
            if round == 751 {
                at_three_quarters = (deleted.load(Relaxed), resent, big_resent);
            }
            let c = content_of(round);
            let files = vec![json!({"path": "data.bin", "size": c.len(), "sha256": sha(&c)})];
            let created: Value = http
                .post(api("/uploads"))
                .bearer_auth(&token)
                .json(&json!({
                    "context": {"pipeline": "race", "run": round, "job": "j"},
                    "name": "out",
                    "files": files,
                }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let upload = created["upload_id"].as_str().unwrap().to_string();
            for m in created["missing"].as_array().unwrap() {
                // Kept and large contents are new every time; only the
                // three shared small ones say whether GC took them.
                if c.len() > 100_000 {
                    big_resent += 1;
                } else if !round.is_multiple_of(10) {
                    resent += 1;
                }
                let r = http
                    .put(api(&format!(
                        "/uploads/{upload}/blobs/{}",
                        m.as_str().unwrap()
                    )))
                    .bearer_auth(&token)
                    .body(c.clone())
                    .send()
                    .await
                    .unwrap();
                assert!(
                    r.status().is_success(),
                    "round {round}: {}",
                    r.text().await.unwrap()
                );
            }
            let r = http
                .post(api(&format!("/uploads/{upload}/finish")))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert!(
                r.status().is_success(),
                "round {round}: {}",
                r.text().await.unwrap()
            );
            let id = created["artifact_id"].as_str().unwrap().to_string();
            if let Some((pr, p)) = previous.take() {
                // After at least one GC pass raced it, the artifact about
                // to become garbage still reads back whole.
                let v: Value = http
                    .get(api(&format!("/artifacts/{p}")))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let body = file_content(&http, &url, &token, v["files"][0]["id"].as_str().unwrap()).await;
                assert!(body.as_ref() == content_of(pr).as_slice(), "round {pr} lost bytes");
                let r = http
                    .delete(api(&format!("/artifacts/{p}")))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
            }
            if round.is_multiple_of(10) {
                kept.push((round, id));
            } else {
                previous = Some((round, id));
            }
        }
        stop.store(true, Relaxed);
        let passes = gc.await.unwrap();
        let (deleted, objects) = (deleted.load(Relaxed), objects.load(Relaxed));
        eprintln!(
            "gc passes: {passes}, blobs deleted: {deleted}, objects deleted: {objects}, shared blobs re-sent: {resent}, large files sent: {big_resent}"
        );
        let (d750, r750, _) = at_three_quarters;
        assert!(passes > 10, "GC ran {passes} times");
        assert!(deleted > d750, "GC still deleted shared content in the last quarter");
        // The small shared contents only come back if GC took them: a
        // re-send of one proves it became garbage and was collected.
        assert!(resent - r750 > 3, "content was still re-sent in the last quarter");
        // Every artifact left downloads intact.
        for (round, _) in &kept {
            let v: Value = http
                .get(api(&format!(
                    "/pipelines/race/runs/{round}/search?query=data.bin"
                )))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let f = &v["files"][0];
            let body = file_content(&http, &url, &token, f["id"].as_str().unwrap()).await;
            assert!(body.as_ref() == content_of(*round).as_slice(), "round {round}");
        }
        let r: Value = http
            .post(api("/admin/fsck"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["ok"], true, "{r}");
    });
}

// The GitHub Actions artifact protocol, as its tests drive it by hand.

/// `satchel admin gha-token` output, parsed: (results URL, token).
pub fn mint(s: &Server, job: &str, extra: &[&str]) -> (String, String) {
    let agent = s.agent(Path::new("."), "gh", 1, job);
    let mut args = vec![
        "admin",
        "gha-token",
        "--pipeline",
        "gh",
        "--run",
        "1",
        "--job",
        job,
    ];
    args.extend_from_slice(extra);
    let out = agent.ok(&args);
    let get = |var: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("export {var}=")))
            .unwrap_or_else(|| panic!("no {var} in {out}"))
            .trim_matches('\'')
            .to_string()
    };
    (get("ACTIONS_RESULTS_URL"), get("ACTIONS_RUNTIME_TOKEN"))
}

/// One Twirp call of the artifact service: (status, JSON answer).
pub async fn twirp(
    url: &str,
    token: &str,
    method: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!(
            "{url}twirp/github.actions.results.api.v1.ArtifactService/{method}"
        ))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// The job's ids plus `extra`, as every Twirp request of job `build` of
/// run 1 of pipeline `gh` carries them.
pub fn ids_with(extra: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({
        "workflow_run_backend_id": "satchel.gh.1",
        "workflow_job_run_backend_id": "build",
    });
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
}
