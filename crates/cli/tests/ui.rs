//! End-to-end: what people see in a browser — archives as zip, the web UI's
//! pages, its login, permalinks, and the sandboxed view of uploaded files —
//! against the real `satchel` binary.

mod common;

use std::io::Write as _;
use std::process::Command;

use common::*;
use futures_util::StreamExt as _;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Streams an authenticated GET of `url` into `dest`; returns the status
/// and the `Content-Length` the server promised.
async fn download(s: &Server, url: &str, dest: &std::path::Path) -> (u16, Option<u64>) {
    let r = s
        .http()
        .get(url)
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let len = r.content_length();
    let mut f = std::io::BufWriter::new(std::fs::File::create(dest).unwrap());
    let mut body = r.bytes_stream();
    while let Some(piece) = body.next().await {
        f.write_all(&piece.unwrap()).unwrap();
    }
    f.flush().unwrap();
    (status, len)
}

/// Downloads artifact `id` as a zip into `dest`; returns the promised
/// length.
async fn download_zip(s: &Server, id: &str, dest: &std::path::Path) -> u64 {
    let url = s.api(&format!("/artifacts/{id}/archive?format=zip"));
    let (status, len) = download(s, &url, dest).await;
    assert_eq!(status, 200);
    len.expect("a zip download has a Content-Length")
}

/// Python's `zipfile`: every member's name, size and mode, after checking
/// every CRC (`testzip`).
fn python_zip_listing(zip: &std::path::Path) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, zipfile\n\
             z = zipfile.ZipFile(sys.argv[1])\n\
             bad = z.testzip()\n\
             assert bad is None, bad\n\
             for i in z.infolist():\n\
             \x20   print(i.filename, i.file_size, oct(i.external_attr >> 16))\n",
        )
        .arg(zip)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python zipfile: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn unzip_test(zip: &std::path::Path) {
    let out = Command::new("unzip").arg("-tq").arg(zip).output().unwrap();
    assert!(
        out.status.success(),
        "unzip -t: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_artifact_downloads_as_a_zip_that_unzip_and_python_open() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    let src = d.path().join("src");
    write(&src, "dist/app.bin", &noise(300_000, 1));
    write(&src, "dist/docs/readme.md", b"# app\n");
    write(&src, "dist/docs/caf\u{e9}.txt", b"accents survive");
    write(&src, "dist/empty", b"");
    let tool = src.join("dist/tool.sh");
    write(&src, "dist/tool.sh", b"#!/bin/sh\necho hi\n");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o4755)).unwrap();
    s.agent(&src, "zips", 1, "build")
        .ok(&["artifact", "publish", "dist", "--name", "app"]);
    let id = s.artifact_id("zips", 1, "app");

    rt().block_on(async {
        let zip = d.path().join("app.zip");
        let len = download_zip(&s, &id, &zip).await;
        assert_eq!(len, std::fs::metadata(&zip).unwrap().len());
        unzip_test(&zip);
        let listing = python_zip_listing(&zip);
        assert!(listing.contains("app.bin 300000 0o100644"), "{listing}");
        assert!(listing.contains("docs/caf\u{e9}.txt 15 "), "{listing}");
        assert!(listing.contains("empty 0 "), "{listing}");
        // Permission bits only: no setuid bit survives into the archive.
        assert!(listing.contains("tool.sh 18 0o100755"), "{listing}");
        let x = d.path().join("x");
        let st = Command::new("unzip")
            .arg("-q")
            .arg(&zip)
            .arg("-d")
            .arg(&x)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(std::fs::read(x.join("app.bin")).unwrap(), noise(300_000, 1));
        assert_eq!(std::fs::read(x.join("docs/readme.md")).unwrap(), b"# app\n");

        // One directory of it.
        let docs = d.path().join("docs.zip");
        let (status, _) = download(
            &s,
            &s.api(&format!("/artifacts/{id}/archive?format=zip&path=docs/")),
            &docs,
        )
        .await;
        assert_eq!(status, 200);
        let listing = python_zip_listing(&docs);
        assert_eq!(listing.lines().count(), 2, "{listing}");
        assert!(listing.contains("docs/readme.md"), "{listing}");

        // The tar stays the default, and takes the directory too.
        let r = s.get(&format!("/artifacts/{id}/archive?path=docs")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/x-tar");
        assert!(r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("app-docs.tar"));

        // Compressed with zstd as it streams: no length known in advance.
        let r = s
            .get(&format!("/artifacts/{id}/archive?format=tar.zst"))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/zstd");
        assert!(r.headers().get("content-length").is_none());
        assert!(r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("app.tar.zst"));
        let packed = r.bytes().await.unwrap();
        let tar = zstd::stream::decode_all(&packed[..]).unwrap();
        assert_eq!(&packed[..4], [0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
        let tar_file = d.path().join("app.tar");
        std::fs::write(&tar_file, &tar).unwrap();
        let t = d.path().join("t");
        std::fs::create_dir_all(&t).unwrap();
        let st = Command::new("tar")
            .arg("-xf")
            .arg(&tar_file)
            .arg("-C")
            .arg(&t)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(std::fs::read(t.join("app.bin")).unwrap(), noise(300_000, 1));
        assert_eq!(
            std::fs::read(t.join("docs/caf\u{e9}.txt")).unwrap(),
            b"accents survive"
        );
        let r = s.get(&format!("/artifacts/{id}/archive?format=rar")).await;
        assert_eq!(r.status(), 400);
        let r = s.get(&format!("/artifacts/{id}/archive?path=nope")).await;
        assert_eq!(r.status(), 404);
        let r = s.get(&format!("/artifacts/{id}/archive?path=../etc")).await;
        assert_eq!(r.status(), 400);
    });
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_zip_of_a_5_gib_sparse_file_is_zip64_and_streams_in_flat_memory() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    let src = d.path().join("src");
    write(&src, "big/small.txt", b"next to a big one");
    // After the big one, so it starts past 4 GiB.
    write(&src, "big/z.txt", b"far out");
    let big = std::fs::File::create(src.join("big/sparse.img")).unwrap();
    big.set_len(5 << 30).unwrap();
    drop(big);
    s.agent(&src, "big", 1, "build")
        .ok(&["artifact", "publish", "big", "--name", "disk"]);
    let id = s.artifact_id("big", 1, "disk");
    let before = peak_rss_kib(s.child.id());
    rt().block_on(async {
        let zip = d.path().join("disk.zip");
        let len = download_zip(&s, &id, &zip).await;
        let on_disk = std::fs::metadata(&zip).unwrap().len();
        assert_eq!(len, on_disk);
        assert!(on_disk > 5 << 30);
        let after = peak_rss_kib(s.child.id());
        // 5 GiB went through; the server's peak grew by far less than one.
        assert!(
            after.saturating_sub(before) < 128 * 1024,
            "peak RSS grew from {before} KiB to {after} KiB while streaming"
        );
        unzip_test(&zip);
        let listing = python_zip_listing(&zip);
        assert!(
            listing.contains(&format!("sparse.img {} ", 5u64 << 30)),
            "{listing}"
        );
        assert!(listing.contains("small.txt 17 "), "{listing}");
        assert!(listing.contains("z.txt 7 "), "{listing}");
        std::fs::remove_file(&zip).unwrap();
    });
}

/// A client that shows redirects instead of following them.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Logs in with `token`; the session cookie (`name=value`).
async fn login(_b: &reqwest::Client, s: &Server, token: &str) -> String {
    ui_login(s, token).await
}

/// Logs in with `token` and follows run 1 of `rep`'s permalink to
/// `coverage/files/index.html`: the signed view link it leads to.
async fn coverage_view_link(b: &reqwest::Client, s: &Server, token: &str) -> String {
    let session = login(b, s, token).await;
    let r = b
        .get(format!(
            "{}/p/rep/runs/1/artifacts/coverage/files/index.html",
            s.url
        ))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    location(&r)
}

fn location(r: &reqwest::Response) -> String {
    r.headers()["location"].to_str().unwrap().to_string()
}

/// The `href` of the first link whose text is `text`.
fn href_of(page: &str, text: &str) -> String {
    let end = page
        .find(&format!(">{text}</a>"))
        .unwrap_or_else(|| panic!("no link {text:?} in {page}"));
    let start = page[..end].rfind("href=\"").unwrap() + 6;
    let stop = start + page[start..].find('"').unwrap();
    page[start..stop].replace("&amp;", "&")
}

#[test]
fn the_web_ui_logs_in_browses_and_views_uploaded_html_in_a_sandbox() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    let src = d.path().join("src");
    write(
        &src,
        "cov/index.html",
        b"<html><head><link rel=stylesheet href=\"style.css\"></head><body><a href=\"sub/page.html\">page</a><script>document.title=document.cookie</script></body></html>",
    );
    write(&src, "cov/style.css", b"body{color:red}");
    write(&src, "cov/sub/page.html", b"<p>deeper</p>");
    write(&src, "cov/<b>bold</b>.txt", b"escaped?");
    write(&src, "cov/x[1]*.txt", b"glob characters are literal here");
    let job = s.agent(&src, "web", 1, "test");
    job.ok(&["artifact", "publish", "cov", "--name", "coverage"]);
    job.ok(&["run-state", "passed"]);
    let second = s.agent(&src, "web", 2, "test");
    second.ok(&["artifact", "publish", "cov", "--name", "coverage"]);
    second.ok(&["run-state", "failed"]);
    let first_id = s.artifact_id("web", 1, "coverage");
    let second_id = s.artifact_id("web", 2, "coverage");
    let b = browser();
    let url = |p: &str| format!("{}{p}", s.url);

    rt().block_on(async {
        // No session: to the login form, and back after.
        let r = b.get(url("/p/web")).send().await.unwrap();
        assert_eq!(r.status(), 303);
        assert_eq!(location(&r), "/login?next=%2Fp%2Fweb");
        let r = b.get(url("/login")).send().await.unwrap();
        assert!(r.text().await.unwrap().contains("type=\"password\""));

        // A wrong token: refused, no cookie.
        let r = b
            .post(url("/login"))
            .form(&[("token", "wrong"), ("next", "/p/web")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().get("set-cookie").is_none());
        // A form posted from another site: refused.
        let r = b
            .post(url("/login"))
            .header("origin", "http://evil.example")
            .form(&[("token", s.token.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        // An absolute `next` never leaves the server.
        let r = b
            .post(url("/login"))
            .form(&[("token", s.token.as_str()), ("next", "//evil.example/")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        assert_eq!(location(&r), "/");
        let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        assert!(cookie.contains("SameSite=Strict"), "{cookie}");
        assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
        let session = cookie.split(';').next().unwrap().to_string();

        let authed = |u: String| {
            let b = b.clone();
            let session = session.clone();
            async move { b.get(u).header("cookie", session).send().await.unwrap() }
        };
        let page = |u: String| {
            let r = authed(u);
            async move {
                let r = r.await;
                assert_eq!(r.status(), 200, "{}", r.url());
                r.text().await.unwrap()
            }
        };

        // Pipelines → runs → run → artifact → file.
        let home = page(url("/")).await;
        let runs = page(url(&href_of(&home, "web"))).await;
        assert!(
            runs.contains(">passed<") && runs.contains(">failed<"),
            "{runs}"
        );
        let run = page(url(&href_of(&runs, "#1"))).await;
        assert!(run.contains(">test<"), "the job is listed: {run}");
        let artifact = page(url(&href_of(&run, "coverage"))).await;
        assert!(artifact.contains("Download .zip"), "{artifact}");
        // A file name is text, never markup.
        assert!(
            artifact.contains("&lt;b&gt;bold&lt;/b&gt;.txt"),
            "{artifact}"
        );
        assert!(!artifact.contains("<b>bold"), "{artifact}");

        // The uploaded HTML opens in a sandbox, without the session.
        let view = href_of(&artifact, "index.html");
        assert!(view.starts_with(&format!("/view/{first_id}/")), "{view}");
        let r = b.get(url(&view)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(csp.starts_with("sandbox"), "{csp}");
        assert!(!csp.contains("allow-same-origin"), "{csp}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        assert_eq!(
            r.headers()["content-disposition"],
            "inline; filename=\"index.html\""
        );
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert!(r.text().await.unwrap().contains("stylesheet"));
        // Names with glob characters open as themselves.
        let odd = href_of(&artifact, "x[1]*.txt");
        assert!(odd.contains("/lines/"), "text opens by lines: {odd}");
        let lines = page(url(&odd)).await;
        assert!(
            lines.contains("<pre>glob characters are literal here</pre>"),
            "{lines}"
        );
        // Its relative links resolve under the same signed prefix.
        let css = view.replace("index.html", "style.css");
        let r = b.get(url(&css)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "body{color:red}");
        let deeper = view.replace("index.html", "sub/page.html");
        assert_eq!(b.get(url(&deeper)).send().await.unwrap().status(), 200);
        // A forged or altered signature opens nothing.
        let mut forged = view.clone();
        let at = forged.find("/index.html").unwrap() - 1;
        let last = forged.as_bytes()[at];
        forged.replace_range(at..=at, if last == b'0' { "1" } else { "0" });
        assert_eq!(b.get(url(&forged)).send().await.unwrap().status(), 403);
        let other = view.replace(&first_id, &second_id);
        assert_eq!(b.get(url(&other)).send().await.unwrap().status(), 403);

        // Permalinks: the last successful build is run 1, the latest run 2.
        let r = b
            .get(url(
                "/p/web/runs/lastSuccessfulBuild/artifacts/coverage/files/index.html",
            ))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        assert!(location(&r).starts_with(&format!("/view/{first_id}/")));
        let r = authed(url("/p/web/runs/latest/artifacts/coverage/zip")).await;
        assert_eq!(r.status(), 303);
        assert_eq!(
            location(&r),
            format!("/artifacts/{second_id}/archive?format=zip")
        );
        // The download works with the session alone.
        let r = authed(url(&location(&r))).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/zip");
        // A tab in `next` is not a way off the server.
        let r = b
            .post(url("/login"))
            .form(&[("token", s.token.as_str()), ("next", "/\t/evil.example")])
            .send()
            .await
            .unwrap();
        assert_eq!(location(&r), "/");
        let r = authed(url("/p/web/runs/latest/artifacts/nope")).await;
        assert_eq!(r.status(), 404);
        let r = authed(url("/p/web/runs/bogus")).await;
        assert_eq!(r.status(), 400);

        // Logout clears the cookie.
        let r = b
            .post(url("/logout"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        assert!(r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0"));
    });
}

/// Regression: a permalink took the first artifact of its name in the run,
/// which after an expiry (or a failed upload) is the old one, not the
/// finished artifact that took the name again.
#[test]
fn a_permalink_takes_the_newest_finished_artifact_of_its_name() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    let src = d.path().join("src");
    write(&src, "cov/index.html", b"<p>old</p>");
    let first = s.agent(&src, "exp", 1, "a");
    first.ok(&[
        "artifact",
        "publish",
        "cov",
        "--name",
        "coverage",
        "--expire-in",
        "1s",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    first.ok(&["admin", "gc", "--grace", "0s"]);
    write(&src, "cov/index.html", b"<p>new</p>");
    let second = s.agent(&src, "exp", 1, "b");
    second.ok(&["artifact", "publish", "cov", "--name", "coverage"]);
    let listed: serde_json::Value = rt().block_on(async {
        s.get("/pipelines/exp/runs/1/artifacts")
            .await
            .json()
            .await
            .unwrap()
    });
    let of_name: Vec<(&str, &str)> = listed["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["name"] == "coverage")
        .map(|a| (a["state"].as_str().unwrap(), a["id"].as_str().unwrap()))
        .collect();
    assert_eq!(of_name.len(), 2, "{listed}");
    assert_eq!(
        of_name[0].0, "expired",
        "the old one is listed first: {listed}"
    );
    let new_id = of_name[1].1;
    let b = browser();
    rt().block_on(async {
        let session = login(&b, &s, s.token.as_str()).await;
        let r = b
            .get(format!("{}/p/exp/runs/1/artifacts/coverage", s.url))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        assert_eq!(location(&r), format!("/artifacts/{new_id}"));
        // Default artifacts of two jobs: ambiguous, and said so.
        for job in ["x", "y"] {
            s.agent(&src, "exp", 1, job)
                .ok(&["artifact", "upload", "cov/index.html"]);
        }
        let r = b
            .get(format!("{}/p/exp/runs/1/artifacts/default", s.url))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        let body = r.text().await.unwrap();
        assert!(
            body.contains("default artifacts of 2 jobs (x, y)"),
            "{body}"
        );
    });
}

/// A view link opened with the bootstrap admin token ends when the server
/// restarts with another one (the signing key survives restarts).
#[test]
fn a_view_link_of_the_admin_token_ends_when_the_token_changes() {
    let d = tmp();
    let data = d.path().join("data");
    let mut s = Server::start_with(
        &data,
        &[(
            "SATCHEL_ADMIN_TOKEN",
            "first-admin-token-0123456789abcdef0123456789abcdef",
        )],
    );
    let src = d.path().join("src");
    write(&src, "cov/index.html", b"<p>report</p>");
    s.agent(&src, "rep", 1, "test")
        .ok(&["artifact", "publish", "cov", "--name", "coverage"]);
    let b = browser();
    let view = rt().block_on(async {
        let view = coverage_view_link(&b, &s, &s.token).await;
        assert!(view.contains("/admin/"), "{view}");
        assert_eq!(
            b.get(format!("{}{view}", s.url))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        view
    });
    s.stop();
    let s = Server::start_with(
        &data,
        &[(
            "SATCHEL_ADMIN_TOKEN",
            "second-admin-token-0123456789abcdef0123456789abcdef",
        )],
    );
    rt().block_on(async {
        let r = b.get(format!("{}{view}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), 403);
    });
}

/// A view link works only while the token of the session that opened it
/// does: revoking the token ends its links at once, not an hour later.
#[test]
fn a_view_link_ends_with_the_token_that_opened_it() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    let src = d.path().join("src");
    write(&src, "cov/index.html", b"<p>report</p>");
    let admin = s.agent(&src, "rep", 1, "test");
    admin.ok(&["artifact", "publish", "cov", "--name", "coverage"]);
    let created: serde_json::Value =
        serde_json::from_str(&admin.ok(&["admin", "token", "create", "--scope", "read", "--json"]))
            .unwrap();
    let (id, secret) = (
        created["id"].as_str().unwrap().to_string(),
        created["token"].as_str().unwrap().to_string(),
    );
    let b = browser();
    let view = rt().block_on(async {
        let view = coverage_view_link(&b, &s, secret.as_str()).await;
        assert!(
            view.contains(&format!("/{id}/")),
            "bound to the token: {view}"
        );
        let r = b.get(format!("{}{view}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "<p>report</p>");
        view
    });
    admin.ok(&["admin", "token", "revoke", &id]);
    rt().block_on(async {
        let r = b.get(format!("{}{view}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let body = r.text().await.unwrap();
        assert!(body.contains("has ended"), "{body}");
        // Another holder's id in the link breaks its signature.
        let other = view.replace(&format!("/{id}/"), "/admin/");
        let r = b.get(format!("{}{other}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), 403);

        // Every view is in the audit log as its holder's read.
        let log: serde_json::Value = s.get("/admin/audit?limit=1000").await.json().await.unwrap();
        let views: Vec<&serde_json::Value> = log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"].as_str().unwrap().starts_with("GET /view/"))
            .collect();
        let read = views
            .iter()
            .find(|e| e["status"] == 200)
            .unwrap_or_else(|| panic!("the view is not in the audit log: {log}"));
        assert_eq!(read["token_id"].as_str(), Some(id.as_str()), "{read}");
        assert_eq!(read["allowed"], true, "{read}");
        let resource = read["resource"].as_str().unwrap();
        assert!(
            resource.contains("artifact=") && resource.contains("path=index.html"),
            "{read}"
        );
        let ended = views
            .iter()
            .find(|e| e["status"] == 403 && e["token_id"].as_str() == Some(id.as_str()))
            .unwrap_or_else(|| panic!("the refused view is not in the audit log: {log}"));
        assert_eq!(ended["allowed"], false, "{ended}");
        assert!(
            ended["reason"].as_str().unwrap().contains("revoked"),
            "{ended}"
        );
        assert!(
            views
                .iter()
                .any(|e| e["status"] == 403 && e["token_id"].is_null()),
            "the forged link, refused before any token: {log}"
        );
    });
}

#[test]
fn ui_login_guesses_are_throttled_with_the_apis() {
    let d = tmp();
    let s = Server::start_with(
        &d.path().join("data"),
        &[("SATCHEL_MAX_AUTH_FAILURES", "3")],
    );
    let b = browser();
    rt().block_on(async {
        let guess = |t: &'static str| {
            b.post(format!("{}/login", s.url))
                .form(&[("token", t)])
                .send()
        };
        for _ in 0..3 {
            assert_eq!(guess("wrong").await.unwrap().status(), 401);
        }
        let r = guess("wrong").await.unwrap();
        assert_eq!(r.status(), 429);
        assert!(r.headers().contains_key("retry-after"));
        // So do guesses sent as a session cookie.
        let r = b
            .get(format!("{}/", s.url))
            .header("cookie", "satchel_session=guess")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429);
        // The API counts the same failures.
        let r = s
            .http()
            .get(s.api("/pipelines"))
            .bearer_auth("also-wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429);
    });
}

/// A forged view link is a guess like a wrong token: counted with them,
/// throttled with them, so forging links cannot fill the audit log at
/// will.
#[test]
fn forged_view_links_count_as_failed_authentications() {
    let d = tmp();
    let s = Server::start_with(
        &d.path().join("data"),
        &[("SATCHEL_MAX_AUTH_FAILURES", "3")],
    );
    let b = browser();
    rt().block_on(async {
        let forged = format!(
            "{}/view/{}/admin/99999999999/{}/index.html",
            s.url,
            "0".repeat(32),
            "ab".repeat(32)
        );
        for _ in 0..3 {
            assert_eq!(b.get(&forged).send().await.unwrap().status(), 403);
        }
        assert_eq!(b.get(&forged).send().await.unwrap().status(), 429);
        let r = b
            .post(format!("{}/login", s.url))
            .form(&[("token", "a-guess")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429, "the same address, the same count");
    });
}

/// Two runs compared from metadata, the same through the CLI (`satchel
/// diff`, text and JSON), the API and the UI's page: per artifact, files
/// added, removed and changed with size deltas; bad references are 4xx.
#[test]
fn two_runs_compare_in_the_cli_the_api_and_the_ui() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    for (run, files) in [
        (
            1,
            &[
                ("app/a.txt", "one"),
                ("app/gone.txt", "x"),
                ("app/same.txt", "s"),
                ("app/q.sql", "-- old\n"),
            ][..],
        ),
        (
            2,
            &[
                ("app/a.txt", "one more"),
                ("app/new.txt", "n"),
                ("app/same.txt", "s"),
                ("app/q.sql", "-- new\n"),
            ][..],
        ),
    ] {
        let src = d.path().join(format!("src{run}"));
        for (path, body) in files {
            write(&src, path, body.as_bytes());
        }
        let agent = s.agent(&src, "cmp", run, "build");
        agent.ok(&["artifact", "publish", "app", "--name", "app"]);
        if run == 2 {
            agent.ok(&["artifact", "publish", "app/new.txt", "--name", "extra"]);
        }
    }
    let agent = s.agent(d.path(), "cmp", 2, "check");
    let text = agent.ok(&["diff", "cmp#1", "cmp#latest"]);
    for want in [
        "cmp#1 → cmp#2\n",
        "  app (changed): 1 added, 1 removed, 2 changed, 1 unchanged; 12 B → 17 B (+5 B)\n",
        "    ~ a.txt  3 B → 8 B (+5 B)\n",
        "    - gone.txt  1 B\n",
        "    + new.txt  1 B\n",
        "  extra (added): 1 added, 0 removed, 0 changed, 0 unchanged; 0 B → 1 B (+1 B)\n",
        "    ~ q.sql  7 B → 7 B (±0 B)\n",
        "total: 2 added, 1 removed, 2 changed, 1 unchanged; 12 B → 18 B (+6 B)\n",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    assert!(
        !text.contains("same.txt"),
        "unchanged files are only counted"
    );
    let json: serde_json::Value =
        serde_json::from_str(&agent.ok(&["diff", "cmp#2", "cmp#1", "--artifact", "app", "--json"]))
            .unwrap();
    assert_eq!(json["from"], "cmp#2");
    assert_eq!(json["artifacts"].as_array().unwrap().len(), 1);
    assert_eq!(json["totals"]["added"], 1, "{json}");
    assert_eq!(json["artifacts"][0]["files"][0]["path"], "a.txt");
    assert_eq!(json["artifacts"][0]["files"][0]["change"], "changed");
    let sql = &json["artifacts"][0]["files"][3];
    assert_eq!(sql["path"], "q.sql");
    // Run 1's text against run 2's (the JSON compared 2 with 1).
    let sql_diff = format!(
        "/diff/file?from={}&to={}",
        sql["to_file"].as_str().unwrap(),
        sql["from_file"].as_str().unwrap()
    );
    let e = agent.fails(&["diff", "cmp#1", "cmp#2", "--artifact", "nope"]);
    assert!(
        e.contains("neither cmp#1 nor cmp#2 has an artifact \"nope\""),
        "{e}"
    );
    let e = agent.fails(&["diff", "cmp-1", "cmp#2"]);
    assert!(e.contains("is not PIPELINE#RUN"), "{e}");
    let e = agent.fails(&["diff", "cmp#1", "cmp#9"]);
    assert!(e.contains("run 9 of pipeline \"cmp\" not found"), "{e}");
    // The whole run as one archive, each artifact in a folder of its name.
    rt().block_on(async {
        let zip = d.path().join("run2.zip");
        let (status, _) =
            download(&s, &s.api("/pipelines/cmp/runs/2/archive?format=zip"), &zip).await;
        assert_eq!(status, 200);
        let listing = python_zip_listing(&zip);
        for want in ["app/a.txt 8 ", "app/q.sql 7 ", "extra/new.txt 1 "] {
            assert!(listing.contains(want), "{want} in {listing}");
        }
        assert_eq!(listing.lines().count(), 5, "{listing}");
        assert_eq!(s.get("/pipelines/cmp/runs/9/archive").await.status(), 404);
    });
    // A default artifact's folder is Windows-safe (no `:`).
    let src3 = d.path().join("src3");
    write(&src3, "log.txt", b"log");
    s.agent(&src3, "cmp", 3, "test")
        .ok(&["artifact", "upload", "log.txt"]);
    rt().block_on(async {
        let zip = d.path().join("run3.zip");
        let (status, _) =
            download(&s, &s.api("/pipelines/cmp/runs/3/archive?format=zip"), &zip).await;
        assert_eq!(status, 200);
        let listing = python_zip_listing(&zip);
        assert!(listing.contains("default@test/log.txt 3 "), "{listing}");
    });
    // The UI's page, reached from the run page's form.
    let b = browser();
    rt().block_on(async {
        let session = login(&b, &s, &s.token).await;
        let get = |path: String| {
            let (b, session, s) = (&b, &session, &s);
            async move {
                let r = b
                    .get(format!("{}{path}", s.url))
                    .header("cookie", session)
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        let (_, run) = get("/p/cmp/runs/2".into()).await;
        assert!(run.contains("action=\"/diff\""), "{run}");
        assert!(
            run.contains("href=\"/p/cmp/runs/2/archive?format=zip\""),
            "{run}"
        );
        assert_eq!(
            get("/p/cmp/runs/2/archive?format=tar.zst".into()).await.0,
            200
        );
        // What changed since the run before: this run is the newer side.
        assert!(
            run.contains("name=\"from\" required value=\"cmp#1\""),
            "{run}"
        );
        assert!(run.contains("name=\"to\" value=\"cmp#2\""), "{run}");
        let (status, page) = get("/diff?from=cmp%231&to=cmp%232".into()).await;
        assert_eq!(status, 200);
        for want in ["cmp#1 → cmp#2", "gone.txt", "new.txt", "+5 B", "extra"] {
            assert!(page.contains(want), "{want} in {page}");
        }
        // A changed text file's lines, as a unified diff.
        let (_, lines) = get(href_of(&page, "diff")).await;
        for want in [
            "<span class=\"del\">-one</span>",
            "<span class=\"add\">+one more</span>",
            "cmp#1 app/a.txt",
        ] {
            assert!(lines.contains(want), "{want} in {lines}");
        }
        // A line that starts with `--` is still a removed or added line.
        let (_, lines) = get(sql_diff).await;
        assert!(
            lines.contains("<span class=\"del\">--- old</span>"),
            "{lines}"
        );
        assert!(
            lines.contains("<span class=\"add\">+-- new</span>"),
            "{lines}"
        );
        assert_eq!(get("/diff/file?from=nope&to=nope".into()).await.0, 400);
        assert_eq!(get("/diff?from=cmp&to=cmp%232".into()).await.0, 400);
        assert_eq!(
            get("/diff?from=cmp%231&to=cmp%232&artifact=nope".into())
                .await
                .0,
            404
        );
    });
}

/// The line view: pages of lines with anchors, CRLF and a last line
/// without a newline, a cut long line, a start beyond the end; and a token
/// of another pipeline sees none of it.
#[test]
fn text_opens_by_lines_and_only_for_tokens_that_may_read_it() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    let src = d.path().join("src");
    let mut log: String = (1..=1500).map(|i| format!("line {i}\r\n")).collect();
    log.push_str(&"x".repeat(1_100_000));
    log.push_str("\nlast <b>line</b> without a newline");
    write(&src, "out/run.log", log.as_bytes());
    write(&src, "out/data.bin", &[0, 1, 2]);
    let admin = s.agent(&src, "lines", 1, "test");
    admin.ok(&["artifact", "publish", "out", "--name", "logs"]);
    admin.ok(&["promote", "logs", "--to", "rel/logs@1.0.0"]);
    let id = s.artifact_id("lines", 1, "logs");
    // Reads reach the token's cluster; another cluster's token, no rule.
    admin.ok(&["admin", "cluster", "create", "release"]);
    let other: serde_json::Value = serde_json::from_str(&admin.ok(&[
        "admin",
        "token",
        "create",
        "--scope",
        "read",
        "--cluster",
        "release",
        "--json",
    ]))
    .unwrap();
    let b = browser();
    rt().block_on(async {
        let session = login(&b, &s, &s.token).await;
        let page = |q: &str| {
            let (b, session) = (b.clone(), session.clone());
            let u = format!("{}/artifacts/{id}/lines/run.log{q}", s.url);
            async move {
                let r = b.get(u).header("cookie", session).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.text().await.unwrap()
            }
        };
        let first = page("").await;
        assert!(first.contains("Lines 1–1000"), "{first}");
        assert!(first.contains("<tr id=\"L1000\">"), "{first}");
        assert!(!first.contains("id=\"L1001\""), "one page only");
        assert!(first.contains("<pre>line 7</pre>"), "CR dropped: {first}");
        assert!(first.contains("?start=1001\">next"), "{first}");
        // A line that does not fit what is left of a page starts the next
        // page; a line longer than a page is cut there.
        let second = page("?start=1001").await;
        assert!(second.contains("<tr id=\"L1500\">"), "{second}");
        assert!(!second.contains("id=\"L1501\""), "the long line waits");
        assert!(second.contains("?start=1501\">next"), "{second}");
        let long = page("?start=1501").await;
        assert!(long.contains("<tr id=\"L1501\">"), "the long line");
        assert!(long.contains("(line cut)"), "cut at a page's bytes");
        assert!(long.contains("?start=1502\">next"), "more after it");
        // The last line has no newline; the page after it is the end.
        let last = page("?start=1502").await;
        assert!(
            last.contains("<pre>last &lt;b&gt;line&lt;/b&gt; without a newline</pre>"),
            "{last}"
        );
        assert!(!last.contains("next →"), "{last}");
        let beyond = page("?start=9999").await;
        assert!(
            beyond.contains("The file has 1502 lines; there is no line 9999."),
            "{beyond}"
        );
        // The artifact page links text to the line view, other files raw.
        let r = b
            .get(format!("{}/artifacts/{id}", s.url))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        let listing = r.text().await.unwrap();
        assert!(listing.contains(&format!("href=\"/artifacts/{id}/lines/run.log\"")));
        assert!(!listing.contains("/lines/data.bin"), "{listing}");
        let r = b
            .get(format!("{}/artifacts/{id}/lines/nope.txt", s.url))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);

        // A token of another cluster: no page of this pipeline.
        let theirs = login(&b, &s, other["token"].as_str().unwrap()).await;
        for path in [
            format!("/artifacts/{id}"),
            format!("/artifacts/{id}/lines/run.log"),
            "/p/lines/runs/1/search?query=**".to_string(),
            "/p/lines".to_string(),
            "/p/lines/runs/1".to_string(),
            format!("/artifacts/{id}/archive?format=zip"),
        ] {
            let r = b
                .get(format!("{}{path}", s.url))
                .header("cookie", &theirs)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{path}");
        }
        let home = b
            .get(format!("{}/", s.url))
            .header("cookie", &theirs)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!home.contains("/p/lines"), "not listed: {home}");
        // Its organization's repository is listed, but not the version
        // promoted from a pipeline it may not read.
        let get = |path: &str, cookie: &str| {
            let r = b
                .get(format!("{}{path}", s.url))
                .header("cookie", cookie.to_string())
                .send();
            async move { r.await.unwrap().text().await.unwrap() }
        };
        assert!(get("/packages", &theirs)
            .await
            .contains("href=\"/packages/rel\""));
        // A version count would tell of versions it may not read: none.
        let r = reqwest::Client::new()
            .get(s.api("/packages"))
            .bearer_auth(other["token"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        let listed: serde_json::Value = r.json().await.unwrap();
        assert_eq!(listed["repositories"][0]["repository"], "rel");
        assert!(
            listed["repositories"][0].get("versions").is_none(),
            "{listed}"
        );
        let listed: serde_json::Value = s.get("/packages").await.json().await.unwrap();
        assert_eq!(
            listed["repositories"][0]["versions"], 1,
            "the admin sees the count"
        );
        let versions = get("/packages/rel", &theirs).await;
        assert!(
            versions.contains("No versions here that this token may read."),
            "{versions}"
        );
        let versions = get("/packages/rel", &session).await;
        assert!(
            versions.contains("<td class=\"mono\">1.0.0</td>"),
            "{versions}"
        );
        // The search page, with the CLI's scope.
        let found = get(
            "/p/lines/runs/latest/search?query=**/*.log&name=logs&job=",
            &session,
        )
        .await;
        assert!(
            found.contains(">run.log</a>") && !found.contains("data.bin"),
            "{found}"
        );
        let none = get("/p/lines/runs/1/search?query=**&job=other", &session).await;
        assert!(none.contains("No files match."), "{none}");
        let bad = b
            .get(format!("{}/p/lines/runs/1/search?query=a[", s.url))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400, "a bad glob is the client's");
    });
}

/// The permalinks' API twins: wherever the API takes a run, a selector
/// works too, and an artifact is reached by its name in the run, down to
/// a file or an archive, resolved exactly as the UI's permalinks are.
#[test]
fn permalinks_have_api_twins_with_the_same_selectors() {
    let d = tmp();
    let s = Server::start(&d.path().join("data"));
    for (run, state, branch) in [
        (1, "passed", "main"),
        (2, "failed", "main"),
        (3, "passed", "dev"),
    ] {
        let src = d.path().join(format!("src{run}"));
        write(&src, "cov/index.html", format!("run {run}").as_bytes());
        let job = s
            .agent(&src, "web", run, "test")
            .env("SATCHEL_BRANCH", branch);
        job.ok(&["artifact", "publish", "cov", "--name", "coverage"]);
        job.ok(&["run-state", state]);
    }
    let ids: Vec<String> = (1..=3)
        .map(|r| s.artifact_id("web", r, "coverage"))
        .collect();
    rt().block_on(async {
        let json = |path: &'static str| {
            let r = s.get(path);
            async move {
                let r = r.await;
                assert_eq!(r.status(), 200, "{}", r.url());
                r.json::<serde_json::Value>().await.unwrap()
            }
        };
        assert_eq!(json("/pipelines/web/runs/latest").await["number"], 3);
        assert_eq!(
            json("/pipelines/web/runs/lastSuccessfulBuild").await["number"],
            3
        );
        assert_eq!(
            json("/pipelines/web/runs/lastSuccessfulBuild:main").await["number"],
            1
        );
        assert_eq!(
            json("/pipelines/web/runs/latestFromBranch:main").await["number"],
            2
        );
        assert_eq!(json("/pipelines/web/runs/2").await["number"], 2);
        let a = json("/pipelines/web/runs/lastSuccessfulBuild:main/artifacts/coverage").await;
        assert_eq!(a["artifact"]["id"], ids[0]);
        assert_eq!(a["files"][0]["path"], "index.html");
        let listed = json("/pipelines/web/runs/latestFromBranch:main/artifacts").await;
        assert_eq!(listed["artifacts"][0]["id"], ids[1]);
        let found = json("/pipelines/web/runs/latest/search?query=*.html").await;
        assert_eq!(found["files"][0]["artifact_id"], ids[2]);
        let r = s
            .get("/pipelines/web/runs/lastSuccessfulBuild:main/artifacts/coverage/files/index.html")
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "run 1");
        let r = s
            .get("/pipelines/web/runs/latest/artifacts/coverage/archive?format=zip")
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/zip");
        let r = s.get("/pipelines/web/runs/latest/archive?format=tar").await;
        assert_eq!(r.status(), 200);
        // Clear refusals.
        assert_eq!(s.get("/pipelines/web/runs/bogus").await.status(), 400);
        assert_eq!(s.get("/pipelines/web/runs/triggering").await.status(), 400);
        assert_eq!(
            s.get("/pipelines/web/runs/latest/artifacts/nope")
                .await
                .status(),
            404
        );
        let r = s
            .get("/pipelines/web/runs/latest/artifacts/coverage/files/nope.txt")
            .await;
        assert_eq!(r.status(), 404);
        assert_eq!(
            s.get("/pipelines/web/runs/lastSuccessfulBuild:nobranch")
                .await
                .status(),
            404
        );
    });
}
