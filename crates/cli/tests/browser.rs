//! End-to-end in a real browser: Debian's headless Chromium, driven by
//! playwright-core (tests/browser/ui.mjs), through the web UI of the real
//! server. This file uploads what the browser looks at and checks the zip
//! it downloaded. Screenshots go to `$SATCHEL_SCREENSHOTS` when set (docs/ui
//! is refreshed with `SATCHEL_SCREENSHOTS=$PWD/docs/ui cargo test -p
//! satchel-cli --test browser`), else to a temporary directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser")
}

/// The report's probe: everything an uploaded page might try against the
/// UI, each result written into `#probe` as JSON once all have settled.
const PROBE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Coverage</title><link rel="stylesheet" href="style.css"></head>
<body><h1>Coverage 87%</h1><p><a href="sub/page.html">a deeper page</a></p><pre id="probe"></pre>
<script>
const out = { origin: String(self.origin) };
const blocked = (e) => 'blocked: ' + (e && e.name || e);
try { out.cookie = 'read: ' + document.cookie; } catch (e) { out.cookie = blocked(e); }
try { localStorage.setItem('x', '1'); out.storage = 'read'; } catch (e) { out.storage = blocked(e); }
const read = (url) => fetch(url, { credentials: 'include' })
  .then((r) => r.text()).then((t) => 'read: ' + t.slice(0, 80), blocked);
const frame = new Promise((done) => {
  const f = document.createElement('iframe');
  f.src = '/';
  f.onload = () => { try { done('read: ' + f.contentDocument.body.innerHTML.slice(0, 80)); } catch (e) { done(blocked(e)); } };
  document.body.appendChild(f);
}).then((v) => v === 'read: ' ? 'blocked: empty' : v);
Promise.all([read('/api/v1/pipelines'), read('/'), frame]).then(([api, ui, fr]) => {
  out.api = api; out.ui = ui; out.frame = fr;
  const p = document.getElementById('probe');
  p.textContent = JSON.stringify(out);
  p.dataset.done = '1';
});
</script></body></html>"#;

#[test]
fn the_web_ui_works_in_headless_chromium() {
    let dir = browser_dir();
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci` in tests/browser (scripts/test.sh does)"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is not installed (scripts/test.sh installs it)"
    );
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(&d.path().join("data"));
    for (run, state) in [(1, "passed"), (2, "failed")] {
        let src = d.path().join(format!("src{run}"));
        write(&src, "cov/index.html", PROBE.as_bytes());
        write(&src, "cov/style.css", b"h1{color:#c00}");
        write(&src, "cov/sub/page.html", b"<p>deeper</p>");
        write(&src, "cov/notes.txt", format!("run {run}").as_bytes());
        if run == 1 {
            write(&src, "cov/gone.txt", b"only in run 1");
        } else {
            write(&src, "cov/new.txt", b"only in run 2");
            write(&src, "cov/style.css", b"h1{color:#c00}\n");
        }
        let log: String = (1..=2500).map(|i| format!("step {i} of 2500\n")).collect();
        write(&src, "cov/build.log", log.as_bytes());
        let job = s.agent(&src, "web", run, "test");
        job.ok(&["artifact", "publish", "cov", "--name", "coverage"]);
        if run == 1 {
            job.ok(&[
                "artifact",
                "publish-image",
                "registry.example/web:1.0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "--name",
                "image",
            ]);
            job.ok(&["promote", "coverage", "--to", "reports/coverage@1.0.0"]);
            job.ok(&["promote", "image", "--to", "images/web@1.0.0"]);
        }
        job.ok(&["run-state", state]);
    }
    let shots = match std::env::var_os("SATCHEL_SCREENSHOTS") {
        Some(p) => PathBuf::from(p),
        None => d.path().join("shots"),
    };
    std::fs::create_dir_all(&shots).unwrap();
    let downloads = d.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let out = Command::new("node")
        .arg(dir.join("ui.mjs"))
        .current_dir(&dir)
        .env("SATCHEL_URL", &s.url)
        .env("SATCHEL_TOKEN", &s.token)
        .env("SHOTS", &shots)
        .env("DOWNLOADS", &downloads)
        .output()
        .expect("running node (scripts/test.sh installs it)");
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the browser checks failed:\n{log}");
    assert!(log.contains("all browser checks passed"), "{log}");
    eprintln!("{log}");
    for page in [
        "search",
        "packages",
        "login",
        "pipelines",
        "runs",
        "run",
        "artifact",
        "text",
        "report",
        "diff",
    ] {
        assert!(
            shots.join(format!("{page}.png")).exists(),
            "screenshot {page}"
        );
    }

    // The zip the browser saved holds run 1's files, intact.
    let zip = downloads.join("coverage.zip");
    let t = Command::new("unzip").arg("-tq").arg(&zip).output().unwrap();
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stdout));
    let listing = Command::new("unzip").arg("-Z1").arg(&zip).output().unwrap();
    let mut names: Vec<String> = String::from_utf8(listing.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "build.log",
            "gone.txt",
            "index.html",
            "notes.txt",
            "style.css",
            "sub/page.html"
        ]
    );
    let notes = Command::new("unzip")
        .args(["-p"])
        .arg(&zip)
        .arg("notes.txt")
        .output()
        .unwrap();
    assert_eq!(notes.stdout, b"run 1");
}
