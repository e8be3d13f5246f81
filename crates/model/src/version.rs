//! Which package version a version requirement picks (a source naming
//! `REPO/PACKAGE` with `1.4.2`, `latest` or `^1.4`): the one owner of that
//! rule, for the server and the runner.
//!
//! A version given exactly is that version. Otherwise it is read as a
//! semantic-version requirement (`^1.4`, `~1.4.2`, `>=1.2, <2`, `1.*`):
//! the highest version that parses as a semantic version and meets it;
//! versions that are not semantic versions (`nightly-42`) never match a
//! requirement, and pre-releases only match a requirement that names one.

/// The version `want` picks among `versions`: `want` itself if listed,
/// else the highest one meeting it as a requirement. `Ok(None)` when none
/// does; an error when `want` is neither listed nor a requirement.
pub fn pick<'a>(
    want: &str,
    versions: impl IntoIterator<Item = &'a str>,
) -> Result<Option<&'a str>, String> {
    let versions: Vec<&str> = versions.into_iter().collect();
    if let Some(v) = versions.iter().find(|v| **v == want) {
        return Ok(Some(v));
    }
    if !is_requirement(want) {
        return Ok(None);
    }
    let req = requirement(want)?;
    Ok(versions
        .into_iter()
        .filter_map(|v| semver::Version::parse(v).ok().map(|p| (p, v)))
        .filter(|(p, _)| req.matches(p))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, v)| v))
}

/// Whether `want` reads as a requirement rather than one exact version:
/// it has an operator (`^ ~ = > <`), a list (`,`) or a wildcard part
/// (`*`, `x`). A bare `1.4` is a version, never "any 1.x from 1.4".
pub fn is_requirement(want: &str) -> bool {
    let marked = want.contains(['^', '~', '=', '>', '<', ',', '*'])
        || want
            .split(['.', ' '])
            .any(|part| part.eq_ignore_ascii_case("x"));
    marked && requirement(want).is_ok()
}

fn requirement(want: &str) -> Result<semver::VersionReq, String> {
    semver::VersionReq::parse(want).map_err(|e| {
        format!("{want:?} is neither a version of the package nor a version requirement such as ^1.4 ({e})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: [&str; 6] = [
        "1.3.9",
        "1.4.0",
        "1.4.2",
        "1.5.0-rc.1",
        "2.0.0",
        "nightly-42",
    ];

    #[test]
    fn requirements_pick_the_highest_match() {
        assert_eq!(pick("^1.4", V), Ok(Some("1.4.2")));
        assert_eq!(pick("~1.4.0", V), Ok(Some("1.4.2")));
        assert_eq!(
            pick(">=1.0, <2", V),
            Ok(Some("1.4.2")),
            "pre-releases are left out"
        );
        assert_eq!(pick("*", V), Ok(Some("2.0.0")));
        assert_eq!(pick("^3", V), Ok(None));
        assert_eq!(
            pick("1.4.0", V),
            Ok(Some("1.4.0")),
            "an exact version is itself"
        );
        assert_eq!(pick("nightly-42", V), Ok(Some("nightly-42")));
        assert_eq!(pick("nightly-43", V), Ok(None));
        assert_eq!(
            pick("1.4", V),
            Ok(None),
            "a bare 1.4 is that version, not ^1.4"
        );
        assert_eq!(pick("1.x", V), Ok(Some("1.4.2")));
        assert!(is_requirement("^1.4") && is_requirement("1.*") && is_requirement(">=1, <2"));
        assert!(!is_requirement("1.4.2") && !is_requirement("1.4") && !is_requirement("x y"));
    }
}
