//! One story for every [`MetaStore`] backend, as the content store has its
//! conformance suite: each database's tests call [`run_all`] on an empty
//! store so SQLite and (later) PostgreSQL are held to the same rules.

use satchel_model::api::{ArtifactState, CreateUpload, FileInfo, JobContext, NewFile};

use crate::{DbError, MetaStore, PageRequest, Quotas};

/// Job `job`'s attempt in run 1 of pipeline `pipe`.
pub fn ctx(job: &str, attempt: u32) -> JobContext {
    JobContext {
        pipeline: "pipe".into(),
        run: 1,
        stage: Some("build".into()),
        job: job.into(),
        step: Some("step".into()),
        attempt,
        branch: Some("main".into()),
        commit: None,
        build: None,
    }
}

/// A file whose sha256 is `sha` 64 times.
pub fn file(path: &str, sha: char, size: u64) -> NewFile {
    NewFile {
        path: path.into(),
        size,
        sha256: sha.to_string().repeat(64),
        mode: 0o644,
        content_type: None,
        source_path: None,
        glob: None,
    }
}

/// The default quotas.
fn q() -> Quotas {
    Quotas::default()
}

/// An upload of `files` into artifact `name` (the default one if `None`)
/// of [`ctx`]`(job, attempt)`.
pub fn upload(job: &str, attempt: u32, name: Option<&str>, files: Vec<NewFile>) -> CreateUpload {
    CreateUpload {
        context: ctx(job, attempt),
        name: name.map(String::from),
        files,
        exclusive: false,
        replace: false,
        expire_in_secs: None,
    }
}

/// Runs the whole story. Panics with the failing step's name.
pub async fn run_all(db: &dyn MetaStore) {
    // Staged files are invisible; finishing needs every blob recorded.
    let plan = db
        .create_upload(
            &upload(
                "a",
                1,
                None,
                vec![file("x/1.txt", 'a', 3), file("x/2.txt", 'b', 4)],
            ),
            &q(),
        )
        .await
        .unwrap();
    assert_eq!(plan.artifact_name, "default");
    assert_eq!(plan.missing.len(), 2);
    let run = db.find_run("pipe", 1).await.unwrap();
    assert_eq!(run.branch.as_deref(), Some("main"));
    assert!(
        db.run_files(&run.id).await.unwrap().is_empty(),
        "staged files leaked"
    );
    let err = db.finish_upload(&plan.upload_id).await.unwrap_err();
    assert!(matches!(err, DbError::Conflict(_)), "{err}");
    db.record_blobs(&[("a".repeat(64), 3), ("b".repeat(64), 4)])
        .await
        .unwrap();
    let done = db.finish_upload(&plan.upload_id).await.unwrap();
    assert_eq!((done.files_added, done.bytes_added), (2, 7));
    assert_eq!(done.artifact.state, ArtifactState::Finished);
    let twice = db
        .finish_upload(&plan.upload_id)
        .await
        .expect("finishing twice is harmless");
    assert_eq!(
        (twice.artifact.file_count, twice.artifact.size),
        (2, 7),
        "a second finish counted the upload's files again"
    );
    let files = db.run_files(&run.id).await.unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0].producer.stage.as_deref(), Some("build"));
    assert_eq!(files[0].content_type, "text/plain");

    // Dedup: known blobs are not missing again; same path + content is a no-op.
    let again = db
        .create_upload(
            &upload(
                "a",
                1,
                None,
                vec![file("x/1.txt", 'a', 3), file("y.txt", 'b', 4)],
            ),
            &q(),
        )
        .await
        .unwrap();
    assert!(again.missing.is_empty());
    assert_eq!(again.already_present, 1);
    assert_eq!(
        again.artifact_id, plan.artifact_id,
        "one default artifact per job attempt"
    );
    db.finish_upload(&again.upload_id).await.unwrap();
    let err = db
        .create_upload(&upload("a", 1, None, vec![file("x/1.txt", 'c', 3)]), &q())
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::Conflict(_)), "{err}");
    let err = db
        .create_upload(
            &upload(
                "a",
                1,
                None,
                vec![file("d.txt", 'c', 3), file("d.txt", 'c', 3)],
            ),
            &q(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::Invalid(_)), "{err}");

    // One digest is one size: a manifest may not claim another size for
    // content that is held, nor two sizes for one digest, and content
    // recorded later is checked again at finish.
    for files in [
        vec![file("lie.txt", 'a', 4_000_000)],
        vec![file("l1.txt", 'g', 3), file("l2.txt", 'g', 5)],
    ] {
        let err = db
            .create_upload(&upload("liar", 1, Some("lie"), files), &q())
            .await
            .unwrap_err();
        assert!(matches!(err, DbError::SizeMismatch(_)), "{err}");
    }
    // Nor for a file the artifact already holds, sent again.
    let err = db
        .create_upload(&upload("a", 1, None, vec![file("y.txt", 'b', 40)]), &q())
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::SizeMismatch(_)), "{err}");
    let late = db
        .create_upload(
            &upload("liar", 1, Some("late"), vec![file("late.txt", 'h', 10)]),
            &q(),
        )
        .await
        .unwrap();
    db.record_blobs(&[("h".repeat(64), 9)]).await.unwrap();
    let err = db.finish_upload(&late.upload_id).await.unwrap_err();
    assert!(matches!(err, DbError::SizeMismatch(_)), "{err}");
    db.abort_upload(&late.upload_id).await.unwrap();
    assert_eq!(
        db.mis_sized_files(10).await.unwrap(),
        vec![],
        "no file row can claim a size its content lacks"
    );
    assert_eq!(
        db.recount_artifacts(10).await.unwrap(),
        Vec::<String>::new(),
        "the rules keep every artifact's totals"
    );

    // Quotas: a run's artifacts and an artifact's files; refused whole.
    let tight = Quotas {
        artifacts_per_run: 1,
        files_per_artifact: 2,
    };
    let mut other_run = upload("q", 1, Some("first"), vec![file("q1", 'a', 3)]);
    other_run.context.pipeline = "quota".into();
    let p1 = db.create_upload(&other_run, &tight).await.unwrap();
    other_run.name = Some("second".into());
    let err = db.create_upload(&other_run, &tight).await.unwrap_err();
    assert!(matches!(err, DbError::Limit(_)), "{err}");
    other_run.name = Some("first".into());
    other_run.files = vec![file("q2", 'b', 4), file("q3", 'b', 4)];
    let err = db.create_upload(&other_run, &tight).await.unwrap_err();
    assert!(matches!(err, DbError::Limit(_)), "{err}");
    other_run.files.pop();
    let p2 = db
        .create_upload(&other_run, &tight)
        .await
        .expect("two files fit the quota of two");
    db.abort_upload(&p1.upload_id).await.unwrap();
    db.abort_upload(&p2.upload_id).await.unwrap();

    // Named artifacts: unique in a run, a retry of the owner may publish again.
    let n = db
        .create_upload(
            &upload("a", 1, Some("bundle"), vec![file("b.bin", 'd', 1)]),
            &q(),
        )
        .await
        .unwrap();
    let err = db
        .create_upload(
            &upload("other", 1, Some("bundle"), vec![file("b.bin", 'd', 1)]),
            &q(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exists in run 1"), "{err}");
    let retry = db
        .create_upload(
            &upload("a", 2, Some("bundle"), vec![file("b.bin", 'd', 1)]),
            &q(),
        )
        .await
        .unwrap();
    assert_ne!(retry.artifact_id, n.artifact_id);

    // Abort drops staged files and errors an artifact that never finished.
    db.abort_upload(&n.upload_id).await.unwrap();
    assert!(db.finish_upload(&n.upload_id).await.is_err());
    assert_eq!(
        db.get_artifact(&n.artifact_id).await.unwrap().state,
        ArtifactState::Error
    );

    // Abandoned uploads expire; fresh ones and finished ones are untouched.
    let stale = db
        .create_upload(
            &upload("c", 1, Some("abandoned"), vec![file("s.bin", 'e', 1)]),
            &q(),
        )
        .await
        .unwrap();
    assert_eq!(db.expire_stale_uploads(0).await.unwrap(), 0);
    let cutoff = satchel_model::id::now_millis() + 1;
    // `stale` and the still-open retry upload of "bundle".
    assert_eq!(db.expire_stale_uploads(cutoff).await.unwrap(), 2);
    assert_eq!(
        db.get_artifact(&stale.artifact_id).await.unwrap().state,
        ArtifactState::Error
    );
    assert!(db.finish_upload(&stale.upload_id).await.is_err());
    assert_eq!(db.expire_stale_uploads(cutoff).await.unwrap(), 0);

    // Superseded attempts are flagged; artifacts list and delete.
    let files = db.run_files(&run.id).await.unwrap();
    assert!(
        files.iter().all(|f| f.producer.superseded),
        "attempt 2 exists for job a"
    );
    let arts = db.list_artifacts(&run.id).await.unwrap();
    assert!(arts
        .iter()
        .any(|a| a.id == plan.artifact_id && a.file_count == 3));
    db.delete_artifact(&plan.artifact_id).await.unwrap();
    assert!(db.run_files(&run.id).await.unwrap().is_empty());
    assert!(matches!(
        db.get_artifact(&plan.artifact_id).await,
        Err(DbError::NotFound(_))
    ));
    assert!(matches!(
        db.find_run("pipe", 2).await,
        Err(DbError::NotFound(_))
    ));
    assert!(matches!(
        db.list_runs("nope", &PageRequest::default()).await,
        Err(DbError::NotFound(_))
    ));
    assert!(matches!(
        db.get_files(&["0".repeat(32)]).await,
        Err(DbError::NotFound(_))
    ));
    assert_eq!(
        db.list_runs("pipe", &PageRequest::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    gc_grace(db).await;
    pipelines(db).await;
    needs_blobs_and_expiry(db).await;
    storage_figures(db).await;
    races(db).await;
    reused_failed_artifact_holds_its_name(db).await;
    replacing_swaps_on_finish(db).await;
    large_manifest(db).await;
    access(db).await;
    leases(db).await;
    gha_uploads(db).await;
    gha_views(db).await;
    pack_catalog(db).await;
    paging(db).await;
    build_ids(db).await;
}

/// Every page of `list`, following cursors from the first.
async fn all_pages<T, F, Fut>(limit: usize, budget: usize, mut list: F) -> Vec<Vec<T>>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: std::future::Future<Output = Result<crate::Page<T>, DbError>>,
{
    let mut page = PageRequest {
        cursor: None,
        limit,
        scan_budget: budget,
    };
    let mut pages = Vec::new();
    loop {
        let got = list(page.clone()).await.unwrap();
        pages.push(got.items);
        match got.next {
            Some(next) => page.cursor = Some(next),
            None => return pages,
        }
        assert!(pages.len() < 10_000, "the cursors never end");
    }
}

/// Cursor pages of runs, artifacts, an artifact's files and search: page
/// after page adds up to the whole list in its order, whatever the page
/// size; search pushed into the database selects exactly what the model's
/// rules select from the whole run, and never splits a path across pages.
async fn paging(db: &dyn MetaStore) {
    use satchel_model::glob::Glob;
    use satchel_model::query::{self, Scope};

    let in_pages = |job: &str, attempt: u32, step: &str| JobContext {
        pipeline: "pages".into(),
        step: Some(step.into()),
        ..ctx(job, attempt)
    };
    let mut n = 0u32;
    let mut put =
        async |job: &str, attempt: u32, step: &str, name: Option<&str>, paths: &[&str]| {
            let files: Vec<NewFile> = paths
                .iter()
                .map(|p| {
                    n += 1;
                    NewFile {
                        sha256: format!("{:064x}", 0xface_0000u64 + n as u64),
                        ..file(p, 'x', n as u64)
                    }
                })
                .collect();
            let blobs: Vec<(String, u64)> =
                files.iter().map(|f| (f.sha256.clone(), f.size)).collect();
            db.record_blobs(&blobs).await.unwrap();
            let mut u = upload(job, attempt, name, files);
            u.context = in_pages(job, attempt, step);
            let plan = db.create_upload(&u, &q()).await.unwrap();
            db.finish_upload(&plan.upload_id).await.unwrap();
        };
    let tree = [
        "dir/a.txt",
        "dir/b.log",
        "dir/sub/a.txt",
        "dir/sub/deep/c.txt",
        "dir-x/a.txt",
        "dir.txt",
        "dir0/a.txt",
        "a.txt",
        "z/y/x.bin",
        "other/a.txt",
        "dir/~x",
        "dir/zé/ü.txt",
    ];
    put("build", 1, "compile", None, &tree).await;
    put("build", 2, "compile", None, &tree).await;
    put("build", 2, "pack", Some("bundle"), &tree[..6]).await;
    assert_eq!(tree.len(), 12);
    put(
        "test",
        1,
        "unit",
        Some("reports"),
        &["dir/a.txt", "dir/sub/a.txt", "r/1.xml", "r/2.xml"],
    )
    .await;
    put("test", 1, "lint", Some("reports"), &["r/3.xml", "a.txt"]).await;
    // More artifacts of one job than search reads one by one: a scope
    // naming that job walks the run instead, with the same answer.
    for k in 0..17 {
        let (name, path) = (format!("w{k:02}"), format!("w/{k:02}/a.txt"));
        put("wide", 1, "fan", Some(&name), &[path.as_str()]).await;
    }
    let run = db.find_run("pages", 1).await.unwrap();
    let everything = db.run_files(&run.id).await.unwrap();
    assert_eq!(everything.len(), 36 + 17);
    // An artifact's count and size are those of its files, however many
    // uploads (`reports` had two) brought them.
    for a in db.list_artifacts(&run.id).await.unwrap() {
        let mine: Vec<&FileInfo> = everything
            .iter()
            .filter(|f| f.artifact_id == a.id)
            .collect();
        let size: u64 = mine.iter().map(|f| f.size).sum();
        assert_eq!(
            (a.file_count, a.size),
            (mine.len() as u64, size),
            "{}",
            a.name
        );
    }

    let globs = [
        "**",
        "*",
        "dir/**",
        "dir/*.txt",
        "dir/sub/a.txt",
        "dir",
        "d*/**",
        "{dir,r}/**",
        "**/a.txt",
        "dir/sub/**",
        "zzz/**",
        "dir-x/**",
        "dir/sub/deep/c.txt",
        "?.txt",
        "dir/[ab].*",
        "r/*.xml",
        "**/sub/a.txt",
        "w/**/a.txt",
    ];
    let scopes = [
        Scope::default(),
        Scope {
            include_retried: true,
            ..Scope::default()
        },
        Scope {
            job: Some("build".into()),
            ..Scope::default()
        },
        Scope {
            job: Some("test".into()),
            step: Some("unit".into()),
            ..Scope::default()
        },
        Scope {
            name: Some("reports".into()),
            ..Scope::default()
        },
        Scope {
            name: Some("default".into()),
            include_retried: true,
            ..Scope::default()
        },
        Scope {
            step: Some("compile".into()),
            include_retried: true,
            ..Scope::default()
        },
        Scope {
            job: Some("wide".into()),
            ..Scope::default()
        },
        Scope {
            job: Some("wide".into()),
            name: Some("w03".into()),
            ..Scope::default()
        },
    ];
    for g in globs {
        let glob = Glob::new(g).unwrap();
        for scope in &scopes {
            let want = query::search(&glob, scope, everything.clone());
            for (limit, budget) in [(1, 0), (2, 0), (3, 0), (7, 0), (1000, 0), (2, 3), (1000, 1)] {
                let what = format!("{g:?} in {scope:?}, pages of {limit}, budget {budget}");
                let pages = all_pages(limit, budget, |p| {
                    let (glob, scope, id) = (glob.clone(), scope.clone(), run.id.clone());
                    async move { db.search_files(&id, &glob, &scope, &p).await }
                })
                .await;
                let got: Vec<FileInfo> = pages.iter().flatten().cloned().collect();
                let ids = |v: &[FileInfo]| v.iter().map(|f| f.id.clone()).collect::<Vec<_>>();
                assert_eq!(ids(&got), ids(&want), "{what}");
                // Whole rows, producer included, as the run's file list has them.
                assert!(got == want, "{what}: rows differ from the run's files");
                let mut seen = std::collections::HashSet::new();
                for page in &pages {
                    let paths: std::collections::BTreeSet<&str> =
                        page.iter().map(|f| f.path.as_str()).collect();
                    for p in paths {
                        assert!(
                            seen.insert(p.to_string()),
                            "{what}: {p:?} split across pages"
                        );
                    }
                }
                if budget == 0 {
                    // Without a scan budget a page ends only once it is full.
                    for page in &pages[..pages.len() - 1] {
                        assert!(page.len() >= limit, "{what}: a short page before the last");
                    }
                }
                // Download rules page by page are the rules on the whole list.
                if glob.has_wildcards() {
                    let latest: Vec<FileInfo> = pages
                        .iter()
                        .flat_map(|p| query::select_for_download(&glob, scope, p.clone()).unwrap())
                        .collect();
                    let whole =
                        query::select_for_download(&glob, scope, everything.clone()).unwrap();
                    assert_eq!(ids(&latest), ids(&whole), "{what}: download selection");
                }
            }
        }
    }
    let bad = PageRequest {
        cursor: Some("not-a-cursor".into()),
        ..PageRequest::default()
    };
    let glob = Glob::new("**").unwrap();
    assert!(matches!(
        db.search_files(&run.id, &glob, &Scope::default(), &bad)
            .await,
        Err(DbError::Invalid(_))
    ));
    assert!(matches!(
        db.list_runs("pages", &bad).await,
        Err(DbError::Invalid(_))
    ));
    // A NUL byte in a filter is bad input on every backend, not a 500.
    for scope in [
        Scope {
            job: Some("a\0b".into()),
            ..Scope::default()
        },
        Scope {
            step: Some("\0".into()),
            ..Scope::default()
        },
        Scope {
            name: Some("x\0".into()),
            ..Scope::default()
        },
    ] {
        let e = db
            .search_files(&run.id, &glob, &scope, &PageRequest::first(10))
            .await;
        assert!(matches!(e, Err(DbError::Invalid(_))), "{scope:?}: {e:?}");
    }
    let nul_job = crate::ArtifactFilter {
        job: Some("\0".into()),
        include_retried: false,
    };
    let e = db
        .artifacts_page(&run.id, &nul_job, &PageRequest::first(10))
        .await;
    assert!(matches!(e, Err(DbError::Invalid(_))), "{e:?}");

    // Artifacts: all of them, by job, with and without retried attempts.
    let all = db.list_artifacts(&run.id).await.unwrap();
    for filter in [
        crate::ArtifactFilter::default(),
        crate::ArtifactFilter {
            include_retried: true,
            ..Default::default()
        },
        crate::ArtifactFilter {
            job: Some("build".into()),
            include_retried: true,
        },
        crate::ArtifactFilter {
            job: Some("test".into()),
            include_retried: false,
        },
    ] {
        let want: Vec<String> = all
            .iter()
            .filter(|a| filter.include_retried || !a.producer.superseded)
            .filter(|a| filter.job.as_deref().is_none_or(|j| a.producer.job == j))
            .map(|a| a.id.clone())
            .collect();
        assert!(!want.is_empty(), "{filter:?}");
        for limit in [1, 2, 1000] {
            let pages = all_pages(limit, 0, |p| {
                let (id, filter) = (run.id.clone(), filter.clone());
                async move { db.artifacts_page(&id, &filter, &p).await }
            })
            .await;
            let got: Vec<String> = pages.iter().flatten().map(|a| a.id.clone()).collect();
            assert_eq!(got, want, "{filter:?}, pages of {limit}");
        }
    }

    // An artifact's files.
    let default = all
        .iter()
        .find(|a| a.name == "default" && !a.producer.superseded)
        .unwrap();
    let want: Vec<String> = db
        .artifact_files(&default.id)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert_eq!(want.len(), tree.len());
    for limit in [1, 3, 1000] {
        let pages = all_pages(limit, 0, |p| {
            let id = default.id.clone();
            async move { db.artifact_files_page(&id, &p).await }
        })
        .await;
        let got: Vec<String> = pages.iter().flatten().map(|f| f.path.clone()).collect();
        assert_eq!(got, want, "files in pages of {limit}");
    }

    // Runs, newest first, page after page.
    for number in 2..=7 {
        db.create_run("pages", &satchel_model::api::NewRun::default())
            .await
            .unwrap();
        assert_eq!(db.find_run("pages", number).await.unwrap().number, number);
    }
    for limit in [1, 2, 4, 1000] {
        let pages = all_pages(limit, 0, |p| async move { db.list_runs("pages", &p).await }).await;
        let got: Vec<u64> = pages.iter().flatten().map(|r| r.number).collect();
        assert_eq!(got, vec![7, 6, 5, 4, 3, 2, 1], "runs in pages of {limit}");
    }
}

/// Leases on background work: one holder at a time, renewed by it,
/// taken over once expired or released; two racing takers, one winner.
async fn leases(db: &dyn MetaStore) {
    assert!(db.take_lease("gc", "a", 60_000).await.unwrap(), "free");
    assert!(
        !db.take_lease("gc", "b", 60_000).await.unwrap(),
        "a holds it"
    );
    assert!(db.take_lease("gc", "a", 60_000).await.unwrap(), "a renews");
    assert!(
        db.take_lease("sweep", "b", 60_000).await.unwrap(),
        "another lease"
    );
    // Expired (a negative time to live ends it at once): b takes over.
    assert!(db.take_lease("gc", "a", -1).await.unwrap());
    assert!(db.take_lease("gc", "b", 60_000).await.unwrap(), "expired");
    assert!(!db.take_lease("gc", "a", 60_000).await.unwrap(), "b's now");
    // Releasing is the holder's only.
    db.release_lease("gc", "a").await.unwrap();
    assert!(!db.take_lease("gc", "a", 60_000).await.unwrap());
    db.release_lease("gc", "b").await.unwrap();
    assert!(db.take_lease("gc", "a", 60_000).await.unwrap(), "released");
    // Racing for a free lease: exactly one wins.
    let takers: Vec<String> = (0..8).map(|i| format!("r{i}")).collect();
    let won =
        futures_util::future::join_all(takers.iter().map(|t| db.take_lease("race", t, 60_000)))
            .await;
    let winners = won.into_iter().filter(|w| *w.as_ref().unwrap()).count();
    assert_eq!(winners, 1, "racing takers");
    // What background work reports, latest first, with its age.
    assert!(db.background_status("rotation").await.unwrap().is_none());
    db.set_background_status("rotation", "{\"state\":\"running\"}")
        .await
        .unwrap();
    db.set_background_status("rotation", "{\"state\":\"done\"}")
        .await
        .unwrap();
    let (status, age) = db.background_status("rotation").await.unwrap().unwrap();
    assert_eq!(status, "{\"state\":\"done\"}");
    assert!((0..60_000).contains(&age), "{age} ms old");
}

/// What an upload may send, what an artifact holds, which blobs are
/// recorded and referenced, and expiry taking an artifact out of both.
async fn needs_blobs_and_expiry(db: &dyn MetaStore) {
    let (one, two) = ("1".repeat(64), "2".repeat(64));
    let mut up = upload(
        "x",
        1,
        Some("short-lived"),
        vec![file("e1", '1', 5), file("e2", '2', 6), file("e3", '1', 5)],
    );
    up.context.pipeline = "expiring".into();
    up.expire_in_secs = Some(1);
    let plan = db.create_upload(&up, &q()).await.unwrap();
    let needs = db.upload_needs(&plan.upload_id).await.unwrap();
    assert_eq!(needs.state, satchel_model::api::UploadState::Uploading);
    assert_eq!(needs.blobs.len(), 2, "one entry per digest");
    assert_eq!((needs.blobs[&one], needs.blobs[&two]), (5, 6));
    assert!(matches!(
        db.upload_needs(&"0".repeat(32)).await,
        Err(DbError::NotFound(_))
    ));
    db.record_blobs(&[(one.clone(), 5), (two.clone(), 6)])
        .await
        .unwrap();
    db.finish_upload(&plan.upload_id).await.unwrap();
    let mut paths: Vec<String> = db
        .artifact_files(&plan.artifact_id)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    paths.sort();
    assert_eq!(paths, ["e1", "e2", "e3"]);
    let recorded = db.recorded_blobs().await.unwrap();
    assert!(recorded.contains(&one) && recorded.contains(&two));
    let referenced = db.referenced_blobs().await.unwrap();
    assert!(
        referenced.contains(&(two.clone(), Some(6))),
        "{referenced:?}"
    );
    // Its run never passed, so nothing keeps it once its time is up.
    let later = satchel_model::id::now_millis() + 10_000;
    assert!(db.expire_artifacts(later).await.unwrap() >= 1);
    assert_eq!(
        db.get_artifact(&plan.artifact_id).await.unwrap().state,
        ArtifactState::Expired
    );
    let referenced = db.referenced_blobs().await.unwrap();
    assert!(
        !referenced.iter().any(|(d, _)| *d == two),
        "an expired artifact references nothing"
    );
    assert!(
        db.recorded_blobs().await.unwrap().contains(&two),
        "until GC"
    );
}

/// Storage figures: artifacts by state, logical bytes of finished
/// artifacts, and their distinct contents, per pipeline.
async fn storage_figures(db: &dyn MetaStore) {
    let (c, d) = ("5".repeat(64), "6".repeat(64));
    let mut up = upload(
        "x",
        1,
        Some("one"),
        vec![file("e1", '5', 5), file("e2", '6', 6), file("e3", '5', 5)],
    );
    up.context.pipeline = "figures".into();
    let first = db.create_upload(&up, &q()).await.unwrap();
    db.record_blobs(&[(c.clone(), 5), (d.clone(), 6)])
        .await
        .unwrap();
    db.finish_upload(&first.upload_id).await.unwrap();
    // Another artifact of the same content, and one still uploading.
    let mut again = upload("y", 1, Some("two"), vec![file("copy", '5', 5)]);
    again.context.pipeline = "figures".into();
    let second = db.create_upload(&again, &q()).await.unwrap();
    db.finish_upload(&second.upload_id).await.unwrap();
    let mut open = upload("z", 1, Some("three"), vec![file("big", '8', 100)]);
    open.context.pipeline = "figures".into();
    db.create_upload(&open, &q()).await.unwrap();
    // An upload still open into a finished artifact: its file is not
    // published, so it counts nowhere.
    let mut more = upload("x", 1, Some("one"), vec![file("later", '9', 9)]);
    more.context.pipeline = "figures".into();
    let more = db.create_upload(&more, &q()).await.unwrap();
    assert_eq!(more.artifact_id, first.artifact_id);

    let (all, stored) = db.storage_stats().await.unwrap();
    let p = all.iter().find(|p| p.pipeline == "figures").unwrap();
    assert_eq!(p.artifacts.get("finished"), Some(&2), "{p:?}");
    assert_eq!(p.artifacts.get("uploading"), Some(&1), "{p:?}");
    assert_eq!(p.logical_bytes, 21, "finished files only: {p:?}");
    assert_eq!(p.content_bytes, 11, "each content once: {p:?}");
    assert!((p.dedup_ratio() - 21.0 / 11.0).abs() < 1e-9);
    assert!(stored >= 11, "{stored}");
    let mut names: Vec<&str> = all.iter().map(|p| p.pipeline.as_str()).collect();
    let sorted = {
        let mut n = names.clone();
        n.sort_unstable();
        n
    };
    assert_eq!(names, sorted, "by key");
    names.dedup();
    assert_eq!(names.len(), all.len(), "each pipeline once");
    // A deleted artifact no longer counts.
    db.delete_artifact(&second.artifact_id).await.unwrap();
    let (all, _) = db.storage_stats().await.unwrap();
    let p = all.iter().find(|p| p.pipeline == "figures").unwrap();
    assert_eq!((p.logical_bytes, p.content_bytes), (16, 11), "{p:?}");
    assert_eq!(p.artifacts.get("deleted"), Some(&1), "{p:?}");
}

/// Re-recording a blob makes it young again, and forgetting honours the
/// cutoff even for a blob listed as a candidate before it was re-recorded
/// (a GitHub Actions upload commits its blob well before it references it).
async fn gc_grace(db: &dyn MetaStore) {
    let tick = || tokio::time::sleep(std::time::Duration::from_millis(5));
    let z = "9".repeat(64);
    db.record_blobs(&[(z.clone(), 9)]).await.unwrap();
    tick().await;
    let cutoff = satchel_model::id::now_millis();
    tick().await;
    let listed = db.unreferenced_blobs(cutoff, 1000).await.unwrap();
    assert!(listed.iter().any(|(d, _)| *d == z), "old and unreferenced");
    // Committed again (re-sent) after GC listed it.
    db.record_blobs(&[(z.clone(), 9)]).await.unwrap();
    let listed = db.unreferenced_blobs(cutoff, 1000).await.unwrap();
    assert!(
        !listed.iter().any(|(d, _)| *d == z),
        "re-recording refreshes a blob's age"
    );
    assert!(
        db.forget_blobs(std::slice::from_ref(&z), cutoff)
            .await
            .unwrap()
            .is_empty(),
        "a blob recorded after the cutoff is not forgotten"
    );
    assert!(db
        .known_blobs(std::slice::from_ref(&z))
        .await
        .unwrap()
        .contains(&z));
    tick().await;
    let later = satchel_model::id::now_millis();
    assert_eq!(
        db.forget_blobs(std::slice::from_ref(&z), later)
            .await
            .unwrap(),
        vec![z.clone()]
    );
    assert!(db.known_blobs(&[z]).await.unwrap().is_empty());
    // fsck's repair path forgets a blob outright (the end-to-end test
    // covers one that artifacts reference); recording it again restores it.
    let r = "7".repeat(64);
    db.record_blobs(&[(r.clone(), 1)]).await.unwrap();
    assert_eq!(
        db.unrecord_blobs(&[r.clone(), "8".repeat(64)])
            .await
            .unwrap(),
        1
    );
    assert!(db
        .known_blobs(std::slice::from_ref(&r))
        .await
        .unwrap()
        .is_empty());
    db.record_blobs(&[(r.clone(), 1)]).await.unwrap();
    assert!(!db.known_blobs(&[r]).await.unwrap().is_empty());
}

/// Runs, selectors, typed artifacts and packages.
async fn pipelines(db: &dyn MetaStore) {
    use satchel_model::api::{CreateTyped, NewRun, Promote, RunRef, SetRunState, SourceSpec};
    use satchel_model::selector::RunSelector;

    let state = |s: &str, branch: &str| SetRunState {
        state: satchel_model::api::RunState::parse(s).unwrap(),
        branch: Some(branch.into()),
        commit: None,
        failed_jobs: None,
    };
    // Runs are numbered per pipeline; states and branches select them.
    // Regression: a run numbered i64::MAX (an upload may name any run)
    // made SQLite's MAX(number) + 1 a float, so every later run creation
    // of that pipeline failed with a database error.
    let mut big = upload("a", 1, None, vec![file("h.txt", 'a', 3)]);
    big.context.pipeline = "huge".into();
    big.context.run = i64::MAX as u64;
    db.create_upload(&big, &q()).await.unwrap();
    let err = db.create_run("huge", &NewRun::default()).await.unwrap_err();
    assert!(matches!(err, DbError::Conflict(_)), "{err}");
    assert!(matches!(
        db.find_run("huge", u64::MAX).await,
        Err(DbError::NotFound(_))
    ));
    let r1 = db.create_run("up", &NewRun::default()).await.unwrap();
    let r2 = db.create_run("up", &NewRun::default()).await.unwrap();
    assert_eq!((r1.number, r2.number, r1.state.as_str()), (1, 2, "running"));
    db.set_run_state("up", 1, &state("passed", "main"))
        .await
        .unwrap();
    db.set_run_state("up", 2, &state("failed", "dev"))
        .await
        .unwrap();
    let r3 = db
        .set_run_state("up", 3, &state("passed", "dev"))
        .await
        .unwrap();
    assert!(r3.finished_at.is_some(), "set_run_state creates the run");
    // An unknown state never reaches the database: it is not a RunState.
    let done = serde_json::from_str::<SetRunState>(r#"{"state":"done"}"#).unwrap_err();
    assert!(
        done.to_string()
            .contains("unknown run state \"done\": use one of running, passed, failed, canceled"),
        "{done}"
    );
    let pick = |s: &str| s.parse::<RunSelector>().unwrap();
    for (sel, want) in [
        ("latest", 3),
        ("2", 2),
        ("lastSuccessfulBuild", 3),
        ("lastSuccessfulBuild:main", 1),
        ("latestFromBranch:dev", 3),
    ] {
        let run = db.select_run("up", &pick(sel), None).await.unwrap();
        assert_eq!(run.number, want, "{sel}");
    }
    let none = db
        .select_run("up", &pick("lastSuccessfulBuild:nope"), None)
        .await;
    assert!(matches!(none, Err(DbError::NotFound(m)) if m.contains("#3 passed on dev")));
    assert!(db
        .select_run("up", &pick("triggering"), None)
        .await
        .is_err());
    let trig = RunRef {
        pipeline: "up".into(),
        run: 2,
    };
    let t = db
        .select_run("up", &pick("triggering"), Some(&trig))
        .await
        .unwrap();
    assert_eq!(t.number, 2);

    // Sources are pinned at creation; an unmatched selector starts nothing.
    let mut req = NewRun::default();
    req.sources.insert(
        "src".into(),
        SourceSpec {
            pipeline: "up".into(),
            run: "lastSuccessfulBuild".into(),
        },
    );
    req.triggered_from = Some(trig);
    let down = db.create_run("down", &req).await.unwrap();
    assert_eq!(down.sources["src"].run, 3);
    assert_eq!(down.triggered_from.as_ref().unwrap().run, 2);
    req.sources.get_mut("src").unwrap().run = "lastSuccessfulBuild:gone".into();
    assert!(matches!(
        db.create_run("down", &req).await,
        Err(DbError::NotFound(m)) if m.contains("source \"src\"")
    ));
    assert_eq!(
        db.list_runs("down", &PageRequest::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    // Typed artifacts are finished at once and take the name for the run.
    let mut c = ctx("img", 1);
    c.pipeline = "down".into();
    let typed = |name: &str, job: &str| CreateTyped {
        context: JobContext {
            job: job.into(),
            ..c.clone()
        },
        name: name.into(),
        image: Some("example.com/app:1".into()),
        link: None,
        expire_in_secs: None,
    };
    let img = db.create_typed(&typed("app", "img"), &q()).await.unwrap();
    assert_eq!(img.state, ArtifactState::Finished);
    assert_eq!(img.image.as_ref().unwrap().tag.as_deref(), Some("1"));
    assert_eq!(img.steps, ["step"]);
    assert!(matches!(
        db.create_typed(&typed("app", "other"), &q()).await,
        Err(DbError::Conflict(m)) if m.contains("job \"img\"")
    ));
    assert!(matches!(
        db.create_typed(&typed("app", "img"), &q()).await,
        Err(DbError::Conflict(_))
    ));
    let jobs = db.list_jobs(&down.id).await.unwrap();
    assert!(jobs
        .iter()
        .any(|j| j.key == "img" && j.stage.as_deref() == Some("build")));

    // Promotion copies entries; versions are immutable; latest is newest.
    let promote = |v: &str| Promote {
        artifact_id: img.id.clone(),
        repository: "rel".into(),
        package: "app".into(),
        version: v.into(),
    };
    db.promote(&promote("1.0")).await.unwrap();
    assert!(matches!(
        db.promote(&promote("1.0")).await,
        Err(DbError::Conflict(_))
    ));
    db.promote(&promote("1.1")).await.unwrap();
    // Versions page newest first; more versions, some promoted within one
    // millisecond, so the order within it (insertion) matters too.
    for v in ["1.0", "1.1", "1.2", "1.3", "1.4", "2.0"] {
        let to_paged = Promote {
            repository: "paged".into(),
            ..promote(v)
        };
        db.promote(&to_paged).await.unwrap();
    }
    let all = db
        .list_packages("paged", None, &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(all.next, None);
    let versions: Vec<&str> = all.items.iter().map(|p| p.version.as_str()).collect();
    assert_eq!(versions, ["2.0", "1.4", "1.3", "1.2", "1.1", "1.0"]);
    for limit in [1, 2, 4] {
        let pages = all_pages(limit, 0, |p| async move {
            db.list_packages("paged", Some("app"), &p).await
        })
        .await;
        assert!(pages.iter().all(|p| p.len() <= limit));
        let paged: Vec<&str> = pages.iter().flatten().map(|p| p.version.as_str()).collect();
        assert_eq!(paged, versions, "pages of {limit}");
    }
    // Repositories by key with their version counts, per organization.
    let repos = db.package_repositories(Some("default")).await.unwrap();
    for want in [("paged".to_string(), 6), ("rel".to_string(), 2)] {
        assert!(repos.contains(&want), "{want:?} in {repos:?}");
    }
    let mut keys: Vec<&str> = repos.iter().map(|(r, _)| r.as_str()).collect();
    let listed = keys.clone();
    keys.sort_unstable();
    assert_eq!(listed, keys, "by key");
    let every = db.package_repositories(None).await.unwrap();
    assert!(repos.iter().all(|r| every.contains(r)), "{every:?}");
    assert!(db
        .package_repositories(Some("no-such-org"))
        .await
        .unwrap()
        .is_empty());
    let bad = PageRequest {
        cursor: Some("zz".into()),
        ..PageRequest::default()
    };
    assert!(matches!(
        db.list_packages("paged", None, &bad).await,
        Err(DbError::Invalid(_))
    ));
    let latest = db.get_package("rel", "app", None).await.unwrap();
    assert_eq!(latest.package.version, "1.1");
    assert_eq!(latest.package.origin.artifact, "app");
    db.delete_artifact(&img.id).await.unwrap();
    let kept = db.get_package("rel", "app", Some("1.0")).await.unwrap();
    assert_eq!(kept.package.kind, "image");
    assert_eq!(
        db.list_packages("rel", None, &PageRequest::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    assert!(matches!(
        db.get_package("rel", "app", Some("9")).await,
        Err(DbError::NotFound(_))
    ));
}

/// Writers racing for one name in a run, one run number, one default
/// artifact: the database decides, never a check-then-insert. Each round
/// starts every writer at once.
async fn races(db: &dyn MetaStore) {
    use futures_util::future::join_all;
    use satchel_model::api::NewRun;

    const WRITERS: usize = 8;
    let quotas = q();
    let quotas = &quotas;
    let new_run = NewRun::default();
    let new_run = &new_run;
    for round in 0..10u64 {
        let pipeline = format!("race-{round}");
        // The run exists, so the writers do not queue on creating it.
        let running = satchel_model::api::SetRunState {
            state: satchel_model::api::RunState::Running,
            branch: None,
            commit: None,
            failed_jobs: None,
        };
        db.set_run_state(&pipeline, 7, &running).await.unwrap();
        let reqs: Vec<CreateUpload> = (0..WRITERS)
            .map(|i| {
                let mut u = upload(&format!("job-{i}"), 1, Some("shared"), vec![]);
                u.context.pipeline = pipeline.clone();
                u.context.run = 7;
                // Recording a branch would update (and lock) the run row.
                u.context.branch = None;
                u
            })
            .collect();
        let results = join_all(reqs.iter().map(|r| db.create_upload(r, quotas))).await;
        let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
        assert_eq!(
            won.len(),
            1,
            "round {round}: one job wins the name: {results:?}"
        );
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(e, DbError::Conflict(m) if m.contains("already exists")),
                    "round {round}: the losers get the name conflict, got {e:?}"
                );
            }
        }
        let runs = db
            .list_runs(&pipeline, &PageRequest::default())
            .await
            .unwrap()
            .items;
        assert_eq!(runs.len(), 1, "round {round}: one run was created");

        // The default artifact of one job: both uploads land in it.
        let mut both = upload("solo", 1, None, vec![]);
        both.context.pipeline = pipeline.clone();
        both.context.run = 8;
        let (a, b) = futures_util::join!(
            db.create_upload(&both, quotas),
            db.create_upload(&both, quotas)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(
            a.artifact_id, b.artifact_id,
            "round {round}: one default artifact"
        );

        // Two uploads of one artifact failing at once: the artifact ends
        // failed (and so frees its name), whichever aborts first.
        let mut doomed = upload("twice", 1, Some("doomed"), vec![file("d.txt", 'd', 1)]);
        doomed.context.pipeline = pipeline.clone();
        doomed.context.run = 9;
        let p1 = db.create_upload(&doomed, quotas).await.unwrap();
        let p2 = db.create_upload(&doomed, quotas).await.unwrap();
        let (x, y) = futures_util::join!(
            db.abort_upload(&p1.upload_id),
            db.abort_upload(&p2.upload_id)
        );
        x.unwrap();
        y.unwrap();
        assert_eq!(
            db.get_artifact(&p1.artifact_id).await.unwrap().state,
            ArtifactState::Error,
            "round {round}: both uploads failed"
        );

        // Run numbers: each new run gets its own.
        let numbers = join_all((0..WRITERS).map(|_| db.create_run(&pipeline, new_run)))
            .await
            .into_iter()
            .map(|r| r.unwrap().number)
            .collect::<std::collections::BTreeSet<_>>();
        assert_eq!(
            numbers.len(),
            WRITERS,
            "round {round}: distinct run numbers"
        );
        assert_eq!(numbers.last(), Some(&(9 + WRITERS as u64)));
    }
}

/// A job's artifact whose uploads all failed holds no name; once the job
/// uploads into it again it holds its name again, so another job cannot
/// take the name meanwhile (both would otherwise finish one name twice).
async fn reused_failed_artifact_holds_its_name(db: &dyn MetaStore) {
    let in_run = |job: &str| {
        let mut u = upload(job, 1, Some("revived"), vec![file("r.txt", 'e', 5)]);
        u.context.pipeline = "revive".into();
        u
    };
    let first = db.create_upload(&in_run("owner"), &q()).await.unwrap();
    db.abort_upload(&first.upload_id).await.unwrap();
    assert_eq!(
        db.get_artifact(&first.artifact_id).await.unwrap().state,
        ArtifactState::Error
    );
    let again = db.create_upload(&in_run("owner"), &q()).await.unwrap();
    assert_eq!(
        again.artifact_id, first.artifact_id,
        "the job's own artifact is reused"
    );
    assert_eq!(
        db.get_artifact(&first.artifact_id).await.unwrap().state,
        ArtifactState::Uploading
    );
    match db.create_upload(&in_run("intruder"), &q()).await {
        Err(DbError::Conflict(m)) => assert!(m.contains("already exists"), "{m}"),
        other => panic!("another job took the name of an artifact being uploaded: {other:?}"),
    }
}

/// `replace` (GitHub's `overwrite: true`): the replacing artifact is new,
/// the old one stays live until it finishes, and finishing deletes the old
/// one in the same transaction; an aborted replacement leaves it; another
/// job's artifact still uploading stays a conflict.
async fn replacing_swaps_on_finish(db: &dyn MetaStore) {
    let digest = |sha: char| format!("{:0>64}", format!("5e9{sha}"));
    let attempt = |job: &str, n: u32, sha: char, replace: bool| {
        let f = NewFile {
            sha256: digest(sha),
            ..file("r.txt", sha, 3)
        };
        let mut u = upload(job, n, Some("report"), vec![f]);
        u.context.pipeline = "replacing".into();
        u.exclusive = true;
        u.replace = replace;
        u
    };
    let in_run = |job: &str, sha: char, replace: bool| attempt(job, 1, sha, replace);
    let live = |run: String| async move {
        db.list_artifacts(&run)
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.state == ArtifactState::Finished)
            .map(|a| (a.producer.job, a.id))
            .collect::<Vec<_>>()
    };
    db.record_blobs(&[(digest('1'), 3), (digest('2'), 3), (digest('3'), 3)])
        .await
        .unwrap();
    let first = db
        .create_upload(&in_run("a", '1', false), &q())
        .await
        .unwrap();
    db.finish_upload(&first.upload_id).await.unwrap();
    let run = db.find_run("replacing", 1).await.unwrap().id;
    assert!(matches!(
        db.create_upload(&in_run("a", '2', false), &q()).await,
        Err(DbError::Conflict(_))
    ));
    // Replaced by its own job: a new artifact, the old one live meanwhile.
    let second = db
        .create_upload(&in_run("a", '2', true), &q())
        .await
        .unwrap();
    assert_ne!(second.artifact_id, first.artifact_id);
    assert_eq!(second.replaces, vec![first.artifact_id.clone()]);
    assert_eq!(
        live(run.clone()).await,
        [("a".into(), first.artifact_id.clone())]
    );
    // While it uploads, another job cannot take the name, nor can the job
    // add files to the artifact being replaced.
    assert!(matches!(
        db.create_upload(&in_run("b", '3', true), &q()).await,
        Err(DbError::Conflict(_))
    ));
    let mut plain = in_run("a", '3', false);
    plain.exclusive = false;
    plain.files[0].path = "more.txt".into();
    match db.create_upload(&plain, &q()).await {
        Err(DbError::Conflict(m)) => assert!(m.contains("is being replaced"), "{m}"),
        other => panic!("added to an artifact being replaced: {other:?}"),
    }
    db.finish_upload(&second.upload_id).await.unwrap();
    assert_eq!(
        live(run.clone()).await,
        [("a".into(), second.artifact_id.clone())]
    );
    assert_eq!(
        db.get_artifact(&first.artifact_id)
            .await
            .map(|a| a.state)
            .ok(),
        None,
        "the replaced artifact is deleted"
    );
    // Finishing again changes nothing; an aborted replacement leaves the
    // artifact it would have replaced.
    db.finish_upload(&second.upload_id).await.unwrap();
    assert_eq!(
        live(run.clone()).await,
        [("a".into(), second.artifact_id.clone())]
    );
    let third = db
        .create_upload(&in_run("b", '3', true), &q())
        .await
        .unwrap();
    db.abort_upload(&third.upload_id).await.unwrap();
    assert_eq!(
        live(run.clone()).await,
        [("a".into(), second.artifact_id.clone())]
    );
    // An aborted replacement by the job itself frees the name beside its
    // artifact: plain uploads add to that artifact again.
    let own = db
        .create_upload(&in_run("a", '3', true), &q())
        .await
        .unwrap();
    db.abort_upload(&own.upload_id).await.unwrap();
    let added = db.create_upload(&plain, &q()).await.unwrap();
    assert_eq!(added.artifact_id, second.artifact_id);
    db.abort_upload(&added.upload_id).await.unwrap();
    // A replacement whose own artifact was deleted meanwhile replaces
    // nothing: the old one stays.
    let gone = db
        .create_upload(&in_run("a", '3', true), &q())
        .await
        .unwrap();
    db.delete_artifact(&gone.artifact_id).await.unwrap();
    assert!(matches!(
        db.finish_upload(&gone.upload_id).await,
        Err(DbError::Conflict(_))
    ));
    assert_eq!(
        live(run.clone()).await,
        [("a".into(), second.artifact_id.clone())]
    );
    // Another job replaces it.
    let fourth = db
        .create_upload(&in_run("b", '3', true), &q())
        .await
        .unwrap();
    db.finish_upload(&fourth.upload_id).await.unwrap();
    assert_eq!(
        live(run.clone()).await,
        [("b".into(), fourth.artifact_id.clone())]
    );
    // A retry of that job gets its own copy, as without `replace`: the
    // earlier attempt's artifact is not replaced (it is superseded).
    let retry = db
        .create_upload(&attempt("b", 2, '1', true), &q())
        .await
        .unwrap();
    assert!(retry.replaces.is_empty(), "{:?}", retry.replaces);
    db.finish_upload(&retry.upload_id).await.unwrap();
    assert_eq!(
        db.get_artifact(&fourth.artifact_id).await.unwrap().state,
        ArtifactState::Finished
    );
}

/// A manifest larger than one multi-row statement (the rules batch rows):
/// what is missing, recording, finishing and listing all see every file.
async fn large_manifest(db: &dyn MetaStore) {
    const N: usize = 1_201;
    let digest = |i: usize| format!("{:064x}", 0xbeef_0000 + i);
    let files: Vec<NewFile> = (0..N)
        .map(|i| NewFile {
            sha256: digest(i),
            ..file(&format!("many/{i:04}.txt"), 'x', 7)
        })
        .collect();
    // Every third blob is held already; one size lie far in is refused.
    let held: Vec<(String, u64)> = (0..N).step_by(3).map(|i| (digest(i), 7)).collect();
    db.record_blobs(&held).await.unwrap();
    let mut u = upload("many", 1, Some("many"), files.clone());
    u.context.pipeline = "large".into();
    // Held content named once, in the last batch of digests, with a size
    // that is not its own.
    db.record_blobs(&[(digest(99_999), 7)]).await.unwrap();
    let mut lie = u.clone();
    lie.files[1_199].size = 8;
    lie.files[1_199].sha256 = digest(99_999);
    assert!(matches!(
        db.create_upload(&lie, &q()).await,
        Err(DbError::SizeMismatch(_))
    ));
    let plan = db.create_upload(&u, &q()).await.unwrap();
    assert_eq!(plan.missing.len(), N - held.len(), "all but the held ones");
    assert!(!plan.missing.contains(&digest(600)) && plan.missing.contains(&digest(601)));
    let known = db
        .known_blobs(&(0..N).map(digest).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(known.len(), held.len());
    let rest: Vec<(String, u64)> = plan.missing.iter().map(|d| (d.clone(), 7)).collect();
    db.record_blobs(&rest).await.unwrap();
    let done = db.finish_upload(&plan.upload_id).await.unwrap();
    assert_eq!(done.files_added, N as u64);
    assert_eq!(db.artifact_files(&plan.artifact_id).await.unwrap().len(), N);
}

/// Organizations, clusters, pipelines' homes, tokens, rules and the audit
/// log: uniqueness, defaults, moves, revocation and paging.
async fn access(db: &dyn MetaStore) {
    use satchel_model::access::{AuditEntry, AuditQuery, NewToken, RuleEnd, Scope};

    use crate::{NewRuleRow, TokenRow};

    // The default organization and cluster exist without being made, and
    // pipelines made by uploads (earlier in the story) live there.
    let orgs = db.list_orgs().await.unwrap();
    assert!(orgs.iter().any(|o| o.name == "default"), "{orgs:?}");
    let home = db
        .pipeline_home("pipe")
        .await
        .unwrap()
        .expect("pipe exists");
    assert_eq!(
        (home.org.as_str(), home.cluster.as_str()),
        ("default", "default")
    );
    assert!(db.pipeline_home("nowhere").await.unwrap().is_none());

    db.create_org("acme").await.unwrap();
    assert!(matches!(
        db.create_org("acme").await,
        Err(DbError::Conflict(_))
    ));
    assert!(matches!(
        db.create_cluster("nope", "x").await,
        Err(DbError::NotFound(_))
    ));
    db.create_cluster("acme", "build").await.unwrap();
    db.create_cluster("acme", "release").await.unwrap();
    assert!(matches!(
        db.create_cluster("acme", "build").await,
        Err(DbError::Conflict(_))
    ));
    let clusters = db.list_clusters().await.unwrap();
    assert!(clusters
        .iter()
        .any(|c| c.org == "acme" && c.name == "release"));

    // A pipeline's key is unique on the server: a second creation anywhere
    // conflicts; ensure finds it where it is.
    let p = db.create_pipeline("app", "acme", "build").await.unwrap();
    assert_eq!(p.cluster, "build");
    // The conflict tells another organization nothing about where the
    // key lives; its own organization learns the cluster.
    match db.create_pipeline("app", "default", "default").await {
        Err(DbError::Conflict(m)) => assert!(!m.contains("acme") && !m.contains("build"), "{m}"),
        other => panic!("{other:?}"),
    }
    match db.create_pipeline("app", "acme", "release").await {
        Err(DbError::Conflict(m)) => assert!(m.contains("\"build\""), "{m}"),
        other => panic!("{other:?}"),
    }
    let p = db
        .ensure_pipeline_in("app", "default", "default")
        .await
        .unwrap();
    assert_eq!((p.org.as_str(), p.cluster.as_str()), ("acme", "build"));
    let p = db
        .ensure_pipeline_in("lib", "acme", "release")
        .await
        .unwrap();
    assert_eq!(p.cluster, "release");
    // An upload of a pipeline that exists elsewhere keeps it there.
    let mut u = upload("a", 1, Some("lib-out"), vec![]);
    u.context.pipeline = "lib".into();
    db.create_upload(&u, &q()).await.unwrap();
    assert_eq!(
        db.pipeline_home("lib").await.unwrap().unwrap().cluster,
        "release"
    );
    let moved = db.move_pipeline("lib", "acme", "build").await.unwrap();
    assert_eq!(moved.cluster, "build");
    assert_eq!(
        db.list_runs("lib", &PageRequest::default())
            .await
            .unwrap()
            .items
            .len(),
        1,
        "runs move along"
    );
    assert!(matches!(
        db.move_pipeline("lib", "acme", "nope").await,
        Err(DbError::NotFound(_))
    ));
    assert!(matches!(
        db.move_pipeline("ghost", "acme", "build").await,
        Err(DbError::NotFound(_))
    ));
    let of_acme = db.list_pipelines(Some("acme")).await.unwrap();
    assert_eq!(
        of_acme.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["app", "lib"]
    );

    // Tokens: found by hash, listed, revoked; a hash is unique.
    let row = |id: &str, hash: &str, spec: NewToken| TokenRow {
        id: id.into(),
        hash: hash.into(),
        spec,
        expires_at_ms: Some(4_000_000_000_000),
    };
    let job = NewToken {
        name: "job".into(),
        scopes: vec![Scope::Read, Scope::Write],
        org: Some("acme".into()),
        cluster: Some("build".into()),
        pipeline: Some("app".into()),
        run: Some(3),
        job: Some("test".into()),
        attempt: Some(2),
        expires_in_secs: None,
    };
    let t = db
        .create_token(&row("tok1", &"1".repeat(64), job.clone()))
        .await
        .unwrap();
    assert_eq!(t.scopes, [Scope::Read, Scope::Write]);
    assert_eq!(
        (t.run, t.job.as_deref(), t.attempt),
        (Some(3), Some("test"), Some(2))
    );
    assert!(
        db.create_token(&row("tok2", &"1".repeat(64), job.clone()))
            .await
            .is_err(),
        "a hash is unique"
    );
    let mut bad = job.clone();
    bad.cluster = Some("nope".into());
    assert!(matches!(
        db.create_token(&row("tok3", &"3".repeat(64), bad)).await,
        Err(DbError::NotFound(_))
    ));
    let plain = NewToken {
        scopes: vec![Scope::Read],
        ..NewToken::default()
    };
    let d = db
        .create_token(&row("tok4", &"4".repeat(64), plain))
        .await
        .unwrap();
    assert_eq!((d.org.as_str(), d.cluster.as_str()), ("default", "default"));
    let found = db.token_by_hash(&"1".repeat(64)).await.unwrap().unwrap();
    assert_eq!(found, t);
    assert!(found.is_live(satchel_model::id::now_millis()));
    assert!(db.token_by_hash(&"9".repeat(64)).await.unwrap().is_none());
    assert_eq!(
        db.list_tokens(Some("acme")).await.unwrap(),
        std::slice::from_ref(&t)
    );
    assert_eq!(db.list_tokens(None).await.unwrap().len(), 2);
    let r = db.revoke_token("tok1").await.unwrap();
    assert!(!r.is_live(satchel_model::id::now_millis()));
    let again = db.revoke_token("tok1").await.unwrap();
    assert_eq!(again.revoked_at, r.revoked_at, "the first revocation stays");
    assert!(!db.token_by_id("tok1").await.unwrap().unwrap().is_live(0));
    assert!(matches!(
        db.revoke_token("ghost").await,
        Err(DbError::NotFound(_))
    ));

    // Rules: either end a pipeline or a cluster of the organization.
    let rule = db
        .create_rule(&NewRuleRow {
            kind: satchel_model::access::ARTIFACTS_READ.into(),
            org: "acme".into(),
            source: RuleEnd::Cluster("build".into()),
            target: RuleEnd::Pipeline("lib".into()),
            condition: Some("source.build.branch == 'main'".into()),
        })
        .await
        .unwrap();
    assert_eq!(rule.source, RuleEnd::Cluster("build".into()));
    assert!(matches!(
        db.create_rule(&NewRuleRow {
            kind: satchel_model::access::ARTIFACTS_READ.into(),
            org: "acme".into(),
            source: RuleEnd::Cluster("nope".into()),
            target: RuleEnd::Pipeline("lib".into()),
            condition: None,
        })
        .await,
        Err(DbError::NotFound(_))
    ));
    assert_eq!(
        db.list_rules(Some("acme")).await.unwrap(),
        std::slice::from_ref(&rule)
    );
    assert!(db.list_rules(Some("default")).await.unwrap().is_empty());
    assert_eq!(db.delete_rule(&rule.id).await.unwrap(), rule);
    assert!(matches!(
        db.delete_rule(&rule.id).await,
        Err(DbError::NotFound(_))
    ));

    // The audit log pages newest first by id, filters, and prunes by age.
    let entry = |i: u32, allowed: bool| AuditEntry {
        id: format!("{:032x}", 1000 + i),
        at: satchel_model::id::rfc3339_millis(i64::from(i) * 1000),
        at_ms: i64::from(i) * 1000,
        token_id: Some(if i.is_multiple_of(2) { "tok1" } else { "tok4" }.into()),
        token_name: None,
        org: Some("acme".into()),
        action: "GET /api/v1/x".into(),
        resource: format!("pipeline=app n={i}"),
        allowed,
        status: if allowed { 200 } else { 403 },
        reason: (!allowed).then(|| "no".into()),
        client: Some("127.0.0.1".into()),
        user_agent: None,
    };
    let entries: Vec<AuditEntry> = (0..1203).map(|i| entry(i, i % 3 != 0)).collect();
    db.append_audit(&entries).await.unwrap();
    db.append_audit(&entries[..5]).await.unwrap();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = db
            .list_audit(&AuditQuery {
                cursor: cursor.clone(),
                limit: Some(500),
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        seen.extend(page.entries.iter().map(|e| e.resource.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let want: Vec<String> = entries.iter().rev().map(|e| e.resource.clone()).collect();
    assert_eq!(seen, want, "every entry once, newest first, across pages");
    let denied = db
        .list_audit(&AuditQuery {
            denied: true,
            token: Some("tok1".into()),
            since_ms: Some(600_000),
            limit: Some(1000),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert!(!denied.entries.is_empty());
    assert!(denied
        .entries
        .iter()
        .all(|e| !e.allowed && e.token_id.as_deref() == Some("tok1") && e.at_ms >= 600_000));
    assert_eq!(
        denied.entries.len(),
        (600..1203).filter(|i| i % 6 == 0).count()
    );
    assert_eq!(
        db.list_audit(&AuditQuery {
            org: Some("other".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap()
        .entries
        .len(),
        0
    );
    assert_eq!(db.prune_audit(100_000).await.unwrap(), 100);
    let older = db
        .list_audit(&AuditQuery {
            cursor: Some(entries[101].id.clone()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        older.entries,
        [entries[100].clone()],
        "only the pruned are gone"
    );

    // Content held for one organization is owed by another's upload until
    // that upload sends it; its own organization's uploads dedup it.
    let a = "a".repeat(64);
    let mut u = upload("claim", 1, Some("claim"), vec![file("c.txt", 'a', 3)]);
    u.context.pipeline = "app".into();
    let plan = db
        .create_upload_proving(&u, &q(), Some(("acme", "build")))
        .await
        .unwrap();
    assert_eq!(
        plan.missing,
        std::slice::from_ref(&a),
        "held, but not by acme"
    );
    assert!(matches!(
        db.finish_upload(&plan.upload_id).await,
        Err(DbError::Conflict(_))
    ));
    db.record_blobs_for(&plan.upload_id, &[(a.clone(), 3)])
        .await
        .unwrap();
    db.finish_upload(&plan.upload_id).await.unwrap();
    let mut u = upload("own", 1, Some("own"), vec![file("c.txt", 'a', 3)]);
    u.context.pipeline = "pipe".into();
    let plan = db
        .create_upload_proving(&u, &q(), Some(("default", "default")))
        .await
        .unwrap();
    assert!(plan.missing.is_empty(), "held by its own cluster");
    let own = db.finish_upload(&plan.upload_id).await.unwrap();
    // Another cluster of acme owes it too: held per cluster.
    let mut u = upload("rel", 1, Some("rel"), vec![file("c.txt", 'a', 3)]);
    u.context.pipeline = "lib".into();
    db.move_pipeline("lib", "acme", "release").await.unwrap();
    let plan = db
        .create_upload_proving(&u, &q(), Some(("acme", "release")))
        .await
        .unwrap();
    assert_eq!(
        plan.missing,
        std::slice::from_ref(&a),
        "held by build, not release"
    );
    db.abort_upload(&plan.upload_id).await.unwrap();

    // A package repository is its first organization's.
    let claimed = db
        .list_artifacts(&db.find_run("app", 1).await.unwrap().id)
        .await
        .unwrap();
    let claimed = claimed.iter().find(|x| x.name == "claim").unwrap();
    let promote = |id: &str, version: &str| satchel_model::api::Promote {
        artifact_id: id.to_string(),
        repository: "shared".into(),
        package: "p".into(),
        version: version.into(),
    };
    db.promote(&promote(&claimed.id, "1")).await.unwrap();
    assert!(matches!(
        db.promote(&promote(&own.artifact.id, "2")).await,
        Err(DbError::Forbidden(_))
    ));
    db.promote(&promote(&claimed.id, "3")).await.unwrap();

    // A shared secret: the first candidate stays.
    assert_eq!(db.shared_secret("signing", "aa").await.unwrap(), "aa");
    assert_eq!(db.shared_secret("signing", "bb").await.unwrap(), "aa");
    assert_eq!(db.shared_secret("other", "cc").await.unwrap(), "cc");
}

/// GitHub Actions uploads in progress: blocks under a byte cap, commits,
/// replacement, reaping, and the hold their rows keep on their blobs.
async fn gha_uploads(db: &dyn MetaStore) {
    use crate::{GhaBlock, GhaCommitted, GhaKey, GhaUpload};
    let key = |name: &str| GhaKey {
        pipeline: "gha".into(),
        run: 1,
        job: "build".into(),
        name: name.into(),
    };
    let upload = |id: &str, name: &str| GhaUpload {
        id: id.into(),
        key: key(name),
        file_name: format!("{name}.zip"),
        mime: "application/zip".into(),
        committed: None,
    };
    let block = |b: &str, sha: char, size: u64| GhaBlock {
        block: b.into(),
        sha256: sha.to_string().repeat(64),
        size,
    };
    let unreferenced = |cutoff| async move {
        db.unreferenced_blobs(cutoff, 100_000)
            .await
            .unwrap()
            .into_iter()
            .map(|(d, _)| d)
            .collect::<std::collections::HashSet<_>>()
    };
    let before = db.gha_count().await.unwrap();
    db.gha_start(&upload("g1", "a")).await.unwrap();
    let (u, held) = db.gha_touch("g1", None).await.unwrap().unwrap();
    assert_eq!(
        (u.file_name.as_str(), u.committed.is_none(), held),
        ("a.zip", true, 0)
    );
    assert!(db.gha_touch("nope", None).await.unwrap().is_none());
    // The cap counts a replaced block at its new size only.
    assert!(db
        .gha_put_block("g1", &block("01", 'c', 6), 10)
        .await
        .unwrap());
    assert!(
        !db.gha_put_block("g1", &block("02", 'd', 6), 10)
            .await
            .unwrap(),
        "over the cap"
    );
    assert!(db
        .gha_put_block("g1", &block("01", 'c', 4), 10)
        .await
        .unwrap());
    assert!(db
        .gha_put_block("g1", &block("02", 'd', 6), 10)
        .await
        .unwrap());
    assert_eq!(db.gha_touch("g1", Some("01")).await.unwrap().unwrap().1, 6);
    assert_eq!(db.gha_touch("g1", None).await.unwrap().unwrap().1, 10);
    let listed = db
        .gha_blocks("g1", &["02".into(), "09".into(), "02".into(), "01".into()])
        .await
        .unwrap();
    assert_eq!(
        listed,
        vec![
            Some(block("02", 'd', 6)),
            None,
            Some(block("02", 'd', 6)),
            Some(block("01", 'c', 4))
        ]
    );
    // Recorded as stored, and held from GC while the upload lives.
    let (c, d) = ("c".repeat(64), "d".repeat(64));
    assert_eq!(
        db.known_blobs(&[c.clone(), d.clone()]).await.unwrap().len(),
        2
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let later = satchel_model::id::now_millis();
    let free = unreferenced(later).await;
    assert!(!free.contains(&c) && !free.contains(&d), "blocks are held");
    let done = GhaCommitted {
        list: "l".repeat(64),
        sha256: "0123456789abcdef".repeat(4),
        size: 10,
    };
    assert!(db.gha_commit("g1", &done).await.unwrap());
    assert!(!db.gha_commit("nope", &done).await.unwrap());
    let found = db.gha_find(&key("a")).await.unwrap().unwrap();
    assert_eq!(found.committed.as_ref(), Some(&done));
    assert_eq!(
        db.gha_blocks("g1", &["01".into()]).await.unwrap(),
        vec![None],
        "blocks dropped"
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let free = unreferenced(satchel_model::id::now_millis()).await;
    assert!(
        free.contains(&c) && free.contains(&d),
        "dropped blocks are garbage"
    );
    assert!(!free.contains(&done.sha256), "the committed blob is held");
    // A new start of the same name replaces the upload and its hold.
    db.gha_start(&upload("g2", "a")).await.unwrap();
    assert!(db.gha_touch("g1", None).await.unwrap().is_none());
    assert!(matches!(
        db.gha_put_block("g1", &block("01", 'c', 1), 10).await,
        Err(DbError::NotFound(_))
    ));
    assert_eq!(db.gha_find(&key("a")).await.unwrap().unwrap().id, "g2");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert!(unreferenced(satchel_model::id::now_millis())
        .await
        .contains(&done.sha256));
    // Racing starts of one name leave one upload; racing blocks of one
    // upload never pass its cap together.
    let starts: Vec<_> = (0..8)
        .map(|i| {
            let u = upload(&format!("r{i}"), "raced");
            async move { db.gha_start(&u).await }
        })
        .collect();
    for r in futures_util::future::join_all(starts).await {
        r.unwrap();
    }
    assert_eq!(db.gha_count().await.unwrap(), before + 2);
    let id = db.gha_find(&key("raced")).await.unwrap().unwrap().id;
    let puts: Vec<_> = (0..8u64)
        .map(|i| {
            let (id, b) = (id.clone(), block(&format!("{i:02}"), 'f', 3));
            async move { db.gha_put_block(&id, &b, 10).await.unwrap() }
        })
        .collect();
    let won = futures_util::future::join_all(puts)
        .await
        .iter()
        .filter(|w| **w)
        .count();
    assert_eq!(won, 3, "three blocks of 3 bytes fit under 10");
    assert_eq!(db.gha_touch(&id, None).await.unwrap().unwrap().1, 9);
    // The protocol's artifacts of a run: files whose glob says so, of the
    // latest attempt of their job, oldest first.
    let digest = |n: u64| format!("{:064x}", 0x9a51_0000 + n);
    let gh = |job: &str, attempt: u32, name: &str, glob: &str, n: u64| {
        let mut u = self::upload(
            job,
            attempt,
            Some(name),
            vec![NewFile {
                glob: Some(glob.into()),
                sha256: digest(n),
                ..file(&format!("{name}.zip"), '0', 7)
            }],
        );
        u.context.pipeline = "ghafiles".into();
        u
    };
    db.record_blobs(&[(digest(1), 7), (digest(2), 7), (digest(3), 7)])
        .await
        .unwrap();
    for u in [
        gh("a", 1, "zip", "gha-zip", 1),
        gh("b", 1, "old", "gha-raw", 2),
        gh("b", 2, "raw", "gha-raw", 2),
        gh("c", 1, "mine", "gha-zip-not", 3),
    ] {
        let plan = db.create_upload(&u, &q()).await.unwrap();
        db.finish_upload(&plan.upload_id).await.unwrap();
    }
    let run = db.find_run("ghafiles", 1).await.unwrap();
    let names: Vec<String> = db
        .gha_files(&run.id)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.artifact_name)
        .collect();
    assert_eq!(names, ["zip", "raw"]);
    // Reaping drops only uploads idle for longer than asked.
    assert_eq!(db.gha_reap(60_000).await.unwrap(), 0);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(db.gha_reap(10).await.unwrap(), 2);
    assert_eq!(db.gha_count().await.unwrap(), before);
}

/// A DeleteArtifact is pending until the same job publishes the name (a
/// swap in one transaction) or, with no upload in progress, until the wait
/// runs out; views hold their artifacts' content from GC until dropped.
async fn gha_views(db: &dyn MetaStore) {
    use crate::{GhaKey, GhaUpload, GhaViewKind};
    let digest = |n: u64| format!("{:064x}", 0x71e3_0000 + n);
    let key = |job: &str, name: &str| GhaKey {
        pipeline: "ghaviews".into(),
        run: 1,
        job: job.into(),
        name: name.into(),
    };
    let manifest = |job: &str, name: &str, n: u64| {
        let mut u = upload(
            job,
            1,
            Some(name),
            vec![NewFile {
                glob: Some("gha-zip".into()),
                sha256: digest(n),
                ..file(&format!("{name}.zip"), '0', 9)
            }],
        );
        u.context.pipeline = "ghaviews".into();
        u.exclusive = true;
        u
    };
    let live = |run: String| async move {
        db.gha_files(&run)
            .await
            .unwrap()
            .into_iter()
            .map(|f| (f.artifact_name, f.sha256))
            .collect::<Vec<_>>()
    };
    let unreferenced = || async {
        db.unreferenced_blobs(satchel_model::id::now_millis() + 1, 100_000)
            .await
            .unwrap()
            .into_iter()
            .map(|(d, _)| d)
            .collect::<std::collections::HashSet<_>>()
    };
    db.record_blobs(&[(digest(1), 9), (digest(2), 9), (digest(3), 9)])
        .await
        .unwrap();
    let old = db
        .gha_publish(&key("w", "site"), &manifest("w", "site", 1), &q())
        .await
        .unwrap()
        .artifact;
    let run = db.find_run("ghaviews", 1).await.unwrap().id;
    // Without a pending delete the name is taken, and nothing changes.
    assert!(matches!(
        db.gha_publish(&key("w", "site"), &manifest("w", "site", 2), &q())
            .await,
        Err(DbError::Conflict(_))
    ));
    // A reader pins it; its writer deletes it: still live for everyone.
    db.gha_record_view(&key("r", "site"), GhaViewKind::Read, &old.id)
        .await
        .unwrap();
    db.gha_record_view(&key("w", "site"), GhaViewKind::Delete, &old.id)
        .await
        .unwrap();
    let views = db.gha_views("ghaviews", 1).await.unwrap();
    assert_eq!(views.len(), 2);
    assert!(views
        .iter()
        .all(|v| v.artifact_id == old.id && v.done_ms.is_none()));
    assert_eq!(live(run.clone()).await, [("site".into(), digest(1))]);
    // Not due yet: a long wait leaves it live.
    assert_eq!(db.gha_settle_views(None, 60_000, 600_000).await.unwrap(), 0);
    // The writer's upload of the name swaps the new artifact in.
    let new = db
        .gha_publish(&key("w", "site"), &manifest("w", "site", 2), &q())
        .await
        .unwrap()
        .artifact;
    assert_eq!(live(run.clone()).await, [("site".into(), digest(2))]);
    let views = db.gha_views("ghaviews", 1).await.unwrap();
    let del = views
        .iter()
        .find(|v| v.kind == GhaViewKind::Delete)
        .unwrap();
    assert!(del.done_ms.is_some(), "carried out by the swap");
    // The replaced file stays readable by id (its views hold it), and so
    // does its content, which GC keeps.
    let replaced = db.gha_snapshot(&run, "ghaviews", 1).await.unwrap().replaced;
    assert_eq!(replaced.len(), 1);
    assert_eq!(replaced[0].artifact_id, old.id);
    let f = db.gha_file(&replaced[0].id).await.unwrap().unwrap();
    assert_eq!(f.sha256, digest(1));
    assert!(!unreferenced().await.contains(&digest(1)), "held by views");
    // A delete without an upload in progress is carried out once due; with
    // one in progress it waits.
    let third = db
        .gha_publish(&key("x", "other"), &manifest("x", "other", 3), &q())
        .await
        .unwrap()
        .artifact;
    db.gha_record_view(&key("w", "site"), GhaViewKind::Delete, &new.id)
        .await
        .unwrap();
    db.gha_record_view(&key("x", "other"), GhaViewKind::Delete, &third.id)
        .await
        .unwrap();
    db.gha_start(&GhaUpload {
        id: "ghaviews-upload".into(),
        key: key("w", "site"),
        file_name: "site.zip".into(),
        mime: "application/zip".into(),
        committed: None,
    })
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(
        db.gha_settle_views(Some(("ghaviews", 1, None)), 0, 600_000)
            .await
            .unwrap(),
        1
    );
    assert_eq!(live(run.clone()).await, [("site".into(), digest(2))]);
    db.gha_end("ghaviews-upload").await.unwrap();
    assert_eq!(db.gha_settle_views(None, 0, 600_000).await.unwrap(), 1);
    assert!(live(run.clone()).await.is_empty());
    // Old views are dropped, and with them the hold on content.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    db.gha_settle_views(None, 0, 0).await.unwrap();
    assert!(db.gha_views("ghaviews", 1).await.unwrap().is_empty());
    assert!(db
        .gha_snapshot(&run, "ghaviews", 1)
        .await
        .unwrap()
        .replaced
        .is_empty());
    assert!(db.gha_file(&f.id).await.unwrap().is_none());
    let free = unreferenced().await;
    assert!(free.contains(&digest(1)) && free.contains(&digest(2)));
    // An artifact deleted otherwise (the REST API) is never held or served
    // through a view: no view of it can be recorded, and a pending delete
    // of it is dropped rather than carried out.
    let gone = db
        .gha_publish(&key("w", "gone"), &manifest("w", "gone", 1), &q())
        .await
        .unwrap()
        .artifact;
    db.gha_record_view(&key("w", "gone"), GhaViewKind::Delete, &gone.id)
        .await
        .unwrap();
    db.delete_artifact(&gone.id).await.unwrap();
    for kind in [GhaViewKind::Read, GhaViewKind::Delete] {
        assert!(matches!(
            db.gha_record_view(&key("r", "gone"), kind, &gone.id).await,
            Err(DbError::NotFound(_))
        ));
    }
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(db.gha_settle_views(None, 0, 600_000).await.unwrap(), 0);
    assert!(db.gha_views("ghaviews", 1).await.unwrap().is_empty());
    let snap = db.gha_snapshot(&run, "ghaviews", 1).await.unwrap();
    assert!(snap.live.is_empty() && snap.replaced.is_empty());
}

/// Where packed blobs are: every pack recorded for a blob, newest first;
/// forgetting a pack forgets only its own rows.
async fn pack_catalog(db: &dyn MetaStore) {
    let d = |c: char| c.to_string().repeat(64);
    let at = |k: &str, n: u64| (k.to_string(), n);
    assert!(db.locate_pack(&d('a')).await.unwrap().is_empty());
    // More than one statement's worth of rows.
    let many: Vec<String> = (0..1201).map(|i| format!("{i:064x}")).collect();
    db.record_pack("p/01/old", 100, &many).await.unwrap();
    db.record_pack("p/01/old", 100, &[d('a'), d('b'), d('a')])
        .await
        .unwrap();
    assert_eq!(
        db.locate_pack(&many[1200]).await.unwrap(),
        [at("p/01/old", 100)]
    );
    // `a` sent again: a second pack holds it too, recorded later.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    db.record_pack("p/02/new", 50, &[d('a')]).await.unwrap();
    assert_eq!(
        db.locate_pack(&d('a')).await.unwrap(),
        [at("p/02/new", 50), at("p/01/old", 100)]
    );
    db.forget_pack("p/01/old").await.unwrap();
    assert_eq!(db.locate_pack(&d('a')).await.unwrap(), [at("p/02/new", 50)]);
    assert!(db.locate_pack(&d('b')).await.unwrap().is_empty());
    assert!(db.locate_pack(&many[0]).await.unwrap().is_empty());
    db.forget_pack("p/02/new").await.unwrap();
    assert!(db.locate_pack(&d('a')).await.unwrap().is_empty());
}

/// A run's CI build id: set when the run is created, or by the first
/// upload that names one; found in any pipeline.
async fn build_ids(db: &dyn MetaStore) {
    let run = db
        .create_run(
            "builds-a",
            &satchel_model::api::NewRun {
                build_id: Some("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let found = db
        .runs_by_build("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", None)
        .await
        .unwrap();
    assert_eq!(
        found
            .iter()
            .map(|r| (r.pipeline.as_str(), r.number))
            .collect::<Vec<_>>(),
        [("builds-a", run.number)]
    );
    assert_eq!(
        found[0].build_id.as_deref(),
        Some("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
    );
    // An upload names the build of a run it creates; a later one with
    // another id does not move it.
    for build in ["gh-77", "gh-78"] {
        let mut req = upload("j", 1, Some("built"), vec![file("b.txt", 'b', 4)]);
        req.context.pipeline = "builds-b".into();
        req.context.build = Some(build.into());
        let plan = db.create_upload(&req, &q()).await.unwrap();
        db.abort_upload(&plan.upload_id).await.unwrap();
    }
    let found = db.runs_by_build("gh-77", None).await.unwrap();
    assert_eq!(
        found
            .iter()
            .map(|r| (r.pipeline.as_str(), r.number))
            .collect::<Vec<_>>(),
        [("builds-b", 1)]
    );
    assert!(db.runs_by_build("gh-78", None).await.unwrap().is_empty());
    // The same id from two CIs: both runs.
    db.create_run(
        "builds-c",
        &satchel_model::api::NewRun {
            build_id: Some("gh-77".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(db.runs_by_build("gh-77", None).await.unwrap().len(), 2);
    let only_c = db.runs_by_build("gh-77", Some("builds-c")).await.unwrap();
    assert_eq!(
        only_c
            .iter()
            .map(|r| r.pipeline.as_str())
            .collect::<Vec<_>>(),
        ["builds-c"]
    );
    assert_eq!(
        db.find_run("builds-b", 1)
            .await
            .unwrap()
            .build_id
            .as_deref(),
        Some("gh-77")
    );
    // The jobs a runner found failed are kept with the state, until the
    // next state it records says otherwise.
    let failed = |jobs: Option<Vec<&str>>| satchel_model::api::SetRunState {
        state: satchel_model::api::RunState::Failed,
        branch: None,
        commit: None,
        failed_jobs: jobs.map(|j| j.into_iter().map(String::from).collect()),
    };
    let r = db
        .set_run_state("builds-b", 1, &failed(Some(vec!["deploy"])))
        .await
        .unwrap();
    assert_eq!(r.failed_jobs, Some(vec!["deploy".to_string()]));
    let r = db
        .set_run_state("builds-b", 1, &failed(None))
        .await
        .unwrap();
    assert_eq!(
        r.failed_jobs,
        Some(vec!["deploy".to_string()]),
        "None leaves it"
    );
}
