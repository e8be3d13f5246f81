//! CI environment auto-detection: inside a job of Buildkite, GitHub
//! Actions, GitLab CI, Azure Pipelines or Satchel's own runner, where the
//! job is (pipeline, run, stage, job, step, attempt, branch, commit), read
//! from the CI's own variables. Explicit flags and `SATCHEL_*` variables
//! win; the CLI applies that order. The mapping is documented in
//! `docs/ci-integration.md`.

/// One detected value and the variable(s) it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// `pipeline`, `run`, `stage`, `job`, `step`, `attempt`, `branch`,
    /// `commit` or `build` (the CI's own id of the build).
    pub name: &'static str,
    /// The value, already a valid key where the field is a key.
    pub value: String,
    /// Where it came from, e.g. `GITHUB_REPOSITORY + GITHUB_WORKFLOW`.
    pub from: String,
}

/// What was detected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// The CI's name.
    pub ci: &'static str,
    /// The fields found.
    pub fields: Vec<Field>,
}

impl Detected {
    /// The value of one field.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value.as_str())
    }
}

/// Makes `s` a valid key: characters outside `[A-Za-z0-9_.-]` become `-`,
/// runs of `-` collapse, leading non-alphanumerics go, at most 128 bytes.
pub fn sanitize_key(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
            c
        } else {
            '-'
        };
        if c == '-' && out.ends_with('-') {
            continue;
        }
        out.push(c);
    }
    let out = out.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    let out = out.trim_end_matches('-');
    let mut out = out.to_string();
    out.truncate(crate::names::MAX_KEY_BYTES);
    (!out.is_empty()).then_some(out)
}

struct Builder<'a, F: Fn(&str) -> Option<String>> {
    get: &'a F,
    fields: Vec<Field>,
}

impl<F: Fn(&str) -> Option<String>> Builder<'_, F> {
    fn var(&self, name: &str) -> Option<String> {
        (self.get)(name).filter(|v| !v.trim().is_empty())
    }

    /// The first set variable of `vars`, as is.
    fn text(&mut self, name: &'static str, vars: &[&str]) {
        if let Some((v, value)) = vars.iter().find_map(|v| self.var(v).map(|x| (*v, x))) {
            self.fields.push(Field {
                name,
                value,
                from: v.to_string(),
            });
        }
    }

    /// The first set variable of `vars`, made a key.
    fn key(&mut self, name: &'static str, vars: &[&str]) {
        if let Some((v, value)) = vars
            .iter()
            .find_map(|v| self.var(v).and_then(|x| sanitize_key(&x)).map(|x| (*v, x)))
        {
            self.fields.push(Field {
                name,
                value,
                from: v.to_string(),
            });
        }
    }

    /// A positive number from `var`, plus `add`.
    fn number(&mut self, name: &'static str, var: &str, add: u64) {
        if let Some(n) = self.var(var).and_then(|v| v.trim().parse::<u64>().ok()) {
            if n + add > 0 {
                self.fields.push(Field {
                    name,
                    value: (n + add).to_string(),
                    from: if add == 0 {
                        var.to_string()
                    } else {
                        format!("{var} + {add}")
                    },
                });
            }
        }
    }
}

/// Detects the CI from environment lookups (`get` returns a variable's
/// value). `None` when no known CI is recognised.
pub fn detect<F: Fn(&str) -> Option<String>>(get: F) -> Option<Detected> {
    let mut b = Builder {
        get: &get,
        fields: Vec::new(),
    };
    let is = |name: &str, want: &str| get(name).is_some_and(|v| v.eq_ignore_ascii_case(want));
    let ci = if b.var("SATCHEL_RUNNER").is_some() {
        return None; // Satchel's runner sets SATCHEL_* itself.
    } else if is("BUILDKITE", "true") {
        b.key("pipeline", &["BUILDKITE_PIPELINE_SLUG"]);
        b.number("run", "BUILDKITE_BUILD_NUMBER", 0);
        b.key("stage", &["BUILDKITE_GROUP_KEY"]);
        b.key("job", &["BUILDKITE_STEP_KEY", "BUILDKITE_JOB_ID"]);
        b.key("step", &["BUILDKITE_STEP_KEY", "BUILDKITE_STEP_ID"]);
        b.number("attempt", "BUILDKITE_RETRY_COUNT", 1);
        b.text("branch", &["BUILDKITE_BRANCH"]);
        b.text("commit", &["BUILDKITE_COMMIT"]);
        b.key("build", &["BUILDKITE_BUILD_ID"]);
        "Buildkite"
    } else if is("GITHUB_ACTIONS", "true") {
        // Run numbers count per workflow, so the pipeline is the workflow.
        if let (Some(repo), Some(wf)) = (b.var("GITHUB_REPOSITORY"), b.var("GITHUB_WORKFLOW")) {
            if let Some(value) = sanitize_key(&format!("{repo}.{wf}")) {
                b.fields.push(Field {
                    name: "pipeline",
                    value,
                    from: "GITHUB_REPOSITORY + GITHUB_WORKFLOW".into(),
                });
            }
        }
        b.number("run", "GITHUB_RUN_NUMBER", 0);
        b.key("job", &["GITHUB_JOB"]);
        if b.var("GITHUB_ACTION").is_some_and(|a| !a.starts_with("__")) {
            b.key("step", &["GITHUB_ACTION"]);
        }
        b.number("attempt", "GITHUB_RUN_ATTEMPT", 0);
        b.text("branch", &["GITHUB_HEAD_REF", "GITHUB_REF_NAME"]);
        b.text("commit", &["GITHUB_SHA"]);
        b.key("build", &["GITHUB_RUN_ID"]);
        "GitHub Actions"
    } else if is("GITLAB_CI", "true") {
        b.key("pipeline", &["CI_PROJECT_PATH"]);
        b.number("run", "CI_PIPELINE_IID", 0);
        b.key("stage", &["CI_JOB_STAGE"]);
        b.key("job", &["CI_JOB_NAME"]);
        b.text("branch", &["CI_COMMIT_REF_NAME"]);
        b.text("commit", &["CI_COMMIT_SHA"]);
        b.key("build", &["CI_PIPELINE_ID"]);
        "GitLab CI"
    } else if is("TF_BUILD", "true") {
        b.key("pipeline", &["BUILD_DEFINITIONNAME"]);
        b.number("run", "BUILD_BUILDID", 0);
        b.key("stage", &["SYSTEM_STAGENAME"]);
        b.key("job", &["SYSTEM_JOBNAME", "AGENT_JOBNAME"]);
        b.key("step", &["SYSTEM_TASKINSTANCENAME"]);
        b.number("attempt", "SYSTEM_JOBATTEMPT", 0);
        b.text("branch", &["BUILD_SOURCEBRANCHNAME"]);
        b.text("commit", &["BUILD_SOURCEVERSION"]);
        b.key("build", &["BUILD_BUILDID"]);
        "Azure Pipelines"
    } else {
        return None;
    };
    Some(Detected {
        ci,
        fields: b.fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn fields(d: &Detected) -> Vec<(&str, &str)> {
        d.fields
            .iter()
            .map(|f| (f.name, f.value.as_str()))
            .collect()
    }

    #[test]
    fn each_ci_names_its_build_id() {
        for (vars, want) in [
            (
                vec![
                    ("BUILDKITE", "true"),
                    ("BUILDKITE_BUILD_ID", "0190f3c2-aaaa-7bbb-8ccc-123456789abc"),
                ],
                "0190f3c2-aaaa-7bbb-8ccc-123456789abc",
            ),
            (
                vec![("GITHUB_ACTIONS", "true"), ("GITHUB_RUN_ID", "9876543210")],
                "9876543210",
            ),
            (
                vec![("GITLAB_CI", "true"), ("CI_PIPELINE_ID", "555")],
                "555",
            ),
            (vec![("TF_BUILD", "True"), ("BUILD_BUILDID", "77")], "77"),
        ] {
            let d = detect(env(&vars)).unwrap();
            assert_eq!(d.get("build"), Some(want), "{}", d.ci);
        }
    }

    #[test]
    fn buildkite() {
        let d = detect(env(&[
            ("BUILDKITE", "true"),
            ("BUILDKITE_PIPELINE_SLUG", "my-app"),
            ("BUILDKITE_BUILD_NUMBER", "42"),
            ("BUILDKITE_JOB_ID", "0190f3c2-aaaa-bbbb-cccc-123456789abc"),
            ("BUILDKITE_STEP_KEY", "test"),
            ("BUILDKITE_RETRY_COUNT", "1"),
            ("BUILDKITE_BRANCH", "main"),
            ("BUILDKITE_COMMIT", "abc123"),
        ]))
        .unwrap();
        assert_eq!(d.ci, "Buildkite");
        assert_eq!(
            fields(&d),
            [
                ("pipeline", "my-app"),
                ("run", "42"),
                ("job", "test"),
                ("step", "test"),
                ("attempt", "2"),
                ("branch", "main"),
                ("commit", "abc123")
            ]
        );
        assert_eq!(d.fields[4].from, "BUILDKITE_RETRY_COUNT + 1");
    }

    #[test]
    fn github_actions() {
        let d = detect(env(&[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REPOSITORY", "octo/web"),
            ("GITHUB_WORKFLOW", "CI build"),
            ("GITHUB_RUN_NUMBER", "7"),
            ("GITHUB_RUN_ATTEMPT", "3"),
            ("GITHUB_JOB", "unit-tests"),
            ("GITHUB_ACTION", "__run_2"),
            ("GITHUB_HEAD_REF", ""),
            ("GITHUB_REF_NAME", "feature/x"),
            ("GITHUB_SHA", "deadbeef"),
        ]))
        .unwrap();
        assert_eq!(
            fields(&d),
            [
                ("pipeline", "octo-web.CI-build"),
                ("run", "7"),
                ("job", "unit-tests"),
                ("attempt", "3"),
                ("branch", "feature/x"),
                ("commit", "deadbeef")
            ]
        );
    }

    #[test]
    fn gitlab_and_azure() {
        let d = detect(env(&[
            ("GITLAB_CI", "true"),
            ("CI_PROJECT_PATH", "group/sub/proj"),
            ("CI_PIPELINE_IID", "12"),
            ("CI_JOB_STAGE", "build"),
            ("CI_JOB_NAME", "compile: [linux]"),
            ("CI_COMMIT_REF_NAME", "main"),
            ("CI_COMMIT_SHA", "c0ffee"),
        ]))
        .unwrap();
        assert_eq!(d.ci, "GitLab CI");
        assert_eq!(d.get("pipeline"), Some("group-sub-proj"));
        assert_eq!(d.get("job"), Some("compile-linux"));
        assert_eq!(d.get("stage"), Some("build"));
        let d = detect(env(&[
            ("TF_BUILD", "True"),
            ("BUILD_DEFINITIONNAME", "Web App"),
            ("BUILD_BUILDID", "1234"),
            ("SYSTEM_STAGENAME", "ParallelJobs"),
            ("SYSTEM_JOBNAME", "Job1"),
            ("SYSTEM_JOBATTEMPT", "1"),
            ("BUILD_SOURCEBRANCHNAME", "main"),
            ("BUILD_SOURCEVERSION", "f00d"),
        ]))
        .unwrap();
        assert_eq!(d.ci, "Azure Pipelines");
        assert_eq!(
            fields(&d),
            [
                ("pipeline", "Web-App"),
                ("run", "1234"),
                ("stage", "ParallelJobs"),
                ("job", "Job1"),
                ("attempt", "1"),
                ("branch", "main"),
                ("commit", "f00d"),
                ("build", "1234")
            ]
        );
    }

    #[test]
    fn nothing_known() {
        assert!(detect(env(&[("CI", "true")])).is_none());
        assert!(detect(env(&[("BUILDKITE", "true"), ("SATCHEL_RUNNER", "1")])).is_none());
    }

    #[test]
    fn keys_are_sanitized() {
        assert_eq!(
            sanitize_key("octo/web app").as_deref(),
            Some("octo-web-app")
        );
        assert_eq!(sanitize_key("--x--").as_deref(), Some("x"));
        assert_eq!(sanitize_key("///"), None);
        assert_eq!(sanitize_key(&"a".repeat(300)).unwrap().len(), 128);
        for s in ["a b", "ü", "x/y:z", "a..b"] {
            let k = sanitize_key(s).unwrap_or_else(|| "x".into());
            crate::names::validate_key("k", &k).unwrap();
        }
    }
}
