//! Artifact path normalization and validation.
//!
//! A stored artifact path is relative to the artifact root, `/`-separated,
//! and has no leading `/`, no trailing `/`, no empty, `.` or `..` segments, no
//! backslashes and no ASCII control characters. This module owns that
//! definition; the server relies on [`validate`] to reject path traversal, so
//! every rule here is security-relevant.

/// Longest accepted normalized path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// Longest accepted path segment, in bytes.
pub const MAX_SEGMENT_BYTES: usize = 255;

/// Why a path is not an acceptable artifact path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// Nothing is left after normalization (e.g. `""`, `"."`, `"../.."`).
    #[error("path {path:?} is empty after normalization; it must name a file")]
    Empty {
        /// The path as given.
        path: String,
    },
    /// The path starts with `/`.
    #[error(
        "path {path:?} is absolute; artifact paths are relative to the artifact root (remove the leading '/')"
    )]
    Absolute {
        /// The path as given.
        path: String,
    },
    /// The path has a `..` segment.
    #[error("path {path:?} escapes the artifact root ('..' is not allowed)")]
    ParentDir {
        /// The path as given.
        path: String,
    },
    /// The path contains NUL or another ASCII control character.
    #[error("path {path:?} contains control character {ch:?} at byte offset {offset}")]
    ControlChar {
        /// The path as given.
        path: String,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        offset: usize,
    },
    /// The path contains a backslash.
    #[error(
        "path {path:?} contains a backslash at byte offset {offset}; separate directories with '/' (a '\\' means different things on different systems)"
    )]
    Backslash {
        /// The path as given.
        path: String,
        /// Byte offset of the backslash.
        offset: usize,
    },
    /// The normalized path is longer than [`MAX_PATH_BYTES`].
    #[error("path {path:?} is {len} bytes long after normalization; the limit is {max} bytes")]
    TooLong {
        /// The path as given.
        path: String,
        /// Length of the normalized path.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A segment is longer than [`MAX_SEGMENT_BYTES`].
    #[error(
        "path {path:?} has a segment of {len} bytes starting {segment_start:?}; the limit is {max} bytes per segment"
    )]
    SegmentTooLong {
        /// The path as given.
        path: String,
        /// The first characters of the offending segment.
        segment_start: String,
        /// Length of the segment.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The path is acceptable but not in normalized form (only [`validate`]).
    #[error("path {path:?} is not normalized: expected {expected:?}")]
    NotNormalized {
        /// The path as given.
        path: String,
        /// Its normalized form.
        expected: String,
    },
}

/// Rejects characters that are never allowed, wherever they appear.
fn check_chars(raw: &str) -> Result<(), PathError> {
    for (offset, ch) in raw.char_indices() {
        if ch.is_ascii_control() {
            return Err(PathError::ControlChar {
                path: raw.to_string(),
                ch,
                offset,
            });
        }
        if ch == '\\' {
            return Err(PathError::Backslash {
                path: raw.to_string(),
                offset,
            });
        }
    }
    Ok(())
}

/// Joins cleaned segments, enforcing emptiness and length limits.
fn finish(raw: &str, segs: &[&str]) -> Result<String, PathError> {
    if segs.is_empty() {
        return Err(PathError::Empty {
            path: raw.to_string(),
        });
    }
    if let Some(seg) = segs.iter().find(|s| s.len() > MAX_SEGMENT_BYTES) {
        return Err(PathError::SegmentTooLong {
            path: raw.to_string(),
            segment_start: seg.chars().take(32).collect(),
            len: seg.len(),
            max: MAX_SEGMENT_BYTES,
        });
    }
    let joined = segs.join("/");
    if joined.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong {
            path: raw.to_string(),
            len: joined.len(),
            max: MAX_PATH_BYTES,
        });
    }
    Ok(joined)
}

/// Turns a client-side relative path into a stored path.
///
/// Lenient about form: collapses `.` segments and repeated `/`, strips a
/// trailing `/`. Converts nothing OS-specific. Rejects an empty result, a
/// leading `/` (absolute path), any `..` segment, NUL and other ASCII control
/// characters, backslashes (ambiguous between systems), and paths or segments
/// over [`MAX_PATH_BYTES`] / [`MAX_SEGMENT_BYTES`].
pub fn normalize(raw: &str) -> Result<String, PathError> {
    check_chars(raw)?;
    if raw.starts_with('/') {
        return Err(PathError::Absolute {
            path: raw.to_string(),
        });
    }
    let mut segs = Vec::new();
    for seg in raw.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                return Err(PathError::ParentDir {
                    path: raw.to_string(),
                })
            }
            s => segs.push(s),
        }
    }
    finish(raw, &segs)
}

/// Checks a path received by the server: Ok only when it is already
/// normalized, i.e. `normalize(p) == Ok(p)`.
pub fn validate(p: &str) -> Result<(), PathError> {
    let normalized = normalize(p)?;
    if normalized == p {
        Ok(())
    } else {
        Err(PathError::NotNormalized {
            path: p.to_string(),
            expected: normalized,
        })
    }
}

/// Turns a path relative to the working directory into a stored path the way
/// Buildkite does: `..` segments are resolved lexically against preceding
/// segments, and any that would climb above the start are dropped, so files
/// outside the working tree keep the rest of their path.
///
/// `"../../tmp/x.txt"` gives `"tmp/x.txt"`, `"a/../b"` gives `"b"`, and
/// `"../.."` is an error (nothing is left). Absolute paths, control
/// characters, backslashes and over-long paths are rejected as by
/// [`normalize`].
pub fn clean_relative(raw: &str) -> Result<String, PathError> {
    check_chars(raw)?;
    if raw.starts_with('/') {
        return Err(PathError::Absolute {
            path: raw.to_string(),
        });
    }
    let mut segs: Vec<&str> = Vec::new();
    for seg in raw.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    finish(raw, &segs)
}

/// Splits a path into (directory, file name): `"a/b/c.txt"` gives
/// `("a/b", "c.txt")`, `"c.txt"` gives `("", "c.txt")`.
pub fn split(p: &str) -> (&str, &str) {
    p.rsplit_once('/').unwrap_or(("", p))
}

/// Percent-encodes one URL path segment: RFC 3986 unreserved characters
/// stay, every other byte becomes `%XX`.
pub fn url_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalize_accepts_and_cleans() {
        let cases = [
            ("a", "a"),
            ("a/b/c.txt", "a/b/c.txt"),
            ("./a", "a"),
            ("a/./b", "a/b"),
            ("a//b", "a/b"),
            ("a///b//", "a/b"),
            ("a/b/", "a/b"),
            ("./././a/.", "a"),
            ("...", "..."),
            ("a/..b/c..", "a/..b/c.."),
            (".hidden/x", ".hidden/x"),
            ("with space/ é 😀", "with space/ é 😀"),
            ("C:/x", "C:/x"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw:?}");
        }
    }

    #[test]
    fn normalize_errors() {
        for raw in ["", ".", "./", ".//", "././/."] {
            assert_eq!(
                normalize(raw),
                Err(PathError::Empty { path: raw.into() }),
                "{raw:?}"
            );
        }
        assert_eq!(
            normalize(".").unwrap_err().to_string(),
            "path \".\" is empty after normalization; it must name a file"
        );

        for raw in ["/a", "/", "//a"] {
            assert_eq!(
                normalize(raw),
                Err(PathError::Absolute { path: raw.into() })
            );
        }
        assert!(normalize("/etc/passwd")
            .unwrap_err()
            .to_string()
            .contains("\"/etc/passwd\" is absolute"));

        for raw in ["..", "../etc/passwd", "a/../b", "a/..", "a/b/../../.."] {
            assert_eq!(
                normalize(raw),
                Err(PathError::ParentDir { path: raw.into() })
            );
        }
        assert_eq!(
            normalize("../etc/passwd").unwrap_err().to_string(),
            "path \"../etc/passwd\" escapes the artifact root ('..' is not allowed)"
        );

        let e = normalize("a\0b").unwrap_err();
        assert_eq!(
            e,
            PathError::ControlChar {
                path: "a\0b".into(),
                ch: '\0',
                offset: 1
            }
        );
        assert!(e.to_string().contains("byte offset 1"), "{e}");
        for raw in ["a\nb", "\tx", "x\u{7f}", "x\u{1b}[0m"] {
            assert!(
                matches!(normalize(raw), Err(PathError::ControlChar { .. })),
                "{raw:?}"
            );
        }

        let e = normalize("a\\b").unwrap_err();
        assert_eq!(
            e,
            PathError::Backslash {
                path: "a\\b".into(),
                offset: 1
            }
        );
        assert!(e.to_string().contains("'/'"), "{e}");
        // Backslash-based traversal is rejected too.
        assert!(matches!(
            normalize("..\\..\\etc"),
            Err(PathError::Backslash { .. })
        ));

        let seg = "s".repeat(MAX_SEGMENT_BYTES);
        assert!(normalize(&seg).is_ok());
        let e = normalize(&format!("a/{seg}s")).unwrap_err();
        assert!(
            matches!(
                e,
                PathError::SegmentTooLong {
                    len: 256,
                    max: 255,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("256 bytes"), "{e}");

        let ok = vec!["x".repeat(200); 5].join("/") + "/" + &"y".repeat(19);
        assert_eq!(ok.len(), MAX_PATH_BYTES);
        assert_eq!(normalize(&ok).as_deref(), Ok(ok.as_str()));
        let long = ok.clone() + "y";
        let e = normalize(&long).unwrap_err();
        assert!(
            matches!(
                e,
                PathError::TooLong {
                    len: 1025,
                    max: 1024,
                    ..
                }
            ),
            "{e:?}"
        );
        // Length is measured after normalization.
        let padded = "./".repeat(600) + &ok;
        assert_eq!(normalize(&padded).as_deref(), Ok(ok.as_str()));
    }

    #[test]
    fn validate_is_strict() {
        assert_eq!(validate("a/b.txt"), Ok(()));
        assert_eq!(validate("a"), Ok(()));
        for (p, want) in [("./a", "a"), ("a//b", "a/b"), ("a/", "a"), ("a/./b", "a/b")] {
            let e = validate(p).unwrap_err();
            assert_eq!(
                e,
                PathError::NotNormalized {
                    path: p.into(),
                    expected: want.into()
                }
            );
            assert!(e.to_string().contains("not normalized"), "{e}");
        }
        assert!(matches!(validate("../x"), Err(PathError::ParentDir { .. })));
        assert!(matches!(validate("/x"), Err(PathError::Absolute { .. })));
        assert!(matches!(validate(""), Err(PathError::Empty { .. })));
        assert!(matches!(validate("a\\b"), Err(PathError::Backslash { .. })));
        assert!(matches!(
            validate("a\0"),
            Err(PathError::ControlChar { .. })
        ));
    }

    #[test]
    fn clean_relative_buildkite_style() {
        let cases = [
            ("../../tmp/x.txt", "tmp/x.txt"),
            ("a/../b", "b"),
            ("a/b/../c", "a/c"),
            ("a/../../b", "b"),
            ("./a/./b/", "a/b"),
            ("..//../x", "x"),
            ("x", "x"),
            ("a/b/..", "a"),
        ];
        for (raw, want) in cases {
            assert_eq!(clean_relative(raw).as_deref(), Ok(want), "{raw:?}");
        }
        for raw in ["../..", "..", "a/..", "", "."] {
            assert!(
                matches!(clean_relative(raw), Err(PathError::Empty { .. })),
                "{raw:?}"
            );
        }
        assert!(matches!(
            clean_relative("/a"),
            Err(PathError::Absolute { .. })
        ));
        assert!(matches!(
            clean_relative("..\\a"),
            Err(PathError::Backslash { .. })
        ));
        assert!(matches!(
            clean_relative("../a\0"),
            Err(PathError::ControlChar { .. })
        ));
        let long_seg = "z".repeat(300);
        assert!(matches!(
            clean_relative(&format!("../{long_seg}")),
            Err(PathError::SegmentTooLong { .. })
        ));
        let long = vec!["x".repeat(250); 5].join("/");
        assert!(matches!(
            clean_relative(&long),
            Err(PathError::TooLong { .. })
        ));
    }

    #[test]
    fn split_paths() {
        assert_eq!(split("a/b/c.txt"), ("a/b", "c.txt"));
        assert_eq!(split("c.txt"), ("", "c.txt"));
        assert_eq!(split("a/c"), ("a", "c"));
    }

    fn raw_path() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("a".to_string()),
                Just("b".to_string()),
                Just(".".to_string()),
                Just("..".to_string()),
                Just("/".to_string()),
                Just("\\".to_string()),
                Just("\0".to_string()),
                Just("é".to_string()),
                Just(" ".to_string()),
                "[a-z.]{1,4}",
            ],
            0..12,
        )
        .prop_map(|parts| parts.concat())
    }

    fn assert_clean(p: &str) -> Result<(), TestCaseError> {
        prop_assert!(!p.is_empty());
        prop_assert!(!p.starts_with('/'));
        prop_assert!(!p.contains('\0') && !p.contains('\\'));
        prop_assert!(!p.chars().any(|c| c.is_ascii_control()));
        for seg in p.split('/') {
            prop_assert!(!seg.is_empty(), "empty segment in {:?}", p);
            prop_assert!(seg != ".." && seg != ".", "dot segment in {:?}", p);
        }
        prop_assert!(p.len() <= MAX_PATH_BYTES);
        Ok(())
    }

    proptest! {
        #[test]
        fn normalize_is_idempotent(raw in raw_path()) {
            if let Ok(n) = normalize(&raw) {
                prop_assert_eq!(normalize(&n), Ok(n.clone()));
            }
        }

        #[test]
        fn normalized_paths_are_clean_and_valid(raw in raw_path()) {
            if let Ok(n) = normalize(&raw) {
                assert_clean(&n)?;
                prop_assert_eq!(validate(&n), Ok(()));
            }
        }

        #[test]
        fn clean_relative_results_are_clean_and_valid(raw in raw_path()) {
            if let Ok(n) = clean_relative(&raw) {
                assert_clean(&n)?;
                prop_assert_eq!(validate(&n), Ok(()));
                prop_assert_eq!(clean_relative(&n), Ok(n.clone()));
            }
        }

        #[test]
        fn validate_agrees_with_normalize(raw in raw_path()) {
            prop_assert_eq!(validate(&raw).is_ok(), normalize(&raw).as_deref() == Ok(raw.as_str()));
        }

        #[test]
        fn normalize_ok_implies_clean_relative_same(raw in raw_path()) {
            if let Ok(n) = normalize(&raw) {
                prop_assert_eq!(clean_relative(&raw), Ok(n));
            }
        }

        #[test]
        fn split_rejoins(raw in raw_path()) {
            if let Ok(n) = normalize(&raw) {
                let (dir, file) = split(&n);
                prop_assert!(!file.contains('/') && !file.is_empty());
                let rejoined = if dir.is_empty() { file.to_string() } else { format!("{dir}/{file}") };
                prop_assert_eq!(rejoined, n);
            }
        }
    }
}
