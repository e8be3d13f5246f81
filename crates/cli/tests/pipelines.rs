//! End-to-end: `satchel run` on the seeds' scenarios (examples/), named and
//! typed artifacts, `$[…]` references, sources, run states and promotion,
//! all with the real binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::Value;
use sha2::Digest as _;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// `examples/NAME`, in a copy of the examples directory outside git made
/// once per test process: each run checks out that small directory, not
/// the whole Satchel repository.
fn example(name: &str) -> PathBuf {
    static COPY: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = COPY.get_or_init(|| {
        let d = tmp();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let st = Command::new("cp")
            .arg("-R")
            .arg(format!("{}/.", src.display()))
            .arg(d.path())
            .status()
            .unwrap();
        assert!(st.success(), "copying the examples");
        d
    });
    dir.path().join(name)
}

/// `satchel run` with an embedded server on `data`.
fn run(data: &Path, file: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .arg("run")
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .arg(file)
        .env_remove("SATCHEL_URL")
        .env_remove("SATCHEL_TOKEN")
        .env_remove("SATCHEL_BRANCH")
        .env_remove("SATCHEL_COMMIT")
        .env_remove("SATCHEL_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("running satchel run")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn passes(data: &Path, file: &Path) -> String {
    let o = run(data, file, &[]);
    let t = text(&o);
    assert!(
        o.status.success(),
        "satchel run {} failed:\n{t}",
        file.display()
    );
    t
}

fn fails(data: &Path, file: &Path) -> String {
    let o = run(data, file, &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "expected failure:\n{t}");
    t
}

fn write_pipeline(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, yaml).unwrap();
    p
}

/// Reads the run's state through the API of a server started on `data`.
fn run_state(data: &Path, pipeline: &str, run: u64) -> Value {
    let s = Server::start(data);
    rt().block_on(async {
        s.get(&format!("/pipelines/{pipeline}/runs/{run}"))
            .await
            .json::<Value>()
            .await
            .unwrap()
    })
}

#[test]
fn azure_fan_in_example() {
    let d = tmp();
    let data = d.path().join("data");
    let out = passes(&data, &example("fan-in.yml"));
    assert!(out.contains("[CollectAndDeploy/UseAll] From Job1"), "{out}");
    assert!(out.contains("[CollectAndDeploy/UseAll] From Job2"), "{out}");
    assert!(
        out.contains("run #1 of pipeline \"fan-in\": PASSED"),
        "{out}"
    );
    // The summary lists both artifacts with their producers.
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no summary line for {name}:\n{out}"))
            .to_string()
    };
    assert!(line("job1-artifact").contains("ParallelJobs/Job1/publish"));
    assert!(line("job2-artifact").contains("ParallelJobs/Job2/publish"));
    // Each job had its own directory; the downloads landed in the
    // consumer's workspace, one folder per artifact.
    let ws = data.join("work/fan-in/1/UseAll/workspace");
    assert_eq!(
        std::fs::read_to_string(ws.join("job1-artifact/job1.txt")).unwrap(),
        "From Job1\n"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("job2-artifact/job2.txt")).unwrap(),
        "From Job2\n"
    );
    assert!(!data.join("work/fan-in/1/UseAll/work/job1.txt").exists());
    // A second run is run 2, and the first is recorded as passed.
    let out = passes(&data, &example("fan-in.yml"));
    assert!(out.contains("run #2 of pipeline \"fan-in\""), "{out}");
    let r = run_state(&data, "fan-in", 1);
    assert_eq!(r["state"], "passed");
    assert!(r["finished_at"].is_string());
}

/// The Azure seed's own YAML, copied verbatim, run by a bare file name from
/// its directory (which once failed: "cannot make an empty path absolute").
#[test]
fn azure_seed_yaml_runs_verbatim_from_a_bare_file_name() {
    let d = tmp();
    let data = d.path().join("data");
    std::fs::copy(
        example("seeds/azure-fan-in.yml"),
        d.path().join("azure-fan-in.yml"),
    )
    .unwrap();
    let o = Command::new(BIN)
        .current_dir(d.path())
        .args(["run", "--data-dir", "data", "azure-fan-in.yml"])
        .env_remove("SATCHEL_URL")
        .env_remove("SATCHEL_TOKEN")
        .env_remove("SATCHEL_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    // The seed's last script cats both files from $(Pipeline.Workspace)/<name>/.
    assert!(out.contains("[CollectAndDeploy/UseAll] From Job1"), "{out}");
    assert!(out.contains("[CollectAndDeploy/UseAll] From Job2"), "{out}");
    assert!(
        out.contains("run #1 of pipeline \"azure-fan-in\": PASSED"),
        "{out}"
    );
    let ws = data.join("work/azure-fan-in/1/UseAll/workspace");
    assert_eq!(
        std::fs::read_to_string(ws.join("job2-artifact/job2.txt")).unwrap(),
        "From Job2\n"
    );
}

/// An Azure file with variables, a `resources.pipelines` source, the
/// shortcuts, a download into an explicit path, `condition: always()` and a
/// task that cannot run locally.
#[test]
fn azure_pipelines_file_with_variables_sources_and_conditions() {
    let d = tmp();
    let data = d.path().join("data");
    passes(&data, &example("seeds/azure-fan-in.yml"));
    let file = example("azure/azure-pipelines.yml");
    // Without --skip-unsupported the deploy task refuses the file, before
    // anything runs.
    let o = run(&data, &file, &[]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains(
            "steps[3]: task AzureWebApp@1 cannot run locally (supported steps: script, bash,"
        ),
        "{out}"
    );
    assert!(!out.contains("run #1"), "nothing ran: {out}");
    let o = run(&data, &file, &["--skip-unsupported"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("[Build/Compile] ▶ step-1: Build the app"),
        "{out}"
    );
    assert!(
        out.contains("[Deploy/Fetch] web build 1 by Compile"),
        "{out}"
    );
    assert!(out.contains("[Deploy/Fetch] From Job1"), "{out}");
    assert!(out.contains("[Deploy/Fetch]   appName=web-prod"), "{out}");
    let ws = data.join("work/azure-pipelines/1/Fetch/workspace");
    assert!(
        out.contains(&format!("[Deploy/Fetch]   package={}/app", ws.display())),
        "{out}"
    );
    assert!(
        out.contains("[Report/Notify] report from stage Report"),
        "{out}"
    );
    // One artifact into an explicit path: its files straight there.
    assert_eq!(
        std::fs::read_to_string(ws.join("app/app.txt")).unwrap(),
        "web build 1 by Compile\n"
    );
    assert!(out.contains("web-drop  files  2"), "{out}");
    assert!(
        !ws.join("app/app.debug").exists(),
        "`patterns` left out what its `!` line matches"
    );
}

/// `condition: failed()` runs a job only after a failure, `always()`
/// whatever happened; neither fails a run that otherwise passed.
#[test]
fn azure_conditions_run_cleanup_jobs_on_failure_only() {
    let d = tmp();
    let data = d.path().join("data");
    let yaml = |exit: u8| {
        format!(
            "jobs:
  - job: build
    steps:
      - script: exit {exit}
  - job: on_failure
    dependsOn: build
    condition: failed()
    steps:
      - script: echo cleaning up after $(System.JobName)
  - job: always
    dependsOn: [build, on_failure]
    condition: always()
    steps:
      - script: echo always runs
  - job: after_cleanup
    dependsOn: on_failure
    steps:
      - script: echo after cleanup
"
        )
    };
    let ok = write_pipeline(d.path(), "ok.yml", &yaml(0));
    // A job after the skipped cleanup is skipped too, and fails nothing.
    let out = passes(&data, &ok);
    assert!(!out.contains("cleaning up"), "{out}");
    assert!(!out.contains("after cleanup"), "{out}");
    assert!(
        out.contains("job skipped: runs only when something it depends on failed"),
        "{out}"
    );
    assert!(out.contains("[default/always] always runs"), "{out}");
    let bad = write_pipeline(d.path(), "bad.yml", &yaml(3));
    let out = fails(&data, &bad);
    assert!(
        out.contains("[default/on_failure] cleaning up after on_failure"),
        "{out}"
    );
    assert!(out.contains("[default/always] always runs"), "{out}");
    assert!(
        out.contains("[default/after_cleanup] after cleanup"),
        "{out}"
    );
    assert!(out.contains("run #1 of pipeline \"bad\": FAILED"), "{out}");
}

/// `--jobs 2` never runs more than two jobs at once: four jobs each hold a
/// marker for a second and count the markers.
#[test]
fn jobs_cap_how_many_jobs_run_at_once() {
    let d = tmp();
    let data = d.path().join("data");
    let markers = d.path().join("markers");
    std::fs::create_dir(&markers).unwrap();
    let job = |k: &str| {
        format!(
            "      - key: {k}
        steps:
          - run: |
              touch \"$MARKERS/$SATCHEL_JOB\"
              sleep 1
              n=$(ls \"$MARKERS\" | wc -l)
              echo \"$SATCHEL_JOB saw $n running\"
              rm \"$MARKERS/$SATCHEL_JOB\"
              [ \"$n\" -le 2 ]
"
        )
    };
    let yaml = format!(
        "name: capped
env: {{ MARKERS: {} }}
stages:
  - key: all
    jobs:
{}{}{}{}",
        markers.display(),
        job("a"),
        job("b"),
        job("c"),
        job("d")
    );
    let file = write_pipeline(d.path(), "capped.yml", &yaml);
    let o = run(&data, &file, &["--jobs", "2"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("saw 2 running"), "two ran together: {out}");
    let o = run(&data, &file, &["--jobs", "0"]);
    assert!(!o.status.success(), "--jobs 0 is refused");
}

/// A failed run ends with what failed and the last 20 lines its failed
/// step printed.
#[test]
fn a_failed_run_summarises_the_failed_steps_last_lines() {
    let d = tmp();
    let data = d.path().join("data");
    let file = write_pipeline(
        d.path(),
        "noisy.yml",
        "name: noisy
stages:
  - key: build
    jobs:
      - key: compile
        steps:
          - run: echo fine
          - key: make
            run: |
              for i in $(seq 1 30); do echo \"line $i\"; done
              exit 2
",
    );
    let out = fails(&data, &file);
    let summary = &out[out
        .find("run #1 of pipeline \"noisy\": FAILED")
        .expect("a summary")..];
    assert!(
        summary.contains("✘ build/compile: step make failed"),
        "{summary}"
    );
    assert!(
        summary.contains("its last 20 lines of output:"),
        "{summary}"
    );
    assert!(summary.contains("  | line 30\n"), "{summary}");
    assert!(summary.contains("  | line 11\n"), "{summary}");
    assert!(
        !summary.contains("  | line 10\n"),
        "only the last 20: {summary}"
    );
    assert!(
        !summary.contains("| fine"),
        "the failed step's lines only: {summary}"
    );
    // A step that fails before it runs (a reference that does not resolve)
    // shows none of the previous step's lines.
    let file = write_pipeline(
        d.path(),
        "unresolved.yml",
        "name: unresolved
stages:
  - key: build
    jobs:
      - key: compile
        steps:
          - run: echo earlier output
          - key: use
            run: echo $[jobs.nope.nope.artifacts.nope]
",
    );
    let out = fails(&data, &file);
    let summary = &out[out
        .find("run #1 of pipeline \"unresolved\": FAILED")
        .expect("a summary")..];
    assert!(summary.contains("✘ build/compile: step use"), "{summary}");
    assert!(!summary.contains("earlier output"), "{summary}");
}

#[test]
fn flow_cross_job_image_reference() {
    let d = tmp();
    let out = passes(&d.path().join("data"), &example("flow-image.yml"));
    assert!(
        out.contains(
            "[my_stage/deploy_job] deploying image registry.cn-hangzhou.aliyuncs.com/ns/demo:1.0"
        ),
        "{out}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("my_image"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("image"), "{line}");
    assert!(
        line.contains("registry.cn-hangzhou.aliyuncs.com/ns/demo:1.0"),
        "{line}"
    );
}

#[test]
fn flow_cross_stage_files_reference() {
    let d = tmp();
    let out = passes(&d.path().join("data"), &example("flow-files.yml"));
    let url = out
        .lines()
        .find_map(|l| l.split("artifact URL: ").nth(1))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/archive"),
        "{url}"
    );
    assert!(
        out.contains("[deploy_stage/deploy_job] app v1 deployed"),
        "{out}"
    );
    assert!(
        out.contains("[deploy_stage/deploy_job] built by flow-files"),
        "{out}"
    );
}

#[test]
fn flow_cross_pipeline_reference_takes_the_last_successful_run() {
    let d = tmp();
    let data = d.path().join("data");
    // No run of pipeline A yet: B does not start, and says why.
    let out = fails(&data, &example("pipeline-b.yml"));
    assert!(
        out.contains("source \"pipeline_a\": pipeline \"pipeline-a\" not found"),
        "{out}"
    );
    passes(&data, &example("pipeline-a.yml"));
    // A later run of A fails after declaring another image: B must still
    // take run 1, the last successful one.
    let failing = write_pipeline(
        d.path(),
        "a-broken.yml",
        r#"
name: pipeline-a
stages:
  - key: build_stage
    jobs:
      - key: build_job
        steps:
          - key: docker_build_push_step
            image: registry.cn-hangzhou.aliyuncs.com/ns/demo:2.0-broken
            artifact: my_image
          - key: tests
            run: echo "tests failed"; exit 3
"#,
    );
    let out = fails(&data, &failing);
    assert!(out.contains("ended with exit code 3"), "{out}");
    let out = passes(&data, &example("pipeline-b.yml"));
    assert!(
        out.contains("source pipeline_a: run #1 of pipeline \"pipeline-a\" (lastSuccessfulBuild)"),
        "{out}"
    );
    assert!(
        out.contains("deploying image registry.cn-hangzhou.aliyuncs.com/ns/demo:1.0"),
        "{out}"
    );
    assert!(
        out.contains("\"reference\": \"registry.cn-hangzhou.aliyuncs.com/ns/demo:1.0\""),
        "{out}"
    );
    assert!(!out.contains("2.0-broken"), "{out}");
    // The first attempt at B never started a run: this is run 1.
    let r = run_state(&data, "pipeline-b", 1);
    assert_eq!(r["sources"]["pipeline_a"]["run"], 1);
    assert_eq!(
        r["sources"]["pipeline_a"]["selector"],
        "lastSuccessfulBuild"
    );
    let r = run_state(&data, "pipeline-a", 2);
    assert_eq!(r["state"], "failed");
}

#[test]
fn selector_without_a_passed_run_is_a_clear_error() {
    let d = tmp();
    let data = d.path().join("data");
    let a = write_pipeline(
        d.path(),
        "a.yml",
        "name: a\nstages:\n  - key: s\n    jobs:\n      - key: j\n        steps:\n          - run: exit 1\n",
    );
    fails(&data, &a);
    let b = write_pipeline(
        d.path(),
        "b.yml",
        "name: b\nsources:\n  up: { pipeline: a }\nstages:\n  - key: s\n    jobs:\n      - key: j\n        steps:\n          - run: 'true'\n",
    );
    let out = fails(&data, &b);
    assert!(
        out.contains("source \"up\": pipeline \"a\" has no run matching `lastSuccessfulBuild`"),
        "{out}"
    );
    assert!(out.contains("its newest runs: #1 failed"), "{out}");
}

#[test]
fn unknown_keys_fail_before_anything_runs() {
    let d = tmp();
    let data = d.path().join("data");
    let bad = write_pipeline(
        d.path(),
        "bad.yml",
        "name: p\nstages:\n  - key: s\n    jobs:\n      - key: j\n        steps:\n          - run: touch ran\n            artifact_path: [x]\n",
    );
    let out = fails(&data, &bad);
    assert!(out.contains("unknown field `artifact_path`"), "{out}");
    assert!(out.contains("line 8"), "{out}");
    assert!(!data.join("work").exists(), "nothing may run");
    let o = run(&data, &bad, &["--check"]);
    assert!(!o.status.success());
}

#[test]
fn a_failed_stage_skips_its_dependants_and_the_run_fails() {
    let d = tmp();
    let data = d.path().join("data");
    let p = write_pipeline(
        d.path(),
        "p.yml",
        r#"
name: chain
stages:
  - key: build
    jobs:
      - key: ok
        steps:
          - run: echo fine
      - key: broken
        steps:
          - key: compile
            run: echo "compiler error" >&2; exit 2
          - key: never
            run: touch should-not-exist
  - key: test
    jobs:
      - key: unit
        steps:
          - run: touch ran
  - key: report
    depends_on: []
    jobs:
      - key: notify
        steps:
          - run: echo independent
"#,
    );
    let out = fails(&data, &p);
    assert!(out.contains("[build/broken] compiler error"), "{out}");
    assert!(
        out.contains("stage test skipped: depends on build failed"),
        "{out}"
    );
    assert!(out.contains("[report/notify] independent"), "{out}");
    let unit = out
        .lines()
        .find(|l| l.starts_with("test ") && l.contains("unit"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(unit.contains("skipped"), "{unit}");
    assert!(!data
        .join("work/chain/1/broken/work/should-not-exist")
        .exists());
    assert!(!data.join("work/chain/1/unit").exists());
    assert_eq!(run_state(&data, "chain", 1)["state"], "failed");
}

#[test]
fn duplicate_artifact_names_are_a_conflict_naming_the_owner() {
    let d = tmp();
    let data = d.path().join("data");
    let p = write_pipeline(
        d.path(),
        "p.yml",
        r#"
name: dup
stages:
  - key: build
    jobs:
      - key: first
        steps:
          - run: echo 1 > a.txt
          - key: pub
            publish: a.txt
            artifact: shared
      - key: second
        depends_on: [first]
        steps:
          - run: echo 2 > a.txt
          - key: pub
            publish: a.txt
            artifact: shared
"#,
    );
    let out = fails(&data, &p);
    assert!(
        out.contains("artifact \"shared\" already exists in run 1 of pipeline \"dup\": it was published by job \"first\""),
        "{out}"
    );
    // Over the API it is a 409.
    let s = Server::start(&data);
    let w = tmp();
    write(w.path(), "x.txt", b"x");
    let agent = s.agent(w.path(), "dup", 1, "third");
    let err = agent.fails(&["artifact", "publish", "x.txt", "--name", "shared"]);
    assert!(err.contains("published by job \"first\""), "{err}");
    rt().block_on(async {
        let r = s
            .http()
            .post(s.api("/artifacts"))
            .bearer_auth(&s.token)
            .json(&serde_json::json!({
                "context": {"pipeline": "dup", "run": 1, "job": "third"},
                "name": "shared",
                "image": "example.com/x:1"
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        assert_eq!(code(r).await, "conflict");
    });
}

#[test]
fn unresolvable_references_fail_the_step_and_say_what_exists() {
    let d = tmp();
    let data = d.path().join("data");
    let p = write_pipeline(
        d.path(),
        "p.yml",
        r#"
name: refs
stages:
  - key: build
    jobs:
      - key: job1
        steps:
          - key: image
            image: example.com/app:1
            artifact: app
  - key: deploy
    jobs:
      - key: d1
        steps:
          - key: wrong-name
            run: echo "$[stages.build.job1.image.artifacts.nope]" > used
      - key: d2
        steps:
          - run: echo "$[stages.build.nojob.image.artifacts.app]"
      - key: d3
        steps:
          - run: echo "$[stages.nostage.job1.image.artifacts.app]"
      - key: d4
        steps:
          - run: echo "$[stages.build.job1.nostep.artifacts.app]"
      - key: d5
        steps:
          - run: echo "ok $[stages.build.job1.image.artifacts.app] $[stages.build.job1.image.artifacts.default]"
"#,
    );
    let out = fails(&data, &p);
    for want in [
        "step \"image\" of job \"job1\" of stage \"build\" did not publish an artifact named \"nope\" in run 1 of pipeline \"refs\" (it published: app)",
        "no job \"nojob\" of stage \"build\" has published artifacts in run 1 of pipeline \"refs\" (jobs there: job1)",
        "stage \"nostage\" has no job with artifacts in run 1 of pipeline \"refs\" (stages with artifacts: build)",
        "step \"nostep\" of job \"job1\" of stage \"build\" published no artifacts in run 1 of pipeline \"refs\" (steps of that job that did: image)",
        "[deploy/d5] ok example.com/app:1 example.com/app:1",
    ] {
        assert!(out.contains(want), "want {want:?} in:\n{out}");
    }
    assert!(!data.join("work/refs/1/d1/work/used").exists());
}

#[test]
fn ctrl_c_cancels_the_run_and_stops_its_steps() {
    let d = tmp();
    let data = d.path().join("data");
    let marker = d.path().join("finished");
    let p = write_pipeline(
        d.path(),
        "p.yml",
        &format!(
            "name: slow\nstages:\n  - key: s\n    jobs:\n      - key: j\n        steps:\n          - run: echo $$ > pgid.tmp; mv pgid.tmp pgid; echo started; sleep 30; touch {}\n",
            marker.display()
        ),
    );
    let mut child = Command::new(BIN)
        .arg("run")
        .arg("--data-dir")
        .arg(&data)
        .arg(&p)
        .env_remove("SATCHEL_URL")
        .env_remove("SATCHEL_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        use std::io::Read;
        let mut all = String::new();
        let mut r = stdout;
        r.read_to_string(&mut all).ok();
        all
    });
    let pid = child.id().to_string();
    // The step's shell is its process group's leader: its pid names the
    // group, written once the step runs.
    let pgid_file = data.join("work/slow/1/j/work/pgid");
    wait_until(|| pgid_file.exists(), "the step to start");
    let pgid = std::fs::read_to_string(&pgid_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(!live_in_group(&pgid).is_empty(), "the step runs");
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let status = child.wait().unwrap();
    let out = lines.join().unwrap();
    assert_eq!(status.code(), Some(130), "{out}");
    assert!(out.contains("CANCELED"), "{out}");
    // Not a timed look at a marker: the step's whole process group (its
    // shell and the sleep) must be gone.
    wait_for_no_group(&pgid, "the step's processes must be stopped");
    assert!(!marker.exists(), "the step's sleep must have been stopped");
    assert_eq!(run_state(&data, "slow", 1)["state"], "canceled");
}

#[test]
fn named_typed_artifacts_promotion_and_a_remote_runner() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    let src = d.path().join("src");
    write(&src, "dist/app.bin", &vec![7u8; 3 * 1024 * 1024]);
    write(&src, "dist/docs/readme.md", b"# app\n");
    write(&src, "dist/tmp/scratch.o", b"scratch");
    write(&src, "dist/build.log", b"log");
    write(&src, "dist/.artifactignore", b"tmp/\n*.log\n");
    let long = format!("dist/{}/deep.txt", "d".repeat(120));
    write(&src, &long, b"deep");
    let agent = s
        .agent(&src, "rel", 1, "build")
        .env("SATCHEL_STAGE", "build")
        .env("SATCHEL_STEP", "pub");
    agent.ok(&["artifact", "publish", "dist", "--name", "app"]);
    agent.ok(&[
        "artifact",
        "publish-link",
        "https://example.com/notes.txt",
        "--name",
        "notes",
        "--md5",
        "d41d8cd98f00b204e9800998ecf8427e",
    ]);
    let err = agent.fails(&["artifact", "publish-image", "bad image", "--name", "img"]);
    assert!(err.contains("invalid image reference"), "{err}");
    let err = agent.fails(&["artifact", "publish", "dist", "--name", "app"]);
    assert!(err.contains("already exists in run 1"), "{err}");

    // download-artifact: one folder per artifact, pattern, ignore rules held.
    let ws = d.path().join("ws");
    agent.ok(&[
        "artifact",
        "download-artifact",
        "app",
        "notes",
        "--dest",
        ws.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(ws.join("app/app.bin")).unwrap().len(),
        3 << 20
    );
    assert!(ws.join("app/docs/readme.md").exists());
    assert!(!ws.join("app/tmp").exists() && !ws.join("app/build.log").exists());
    assert!(!ws.join("app/.artifactignore").exists());
    let notes: Value =
        serde_json::from_slice(&std::fs::read(ws.join("notes/artifact.json")).unwrap()).unwrap();
    assert_eq!(notes["link"]["url"], "https://example.com/notes.txt");
    let only = d.path().join("only");
    agent.ok(&[
        "artifact",
        "download-artifact",
        "--all",
        "--pattern",
        "**/*.md",
        "--dest",
        only.to_str().unwrap(),
    ]);
    assert!(only.join("app/docs/readme.md").exists());
    assert!(!only.join("app/app.bin").exists());
    let err = agent.fails(&["artifact", "download-artifact", "missing"]);
    assert!(err.contains("its artifacts: app, notes"), "{err}");

    // resolve from a shell; the archive URL serves a tar that tar reads.
    let url = agent.ok(&["resolve", "$[stages.build.build.pub.artifacts.app]"]);
    let url = url.trim();
    assert!(url.starts_with(&s.url), "{url}");
    let tar = rt().block_on(async {
        s.http()
            .get(url)
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    });
    let x = d.path().join("x");
    std::fs::create_dir(&x).unwrap();
    std::fs::write(d.path().join("a.tar"), &tar).unwrap();
    let st = Command::new("tar")
        .arg("xf")
        .arg(d.path().join("a.tar"))
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        std::fs::read(x.join("app.bin")).unwrap(),
        vec![7u8; 3 << 20]
    );
    let deep = long.strip_prefix("dist/").unwrap();
    assert_eq!(std::fs::read(x.join(deep)).unwrap(), b"deep");
    let v = agent.ok(&["resolve", "stages.build.build.pub.artifacts.notes"]);
    assert_eq!(v.trim(), "https://example.com/notes.txt");
    let err = agent.fails(&["resolve", "$[jobs.build.pub.artifact.app]"]);
    assert!(err.contains("expected `artifacts`"), "{err}");

    // Promotion: by reference, immutable, independent of the artifact.
    agent.ok(&["promote", "app", "--to", "releases/app@1.0.0"]);
    let err = agent.fails(&["promote", "app", "--to", "releases/app@1.0.0"]);
    assert!(
        err.contains("already exists") && err.contains("immutable"),
        "{err}"
    );
    agent.ok(&["promote", "notes", "--to", "releases/notes@1"]);
    let id = s.artifact_id("rel", 1, "app");
    s.delete_artifact(&id);
    let pkg = d.path().join("pkg");
    agent.ok(&[
        "package",
        "download",
        "releases/app@latest",
        pkg.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(pkg.join("app.bin")).unwrap().len(), 3 << 20);
    assert!(pkg.join(deep).exists());
    let list = agent.ok(&["package", "list", "releases"]);
    assert!(
        list.contains("releases/app@1.0.0") && list.contains("releases/notes@1"),
        "{list}"
    );
    let err = agent.fails(&["package", "download", "releases/app@9.9", "x"]);
    assert!(err.contains("releases/app@9.9 not found"), "{err}");
    // The deleted artifact's promotion is refused, as are other runs' names.
    let err = agent.fails(&["promote", &id, "--to", "releases/app@2.0.0"]);
    assert!(err.contains("not found"), "{err}");

    // run-state from another CI, then a remote `satchel run` that pins it.
    agent.ok(&["run-state", "passed"]);
    let p = write_pipeline(
        d.path(),
        "consumer.yml",
        r#"
name: consumer
sources:
  rel: { pipeline: rel, run: lastSuccessfulBuild }
stages:
  - key: s
    jobs:
      - key: j
        steps:
          - download: rel
            artifact: notes
          - run: echo "notes at $[sources.rel.stages.build.build.pub.artifacts.notes]"
"#,
    );
    let o = Command::new(BIN)
        .args(["run", "--server", &s.url, "--token", &s.token, "--work-dir"])
        .arg(d.path().join("w"))
        .arg(&p)
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("[s/j] notes at https://example.com/notes.txt"),
        "{t}"
    );
    assert!(d
        .path()
        .join("w/consumer/1/j/workspace/notes/artifact.json")
        .exists());
}

#[test]
fn showcase_uses_every_kind_of_artifact_and_reference() {
    let d = tmp();
    let data = d.path().join("data");
    passes(&data, &example("pipeline-a.yml"));
    let out = passes(&data, &example("showcase.yml"));
    let p = "[deploy/use-all]";
    for want in [
        format!("{p} deploying registry.example.com/ns/demo:1.0"),
        format!("{p} upstream image registry.cn-hangzhou.aliyuncs.com/ns/demo:1.0"),
        format!("{p} notes at https://example.com/release-notes.txt"),
        format!("{p} From Job1"),
        format!("{p} <h1>hi</h1>"),
        format!("{p} a.css"),
        format!("{p} artifact.json"),
    ] {
        assert!(out.contains(&want), "want {want:?} in:\n{out}");
    }
    let url = out
        .lines()
        .find_map(|l| l.split("default bag of make: ").nth(1))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        url.contains("/api/v1/artifacts/") && url.ends_with("/archive"),
        "{url}"
    );
    // --all skips the job's default artifact and takes every named one.
    let ws = data.join("work/showcase/1/use-all/workspace");
    for f in [
        "job1-artifact/job1.txt",
        "site/index.html",
        "site/css/a.css",
        "my_image/artifact.json",
        "release-notes/artifact.json",
    ] {
        assert!(ws.join(f).is_file(), "{f} missing");
    }
    assert!(!ws.join("default").exists());
    // The pattern kept only the stylesheet.
    let css = data.join("work/showcase/1/use-all/work/css-only/site");
    assert!(css.join("css/a.css").is_file());
    assert!(!css.join("index.html").exists());
    // The summary names the default artifact by its job.
    assert!(out.contains("default (job1)"), "{out}");
}

#[test]
fn retries_may_republish_and_triggering_selects_the_trigger() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    let w = d.path().join("w");
    write(&w, "a.txt", b"attempt 1");
    let first = s.agent(&w, "up", 1, "build").env("SATCHEL_STEP", "pub");
    first.ok(&["artifact", "publish", "a.txt", "--name", "out"]);
    // A retry of the same job (attempt 2) publishes the name again and
    // supersedes attempt 1.
    write(&w, "a.txt", b"attempt 2");
    let retry = first.clone().env("SATCHEL_ATTEMPT", "2");
    retry.ok(&["artifact", "publish", "a.txt", "--name", "out"]);
    let ws = d.path().join("ws");
    retry.ok(&[
        "artifact",
        "download-artifact",
        "out",
        "--dest",
        ws.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(ws.join("out/a.txt")).unwrap(), b"attempt 2");
    // But attempt 1 cannot come back and publish again.
    let err = first.fails(&["artifact", "publish", "a.txt", "--name", "out"]);
    assert!(err.contains("(attempt 2)"), "{err}");
    first.ok(&["run-state", "failed"]);

    // A run of "down" triggered by up#1 takes up#1 with `triggering`, even
    // though up#1 failed; lastSuccessfulBuild finds nothing.
    let p = write_pipeline(
        d.path(),
        "down.yml",
        r#"
name: down
sources:
  trig: { pipeline: up, run: triggering }
stages:
  - key: s
    jobs:
      - key: j
        steps:
          - download: trig
            artifact: out
          - run: cat "$SATCHEL_WORKSPACE/out/a.txt"
"#,
    );
    let remote = |extra: &[&str]| {
        Command::new(BIN)
            .args(["run", "--server", &s.url, "--token", &s.token, "--work-dir"])
            .arg(d.path().join("work"))
            .args(extra)
            .arg(&p)
            .output()
            .unwrap()
    };
    let o = remote(&[]);
    let t = text(&o);
    assert!(!o.status.success());
    assert!(
        t.contains("selector `triggering`") && t.contains("--triggered-by"),
        "{t}"
    );
    let o = remote(&["--triggered-by", "up#1"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("[s/j] attempt 2"), "{t}");
    rt().block_on(async {
        let v: Value = s.get("/pipelines/down/runs/1").await.json().await.unwrap();
        assert_eq!(v["triggered_from"]["pipeline"], "up");
        assert_eq!(v["triggered_from"]["run"], 1);
    });
}

#[test]
fn pipeline_endpoints_reject_bad_input() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    let w = d.path().join("w");
    let agent = s.agent(&w, "p", 1, "j");
    std::fs::create_dir_all(&w).unwrap();
    agent.ok(&[
        "artifact",
        "publish-image",
        "example.com/app:1",
        "--name",
        "img",
    ]);
    rt().block_on(async {
        let post = |path: &str, body: Value| {
            let r = s
                .http()
                .post(s.api(path))
                .bearer_auth(&s.token)
                .json(&body);
            async move { r.send().await.unwrap() }
        };
        let cases = [
            ("/pipelines/p/runs", serde_json::json!({"sources": {"x": {"pipeline": "p", "run": "bogus"}}}), 400),
            ("/pipelines/p/runs", serde_json::json!({"sources": {"x": {"pipeline": "nope", "run": "latest"}}}), 404),
            ("/pipelines/bad%20key/runs", serde_json::json!({}), 400),
            ("/artifacts", serde_json::json!({"context": {"pipeline": "p", "run": 1, "job": "j"}, "name": "x", "image": "bad image"}), 400),
            ("/artifacts", serde_json::json!({"context": {"pipeline": "p", "run": 1, "job": "j"}, "name": "x"}), 400),
            ("/artifacts", serde_json::json!({"context": {"pipeline": "p", "run": 1, "job": "j"}, "name": "x", "link": {"url": "javascript:1"}}), 400),
            ("/artifacts", serde_json::json!({"context": {"pipeline": "p", "run": 1, "job": "j"}, "name": "a/b", "image": "x:1"}), 400),
            ("/resolve", serde_json::json!({"context": {"pipeline": "p", "run": 1}, "expr": "jobs.j"}), 400),
            ("/resolve", serde_json::json!({"context": {"pipeline": "p", "run": 9}, "expr": "jobs.j.s.artifacts.x"}), 404),
            ("/packages", serde_json::json!({"artifact_id": "0".repeat(32), "repository": "r", "package": "p", "version": "latest"}), 400),
            ("/packages", serde_json::json!({"artifact_id": "0".repeat(32), "repository": "r", "package": "p", "version": "1"}), 404),
        ];
        for (path, body, status) in cases {
            let r = post(path, body.clone()).await;
            assert_eq!(r.status().as_u16(), status, "{path} {body}");
            let v: Value = r.json().await.unwrap();
            assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        let r = s
            .http()
            .put(s.api("/pipelines/p/runs/1/state"))
            .bearer_auth(&s.token)
            .json(&serde_json::json!({"state": "done"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        // An image artifact has no archive.
        let v: Value = s.get("/pipelines/p/runs/1/artifacts").await.json().await.unwrap();
        let id = v["artifacts"][0]["id"].as_str().unwrap().to_string();
        let r = s.get(&format!("/artifacts/{id}/archive")).await;
        assert_eq!(r.status(), 400);
        // Nothing was written by the rejected calls.
        let v: Value = s.get("/pipelines/p/runs").await.json().await.unwrap();
        assert_eq!(v["runs"].as_array().unwrap().len(), 1);
        let v: Value = s.get("/pipelines/p/runs/1/artifacts").await.json().await.unwrap();
        assert_eq!(v["artifacts"].as_array().unwrap().len(), 1);
    });
}

/// A `$[…]` value in a `run:` script is data, never shell code: a link
/// URL full of shell syntax comes out byte for byte, bare, in double
/// quotes and in single quotes, and runs nothing.
#[test]
fn reference_values_are_not_shell_code() {
    let d = tmp();
    let data = d.path().join("data");
    let url = r#"https://example.com/a';touch${IFS}pwned1;'$(touch${IFS}pwned2)"q";touch${IFS}pwned3`touch${IFS}pwned4`"#;
    let r = "$[stages.build.job1.l.artifacts.nasty]";
    let p = write_pipeline(
        d.path(),
        "p.yml",
        &format!(
            r#"
name: inject
stages:
  - key: build
    jobs:
      - key: job1
        steps:
          - key: l
            link: '{}'
            artifact: nasty
  - key: use
    jobs:
      - key: u
        steps:
          - run: |
              printf '%s\n' {r} > out1
              printf '%s\n' "{r}" > out2
              printf '%s\n' '{r}' > out3
"#,
            url.replace('\'', "''")
        ),
    );
    let out = passes(&data, &p);
    let work = data.join("work/inject/1/u/work");
    for f in ["out1", "out2", "out3"] {
        let got = std::fs::read_to_string(work.join(f)).unwrap();
        assert_eq!(got, format!("{url}\n"), "{f}:\n{out}");
    }
    let mut names: Vec<String> = std::fs::read_dir(&work)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // The checkout (the pipeline file) and the outputs; no `pwned*`.
    assert_eq!(names, ["out1", "out2", "out3", "p.yml"], "{out}");
}

/// Processes of process group `pgid` that are alive (not zombies).
fn live_in_group(pgid: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp …; comm may hold spaces.
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2 && f[2] == pgid && f[0] != "Z" {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

fn wait_for_no_group(pgid: &str, what: &str) {
    for _ in 0..200 {
        if live_in_group(pgid).is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let left = live_in_group(pgid);
    Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status()
        .ok();
    panic!("{what}: processes {left:?} of group {pgid} still run");
}

/// A step that leaves a background process holding its output does not
/// hang the run: the step's process group goes when its script exits.
#[test]
fn a_background_process_does_not_hang_the_run() {
    let d = tmp();
    let data = d.path().join("data");
    let p = write_pipeline(
        d.path(),
        "p.yml",
        "name: bg\nstages:\n  - key: s\n    jobs:\n      - key: j\n        steps:\n          - run: echo $$ > pgid; sleep 1000 &\n          - run: echo next step\n",
    );
    let mut child = Command::new(BIN)
        .arg("run")
        .arg("--data-dir")
        .arg(&data)
        .arg(&p)
        .env_remove("SATCHEL_URL")
        .env_remove("SATCHEL_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        use std::io::Read;
        let mut all = String::new();
        let mut r = stdout;
        r.read_to_string(&mut all).ok();
        all
    });
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            child.kill().ok();
            let pgid = std::fs::read_to_string(data.join("work/bg/1/j/work/pgid")).unwrap();
            Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", pgid.trim())])
                .status()
                .ok();
            panic!("the run hangs on a step's background process");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = lines.join().unwrap();
    assert!(status.success(), "{out}");
    assert!(out.contains("next step"), "{out}");
    let pgid = std::fs::read_to_string(data.join("work/bg/1/j/work/pgid")).unwrap();
    wait_for_no_group(pgid.trim(), "the background sleep must be stopped");
}

/// A second Ctrl-C quits at once, and kills the steps first, even those
/// that ignore SIGTERM.
#[test]
fn a_second_ctrl_c_quits_without_leaving_steps_behind() {
    let d = tmp();
    let data = d.path().join("data");
    let p = write_pipeline(
        d.path(),
        "p.yml",
        "name: stubborn\nstages:\n  - key: s\n    jobs:\n      - key: j\n        steps:\n          - run: trap '' TERM INT; echo $$ > pgid; sleep 1000\n",
    );
    let mut child = Command::new(BIN)
        .arg("run")
        .arg("--data-dir")
        .arg(&data)
        .arg(&p)
        .env_remove("SATCHEL_URL")
        .env_remove("SATCHEL_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pgid_file = data.join("work/stubborn/1/j/work/pgid");
    wait_until(
        || std::fs::read_to_string(&pgid_file).is_ok_and(|s| s.ends_with('\n')),
        "the step to start",
    );
    let pgid = std::fs::read_to_string(&pgid_file)
        .unwrap()
        .trim()
        .to_string();
    let pid = child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    wait_for_no_group(&pgid, "the step must not outlive `satchel run`");
}

/// A job directory is fresh even when the run number comes again (another
/// data directory, the same work directory), and a `PATH` set in `env:` is
/// kept (the `satchel` binary's directory goes first).
/// A GitHub Actions workflow as written: a job output (from a step's
/// `GITHUB_OUTPUT`, with `GITHUB_ENV` for the next step) reaches the jobs
/// that need it, a 2×2 matrix uploads four artifacts (`!` leaves the `.map` files out, paths relative to `dist/`),
/// a job that needs every leg downloads them by `pattern` with
/// `merge-multiple` and merges them into one artifact with
/// `upload-artifact/merge` (deleting the four), and an `if: always()` job
/// downloads two by name.
#[test]
fn github_workflow_matrix_artifacts_by_pattern_and_merge() {
    let d = tmp();
    let data = d.path().join("data");
    let out = passes(&data, &example("github/ci.yml"));
    for want in [
        "[workflow/package] downloaded: linux-amd64.txt linux-arm64.txt windows-amd64.txt windows-arm64.txt",
        "[workflow/version] channel stable, tag v1.1",
        "[workflow/package] satchel-demo v1.1 for linux/amd64",
        "[workflow/report] bundle holds linux-amd64.txt linux-arm64.txt",
        "[workflow/report] report done for CI",
        "[workflow/report] merged holds ./bin-linux-amd64/linux-amd64.txt ./bin-linux-arm64/linux-arm64.txt ./bin-windows-amd64/windows-amd64.txt ./bin-windows-arm64/windows-arm64.txt",
        "into \"all-platforms\": 4 files, 140 B, by reference (no content sent)\n",
        "warning: kept merged artifact \"bin-linux-amd64\": token",
        "run #1 of pipeline \"ci\": PASSED",
    ] {
        assert!(out.contains(want), "{want}:\n{out}");
    }
    // `delete-merged`: each job's token deletes only its own job's
    // artifacts, so the four stay (with a warning each).
    let left = {
        let s = Server::start(&data);
        s.agent(d.path(), "ci", 1, "check")
            .ok(&["artifact", "search", "--json", "**"])
    };
    let names: std::collections::BTreeSet<String> =
        serde_json::from_str::<serde_json::Value>(&left)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["artifact_name"].as_str().unwrap().to_string())
            .collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "all-platforms",
            "bin-linux-amd64",
            "bin-linux-arm64",
            "bin-windows-amd64",
            "bin-windows-arm64",
            "linux-bundle"
        ],
        "{left}"
    );
    let work = data.join("work/ci/1");
    let all = work.join("package/work/all");
    let mut got: Vec<String> = std::fs::read_dir(&all)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "linux-amd64.txt",
            "linux-arm64.txt",
            "windows-amd64.txt",
            "windows-arm64.txt"
        ],
        "four legs' files merged, no .map"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("report/work/bundle/linux-arm64.txt")).unwrap(),
        "satchel-demo v1.1 for linux/arm64\n"
    );
    // A second run: artifact names are per run, and the run number moves.
    let again = passes(&data, &example("github/ci.yml"));
    assert!(
        again.contains("satchel-demo v1.2 for linux/amd64"),
        "{again}"
    );
}

/// upload-artifact's `overwrite: true` replaces the run's artifact of the
/// name (swapped in whole, see the DB story's `replacing_swaps_on_finish`);
/// without it a second upload of the name is refused; and a job's token
/// may not replace another job's artifact.
#[test]
fn github_overwrite_replaces_an_artifact() {
    let d = tmp();
    let data = d.path().join("data");
    let flow = |overwrite: bool, other_job: bool| {
        let second = if other_job {
            "  c:\n    needs: a\n    steps:\n"
        } else {
            ""
        };
        format!(
            "on: push\njobs:\n  a:\n    steps:\n      - run: echo v1 > report.txt\n      - uses: actions/upload-artifact@v4\n        with: {{ name: report, path: report.txt }}\n{second}      - run: echo v2 > report.txt\n      - uses: actions/upload-artifact@v4\n        with: {{ name: report, path: report.txt, overwrite: {overwrite} }}\n  b:\n    needs: [a{}]\n    steps:\n      - uses: actions/download-artifact@v4\n        with: {{ name: report, path: got }}\n      - run: echo \"report says $(cat got/report.txt)\"\n",
            if other_job { ", c" } else { "" }
        )
    };
    let ok = passes(
        &data,
        &write_pipeline(d.path(), "overwrite.yml", &flow(true, false)),
    );
    assert!(ok.contains("[workflow/b] report says v2"), "{ok}");
    let t = fails(
        &data,
        &write_pipeline(d.path(), "twice.yml", &flow(false, false)),
    );
    assert!(
        t.contains("already exists in run 1 of pipeline \"twice\""),
        "{t}"
    );
    let t = fails(
        &data,
        &write_pipeline(d.path(), "other.yml", &flow(true, true)),
    );
    assert!(
        t.contains("acts as job \"c\" attempt 1 only, not as job \"a\""),
        "{t}"
    );
}

/// `satchel artifact merge` (upload-artifact/merge): a later artifact's
/// file wins at a shared path, hidden files stay out unless asked, the
/// job's own merged artifacts are deleted with `--delete-merged`, and a
/// pattern that matches nothing is an error.
#[test]
fn merge_combines_artifacts_by_reference() {
    let d = tmp();
    let data = d.path().join("data");
    let script = "mkdir -p a b && echo 1 > a/x && echo a > a/only-a && echo 2 > b/x && echo h > b/.hidden \
        && satchel artifact publish a --name part-a && satchel artifact publish b --name part-b \
        && satchel artifact merge --name whole --pattern 'part-*' --delete-merged \
        && satchel artifact download-artifact whole --dest got && echo \"x says $(cat got/whole/x)\" \
        && echo \"whole holds $(ls -A got/whole | tr '\\n' ' ')\" \
        && ! satchel artifact download-artifact part-a --dest no && echo parts gone \
        && ! satchel artifact merge --name none --pattern 'nope-*'";
    let p = write_pipeline(d.path(), "merge.yml", &one_step("merging", "m", script));
    let out = passes(&data, &p);
    for want in [
        "merged 2 artifacts (part-a, part-b) into \"whole\": 2 files, 4 B, by reference (no content sent); deleted part-a, part-b",
        "x says 2",
        "whole holds only-a x ",
        "parts gone",
        "no artifact of run 1 of pipeline \"merging\" matches \"nope-*\"",
    ] {
        assert!(out.contains(want), "{want}:\n{out}");
    }
}

/// `--build ID` finds a run by the CI's build id in another pipeline (the
/// id `satchel run --build-id` recorded); an id two pipelines share needs
/// `--pipeline`, and an unknown one says so.
#[test]
fn build_ids_name_runs_across_pipelines() {
    let d = tmp();
    let data = d.path().join("data");
    let up = write_pipeline(
        d.path(),
        "up.yml",
        "name: upstream\nstages:\n  - key: s\n    jobs:\n      - key: a\n        checkout: false\n        steps:\n          - run: mkdir -p out && echo pic > out/a.jpg && echo \"build=$SATCHEL_BUILD_ID\"\n            artifact_paths: [\"out/*.jpg\"]\n",
    );
    let o = run(&data, &up, &["--build-id", "bk-0190-aaaa"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("[s/a] build=bk-0190-aaaa"),
        "{}",
        text(&o)
    );
    let down = write_pipeline(
        d.path(),
        "down.yml",
        &one_step(
            "downstream",
            "b",
            "satchel artifact download 'out/*.jpg' got --build bk-0190-aaaa && cat got/out/a.jpg",
        ),
    );
    let t = passes(&data, &down);
    assert!(t.contains("[s/b] pic"), "{t}");
    // The runner's own runs get a new UUID each.
    let runs = run_state(&data, "downstream", 1);
    let id = runs["build_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "{id}");
    // Another pipeline's run with the same id: ambiguous without --pipeline.
    let other = write_pipeline(d.path(), "other.yml", &one_step("other", "c", "'true'"));
    let o = run(&data, &other, &["--build-id", "bk-0190-aaaa"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = fails(&data, &down);
    assert!(
        t.contains("names runs of several pipelines (other#1, upstream#1): pass --pipeline"),
        "{t}"
    );
    let unknown = write_pipeline(
        d.path(),
        "unknown.yml",
        &one_step(
            "unknown",
            "b",
            "satchel artifact search '*' --build no-such-build",
        ),
    );
    let t = fails(&data, &unknown);
    assert!(t.contains("no run has build id \"no-such-build\""), "{t}");
    // A numeric build id (GITHUB_RUN_ID, BUILD_BUILDID) that is no run
    // number of the asking pipeline is looked up as a build id.
    let o = run(&data, &up, &["--build-id", "987654321"]);
    assert!(o.status.success(), "{}", text(&o));
    let numeric = write_pipeline(
        d.path(),
        "numeric.yml",
        &one_step(
            "numeric",
            "b",
            "satchel artifact search '**' --build 987654321 --format 'found %p in %j'",
        ),
    );
    let t = passes(&data, &numeric);
    assert!(t.contains("[s/b] found out/a.jpg in a"), "{t}");
    // A number that is both a run of the asking pipeline and a build id.
    let o = run(&data, &up, &["--build-id", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let both = write_pipeline(
        d.path(),
        "both.yml",
        &one_step("both", "b", "satchel artifact search '**' --build 1"),
    );
    let t = fails(&data, &both);
    assert!(
        t.contains("--build 1 is both run 1 of pipeline \"both\" and the build id of upstream#3: pass --run 1 for the run number, or --build id:1 for the build"),
        "{t}"
    );
    let chosen = write_pipeline(
        d.path(),
        "chosen.yml",
        &one_step(
            "chosen",
            "b",
            "satchel artifact search '**' --build id:1 --format 'found %p'",
        ),
    );
    let t = passes(&data, &chosen);
    assert!(t.contains("[s/b] found out/a.jpg"), "{t}");
}

/// A Buildkite pipeline as written, through the `buildkite-agent` stand-in:
/// the artifact documentation's commands verbatim (one file, `'logs/**'`
/// to a directory, `--step`), `artifact_paths`, `parallelism: 3`, a
/// `retry.automatic` job whose first attempt fails (its file hidden unless
/// `--include-retried-jobs`), and a `trigger` step whose pipeline
/// downloads from the triggering build by `--build
/// $BUILDKITE_TRIGGERED_FROM_BUILD_ID`.
#[test]
fn buildkite_pipeline_with_the_agents_own_commands_and_a_trigger() {
    let d = tmp();
    let data = d.path().join("data");
    let out = passes(&data, &example("buildkite/app.yml"));
    for want in [
        "[stage-2/fetch] tarball: satchel-demo build 1",
        "[stage-2/fetch] log: all green",
        "[stage-2/fetch] zip: zip of satchel-demo",
        "[stage-2/fetch] shards: shard 0 of 3 shard 1 of 3 shard 2 of 3",
        "[stage-2/fetch] attempts seen: attempt-1.txt \n",
        "[stage-2/fetch] with retried jobs: attempt-0.txt attempt-1.txt",
        "attempt 1 failed",
        "run #1 of pipeline \"deploy\": PASSED",
        "./dog.jpg ./photos/cat.jpg",
    ] {
        assert!(out.contains(want), "{want:?}:\n{out}");
    }
    let zip_sha = format!("{:x}", sha2::Sha256::digest(b"zip of satchel-demo\n"));
    assert!(out.contains(&format!("zip sha256: {zip_sha}")), "{out}");
    let app = run_state(&data, "app", 1);
    let deploy = run_state(&data, "deploy", 1);
    assert_eq!(deploy["triggered_from"]["pipeline"], "app", "{deploy}");
    let build = app["build_id"].as_str().unwrap();
    assert!(
        out.contains(&format!("images from build {build}: ")),
        "the triggering build's id: {out}"
    );
}

/// The Flow document's YAML, verbatim (examples/seeds/flow-*.yml), with
/// `--skip-unsupported` for its cloud-only steps: the cross-job image
/// reference reaches the deploy step's inputs, the cross-stage files
/// artifact (named with `${PIPELINE_ID}`) reaches the VM deploy as its
/// URL, and pipeline B takes pipeline A's image through a `flowPipeline`
/// source, once A has a passed run. The build's `mvn` is a stand-in on
/// `PATH` that writes `target/`.
#[test]
fn flow_seed_yaml_runs_verbatim() {
    let d = tmp();
    let data = d.path().join("data");
    let bin = d.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(
        bin.join("mvn"),
        "#!/bin/sh\necho \"mvn $*\"\nmkdir -p target && echo jar > target/app.jar\n",
    )
    .unwrap();
    sh(&bin, "chmod +x mvn");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let flow = |file: &str, extra: &[&str]| -> String {
        let o = Command::new(BIN)
            .arg("run")
            .arg("--data-dir")
            .arg(&data)
            .arg("--skip-unsupported")
            .args(extra)
            .arg(example(&format!("seeds/{file}")))
            .env("PATH", &path)
            .env_remove("SATCHEL_URL")
            .env_remove("SATCHEL_TOKEN")
            .env_remove("SATCHEL_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let t = text(&o);
        assert!(o.status.success(), "{file}:\n{t}");
        t
    };
    let image = "registry.cn-hangzhou.aliyuncs.com/ns/demo:1.0";
    let t = flow("flow-cross-job-image.yml", &[]);
    assert!(
        t.contains(&format!(
            "[my_stage/deploy_job]   variables[0].value={image}"
        )),
        "{t}"
    );
    assert!(
        t.contains("skipped step DockerLogin (not run locally)"),
        "{t}"
    );

    let t = flow("flow-cross-stage-files.yml", &[]);
    assert!(
        t.contains("[build_stage/build_job] mvn -B clean package"),
        "{t}"
    );
    let line = t
        .lines()
        .find(|l| l.contains("[deploy_stage/deploy_job]   artifact="))
        .unwrap_or_else(|| panic!("the deploy's artifact input:\n{t}"));
    let url = line.split("artifact=").nth(1).unwrap();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/archive"),
        "{url}"
    );
    assert!(
        t.contains("Artifacts_flow-cross-stage-files  files  1"),
        "the artifact named with ${{PIPELINE_ID}}, holding target/: {t}"
    );

    // B before A has run: its source cannot be pinned.
    let o = run(
        &data,
        &example("seeds/flow-pipeline-b.yml"),
        &["--skip-unsupported"],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("n86bmctmphs84icj"), "{}", text(&o));
    flow("flow-pipeline-a.yml", &["--pipeline", "n86bmctmphs84icj"]);
    let t = flow("flow-pipeline-b.yml", &[]);
    assert!(
        t.contains("source pipeline_a: run #1 of pipeline \"n86bmctmphs84icj\""),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "[kubectl_apply_stage/deploy_job]   variables[0].value={image}"
        )),
        "{t}"
    );
}

/// `--reuse-run N --only JOB` runs one job again inside run N, against
/// the artifacts the others left there (reported as reused); `--from
/// STAGE` runs that stage on, and what it publishes supersedes the
/// earlier attempt's. No new run is made.
#[test]
fn part_of_a_run_runs_again_against_its_artifacts() {
    let d = tmp();
    let data = d.path().join("data");
    let p = write_pipeline(
        d.path(),
        "p.yml",
        r#"name: partial
stages:
  - key: build
    jobs:
      - key: make
        checkout: false
        steps:
          - run: echo "made by attempt $SATCHEL_ATTEMPT" > x.txt
          - publish: x.txt
            artifact: x
  - key: deploy
    jobs:
      - key: ship
        checkout: false
        steps:
          - download: current
            artifact: x
          - run: echo "shipping $(cat "$SATCHEL_WORKSPACE/x/x.txt") as attempt $SATCHEL_ATTEMPT"
"#,
    );
    let t = passes(&data, &p);
    assert!(
        t.contains("[deploy/ship] shipping made by attempt 1 as attempt 1"),
        "{t}"
    );
    let o = run(&data, &p, &["--reuse-run", "1", "--only", "ship"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("[deploy/ship] shipping made by attempt 1 as attempt 2"),
        "{t}"
    );
    assert!(t.contains("make  reused  0.0s  not run again"), "{t}");
    let o = run(&data, &p, &["--from", "build"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("[deploy/ship] shipping made by attempt 2 as attempt 2"),
        "{t}"
    );
    assert!(t.contains("run #1 of pipeline \"partial\": PASSED"), "{t}");
    assert!(
        run_state(&data, "partial", 2).get("number").is_none(),
        "no second run"
    );
    let o = run(&data, &p, &["--reuse-run", "1", "--only", "nope"]);
    assert!(
        text(&o).contains("--only \"nope\": the pipeline has no such job (jobs: make, ship)"),
        "{}",
        text(&o)
    );
}

/// A source may name a promoted package by version, exactly or as a
/// requirement (`^1.4` picks the highest 1.x at least 1.4), in Satchel's
/// format and in Flow's: `$[sources.<id>.artifacts.<name>]` is its
/// archive's URL, and `download: <id>` fetches its files.
#[test]
fn package_sources_pick_a_promoted_version() {
    let d = tmp();
    let data = d.path().join("data");
    let release = |version: &str| {
        let p = write_pipeline(
            d.path(),
            "rel.yml",
            &format!(
                "name: rel\nstages:\n  - key: s\n    jobs:\n      - key: build\n        checkout: false\n        steps:\n          - run: echo {version} > version.txt\n          - publish: version.txt\n            artifact: app\n          - run: satchel promote app --to releases/app@{version}\n"
            ),
        );
        passes(&data, &p);
    };
    for v in ["1.3.0", "1.4.0", "1.4.2", "2.0.0"] {
        release(v);
    }
    let p = write_pipeline(
        d.path(),
        "prod.yml",
        r#"name: prod
sources:
  prod: { package: releases/app, version: "^1.4" }
stages:
  - key: s
    jobs:
      - key: deploy
        checkout: false
        steps:
          - download: prod
          - run: |
              echo "deploying $(cat "$SATCHEL_WORKSPACE/app/version.txt")"
              echo "from $[sources.prod.artifacts.app]"
"#,
    );
    let t = passes(&data, &p);
    assert!(
        t.contains("source prod: package releases/app@1.4.2 (^1.4)"),
        "{t}"
    );
    assert!(t.contains("[s/deploy] deploying 1.4.2"), "{t}");
    assert!(
        t.lines()
            .any(|l| l.contains("[s/deploy] from http://127.0.0.1:")
                && l.ends_with("/api/v1/packages/releases/app/1.4.2/archive")),
        "{t}"
    );
    let flow = write_pipeline(
        d.path(),
        "flow.yml",
        r#"sources:
  release:
    type: packages
    repository: releases
    package: app
    version: "~1.3"
stages:
  deploy_stage:
    jobs:
      deploy_job:
        steps:
          show:
            step: Command
            with:
              run: echo "package at $[sources.release.artifacts.default]"
"#,
    );
    let t = passes(&data, &flow);
    assert!(
        t.contains("source release: package releases/app@1.3.0 (~1.3)"),
        "{t}"
    );
    let none = write_pipeline(
        d.path(),
        "none.yml",
        "name: none\nsources:\n  p: { package: releases/app, version: \"^3\" }\nstages:\n  - key: s\n    jobs:\n      - key: j\n        steps:\n          - run: 'true'\n",
    );
    let o = run(&data, &none, &[]);
    assert!(
        text(&o).contains("no version of package releases/app meets \"^3\" (it has"),
        "{}",
        text(&o)
    );
}

/// A partial run passes the run again only when every job it reuses had
/// passed: the run records which jobs did not.
#[test]
fn a_partial_run_passes_the_run_only_when_what_it_reuses_passed() {
    let d = tmp();
    let data = d.path().join("data");
    let (make_ok, ship_ok) = (d.path().join("make-ok"), d.path().join("ship-ok"));
    let p = write_pipeline(
        d.path(),
        "p.yml",
        &format!(
            "name: heal\nstages:\n  - key: s\n    jobs:\n      - key: make\n        checkout: false\n        steps:\n          - run: test -e {}\n      - key: ship\n        checkout: false\n        steps:\n          - run: test -e {}\n",
            make_ok.display(),
            ship_ok.display()
        ),
    );
    let state = || run_state(&data, "heal", 1);
    std::fs::write(&make_ok, "").unwrap();
    fails(&data, &p);
    assert_eq!(state()["failed_jobs"], serde_json::json!(["ship"]));
    // The failed job, run again and passing: the run passes.
    std::fs::write(&ship_ok, "").unwrap();
    let t = text(&run(&data, &p, &["--reuse-run", "1", "--only", "ship"]));
    assert_eq!(state()["state"], "passed", "{t}");
    // Failing again, then passing again: it heals both ways.
    std::fs::remove_file(&ship_ok).unwrap();
    run(&data, &p, &["--reuse-run", "1", "--only", "ship"]);
    assert_eq!(state()["state"], "failed");
    std::fs::write(&ship_ok, "").unwrap();
    run(&data, &p, &["--reuse-run", "1", "--only", "ship"]);
    assert_eq!(state()["state"], "passed");
    // A job that failed and is reused keeps the run failed.
    std::fs::remove_file(&make_ok).unwrap();
    run(&data, &p, &["--reuse-run", "1", "--only", "make"]);
    std::fs::write(&make_ok, "").unwrap();
    let t = text(&run(&data, &p, &["--reuse-run", "1", "--only", "ship"]));
    assert!(
        t.contains("run #1 stays failed: make did not pass and was not run again"),
        "{t}"
    );
    assert_eq!(state()["state"], "failed");
}

/// A pipeline `name` of one stage `s` with one job `job` (no checkout)
/// whose one step runs `script`.
fn one_step(name: &str, job: &str, script: &str) -> String {
    format!(
        "name: {name}\nstages:\n  - key: s\n    jobs:\n      - key: {job}\n        checkout: false\n        steps:\n          - run: {script}\n"
    )
}

/// Runs `script` in `dir` with a fixed git identity.
fn sh(dir: &Path, script: &str) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .status()
        .unwrap();
    assert!(st.success(), "{script}");
}

/// Jobs start with the repository checked out at HEAD, each in its own
/// copy: one job damaging its copy changes neither another job's nor the
/// user's tree; `checkout: false` starts empty; `--include-dirty` adds
/// the uncommitted change.
#[test]
fn jobs_start_with_their_own_checkout_of_the_repository() {
    let d = tmp();
    let repo = d.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    sh(
        &repo,
        "git init -q . && mkdir -p ci src && echo committed > src/app.txt \
         && printf 'data/\nwork/\n' > .gitignore && git add -A && git commit -qm first \
         && echo uncommitted > src/app.txt",
    );
    let p = write_pipeline(
        &repo.join("ci"),
        "p.yml",
        r#"name: co
stages:
  - key: one
    jobs:
      - key: wrecker
        steps:
          - run: |
              echo "app=$(cat src/app.txt) head=$(git rev-parse --short HEAD)"
              echo more >> src/app.txt
              rm -rf ci .git
      - key: empty
        checkout: false
        steps:
          - run: echo "entries=$(ls -A | wc -l)"
  - key: two
    jobs:
      - key: after
        steps:
          - run: echo "app2=$(cat src/app.txt) status=$(git status --porcelain | wc -l)"
"#,
    );
    sh(
        &repo,
        "git add ci && git commit -qm pipeline && echo uncommitted > src/app.txt",
    );
    let head = String::from_utf8(
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(&repo)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let data = repo.join("data");
    let work = repo.join("work");
    let args = ["--work-dir", work.to_str().unwrap()];
    let o = run(&data, &p, &args);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("uncommitted changes left out"), "{t}");
    assert!(
        t.contains(&format!("[one/wrecker] app=committed head={}", head.trim())),
        "{t}"
    );
    assert!(t.contains("[one/empty] entries=0"), "{t}");
    assert!(t.contains("[two/after] app2=committed status=0"), "{t}");
    assert_eq!(
        std::fs::read_to_string(repo.join("src/app.txt")).unwrap(),
        "uncommitted\n",
        "the user's tree is untouched"
    );
    assert!(repo.join(".git").is_dir() && repo.join("ci/p.yml").is_file());
    assert!(
        !repo.join("work/.sources").exists()
            || std::fs::read_dir(repo.join("work/.sources"))
                .unwrap()
                .next()
                .is_none(),
        "the run's snapshot is removed at its end"
    );

    let mut dirty = args.to_vec();
    dirty.push("--include-dirty");
    let o = run(&data, &p, &dirty);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("[one/wrecker] app=uncommitted"), "{t}");
    assert!(t.contains("(with uncommitted changes)"), "{t}");
}

/// After a step fails, only steps with `when: always` or `on_failure`
/// run; the job still fails, and the summary repeats the failed step's
/// lines, not those of the steps after it. A step with `allow_failure`
/// fails nothing.
#[test]
fn steps_after_a_failure_run_only_when_they_ask_to() {
    let d = tmp();
    let p = write_pipeline(
        d.path(),
        "p.yml",
        r#"name: steps-when
stages:
  - key: s
    jobs:
      - key: j
        checkout: false
        steps:
          - run: echo first-ran
          - key: broken
            run: echo broken-output; exit 3
          - run: echo not-this-one
          - run: echo cleanup-ran
            when: always
          - run: echo on-failure-ran
            when: on_failure
      - key: fine
        checkout: false
        steps:
          - run: echo fine-ran
          - key: flaky
            run: exit 4
            allow_failure: true
          - run: echo not-on-success
            when: on_failure
          - run: echo always-on-success
            when: always
"#,
    );
    let t = fails(&d.path().join("data"), &p);
    for want in [
        "[s/j] first-ran",
        "[s/j] cleanup-ran",
        "[s/j] on-failure-ran",
        "[s/fine] always-on-success",
    ] {
        assert!(t.contains(want), "{want}:\n{t}");
    }
    assert!(
        !t.contains("] not-this-one") && !t.contains("] not-on-success"),
        "{t}"
    );
    assert!(
        t.contains("[s/fine] ✘ step flaky failed; its failure is allowed"),
        "{t}"
    );
    assert!(
        t.contains("fine  passed"),
        "an allowed failure fails no job: {t}"
    );
    let summary = &t[t
        .rfind("step broken failed")
        .expect("the failure in the summary")..];
    assert!(summary.contains("broken-output"), "{t}");
    assert!(
        !summary.contains("cleanup-ran"),
        "the failed step's tail: {t}"
    );
}

#[test]
fn job_dirs_are_fresh_and_env_path_is_kept() {
    let d = tmp();
    let work = d.path().join("work");
    let p = write_pipeline(
        d.path(),
        "p.yml",
        "name: fresh\nenv:\n  PATH: /custom/bin:/usr/bin:/bin\nstages:\n  - key: s\n    jobs:\n      - key: j\n        steps:\n          - run: test ! -e leftover && touch leftover && echo \"path=$PATH\"\n",
    );
    for data in ["data1", "data2"] {
        let o = run(
            &d.path().join(data),
            &p,
            &["--work-dir", work.to_str().unwrap()],
        );
        let t = text(&o);
        assert!(o.status.success(), "{data}: a leftover was seen?\n{t}");
        let line = t.lines().find(|l| l.contains("] path=")).unwrap();
        assert!(line.contains(":/custom/bin:/usr/bin:/bin"), "{t}");
    }
}
