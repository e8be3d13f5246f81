//! Run selectors: which run of a pipeline a source refers to.
//!
//! | Text                           | Run                                      |
//! |--------------------------------|------------------------------------------|
//! | `42`                           | run number 42                            |
//! | `latest`                       | the newest run, whatever its state       |
//! | `lastSuccessfulBuild`          | the newest passed run                    |
//! | `lastSuccessfulBuild:<branch>` | the newest passed run of a branch        |
//! | `latestFromBranch:<branch>`    | the newest run of a branch               |
//! | `triggering`                   | the run that triggered the asking run    |
//!
//! Names are case-sensitive. A selector is written (and serialized) as that
//! text; YAML may also give a bare number (`run: 42`). The server picks the
//! run.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Largest accepted run number (run numbers are stored as signed 64-bit
/// integers).
pub const MAX_RUN_NUMBER: u64 = i64::MAX as u64;

/// Longest accepted branch name, in bytes.
pub const MAX_BRANCH_BYTES: usize = 1024;

/// What a selector error shows of an over-long value, in characters.
const PREVIEW_CHARS: usize = 60;

/// Which run of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RunSelector {
    /// A run number (1 to [`MAX_RUN_NUMBER`]).
    Number(u64),
    /// The newest run, whatever its state (`latest`).
    Latest,
    /// The newest `passed` run, optionally of one branch
    /// (`lastSuccessfulBuild`, `lastSuccessfulBuild:<branch>`).
    LastSuccessful {
        /// Only runs of this branch.
        branch: Option<String>,
    },
    /// The newest run of a branch, whatever its state
    /// (`latestFromBranch:<branch>`).
    LatestFromBranch(String),
    /// The run that triggered the asking run (`triggering`).
    Triggering,
}

/// Why a selector does not parse. The message lists the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid run selector {value:?}: {why}; use a run number, latest, lastSuccessfulBuild, lastSuccessfulBuild:<branch>, latestFromBranch:<branch> or triggering")]
pub struct SelectorError {
    /// The text (shortened if very long).
    pub value: String,
    /// What is wrong.
    pub why: String,
}

impl SelectorError {
    fn new(value: &str, why: impl Into<String>) -> SelectorError {
        let mut shown: String = value.chars().take(PREVIEW_CHARS).collect();
        if shown.len() < value.len() {
            shown.push('…');
        }
        SelectorError {
            value: shown,
            why: why.into(),
        }
    }
}

/// The selector names, for case-insensitive suggestions.
const NAMES: &[&str] = &[
    "latest",
    "lastSuccessfulBuild",
    "latestFromBranch",
    "triggering",
];

/// Checks a run number.
fn number(value: &str, n: u64) -> Result<RunSelector, SelectorError> {
    if n == 0 {
        return Err(SelectorError::new(value, "run numbers start at 1"));
    }
    if n > MAX_RUN_NUMBER {
        return Err(SelectorError::new(
            value,
            format!("run number {n} is too large; the largest is {MAX_RUN_NUMBER}"),
        ));
    }
    Ok(RunSelector::Number(n))
}

/// Checks the branch of `lastSuccessfulBuild:` or `latestFromBranch:`.
fn branch(value: &str, name: &str, b: &str) -> Result<String, SelectorError> {
    if b.is_empty() {
        return Err(SelectorError::new(
            value,
            format!("the branch after `{name}:` is empty; write e.g. {name}:main"),
        ));
    }
    if b.len() > MAX_BRANCH_BYTES {
        return Err(SelectorError::new(
            value,
            format!(
                "the branch is {} bytes long; the limit is {MAX_BRANCH_BYTES} bytes",
                b.len()
            ),
        ));
    }
    if let Some(c) = b.chars().find(|c| c.is_control()) {
        return Err(SelectorError::new(
            value,
            format!("the branch contains the control character {c:?}"),
        ));
    }
    Ok(b.to_string())
}

/// Explains text that is none of the accepted forms.
fn unknown(value: &str, t: &str) -> SelectorError {
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return SelectorError::new(
            value,
            format!("run number is too large; the largest is {MAX_RUN_NUMBER}"),
        );
    }
    if let Some(digits) = t.strip_prefix(['-', '+']) {
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return SelectorError::new(value, "run numbers are written as plain digits, from 1");
        }
    }
    if t.is_empty() {
        return SelectorError::new(value, "it is empty");
    }
    let (name, arg) = match t.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (t, None),
    };
    match (name, arg) {
        ("latestFromBranch", None) => {
            return SelectorError::new(
                value,
                "latestFromBranch needs a branch, as in latestFromBranch:main",
            )
        }
        ("latest", Some(b)) => {
            return SelectorError::new(
                value,
                format!(
                "latest takes no branch; for the newest run of a branch write latestFromBranch:{b}"
            ),
            )
        }
        ("triggering", Some(_)) => return SelectorError::new(value, "triggering takes no branch"),
        _ => {}
    }
    if let Some(right) = NAMES.iter().find(|n| n.eq_ignore_ascii_case(name)) {
        let fixed = match arg {
            Some(a) => format!("{right}:{a}"),
            None => (*right).to_string(),
        };
        return SelectorError::new(
            value,
            format!("selector names are case-sensitive; did you mean {fixed}?"),
        );
    }
    SelectorError::new(value, "unknown selector")
}

impl std::str::FromStr for RunSelector {
    type Err = SelectorError;

    /// Parses a selector; whitespace around it is ignored.
    fn from_str(s: &str) -> Result<RunSelector, SelectorError> {
        let t = s.trim();
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = t.parse::<u64>() {
                return number(s, n);
            }
        }
        Ok(match t {
            "latest" => RunSelector::Latest,
            "lastSuccessfulBuild" => RunSelector::LastSuccessful { branch: None },
            "triggering" => RunSelector::Triggering,
            _ => {
                if let Some(b) = t.strip_prefix("lastSuccessfulBuild:") {
                    RunSelector::LastSuccessful {
                        branch: Some(branch(s, "lastSuccessfulBuild", b)?),
                    }
                } else if let Some(b) = t.strip_prefix("latestFromBranch:") {
                    RunSelector::LatestFromBranch(branch(s, "latestFromBranch", b)?)
                } else {
                    return Err(unknown(s, t));
                }
            }
        })
    }
}

impl fmt::Display for RunSelector {
    /// Writes the canonical text, which [`str::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunSelector::Number(n) => write!(f, "{n}"),
            RunSelector::Latest => f.write_str("latest"),
            RunSelector::LastSuccessful { branch: None } => f.write_str("lastSuccessfulBuild"),
            RunSelector::LastSuccessful { branch: Some(b) } => {
                write!(f, "lastSuccessfulBuild:{b}")
            }
            RunSelector::LatestFromBranch(b) => write!(f, "latestFromBranch:{b}"),
            RunSelector::Triggering => f.write_str("triggering"),
        }
    }
}

impl RunSelector {
    /// What the selector picks, for messages: e.g. `run 42` or
    /// `the newest passed run on branch main`.
    pub fn describe(&self) -> String {
        match self {
            RunSelector::Number(n) => format!("run {n}"),
            RunSelector::Latest => "the newest run".into(),
            RunSelector::LastSuccessful { branch: None } => "the newest passed run".into(),
            RunSelector::LastSuccessful { branch: Some(b) } => {
                format!("the newest passed run on branch {b}")
            }
            RunSelector::LatestFromBranch(b) => format!("the newest run on branch {b}"),
            RunSelector::Triggering => "the run that triggered this one".into(),
        }
    }
}

impl Serialize for RunSelector {
    /// Serializes as the canonical text (a number too: `"42"`).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RunSelector {
    /// Deserializes from the text, or from an integer run number.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RunSelector, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RunSelector;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a run number or a selector such as lastSuccessfulBuild")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<RunSelector, E> {
                number(&n.to_string(), n).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<RunSelector, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(SelectorError::new(
                        &n.to_string(),
                        "run numbers start at 1",
                    ))),
                }
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<RunSelector, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::de::value::Error as ValueError;
    use serde::de::IntoDeserializer;

    fn parse(s: &str) -> RunSelector {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn err(s: &str) -> SelectorError {
        match s.parse::<RunSelector>() {
            Ok(r) => panic!("{s:?} parsed as {r:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_every_form() {
        let cases = [
            ("42", RunSelector::Number(42)),
            ("1", RunSelector::Number(1)),
            ("9223372036854775807", RunSelector::Number(MAX_RUN_NUMBER)),
            ("latest", RunSelector::Latest),
            (
                "lastSuccessfulBuild",
                RunSelector::LastSuccessful { branch: None },
            ),
            (
                "lastSuccessfulBuild:main",
                RunSelector::LastSuccessful {
                    branch: Some("main".into()),
                },
            ),
            (
                "latestFromBranch:main",
                RunSelector::LatestFromBranch("main".into()),
            ),
            (
                "latestFromBranch:release/1.x",
                RunSelector::LatestFromBranch("release/1.x".into()),
            ),
            (
                "lastSuccessfulBuild:feature/a:b",
                RunSelector::LastSuccessful {
                    branch: Some("feature/a:b".into()),
                },
            ),
            ("triggering", RunSelector::Triggering),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), want, "{text}");
            assert_eq!(want.to_string(), text);
        }
    }

    #[test]
    fn lenient_input_canonical_output() {
        assert_eq!(parse(" latest\n"), RunSelector::Latest);
        assert_eq!(parse("007"), RunSelector::Number(7));
        assert_eq!(parse("007").to_string(), "7");
        assert_eq!(
            parse("latestFromBranch:main "),
            RunSelector::LatestFromBranch("main".into())
        );
    }

    #[test]
    fn errors_explain_and_list_the_forms() {
        let cases = [
            ("", "it is empty"),
            ("   ", "it is empty"),
            ("0", "run numbers start at 1"),
            ("-1", "run numbers are written as plain digits, from 1"),
            ("+42", "plain digits"),
            ("9223372036854775808", "too large; the largest is 9223372036854775807"),
            ("99999999999999999999999", "too large"),
            ("LATEST", "case-sensitive; did you mean latest?"),
            ("lastsuccessfulbuild:main", "did you mean lastSuccessfulBuild:main?"),
            ("Triggering", "did you mean triggering?"),
            ("lastSuccessful", "unknown selector"),
            ("newest", "unknown selector"),
            ("latestFromBranch", "latestFromBranch needs a branch"),
            ("latestFromBranch:", "the branch after `latestFromBranch:` is empty; write e.g. latestFromBranch:main"),
            ("lastSuccessfulBuild:", "the branch after `lastSuccessfulBuild:` is empty"),
            ("lastSuccessfulBuild:a\tb", "control character '\\t'"),
            ("latest:main", "latest takes no branch; for the newest run of a branch write latestFromBranch:main"),
            ("triggering:main", "triggering takes no branch"),
            ("4.2", "unknown selector"),
        ];
        for (text, want) in cases {
            let msg = err(text).to_string();
            assert!(msg.contains(want), "{text:?}: want {want:?} in {msg:?}");
            assert!(
                msg.ends_with("use a run number, latest, lastSuccessfulBuild, lastSuccessfulBuild:<branch>, latestFromBranch:<branch> or triggering"),
                "{msg}"
            );
        }
        assert_eq!(
            err("newest"),
            SelectorError {
                value: "newest".into(),
                why: "unknown selector".into()
            }
        );
        assert_eq!(
            err("newest").to_string(),
            "invalid run selector \"newest\": unknown selector; use a run number, latest, lastSuccessfulBuild, lastSuccessfulBuild:<branch>, latestFromBranch:<branch> or triggering"
        );
        let long = format!("latestFromBranch:{}", "b".repeat(MAX_BRANCH_BYTES + 1));
        let e = err(&long);
        assert!(
            e.why.contains("1025 bytes long; the limit is 1024 bytes"),
            "{e}"
        );
        assert!(e.value.ends_with('…') && e.value.chars().count() == PREVIEW_CHARS + 1);
        assert!(format!("latestFromBranch:{}", "b".repeat(MAX_BRANCH_BYTES))
            .parse::<RunSelector>()
            .is_ok());
    }

    #[test]
    fn describes() {
        let cases = [
            ("42", "run 42"),
            ("latest", "the newest run"),
            ("lastSuccessfulBuild", "the newest passed run"),
            (
                "lastSuccessfulBuild:main",
                "the newest passed run on branch main",
            ),
            ("latestFromBranch:dev", "the newest run on branch dev"),
            ("triggering", "the run that triggered this one"),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text).describe(), want);
        }
    }

    fn de<'a>(d: impl serde::Deserializer<'a, Error = ValueError>) -> Result<RunSelector, String> {
        RunSelector::deserialize(d).map_err(|e| e.to_string())
    }

    #[test]
    fn deserializes_from_strings_and_integers() {
        assert_eq!(de("latest".into_deserializer()), Ok(RunSelector::Latest));
        assert_eq!(
            de(String::from("lastSuccessfulBuild:main").into_deserializer()),
            Ok(RunSelector::LastSuccessful {
                branch: Some("main".into())
            })
        );
        assert_eq!(de("42".into_deserializer()), Ok(RunSelector::Number(42)));
        // YAML `run: 42`.
        assert_eq!(de(42u64.into_deserializer()), Ok(RunSelector::Number(42)));
        assert_eq!(de(42i64.into_deserializer()), Ok(RunSelector::Number(42)));
        assert_eq!(de(42i32.into_deserializer()), Ok(RunSelector::Number(42)));
        assert_eq!(de(7u8.into_deserializer()), Ok(RunSelector::Number(7)));

        let e = de(0u64.into_deserializer()).unwrap_err();
        assert!(e.contains("run numbers start at 1"), "{e}");
        let e = de((-3i64).into_deserializer()).unwrap_err();
        assert!(
            e.contains("invalid run selector \"-3\": run numbers start at 1"),
            "{e}"
        );
        let e = de(u64::MAX.into_deserializer()).unwrap_err();
        assert!(e.contains("too large"), "{e}");
        let e = de("LATEST".into_deserializer()).unwrap_err();
        assert!(e.contains("did you mean latest?"), "{e}");
        let e = de(1.5f64.into_deserializer()).unwrap_err();
        assert!(e.contains("a run number or a selector"), "{e}");
        let e = de(true.into_deserializer()).unwrap_err();
        assert!(e.contains("a run number or a selector"), "{e}");
    }

    /// A serializer that accepts only strings, to see what `Serialize`
    /// writes without a serialization format crate.
    struct StrOnly;

    macro_rules! refuse {
        ($($name:ident($($t:ty),*)),* $(,)?) => {$(
            fn $name(self, $(_: $t),*) -> Result<String, ValueError> {
                Err(serde::ser::Error::custom(concat!("unexpected ", stringify!($name))))
            }
        )*};
    }

    impl serde::Serializer for StrOnly {
        type Ok = String;
        type Error = ValueError;
        type SerializeSeq = serde::ser::Impossible<String, ValueError>;
        type SerializeTuple = serde::ser::Impossible<String, ValueError>;
        type SerializeTupleStruct = serde::ser::Impossible<String, ValueError>;
        type SerializeTupleVariant = serde::ser::Impossible<String, ValueError>;
        type SerializeMap = serde::ser::Impossible<String, ValueError>;
        type SerializeStruct = serde::ser::Impossible<String, ValueError>;
        type SerializeStructVariant = serde::ser::Impossible<String, ValueError>;

        fn serialize_str(self, v: &str) -> Result<String, ValueError> {
            Ok(v.to_string())
        }

        refuse!(
            serialize_bool(bool),
            serialize_i8(i8),
            serialize_i16(i16),
            serialize_i32(i32),
            serialize_i64(i64),
            serialize_u8(u8),
            serialize_u16(u16),
            serialize_u32(u32),
            serialize_u64(u64),
            serialize_f32(f32),
            serialize_f64(f64),
            serialize_char(char),
            serialize_bytes(&[u8]),
            serialize_none(),
            serialize_unit(),
            serialize_unit_struct(&'static str),
            serialize_unit_variant(&'static str, u32, &'static str),
        );

        fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<String, ValueError> {
            Err(serde::ser::Error::custom("unexpected some"))
        }
        fn serialize_newtype_struct<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: &T,
        ) -> Result<String, ValueError> {
            Err(serde::ser::Error::custom("unexpected newtype struct"))
        }
        fn serialize_newtype_variant<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<String, ValueError> {
            Err(serde::ser::Error::custom("unexpected newtype variant"))
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, ValueError> {
            Err(serde::ser::Error::custom("unexpected seq"))
        }
        fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, ValueError> {
            Err(serde::ser::Error::custom("unexpected tuple"))
        }
        fn serialize_tuple_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleStruct, ValueError> {
            Err(serde::ser::Error::custom("unexpected tuple struct"))
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, ValueError> {
            Err(serde::ser::Error::custom("unexpected tuple variant"))
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, ValueError> {
            Err(serde::ser::Error::custom("unexpected map"))
        }
        fn serialize_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStruct, ValueError> {
            Err(serde::ser::Error::custom("unexpected struct"))
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, ValueError> {
            Err(serde::ser::Error::custom("unexpected struct variant"))
        }
    }

    #[test]
    fn serializes_as_the_canonical_text() {
        for text in [
            "42",
            "latest",
            "lastSuccessfulBuild",
            "lastSuccessfulBuild:main",
            "latestFromBranch:release/1.x",
            "triggering",
        ] {
            assert_eq!(parse(text).serialize(StrOnly), Ok(text.to_string()));
        }
    }

    fn selector() -> impl Strategy<Value = RunSelector> {
        let branch = "[a-zA-Z0-9/._:-]{1,30}|\\PC{1,10}"
            .prop_map(|b| b.trim().to_string())
            .prop_filter("non-empty", |b| !b.is_empty());
        prop_oneof![
            (1..=MAX_RUN_NUMBER).prop_map(RunSelector::Number),
            Just(RunSelector::Latest),
            Just(RunSelector::LastSuccessful { branch: None }),
            branch
                .clone()
                .prop_map(|b| RunSelector::LastSuccessful { branch: Some(b) }),
            branch.prop_map(RunSelector::LatestFromBranch),
            Just(RunSelector::Triggering),
        ]
    }

    proptest! {
        #[test]
        fn display_round_trips(s in selector()) {
            let text = s.to_string();
            prop_assert_eq!(text.parse::<RunSelector>(), Ok(s.clone()));
            prop_assert_eq!(de(text.as_str().into_deserializer()), Ok(s.clone()));
            prop_assert_eq!(s.serialize(StrOnly), Ok(text));
        }

        #[test]
        fn integers_deserialize_like_their_text(n in any::<i64>()) {
            let from_int = de(n.into_deserializer());
            let from_text = de(n.to_string().as_str().into_deserializer());
            prop_assert_eq!(from_int.is_ok(), n >= 1);
            if n >= 1 {
                prop_assert_eq!(from_int, from_text);
            }
        }

        #[test]
        fn parse_never_panics_and_accepted_text_is_canonical(s in "\\PC{0,30}|[0-9]{0,25}|(latest|lastSuccessfulBuild|latestFromBranch|triggering)(:\\PC{0,5})?") {
            if let Ok(sel) = s.parse::<RunSelector>() {
                let canonical = sel.to_string();
                prop_assert_eq!(canonical.parse::<RunSelector>(), Ok(sel));
                if !s.trim().starts_with('0') {
                    prop_assert_eq!(canonical, s.trim());
                }
            }
        }
    }
}
