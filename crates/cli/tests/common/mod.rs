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
        let mut cmd = Command::new(BIN);
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
        let text = rt().block_on(async {
            self.http()
                .get(format!("{}/metrics", self.url))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        });
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .parse()
            .unwrap()
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
