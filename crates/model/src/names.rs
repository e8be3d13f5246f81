//! Validation of keys (pipelines, stages, jobs, steps, organizations,
//! clusters) and artifact names.
//!
//! Keys are machine identifiers and deliberately narrow: 1 to
//! [`MAX_KEY_BYTES`] bytes of ASCII letters, digits, `_`, `-` and `.`,
//! starting with a letter or digit. Artifact names are for humans and allow
//! any Unicode, minus characters that are troublesome in file names and
//! terminals.

/// Longest accepted key, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

/// Longest accepted artifact name, in characters.
pub const MAX_ARTIFACT_NAME_CHARS: usize = 128;

/// Characters never allowed in artifact names (besides control characters).
pub const ARTIFACT_NAME_FORBIDDEN: &[char] = &['/', '\\', ':', '*', '?', '"', '<', '>', '|'];

/// What an error message shows of an over-long value.
const PREVIEW_CHARS: usize = 40;

/// The rule for key characters, as shown in messages.
const KEY_CHARS_RULE: &str = "only ASCII letters, digits, '_', '-' and '.' are allowed";

/// The rule for artifact name characters, as shown in messages.
const NAME_CHARS_RULE: &str =
    "control characters and / \\ : * ? \" < > | are not allowed in artifact names";

/// Why a key or artifact name is invalid. Each variant carries `what`, the
/// kind of name (e.g. `"job key"`, `"artifact name"`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The value is empty.
    #[error("{what} must not be empty")]
    Empty {
        /// The kind of name.
        what: String,
    },
    /// The value is too long.
    #[error("{what} {preview:?} is {len} {unit} long; the limit is {max} {unit}")]
    TooLong {
        /// The kind of name.
        what: String,
        /// The start of the value, ending in `…`.
        preview: String,
        /// The value's length.
        len: usize,
        /// The limit.
        max: usize,
        /// `"bytes"` or `"characters"`.
        unit: &'static str,
    },
    /// The value contains a character that is not allowed.
    #[error("{what} {value:?} contains {ch:?} at byte offset {offset}: {rule}")]
    InvalidChar {
        /// The kind of name.
        what: String,
        /// The value.
        value: String,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        offset: usize,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A key does not start with an ASCII letter or digit.
    #[error("{what} {value:?} must start with an ASCII letter or digit")]
    BadStart {
        /// The kind of name.
        what: String,
        /// The value.
        value: String,
    },
    /// The value is `.` or `..`.
    #[error("{what} {value:?} is reserved; choose another name")]
    Reserved {
        /// The kind of name.
        what: String,
        /// The value.
        value: String,
    },
    /// The value begins or ends with whitespace.
    #[error("{what} {value:?} must not begin or end with whitespace")]
    SurroundingWhitespace {
        /// The kind of name.
        what: String,
        /// The value.
        value: String,
    },
}

fn preview(value: &str) -> String {
    let mut p: String = value.chars().take(PREVIEW_CHARS).collect();
    p.push('…');
    p
}

/// Validates a key of a pipeline, stage, job, step, organization or cluster.
/// `what` names the kind of key in the error message (e.g. `"job key"`).
pub fn validate_key(what: &str, key: &str) -> Result<(), NameError> {
    if key.is_empty() {
        return Err(NameError::Empty { what: what.into() });
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(NameError::TooLong {
            what: what.into(),
            preview: preview(key),
            len: key.len(),
            max: MAX_KEY_BYTES,
            unit: "bytes",
        });
    }
    if let Some((offset, ch)) = key
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(NameError::InvalidChar {
            what: what.into(),
            value: key.into(),
            ch,
            offset,
            rule: KEY_CHARS_RULE,
        });
    }
    if !key.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(NameError::BadStart {
            what: what.into(),
            value: key.into(),
        });
    }
    Ok(())
}

/// Validates an artifact name: 1 to [`MAX_ARTIFACT_NAME_CHARS`] characters,
/// no ASCII control characters, none of [`ARTIFACT_NAME_FORBIDDEN`], not `.`
/// or `..`, and no leading or trailing whitespace.
pub fn validate_artifact_name(name: &str) -> Result<(), NameError> {
    const WHAT: &str = "artifact name";
    if name.is_empty() {
        return Err(NameError::Empty { what: WHAT.into() });
    }
    let len = name.chars().count();
    if len > MAX_ARTIFACT_NAME_CHARS {
        return Err(NameError::TooLong {
            what: WHAT.into(),
            preview: preview(name),
            len,
            max: MAX_ARTIFACT_NAME_CHARS,
            unit: "characters",
        });
    }
    if let Some((offset, ch)) = name
        .char_indices()
        .find(|&(_, c)| c.is_ascii_control() || ARTIFACT_NAME_FORBIDDEN.contains(&c))
    {
        return Err(NameError::InvalidChar {
            what: WHAT.into(),
            value: name.into(),
            ch,
            offset,
            rule: NAME_CHARS_RULE,
        });
    }
    if name == "." || name == ".." {
        return Err(NameError::Reserved {
            what: WHAT.into(),
            value: name.into(),
        });
    }
    if name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace) {
        return Err(NameError::SurroundingWhitespace {
            what: WHAT.into(),
            value: name.into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn good_keys() {
        for k in [
            "a",
            "Z",
            "0",
            "build",
            "build-linux_x86.64",
            "9lives",
            "a.-_",
        ] {
            assert_eq!(validate_key("job key", k), Ok(()), "{k}");
        }
        assert_eq!(validate_key("job key", &"k".repeat(MAX_KEY_BYTES)), Ok(()));
    }

    #[test]
    fn bad_keys() {
        let e = validate_key("job key", "").unwrap_err();
        assert_eq!(
            e,
            NameError::Empty {
                what: "job key".into()
            }
        );
        assert_eq!(e.to_string(), "job key must not be empty");

        let e = validate_key("pipeline key", &"k".repeat(MAX_KEY_BYTES + 1)).unwrap_err();
        assert!(
            matches!(
                e,
                NameError::TooLong {
                    len: 129,
                    max: 128,
                    unit: "bytes",
                    ..
                }
            ),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.starts_with("pipeline key \"kkk"), "{msg}");
        assert!(
            msg.contains("129 bytes long; the limit is 128 bytes"),
            "{msg}"
        );
        assert!(msg.len() < 200, "{msg}");

        let e = validate_key("step key", "make all").unwrap_err();
        assert_eq!(
            e,
            NameError::InvalidChar {
                what: "step key".into(),
                value: "make all".into(),
                ch: ' ',
                offset: 4,
                rule: KEY_CHARS_RULE,
            }
        );
        assert_eq!(
            e.to_string(),
            "step key \"make all\" contains ' ' at byte offset 4: only ASCII letters, digits, '_', '-' and '.' are allowed"
        );
        for k in ["a/b", "é", "a\0", "a:b", "a+b", "a\n"] {
            assert!(
                matches!(validate_key("k", k), Err(NameError::InvalidChar { .. })),
                "{k:?}"
            );
        }

        for k in ["-a", "_a", ".a", ".", ".."] {
            let e = validate_key("organization key", k).unwrap_err();
            assert_eq!(
                e,
                NameError::BadStart {
                    what: "organization key".into(),
                    value: k.into()
                },
                "{k}"
            );
        }
        assert!(validate_key("cluster key", "-x")
            .unwrap_err()
            .to_string()
            .contains("cluster key \"-x\" must start with an ASCII letter or digit"));
    }

    #[test]
    fn good_artifact_names() {
        for n in [
            "default",
            "build output",
            "Test Results (linux)",
            "日本語",
            "a.b",
            "...",
            "x..y",
            "😀",
        ] {
            assert_eq!(validate_artifact_name(n), Ok(()), "{n}");
        }
        // The limit counts characters, not bytes.
        assert_eq!(validate_artifact_name(&"é".repeat(128)), Ok(()));
    }

    #[test]
    fn bad_artifact_names() {
        let e = validate_artifact_name("").unwrap_err();
        assert_eq!(e.to_string(), "artifact name must not be empty");

        let e = validate_artifact_name(&"é".repeat(129)).unwrap_err();
        assert!(
            matches!(
                e,
                NameError::TooLong {
                    len: 129,
                    max: 128,
                    unit: "characters",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("129 characters long"), "{e}");

        for (n, ch) in [
            ("a/b", '/'),
            ("a\\b", '\\'),
            ("c:", ':'),
            ("*", '*'),
            ("why?", '?'),
            ("\"q\"", '"'),
            ("<x>", '<'),
            ("x>", '>'),
            ("a|b", '|'),
            ("a\0", '\0'),
            ("tab\there", '\t'),
            ("del\u{7f}", '\u{7f}'),
        ] {
            match validate_artifact_name(n) {
                Err(NameError::InvalidChar { ch: got, what, .. }) => {
                    assert_eq!(got, ch, "{n:?}");
                    assert_eq!(what, "artifact name");
                }
                other => panic!("{n:?}: {other:?}"),
            }
        }
        assert!(validate_artifact_name("a|b")
            .unwrap_err()
            .to_string()
            .starts_with("artifact name \"a|b\" contains '|' at byte offset 1:"));

        for n in [".", ".."] {
            let e = validate_artifact_name(n).unwrap_err();
            assert!(matches!(e, NameError::Reserved { .. }), "{n}");
            assert!(e.to_string().contains("reserved"), "{e}");
        }

        for n in [" a", "a ", "\u{a0}a", "a\u{3000}", " "] {
            let e = validate_artifact_name(n).unwrap_err();
            assert!(
                matches!(e, NameError::SurroundingWhitespace { .. }),
                "{n:?}: {e:?}"
            );
        }
        assert!(validate_artifact_name(" a")
            .unwrap_err()
            .to_string()
            .contains("must not begin or end with whitespace"));
    }

    proptest! {
        #[test]
        fn well_formed_keys_are_accepted(k in "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}") {
            prop_assert_eq!(validate_key("key", &k), Ok(()));
        }

        #[test]
        fn accepted_keys_follow_the_rules(k in "[a-z0-9_.\\- /é]{0,10}") {
            if validate_key("key", &k).is_ok() {
                prop_assert!(!k.is_empty() && k.len() <= MAX_KEY_BYTES);
                prop_assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)));
                prop_assert!(k.as_bytes()[0].is_ascii_alphanumeric());
            }
        }

        #[test]
        fn accepted_artifact_names_follow_the_rules(n in "\\PC{0,6}|[ a./:\\t]{0,4}") {
            if validate_artifact_name(&n).is_ok() {
                prop_assert!(!n.is_empty());
                prop_assert!(n != "." && n != "..");
                prop_assert!(!n.chars().any(|c| c.is_ascii_control() || ARTIFACT_NAME_FORBIDDEN.contains(&c)));
                prop_assert_eq!(n.trim(), n.as_str());
            }
        }
    }
}
