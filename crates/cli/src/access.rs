//! `satchel admin token|org|cluster|pipeline|rule|audit`: who may do what,
//! and what was done (see `docs/security.md`).

use anyhow::Context as _;
use clap::{Args, Subcommand};
use satchel_model::access::{AuditQuery, NewRule, NewToken, RuleEnd, Scope, ARTIFACTS_READ};

use crate::context::ServerArgs;

fn parse_secs(s: &str) -> Result<u64, String> {
    satchel_model::api::parse_duration(s)
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `satchel admin token …`.
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token and print it, once (only its hash is kept).
    Create(TokenCreateArgs),
    /// List tokens (never their secrets).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Revoke a token: it stops working on the next request, on every
    /// replica.
    Revoke {
        /// Token id (from `create` or `list`).
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// Options of `satchel admin token create`.
#[derive(Args, Debug)]
pub struct TokenCreateArgs {
    /// What it may do: read, write, delete, admin (comma-separated).
    #[arg(long)]
    scope: String,
    /// Organization (default `default`, or the admin token's own).
    #[arg(long)]
    org: Option<String>,
    /// Cluster in the organization (default `default`).
    #[arg(long)]
    cluster: Option<String>,
    /// Narrow it to one pipeline.
    #[arg(long)]
    pipeline: Option<String>,
    /// With --job: a job token of this run of --pipeline.
    #[arg(long, requires = "job")]
    run: Option<u64>,
    /// With --run: the job a job token uploads as.
    #[arg(long, requires = "run")]
    job: Option<String>,
    /// The attempt a job token uploads as (default 1).
    #[arg(long, requires = "job")]
    attempt: Option<u32>,
    /// Expire after this long (e.g. 2h, 30d; default never).
    #[arg(long, value_parser = parse_secs)]
    expires_in: Option<u64>,
    /// What it is for, shown in lists and the audit log.
    #[arg(long, default_value = "")]
    name: String,
    /// Print `{"id": …, "token": …}`.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

async fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create(a) => {
            let scopes =
                Scope::parse_list(&a.scope).map_err(|e| anyhow::anyhow!("--scope: {e}"))?;
            let req = NewToken {
                name: a.name,
                scopes,
                org: a.org,
                cluster: a.cluster,
                pipeline: a.pipeline,
                run: a.run,
                job: a.job,
                attempt: a.attempt,
                expires_in_secs: a.expires_in,
            };
            let t = a.server.client()?.create_token(&req).await?;
            if a.json {
                print_json(&serde_json::json!({"id": t.id, "token": t.token}))?;
            } else {
                println!("{}", t.token);
                eprintln!(
                    "token {} ({}) for {}/{}{}{}: shown this once; store it now",
                    t.id,
                    Scope::join(&t.info.scopes),
                    t.info.org,
                    t.info.cluster,
                    t.info
                        .pipeline
                        .as_deref()
                        .map(|p| format!(", pipeline {p}"))
                        .unwrap_or_default(),
                    t.info
                        .expires_at
                        .as_deref()
                        .map(|e| format!(", expires {e}"))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        TokenCommand::List { json, server } => {
            let list = server.client()?.list_tokens().await?;
            if json {
                return print_json(&list);
            }
            let now = satchel_model::id::now_millis();
            for t in &list.tokens {
                let state = if t.revoked_at.is_some() {
                    "revoked"
                } else if !t.is_live(now) {
                    "expired"
                } else {
                    "live"
                };
                let mut narrow = String::new();
                if let Some(p) = &t.pipeline {
                    narrow.push_str(&format!(" pipeline={p}"));
                }
                if let (Some(r), Some(j)) = (t.run, &t.job) {
                    narrow.push_str(&format!(
                        " run={r} job={j} attempt={}",
                        t.attempt.unwrap_or(1)
                    ));
                }
                println!(
                    "{}  {state:7}  {:20}  {}/{}{narrow}  {:?}{}",
                    t.id,
                    Scope::join(&t.scopes),
                    t.org,
                    t.cluster,
                    t.name,
                    t.expires_at
                        .as_deref()
                        .map(|e| format!("  expires {e}"))
                        .unwrap_or_default()
                );
            }
            if list.tokens.is_empty() {
                eprintln!("no tokens yet: create one with `satchel admin token create --scope read,write`");
            }
            Ok(())
        }
        TokenCommand::Revoke { id, server } => {
            let t = server.client()?.revoke_token(&id).await?;
            eprintln!(
                "token {} revoked at {}",
                t.id,
                t.revoked_at.as_deref().unwrap_or("?")
            );
            Ok(())
        }
    }
}

/// `satchel admin org …`.
#[derive(Subcommand, Debug)]
pub enum OrgCommand {
    /// Create an organization (bootstrap admin token).
    Create {
        /// Organization key.
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List organizations.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// `satchel admin cluster …`.
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Create a cluster.
    Create {
        /// Cluster key.
        name: String,
        /// Organization (default `default`).
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List clusters.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// `satchel admin pipeline …`.
#[derive(Subcommand, Debug)]
pub enum PipelineCommand {
    /// Create a pipeline in a cluster (a pipeline first seen by an upload
    /// is created in the uploading token's cluster).
    Create {
        /// Pipeline key.
        name: String,
        /// Cluster.
        #[arg(long)]
        cluster: String,
        /// Organization (default `default`).
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List the pipelines this token may read.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Move a pipeline, with its runs and artifacts, to another cluster.
    Move {
        /// Pipeline key.
        name: String,
        /// Destination cluster.
        #[arg(long)]
        cluster: String,
        /// Destination organization (default: the token's, or `default`).
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// `satchel admin rule …`.
#[derive(Subcommand, Debug)]
pub enum RuleCommand {
    /// Let a pipeline (or cluster) read another cluster's artifacts.
    Create(RuleCreateArgs),
    /// List rules.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a rule.
    Delete {
        /// Rule id.
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// Options of `satchel admin rule create`.
#[derive(Args, Debug)]
pub struct RuleCreateArgs {
    /// Rule type: `pipeline.artifacts_read.pipeline`.
    #[arg(value_name = "TYPE")]
    kind: String,
    /// The reading pipeline.
    #[arg(
        long,
        conflicts_with = "source_cluster",
        required_unless_present = "source_cluster"
    )]
    source: Option<String>,
    /// Every pipeline of this cluster reads.
    #[arg(long)]
    source_cluster: Option<String>,
    /// The pipeline whose artifacts are read.
    #[arg(
        long,
        conflicts_with = "target_cluster",
        required_unless_present = "target_cluster"
    )]
    target: Option<String>,
    /// Every pipeline of this cluster is read.
    #[arg(long)]
    target_cluster: Option<String>,
    /// Only when the reading build meets it, e.g.
    /// "source.build.branch == 'main'".
    #[arg(long)]
    condition: Option<String>,
    /// Organization (default: the token's, or `default`).
    #[arg(long)]
    org: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// Options of `satchel admin audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only entries this recent (e.g. 1h, 7d).
    #[arg(long, value_parser = parse_secs)]
    since: Option<u64>,
    /// Only this token's (its id; `admin` for the bootstrap token).
    /// (`--token` is the API token the command itself uses.)
    #[arg(long)]
    token_id: Option<String>,
    /// Only denials.
    #[arg(long)]
    denied: bool,
    /// Most entries to print (newest first; default 100).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Print JSON lines, one entry each.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

fn end(pipeline: Option<String>, cluster: Option<String>) -> anyhow::Result<RuleEnd> {
    match (pipeline, cluster) {
        (Some(p), None) => Ok(RuleEnd::Pipeline(p)),
        (None, Some(c)) => Ok(RuleEnd::Cluster(c)),
        _ => anyhow::bail!("name one pipeline or one cluster at each end of a rule"),
    }
}

async fn audit(a: AuditArgs) -> anyhow::Result<()> {
    let client = a.server.client()?;
    let mut q = AuditQuery {
        since_ms: a
            .since
            .map(|s| satchel_model::id::now_millis() - (s as i64).saturating_mul(1000)),
        token: a.token_id,
        denied: a.denied,
        limit: Some(a.limit.clamp(1, 1000)),
        ..AuditQuery::default()
    };
    let mut left = a.limit;
    while left > 0 {
        q.limit = Some(left.min(1000));
        let page = client.audit(&q).await?;
        for e in &page.entries {
            if a.json {
                println!("{}", serde_json::to_string(e)?);
            } else {
                println!(
                    "{}  {}  {:3}  {:24}  {}  {}{}",
                    e.at,
                    if e.allowed { "allowed" } else { "DENIED " },
                    e.status,
                    e.token_id.as_deref().unwrap_or("-"),
                    e.action,
                    e.resource,
                    e.reason
                        .as_deref()
                        .map(|r| format!("  ({r})"))
                        .unwrap_or_default()
                );
            }
        }
        left = left.saturating_sub(page.entries.len());
        match page.next_cursor {
            Some(c) if !page.entries.is_empty() => q.cursor = Some(c),
            _ => break,
        }
    }
    Ok(())
}

/// Commands about access, under `satchel admin`.
#[derive(Subcommand, Debug)]
pub enum AccessCommand {
    /// Tokens: create, list, revoke.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Organizations: create, list.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Clusters: create, list.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Pipelines: create, list, move between clusters.
    #[command(subcommand)]
    Pipeline(PipelineCommand),
    /// Rules letting pipelines read other clusters' artifacts.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// What was done, by whom: the audit log, newest first.
    Audit(AuditArgs),
}

/// Runs one access command.
pub async fn run(cmd: AccessCommand) -> anyhow::Result<()> {
    match cmd {
        AccessCommand::Token(c) => token(c).await,
        AccessCommand::Org(OrgCommand::Create { name, server }) => {
            let o = server.client()?.create_org(&name).await?;
            eprintln!("organization {} created", o.name);
            Ok(())
        }
        AccessCommand::Org(OrgCommand::List { json, server }) => {
            let l = server.client()?.list_orgs().await?;
            if json {
                return print_json(&l);
            }
            for o in l.orgs {
                println!("{}  created {}", o.name, o.created_at);
            }
            Ok(())
        }
        AccessCommand::Cluster(ClusterCommand::Create { name, org, server }) => {
            let c = server
                .client()?
                .create_cluster(&name, org.as_deref())
                .await?;
            eprintln!("cluster {}/{} created", c.org, c.name);
            Ok(())
        }
        AccessCommand::Cluster(ClusterCommand::List { json, server }) => {
            let l = server.client()?.list_clusters().await?;
            if json {
                return print_json(&l);
            }
            for c in l.clusters {
                println!("{}/{}  created {}", c.org, c.name, c.created_at);
            }
            Ok(())
        }
        AccessCommand::Pipeline(PipelineCommand::Create {
            name,
            cluster,
            org,
            server,
        }) => {
            let p = server
                .client()?
                .create_pipeline(&name, org.as_deref(), &cluster)
                .await?;
            eprintln!("pipeline {} created in {}/{}", p.name, p.org, p.cluster);
            Ok(())
        }
        AccessCommand::Pipeline(PipelineCommand::List { json, server }) => {
            let l = server.client()?.list_pipelines().await?;
            if json {
                return print_json(&l);
            }
            for p in l.pipelines {
                println!("{}  {}/{}", p.name, p.org, p.cluster);
            }
            Ok(())
        }
        AccessCommand::Pipeline(PipelineCommand::Move {
            name,
            cluster,
            org,
            server,
        }) => {
            let p = server
                .client()?
                .move_pipeline(&name, org.as_deref(), &cluster)
                .await?;
            eprintln!("pipeline {} is now in {}/{}", p.name, p.org, p.cluster);
            Ok(())
        }
        AccessCommand::Rule(RuleCommand::Create(a)) => {
            if a.kind != ARTIFACTS_READ {
                anyhow::bail!(
                    "unknown rule type {:?}: the one type is {ARTIFACTS_READ}",
                    a.kind
                );
            }
            if let Some(c) = &a.condition {
                satchel_model::access::Condition::parse(c)
                    .map_err(|e| anyhow::anyhow!("--condition: {e}"))?;
            }
            let req = NewRule {
                kind: a.kind,
                org: a.org,
                source: end(a.source, a.source_cluster)?,
                target: end(a.target, a.target_cluster)?,
                condition: a.condition,
            };
            let r = a.server.client()?.create_rule(&req).await?;
            if a.json {
                return print_json(&r);
            }
            println!("{}", r.id);
            eprintln!(
                "rule {}: {} may read the artifacts of {}{}",
                r.id,
                r.source,
                r.target,
                r.condition
                    .as_deref()
                    .map(|c| format!(" when {c}"))
                    .unwrap_or_default()
            );
            Ok(())
        }
        AccessCommand::Rule(RuleCommand::List { json, server }) => {
            let l = server.client()?.list_rules().await?;
            if json {
                return print_json(&l);
            }
            for r in l.rules {
                println!(
                    "{}  {}  {}: {} reads {}{}",
                    r.id,
                    r.kind,
                    r.org,
                    r.source,
                    r.target,
                    r.condition
                        .as_deref()
                        .map(|c| format!(" when {c}"))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        AccessCommand::Rule(RuleCommand::Delete { id, server }) => {
            let r = server.client()?.delete_rule(&id).await?;
            eprintln!("rule {} deleted", r.id);
            Ok(())
        }
        AccessCommand::Audit(a) => audit(a).await.context("reading the audit log"),
    }
}
