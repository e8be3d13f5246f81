//! `$[…]` references in `run:` scripts, without shell injection.
//!
//! A resolved value (an artifact URL, an image, a link someone published)
//! must never be parsed by the shell. So a reference in a script is not
//! replaced by its value: the value goes into an environment variable
//! `SATCHEL_REF_<n>` (one per distinct reference, numbered from 1 in order
//! of first appearance), and the reference becomes an expansion of that
//! variable, quoted to suit where it stands so it is always exactly the
//! value, as one word:
//!
//! | written              | becomes                       |
//! | -------------------- | ----------------------------- |
//! | `echo $[…]`          | `echo "${SATCHEL_REF_1}"`     |
//! | `echo "url: $[…]"`   | `echo "url: ${SATCHEL_REF_1}"`|
//! | `echo 'url: $[…]'`   | `echo 'url: '"${SATCHEL_REF_1}"''` |
//!
//! Whatever the value holds (`;`, `$(…)`, quotes, newlines), the shell
//! only expands a variable. Quoting is tracked the way `sh` does for
//! plain quotes, backslashes and comments; in places it does not model
//! (a quoted here-document), the reference shows as the variable's
//! expansion text, never as code.

use std::collections::BTreeMap;

use satchel_model::expr;

/// The quoting in force at a point of a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    None,
    Single,
    Double,
    /// In a `#` comment (to the end of the line).
    Comment,
}

/// The quoting in force at the start of each of `ranges` (ascending,
/// non-overlapping byte ranges of `script`); the text inside the ranges is
/// skipped (it is replaced).
fn quoting_at(script: &str, ranges: &[std::ops::Range<usize>]) -> Vec<Quoting> {
    let b = script.as_bytes();
    let mut out = Vec::with_capacity(ranges.len());
    let mut next = ranges.iter().peekable();
    let mut q = Quoting::None;
    let mut i = 0;
    while i < b.len() {
        if let Some(r) = next.peek() {
            if i >= r.start {
                out.push(q);
                i = i.max(r.end);
                next.next();
                continue;
            }
        }
        let word_start = i == 0 || b[i - 1].is_ascii_whitespace() || b";&|()".contains(&b[i - 1]);
        match (q, b[i]) {
            (Quoting::None | Quoting::Double, b'\\') => {
                i += 2;
                continue;
            }
            (Quoting::None, b'#') if word_start => q = Quoting::Comment,
            (Quoting::Comment, b'\n') => q = Quoting::None,
            (Quoting::None, b'\'') => q = Quoting::Single,
            (Quoting::None, b'"') => q = Quoting::Double,
            (Quoting::Single, b'\'') | (Quoting::Double, b'"') => q = Quoting::None,
            _ => {}
        }
        i += 1;
    }
    out.extend(next.map(|_| q));
    out
}

/// Rewrites the `$[…]` references of `script` into quoted expansions of
/// `SATCHEL_REF_<n>` variables, and returns the script with the variables
/// to export. `value` gives a reference's value by its canonical text.
pub fn substitute(
    script: &str,
    value: impl Fn(&str) -> Option<String>,
) -> Result<(String, Vec<(String, String)>), String> {
    let found = expr::find(script);
    let ranges: Vec<_> = found.iter().map(|f| f.range.clone()).collect();
    let quoting = quoting_at(script, &ranges);
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut env = Vec::new();
    let mut expansions = Vec::with_capacity(found.len());
    for (f, q) in found.iter().zip(quoting) {
        let r = f.parsed.as_ref().map_err(|e| format!("{}: {e}", f.inner))?;
        let key = r.to_string();
        let var = match vars.get(&key) {
            Some(v) => v.clone(),
            None => {
                let v = format!("SATCHEL_REF_{}", vars.len() + 1);
                let val = value(&key).ok_or_else(|| format!("$[{key}] was not resolved"))?;
                env.push((v.clone(), val));
                vars.insert(key, v.clone());
                v
            }
        };
        expansions.push(expansion(q, &var));
    }
    let mut it = expansions.into_iter();
    let out = expr::substitute(script, |_| {
        it.next()
            .ok_or_else(|| "reference out of order".to_string())
    })
    .map_err(|e| e.to_string())?;
    Ok((out, env))
}

/// `${var}` quoted for where it stands, so that it is exactly the
/// variable's value, as one word.
fn expansion(q: Quoting, var: &str) -> String {
    match q {
        Quoting::None | Quoting::Comment => format!("\"${{{var}}}\""),
        Quoting::Double => format!("${{{var}}}"),
        Quoting::Single => format!("'\"${{{var}}}\"'"),
    }
}

/// The expansion of environment variable `var` written right after
/// `prefix` (a script's text so far), quoted for the quoting in force
/// there: what a translator writes for a value known only when the job
/// runs, where the original CI would have put the value itself.
pub fn expansion_after(prefix: &str, var: &str) -> String {
    let probe = format!("{prefix}X");
    let probe_at = std::iter::once(prefix.len()..prefix.len() + 1).collect::<Vec<_>>();
    let q = quoting_at(&probe, &probe_at);
    expansion(q.first().copied().unwrap_or(Quoting::None), var)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NASTY: &str = "x; touch pwned1 ; $(touch pwned2) `touch pwned3` 'a' \"b\" \\ $HOME\nline2; touch pwned4\n";

    fn run_sh(script: &str, value: &str) -> (String, String) {
        let dir = std::env::temp_dir().join(format!(
            "satchel-shell-test-{}",
            satchel_model::id::random_hex(8)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (s, env) = substitute(script, |_| Some(value.to_string())).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&s)
            .envs(env)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{s}: {out:?}");
        let pwned: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(pwned.is_empty(), "{s} ran code from the value: {pwned:?}");
        std::fs::remove_dir_all(&dir).ok();
        (s, String::from_utf8(out.stdout).unwrap())
    }

    #[test]
    fn values_are_never_parsed_by_the_shell() {
        let r = "$[jobs.a.b.artifacts.c]";
        for (script, want) in [
            (format!("printf '%s|' {r}"), format!("{NASTY}|")),
            (format!("printf '%s|' \"v=[{r}]\""), format!("v=[{NASTY}]|")),
            (format!("printf '%s|' 'v=[{r}]'"), format!("v=[{NASTY}]|")),
            (format!("printf '%s|' v={r}=v"), format!("v={NASTY}=v|")),
            (
                format!("printf '%s|' {r} \"{r}\" # it's {r}\nprintf '%s|' '{r}'"),
                format!("{NASTY}|{NASTY}|{NASTY}|"),
            ),
            (
                format!("printf '%s|' \"a\\\"b {r}\" 'c'\\''{r}'"),
                format!("a\"b {NASTY}|c'{NASTY}|"),
            ),
            (
                format!("printf '%s|' $$[not.a.ref] {r}"),
                format!("$[not.a.ref]|{NASTY}|"),
            ),
        ] {
            let (s, out) = run_sh(&script, NASTY);
            assert_eq!(out, want, "{script:?} became {s:?}");
        }
    }

    #[test]
    fn one_variable_per_distinct_reference() {
        let (s, env) = substitute(
            "echo $[jobs.a.b.artifacts.c] $[stages.s.a.b.artifacts.d] $[ jobs.a.b.artifacts.c ]",
            |k| Some(format!("<{k}>")),
        )
        .unwrap();
        assert_eq!(
            s,
            "echo \"${SATCHEL_REF_1}\" \"${SATCHEL_REF_2}\" \"${SATCHEL_REF_1}\""
        );
        assert_eq!(
            env,
            [
                ("SATCHEL_REF_1".into(), "<jobs.a.b.artifacts.c>".into()),
                ("SATCHEL_REF_2".into(), "<stages.s.a.b.artifacts.d>".into())
            ]
        );
        assert!(substitute("echo $[nope]", |_| Some(String::new())).is_err());
        assert!(substitute("echo $[jobs.a.b.artifacts.c]", |_| None).is_err());
    }
}
