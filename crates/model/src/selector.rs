//! Run selectors: which run of a pipeline a source refers to.
//!
//! `42`, `latest`, `lastSuccessfulBuild`, `lastSuccessfulBuild:<branch>`,
//! `latestFromBranch:<branch>` and `triggering`. Written as a string (or a
//! bare number in YAML); the server picks the run.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Which run of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RunSelector {
    /// A run number.
    Number(u64),
    /// The newest run, whatever its state.
    Latest,
    /// The newest `passed` run, optionally on one branch.
    LastSuccessful {
        /// Only runs of this branch.
        branch: Option<String>,
    },
    /// The newest run of a branch.
    LatestFromBranch(String),
    /// The run that triggered the asking run.
    Triggering,
}

/// Why a selector does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid run selector {value:?}: {why}; use a run number, latest, lastSuccessfulBuild, lastSuccessfulBuild:<branch>, latestFromBranch:<branch> or triggering")]
pub struct SelectorError {
    /// The text.
    pub value: String,
    /// What is wrong.
    pub why: String,
}

fn branch(value: &str, b: &str) -> Result<String, SelectorError> {
    if b.is_empty() || b.len() > 1024 || b.chars().any(char::is_control) {
        return Err(SelectorError {
            value: value.into(),
            why: "the branch must be 1 to 1024 bytes without control characters".into(),
        });
    }
    Ok(b.to_string())
}

impl std::str::FromStr for RunSelector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<RunSelector, SelectorError> {
        let t = s.trim();
        if let Ok(n) = t.parse::<u64>() {
            if n == 0 || n > i64::MAX as u64 {
                return Err(SelectorError {
                    value: s.into(),
                    why: "run numbers start at 1".into(),
                });
            }
            return Ok(RunSelector::Number(n));
        }
        Ok(match t {
            "latest" => RunSelector::Latest,
            "lastSuccessfulBuild" => RunSelector::LastSuccessful { branch: None },
            "triggering" => RunSelector::Triggering,
            _ => {
                if let Some(b) = t.strip_prefix("lastSuccessfulBuild:") {
                    RunSelector::LastSuccessful {
                        branch: Some(branch(s, b)?),
                    }
                } else if let Some(b) = t.strip_prefix("latestFromBranch:") {
                    RunSelector::LatestFromBranch(branch(s, b)?)
                } else {
                    return Err(SelectorError {
                        value: s.into(),
                        why: "unknown selector".into(),
                    });
                }
            }
        })
    }
}

impl fmt::Display for RunSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunSelector::Number(n) => write!(f, "{n}"),
            RunSelector::Latest => write!(f, "latest"),
            RunSelector::LastSuccessful { branch: None } => write!(f, "lastSuccessfulBuild"),
            RunSelector::LastSuccessful { branch: Some(b) } => {
                write!(f, "lastSuccessfulBuild:{b}")
            }
            RunSelector::LatestFromBranch(b) => write!(f, "latestFromBranch:{b}"),
            RunSelector::Triggering => write!(f, "triggering"),
        }
    }
}

impl RunSelector {
    /// What the selector picks, for messages.
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
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RunSelector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RunSelector, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RunSelector;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a run number or a selector such as lastSuccessfulBuild")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<RunSelector, E> {
                n.to_string().parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<RunSelector, E> {
                n.to_string().parse().map_err(E::custom)
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

    #[test]
    fn parses_every_form() {
        let cases = [
            ("42", RunSelector::Number(42)),
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
                "latestFromBranch:release/1.x",
                RunSelector::LatestFromBranch("release/1.x".into()),
            ),
            ("triggering", RunSelector::Triggering),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<RunSelector>().unwrap(), want);
            assert_eq!(want.to_string(), text);
        }
        for bad in [
            "",
            "0",
            "LATEST",
            "lastSuccessful",
            "latestFromBranch:",
            "-1",
        ] {
            let e = bad.parse::<RunSelector>().unwrap_err().to_string();
            assert!(e.contains("lastSuccessfulBuild"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn describes() {
        assert_eq!(
            "lastSuccessfulBuild:main"
                .parse::<RunSelector>()
                .unwrap()
                .describe(),
            "the newest passed run on branch main"
        );
    }

    proptest! {
        #[test]
        fn round_trips(n in 1u64..1_000_000, b in "[a-zA-Z0-9/._-]{1,30}", pick in 0..6u8) {
            let s = match pick {
                0 => RunSelector::Number(n),
                1 => RunSelector::Latest,
                2 => RunSelector::LastSuccessful { branch: None },
                3 => RunSelector::LastSuccessful { branch: Some(b) },
                4 => RunSelector::LatestFromBranch(b),
                _ => RunSelector::Triggering,
            };
            prop_assert_eq!(s.to_string().parse::<RunSelector>().unwrap(), s);
        }
    }
}
