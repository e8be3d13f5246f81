//! `.artifactignore` files (Azure Pipelines), in gitignore syntax.
//!
//! - Blank lines and `#` comments are skipped (`\#` is a literal `#`);
//!   trailing unescaped spaces are dropped.
//! - `!` negates (`\!` is a literal `!`); the last matching rule wins.
//! - A trailing `/` matches directories only.
//! - A pattern with a `/` at the start or in the middle is anchored to the
//!   directory holding the file; otherwise it matches a name at any depth.
//! - `*`, `?`, `[…]` (`[!…]` negated) and `**` (`**/x`, `x/**`, `a/**/b`)
//!   as in git. Braces are literal, as in git.
//! - A path inside an ignored directory is ignored, whatever later rules
//!   say (git cannot re-include a file whose parent is excluded).
//!
//! Each pattern is translated to the project's one glob dialect
//! ([`crate::glob`]).

use crate::glob::Glob;

/// One rule.
#[derive(Debug, Clone)]
struct Rule {
    glob: Glob,
    negate: bool,
    dir_only: bool,
}

/// Parsed rules of one ignore file.
#[derive(Debug, Clone, Default)]
pub struct IgnoreRules {
    rules: Vec<Rule>,
}

/// A line that is not a valid pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: invalid pattern {pattern:?}: {why}")]
pub struct IgnoreError {
    /// 1-based line number.
    pub line: usize,
    /// The pattern.
    pub pattern: String,
    /// What is wrong.
    pub why: String,
}

/// Drops trailing spaces that are not escaped with a backslash.
fn trim_trailing_spaces(s: &str) -> &str {
    let mut end = s.len();
    while end > 0 && s.as_bytes()[end - 1] == b' ' {
        // Count backslashes before this space.
        let mut n = 0;
        while end >= 2 + n && s.as_bytes()[end - 2 - n] == b'\\' {
            n += 1;
        }
        if n % 2 == 1 {
            break;
        }
        end -= 1;
    }
    &s[..end]
}

/// Translates a gitignore pattern body (no `!`, no trailing `/`) to the
/// glob dialect: braces and commas become literal, `[!` becomes `[^`,
/// escapes stay escapes.
fn to_glob(p: &str) -> String {
    let mut out = String::with_capacity(p.len() + 8);
    let mut chars = p.chars().peekable();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.push_str(&crate::glob::escape(&n.to_string()));
                }
            }
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                if chars.peek() == Some(&'!') {
                    chars.next();
                    out.push('^');
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '{' | '}' | ',' if !in_class => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

impl IgnoreRules {
    /// Parses an ignore file's text.
    pub fn parse(text: &str) -> Result<IgnoreRules, IgnoreError> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = trim_trailing_spaces(raw.trim_end_matches('\r'));
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negate, body) = match line.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            // `\#` and `\!` at the start are literal characters.
            let body = body
                .strip_prefix("\\#")
                .map(|r| format!("\\#{r}"))
                .or_else(|| body.strip_prefix("\\!").map(|r| format!("\\!{r}")))
                .unwrap_or_else(|| body.to_string());
            let (body, dir_only) = match body.strip_suffix('/') {
                Some(b) => (b.to_string(), true),
                None => (body, false),
            };
            let anchored = body.starts_with('/') || body.trim_end_matches('/').contains('/');
            let body = body.trim_start_matches('/');
            if body.is_empty() {
                continue;
            }
            let glob = if anchored {
                to_glob(body)
            } else {
                format!("**/{}", to_glob(body))
            };
            let glob = Glob::new(&glob).map_err(|e| IgnoreError {
                line: i + 1,
                pattern: line.to_string(),
                why: e.to_string(),
            })?;
            rules.push(Rule {
                glob,
                negate,
                dir_only,
            });
        }
        Ok(IgnoreRules { rules })
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The verdict of the rules for `path` alone (parents not considered).
    fn verdict(&self, path: &str, is_dir: bool) -> bool {
        let mut ignored = false;
        for r in &self.rules {
            if r.dir_only && !is_dir {
                continue;
            }
            if r.glob.is_match(path) {
                ignored = !r.negate;
            }
        }
        ignored
    }

    /// Whether `path` (normalized, relative to the ignore file's directory)
    /// is ignored, either itself or through one of its parent directories.
    pub fn is_ignored(&self, path: &str, is_dir: bool) -> bool {
        if self.rules.is_empty() {
            return false;
        }
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let parent = &path[..at + i];
            if self.verdict(parent, true) {
                return true;
            }
            at += i + 1;
        }
        self.verdict(path, is_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules(text: &str) -> IgnoreRules {
        IgnoreRules::parse(text).unwrap()
    }

    #[test]
    fn gitignore_examples() {
        let r = rules("doc/frotz/\n");
        assert!(r.is_ignored("doc/frotz", true));
        assert!(r.is_ignored("doc/frotz/x.txt", false));
        assert!(!r.is_ignored("a/doc/frotz", true));
        assert!(!r.is_ignored("doc/frotz", false));

        let r = rules("frotz/\n");
        assert!(r.is_ignored("frotz", true));
        assert!(r.is_ignored("a/frotz/b.txt", false));
        assert!(!r.is_ignored("frotz", false));

        let r = rules("/*.c\n");
        assert!(r.is_ignored("cat-file.c", false));
        assert!(!r.is_ignored("mozilla-sha1/sha1.c", false));

        let r = rules("**/foo\n");
        assert!(r.is_ignored("foo", false));
        assert!(r.is_ignored("a/b/foo", true));

        let r = rules("abc/**\n");
        assert!(r.is_ignored("abc/x", false));
        assert!(r.is_ignored("abc/x/y", false));
        assert!(!r.is_ignored("abc", true));

        let r = rules("a/**/b\n");
        assert!(r.is_ignored("a/b", false));
        assert!(r.is_ignored("a/x/b", false));
        assert!(r.is_ignored("a/x/y/b", false));
        assert!(!r.is_ignored("z/a/b", false));
    }

    #[test]
    fn negation_and_order() {
        let r = rules("*.log\n!important.log\n");
        assert!(r.is_ignored("x.log", false));
        assert!(r.is_ignored("d/x.log", false));
        assert!(!r.is_ignored("important.log", false));
        assert!(!r.is_ignored("d/important.log", false));
        let r = rules("!important.log\n*.log\n");
        assert!(r.is_ignored("important.log", false));
        // A file in an excluded directory cannot be re-included.
        let r = rules("build/\n!build/keep.txt\n");
        assert!(r.is_ignored("build/keep.txt", false));
    }

    #[test]
    fn comments_escapes_and_spaces() {
        let r = rules("# comment\n\n\\#hash\n\\!bang\ntrailing   \nspace\\ \n{a,b}\n[!x]y\n");
        assert!(r.is_ignored("#hash", false));
        assert!(r.is_ignored("!bang", false));
        assert!(r.is_ignored("trailing", false));
        assert!(r.is_ignored("space ", false));
        assert!(!r.is_ignored("space", false));
        assert!(r.is_ignored("{a,b}", false));
        assert!(!r.is_ignored("a", false));
        assert!(r.is_ignored("zy", false));
        assert!(!r.is_ignored("xy", false));
        assert!(!r.is_ignored("comment", false));
    }

    #[test]
    fn bad_patterns_name_their_line() {
        let e = IgnoreRules::parse("ok\n[abc\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    proptest! {
        #[test]
        fn never_panics(text in ".{0,60}", path in "[a-z]{1,3}(/[a-z]{1,3}){0,3}") {
            if let Ok(r) = IgnoreRules::parse(&text) {
                let _ = r.is_ignored(&path, false);
                let _ = r.is_ignored(&path, true);
            }
        }

        #[test]
        fn a_plain_name_matches_at_any_depth(name in "[a-z]{1,8}", dirs in "([a-z]{1,3}/){0,3}") {
            let r = rules(&format!("{name}\n"));
            let path = format!("{dirs}{name}");
            prop_assert!(r.is_ignored(&path, false));
        }
    }
}
