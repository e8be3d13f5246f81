//! `buildkite-agent artifact …` inside a job: the `satchel` binary answers
//! to that name (the local runner puts a link named `buildkite-agent`
//! first on every step's `PATH`) and takes the agent's own arguments,
//! flags and environment, so a Buildkite pipeline's commands run
//! unchanged.
//!
//! Each agent command becomes the `satchel artifact` command that does the
//! same, with the agent's semantics where they differ from Satchel's:
//! - a download, search or shasum query's `*` spans `/` (Buildkite matches
//!   server-side that way): `*` becomes `{*,*/**/*}`;
//! - `--build` takes a build UUID (or any CI build id), which names the
//!   run in any pipeline;
//! - an upload whose patterns match nothing only warns;
//! - `search` prints `%j %p %c` per file unless `--format` says otherwise,
//!   and `%S` (SHA-1, which Satchel does not keep) and `%u` are refused.
//!
//! The translated arguments are parsed by `satchel`'s own parser, so the
//! behaviour of each command has one owner.

use std::ffi::OsString;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};

/// The name the binary answers to.
pub const AGENT: &str = "buildkite-agent";

/// Whether the process was started as `buildkite-agent`.
pub fn invoked_as_agent() -> bool {
    std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == AGENT))
        .unwrap_or(false)
}

/// Satchel's stand-in for `buildkite-agent`: its artifact commands,
/// against the Satchel server of the job (`SATCHEL_URL`, `SATCHEL_TOKEN`).
#[derive(Parser, Debug)]
#[command(name = AGENT, version)]
struct Agent {
    #[command(subcommand)]
    command: AgentCommand,
}

#[derive(Subcommand, Debug)]
enum AgentCommand {
    /// Upload, download, search and check artifacts.
    #[command(subcommand)]
    Artifact(ArtifactCommand),
}

/// Flags every agent command takes; they mean nothing here.
#[derive(Args, Debug)]
struct Ignored {
    #[arg(long, hide = true)]
    agent_access_token: Option<String>,
    #[arg(long, hide = true)]
    endpoint: Option<String>,
    #[arg(long, hide = true)]
    no_color: bool,
    #[arg(long, hide = true)]
    debug: bool,
    #[arg(long, hide = true)]
    debug_http: bool,
    #[arg(long, hide = true)]
    trace_http: bool,
    #[arg(long, hide = true)]
    no_http2: bool,
    #[arg(long, hide = true)]
    log_level: Option<String>,
    #[arg(long, hide = true)]
    experiment: Vec<String>,
    #[arg(long, hide = true)]
    profile: Option<String>,
}

/// Where a download, search or shasum looks.
#[derive(Args, Debug)]
struct Where {
    /// Only artifacts of this step (key).
    #[arg(long)]
    step: Option<String>,
    /// The build, by UUID (any CI build id) or number (default: this one).
    #[arg(long)]
    build: Option<String>,
    /// Include artifacts of retried jobs.
    #[arg(long)]
    include_retried_jobs: bool,
}

#[derive(Subcommand, Debug)]
enum ArtifactCommand {
    /// Upload files matching the pattern(s) into this job's artifacts.
    Upload {
        /// Glob pattern(s), split on the delimiter.
        pattern: String,
        /// An upload destination (your own bucket): not supported.
        destination: Option<String>,
        /// Upload as this job (key).
        #[arg(long)]
        job: Option<String>,
        /// Content type of every file.
        #[arg(long)]
        content_type: Option<String>,
        /// Split the pattern on this string.
        #[arg(long, default_value = ";")]
        delimiter: String,
        /// The pattern is a path, not a glob.
        #[arg(long)]
        literal: bool,
        /// Skip symbolic links.
        #[arg(long)]
        upload_skip_symlinks: bool,
        /// Accepted: symbolic links to files are uploaded as their targets.
        #[arg(long)]
        follow_symlinks: bool,
        /// Accepted: directories are walked without following links.
        #[arg(long)]
        glob_resolve_follow_symlinks: bool,
        #[command(flatten)]
        ignored: Ignored,
    },
    /// Download the files matching the query into a directory.
    Download {
        /// Path query (`*` spans `/`).
        query: String,
        /// Destination directory.
        destination: String,
        #[command(flatten)]
        scope: Where,
        #[command(flatten)]
        ignored: Ignored,
    },
    /// Print the files matching the query.
    Search {
        /// Path query (`*` spans `/`).
        query: String,
        #[command(flatten)]
        scope: Where,
        /// Succeed when nothing matches.
        #[arg(long)]
        allow_empty_results: bool,
        /// Line template: %i id, %p path, %c created, %j job, %s size,
        /// %T sha256.
        #[arg(long, default_value = "%j %p %c")]
        format: String,
        #[command(flatten)]
        ignored: Ignored,
    },
    /// Print the SHA-256 of the one file matching the query.
    Shasum {
        /// Path query (`*` spans `/`).
        query: String,
        /// Accepted: the hash is always SHA-256.
        #[arg(long)]
        sha256: bool,
        #[command(flatten)]
        scope: Where,
        #[command(flatten)]
        ignored: Ignored,
    },
}

/// Most `*` a query may hold: each doubles the alternatives its glob
/// expands to, which the glob dialect caps at 1024.
const MAX_STARS: usize = 10;

/// A Buildkite query as a Satchel glob: each `*` (not part of `**`) may
/// also span `/`.
pub fn spanning(query: &str) -> anyhow::Result<String> {
    let mut out = String::with_capacity(query.len() * 2);
    let mut chars = query.chars().peekable();
    let mut class = false;
    let mut stars = 0;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                out.push(c);
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            '[' if !class => {
                class = true;
                out.push(c);
                // `[!…]`, `[^…]`, and a `]` first in a class is literal.
                if let Some(n) = chars.next_if(|n| *n == '!' || *n == '^') {
                    out.push(n);
                }
                if let Some(n) = chars.next_if(|n| *n == ']') {
                    out.push(n);
                }
            }
            ']' if class => {
                class = false;
                out.push(c);
            }
            '*' if !class => {
                if chars.peek() == Some(&'*') {
                    out.push_str("**");
                    while chars.peek() == Some(&'*') {
                        chars.next();
                    }
                } else {
                    stars += 1;
                    out.push_str("{*,*/**/*}");
                }
            }
            c => out.push(c),
        }
    }
    if stars > MAX_STARS {
        bail!("the query {query:?} has {stars} `*`; at most {MAX_STARS} can span `/` (use `**` for some)");
    }
    Ok(out)
}

fn scope_args(out: &mut Vec<String>, scope: Where) {
    if let Some(s) = scope.step {
        out.extend(["--step".into(), s]);
    }
    if let Some(b) = scope.build.filter(|b| !b.is_empty()) {
        out.extend(["--build".into(), b]);
    }
    if scope.include_retried_jobs {
        out.push("--include-retried-jobs".into());
    }
}

/// The `satchel` command line that does what the agent's `args` ask.
pub fn translate(args: impl IntoIterator<Item = OsString>) -> anyhow::Result<Vec<OsString>> {
    let agent = Agent::try_parse_from(args).unwrap_or_else(|e| e.exit());
    let AgentCommand::Artifact(cmd) = agent.command;
    let mut out: Vec<String> = vec!["satchel".into(), "artifact".into()];
    match cmd {
        ArtifactCommand::Upload {
            pattern,
            destination,
            job,
            content_type,
            delimiter,
            literal,
            upload_skip_symlinks,
            ..
        } => {
            if let Some(d) = destination {
                bail!("uploading to your own destination ({d}) is not supported: artifacts go to the Satchel server");
            }
            out.extend(["upload".into(), "--if-no-files-found".into(), "warn".into()]);
            out.extend(["--delimiter".into(), delimiter]);
            if let Some(j) = job {
                out.extend(["--job".into(), j]);
            }
            if let Some(t) = content_type {
                out.extend(["--content-type".into(), t]);
            }
            if literal {
                out.push("--literal".into());
            }
            if upload_skip_symlinks {
                out.push("--skip-symlinks".into());
            }
            out.push("--".into());
            out.push(pattern);
        }
        ArtifactCommand::Download {
            query,
            destination,
            scope,
            ..
        } => {
            out.push("download".into());
            scope_args(&mut out, scope);
            out.extend(["--".into(), spanning(&query)?, destination]);
        }
        ArtifactCommand::Search {
            query,
            scope,
            allow_empty_results,
            format,
            ..
        } => {
            for (code, what) in [
                (
                    "%S",
                    "SHA-1, which Satchel does not keep; %T is the SHA-256",
                ),
                ("%u", "a download URL"),
            ] {
                if format.contains(code) {
                    bail!("--format {code} ({what}) is not supported");
                }
            }
            out.push("search".into());
            scope_args(&mut out, scope);
            if allow_empty_results {
                out.push("--allow-empty-results".into());
            }
            let format = format.strip_suffix('\n').unwrap_or(&format).to_string();
            out.extend(["--format".into(), format, "--".into(), spanning(&query)?]);
        }
        ArtifactCommand::Shasum { query, scope, .. } => {
            out.push("shasum".into());
            scope_args(&mut out, scope);
            out.extend(["--".into(), spanning(&query)?]);
        }
    }
    Ok(out.into_iter().map(OsString::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(args: &[&str]) -> Vec<String> {
        let mut v = vec![OsString::from(AGENT)];
        v.extend(args.iter().map(OsString::from));
        translate(v)
            .unwrap()
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn a_star_spans_slashes_as_on_buildkite() {
        let g = satchel_model::glob::Glob::new(&spanning("*.jpg").unwrap()).unwrap();
        assert!(g.is_match("a.jpg") && g.is_match("img/x/a.jpg"));
        assert!(!g.is_match("a.png"));
        let g = satchel_model::glob::Glob::new(&spanning("logs/**").unwrap()).unwrap();
        assert!(g.is_match("logs/a/b.txt"));
        let g = satchel_model::glob::Glob::new(&spanning("pkg/*.tar.gz").unwrap()).unwrap();
        assert!(g.is_match("pkg/linux/app.tar.gz") && !g.is_match("other/app.tar.gz"));
        let g = satchel_model::glob::Glob::new(&spanning("a\\*b[*]").unwrap()).unwrap();
        assert!(g.is_match("a*b*") && !g.is_match("a/x/b*"));
        let g = satchel_model::glob::Glob::new(&spanning("[]x]*").unwrap()).unwrap();
        assert!(g.is_match("]/deep") && g.is_match("x"));
        assert!(spanning(&"a*".repeat(10)).is_ok());
        assert!(spanning(&"a*".repeat(11)).is_err());
    }

    #[test]
    fn agent_commands_become_satchel_commands() {
        assert_eq!(
            words(&[
                "artifact", "download", "*.jpg", "images/", "--build", "0190-ab", "--step", "build"
            ]),
            [
                "satchel",
                "artifact",
                "download",
                "--step",
                "build",
                "--build",
                "0190-ab",
                "--",
                "{*,*/**/*}.jpg",
                "images/"
            ]
        );
        assert_eq!(
            words(&[
                "artifact",
                "upload",
                "log/*;pkg/*.gz",
                "--log-level",
                "debug"
            ]),
            [
                "satchel",
                "artifact",
                "upload",
                "--if-no-files-found",
                "warn",
                "--delimiter",
                ";",
                "--",
                "log/*;pkg/*.gz"
            ]
        );
        assert_eq!(
            words(&["artifact", "search", "*", "--format", "%p %T\n"]),
            [
                "satchel",
                "artifact",
                "search",
                "--format",
                "%p %T",
                "--",
                "{*,*/**/*}"
            ]
        );
        assert_eq!(
            words(&[
                "artifact",
                "shasum",
                "--sha256",
                "pkg/app.tgz",
                "--build",
                ""
            ]),
            ["satchel", "artifact", "shasum", "--", "pkg/app.tgz"]
        );
        let mut v = vec![OsString::from(AGENT)];
        v.extend(["artifact", "upload", "x", "s3://bucket/path"].map(OsString::from));
        assert!(translate(v)
            .unwrap_err()
            .to_string()
            .contains("not supported"));
        let mut v = vec![OsString::from(AGENT)];
        v.extend(["artifact", "search", "x", "--format", "%S"].map(OsString::from));
        assert!(translate(v).unwrap_err().to_string().contains("SHA-1"));
    }
}
