//! The glob dialect shared by uploads (matching files on disk) and download
//! queries (matching stored artifact paths).
//!
//! Globs match normalized relative paths (see [`crate::path`]): `/`-separated,
//! no leading `/`, no `.`, `..` or empty segments.
//!
//! | Syntax       | Meaning                                                        |
//! |--------------|----------------------------------------------------------------|
//! | `*`          | any run of characters except `/`, possibly empty               |
//! | `?`          | exactly one character (Unicode scalar) except `/`              |
//! | `**`         | as a whole segment: zero or more whole segments (see below)    |
//! | `[abc]`      | one of the listed characters; `[a-z]` ranges; never `/`        |
//! | `[^abc]`     | any character except those listed (also `[!abc]`); never `/`   |
//! | `{a,b}`      | alternation; may nest, may be empty, may contain `/`           |
//! | `\x`         | the character `x` literally                                    |
//!
//! `**` as a whole segment: `a/**/b` matches `a/b`, `a/x/b`, `a/x/y/b`;
//! `**/b` matches `b` and `x/y/b`; `a/**` matches everything *below* `a` but
//! not `a` itself; `**` alone matches any path. A `**` that is not a whole
//! segment (`a**b`) behaves like `*`.
//!
//! In a class, a `]` that comes first is literal (`[]a]`), and so is a `-`
//! that comes first or last. A `}` or `,` outside braces is literal. A leading
//! `./` is stripped from the pattern.
//!
//! Matching runs in polynomial time (a single-backtrack-point algorithm within
//! segments and across `**`), so hostile patterns such as `*a*a*a*a*b` cannot
//! blow up.

use std::fmt;

/// Longest accepted pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 4096;

/// Most alternatives a pattern's `{…}` groups may expand to, in total.
pub const MAX_ALTERNATIVES: usize = 1024;

/// Why a pattern is not a valid glob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GlobError {
    /// The pattern is empty (or only `./`).
    #[error("glob pattern is empty")]
    Empty,
    /// The pattern is longer than [`MAX_PATTERN_BYTES`].
    #[error("glob pattern is {len} bytes long; the limit is {max} bytes")]
    TooLong {
        /// Length of the pattern in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The pattern contains a NUL byte.
    #[error("NUL byte at offset {offset} in pattern {pattern:?}")]
    Nul {
        /// Byte offset of the NUL.
        offset: usize,
        /// The pattern.
        pattern: String,
    },
    /// A `[` has no matching `]`.
    #[error("unclosed '[' at offset {offset} in pattern {pattern:?}")]
    UnclosedClass {
        /// Byte offset of the `[`.
        offset: usize,
        /// The pattern.
        pattern: String,
    },
    /// A `{` has no matching `}`.
    #[error("unclosed '{{' at offset {offset} in pattern {pattern:?}")]
    UnclosedBrace {
        /// Byte offset of the `{`.
        offset: usize,
        /// The pattern.
        pattern: String,
    },
    /// The pattern ends with a `\` that escapes nothing.
    #[error(
        "trailing '\\' at offset {offset} in pattern {pattern:?} escapes nothing (write '\\\\' for a literal backslash)"
    )]
    TrailingEscape {
        /// Byte offset of the `\`.
        offset: usize,
        /// The pattern.
        pattern: String,
    },
    /// A class range whose start comes after its end, like `[z-a]`.
    #[error(
        "invalid range '{start}-{end}' at offset {offset} in pattern {pattern:?}: '{start}' comes after '{end}'"
    )]
    InvalidRange {
        /// First character of the range.
        start: char,
        /// Last character of the range.
        end: char,
        /// Byte offset of the range's first character.
        offset: usize,
        /// The pattern.
        pattern: String,
    },
    /// The `{…}` groups expand to more than [`MAX_ALTERNATIVES`] patterns.
    #[error("pattern {pattern:?} expands to more than {max} alternatives; use fewer or smaller '{{…}}' groups")]
    TooManyAlternatives {
        /// The limit.
        max: usize,
        /// The pattern.
        pattern: String,
    },
}

/// A compiled glob pattern.
///
/// Two globs are equal when they were built from the same pattern text.
#[derive(Clone)]
pub struct Glob {
    /// The pattern as given to [`Glob::new`].
    pattern: String,
    /// One entry per brace expansion; a path matches if any matches.
    alternatives: Vec<Vec<Seg>>,
    has_wildcards: bool,
    literal_prefix: String,
    /// The unescaped pattern when it has no wildcards.
    literal: Option<String>,
}

impl PartialEq for Glob {
    fn eq(&self, other: &Glob) -> bool {
        self.pattern == other.pattern
    }
}

impl Eq for Glob {}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Glob").field(&self.pattern).finish()
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

/// One element of a segment pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A literal character.
    Lit(char),
    /// `?`: any one character.
    Any,
    /// `*`: any run of characters.
    Star,
    /// `[…]`.
    Class(Class),
    /// A `/` separator (only before splitting into segments).
    Slash,
}

/// A character class.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Class {
    negated: bool,
    /// Inclusive ranges; a single character `c` is `(c, c)`.
    ranges: Vec<(char, char)>,
}

impl Class {
    fn matches(&self, c: char) -> bool {
        if c == '/' {
            return false;
        }
        let listed = self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
        listed != self.negated
    }
}

/// One path segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// `**`: zero or more whole segments.
    GlobStar,
    /// A pattern for exactly one segment (no `Slash` inside).
    Toks(Vec<Tok>),
}

impl Tok {
    /// Whether this non-star token matches `c`.
    fn matches(&self, c: char) -> bool {
        match self {
            Tok::Lit(l) => *l == c,
            Tok::Any => c != '/',
            Tok::Class(class) => class.matches(c),
            Tok::Star | Tok::Slash => false,
        }
    }
}

/// Escapes every glob metacharacter in `literal`, so that
/// `Glob::new(&escape(p))` matches exactly the path `p`.
pub fn escape(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | ',' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Glob {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Result<Glob, GlobError> {
        if pattern.len() > MAX_PATTERN_BYTES {
            return Err(GlobError::TooLong {
                len: pattern.len(),
                max: MAX_PATTERN_BYTES,
            });
        }
        if let Some(offset) = pattern.find('\0') {
            return Err(GlobError::Nul {
                offset,
                pattern: pattern.to_string(),
            });
        }
        let mut body = pattern;
        while let Some(rest) = body.strip_prefix("./") {
            body = rest;
        }
        if body.is_empty() {
            return Err(GlobError::Empty);
        }
        let base = pattern.len() - body.len();
        let parsed = Parser {
            pattern,
            body,
            base,
        }
        .parse()?;
        let alternatives = parsed.alternatives.into_iter().map(segments).collect();
        Ok(Glob {
            pattern: pattern.to_string(),
            alternatives,
            has_wildcards: parsed.has_wildcards,
            literal_prefix: parsed.literal_prefix,
            literal: if parsed.has_wildcards {
                None
            } else {
                Some(parsed.unescaped)
            },
        })
    }

    /// Whether `path` (a normalized relative path) matches the pattern.
    pub fn is_match(&self, path: &str) -> bool {
        if let Some(lit) = &self.literal {
            return lit == path;
        }
        let chars: Vec<char> = path.chars().collect();
        let segs: Vec<&[char]> = chars.split(|&c| c == '/').collect();
        self.alternatives.iter().any(|alt| match_path(alt, &segs))
    }

    /// The pattern as given to [`Glob::new`].
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the pattern contains an unescaped metacharacter
    /// (`*`, `?`, `[` or `{`).
    pub fn has_wildcards(&self) -> bool {
        self.has_wildcards
    }

    /// The leading whole path segments that contain no metacharacter,
    /// unescaped and joined with `/`, without a trailing `/`. The last segment
    /// never counts (it names files, not a directory). Use it to root a
    /// directory walk: `logs/app/**/*.txt` gives `logs/app`, `*.txt` and
    /// `a.txt` give `""`, `a/b.txt` gives `a`.
    pub fn literal_prefix(&self) -> String {
        self.literal_prefix.clone()
    }

    /// The unescaped pattern (without a leading `./`) when it has no
    /// wildcards, so it can name only that one path.
    pub fn literal_path(&self) -> Option<String> {
        self.literal.clone()
    }

    /// The last path segment every match ends in, when the pattern pins it
    /// down: `**/index.html` and `{a,b}/**/index.html` give `index.html`;
    /// `*.txt`, `a/**` and `{a,b}` give `None`. Search uses it to read only
    /// the files of that name.
    pub fn literal_name(&self) -> Option<String> {
        let mut names = self.alternatives.iter().map(|alt| match alt.last() {
            Some(Seg::Toks(toks)) => toks
                .iter()
                .map(|t| match t {
                    Tok::Lit(c) => Some(*c),
                    _ => None,
                })
                .collect::<Option<String>>(),
            _ => None,
        });
        let first = names.next()??;
        names
            .all(|n| n.as_deref() == Some(first.as_str()))
            .then_some(first)
    }
}

/// Result of parsing a pattern.
struct Parsed {
    /// Brace-expanded token sequences.
    alternatives: Vec<Vec<Tok>>,
    has_wildcards: bool,
    literal_prefix: String,
    /// The unescaped body (meaningful only without wildcards).
    unescaped: String,
}

/// An open `{` while parsing.
struct Group {
    /// Byte offset (in the full pattern) of the `{`.
    offset: usize,
    /// Expansions of the enclosing sequence up to the `{`.
    prefix: Vec<Vec<Tok>>,
    /// Expansions of the group's finished alternatives.
    done: Vec<Vec<Tok>>,
}

struct Parser<'a> {
    /// The full pattern, for error messages.
    pattern: &'a str,
    /// The pattern without its leading `./`.
    body: &'a str,
    /// Offset of `body` in `pattern`.
    base: usize,
}

impl Parser<'_> {
    fn err_pattern(&self) -> String {
        self.pattern.to_string()
    }

    fn too_many(&self) -> GlobError {
        GlobError::TooManyAlternatives {
            max: MAX_ALTERNATIVES,
            pattern: self.err_pattern(),
        }
    }

    fn parse(&self) -> Result<Parsed, GlobError> {
        let chars: Vec<(usize, char)> = self
            .body
            .char_indices()
            .map(|(i, c)| (i + self.base, c))
            .collect();
        // Expansions of the sequence currently being built (innermost group's
        // current alternative, or the top level).
        let mut cur: Vec<Vec<Tok>> = vec![Vec::new()];
        let mut stack: Vec<Group> = Vec::new();
        let mut has_wildcards = false;
        // Literal prefix bookkeeping: segments completed before the first
        // metacharacter, and the segment in progress.
        let mut prefix_done = false;
        let mut prefix_segs: Vec<String> = Vec::new();
        let mut prefix_cur = String::new();
        let mut unescaped = String::new();

        let mut i = 0;
        while i < chars.len() {
            let (off, c) = chars[i];
            i += 1;
            let tok = match c {
                '\\' => {
                    let Some(&(_, e)) = chars.get(i) else {
                        return Err(GlobError::TrailingEscape {
                            offset: off,
                            pattern: self.err_pattern(),
                        });
                    };
                    i += 1;
                    unescaped.push(e);
                    if e == '/' {
                        Tok::Slash
                    } else {
                        Tok::Lit(e)
                    }
                }
                '*' => Tok::Star,
                '?' => Tok::Any,
                '[' => {
                    let (class, next) = self.parse_class(&chars, i, off)?;
                    i = next;
                    Tok::Class(class)
                }
                '{' => {
                    has_wildcards = true;
                    prefix_done = true;
                    stack.push(Group {
                        offset: off,
                        prefix: std::mem::replace(&mut cur, vec![Vec::new()]),
                        done: Vec::new(),
                    });
                    continue;
                }
                ',' if !stack.is_empty() => {
                    let group = stack.last_mut().expect("checked non-empty");
                    group.done.append(&mut cur);
                    if group.done.len() >= MAX_ALTERNATIVES {
                        return Err(self.too_many());
                    }
                    cur = vec![Vec::new()];
                    continue;
                }
                '}' if !stack.is_empty() => {
                    let group = stack.pop().expect("checked non-empty");
                    let mut alts = group.done;
                    alts.append(&mut cur);
                    if group.prefix.len().saturating_mul(alts.len()) > MAX_ALTERNATIVES {
                        return Err(self.too_many());
                    }
                    for p in &group.prefix {
                        for a in &alts {
                            let mut seq = p.clone();
                            seq.extend(a.iter().cloned());
                            cur.push(seq);
                        }
                    }
                    continue;
                }
                '/' => {
                    unescaped.push('/');
                    Tok::Slash
                }
                other => {
                    unescaped.push(other);
                    Tok::Lit(other)
                }
            };
            if matches!(tok, Tok::Star | Tok::Any | Tok::Class(_)) {
                has_wildcards = true;
                prefix_done = true;
            }
            if !prefix_done {
                match tok {
                    Tok::Slash => prefix_segs.push(std::mem::take(&mut prefix_cur)),
                    Tok::Lit(l) => prefix_cur.push(l),
                    _ => {}
                }
            }
            for seq in &mut cur {
                seq.push(tok.clone());
            }
        }
        if let Some(group) = stack.first() {
            return Err(GlobError::UnclosedBrace {
                offset: group.offset,
                pattern: self.err_pattern(),
            });
        }
        if cur.len() > MAX_ALTERNATIVES {
            return Err(self.too_many());
        }
        Ok(Parsed {
            alternatives: cur,
            has_wildcards,
            literal_prefix: prefix_segs.join("/"),
            unescaped,
        })
    }

    /// Parses a class whose `[` was at `open`; `i` indexes the character
    /// after it. Returns the class and the index after its `]`.
    fn parse_class(
        &self,
        chars: &[(usize, char)],
        mut i: usize,
        open: usize,
    ) -> Result<(Class, usize), GlobError> {
        let unclosed = || GlobError::UnclosedClass {
            offset: open,
            pattern: self.err_pattern(),
        };
        let mut negated = false;
        if let Some(&(_, '^' | '!')) = chars.get(i) {
            negated = true;
            i += 1;
        }
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            let Some(&(off, c)) = chars.get(i) else {
                return Err(unclosed());
            };
            if c == ']' && !first {
                return Ok((Class { negated, ranges }, i + 1));
            }
            first = false;
            let (lo, next) = self.class_char(chars, i)?;
            i = next;
            // A range needs `-` followed by something other than the closing `]`.
            let is_range = matches!(chars.get(i), Some(&(_, '-')))
                && matches!(chars.get(i + 1), Some(&(_, c2)) if c2 != ']');
            if is_range {
                let (hi, next) = self.class_char(chars, i + 1)?;
                i = next;
                if lo > hi {
                    return Err(GlobError::InvalidRange {
                        start: lo,
                        end: hi,
                        offset: off,
                        pattern: self.err_pattern(),
                    });
                }
                ranges.push((lo, hi));
            } else {
                ranges.push((lo, lo));
            }
        }
    }

    /// One (possibly escaped) character inside a class at index `i`.
    fn class_char(&self, chars: &[(usize, char)], i: usize) -> Result<(char, usize), GlobError> {
        match chars[i] {
            (off, '\\') => match chars.get(i + 1) {
                Some(&(_, e)) => Ok((e, i + 2)),
                None => Err(GlobError::TrailingEscape {
                    offset: off,
                    pattern: self.err_pattern(),
                }),
            },
            (_, c) => Ok((c, i + 1)),
        }
    }
}

/// Splits an expanded token sequence into segment patterns.
fn segments(toks: Vec<Tok>) -> Vec<Seg> {
    let mut segs: Vec<Seg> = toks
        .split(|t| *t == Tok::Slash)
        .map(|seg| {
            if seg.len() == 2 && seg.iter().all(|t| *t == Tok::Star) {
                Seg::GlobStar
            } else {
                let mut out: Vec<Tok> = Vec::with_capacity(seg.len());
                for t in seg {
                    // Consecutive stars mean the same as one.
                    if *t == Tok::Star && out.last() == Some(&Tok::Star) {
                        continue;
                    }
                    out.push(t.clone());
                }
                Seg::Toks(out)
            }
        })
        .collect();
    // A trailing `**` matches one or more segments: `a/**` is everything
    // below `a`, not `a` itself.
    if segs.last() == Some(&Seg::GlobStar) {
        let last = segs.len() - 1;
        segs.insert(last, Seg::Toks(vec![Tok::Star]));
    }
    // Adjacent `**` segments mean the same as one.
    segs.dedup_by(|a, b| *a == Seg::GlobStar && *b == Seg::GlobStar);
    segs
}

/// Wildcard matching with a single backtrack point: `is_star` elements match
/// any run of units, every other element matches exactly one unit as decided
/// by `unit_match`. Runs in O(|pattern| * |text|) unit comparisons.
fn wildcard_match<P, T>(
    pat: &[P],
    text: &[T],
    is_star: impl Fn(&P) -> bool,
    unit_match: impl Fn(&P, &T) -> bool,
) -> bool {
    let (mut p, mut t) = (0, 0);
    // Position of the last star seen and the text position it resumes from.
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pat.len() {
            if is_star(&pat[p]) {
                backtrack = Some((p, t));
                p += 1;
                continue;
            }
            if unit_match(&pat[p], &text[t]) {
                p += 1;
                t += 1;
                continue;
            }
        }
        match backtrack {
            Some((sp, st)) => {
                // Let the last star absorb one more unit and retry.
                backtrack = Some((sp, st + 1));
                p = sp + 1;
                t = st + 1;
            }
            None => return false,
        }
    }
    pat[p..].iter().all(is_star)
}

fn match_segment(toks: &[Tok], seg: &[char]) -> bool {
    wildcard_match(toks, seg, |t| *t == Tok::Star, |t, c| t.matches(*c))
}

fn match_path(pat: &[Seg], segs: &[&[char]]) -> bool {
    wildcard_match(
        pat,
        segs,
        |s| *s == Seg::GlobStar,
        |s, seg| match s {
            Seg::Toks(toks) => match_segment(toks, seg),
            Seg::GlobStar => false,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn g(p: &str) -> Glob {
        Glob::new(p).unwrap_or_else(|e| panic!("{p:?}: {e}"))
    }

    fn m(p: &str, path: &str) -> bool {
        g(p).is_match(path)
    }

    #[track_caller]
    fn yes(p: &str, paths: &[&str]) {
        for path in paths {
            assert!(m(p, path), "{p:?} should match {path:?}");
        }
    }

    #[track_caller]
    fn no(p: &str, paths: &[&str]) {
        for path in paths {
            assert!(!m(p, path), "{p:?} should not match {path:?}");
        }
    }

    #[test]
    fn star_stays_within_a_segment() {
        yes("*", &["a", "abc", "a.txt"]);
        no("*", &["a/b"]);
        yes("*.txt", &["a.txt", ".txt", "x.y.txt"]);
        no("*.txt", &["a.txt.bak", "d/a.txt", "a.TXT"]);
        yes("a/*/c", &["a/b/c", "a/bbb/c"]);
        no("a/*/c", &["a/c", "a/b/b/c"]);
        yes("a*b*c", &["abc", "aXbYc", "abbbc"]);
        no("a*b*c", &["acb", "ab/c"]);
    }

    #[test]
    fn question_mark_is_one_scalar() {
        yes("?.txt", &["a.txt", "é.txt", "😀.txt"]);
        no("?.txt", &[".txt", "ab.txt", "/.txt"]);
        yes("a?c", &["abc"]);
        no("a?c", &["a/c"]);
    }

    #[test]
    fn globstar() {
        yes("a/**/b", &["a/b", "a/x/b", "a/x/y/b"]);
        no("a/**/b", &["a", "b", "a/x", "x/a/b", "a/bb"]);
        yes("**/b", &["b", "x/b", "x/y/b"]);
        no("**/b", &["xb", "b/x"]);
        yes("a/**", &["a/x", "a/x/y"]);
        no("a/**", &["a", "b/x", "ab/x"]);
        yes("**", &["a", "a/b", "a/b/c/d.txt"]);
        yes("**/*.txt", &["a.txt", "d/a.txt", "d/e/a.txt"]);
        no("**/*.txt", &["a.log", "d/a.log"]);
        yes("a/**/**/b", &["a/b", "a/x/y/b"]);
        yes("logs/**/*.log", &["logs/a.log", "logs/x/y/a.log"]);
        no("logs/**/*.log", &["a.log", "logs/x/a.txt"]);
    }

    #[test]
    fn double_star_inside_a_segment_is_a_star() {
        yes("a**b", &["ab", "axxb"]);
        no("a**b", &["a/b", "ax/xb"]);
        yes("**.txt", &["a.txt"]);
        no("**.txt", &["a/b.txt"]);
        yes("x/***", &["x/a"]);
        no("x/***", &["x/a/b"]);
    }

    #[test]
    fn classes() {
        yes("[abc].txt", &["a.txt", "c.txt"]);
        no("[abc].txt", &["d.txt", "ab.txt"]);
        yes("[a-c]x", &["ax", "bx", "cx"]);
        no("[a-c]x", &["dx", "-x"]);
        yes("[^abc]", &["d", "é"]);
        no("[^abc]", &["a", "/"]);
        yes("[!abc]", &["d"]);
        no("[!abc]", &["b"]);
        yes("[]a]", &["]", "a"]);
        no("[]a]", &["b"]);
        yes("[^]a]", &["b"]);
        no("[^]a]", &["]", "a"]);
        yes("[-a]", &["-", "a"]);
        yes("[a-]", &["-", "a"]);
        no("[a-]", &["b"]);
        yes("[a-c-e]", &["b", "-", "e"]);
        no("[a-c-e]", &["d"]);
        yes("[\\]]", &["]"]);
        yes("[é-ë]", &["ê"]);
        no("[/]", &["/", "a"]);
        no("a[/]b", &["a/b"]);
        no("a[^x]b", &["a/b"]);
        yes("[*?]", &["*", "?"]);
        no("[*?]", &["a"]);
    }

    #[test]
    fn braces() {
        yes("{a,b,c}.txt", &["a.txt", "b.txt", "c.txt"]);
        no("{a,b,c}.txt", &["d.txt", "ab.txt"]);
        yes("{a,b{c,d}}", &["a", "bc", "bd"]);
        no("{a,b{c,d}}", &["b", "c"]);
        yes("x{,.bak}", &["x", "x.bak"]);
        no("x{,.bak}", &["x."]);
        yes("{src/*.rs,docs/**}", &["src/a.rs", "docs/x/y.md"]);
        no("{src/*.rs,docs/**}", &["src/x/a.rs", "docs"]);
        yes("{a,b}/{c,d}", &["a/c", "b/d"]);
        yes("a{}b", &["ab"]);
        yes("{a}", &["a"]);
        yes("{a\\,b,c}", &["a,b", "c"]);
        no("{a\\,b,c}", &["a"]);
        yes("{[,],x}", &[",", "x"]);
        no("{[,],x}", &["]", "[,]"]);
        yes("{**/,}z", &["z", "a/b/z"]);
    }

    #[test]
    fn unmatched_close_brace_and_comma_are_literal() {
        yes("a}b", &["a}b"]);
        yes("a,b", &["a,b"]);
        no("a,b", &["a", "b"]);
        yes("{a,b}}", &["a}", "b}"]);
        assert!(!g("a}b").has_wildcards());
        assert_eq!(g("a,b}").literal_path().as_deref(), Some("a,b}"));
    }

    #[test]
    fn escapes() {
        yes("\\*", &["*"]);
        no("\\*", &["a"]);
        yes("a\\?b", &["a?b"]);
        no("a\\?b", &["axb"]);
        yes("\\[a]", &["[a]"]);
        yes("\\{a,b}", &["{a,b}"]);
        yes("\\\\", &["\\"]);
        yes("\\a", &["a"]);
        yes("a\\/b", &["a/b"]);
        assert!(!g("\\*\\?\\[\\{").has_wildcards());
    }

    #[test]
    fn leading_dot_slash_is_stripped() {
        yes("./a.txt", &["a.txt"]);
        yes("././*.txt", &["a.txt"]);
        assert_eq!(g("./a/b").literal_path().as_deref(), Some("a/b"));
        assert_eq!(g("./a/b").as_str(), "./a/b");
        assert_eq!(g("./a/*").literal_prefix(), "a");
    }

    #[test]
    fn absolute_patterns_compile_but_do_not_match_relative_paths() {
        let abs = g("/tmp/*.txt");
        no("/tmp/*.txt", &["tmp/a.txt"]);
        assert!(abs.is_match("/tmp/a.txt"));
        assert_eq!(abs.literal_prefix(), "/tmp");
    }

    #[test]
    fn accessors() {
        let p = g("logs/app/**/*.txt");
        assert_eq!(p.as_str(), "logs/app/**/*.txt");
        assert!(p.has_wildcards());
        assert_eq!(p.literal_prefix(), "logs/app");
        assert_eq!(p.literal_path(), None);

        assert_eq!(g("*.txt").literal_prefix(), "");
        assert_eq!(g("a/b.txt").literal_prefix(), "a");
        assert_eq!(g("b.txt").literal_prefix(), "");
        assert_eq!(g("{a,b}/c").literal_prefix(), "");
        assert_eq!(g("a/{b,c}/d").literal_prefix(), "a");
        assert_eq!(g("a/b*/c").literal_prefix(), "a");
        assert_eq!(g("a\\*b/c/*").literal_prefix(), "a*b/c");
        assert_eq!(g("a/b/c?").literal_prefix(), "a/b");
        assert_eq!(g("a/[b]/c").literal_prefix(), "a");

        let lit = g("a/b\\*.txt");
        assert!(!lit.has_wildcards());
        assert_eq!(lit.literal_path().as_deref(), Some("a/b*.txt"));
        assert!(lit.is_match("a/b*.txt"));
        assert!(!lit.is_match("a/bx.txt"));

        for p in ["*", "?", "[a]", "{a}", "a/**"] {
            assert!(g(p).has_wildcards(), "{p}");
            assert_eq!(g(p).literal_path(), None, "{p}");
        }
    }

    #[test]
    fn literal_name_is_the_last_segment_every_match_ends_in() {
        for (p, name) in [
            ("**/index.html", Some("index.html")),
            ("a/*/b\\*.txt", Some("b*.txt")),
            ("{a,b/c}/**/x", Some("x")),
            ("a/{x,x}", Some("x")),
            ("x", Some("x")),
            ("./d/x", Some("x")),
            ("a/{x,y}", None),
            ("*.txt", None),
            ("a/**", None),
            ("**", None),
            ("a/x?", None),
            ("a/[x]", None),
            ("{a/x,b}", None),
        ] {
            assert_eq!(g(p).literal_name().as_deref(), name, "{p}");
        }
    }

    #[test]
    fn equality_debug_display() {
        assert_eq!(g("a/*"), g("a/*"));
        assert_ne!(g("a/*"), g("./a/*"));
        assert_eq!(format!("{:?}", g("a/*")), "Glob(\"a/*\")");
        assert_eq!(g("a/*").to_string(), "a/*");
    }

    #[test]
    fn errors() {
        assert_eq!(Glob::new(""), Err(GlobError::Empty));
        assert_eq!(Glob::new("./"), Err(GlobError::Empty));
        assert_eq!(GlobError::Empty.to_string(), "glob pattern is empty");

        let long = "a".repeat(MAX_PATTERN_BYTES + 1);
        let e = Glob::new(&long).unwrap_err();
        assert_eq!(
            e,
            GlobError::TooLong {
                len: MAX_PATTERN_BYTES + 1,
                max: MAX_PATTERN_BYTES
            }
        );
        assert!(e.to_string().contains("4097 bytes"), "{e}");
        assert!(Glob::new(&"a".repeat(MAX_PATTERN_BYTES)).is_ok());

        let e = Glob::new("ab\0c").unwrap_err();
        assert!(matches!(e, GlobError::Nul { offset: 2, .. }), "{e:?}");
        assert_eq!(e.to_string(), "NUL byte at offset 2 in pattern \"ab\\0c\"");

        let e = Glob::new("a/[bc").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unclosed '[' at offset 2 in pattern \"a/[bc\""
        );
        for p in ["[]", "[", "[^]", "[!]", "x[a-"] {
            assert!(
                matches!(Glob::new(p), Err(GlobError::UnclosedClass { .. })),
                "{p}"
            );
        }

        let e = Glob::new("x/{a,{b,c}").unwrap_err();
        assert_eq!(
            e,
            GlobError::UnclosedBrace {
                offset: 2,
                pattern: "x/{a,{b,c}".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "unclosed '{' at offset 2 in pattern \"x/{a,{b,c}\""
        );

        let e = Glob::new("ab\\").unwrap_err();
        assert!(
            matches!(e, GlobError::TrailingEscape { offset: 2, .. }),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with("trailing '\\' at offset 2 in pattern"),
            "{e}"
        );
        assert!(matches!(
            Glob::new("[a\\"),
            Err(GlobError::TrailingEscape { offset: 2, .. })
        ));

        let e = Glob::new("a[z-a]").unwrap_err();
        assert!(
            matches!(
                e,
                GlobError::InvalidRange {
                    start: 'z',
                    end: 'a',
                    offset: 2,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("'z-a'"), "{e}");

        // Offsets refer to the pattern as given, including a stripped `./`.
        assert!(matches!(
            Glob::new("./[a"),
            Err(GlobError::UnclosedClass { offset: 2, .. })
        ));
    }

    #[test]
    fn alternative_limit() {
        // 4 * 4 * 4 * 4 * 4 = 1024: allowed.
        let ok = "{a,b,c,d}".repeat(5);
        let glob = g(&ok);
        assert!(glob.is_match("abcda"));
        assert!(!glob.is_match("abcde"));
        // One more factor: too many.
        let e = Glob::new(&"{a,b,c,d}".repeat(6)).unwrap_err();
        assert!(
            matches!(e, GlobError::TooManyAlternatives { max: 1024, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("more than 1024 alternatives"), "{e}");
        // A single wide group.
        let wide = format!("{{{}}}", vec!["x"; 1025].join(","));
        assert!(matches!(
            Glob::new(&wide),
            Err(GlobError::TooManyAlternatives { .. })
        ));
        let wide_ok = format!("{{{}}}", vec!["x"; 1024].join(","));
        assert!(Glob::new(&wide_ok).is_ok());
        // Deep nesting is not a problem.
        let deep = format!("{}a{}", "{".repeat(2000), "}".repeat(2000));
        assert!(g(&deep).is_match("a"));
    }

    #[test]
    fn matching_is_not_exponential() {
        let start = std::time::Instant::now();
        let text = "a".repeat(10_000);
        assert!(!m("*a*a*a*a*a*a*b", &text));
        assert!(m("*a*a*a*a*a*a*", &text));
        let segs = vec!["a"; 2_000].join("/");
        assert!(!m("**/a/**/a/**/a/**/a/**/b", &segs));
        assert!(m("**/a/**/a/**/a/**/a/**", &segs));
        let mixed = format!("{text}/{text}/{text}");
        assert!(!m("**/*a*a*a*a*b/**", &mixed));
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "took {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn escape_round_trips() {
        let p = "we*ird/[name]{x,y}?\\.txt";
        let glob = g(&escape(p));
        assert!(!glob.has_wildcards());
        assert!(glob.is_match(p));
        assert_eq!(glob.literal_path().as_deref(), Some(p));
    }

    /// Normalized relative paths over an alphabet rich in metacharacters.
    fn valid_path() -> impl Strategy<Value = String> {
        let seg =
            "[a-c.*?\\[\\]{},\\\\é -]{1,6}".prop_filter("not . or ..", |s| s != "." && s != "..");
        proptest::collection::vec(seg, 1..5).prop_map(|v| v.join("/"))
    }

    proptest! {
        #[test]
        fn escaped_literal_matches_exactly_itself(p in valid_path(), q in valid_path()) {
            let glob = Glob::new(&escape(&p)).unwrap();
            prop_assert!(!glob.has_wildcards());
            prop_assert!(glob.is_match(&p));
            prop_assert_eq!(glob.is_match(&q), p == q);
        }

        #[test]
        fn globstar_matches_every_valid_path(p in valid_path()) {
            prop_assert!(g("**").is_match(&p));
        }

        #[test]
        fn star_never_matches_a_path_with_a_slash(p in valid_path()) {
            prop_assert_eq!(g("*").is_match(&p), !p.contains('/'));
        }

        #[test]
        fn literal_pattern_matches_only_itself(
            pat in "[a-c]{1,3}(/[a-c]{1,3}){0,2}",
            q in "[a-c]{1,3}(/[a-c]{1,3}){0,2}",
        ) {
            let glob = Glob::new(&pat).unwrap();
            prop_assert!(!glob.has_wildcards());
            prop_assert_eq!(glob.literal_path(), Some(pat.clone()));
            prop_assert_eq!(glob.is_match(&q), pat == q);
        }

        #[test]
        fn a_match_ends_in_the_literal_name(
            pat in "[ab*/{},]{1,8}", p in "[ab]{1,2}(/[ab]{1,2}){0,3}",
        ) {
            if let Ok(glob) = Glob::new(&pat) {
                if let (Some(name), true) = (glob.literal_name(), glob.is_match(&p)) {
                    prop_assert_eq!(p.rsplit('/').next(), Some(name.as_str()), "{}", pat);
                }
            }
        }

        #[test]
        fn new_never_panics(pat in "[a-c*?\\[\\]{},!^/\\\\.-]{0,12}", p in valid_path()) {
            if let Ok(glob) = Glob::new(&pat) {
                let _ = glob.is_match(&p);
                let _ = glob.literal_prefix();
            }
        }

        #[test]
        fn star_segments_agree_with_segment_count(n in 1usize..5, p in valid_path()) {
            let pat = vec!["*"; n].join("/");
            prop_assert_eq!(g(&pat).is_match(&p), p.split('/').count() == n);
        }
    }
}
