//! Text of a foreign pipeline file after its macros or expressions are
//! substituted (`$(name)` in Azure, `${{ … }}` in GitHub Actions): plain
//! text, and values known only when the job runs, which become expansions
//! of the environment variables the job sets. One owner for how such text
//! is written into a script, a shell word or an input known now.

use super::shell_quote;

/// A piece of text after substitution.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Piece {
    /// Text as written (or a variable's value).
    Text(String),
    /// A value known only when the job runs.
    Runtime {
        /// The environment variable holding it.
        env: String,
        /// Its value in a path input, if it has one there (a directory of
        /// the job, as the runner writes it).
        path: Option<String>,
        /// As the file wrote it, for messages (`$(Build.BuildId)`).
        written: String,
    },
}

impl Piece {
    /// Its length as text, for the expansion limit.
    pub(crate) fn len(&self) -> usize {
        match self {
            Piece::Text(t) => t.len(),
            Piece::Runtime { env, .. } => env.len(),
        }
    }
}

/// The most bytes one text may expand to (variables that each use the
/// next many times would otherwise grow without bound).
pub(crate) const MAX_EXPANDED: usize = 1 << 20;

/// Text after substitution.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Expanded(pub(crate) Vec<Piece>);

impl Expanded {
    /// Appends `text`, merging it into a last text piece.
    pub(crate) fn push_text(&mut self, text: &str) {
        match self.0.last_mut() {
            _ if text.is_empty() => {}
            Some(Piece::Text(last)) => last.push_str(text),
            _ => self.0.push(Piece::Text(text.to_string())),
        }
    }

    /// For a script: runtime values as expansions of `$NAME`, quoted for
    /// where they stand, where the CI's textual substitution would have
    /// put them.
    pub(crate) fn script(&self) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Runtime { env, .. } => {
                    let e = crate::shell::expansion_after(&out, env);
                    out.push_str(&e);
                }
            }
        }
        out
    }

    /// The value when it is plain text (nothing known only when the job
    /// runs, not even a directory).
    pub(crate) fn plain(&self) -> Option<String> {
        self.0
            .iter()
            .map(|p| match p {
                Piece::Text(t) => Some(t.as_str()),
                Piece::Runtime { .. } => None,
            })
            .collect()
    }

    /// As one shell word: text quoted, runtime values expanded.
    pub(crate) fn word(&self) -> String {
        if self.0.is_empty() {
            return "''".into();
        }
        self.0
            .iter()
            .map(|p| match p {
                Piece::Text(t) => shell_quote(t),
                Piece::Runtime { env, .. } => format!("\"${{{env}}}\""),
            })
            .collect()
    }

    /// As an input's value, known now: a runtime value only where it is a
    /// directory of the job.
    pub(crate) fn value(&self) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Runtime { path: Some(v), .. } => out.push_str(v),
                Piece::Runtime {
                    path: None,
                    written,
                    ..
                } => {
                    return Err(format!(
                        "{written} is known only when the job runs; inputs can use it only in scripts so far"
                    ))
                }
            }
        }
        Ok(out)
    }
}
