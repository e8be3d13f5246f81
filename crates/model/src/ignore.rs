//! `.artifactignore` files (Azure Pipelines), in gitignore syntax.
//!
//! - Blank lines and lines starting with `#` are skipped (`\#` starts a
//!   pattern with a literal `#`); trailing spaces are dropped unless escaped
//!   (`\ `). A UTF-8 byte order mark and `\r\n` line ends are accepted.
//! - `!` negates (`\!` is a literal `!`); the last matching rule wins.
//! - A trailing `/` matches directories only.
//! - A pattern with a `/` at the start or in the middle is anchored to the
//!   directory holding the file; otherwise it matches a name at any depth.
//! - `*` (not `/`), `?` (one character, not `/`), `[…]` classes (`[!…]` or
//!   `[^…]` negated, ranges, `[:alpha:]` and the other POSIX classes),
//!   `\x` escapes, and `**` as a whole segment: leading `**/x` (at any
//!   depth), trailing `x/**` (everything inside `x`) and middle `a/**/b`
//!   (zero or more directories). Braces and commas are literal, as in git.
//! - A path inside an ignored directory is ignored, whatever later rules
//!   say: as in git, a file whose parent directory is excluded cannot be
//!   re-included. So a directory walk may skip a directory `d` as soon as
//!   `is_ignored(d, true)` holds.
//!
//! Each pattern is translated to the project's one glob dialect
//! ([`crate::glob`]). Matching is case-sensitive.

use crate::glob::{self, Glob};

/// One rule: a translated pattern and its flags.
#[derive(Debug, Clone)]
struct Rule {
    glob: Glob,
    negate: bool,
    dir_only: bool,
}

/// The parsed rules of one ignore file.
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
    /// The pattern, as written on the line (without trailing spaces).
    pub pattern: String,
    /// What is wrong, and how to fix it.
    pub why: String,
}

/// The POSIX class names accepted in `[[:name:]]`, as shown in messages.
const POSIX_CLASSES: &str =
    "alnum, alpha, blank, cntrl, digit, graph, lower, print, punct, space, upper or xdigit";

/// The characters of a POSIX class (ASCII only, as in git).
fn posix_class(name: &str) -> Option<&'static [(char, char)]> {
    Some(match name {
        "alnum" => &[('0', '9'), ('A', 'Z'), ('a', 'z')],
        "alpha" => &[('A', 'Z'), ('a', 'z')],
        "blank" => &[(' ', ' '), ('\t', '\t')],
        // Paths never contain NUL, and globs may not.
        "cntrl" => &[('\u{1}', '\u{1f}'), ('\u{7f}', '\u{7f}')],
        "digit" => &[('0', '9')],
        "graph" => &[('!', '~')],
        "lower" => &[('a', 'z')],
        "print" => &[(' ', '~')],
        "punct" => &[('!', '/'), (':', '@'), ('[', '`'), ('{', '~')],
        "space" => &[('\t', '\r'), (' ', ' ')],
        "upper" => &[('A', 'Z')],
        "xdigit" => &[('0', '9'), ('A', 'F'), ('a', 'f')],
        _ => return None,
    })
}

/// Drops trailing spaces that are not escaped with a backslash.
fn trim_trailing_spaces(s: &str) -> &str {
    let b = s.as_bytes();
    let mut end = b.len();
    while end > 0 && b[end - 1] == b' ' {
        // An odd number of backslashes before this space escapes it.
        let backslashes = b[..end - 1]
            .iter()
            .rev()
            .take_while(|&&c| c == b'\\')
            .count();
        if backslashes % 2 == 1 {
            break;
        }
        end -= 1;
    }
    &s[..end]
}

/// Translates gitignore pattern text (no `!`, no leading or trailing `/`)
/// to the glob dialect. `col` is the 1-based column of `chars[0]` on its
/// line, for messages.
fn translate(chars: &[char], col: usize) -> Result<String, String> {
    let mut out = String::with_capacity(chars.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                let Some(&c) = chars.get(i + 1) else {
                    return Err("it ends with a '\\' that escapes nothing; write '\\\\' for a literal backslash".into());
                };
                out.push_str(&glob::escape(&c.to_string()));
                i += 2;
            }
            '*' => {
                let start = i;
                while chars.get(i) == Some(&'*') {
                    i += 1;
                }
                let whole_segment = (start == 0 || chars[start - 1] == '/')
                    && (i == chars.len() || chars[i] == '/');
                // Two or more stars are `**` only as a whole segment; any
                // other run of stars means `*`.
                out.push_str(if whole_segment && i - start >= 2 {
                    "**"
                } else {
                    "*"
                });
            }
            '?' => {
                out.push('?');
                i += 1;
            }
            '[' => {
                let (class, next) = translate_class(chars, i, col)?;
                out.push_str(&class);
                i = next;
            }
            '/' => {
                out.push('/');
                i += 1;
            }
            c => {
                // Braces, commas and a stray `]` are literal in gitignore.
                out.push_str(&glob::escape(&c.to_string()));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Pushes a class item, escaped so that the glob dialect reads it
/// literally.
fn push_class_range(out: &mut String, lo: char, hi: char) {
    out.push('\\');
    out.push(lo);
    if hi != lo {
        out.push_str("-\\");
        out.push(hi);
    }
}

/// Translates the class whose `[` is at `chars[open]`, with git's rules: a
/// `]` first is literal, `-` between two characters is a range, `\` escapes,
/// `[:name:]` is a POSIX class. Returns the glob text and the index after
/// the closing `]`.
fn translate_class(chars: &[char], open: usize, col: usize) -> Result<(String, usize), String> {
    let unclosed = || {
        format!(
            "the '[' at column {} has no closing ']'; write '\\[' for a literal '['",
            col + open
        )
    };
    // One (possibly escaped) character at `i`, and the index after it.
    let class_char = |i: usize| -> Result<(char, usize), String> {
        match chars.get(i) {
            Some('\\') => match chars.get(i + 1) {
                Some(&c) => Ok((c, i + 2)),
                None => Err(unclosed()),
            },
            Some(&c) => Ok((c, i + 1)),
            None => Err(unclosed()),
        }
    };
    let mut out = String::from("[");
    let mut i = open + 1;
    if matches!(chars.get(i), Some('!' | '^')) {
        out.push('^');
        i += 1;
    }
    let mut first = true;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(unclosed());
        };
        if c == ']' && !first {
            out.push(']');
            return Ok((out, i + 1));
        }
        first = false;
        if c == '[' && chars.get(i + 1) == Some(&':') {
            // `[:name:]`, if a `:]` closes it before the next `]`.
            let close = chars[i + 2..]
                .iter()
                .position(|&c| c == ']')
                .map(|p| i + 2 + p);
            if let Some(close) = close.filter(|&j| j > i + 2 && chars[j - 1] == ':') {
                let name: String = chars[i + 2..close - 1].iter().collect();
                let Some(ranges) = posix_class(&name) else {
                    return Err(format!(
                        "unknown character class '[:{name}:]' at column {}; use {POSIX_CLASSES}",
                        col + i
                    ));
                };
                for &(lo, hi) in ranges {
                    push_class_range(&mut out, lo, hi);
                }
                i = close + 1;
                continue;
            }
        }
        let (lo, next) = class_char(i)?;
        let is_range =
            chars.get(next) == Some(&'-') && chars.get(next + 1).is_some_and(|&c| c != ']');
        if is_range {
            let (hi, after) = class_char(next + 1)?;
            if lo > hi {
                return Err(format!(
                    "the range '{lo}-{hi}' at column {} is reversed and matches nothing; write '{hi}-{lo}'",
                    col + i
                ));
            }
            push_class_range(&mut out, lo, hi);
            i = after;
        } else {
            push_class_range(&mut out, lo, lo);
            i = next;
        }
    }
}

impl IgnoreRules {
    /// Parses the text of an ignore file. Fails on the first line that is
    /// not a valid pattern, naming it.
    pub fn parse(text: &str) -> Result<IgnoreRules, IgnoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut rules = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            if raw.starts_with('#') {
                continue;
            }
            let line = trim_trailing_spaces(raw);
            let (negate, rest) = match line.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let (body, dir_only) = match rest.strip_suffix('/') {
                Some(b) => (b, true),
                None => (rest, false),
            };
            let anchored = body.contains('/');
            let body = body.trim_start_matches('/');
            if body.is_empty() {
                // Blank, or only `!` or `/`: nothing to match.
                continue;
            }
            let col = line[..line.len() - rest.len()].chars().count()
                + (rest.len() - rest.trim_start_matches('/').len())
                + 1;
            let err = |why: String| IgnoreError {
                line: n + 1,
                pattern: line.to_string(),
                why,
            };
            let chars: Vec<char> = body.chars().collect();
            let translated = translate(&chars, col).map_err(err)?;
            let pattern = if anchored {
                translated
            } else {
                format!("**/{translated}")
            };
            let glob = Glob::new(&pattern).map_err(|e| err(e.to_string()))?;
            rules.push(Rule {
                glob,
                negate,
                dir_only,
            });
        }
        Ok(IgnoreRules { rules })
    }

    /// Whether there are no rules (nothing is ever ignored).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The verdict of the rules for `path` alone, parents not considered:
    /// the last matching rule wins.
    fn verdict(&self, path: &str, is_dir: bool) -> bool {
        self.rules
            .iter()
            .rev()
            .find(|r| (is_dir || !r.dir_only) && r.glob.is_match(path))
            .is_some_and(|r| !r.negate)
    }

    /// Whether `path` is ignored, itself or through one of its parent
    /// directories. `path` is a normalized relative path (`/`-separated, no
    /// leading or trailing `/`), relative to the directory holding the ignore
    /// file; `is_dir` says whether it names a directory. The empty path (that
    /// directory itself) is never ignored.
    pub fn is_ignored(&self, path: &str, is_dir: bool) -> bool {
        if self.rules.is_empty() || path.is_empty() {
            return false;
        }
        path.match_indices('/')
            .any(|(i, _)| self.verdict(&path[..i], true))
            || self.verdict(path, is_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules(text: &str) -> IgnoreRules {
        IgnoreRules::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    /// Asserts which files (`f:path`) and directories (`d:path`) `text`
    /// ignores.
    #[track_caller]
    fn check(text: &str, ignored: &[&str], kept: &[&str]) {
        let r = rules(text);
        fn split(p: &str) -> (&str, bool) {
            match p.split_once(':') {
                Some(("d", p)) => (p, true),
                Some(("f", p)) => (p, false),
                _ => panic!("write f:path or d:path, not {p:?}"),
            }
        }
        for p in ignored {
            let (path, is_dir) = split(p);
            assert!(r.is_ignored(path, is_dir), "{text:?} should ignore {p}");
        }
        for p in kept {
            let (path, is_dir) = split(p);
            assert!(!r.is_ignored(path, is_dir), "{text:?} should keep {p}");
        }
    }

    #[test]
    fn a_name_matches_at_any_depth() {
        // gitignore(5): "hello.*" matches any file or directory whose name
        // begins with "hello.".
        check(
            "hello.*",
            &["f:hello.c", "d:hello.d", "f:a/b/hello.txt", "f:hello.d/x"],
            &["f:hello", "f:a/hellox.c", "f:ahello.c"],
        );
        check(
            "*.log",
            &["f:x.log", "f:d/e/x.log", "f:.log", "f:logs.log/inner.txt"],
            &["f:x.log.gz", "f:log", "f:d/x.txt"],
        );
    }

    #[test]
    fn trailing_slash_means_directories_only() {
        // gitignore(5): "frotz/" matches "frotz" and "a/frotz" that are
        // directories.
        check(
            "frotz/",
            &["d:frotz", "d:a/frotz", "f:frotz/x.txt", "f:a/frotz/b/c"],
            &["f:frotz", "f:a/frotz", "d:frotzz", "f:x/frotz.txt"],
        );
        // "doc/frotz/" matches "doc/frotz" but not "a/doc/frotz".
        check(
            "doc/frotz/",
            &["d:doc/frotz", "f:doc/frotz/x.txt"],
            &[
                "d:a/doc/frotz",
                "f:doc/frotz",
                "f:a/doc/frotz/x.txt",
                "d:doc",
            ],
        );
    }

    #[test]
    fn a_slash_at_the_start_or_middle_anchors() {
        // gitignore(5): "doc/frotz" and "/doc/frotz" have the same effect.
        for text in ["doc/frotz", "/doc/frotz"] {
            check(
                text,
                &["f:doc/frotz", "d:doc/frotz", "f:doc/frotz/x"],
                &["f:a/doc/frotz", "f:frotz", "d:doc"],
            );
        }
        // "/*.c" matches "cat-file.c" but not "mozilla-sha1/sha1.c".
        check(
            "/*.c",
            &["f:cat-file.c", "f:.c"],
            &["f:mozilla-sha1/sha1.c", "f:cat-file.h"],
        );
        // "foo/*" matches "foo/test.json" and the directory "foo/bar"; the
        // pattern does not match "foo/bar/hello.c", but that file is inside
        // an ignored directory.
        check(
            "foo/*",
            &["f:foo/test.json", "d:foo/bar", "f:foo/bar/hello.c"],
            &["d:foo", "f:foo", "f:a/foo/test.json"],
        );
        check(
            "/build",
            &["d:build", "f:build", "f:build/a"],
            &["d:x/build"],
        );
    }

    #[test]
    fn double_star() {
        // "**/foo" matches "foo" anywhere; "**/foo/bar" matches "bar"
        // directly under any "foo".
        check(
            "**/foo",
            &["f:foo", "d:a/b/foo", "f:a/foo/x"],
            &["f:foox", "f:a/xfoo"],
        );
        check(
            "**/foo/bar",
            &["f:foo/bar", "f:a/b/foo/bar", "d:x/foo/bar"],
            &["f:foo/x/bar", "f:bar", "f:foo"],
        );
        // "abc/**" matches everything inside "abc", not "abc" itself.
        check(
            "abc/**",
            &["f:abc/x", "d:abc/x", "f:abc/x/y/z"],
            &["d:abc", "f:abc", "f:x/abc/y"],
        );
        // "a/**/b" matches "a/b", "a/x/b", "a/x/y/b".
        check(
            "a/**/b",
            &["f:a/b", "f:a/x/b", "f:a/x/y/b", "f:a/x/b/inside"],
            &["f:z/a/b", "f:a/bb", "f:ab", "f:a/x"],
        );
        // Stars that are not a whole segment are ordinary stars.
        check(
            "foo**bar",
            &["f:foobar", "f:d/fooXbar"],
            &["d:foo/bar", "f:foo/x/bar"],
        );
        // A run of three stars as a whole segment is `**`.
        check("a/***/b", &["f:a/b", "f:a/x/y/b"], &["f:b"]);
        check("**", &["f:a", "d:a/b", "f:a/b/c"], &[]);
        check("/**/x.txt", &["f:x.txt", "f:a/b/x.txt"], &["f:x.txt2"]);
        check(
            "logs/**/",
            &["d:logs/a", "f:logs/a/b.txt"],
            &["d:logs", "f:logs/b.txt"],
        );
    }

    #[test]
    fn wildcards_and_classes() {
        check(
            "?.txt",
            &["f:a.txt", "f:é.txt", "f:d/b.txt"],
            &["f:ab.txt", "f:.txt"],
        );
        check("[abc].o", &["f:a.o", "f:x/c.o"], &["f:d.o", "f:ab.o"]);
        check("[a-c]x", &["f:bx"], &["f:dx", "f:-x"]);
        check("[!a-c]x", &["f:dx", "f:-x"], &["f:ax"]);
        check("[^a-c]x", &["f:dx"], &["f:bx"]);
        check("[]a]", &["f:]", "f:a"], &["f:b"]);
        check("[!]a]", &["f:b"], &["f:]", "f:a"]);
        check("[a-]", &["f:a", "f:-"], &["f:b"]);
        // An escaped `-` is not a range.
        check("[a\\-z]", &["f:a", "f:-", "f:z"], &["f:b"]);
        check("[\\]]", &["f:]"], &["f:\\"]);
        check("[a-c-e]", &["f:b", "f:-", "f:e"], &["f:d"]);
        // Characters that are special to the glob dialect are literal in a
        // class.
        check("[{,}*?]", &["f:{", "f:,", "f:*", "f:?"], &["f:a"]);
        // POSIX classes.
        check("[[:digit:]]*", &["f:1a", "f:9"], &["f:a1"]);
        check(
            "x[[:alpha:]_]",
            &["f:xa", "f:xZ", "f:x_"],
            &["f:x1", "f:xé"],
        );
        check("[![:space:]]", &["f:a"], &["f: ", "f:\t"]);
        check("[[:upper:][:digit:]]", &["f:A", "f:7"], &["f:a"]);
        check("[[:punct:]]", &["f:!", "f:~", "f:_"], &["f:a"]);
        // `[:` without `:]` is a literal `[` in the class.
        check("[[:a]", &["f:[", "f::", "f:a"], &["f:b"]);
        // A class never matches `/`.
        check("a[/]b", &[], &["f:a/b"]);
        check("a[!x]b", &["f:ayb"], &["f:a/b"]);
    }

    #[test]
    fn braces_and_commas_are_literal() {
        check("{a,b}", &["f:{a,b}", "f:x/{a,b}"], &["f:a", "f:b"]);
        check("a,b", &["f:a,b"], &["f:a"]);
        check("x}", &["f:x}"], &["f:x"]);
        check("a]b", &["f:a]b"], &[]);
    }

    #[test]
    fn negation_and_order() {
        // The last matching rule wins.
        let text = "*.log\n!important.log\n";
        check(
            text,
            &["f:x.log", "f:d/x.log"],
            &["f:important.log", "f:d/important.log"],
        );
        check("!important.log\n*.log\n", &["f:important.log"], &[]);
        check("*.log\n!*.log\n*.log\n", &["f:a.log"], &[]);
        // A file inside an excluded directory cannot be re-included.
        check(
            "build/\n!build/keep.txt\n",
            &["d:build", "f:build/keep.txt", "f:build/other.txt"],
            &["f:keep.txt"],
        );
        check("build\n!build/keep.txt\n", &["f:build/keep.txt"], &[]);
        // gitignore(5): exclude everything except directory foo/bar.
        check(
            "/*\n!/foo\n/foo/*\n!/foo/bar\n",
            &["f:a.txt", "d:x", "f:x/y", "f:foo/baz", "f:foo/baz/q"],
            &["d:foo", "d:foo/bar", "f:foo/bar/hello.c", "f:foo/bar/d/e"],
        );
        // Re-including a directory re-includes what is in it.
        check("logs/\n!logs/\n", &[], &["d:logs", "f:logs/a.txt"]);
        // A negated directory-only rule leaves files alone.
        check("x\n!x/\n", &["f:x"], &["d:x", "f:x/y"]);
    }

    #[test]
    fn comments_escapes_and_spaces() {
        check(
            "# comment\n\n   \n\\#hash\n\\!bang\n!\\!keep!\n",
            &["f:#hash", "f:!bang"],
            &["f:comment", "f:# comment", "f:!keep!", "f:hash"],
        );
        // Only a `#` at the very start makes a comment.
        check(" #x", &["f: #x"], &["f:#x"]);
        // Trailing spaces are dropped unless escaped.
        check("trailing   \n", &["f:trailing"], &["f:trailing   "]);
        check("space\\ \n", &["f:space "], &["f:space"]);
        check("two\\  \n", &["f:two "], &["f:two  ", "f:two"]);
        check("a\\\\ \n", &["f:a\\"], &["f:a\\ "]);
        check("in side\n", &["f:in side"], &["f:inside"]);
        check(" lead\n", &["f: lead"], &["f:lead"]);
        // Escapes.
        check("\\*.txt", &["f:*.txt"], &["f:a.txt"]);
        check("\\[a]", &["f:[a]"], &["f:a"]);
        check("\\a\\b", &["f:ab"], &[]);
        check("a\\\\b", &["f:a\\b"], &["f:ab"]);
    }

    #[test]
    fn file_format_details() {
        // CRLF line ends, a byte order mark, no final newline.
        check(
            "\u{feff}a.txt\r\nb.txt\r\n!c.txt",
            &["f:a.txt", "f:b.txt"],
            &["f:c.txt", "f:b.txt\r"],
        );
        check("x\r", &["f:x"], &[]);
        // Lines that match nothing.
        let r = rules("/\n!\n\n#\n   \n");
        assert!(r.is_empty());
        assert!(!r.is_ignored("a", false));
        let r = rules("");
        assert!(r.is_empty());
        assert!(!r.is_ignored("a/b", true));
        assert!(IgnoreRules::default().is_empty());
        // The directory itself is never ignored.
        assert!(!rules("**\n*\n").is_ignored("", true));
        assert!(!rules("*").is_empty());
    }

    #[test]
    fn a_walk_can_prune_ignored_directories() {
        let r = rules("node_modules/\ntarget\n!target/keep\n");
        assert!(r.is_ignored("web/node_modules", true));
        assert!(r.is_ignored("target", true));
        // And everything below them is ignored too, so pruning is safe.
        assert!(r.is_ignored("web/node_modules/a/b.js", false));
        assert!(r.is_ignored("target/keep", false));
        assert!(!r.is_ignored("web/src/a.js", false));
    }

    #[test]
    fn bad_patterns_name_their_line_and_say_what_to_do() {
        let e = IgnoreRules::parse("ok\n# fine\n  [abc\n").unwrap_err();
        assert_eq!(
            e,
            IgnoreError {
                line: 3,
                pattern: "  [abc".into(),
                why: "the '[' at column 3 has no closing ']'; write '\\[' for a literal '['".into(),
            }
        );
        assert_eq!(
            e.to_string(),
            "line 3: invalid pattern \"  [abc\": the '[' at column 3 has no closing ']'; write '\\[' for a literal '['"
        );
        let e = IgnoreRules::parse("!/a/[b").unwrap_err();
        assert!(e.why.contains("column 5"), "{e}");

        let cases = [
            ("abc\\", "ends with a '\\' that escapes nothing"),
            ("[]", "no closing ']'"),
            ("[!]", "no closing ']'"),
            ("[a\\", "no closing ']'"),
            (
                "x[z-a]",
                "the range 'z-a' at column 3 is reversed and matches nothing; write 'a-z'",
            ),
            (
                "[[:alfa:]]",
                "unknown character class '[:alfa:]' at column 2; use alnum, alpha",
            ),
            ("a\0b", "NUL byte"),
        ];
        for (text, want) in cases {
            let e = IgnoreRules::parse(&format!("good\n{text}\n")).unwrap_err();
            assert_eq!(e.line, 2, "{text:?}");
            assert_eq!(e.pattern, text);
            assert!(
                e.to_string().contains(want),
                "{text:?}: want {want:?} in {e}"
            );
        }
        let long = "a".repeat(glob::MAX_PATTERN_BYTES);
        let e = IgnoreRules::parse(&long).unwrap_err();
        assert!(e.why.contains("the limit is"), "{e}");
    }

    #[test]
    fn an_anchored_name_hides_what_is_inside_it() {
        let r = rules("/e\n");
        assert!(r.is_ignored("e/e", false), "inside the ignored root e");
        assert!(!r.is_ignored("d/e", false));
    }

    /// Normalized relative paths over a small alphabet.
    fn path() -> impl Strategy<Value = String> {
        "[a-c]{1,3}(/[a-c.]{1,3}){0,3}".prop_filter("no . or .. segments", |p| {
            p.split('/').all(|s| s != "." && s != "..")
        })
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC{0,60}|[a-c*?!#/\\\\\\[\\]:^ -]{0,20}(\\n[a-c*?!/\\[\\]]{0,6}){0,3}", p in path()) {
            if let Ok(r) = IgnoreRules::parse(&text) {
                let _ = r.is_ignored(&p, false);
                let _ = r.is_ignored(&p, true);
            }
        }

        #[test]
        fn a_plain_name_matches_at_any_depth(name in "[a-z]{1,8}", dirs in "([a-z]{1,3}/){0,3}") {
            let r = rules(&format!("{name}\n"));
            let path = format!("{dirs}{name}");
            prop_assert!(r.is_ignored(&path, false));
            prop_assert!(r.is_ignored(&path, true));
            let p = format!("{path}/inside");
            prop_assert!(r.is_ignored(&p, false), "{p}");
            let p = format!("{name}x");
            prop_assert!(!r.is_ignored(&p, false), "{p}");
        }

        #[test]
        fn an_anchored_name_matches_only_at_the_root(name in "[a-z]{1,8}", dir in "[a-z]{1,3}") {
            // `NAME/NAME` is inside the ignored root `NAME`, so ignored.
            prop_assume!(dir != name);
            let r = rules(&format!("/{name}\n"));
            prop_assert!(r.is_ignored(&name, false));
            let p = format!("{dir}/{name}");
            prop_assert!(!r.is_ignored(&p, false), "{p}");
        }

        #[test]
        fn escaped_literal_patterns_match_themselves(name in "[a-c*?\\[\\]{},!# \\\\]{1,6}") {
            // Escape every character, as gitignore allows.
            let pattern: String = name.chars().flat_map(|c| ['\\', c]).collect();
            let r = rules(&pattern);
            prop_assert!(r.is_ignored(&name, false));
            let p = format!("d/{name}");
            prop_assert!(r.is_ignored(&p, false), "{p}");
            let p = format!("{name}x");
            prop_assert!(!r.is_ignored(&p, false), "{p}");
        }

        #[test]
        fn children_of_ignored_directories_are_ignored(text in "([a-c*!/]{1,4}\\n){0,4}", p in path(), child in "[a-c]{1,2}") {
            if let Ok(r) = IgnoreRules::parse(&text) {
                if r.is_ignored(&p, true) {
                    let child_path = format!("{p}/{child}");
                    prop_assert!(r.is_ignored(&child_path, false));
                    prop_assert!(r.is_ignored(&child_path, true));
                }
            }
        }

        #[test]
        fn negating_everything_keeps_everything(text in "([a-c*?/]{1,4}\\n){0,4}", p in path()) {
            // Rules that each re-include what they match, after the fact:
            // with no directory-only rules, a final `!**` re-includes all.
            let r = rules(&format!("{text}!**\n"));
            prop_assert!(!r.is_ignored(&p, false));
        }
    }
}
