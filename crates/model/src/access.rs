//! Access control's vocabulary: token scopes, organizations, clusters,
//! pipelines' homes, artifact-read rules with their conditions, and audit
//! entries, as the API and the CLI exchange them.
//!
//! The decisions themselves (who may do what) live in the server's
//! `access` module; this module only defines and validates the words, so
//! the CLI refuses a bad scope or condition before a request is sent, with
//! the server's own message.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Every token starts with this, so secret scanners and people can tell a
/// Satchel token from others.
pub const TOKEN_PREFIX: &str = "satchel_";

/// The one rule type: pipelines (or clusters) named as the source may read
/// the artifacts of the target. Buildkite's name for it.
pub const ARTIFACTS_READ: &str = "pipeline.artifacts_read.pipeline";

/// What a token may do.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Search, list and download.
    Read,
    /// Create runs, upload and publish.
    Write,
    /// Delete artifacts.
    Delete,
    /// Manage tokens, clusters, pipelines, rules and read the audit log of
    /// the token's organization; implies the other three there.
    Admin,
}

impl Scope {
    /// Every scope, in order.
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Write, Scope::Delete, Scope::Admin];

    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Delete => "delete",
            Scope::Admin => "admin",
        }
    }

    /// Parses `read,write`: distinct, sorted; at least one.
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim) {
            let scope = match part {
                "read" => Scope::Read,
                "write" => Scope::Write,
                "delete" => Scope::Delete,
                "admin" => Scope::Admin,
                "" => continue,
                other => {
                    return Err(format!(
                    "unknown scope {other:?}: use read, write, delete and admin, comma-separated"
                ))
                }
            };
            out.push(scope);
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err("a token needs at least one scope (read, write, delete, admin)".into());
        }
        Ok(out)
    }

    /// `read,write`.
    pub fn join(scopes: &[Scope]) -> String {
        scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /api/v1/admin/tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewToken {
    /// What the token is for, shown in lists and the audit log.
    #[serde(default)]
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Organization key (default `default`).
    #[serde(default)]
    pub org: Option<String>,
    /// Cluster key in the organization (default `default`).
    #[serde(default)]
    pub cluster: Option<String>,
    /// Narrows it to one pipeline.
    #[serde(default)]
    pub pipeline: Option<String>,
    /// With `job`: a job token of this run of `pipeline`.
    #[serde(default)]
    pub run: Option<u64>,
    /// The job a job token uploads as.
    #[serde(default)]
    pub job: Option<String>,
    /// The attempt a job token uploads as (default 1).
    #[serde(default)]
    pub attempt: Option<u32>,
    /// Seconds until it stops working (none: never).
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

/// A token as lists show it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    /// Token id.
    pub id: String,
    /// What it is for.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Organization key.
    pub org: String,
    /// Cluster key.
    pub cluster: String,
    /// The one pipeline it is narrowed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// A job token's run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<u64>,
    /// A job token's job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// A job token's attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// When it stops working, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Expiry, milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// When it was revoked, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

impl TokenInfo {
    /// Whether it works at `now_ms`: not revoked, not expired.
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at_ms.is_none_or(|e| now_ms < e)
    }

    /// Whether it may `scope` (admin implies the others).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }
}

/// The answer to a token creation: the secret, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenCreated {
    /// Token id (for `revoke`).
    pub id: String,
    /// The secret.
    pub token: String,
    /// The token.
    pub info: TokenInfo,
}

/// `GET /api/v1/admin/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenList {
    /// Tokens, oldest first.
    pub tokens: Vec<TokenInfo>,
}

/// An organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrgInfo {
    /// Key.
    pub name: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

/// A cluster of an organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterInfo {
    /// Organization key.
    pub org: String,
    /// Key.
    pub name: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

/// A pipeline and where it lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PipelineInfo {
    /// Key (unique on the server).
    pub name: String,
    /// Organization key.
    pub org: String,
    /// Cluster key.
    pub cluster: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

/// `POST /api/v1/admin/orgs`, `…/clusters`, `…/pipelines`, and a
/// pipeline's move: names and the home they go to.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewPlace {
    /// Key of the new thing (or the pipeline moved).
    pub name: String,
    /// Organization key (default `default`).
    #[serde(default)]
    pub org: Option<String>,
    /// Cluster key (pipelines).
    #[serde(default)]
    pub cluster: Option<String>,
}

/// `GET /api/v1/admin/orgs`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrgList {
    /// Organizations by name.
    pub orgs: Vec<OrgInfo>,
}

/// `GET /api/v1/admin/clusters`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterList {
    /// Clusters by organization and name.
    pub clusters: Vec<ClusterInfo>,
}

/// `GET /api/v1/pipelines`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PipelineList {
    /// Pipelines by name.
    pub pipelines: Vec<PipelineInfo>,
}

/// One end of a rule: a pipeline, or every pipeline of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuleEnd {
    /// A pipeline key.
    Pipeline(String),
    /// A cluster key of the rule's organization.
    Cluster(String),
}

impl fmt::Display for RuleEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleEnd::Pipeline(p) => write!(f, "pipeline {p:?}"),
            RuleEnd::Cluster(c) => write!(f, "cluster {c:?}"),
        }
    }
}

/// `POST /api/v1/admin/rules`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewRule {
    /// [`ARTIFACTS_READ`].
    #[serde(rename = "type")]
    pub kind: String,
    /// Organization key (default `default`).
    #[serde(default)]
    pub org: Option<String>,
    /// Who reads.
    pub source: RuleEnd,
    /// Whose artifacts.
    pub target: RuleEnd,
    /// Optional condition on the reading build (see [`Condition`]).
    #[serde(default)]
    pub condition: Option<String>,
}

/// A rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleInfo {
    /// Rule id.
    pub id: String,
    /// [`ARTIFACTS_READ`].
    #[serde(rename = "type")]
    pub kind: String,
    /// Organization key.
    pub org: String,
    /// Who reads.
    pub source: RuleEnd,
    /// Whose artifacts.
    pub target: RuleEnd,
    /// Condition on the reading build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

/// `GET /api/v1/admin/rules`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleList {
    /// Rules, oldest first.
    pub rules: Vec<RuleInfo>,
}

/// One recorded API request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Entry id; time-ordered, the cursor of pages.
    pub id: String,
    /// When, RFC 3339.
    pub at: String,
    /// When, milliseconds since the epoch.
    pub at_ms: i64,
    /// The token's id (`admin` for the bootstrap token; none when no valid
    /// token was presented).
    #[serde(default)]
    pub token_id: Option<String>,
    /// The token's name.
    #[serde(default)]
    pub token_name: Option<String>,
    /// The token's organization.
    #[serde(default)]
    pub org: Option<String>,
    /// Method and route, e.g. `GET /api/v1/artifacts/{id}`.
    pub action: String,
    /// What it acted on, e.g. `pipeline=app run=3 artifact=…`.
    pub resource: String,
    /// Whether access was allowed.
    pub allowed: bool,
    /// The HTTP status answered.
    pub status: u16,
    /// Why it was denied, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The client's address.
    #[serde(default)]
    pub client: Option<String>,
    /// The client's `User-Agent`.
    #[serde(default)]
    pub user_agent: Option<String>,
}

/// `GET /api/v1/admin/audit` filters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Entries at or after this time (milliseconds).
    #[serde(default)]
    pub since_ms: Option<i64>,
    /// Only this token's.
    #[serde(default)]
    pub token: Option<String>,
    /// Only denials.
    #[serde(default)]
    pub denied: bool,
    /// Only this organization's (set by the server for organization
    /// admins).
    #[serde(default)]
    pub org: Option<String>,
    /// Entries older than this id (the previous page's `next_cursor`).
    #[serde(default)]
    pub cursor: Option<String>,
    /// Page size (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// A page of the audit log, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// Entries, newest first.
    pub entries: Vec<AuditEntry>,
    /// Pass as `cursor` for the next (older) page; none at the end.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// What a rule's condition can see of the reading build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildFacts {
    /// `source.pipeline`.
    pub pipeline: Option<String>,
    /// `source.build.number`.
    pub number: Option<u64>,
    /// `source.build.branch`.
    pub branch: Option<String>,
    /// `source.build.commit`.
    pub commit: Option<String>,
}

/// A rule condition: comparisons of the reading build's fields with
/// quoted strings, joined by `&&` and `||` (`&&` binds tighter), e.g.
/// `source.build.branch == 'main' || source.build.branch == 'release'`.
/// Fields: `source.pipeline`, `source.build.number`, `source.build.branch`,
/// `source.build.commit`. A field the reader does not have (a token that
/// is not a job's has no build) makes its comparison false, `!=` included:
/// a condition is never met by not knowing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// Alternatives of conjunctions.
    any: Vec<Vec<Comparison>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Comparison {
    field: Field,
    equal: bool,
    value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Pipeline,
    Number,
    Branch,
    Commit,
}

/// Longest condition, in bytes.
pub const MAX_CONDITION_BYTES: usize = 1024;

impl Condition {
    /// Parses a condition; the message says what is wrong and where.
    pub fn parse(text: &str) -> Result<Condition, String> {
        if text.len() > MAX_CONDITION_BYTES {
            return Err(format!(
                "condition is {} bytes; at most {MAX_CONDITION_BYTES}",
                text.len()
            ));
        }
        let mut any = Vec::new();
        for alt in split_outside_quotes(text, "||")? {
            let mut all = Vec::new();
            for cmp in split_outside_quotes(alt, "&&")? {
                all.push(Comparison::parse(cmp.trim())?);
            }
            any.push(all);
        }
        Ok(Condition { any })
    }

    /// Whether the reading build meets it.
    pub fn holds(&self, b: &BuildFacts) -> bool {
        self.any.iter().any(|all| all.iter().all(|c| c.holds(b)))
    }
}

impl Comparison {
    fn parse(s: &str) -> Result<Comparison, String> {
        // The operator comes before the quoted value (which may hold one).
        let head = &s[..s.find(['\'', '"']).unwrap_or(s.len())];
        let (lhs, rest, equal) = if let Some(i) = head.find("==") {
            (&s[..i], &s[i + 2..], true)
        } else if let Some(i) = head.find("!=") {
            (&s[..i], &s[i + 2..], false)
        } else {
            return Err(format!(
                "{s:?}: expected `FIELD == 'value'` or `FIELD != 'value'`"
            ));
        };
        let field = match lhs.trim() {
            "source.pipeline" => Field::Pipeline,
            "source.build.number" => Field::Number,
            "source.build.branch" => Field::Branch,
            "source.build.commit" => Field::Commit,
            other => {
                return Err(format!(
                    "unknown field {other:?}: use source.pipeline, source.build.number, source.build.branch or source.build.commit"
                ))
            }
        };
        let rhs = rest.trim();
        let quoted = |q: char| {
            rhs.strip_prefix(q)
                .and_then(|r| r.strip_suffix(q))
                .filter(|v| !v.contains(q))
        };
        let Some(value) = quoted('\'').or_else(|| quoted('"')) else {
            return Err(format!(
                "{s:?}: the value must be one quoted string, e.g. 'main'"
            ));
        };
        Ok(Comparison {
            field,
            equal,
            value: value.to_string(),
        })
    }

    fn holds(&self, b: &BuildFacts) -> bool {
        let have = match self.field {
            Field::Pipeline => b.pipeline.clone(),
            Field::Number => b.number.map(|n| n.to_string()),
            Field::Branch => b.branch.clone(),
            Field::Commit => b.commit.clone(),
        };
        match have {
            None => false,
            Some(v) => (v == self.value) == self.equal,
        }
    }
}

/// Splits on `sep` outside of quoted strings; no part may be empty.
fn split_outside_quotes<'a>(s: &'a str, sep: &str) -> Result<Vec<&'a str>, String> {
    let mut parts = Vec::new();
    let (mut start, mut quote, mut i) = (0, None::<u8>, 0);
    let bytes = s.as_bytes();
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'\'' || c == b'"' => quote = Some(c),
            // Bytes, not `&s[i..]`: `i` may be inside a multi-byte
            // character (a separator is ASCII, so where it matches is a
            // character boundary).
            None if bytes[i..].starts_with(sep.as_bytes()) => {
                parts.push(&s[start..i]);
                i += sep.len();
                start = i;
                continue;
            }
            None => {}
        }
        i += 1;
    }
    if quote.is_some() {
        return Err(format!("{s:?}: a quoted string is not closed"));
    }
    parts.push(&s[start..]);
    if parts.iter().any(|p| p.trim().is_empty()) {
        return Err(format!("{s:?}: an empty comparison around `{sep}`"));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(branch: Option<&str>) -> BuildFacts {
        BuildFacts {
            pipeline: Some("app".into()),
            number: Some(7),
            branch: branch.map(str::to_string),
            commit: None,
        }
    }

    #[test]
    fn conditions_compare_the_reading_build() {
        let c = Condition::parse("source.build.branch == 'main'").unwrap();
        assert!(c.holds(&facts(Some("main"))));
        assert!(!c.holds(&facts(Some("dev"))));
        assert!(!c.holds(&facts(None)), "unknown is never a match");
        let c = Condition::parse("source.build.branch != \"main\"").unwrap();
        assert!(c.holds(&facts(Some("dev"))));
        assert!(!c.holds(&facts(Some("main"))));
        assert!(!c.holds(&facts(None)), "unknown is not `!=` either");
        let c = Condition::parse(
            "source.build.branch == 'a' || source.pipeline == 'app' && source.build.number == '7'",
        )
        .unwrap();
        assert!(c.holds(&facts(Some("x"))));
        assert!(c.holds(&facts(Some("a"))));
        let c = Condition::parse("source.build.branch == 'a||b'").unwrap();
        assert!(c.holds(&facts(Some("a||b"))), "separators inside quotes");
        let c = Condition::parse("source.build.branch != 'a==b'").unwrap();
        assert!(!c.holds(&facts(Some("a==b"))), "operators inside quotes");
        assert!(c.holds(&facts(Some("main"))));
    }

    #[test]
    fn bad_conditions_say_why() {
        for (bad, says) in [
            ("", "empty"),
            ("source.build.branch = 'main'", "expected"),
            ("build.branch == 'main'", "unknown field"),
            ("source.build.branch == main", "quoted"),
            ("source.build.branch == 'main", "not closed"),
            ("source.build.branch == 'main' &&", "empty"),
            ("source.build.branch == 'a' 'b'", "quoted"),
        ] {
            let e = Condition::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        assert!(Condition::parse(&"x".repeat(2000)).is_err());
        // Found by fuzzing: a multi-byte character before a separator.
        assert!(Condition::parse("source.pipeline == 'é' && source.pipeline == 'ü'").is_ok());
        assert!(Condition::parse("é&&ü").is_err());
    }

    #[test]
    fn scopes_parse_sorted_and_distinct() {
        assert_eq!(
            Scope::parse_list("write, read,write").unwrap(),
            vec![Scope::Read, Scope::Write]
        );
        assert!(Scope::parse_list("read,sudo").unwrap_err().contains("sudo"));
        assert!(Scope::parse_list(",").is_err());
        let t = TokenInfo {
            id: "t".into(),
            name: String::new(),
            scopes: vec![Scope::Admin],
            org: "default".into(),
            cluster: "default".into(),
            pipeline: None,
            run: None,
            job: None,
            attempt: None,
            created_at: String::new(),
            expires_at: None,
            expires_at_ms: Some(1000),
            revoked_at: None,
        };
        assert!(t.has(Scope::Delete), "admin implies the rest");
        assert!(t.is_live(999) && !t.is_live(1000));
    }
}

/// What one pipeline's artifacts hold, from metadata (`GET
/// /api/v1/storage`, the UI's pipelines page).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PipelineStorage {
    /// Pipeline key.
    pub pipeline: String,
    /// Artifacts by state (`finished`, `uploading`, `deleted`, …).
    pub artifacts: std::collections::BTreeMap<String, u64>,
    /// Bytes of the files of its finished artifacts, as downloaded.
    pub logical_bytes: u64,
    /// Bytes of the distinct contents of those files: what it would take
    /// to store them with whole-file deduplication within the pipeline.
    pub content_bytes: u64,
}

impl PipelineStorage {
    /// `logical_bytes / content_bytes` (1 when there is nothing).
    pub fn dedup_ratio(&self) -> f64 {
        if self.content_bytes == 0 {
            1.0
        } else {
            self.logical_bytes as f64 / self.content_bytes as f64
        }
    }
}

/// `GET /api/v1/storage`: storage figures of the pipelines the caller may
/// read, and of the whole server.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StorageReport {
    /// Per pipeline, by name.
    pub pipelines: Vec<PipelineStorage>,
    /// Bytes of the distinct contents the server knows to be stored (every
    /// pipeline's, each once), before chunk deduplication and compression.
    pub content_bytes: u64,
    /// What the content store held after the last garbage collection pass
    /// of this process (after chunk deduplication, compression and
    /// encryption), if one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    /// When these figures were computed, RFC 3339 (they are cached for a
    /// minute).
    pub computed_at: String,
}
