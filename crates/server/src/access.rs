//! Who may do what: the one owner of every access decision.
//!
//! A request is made by a [`Principal`]: the bootstrap admin token (which
//! may do everything), or a stored token with scopes, a home (organization
//! and cluster), and optionally a narrowing to one pipeline or to one job
//! of one run (a job token). Handlers ask [`Caller`] before they act; each
//! question is answered by [`decide`], a pure function of the token, the
//! target pipeline's home and the organization's rules, so the rules are
//! written once and tested cell by cell.
//!
//! The model, in Buildkite's terms:
//! - **write** (runs, uploads, typed artifacts, promotion) and **delete**
//!   need the scope, a target pipeline in the token's cluster, the token's
//!   pipeline if it is narrowed, and for a job token its run (and, for
//!   uploads, its job and attempt). A job token cannot start or finish
//!   runs.
//! - **read** needs the scope and a target pipeline in the token's
//!   cluster; another cluster's pipelines of the same organization only
//!   with an `artifacts_read` rule whose source is the token's pipeline (or
//!   cluster) and whose target is the pipeline (or its cluster), and whose
//!   condition, if any, the token's build meets. Another organization's
//!   pipelines never.
//! - **admin** implies the other three in the token's organization, and
//!   manages its tokens, clusters, pipelines, rules and audit log.
//!   Server-wide maintenance (GC, fsck, keys, organizations) needs the
//!   bootstrap token.
//!
//! Every decision is noted for the audit log ([`crate::audit`]), allowed
//! or denied, with what it was about.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use satchel_model::access::{
    BuildFacts, Condition, PipelineInfo, RuleEnd, RuleInfo, Scope, TokenInfo,
};

use crate::audit::AuditNote;
use crate::error::ApiError;
use crate::AppState;

/// Who makes a request.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The bootstrap admin token: everything.
    Admin,
    /// A stored token, live when the request began.
    Token(Box<TokenInfo>),
}

/// Why a presented token is refused (401), and which stored token it
/// was, if it is one (revoked or expired), for the audit log.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The message answered.
    pub why: String,
    /// The stored token, if the secret is one.
    pub token: Option<TokenInfo>,
}

/// What a request wants to do to a pipeline's artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Search, list, download.
    Read,
    /// Create runs, upload, publish, promote.
    Write,
    /// Delete artifacts.
    Delete,
}

impl Need {
    fn scope(self) -> Scope {
        match self {
            Need::Read => Scope::Read,
            Need::Write => Scope::Write,
            Need::Delete => Scope::Delete,
        }
    }
}

/// The job a write acts as, checked against a job token's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acting {
    /// The run it writes into (none: the pipeline itself, e.g. starting a
    /// run).
    pub run: Option<u64>,
    /// The job and attempt it writes as (none: not a job's upload).
    pub job: Option<(String, u32)>,
}

impl Acting {
    /// Acting on what `p` produced (deleting or promoting its artifact):
    /// a job token only on its own job's.
    pub fn producer(p: &satchel_model::api::Producer) -> Acting {
        Acting {
            run: Some(p.run),
            job: Some((p.job.clone(), p.attempt)),
        }
    }

    /// Acting as the job of `ctx` (an upload or typed artifact).
    pub fn of(ctx: &satchel_model::api::JobContext) -> Acting {
        Acting {
            run: Some(ctx.run),
            job: Some((ctx.job.clone(), ctx.attempt)),
        }
    }
}

/// A refusal: its message names what is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

/// Whether `t` may do `need` to pipeline `target` acting as `acting`,
/// given the organization's `rules` and the facts of the token's build.
/// The one place the access rules live.
pub fn decide(
    t: &TokenInfo,
    need: Need,
    target: &PipelineInfo,
    acting: &Acting,
    rules: &[RuleInfo],
    build: &BuildFacts,
) -> Result<(), Denied> {
    let id = &t.id;
    if !t.has(need.scope()) {
        return Err(Denied(format!(
            "token {id} lacks the `{}` scope (it has: {})",
            need.scope(),
            Scope::join(&t.scopes)
        )));
    }
    if target.org != t.org {
        // Nothing about the other organization (not even its name).
        return Err(Denied(format!(
            "pipeline {:?} is not in organization {:?}, which token {id} is for",
            target.name, t.org
        )));
    }
    if t.scopes.contains(&Scope::Admin) {
        return Ok(());
    }
    match need {
        Need::Write | Need::Delete => {
            if target.cluster != t.cluster {
                return Err(Denied(format!(
                    "pipeline {:?} is in cluster {:?}; token {id} may {} only in cluster {:?}",
                    target.name,
                    target.cluster,
                    verb(need),
                    t.cluster
                )));
            }
            if let Some(p) = &t.pipeline {
                if *p != target.name {
                    return Err(Denied(format!(
                        "token {id} is for pipeline {p:?}, not {:?}",
                        target.name
                    )));
                }
            }
            if let (Some(run), Some(job)) = (t.run, &t.job) {
                let attempt = t.attempt.unwrap_or(1);
                let Some(r) = acting.run else {
                    return Err(Denied(format!(
                        "token {id} is a job token (run {run}, job {job:?}); it cannot start or change runs"
                    )));
                };
                if r != run {
                    return Err(Denied(format!(
                        "token {id} is a job token of run {run}; this is run {r}"
                    )));
                }
                if let Some((j, a)) = &acting.job {
                    if j != job || *a != attempt {
                        return Err(Denied(format!(
                            "token {id} acts as job {job:?} attempt {attempt} only, not as job {j:?} attempt {a}"
                        )));
                    }
                }
            }
            Ok(())
        }
        Need::Read => {
            if target.cluster == t.cluster {
                return Ok(());
            }
            let source_ok = |end: &RuleEnd| match end {
                RuleEnd::Pipeline(p) => t.pipeline.as_deref() == Some(p.as_str()),
                RuleEnd::Cluster(c) => *c == t.cluster,
            };
            let target_ok = |end: &RuleEnd| match end {
                RuleEnd::Pipeline(p) => *p == target.name,
                RuleEnd::Cluster(c) => *c == target.cluster,
            };
            let mut unmet = None;
            for r in rules.iter().filter(|r| {
                r.org == t.org
                    && r.kind == satchel_model::access::ARTIFACTS_READ
                    && source_ok(&r.source)
                    && target_ok(&r.target)
            }) {
                match &r.condition {
                    None => return Ok(()),
                    Some(text) => match Condition::parse(text) {
                        Ok(c) if c.holds(build) => return Ok(()),
                        _ => unmet = Some(r),
                    },
                }
            }
            if let Some(r) = unmet {
                return Err(Denied(format!(
                    "rule {} lets {} read pipeline {:?} only when `{}`, which this token's build does not meet",
                    r.id,
                    r.source,
                    target.name,
                    r.condition.as_deref().unwrap_or_default()
                )));
            }
            let source = match &t.pipeline {
                Some(p) => format!("--source {p}"),
                None => format!("--source-cluster {}", t.cluster),
            };
            Err(Denied(format!(
                "pipeline {:?} is in cluster {:?} and token {id} reads from cluster {:?}; no rule allows it. An admin can add one: `satchel admin rule create {} {source} --target {}`",
                target.name,
                target.cluster,
                t.cluster,
                satchel_model::access::ARTIFACTS_READ,
                target.name
            )))
        }
    }
}

fn verb(need: Need) -> &'static str {
    match need {
        Need::Read => "read",
        Need::Write => "write",
        Need::Delete => "delete",
    }
}

/// The caller of a request, with its audit note: handlers ask it before
/// they act.
pub struct Caller {
    /// Who it is.
    pub principal: Principal,
    note: AuditNote,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, ApiError> {
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::internal("request reached a handler unauthenticated"))?;
        let note = parts
            .extensions
            .get::<AuditNote>()
            .cloned()
            .unwrap_or_default();
        Ok(Caller { principal, note })
    }
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

impl Caller {
    /// A caller for work that runs on behalf of `principal` outside an
    /// HTTP handler's extractors (the GitHub Actions protocol).
    pub fn new(principal: Principal, note: AuditNote) -> Caller {
        Caller { principal, note }
    }

    /// The stored token, unless this is the bootstrap admin.
    pub fn token(&self) -> Option<&TokenInfo> {
        match &self.principal {
            Principal::Admin => None,
            Principal::Token(t) => Some(t),
        }
    }

    /// Notes what the request acts on, for the audit log.
    pub fn note(&self, resource: impl Into<String>) {
        self.note.resource(resource.into());
    }

    fn deny(&self, message: String) -> ApiError {
        self.note.deny(&message);
        forbidden(message)
    }

    /// The caller's token has `scope` (or is the bootstrap admin).
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        match self.token() {
            Some(t) if !t.has(scope) => Err(self.deny(format!(
                "token {} lacks the `{scope}` scope (it has: {})",
                t.id,
                Scope::join(&t.scopes)
            ))),
            _ => Ok(()),
        }
    }

    /// Server-wide maintenance: the bootstrap token only.
    pub fn server_admin(&self) -> Result<(), ApiError> {
        match &self.principal {
            Principal::Admin => Ok(()),
            Principal::Token(t) => Err(self.deny(format!(
                "token {} cannot do server-wide maintenance; that needs the bootstrap admin token",
                t.id
            ))),
        }
    }

    /// Administration of organization `org`; `None` from the bootstrap
    /// token (every organization), else the token's own, which `org` must
    /// be when given.
    pub fn org_admin(&self, org: Option<&str>) -> Result<Option<String>, ApiError> {
        let Some(t) = self.token() else {
            return Ok(None);
        };
        if !t.scopes.contains(&Scope::Admin) {
            return Err(self.deny(format!(
                "token {} lacks the `admin` scope (it has: {})",
                t.id,
                Scope::join(&t.scopes)
            )));
        }
        if let Some(o) = org {
            if o != t.org {
                // Not naming `o`: it may be another organization's pipeline's.
                return Err(self.deny(format!(
                    "token {} administers organization {:?} only",
                    t.id, t.org
                )));
            }
        }
        Ok(Some(t.org.clone()))
    }

    /// The organization this caller acts in when a request names none.
    pub fn default_org(&self) -> String {
        self.token()
            .map(|t| t.org.clone())
            .unwrap_or_else(|| satchel_db::access::DEFAULT.to_string())
    }

    /// May this caller read `pipeline`'s artifacts? A pipeline that does
    /// not exist has nothing to read; the handler answers 404.
    pub async fn read(&self, s: &AppState, pipeline: &str) -> Result<(), ApiError> {
        self.note(format!("pipeline={pipeline}"));
        let Some(t) = self.token() else {
            return Ok(());
        };
        let Some(home) = s.db.pipeline_home(pipeline).await? else {
            return Ok(());
        };
        self.check(s, t, Need::Read, &home, &Acting::default())
            .await
    }

    /// The pipelines this caller may read: every one for the bootstrap
    /// admin, else those of its organization that [`Caller::can_read`].
    pub async fn readable_pipelines(&self, s: &AppState) -> Result<Vec<PipelineInfo>, ApiError> {
        let Some(t) = self.token() else {
            return Ok(s.db.list_pipelines(None).await?);
        };
        self.require(Scope::Read)?;
        let mut pipelines = Vec::new();
        for p in s.db.list_pipelines(Some(&t.org)).await? {
            if self.can_read(s, &p.name).await? {
                pipelines.push(p);
            }
        }
        Ok(pipelines)
    }

    /// Whether this caller may read `pipeline`, without noting a denial
    /// (for filtering lists).
    pub async fn can_read(&self, s: &AppState, pipeline: &str) -> Result<bool, ApiError> {
        let Some(t) = self.token() else {
            return Ok(true);
        };
        let Some(home) = s.db.pipeline_home(pipeline).await? else {
            return Ok(false);
        };
        Ok(verdict(s, t, Need::Read, &home, &Acting::default())
            .await?
            .is_ok())
    }

    /// May this caller write to `pipeline` acting as `acting`? A pipeline
    /// it may create is created in its cluster first.
    pub async fn write(
        &self,
        s: &AppState,
        pipeline: &str,
        acting: &Acting,
    ) -> Result<(), ApiError> {
        self.note(resource(pipeline, acting));
        let Some(t) = self.token() else {
            return Ok(());
        };
        let home = match s.db.pipeline_home(pipeline).await? {
            Some(h) => h,
            None => {
                if is_job_token(t) {
                    return Err(self.deny(format!(
                        "token {} is a job token; pipeline {pipeline:?} has no runs, and a job token cannot start one",
                        t.id
                    )));
                }
                // Decided as if it were in the token's cluster; only then
                // created there (it may turn out to exist elsewhere).
                let would = PipelineInfo {
                    name: pipeline.to_string(),
                    org: t.org.clone(),
                    cluster: t.cluster.clone(),
                    created_at: String::new(),
                };
                if let Err(Denied(m)) =
                    decide(t, Need::Write, &would, acting, &[], &BuildFacts::default())
                {
                    return Err(self.deny(m));
                }
                s.db.ensure_pipeline_in(pipeline, &t.org, &t.cluster)
                    .await?
            }
        };
        self.check(s, t, Need::Write, &home, acting).await?;
        if let (true, Some(run)) = (is_job_token(t), acting.run) {
            // Runs are started by the runner or the CI, never by a job:
            // a job token writes only into a run that exists.
            match s.db.find_run(pipeline, run).await {
                Ok(_) => {}
                Err(satchel_db::DbError::NotFound(_)) => {
                    return Err(self.deny(format!(
                        "token {} is a job token of run {run} of pipeline {pipeline:?}, which has not been started; a job token cannot start runs",
                        t.id
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Whether this is a job token: its run's branch and commit are the
    /// run's, never what an upload of it says.
    pub fn is_job_token(&self) -> bool {
        self.token().is_some_and(is_job_token)
    }

    /// May this caller delete from `pipeline` an artifact of `acting`'s
    /// run and job?
    pub async fn delete(
        &self,
        s: &AppState,
        pipeline: &str,
        acting: &Acting,
    ) -> Result<(), ApiError> {
        self.note(resource(pipeline, acting));
        let Some(t) = self.token() else {
            return Ok(());
        };
        let Some(home) = s.db.pipeline_home(pipeline).await? else {
            return Ok(());
        };
        self.check(s, t, Need::Delete, &home, acting).await
    }

    async fn check(
        &self,
        s: &AppState,
        t: &TokenInfo,
        need: Need,
        home: &PipelineInfo,
        acting: &Acting,
    ) -> Result<(), ApiError> {
        verdict(s, t, need, home, acting)
            .await?
            .map_err(|Denied(m)| self.deny(m))
    }
}

/// [`decide`] with what it needs loaded, and only that: the rules for a
/// read across clusters, the token's build when a rule has a condition.
async fn verdict(
    s: &AppState,
    t: &TokenInfo,
    need: Need,
    home: &PipelineInfo,
    acting: &Acting,
) -> Result<Result<(), Denied>, ApiError> {
    let rules = if need == Need::Read && home.org == t.org && home.cluster != t.cluster {
        s.db.list_rules(Some(&t.org)).await?
    } else {
        Vec::new()
    };
    let facts = if rules.iter().any(|r| r.condition.is_some()) {
        build_facts(s, t).await?
    } else {
        BuildFacts::default()
    };
    Ok(decide(t, need, home, acting, &rules, &facts))
}

fn resource(pipeline: &str, acting: &Acting) -> String {
    let mut r = format!("pipeline={pipeline}");
    if let Some(run) = acting.run {
        r.push_str(&format!(" run={run}"));
    }
    if let Some((job, attempt)) = &acting.job {
        r.push_str(&format!(" job={job} attempt={attempt}"));
    }
    r
}

fn is_job_token(t: &TokenInfo) -> bool {
    t.run.is_some() && t.job.is_some()
}

/// What a rule's condition sees of a token's build: a job token's run.
/// Any other token has no build, and no condition holds for it.
async fn build_facts(s: &AppState, t: &TokenInfo) -> Result<BuildFacts, ApiError> {
    let (Some(pipeline), Some(run), true) = (&t.pipeline, t.run, is_job_token(t)) else {
        return Ok(BuildFacts::default());
    };
    let found = match s.db.find_run(pipeline, run).await {
        Ok(r) => Some(r),
        Err(satchel_db::DbError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    Ok(BuildFacts {
        pipeline: Some(pipeline.clone()),
        number: Some(run),
        branch: found.as_ref().and_then(|r| r.branch.clone()),
        commit: found.and_then(|r| r.commit),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(scopes: &[Scope], cluster: &str) -> TokenInfo {
        TokenInfo {
            id: "t1".into(),
            name: String::new(),
            scopes: scopes.to_vec(),
            org: "acme".into(),
            cluster: cluster.into(),
            pipeline: None,
            run: None,
            job: None,
            attempt: None,
            created_at: String::new(),
            expires_at: None,
            expires_at_ms: None,
            revoked_at: None,
        }
    }

    fn home(name: &str, org: &str, cluster: &str) -> PipelineInfo {
        PipelineInfo {
            name: name.into(),
            org: org.into(),
            cluster: cluster.into(),
            created_at: String::new(),
        }
    }

    fn rule(source: RuleEnd, target: RuleEnd, condition: Option<&str>) -> RuleInfo {
        RuleInfo {
            id: "r1".into(),
            kind: satchel_model::access::ARTIFACTS_READ.into(),
            org: "acme".into(),
            source,
            target,
            condition: condition.map(str::to_string),
            created_at: String::new(),
        }
    }

    #[test]
    fn reads_cross_clusters_only_by_rule() {
        let none = BuildFacts::default();
        let mut t = token(&[Scope::Read], "build");
        let own = home("app", "acme", "build");
        let other = home("lib", "acme", "release");
        let a = Acting::default();
        assert!(decide(&t, Need::Read, &own, &a, &[], &none).is_ok());
        let e = decide(&t, Need::Read, &other, &a, &[], &none)
            .unwrap_err()
            .0;
        assert!(e.contains("--source-cluster build --target lib"), "{e}");
        let by_cluster = rule(
            RuleEnd::Cluster("build".into()),
            RuleEnd::Pipeline("lib".into()),
            None,
        );
        assert!(decide(&t, Need::Read, &other, &a, &[by_cluster], &none).is_ok());
        // A pipeline rule needs a token of that pipeline.
        let by_pipeline = rule(
            RuleEnd::Pipeline("app".into()),
            RuleEnd::Cluster("release".into()),
            None,
        );
        assert!(decide(
            &t,
            Need::Read,
            &other,
            &a,
            std::slice::from_ref(&by_pipeline),
            &none
        )
        .is_err());
        t.pipeline = Some("app".into());
        assert!(decide(
            &t,
            Need::Read,
            &other,
            &a,
            std::slice::from_ref(&by_pipeline),
            &none
        )
        .is_ok());
        // Another organization: never, rules or not.
        let foreign = home("x", "other", "build");
        let e = decide(&t, Need::Read, &foreign, &a, &[by_pipeline], &none)
            .unwrap_err()
            .0;
        assert!(e.contains("organization"), "{e}");
    }

    #[test]
    fn conditions_are_met_by_the_token_build_only() {
        let mut t = token(&[Scope::Read], "build");
        t.pipeline = Some("app".into());
        let other = home("lib", "acme", "release");
        let r = rule(
            RuleEnd::Pipeline("app".into()),
            RuleEnd::Pipeline("lib".into()),
            Some("source.build.branch == 'main'"),
        );
        let main = BuildFacts {
            branch: Some("main".into()),
            ..BuildFacts::default()
        };
        let dev = BuildFacts {
            branch: Some("dev".into()),
            ..BuildFacts::default()
        };
        let a = Acting::default();
        assert!(decide(&t, Need::Read, &other, &a, std::slice::from_ref(&r), &main).is_ok());
        let e = decide(&t, Need::Read, &other, &a, &[r], &dev)
            .unwrap_err()
            .0;
        assert!(e.contains("only when"), "{e}");
    }

    /// A denial told a token of one organization the name of the
    /// organization that owns a pipeline it cannot see.
    #[test]
    fn a_denial_never_names_another_organization() {
        let none = BuildFacts::default();
        let theirs = home("secret", "globex", "vault");
        let a = Acting::default();
        for scopes in [
            &[Scope::Read][..],
            &[Scope::Read, Scope::Write, Scope::Delete],
            &[Scope::Admin],
        ] {
            for need in [Need::Read, Need::Write, Need::Delete] {
                let e = decide(&token(scopes, "build"), need, &theirs, &a, &[], &none)
                    .unwrap_err()
                    .0;
                assert!(!e.contains("globex") && !e.contains("vault"), "{e}");
            }
        }
    }

    /// `satchel admin pipeline move` of another organization's pipeline
    /// answered "administers organization acme, not \"globex\"".
    #[test]
    fn an_org_admin_denial_never_names_the_other_organization() {
        let c = Caller {
            principal: Principal::Token(Box::new(token(&[Scope::Admin], "build"))),
            note: crate::audit::AuditNote::default(),
        };
        let e = c.org_admin(Some("globex")).unwrap_err();
        assert!(!e.message.contains("globex"), "{}", e.message);
        assert_eq!(c.org_admin(Some("acme")).unwrap(), Some("acme".into()));
    }

    #[test]
    fn writes_stay_in_the_cluster_pipeline_and_job() {
        let none = BuildFacts::default();
        let mut t = token(&[Scope::Read, Scope::Write], "build");
        let own = home("app", "acme", "build");
        let other = home("lib", "acme", "release");
        let a = Acting::default();
        assert!(decide(&t, Need::Write, &own, &a, &[], &none).is_ok());
        let all = rule(
            RuleEnd::Cluster("build".into()),
            RuleEnd::Cluster("release".into()),
            None,
        );
        assert!(
            decide(&t, Need::Write, &other, &a, &[all], &none).is_err(),
            "read rules never allow writes"
        );
        assert!(
            decide(&t, Need::Delete, &own, &a, &[], &none).is_err(),
            "no delete scope"
        );
        t.pipeline = Some("other".into());
        assert!(decide(&t, Need::Write, &own, &a, &[], &none).is_err());
        t.pipeline = Some("app".into());
        (t.run, t.job, t.attempt) = (Some(4), Some("test".into()), Some(2));
        let as_job = |run, job: &str, attempt| Acting {
            run: Some(run),
            job: Some((job.to_string(), attempt)),
        };
        assert!(decide(&t, Need::Write, &own, &as_job(4, "test", 2), &[], &none).is_ok());
        assert!(decide(&t, Need::Write, &own, &as_job(4, "test", 1), &[], &none).is_err());
        assert!(decide(&t, Need::Write, &own, &as_job(4, "lint", 2), &[], &none).is_err());
        assert!(decide(&t, Need::Write, &own, &as_job(5, "test", 2), &[], &none).is_err());
        let e = decide(&t, Need::Write, &own, &a, &[], &none).unwrap_err().0;
        assert!(e.contains("cannot start or change runs"), "{e}");
        // Admin: anything in its organization.
        let admin = token(&[Scope::Admin], "build");
        assert!(decide(&admin, Need::Delete, &other, &a, &[], &none).is_ok());
        assert!(decide(
            &admin,
            Need::Read,
            &home("x", "other", "build"),
            &a,
            &[],
            &none
        )
        .is_err());
    }
}
