//! Artifact reference expressions (Alibaba Cloud Flow): `$[…]` embedded in
//! text, naming an artifact by where it was produced.
//!
//! - `$[jobs.<job>.<step>.artifacts.<name>]`: same stage
//! - `$[stages.<stage>.<job>.<step>.artifacts.<name>]`: same run
//! - `$[sources.<source>.stages.<stage>.<job>.<step>.artifacts.<name>]`:
//!   another pipeline's run
//! - `$[sources.<source>.artifacts.<name>]`: a package source (a promoted
//!   `REPO/PACKAGE` picked by version), which the runner resolves
//!
//! Source, stage, job and step segments are keys (see
//! [`crate::names::validate_key`]) without `.`, since a segment is everything
//! between two dots. The artifact name is everything after the step's
//! `.artifacts.`: it may contain dots and spaces, but no `]` and no control
//! characters. Whitespace just inside the brackets is ignored
//! (`$[ jobs.a.b.artifacts.c ]`).
//!
//! `$$[` writes a literal `$[` (see [`escape`]). Resolution (what a
//! reference means) lives in the server; this module only parses, finds and
//! substitutes.

use std::fmt;
use std::ops::Range;

use crate::names::{self, NameError};

/// The shape of a same-stage reference, as shown in messages.
pub const JOBS_SHAPE: &str = "jobs.<job>.<step>.artifacts.<name>";
/// The shape of a same-run reference, as shown in messages.
pub const STAGES_SHAPE: &str = "stages.<stage>.<job>.<step>.artifacts.<name>";
/// The shape of a reference into another pipeline's run, as shown in messages.
pub const SOURCES_SHAPE: &str = "sources.<source>.stages.<stage>.<job>.<step>.artifacts.<name>";
/// The shape of a reference to a package source, as shown in messages.
pub const PACKAGE_SHAPE: &str = "sources.<source>.artifacts.<name>";

/// All three shapes, as shown in messages.
const ALL_SHAPES: &str = "jobs.<job>.<step>.artifacts.<name>, stages.<stage>.<job>.<step>.artifacts.<name> or sources.<source>.stages.<stage>.<job>.<step>.artifacts.<name>";

/// The rule for key characters in references, as shown in messages.
const KEY_RULE: &str =
    "keys in references are ASCII letters, digits, '_' and '-', starting with a letter or digit";

/// What an unterminated-reference message shows of the text, in characters.
const PREVIEW_CHARS: usize = 40;

/// A parsed reference: the text between `$[` and `]`.
///
/// [`Display`](fmt::Display) writes the canonical inner text (without `$[`
/// and `]`), which [`Reference::parse`] reads back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Source name, for references into another pipeline's run
    /// (`sources.` form) or a package source.
    pub source: Option<String>,
    /// Stage key; `None` means the asking job's stage (`jobs.` form), or,
    /// with `source`, a package source (`job` and `step` are then empty).
    pub stage: Option<String>,
    /// Job key.
    pub job: String,
    /// Step key.
    pub step: String,
    /// Artifact name (`default` for the step's default artifact).
    pub artifact: String,
}

/// Why a reference does not parse. Every message names the offending
/// expression and says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExprError {
    /// Nothing (or only whitespace) between the brackets.
    #[error("empty reference `$[]`; references look like {ALL_SHAPES}")]
    Empty,
    /// The first part is not `jobs`, `stages` or `sources`.
    #[error("unknown reference root `{root}` in `{expr}`: use jobs., stages. or sources.; references look like {ALL_SHAPES}")]
    UnknownRoot {
        /// The first part.
        root: String,
        /// The expression (trimmed).
        expr: String,
    },
    /// A key part is empty, as in `jobs..make.artifacts.x`.
    #[error("empty {what} in `{expr}`; references look like {shape}")]
    EmptySegment {
        /// Which part: `source`, `stage`, `job` or `step`.
        what: &'static str,
        /// The expression (trimmed).
        expr: String,
        /// The expected shape.
        shape: &'static str,
    },
    /// A key part is not a valid key.
    #[error("invalid {what} `{value}` in `{expr}`: {why}")]
    InvalidKey {
        /// Which part: `source`, `stage`, `job` or `step`.
        what: &'static str,
        /// The part.
        value: String,
        /// The expression (trimmed).
        expr: String,
        /// What is wrong with it.
        why: String,
    },
    /// A fixed word (`artifacts`, or `stages` after a source) is missing or
    /// misspelled.
    #[error("expected `{expected}` after the {after} in `{expr}`; references look like {shape}")]
    ExpectedWord {
        /// The word that belongs here.
        expected: &'static str,
        /// The part it follows: `step` or `source`.
        after: &'static str,
        /// What is there instead.
        found: String,
        /// The expression (trimmed).
        expr: String,
        /// The expected shape.
        shape: &'static str,
    },
    /// The expression stops before the artifact name.
    #[error("incomplete reference `{expr}`: {missing} is missing; references look like {shape}")]
    Incomplete {
        /// What is missing, e.g. `the step` or `` `.artifacts.<name>` ``.
        missing: &'static str,
        /// The expression (trimmed).
        expr: String,
        /// The expected shape.
        shape: &'static str,
    },
    /// Nothing follows `.artifacts`.
    #[error("missing artifact name after `artifacts` in `{expr}`; references look like {shape}")]
    MissingName {
        /// The expression (trimmed).
        expr: String,
        /// The expected shape.
        shape: &'static str,
    },
    /// The artifact name contains `]` or a control character.
    #[error("artifact name `{name}` in `{expr}` contains {ch:?}: `]` and control characters are not allowed in referenced names")]
    InvalidNameChar {
        /// The artifact name.
        name: String,
        /// The offending character.
        ch: char,
        /// The expression (trimmed).
        expr: String,
    },
    /// A `$[` without a closing `]`.
    #[error("unterminated reference `$[{preview}`: add the closing `]` (or write `$$[` for a literal `$[`)")]
    Unterminated {
        /// The start of the text after `$[` (its first line, shortened).
        preview: String,
    },
}

/// One part of a reference before `.artifacts.`.
#[derive(Clone, Copy)]
enum Part {
    /// A key, named for messages.
    Key(&'static str),
    /// The fixed word `stages` after a source.
    Stages,
}

impl Part {
    /// How a missing part is described in [`ExprError::Incomplete`].
    fn missing(self) -> &'static str {
        match self {
            Part::Key("source") => "the source",
            Part::Key("stage") => "the stage",
            Part::Key("job") => "the job",
            Part::Key(_) => "the step",
            Part::Stages => "`.stages.`",
        }
    }
}

/// Splits off the next dot-separated part. `None` means the text ended
/// before it (no `.` after the previous part).
fn next_part(rest: Option<&str>) -> Option<(&str, Option<&str>)> {
    let r = rest?;
    Some(match r.split_once('.') {
        Some((seg, tail)) => (seg, Some(tail)),
        None => (r, None),
    })
}

/// Checks an artifact name (everything after `.artifacts.`).
fn check_name<'a>(
    name: Option<&'a str>,
    expr: &str,
    shape: &'static str,
) -> Result<&'a str, ExprError> {
    let name = match name {
        Some(n) if !n.is_empty() => n,
        _ => {
            return Err(ExprError::MissingName {
                expr: expr.into(),
                shape,
            })
        }
    };
    if let Some(ch) = name.chars().find(|&c| c == ']' || c.is_control()) {
        return Err(ExprError::InvalidNameChar {
            name: name.into(),
            ch,
            expr: expr.into(),
        });
    }
    Ok(name)
}

/// Checks a key part, explaining problems in terms of references.
fn check_key(
    what: &'static str,
    value: &str,
    expr: &str,
    shape: &'static str,
) -> Result<(), ExprError> {
    let why = match names::validate_key(what, value) {
        Ok(()) => return Ok(()),
        Err(NameError::Empty { .. }) => {
            return Err(ExprError::EmptySegment {
                what,
                expr: expr.into(),
                shape,
            })
        }
        Err(NameError::InvalidChar { ch, .. }) => format!("{ch:?} is not allowed; {KEY_RULE}"),
        Err(NameError::BadStart { .. }) => {
            format!("it must start with an ASCII letter or digit; {KEY_RULE}")
        }
        Err(NameError::TooLong { len, max, .. }) => {
            format!("it is {len} bytes long; keys are at most {max} bytes")
        }
        Err(other) => other.to_string(),
    };
    Err(ExprError::InvalidKey {
        what,
        value: value.into(),
        expr: expr.into(),
        why,
    })
}

impl Reference {
    /// Whether it names a package source's artifact
    /// (`sources.<source>.artifacts.<name>`).
    pub fn is_package(&self) -> bool {
        self.source.is_some() && self.stage.is_none()
    }

    /// Parses the text between `$[` and `]`. Whitespace around it is
    /// ignored.
    pub fn parse(inner: &str) -> Result<Reference, ExprError> {
        let expr = inner.trim();
        if expr.is_empty() {
            return Err(ExprError::Empty);
        }
        let (root, mut rest) = match expr.split_once('.') {
            Some((root, rest)) => (root, Some(rest)),
            None => (expr, None),
        };
        // `sources.<source>.artifacts.<name>`: a package source.
        if root == "sources" {
            if let Some((source, Some(tail))) = next_part(rest) {
                if let Some(("artifacts", name)) = next_part(Some(tail)) {
                    check_key("source", source, expr, PACKAGE_SHAPE)?;
                    let name = check_name(name, expr, PACKAGE_SHAPE)?;
                    return Ok(Reference {
                        source: Some(source.to_string()),
                        stage: None,
                        job: String::new(),
                        step: String::new(),
                        artifact: name.to_string(),
                    });
                }
            }
        }
        let (shape, parts): (&'static str, &[Part]) = match root {
            "jobs" => (JOBS_SHAPE, &[Part::Key("job"), Part::Key("step")]),
            "stages" => (
                STAGES_SHAPE,
                &[Part::Key("stage"), Part::Key("job"), Part::Key("step")],
            ),
            "sources" => (
                SOURCES_SHAPE,
                &[
                    Part::Key("source"),
                    Part::Stages,
                    Part::Key("stage"),
                    Part::Key("job"),
                    Part::Key("step"),
                ],
            ),
            _ => {
                return Err(ExprError::UnknownRoot {
                    root: root.into(),
                    expr: expr.into(),
                })
            }
        };
        let mut keys: Vec<&str> = Vec::with_capacity(4);
        for &part in parts {
            let Some((seg, tail)) = next_part(rest) else {
                return Err(ExprError::Incomplete {
                    missing: part.missing(),
                    expr: expr.into(),
                    shape,
                });
            };
            match part {
                Part::Key(what) => {
                    check_key(what, seg, expr, shape)?;
                    keys.push(seg);
                }
                Part::Stages if seg != "stages" => {
                    return Err(ExprError::ExpectedWord {
                        expected: "stages",
                        after: "source",
                        found: seg.into(),
                        expr: expr.into(),
                        shape,
                    })
                }
                Part::Stages => {}
            }
            rest = tail;
        }
        let Some((word, name)) = next_part(rest) else {
            return Err(ExprError::Incomplete {
                missing: "`.artifacts.<name>`",
                expr: expr.into(),
                shape,
            });
        };
        if word != "artifacts" {
            return Err(ExprError::ExpectedWord {
                expected: "artifacts",
                after: "step",
                found: word.into(),
                expr: expr.into(),
                shape,
            });
        }
        let name = check_name(name, expr, shape)?;
        let (source, stage, job, step) = match keys.as_slice() {
            [job, step] => (None, None, *job, *step),
            [stage, job, step] => (None, Some(*stage), *job, *step),
            [source, stage, job, step] => (Some(*source), Some(*stage), *job, *step),
            _ => unreachable!("every form has 2 to 4 keys"),
        };
        Ok(Reference {
            source: source.map(str::to_string),
            stage: stage.map(str::to_string),
            job: job.to_string(),
            step: step.to_string(),
            artifact: name.to_string(),
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(s), None) = (&self.source, &self.stage) {
            return write!(f, "sources.{s}.artifacts.{}", self.artifact);
        }
        if let Some(s) = &self.source {
            write!(f, "sources.{s}.")?;
        }
        match &self.stage {
            Some(st) => write!(f, "stages.{st}.")?,
            None => f.write_str("jobs.")?,
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

/// One `$[…]` found in a text by [`find`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Byte range in the text, from `$[` through `]` (through the end of the
    /// text for an unterminated `$[`).
    pub range: Range<usize>,
    /// The text between the brackets, as written.
    pub inner: String,
    /// The parsed reference, or why it does not parse.
    pub parsed: Result<Reference, ExprError>,
}

/// The first line of `s`, shortened for a message.
fn preview(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    let mut p: String = line.chars().take(PREVIEW_CHARS).collect();
    if p.len() < s.len() {
        p.push('…');
    }
    p
}

/// Every `$[…]` in `text`, in order, with non-overlapping ranges. `$$[` is
/// an escape, not a reference. An unterminated `$[` yields one error
/// covering the rest of the text.
pub fn find(text: &str) -> Vec<Found> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    // `$` and `[` are ASCII, so every index compared here is a char
    // boundary.
    while i + 1 < b.len() {
        if b[i] == b'$' && b[i + 1] == b'$' && b.get(i + 2) == Some(&b'[') {
            i += 3;
            continue;
        }
        if b[i] != b'$' || b[i + 1] != b'[' {
            i += 1;
            continue;
        }
        let start = i + 2;
        match text[start..].find(']') {
            Some(len) => {
                let inner = &text[start..start + len];
                out.push(Found {
                    range: i..start + len + 1,
                    inner: inner.to_string(),
                    parsed: Reference::parse(inner),
                });
                i = start + len + 1;
            }
            None => {
                let inner = &text[start..];
                out.push(Found {
                    range: i..text.len(),
                    inner: inner.to_string(),
                    parsed: Err(ExprError::Unterminated {
                        preview: preview(inner),
                    }),
                });
                break;
            }
        }
    }
    out
}

/// Escapes `text` so that [`substitute`] gives it back unchanged: every `$[`
/// becomes `$$[`.
pub fn escape(text: &str) -> String {
    text.replace("$[", "$$[")
}

/// Why [`substitute`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubstituteError<E> {
    /// A `$[…]` does not parse.
    #[error("{error}")]
    Parse {
        /// The text between the brackets, as written.
        expr: String,
        /// Why it does not parse.
        error: ExprError,
    },
    /// The resolver failed.
    #[error("{0}")]
    Resolve(E),
}

/// Replaces each reference in `text` with what `resolve` answers for it, and
/// each `$$[` with `$[`. Fails on the first reference that does not parse or
/// that `resolve` rejects; text without `$[` comes back unchanged.
pub fn substitute<E>(
    text: &str,
    mut resolve: impl FnMut(&Reference) -> Result<String, E>,
) -> Result<String, SubstituteError<E>> {
    if !text.contains("$[") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for f in find(text) {
        // `find` skipped exactly the `$$[` that `replace` finds in a gap:
        // both take the leftmost, and they cannot overlap.
        out.push_str(&text[last..f.range.start].replace("$$[", "$["));
        let r = f.parsed.map_err(|error| SubstituteError::Parse {
            expr: f.inner,
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

    fn p(inner: &str) -> Reference {
        Reference::parse(inner).unwrap_or_else(|e| panic!("{inner:?}: {e}"))
    }

    fn e(inner: &str) -> ExprError {
        match Reference::parse(inner) {
            Ok(r) => panic!("{inner:?} parsed as {r:?}"),
            Err(e) => e,
        }
    }

    fn id(r: &Reference) -> Result<String, String> {
        Ok(format!("<{r}>"))
    }

    #[test]
    fn package_sources_have_a_short_form() {
        let r = Reference::parse("sources.prod.artifacts.app bundle").unwrap();
        assert!(r.is_package());
        assert_eq!(r.source.as_deref(), Some("prod"));
        assert_eq!(r.artifact, "app bundle");
        assert_eq!(r.to_string(), "sources.prod.artifacts.app bundle");
        assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
        let full = Reference::parse("sources.up.stages.s.j.st.artifacts.x").unwrap();
        assert!(!full.is_package());
        assert!(Reference::parse("sources.prod.artifacts.").is_err());
        assert!(Reference::parse("sources.bad key.artifacts.x").is_err());
    }

    #[test]
    fn the_three_forms() {
        let r = p("jobs.build_job.docker_build_push_step.artifacts.my_image");
        assert_eq!(
            r,
            Reference {
                source: None,
                stage: None,
                job: "build_job".into(),
                step: "docker_build_push_step".into(),
                artifact: "my_image".into(),
            }
        );
        let r = p("stages.build_stage.build_job.upload_artifact_step.artifacts.default");
        assert_eq!(r.source, None);
        assert_eq!(r.stage.as_deref(), Some("build_stage"));
        assert_eq!(r.job, "build_job");
        assert_eq!(r.step, "upload_artifact_step");
        assert_eq!(r.artifact, "default");
        let r = p(
            "sources.pipeline_a.stages.build_stage.build_job.docker_build_push_step.artifacts.my_image",
        );
        assert_eq!(r.source.as_deref(), Some("pipeline_a"));
        assert_eq!(r.stage.as_deref(), Some("build_stage"));
        assert_eq!(r.job, "build_job");
        assert_eq!(r.step, "docker_build_push_step");
        assert_eq!(r.artifact, "my_image");
    }

    #[test]
    fn display_is_canonical() {
        for text in [
            "jobs.j.s.artifacts.x",
            "stages.st.j.s.artifacts.x",
            "sources.src.stages.st.j.s.artifacts.x",
            "jobs.j.s.artifacts.app 1.2.tar.gz",
        ] {
            assert_eq!(p(text).to_string(), text);
            assert_eq!(text.parse::<Reference>().unwrap(), p(text));
        }
        assert_eq!(
            p(" \t jobs.a.b.artifacts.c \n").to_string(),
            "jobs.a.b.artifacts.c"
        );
    }

    #[test]
    fn artifact_name_is_everything_after_artifacts() {
        assert_eq!(
            p("jobs.a.b.artifacts.app-1.2.tar.gz").artifact,
            "app-1.2.tar.gz"
        );
        assert_eq!(
            p("jobs.a.b.artifacts.test results (linux)").artifact,
            "test results (linux)"
        );
        assert_eq!(
            p("jobs.a.b.artifacts.x.artifacts.y").artifact,
            "x.artifacts.y"
        );
        assert_eq!(p("jobs.a.b.artifacts.日本語").artifact, "日本語");
        assert_eq!(p("jobs.a.b.artifacts.a/b:c*").artifact, "a/b:c*");
        // Keys named like the fixed words are positional, not special.
        let r = p("jobs.artifacts.artifacts.artifacts.artifacts");
        assert_eq!(
            (r.job.as_str(), r.step.as_str()),
            ("artifacts", "artifacts")
        );
        assert_eq!(r.artifact, "artifacts");
        let r = p("sources.stages.stages.jobs.stages.sources.artifacts.n");
        assert_eq!(r.source.as_deref(), Some("stages"));
        assert_eq!(r.stage.as_deref(), Some("jobs"));
        assert_eq!(r.job, "stages");
        assert_eq!(r.step, "sources");
    }

    #[test]
    fn keys_follow_the_key_rules() {
        assert_eq!(p("jobs.Build-1.x_2.artifacts.n").job, "Build-1");
        assert_eq!(p("jobs.9lives.s.artifacts.n").job, "9lives");
        let long = "k".repeat(names::MAX_KEY_BYTES);
        assert_eq!(p(&format!("jobs.{long}.s.artifacts.n")).job, long);

        let err = e(&format!("jobs.{long}k.s.artifacts.n"));
        assert!(
            matches!(err, ExprError::InvalidKey { what: "job", .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("129 bytes long"), "{err}");

        let err = e("jobs.a b.c.artifacts.d");
        assert_eq!(
            err,
            ExprError::InvalidKey {
                what: "job",
                value: "a b".into(),
                expr: "jobs.a b.c.artifacts.d".into(),
                why: format!("' ' is not allowed; {KEY_RULE}"),
            }
        );
        assert_eq!(
            err.to_string(),
            "invalid job `a b` in `jobs.a b.c.artifacts.d`: ' ' is not allowed; keys in references are ASCII letters, digits, '_' and '-', starting with a letter or digit"
        );

        let err = e("stages.-s.j.t.artifacts.n");
        assert!(
            matches!(err, ExprError::InvalidKey { what: "stage", ref value, .. } if value == "-s"),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("must start with an ASCII letter or digit"),
            "{err}"
        );

        for (text, what) in [
            ("sources.s/x.stages.a.b.c.artifacts.n", "source"),
            ("sources.x.stages.é.b.c.artifacts.n", "stage"),
            ("stages.s.j:1.t.artifacts.n", "job"),
            ("jobs.j.t]x.artifacts.n", "step"),
            ("jobs.j._t.artifacts.n", "step"),
        ] {
            match e(text) {
                ExprError::InvalidKey { what: got, .. } => assert_eq!(got, what, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn errors_say_what_is_wrong_and_show_the_shape() {
        assert_eq!(
            e("jobs.build.make.artifact.x").to_string(),
            "expected `artifacts` after the step in `jobs.build.make.artifact.x`; references look like jobs.<job>.<step>.artifacts.<name>"
        );
        assert_eq!(
            e("jobs.build.make.artifact.x"),
            ExprError::ExpectedWord {
                expected: "artifacts",
                after: "step",
                found: "artifact".into(),
                expr: "jobs.build.make.artifact.x".into(),
                shape: JOBS_SHAPE,
            }
        );
        assert_eq!(
            e("job.a.b.artifacts.c").to_string(),
            format!("unknown reference root `job` in `job.a.b.artifacts.c`: use jobs., stages. or sources.; references look like {ALL_SHAPES}")
        );
        assert_eq!(
            e("my_image"),
            ExprError::UnknownRoot {
                root: "my_image".into(),
                expr: "my_image".into()
            }
        );
        // Roots are case-sensitive.
        assert!(matches!(
            e("Jobs.a.b.artifacts.c"),
            ExprError::UnknownRoot { .. }
        ));

        let cases: &[(&str, &str)] = &[
            ("", "empty reference `$[]`; references look like jobs."),
            ("   ", "empty reference"),
            ("jobs..b.artifacts.c", "empty job in `jobs..b.artifacts.c`; references look like jobs.<job>.<step>.artifacts.<name>"),
            ("jobs.a..artifacts.c", "empty step in"),
            ("stages..a.b.artifacts.c", "empty stage in `stages..a.b.artifacts.c`; references look like stages.<stage>.<job>.<step>.artifacts.<name>"),
            ("sources..stages.s.a.b.artifacts.c", "empty source in"),
            ("jobs.", "empty job in `jobs.`"),
            ("jobs", "incomplete reference `jobs`: the job is missing; references look like jobs.<job>.<step>.artifacts.<name>"),
            ("jobs.a", "incomplete reference `jobs.a`: the step is missing"),
            ("jobs.a.b", "incomplete reference `jobs.a.b`: `.artifacts.<name>` is missing; references look like jobs."),
            ("stages.s.a", "incomplete reference `stages.s.a`: the step is missing; references look like stages."),
            ("sources", "the source is missing; references look like sources.<source>.stages."),
            ("sources.x", "incomplete reference `sources.x`: `.stages.` is missing"),
            ("sources.x.stages", "the stage is missing"),
            ("sources.x.stages.s", "the job is missing"),
            ("jobs.a.b.artifacts", "missing artifact name after `artifacts` in `jobs.a.b.artifacts`; references look like jobs.<job>.<step>.artifacts.<name>"),
            ("jobs.a.b.artifacts.", "missing artifact name after `artifacts` in `jobs.a.b.artifacts.`"),
            ("jobs.a.b.artifacts.   ", "missing artifact name"),
            ("stages.s.a.artifacts.c", "expected `artifacts` after the step in `stages.s.a.artifacts.c`; references look like stages.<stage>.<job>.<step>.artifacts.<name>"),
            ("jobs.a.b.c.artifacts.d", "expected `artifacts` after the step"),
            ("sources.x.stagez.s.a.b.artifacts.c", "expected `stages` after the source in `sources.x.stagez.s.a.b.artifacts.c`; references look like sources.<source>.stages.<stage>.<job>.<step>.artifacts.<name>"),
            ("sources.x.jobs.a.b.artifacts.c", "expected `stages` after the source"),
            ("jobs.a.b.artifacts.x]y", "artifact name `x]y` in `jobs.a.b.artifacts.x]y` contains ']': `]` and control characters are not allowed"),
            ("jobs.a.b.artifacts.x\ty", "contains '\\t'"),
            ("jobs.a.b.artifacts.x\u{85}y", "contains '\\u{85}'"),
        ];
        for (text, want) in cases {
            let msg = e(text).to_string();
            assert!(msg.contains(want), "{text:?}: want {want:?} in {msg:?}");
        }
        assert_eq!(e(""), ExprError::Empty);
        assert_eq!(
            e("jobs.a.b"),
            ExprError::Incomplete {
                missing: "`.artifacts.<name>`",
                expr: "jobs.a.b".into(),
                shape: JOBS_SHAPE
            }
        );
        assert_eq!(
            e("jobs.a.b.artifacts"),
            ExprError::MissingName {
                expr: "jobs.a.b.artifacts".into(),
                shape: JOBS_SHAPE
            }
        );
        assert_eq!(
            e("jobs..b.artifacts.c"),
            ExprError::EmptySegment {
                what: "job",
                expr: "jobs..b.artifacts.c".into(),
                shape: JOBS_SHAPE
            }
        );
        assert_eq!(
            e("jobs.a.b.artifacts.x]"),
            ExprError::InvalidNameChar {
                name: "x]".into(),
                ch: ']',
                expr: "jobs.a.b.artifacts.x]".into()
            }
        );
    }

    #[test]
    fn find_locates_references_in_order() {
        let text =
            "echo $[stages.build.job1.image.artifacts.my_image] && cp $[ jobs.j.s.artifacts.x ] .";
        let f = find(text);
        assert_eq!(f.len(), 2);
        assert_eq!(
            &text[f[0].range.clone()],
            "$[stages.build.job1.image.artifacts.my_image]"
        );
        assert_eq!(f[0].range.start, 5);
        assert_eq!(f[0].inner, "stages.build.job1.image.artifacts.my_image");
        assert_eq!(
            f[0].parsed.as_ref().unwrap().stage.as_deref(),
            Some("build")
        );
        assert_eq!(&text[f[1].range.clone()], "$[ jobs.j.s.artifacts.x ]");
        assert_eq!(f[1].inner, " jobs.j.s.artifacts.x ");
        assert_eq!(f[1].parsed.as_ref().unwrap().artifact, "x");

        // Bad references are found too, with their error.
        let f = find("a $[job.x] b $[] c");
        assert_eq!(f.len(), 2);
        assert!(matches!(f[0].parsed, Err(ExprError::UnknownRoot { .. })));
        assert_eq!(f[1].range, 13..16);
        assert_eq!(f[1].parsed, Err(ExprError::Empty));

        // Adjacent references, multi-byte text around them.
        let text = "é$[jobs.a.b.artifacts.x]$[jobs.a.b.artifacts.y]ü";
        let f = find(text);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].range, 2..25);
        assert_eq!(f[1].range, 25..48);

        assert!(find("").is_empty());
        assert!(find("$").is_empty());
        assert!(find("[x] $ [y] $x]").is_empty());
    }

    #[test]
    fn find_reports_an_unterminated_reference_to_the_end() {
        let text = "x $[jobs.a.b.artifacts.c and more\nlines $[jobs.a.b.artifacts.d]";
        // The first `]` closes the first `$[`, so this one is terminated.
        assert_eq!(find(text).len(), 1);

        let text = "ok $[jobs.a.b.artifacts.c] then $[jobs.a.b.artifacts.d\nnext line";
        let f = find(text);
        assert_eq!(f.len(), 2);
        assert!(f[0].parsed.is_ok());
        assert_eq!(f[1].range, 32..text.len());
        assert_eq!(f[1].inner, "jobs.a.b.artifacts.d\nnext line");
        let err = f[1].parsed.clone().unwrap_err();
        assert_eq!(
            err,
            ExprError::Unterminated {
                preview: "jobs.a.b.artifacts.d…".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "unterminated reference `$[jobs.a.b.artifacts.d…`: add the closing `]` (or write `$$[` for a literal `$[`)"
        );

        let f = find("$[");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].range, 0..2);
        assert_eq!(
            f[0].parsed,
            Err(ExprError::Unterminated {
                preview: String::new()
            })
        );

        let long = format!("$[{}", "x".repeat(100));
        match &find(&long)[0].parsed {
            Err(ExprError::Unterminated { preview }) => {
                assert_eq!(preview.chars().count(), PREVIEW_CHARS + 1);
                assert!(preview.ends_with('…'));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dollar_dollar_is_an_escape() {
        assert!(find("$$[jobs.a.b.artifacts.c]").is_empty());
        assert!(find("a $$[ b").is_empty());
        // `$$$[` is a `$` then an escaped `$[`.
        assert!(find("$$$[jobs.a.b.artifacts.c]").is_empty());
        // `$$$$[`: four dollars, the last two start the escape.
        assert!(find("$$$$[x]").is_empty());
        let f = find("$$[x] $[jobs.a.b.artifacts.c]");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].range, 6..29);

        let sub = |t: &str| substitute(t, id).unwrap();
        assert_eq!(sub("$$[jobs.a.b.artifacts.c]"), "$[jobs.a.b.artifacts.c]");
        assert_eq!(sub("$$$[x]"), "$$[x]");
        assert_eq!(sub("$$[ $$["), "$[ $[");
        assert_eq!(
            sub("$$[x] $[jobs.a.b.artifacts.c] $$[y]"),
            "$[x] <jobs.a.b.artifacts.c> $[y]"
        );
        // A lone `$$` is not an escape.
        assert_eq!(
            sub("$$ $[jobs.a.b.artifacts.c] $$"),
            "$$ <jobs.a.b.artifacts.c> $$"
        );
    }

    #[test]
    fn substitute_replaces_each_reference() {
        let text = "a $[jobs.j.s.artifacts.x] b $$[not] c $[stages.t.j.s.artifacts.y]";
        let out = substitute(text, |r| Ok::<_, String>(r.artifact.to_uppercase())).unwrap();
        assert_eq!(out, "a X b $[not] c Y");

        let mut seen = Vec::new();
        let out = substitute(
            "$[jobs.a.b.artifacts.x]$[sources.p.stages.s.a.b.artifacts.y]",
            |r| {
                seen.push(r.clone());
                Ok::<_, ()>(String::new())
            },
        )
        .unwrap();
        assert_eq!(out, "");
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].source.as_deref(), Some("p"));

        // Values are inserted literally, never re-scanned.
        let out = substitute("x=$[jobs.a.b.artifacts.c]", |_| {
            Ok::<_, String>("$[jobs.z.z.artifacts.z] $$[".into())
        })
        .unwrap();
        assert_eq!(out, "x=$[jobs.z.z.artifacts.z] $$[");
    }

    #[test]
    fn substitute_leaves_plain_text_alone() {
        for text in [
            "",
            "plain $ text [x]",
            "$",
            "[",
            "$$",
            "a]b",
            "$ [x]",
            "日本語 $x",
        ] {
            assert_eq!(
                substitute(text, |_| -> Result<String, String> {
                    panic!("no references")
                })
                .unwrap(),
                text
            );
        }
    }

    #[test]
    fn substitute_fails_on_the_first_problem() {
        let err = substitute("x $[jobs.j.s.artifacts.x", id).unwrap_err();
        assert!(
            matches!(
                err,
                SubstituteError::Parse {
                    error: ExprError::Unterminated { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("unterminated"), "{err}");

        let mut calls = 0;
        let err = substitute(
            "$[jobs.a.b.artifacts.ok] $[job.a.b.artifacts.c] $[jobs.a.b.artifacts.never]",
            |r| {
                calls += 1;
                id(r)
            },
        )
        .unwrap_err();
        assert_eq!(calls, 1);
        assert_eq!(
            err,
            SubstituteError::Parse {
                expr: "job.a.b.artifacts.c".into(),
                error: e("job.a.b.artifacts.c"),
            }
        );
        assert!(
            err.to_string().starts_with("unknown reference root `job`"),
            "{err}"
        );

        let mut calls = 0;
        let err = substitute("$[jobs.j.s.artifacts.x] $[jobs.j.s.artifacts.y]", |_| {
            calls += 1;
            Err::<String, _>("boom")
        })
        .unwrap_err();
        assert_eq!(calls, 1);
        assert_eq!(err, SubstituteError::Resolve("boom"));
        assert_eq!(err.to_string(), "boom");
    }

    #[test]
    fn escape_round_trips_through_substitute() {
        for text in [
            "$[jobs.a.b.artifacts.c]",
            "$$[",
            "$$$[x]",
            "a $[ b",
            "$[$[",
            "none",
        ] {
            let escaped = escape(text);
            assert!(find(&escaped).is_empty(), "{escaped:?}");
            assert_eq!(substitute(&escaped, id).unwrap(), text);
        }
    }

    fn key() -> impl Strategy<Value = String> {
        "[A-Za-z0-9][A-Za-z0-9_-]{0,12}"
    }

    /// Valid references: keys per the key rules, any artifact name that
    /// parse can produce.
    fn reference() -> impl Strategy<Value = Reference> {
        let name = "[^\\]\\p{Cc}]{1,20}"
            .prop_map(|n| n.trim_end().to_string())
            .prop_filter("non-empty", |n| !n.is_empty());
        (0..3u8, key(), key(), key(), key(), name).prop_map(
            |(form, src, stage, job, step, artifact)| Reference {
                source: (form == 2).then_some(src),
                stage: (form >= 1).then_some(stage),
                job,
                step,
                artifact,
            },
        )
    }

    /// Text rich in `$`, brackets and reference fragments.
    fn tricky_text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                "[a-z .\\n]{0,4}",
                Just("$".to_string()),
                Just("$[".to_string()),
                Just("$$[".to_string()),
                Just("]".to_string()),
                Just("[".to_string()),
                Just("jobs.a.b.artifacts.c".to_string()),
                Just("$[jobs.a.b.artifacts.c]".to_string()),
                Just("é".to_string()),
            ],
            0..12,
        )
        .prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn display_round_trips(r in reference()) {
            let text = r.to_string();
            prop_assert_eq!(Reference::parse(&text), Ok(r.clone()));
            prop_assert_eq!(Reference::parse(&format!("  {text} ")), Ok(r.clone()));
            // And as found in text.
            let f = find(&format!("x $[{text}] y"));
            prop_assert_eq!(f.len(), 1);
            prop_assert_eq!(&f[0].parsed, &Ok(r));
        }

        #[test]
        fn parse_then_display_is_canonical(s in "(jobs|stages|sources)(\\.[a-z]{1,2}){0,6}(\\.artifacts\\.[a-z. ]{0,4})?") {
            if let Ok(r) = Reference::parse(&s) {
                prop_assert_eq!(r.to_string(), s.trim());
            }
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}|[a-z.$\\[\\] ]{0,30}") {
            let _ = Reference::parse(&s);
        }

        #[test]
        fn substitute_never_panics(text in "\\PC{0,80}|.{0,80}") {
            let _ = substitute(&text, id);
            let _ = find(&text);
        }

        #[test]
        fn substitute_never_panics_on_tricky_text(text in tricky_text()) {
            let _ = substitute(&text, id);
        }

        #[test]
        fn text_without_references_is_unchanged(text in "(\\PC|[$\\[\\]])*") {
            prop_assume!(!text.contains("$["));
            prop_assert!(find(&text).is_empty());
            prop_assert_eq!(substitute(&text, |_| Err::<String, _>("unreachable")), Ok(text.clone()));
        }

        #[test]
        fn escaped_text_comes_back(text in tricky_text()) {
            let escaped = escape(&text);
            prop_assert!(find(&escaped).is_empty());
            prop_assert_eq!(substitute(&escaped, |_| Err::<String, _>("unreachable")), Ok(text));
        }

        #[test]
        fn found_ranges_are_ordered_and_well_formed(text in tricky_text()) {
            let found = find(&text);
            let mut end = 0;
            for (i, f) in found.iter().enumerate() {
                prop_assert!(f.range.start >= end, "overlap at {:?}", f.range);
                prop_assert!(f.range.start < f.range.end);
                let slice = &text[f.range.clone()];
                prop_assert!(slice.starts_with("$["), "{slice:?}");
                if matches!(f.parsed, Err(ExprError::Unterminated { .. })) {
                    // Only the last one can be unterminated, and it runs to the end.
                    prop_assert_eq!(i, found.len() - 1);
                    prop_assert_eq!(f.range.end, text.len());
                    prop_assert!(!slice[2..].contains(']'));
                    prop_assert_eq!(&slice[2..], f.inner.as_str());
                } else {
                    prop_assert!(slice.len() >= 3 && slice.ends_with(']'), "{slice:?}");
                    prop_assert_eq!(&slice[2..slice.len() - 1], f.inner.as_str());
                }
                end = f.range.end;
            }
        }

        #[test]
        fn substituting_references_built_from_parts(
            parts in proptest::collection::vec((reference(), "[a-z ]{0,5}"), 0..5),
        ) {
            let mut text = String::new();
            let mut want = String::new();
            for (r, lit) in &parts {
                text.push_str(&format!("$[{r}]{lit}"));
                want.push_str(&format!("<{r}>{lit}"));
            }
            prop_assert_eq!(substitute(&text, id), Ok(want));
        }
    }
}
