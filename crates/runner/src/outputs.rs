//! What a step hands on to the steps and jobs after it: outputs,
//! environment variables and `PATH` entries it writes to files, as
//! GitHub's runner reads `GITHUB_OUTPUT`, `GITHUB_ENV` and `GITHUB_PATH`
//! (Satchel's own names: `SATCHEL_OUTPUT`, `SATCHEL_ENV`,
//! `SATCHEL_PATH`); and the variables later steps and jobs read them from.
//! The one owner of the file format and of those variable names, which
//! the runner and the translators both use.
//!
//! The files hold `NAME=value` lines and multi-line values as
//! `NAME<<DELIMITER`, the value's lines, then `DELIMITER` alone.

use std::collections::BTreeMap;

/// The most bytes of one file a step hands things on through.
pub const MAX_BYTES: u64 = 1 << 20;

/// The most bytes of one value handed on: each becomes an environment
/// variable of later steps, and Linux refuses one over 128 KiB.
pub const MAX_VALUE: usize = 64 << 10;

/// The most bytes of names and values a job's steps hand on in all (the
/// environment of a process, with its arguments, holds about 2 MiB).
pub const MAX_TOTAL: usize = 512 << 10;

/// Refuses a value no environment can carry: over [`MAX_VALUE`], or with
/// a NUL byte.
pub fn check_value(var: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_VALUE {
        return Err(format!(
            "{var} is {} bytes; a value handed on is at most {MAX_VALUE} bytes (put bigger ones in a file)",
            value.len()
        ));
    }
    if value.contains('\0') {
        return Err(format!(
            "{var} holds a NUL byte, which no environment variable can"
        ));
    }
    Ok(())
}

/// The `(name, value)` pairs of a command file's `text`, in order.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        let heredoc = line.split_once("<<");
        let plain = line.split_once('=');
        // `NAME<<EOF` unless an `=` comes first (`A=x<<y` is a value).
        match (heredoc, plain) {
            (Some((name, delim)), p) if p.is_none_or(|(n, _)| n.len() > name.len()) => {
                let (name, delim) = (name.trim(), delim.trim());
                check_name(name)?;
                if delim.is_empty() {
                    return Err(format!("{name}<<: the delimiter is missing"));
                }
                let mut value: Vec<&str> = Vec::new();
                let mut closed = false;
                for l in lines.by_ref() {
                    if l == delim {
                        closed = true;
                        break;
                    }
                    value.push(l);
                }
                if !closed {
                    return Err(format!("{name}<<{delim}: no line {delim:?} ends the value"));
                }
                out.push((name.to_string(), value.join("\n")));
            }
            (_, Some((name, value))) => {
                check_name(name)?;
                out.push((name.to_string(), value.to_string()));
            }
            _ => {
                return Err(format!(
                    "{line:?} is neither NAME=value nor NAME<<DELIMITER"
                ))
            }
        }
    }
    Ok(out)
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a name (letters, digits, _, - and .)"
        ))
    }
}

/// `s` in a variable name: letters and digits as they are, every other
/// byte as `_` and two hex digits, so `__` never appears in it and the
/// encoding is one-to-one.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out
}

/// The variable later steps of the job read output `name` of step `step`
/// from: `SATCHEL_STEP_<step>__<name>` (`SATCHEL_STEP_version__tag`).
pub fn step_var(step: &str, name: &str) -> String {
    format!("SATCHEL_STEP_{}__{}", encode(step), encode(name))
}

/// The variable later jobs read output `name` of job `job` from:
/// `SATCHEL_JOB_<job>__<name>`.
pub fn job_var(job: &str, name: &str) -> String {
    format!("SATCHEL_JOB_{}__{}", encode(job), encode(name))
}

/// `template` with each `${NAME}` replaced by `vars[NAME]` (empty when
/// unset, as GitHub gives a missing output); nothing else is expanded.
pub fn expand(template: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        match after.find('}') {
            Some(end)
                if !after[..end].is_empty()
                    && after[..end]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                if let Some(v) = vars.get(&after[..end]) {
                    out.push_str(v);
                }
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_files_read_as_github_writes_them() {
        let got =
            parse("a=1\n\nb=x=y\nnotes<<EOF\nline 1\n\nline=3\nEOF\nc=<<not a heredoc\n").unwrap();
        assert_eq!(
            got,
            [
                ("a".into(), "1".into()),
                ("b".into(), "x=y".into()),
                ("notes".into(), "line 1\n\nline=3".into()),
                ("c".into(), "<<not a heredoc".into()),
            ]
        );
        assert!(parse("x<<EOF\nnever closed\n")
            .unwrap_err()
            .contains("no line"));
        assert!(parse("just words\n").is_err());
        assert!(parse("bad name=1\n").is_err());
    }

    #[test]
    fn variable_names_are_one_to_one() {
        assert_eq!(step_var("version", "tag"), "SATCHEL_STEP_version__tag");
        assert_ne!(step_var("a_b", "c"), step_var("a", "b_c"));
        assert_ne!(step_var("a-b", "c"), step_var("a_b", "c"));
        assert_eq!(
            job_var("build", "image-tag"),
            "SATCHEL_JOB_build__image_2Dtag"
        );
    }

    #[test]
    fn values_no_environment_can_carry_are_refused() {
        assert!(check_value("V", &"x".repeat(MAX_VALUE)).is_ok());
        assert!(check_value("V", &"x".repeat(MAX_VALUE + 1))
            .unwrap_err()
            .contains("at most"));
        assert!(check_value("V", "a\0b").unwrap_err().contains("NUL"));
    }

    #[test]
    fn templates_expand_only_braced_names() {
        let vars = BTreeMap::from([("A".to_string(), "1".to_string())]);
        assert_eq!(expand("v${A}-${B}-$A-${ x }-${", &vars), "v1--$A-${ x }-${");
    }
}
