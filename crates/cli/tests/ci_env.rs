//! End-to-end: inside another CI's job, `satchel` fills pipeline, run,
//! job, step, attempt, branch and commit from that CI's variables; flags
//! and `SATCHEL_*` win; `satchel context` says where each value came from.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

fn context(env: &[(&str, &str)], args: &[&str]) -> Value {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["context", "--json"])
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const GITHUB: &[(&str, &str)] = &[
    ("GITHUB_ACTIONS", "true"),
    ("GITHUB_REPOSITORY", "octo/web"),
    ("GITHUB_WORKFLOW", "CI"),
    ("GITHUB_RUN_NUMBER", "7"),
    ("GITHUB_RUN_ATTEMPT", "2"),
    ("GITHUB_JOB", "build"),
    ("GITHUB_REF_NAME", "main"),
    ("GITHUB_SHA", "abc123"),
];

#[test]
fn context_names_every_source() {
    let v = context(GITHUB, &[]);
    assert_eq!(v["ci"], "GitHub Actions");
    let f = &v["fields"];
    assert_eq!(f["pipeline"]["value"], "octo-web.CI");
    assert_eq!(
        f["pipeline"]["from"],
        "GITHUB_REPOSITORY + GITHUB_WORKFLOW (GitHub Actions)"
    );
    assert_eq!(f["run"]["value"], "7");
    assert_eq!(f["attempt"]["value"], "2");
    assert_eq!(f["commit"]["value"], "abc123");
    // SATCHEL_* and flags win over the CI.
    let mut env = GITHUB.to_vec();
    env.push(("SATCHEL_JOB", "override"));
    let v = context(&env, &["--run", "99"]);
    assert_eq!(v["fields"]["job"]["value"], "override");
    assert_eq!(v["fields"]["job"]["from"], "SATCHEL_JOB");
    assert_eq!(v["fields"]["run"]["value"], "99");
    assert_eq!(v["fields"]["run"]["from"], "--run");
    // Each CI's mapping.
    let v = context(
        &[
            ("BUILDKITE", "true"),
            ("BUILDKITE_PIPELINE_SLUG", "app"),
            ("BUILDKITE_BUILD_NUMBER", "5"),
            ("BUILDKITE_JOB_ID", "0190f3c2-1111-2222-3333-444455556666"),
            ("BUILDKITE_RETRY_COUNT", "0"),
        ],
        &[],
    );
    assert_eq!(v["ci"], "Buildkite");
    assert_eq!(
        v["fields"]["job"]["value"],
        "0190f3c2-1111-2222-3333-444455556666"
    );
    assert_eq!(v["fields"]["attempt"]["value"], "1");
    let v = context(
        &[
            ("GITLAB_CI", "true"),
            ("CI_PROJECT_PATH", "g/p"),
            ("CI_PIPELINE_IID", "3"),
            ("CI_JOB_STAGE", "test"),
            ("CI_JOB_NAME", "rspec 1/2"),
        ],
        &[],
    );
    assert_eq!(v["ci"], "GitLab CI");
    assert_eq!(v["fields"]["job"]["value"], "rspec-1-2");
    let v = context(
        &[
            ("TF_BUILD", "True"),
            ("BUILD_DEFINITIONNAME", "web"),
            ("BUILD_BUILDID", "812"),
            ("SYSTEM_STAGENAME", "Build"),
            ("SYSTEM_JOBNAME", "Job1"),
            ("SYSTEM_JOBATTEMPT", "1"),
        ],
        &[],
    );
    assert_eq!(v["ci"], "Azure Pipelines");
    assert_eq!(v["fields"]["stage"]["value"], "Build");
    let v = context(&[], &[]);
    assert_eq!(v["ci"], Value::Null);
    assert_eq!(v["fields"]["pipeline"]["from"], "not set");
}

#[test]
fn uploads_inside_github_actions_need_no_satchel_variables() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(&d.path().join("data"));
    let w = d.path().join("w");
    write(&w, "dist/app.txt", b"app");
    let run = |args: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SATCHEL_URL", &s.url)
            .env("SATCHEL_TOKEN", &s.token)
            .current_dir(&w)
            .args(args);
        for (k, v) in GITHUB {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let o = run(&["artifact", "upload", "dist/*"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["artifact", "search", "--json", "**"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let files: Value = serde_json::from_slice(&o.stdout).unwrap();
    let f = &files[0];
    assert_eq!(f["producer"]["pipeline"], "octo-web.CI");
    assert_eq!(f["producer"]["run"], 7);
    assert_eq!(f["producer"]["job"], "build");
    assert_eq!(f["producer"]["attempt"], 2);
    rt().block_on(async {
        let r: Value = s
            .get("/pipelines/octo-web.CI/runs/7")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(r["branch"], "main");
        assert_eq!(r["commit"], "abc123");
    });
    // Outside any CI, the error says what to set.
    let mut cmd = Command::new(BIN);
    let o = cmd
        .env_clear()
        .env("SATCHEL_URL", &s.url)
        .env("SATCHEL_TOKEN", &s.token)
        .current_dir(&w)
        .args(["artifact", "upload", "dist/*"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("no pipeline: pass --pipeline or set SATCHEL_PIPELINE"));
}
