//! Artifact reference expressions (Alibaba Cloud Flow): `$[…]` embedded in
//! text, naming an artifact by where it was produced.
//!
//! - `$[jobs.<job>.<step>.artifacts.<name>]`: same stage
//! - `$[stages.<stage>.<job>.<step>.artifacts.<name>]`: same run
//! - `$[sources.<source>.stages.<stage>.<job>.<step>.artifacts.<name>]`:
//!   another pipeline's run
//!
//! Stage, job, step and source segments are keys without `.`; the
//! artifact name is everything after `.artifacts.` (it may contain dots).
//! `$$[` writes a literal `$[`. Resolution (what a reference means) lives
//! in the server; this module only parses and substitutes.

use std::fmt;
use std::ops::Range;

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Source name, for references into another pipeline's run.
    pub source: Option<String>,
    /// Stage key; `None` means the asking job's stage (`jobs.` form).
    pub stage: Option<String>,
    /// Job key.
    pub job: String,
    /// Step key.
    pub step: String,
    /// Artifact name (`default` for the step's default artifact).
    pub artifact: String,
}

/// Why a reference does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    /// What is wrong, with the expected shape.
    pub message: String,
}

const SHAPES: &str = "references look like jobs.<job>.<step>.artifacts.<name>, stages.<stage>.<job>.<step>.artifacts.<name> or sources.<source>.stages.<stage>.<job>.<step>.artifacts.<name>";

fn err(message: String) -> ExprError {
    ExprError { message }
}

fn check_segment(what: &str, s: &str, whole: &str) -> Result<(), ExprError> {
    if s.is_empty() {
        return Err(err(format!("empty {what} in `{whole}`; {SHAPES}")));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(err(format!(
            "invalid character {c:?} in {what} `{s}` of `{whole}`: keys are ASCII letters, digits, '_' and '-'"
        )));
    }
    Ok(())
}

impl Reference {
    /// Parses the text between `$[` and `]` (surrounding whitespace is
    /// ignored).
    pub fn parse(inner: &str) -> Result<Reference, ExprError> {
        let whole = inner.trim();
        if whole.is_empty() {
            return Err(err(format!("empty reference `$[]`; {SHAPES}")));
        }
        // The artifact name is everything after the first `.artifacts.`.
        let (path, artifact) = match whole.split_once(".artifacts.") {
            Some((p, a)) => (p, a),
            None => {
                if let Some(p) = whole.strip_suffix(".artifacts") {
                    return Err(err(format!(
                        "missing artifact name after `{p}.artifacts` in `{whole}`; {SHAPES}"
                    )));
                }
                // Say where `artifacts` was expected.
                let parts: Vec<&str> = whole.split('.').collect();
                let at = match parts.first().copied() {
                    Some("jobs") => 3,
                    Some("stages") => 4,
                    Some("sources") => 6,
                    _ => 0,
                };
                if at > 0 && parts.len() > at {
                    return Err(err(format!(
                        "expected `artifacts` after the step in `{whole}`, found `{}`; {SHAPES}",
                        parts[at]
                    )));
                }
                if at == 0 {
                    return Err(unknown_root(parts.first().copied().unwrap_or(""), whole));
                }
                return Err(err(format!("incomplete reference `{whole}`; {SHAPES}")));
            }
        };
        if artifact.is_empty() {
            return Err(err(format!("missing artifact name in `{whole}`; {SHAPES}")));
        }
        if let Some(c) = artifact.chars().find(|c| c.is_control() || *c == ']') {
            return Err(err(format!(
                "invalid character {c:?} in artifact name `{artifact}`"
            )));
        }
        let parts: Vec<&str> = path.split('.').collect();
        let (source, stage, job, step) = match parts.as_slice() {
            ["jobs", job, step] => (None, None, *job, *step),
            ["stages", stage, job, step] => (None, Some(*stage), *job, *step),
            ["sources", src, "stages", stage, job, step] => (Some(*src), Some(*stage), *job, *step),
            [root, ..] if !matches!(*root, "jobs" | "stages" | "sources") => {
                return Err(unknown_root(root, whole))
            }
            ["sources", _, other, ..] if *other != "stages" => {
                return Err(err(format!(
                    "expected `stages` after the source in `{whole}`, found `{other}`; {SHAPES}"
                )))
            }
            _ => {
                return Err(err(format!(
                    "wrong number of parts before `.artifacts.` in `{whole}`; {SHAPES}"
                )))
            }
        };
        if let Some(s) = source {
            check_segment("source", s, whole)?;
        }
        if let Some(s) = stage {
            check_segment("stage", s, whole)?;
        }
        check_segment("job", job, whole)?;
        check_segment("step", step, whole)?;
        Ok(Reference {
            source: source.map(str::to_string),
            stage: stage.map(str::to_string),
            job: job.to_string(),
            step: step.to_string(),
            artifact: artifact.to_string(),
        })
    }
}

fn unknown_root(root: &str, whole: &str) -> ExprError {
    err(format!(
        "unknown reference root `{root}` in `{whole}`: use jobs., stages. or sources.; {SHAPES}"
    ))
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.source {
            write!(f, "sources.{s}.")?;
        }
        match &self.stage {
            Some(st) => write!(f, "stages.{st}.")?,
            None => write!(f, "jobs.")?,
        }
        write!(f, "{}.{}.artifacts.{}", self.job, self.step, self.artifact)
    }
}

impl std::str::FromStr for Reference {
    type Err = ExprError;
    fn from_str(s: &str) -> Result<Reference, ExprError> {
        Reference::parse(s)
    }
}

/// One `$[…]` found in a text.
#[derive(Debug, Clone)]
pub struct Found {
    /// Byte range in the text, `$[` through `]`.
    pub range: Range<usize>,
    /// The text between the brackets.
    pub inner: String,
    /// The parsed reference, or why it does not parse.
    pub parsed: Result<Reference, ExprError>,
}

/// Every `$[…]` in `text`, in order. `$$[` is an escape, not a reference.
/// An unterminated `$[` yields one error covering the rest of the text.
pub fn find(text: &str) -> Vec<Found> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'$' && b[i + 1] == b'$' && b.get(i + 2) == Some(&b'[') {
            i += 3;
            continue;
        }
        if b[i] == b'$' && b[i + 1] == b'[' {
            match text[i + 2..].find(']') {
                Some(end) => {
                    let inner = &text[i + 2..i + 2 + end];
                    out.push(Found {
                        range: i..i + 3 + end,
                        inner: inner.to_string(),
                        parsed: Reference::parse(inner),
                    });
                    i += 3 + end;
                }
                None => {
                    let inner = &text[i + 2..];
                    out.push(Found {
                        range: i..text.len(),
                        inner: inner.to_string(),
                        parsed: Err(err(format!(
                            "unterminated reference `$[{}`: add the closing `]`",
                            inner.lines().next().unwrap_or("")
                        ))),
                    });
                    break;
                }
            }
            continue;
        }
        i += 1;
    }
    out
}

/// Why [`substitute`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubstituteError<E: fmt::Display> {
    /// A `$[…]` does not parse.
    #[error("$[{expr}]: {error}")]
    Parse {
        /// The text between the brackets.
        expr: String,
        /// Why.
        error: ExprError,
    },
    /// The resolver failed.
    #[error("{0}")]
    Resolve(E),
}

/// Replaces each reference in `text` with what `resolve` answers, and
/// `$$[` with `$[`. Fails on the first bad or unresolvable reference.
pub fn substitute<E: fmt::Display>(
    text: &str,
    mut resolve: impl FnMut(&Reference) -> Result<String, E>,
) -> Result<String, SubstituteError<E>> {
    if !text.contains("$[") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for f in find(text) {
        out.push_str(&text[last..f.range.start].replace("$$[", "$["));
        let r = f.parsed.map_err(|error| SubstituteError::Parse {
            expr: f.inner.clone(),
            error,
        })?;
        out.push_str(&resolve(&r).map_err(SubstituteError::Resolve)?);
        last = f.range.end;
    }
    out.push_str(&text[last..].replace("$$[", "$["));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_three_forms() {
        let r =
            Reference::parse("jobs.build_job.docker_build_push_step.artifacts.my_image").unwrap();
        assert_eq!(r.source, None);
        assert_eq!(r.stage, None);
        assert_eq!(r.job, "build_job");
        assert_eq!(r.step, "docker_build_push_step");
        assert_eq!(r.artifact, "my_image");
        let r = Reference::parse(
            " stages.build_stage.build_job.upload_artifact_step.artifacts.default ",
        )
        .unwrap();
        assert_eq!(r.stage.as_deref(), Some("build_stage"));
        assert_eq!(r.artifact, "default");
        let r = Reference::parse(
            "sources.pipeline_a.stages.build_stage.build_job.docker_build_push_step.artifacts.my_image",
        )
        .unwrap();
        assert_eq!(r.source.as_deref(), Some("pipeline_a"));
        let r = Reference::parse("jobs.a.b.artifacts.app-1.2.tar.gz").unwrap();
        assert_eq!(r.artifact, "app-1.2.tar.gz");
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let cases = [
            (
                "jobs.build.make.artifact.x",
                "expected `artifacts` after the step",
            ),
            ("job.a.b.artifacts.c", "unknown reference root `job`"),
            ("jobs..b.artifacts.c", "empty job"),
            ("jobs.a.b.artifacts.", "missing artifact name"),
            ("jobs.a.b.artifacts", "missing artifact name"),
            ("stages.s.a.artifacts.c", "wrong number of parts"),
            (
                "sources.x.stagez.s.a.b.artifacts.c",
                "expected `stages` after the source",
            ),
            ("jobs.a b.c.artifacts.d", "invalid character ' '"),
            ("", "empty reference"),
            ("jobs.a", "incomplete reference"),
        ];
        for (text, want) in cases {
            let e = Reference::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: want {want:?} in {e:?}");
        }
    }

    #[test]
    fn find_and_substitute() {
        let text = "a $[jobs.j.s.artifacts.x] b $$[not] c $[stages.t.j.s.artifacts.y]";
        let f = find(text);
        assert_eq!(f.len(), 2);
        assert_eq!(&text[f[0].range.clone()], "$[jobs.j.s.artifacts.x]");
        let out = substitute(text, |r| Ok::<_, String>(r.artifact.to_uppercase())).unwrap();
        assert_eq!(out, "a X b $[not] c Y");
        let e = substitute("x $[jobs.j.s.artifacts.x", |_| {
            Ok::<_, String>(String::new())
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("unterminated"), "{e}");
        let e = substitute("$[jobs.j.s.artifacts.x]", |_| Err::<String, _>("boom"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "boom");
        assert_eq!(
            substitute("plain $ text [x]", |_| Ok::<_, String>("!".into())).unwrap(),
            "plain $ text [x]"
        );
    }

    fn key() -> impl Strategy<Value = String> {
        "[A-Za-z0-9][A-Za-z0-9_-]{0,12}"
    }

    proptest! {
        #[test]
        fn display_round_trips(
            source in proptest::option::of(key()),
            stage in key(),
            job in key(),
            step in key(),
            artifact in "[^\\]\\p{Cc}]{1,20}",
        ) {
            let stage = if source.is_some() || job.len() % 2 == 0 { Some(stage) } else { None };
            let r = Reference { source, stage, job, step, artifact: artifact.trim().to_string() };
            prop_assume!(!r.artifact.is_empty());
            let back = Reference::parse(&r.to_string()).unwrap();
            prop_assert_eq!(back, r);
        }

        #[test]
        fn substitute_never_panics(text in ".{0,80}") {
            let _ = substitute(&text, |r| Ok::<_, String>(r.to_string()));
        }

        #[test]
        fn text_without_references_is_unchanged(text in "[^$]{0,80}") {
            prop_assert_eq!(substitute(&text, |_| Ok::<_, String>("!".into())).unwrap(), text);
        }

        #[test]
        fn found_ranges_are_ordered(text in "([a-z$\\[\\]. ]|jobs\\.a\\.b\\.artifacts\\.c){0,30}") {
            let mut end = 0;
            for f in find(&text) {
                prop_assert!(f.range.start >= end);
                prop_assert!(text[f.range.clone()].starts_with("$["));
                end = f.range.end;
            }
        }
    }
}
