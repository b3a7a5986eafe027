//! `deprov bench`: throughput figures printed for the README.
//!
//! - `orchestrator`: the embedded engine with a zero-latency in-memory connector and the
//!   durable SQLite store and audit chain, N people × 10 tasks.
//! - `scim`: disable + verify through the engine against a SCIM server (e.g. scim2-server)
//!   at several worker concurrencies.
//! - `ldap`, `postgres`: disable + verify of existing accounts (`<prefix><n>`, n from 0)
//!   through the engine against an OpenLDAP directory or a PostgreSQL cluster, one
//!   termination per account; discovery, the SQLite run store and the audit chain count.
//!   `tests/bench.sh` seeds the servers and times the raw baseline beside it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::{Args, Subcommand};
use deprov_connectors::memory::{MemoryConnector, MemoryDirectory};
use deprov_core::event::{EventKind, Person, TerminationType};
use deprov_core::ports::SecretSource;
use deprov_core::{Connector, LifecycleEvent, Policy, TaskStatus};
use deprov_local::{Engine, LocalSecrets, SqliteStore};

use crate::audit::verify_runs;
use crate::failure::{Failure, OK};
use crate::setup;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Embedded orchestrator + SQLite audit with a zero-latency connector.
    Orchestrator(OrchestratorArgs),
    /// Disable + verify against a SCIM server at several concurrencies.
    Scim(ScimArgs),
    /// Disable + verify existing accounts of an OpenLDAP directory (ppolicy lock).
    Ldap(LdapArgs),
    /// Disable + verify existing login roles of a PostgreSQL cluster (NOLOGIN).
    Postgres(PostgresArgs),
}

/// What the directory benches share: which accounts and how hard to push.
#[derive(Args)]
pub struct AccountsArgs {
    /// Accounts to disable: `<prefix>0` … `<prefix><accounts - 1>`, which must exist.
    #[arg(long, default_value_t = 2000)]
    accounts: usize,
    /// Account name prefix (LDAP uid, PostgreSQL role name).
    #[arg(long, default_value = "bench-")]
    prefix: String,
    /// Worker concurrency on the system: tasks applied and verified at once.
    #[arg(long, default_value_t = 8)]
    concurrency: u32,
}

#[derive(Args)]
pub struct LdapArgs {
    /// Directory URL, e.g. ldap://127.0.0.1:3890.
    #[arg(long)]
    url: String,
    /// The DN under which the accounts are.
    #[arg(long)]
    base_dn: String,
    /// The DN under which groups are searched (default: --base-dn).
    #[arg(long)]
    group_base_dn: Option<String>,
    /// The DN deprov binds as.
    #[arg(long)]
    bind_dn: String,
    #[arg(long, env = "DEPROV_BENCH_LDAP_PASSWORD")]
    password: String,
    #[command(flatten)]
    accounts: AccountsArgs,
}

#[derive(Args)]
pub struct PostgresArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 5432)]
    port: u16,
    /// The admin role deprov logs in as.
    #[arg(long)]
    user: String,
    #[arg(long, env = "DEPROV_BENCH_PG_PASSWORD")]
    password: String,
    #[command(flatten)]
    accounts: AccountsArgs,
}

#[derive(Args)]
pub struct OrchestratorArgs {
    /// People to terminate (10 tasks each).
    #[arg(long, default_value_t = 2000)]
    people: usize,
    /// Workers on the benchmark system.
    #[arg(long, default_value_t = 128)]
    concurrency: u32,
}

#[derive(Args)]
pub struct ScimArgs {
    /// SCIM base URL, e.g. http://127.0.0.1:8000 (scim2-server) or …/scim/v2.
    #[arg(long)]
    url: String,
    /// Bearer token the server accepts.
    #[arg(long, env = "DEPROV_BENCH_SCIM_TOKEN")]
    token: String,
    /// Users disabled per concurrency level.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Worker concurrencies to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<u32>,
}

pub async fn bench(command: BenchCommand) -> Result<u8, Failure> {
    match command {
        BenchCommand::Orchestrator(args) => orchestrator(args).await,
        BenchCommand::Scim(args) => scim(args).await,
        BenchCommand::Ldap(args) => ldap(args).await,
        BenchCommand::Postgres(args) => postgres(args).await,
    }
}

/// Peak resident memory of this process, from the kernel.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn termination(source: &str, index: usize, username: &str, email: &str) -> LifecycleEvent {
    LifecycleEvent {
        event_id: format!("bench-{index}"),
        source: source.to_string(),
        kind: EventKind::Termination,
        termination_type: Some(TerminationType::Involuntary),
        person: Person {
            id: format!("P{index:06}"),
            email: email.to_string(),
            display_name: None,
            usernames: BTreeMap::from([("app".to_string(), username.to_string())]),
            roles: Vec::new(),
            manager_email: None,
        },
        effective_at: Utc::now().fixed_offset(),
        reason: None,
        requested_by: "deprov-bench".into(),
        transfer: None,
        systems: Vec::new(),
    }
}

/// Submits every event together (`Engine::submit_many`, as a sweep or a mass offboarding
/// does); returns verified and other task counts.
async fn submit_all(engine: &Engine, events: &[LifecycleEvent]) -> Result<(usize, usize), Failure> {
    let reports = engine.submit_many(events).await?;
    let verified: usize = reports.iter().map(|r| r.count(TaskStatus::Verified)).sum();
    let all: usize = reports.iter().map(|r| r.outcomes.len()).sum();
    Ok((verified, all - verified))
}

async fn orchestrator(args: OrchestratorArgs) -> Result<u8, Failure> {
    const GROUPS: [&str; 7] = ["g1", "g2", "g3", "g4", "g5", "g6", "g7"];
    let policy = Policy::parse(&format!(
        r#"
version = "bench-1"
[systems.app]
kind = "memory"
concurrency = {}
[scenarios.termination]
stages = ["sessions", "disable", "entitlements", "delete"]
[limits]
max_tasks_per_run = 100
"#,
        args.concurrency
    ))
    .map_err(|invalid| Failure::failed(invalid.to_string()))?;
    let directory = MemoryDirectory::new();
    let mut events = Vec::with_capacity(args.people);
    for index in 0..args.people {
        let username = format!("user{index}");
        let email = format!("user{index}@example.com");
        directory.add_account("app", &format!("u{index}"), &username, &email, &GROUPS);
        events.push(termination("bench", index, &username, &email));
    }
    let dir = tempfile_dir()?;
    let store = Arc::new(SqliteStore::open(&dir.join("bench.db"))?);
    let mut connectors: BTreeMap<String, Arc<dyn Connector>> = BTreeMap::new();
    connectors.insert("app".into(), Arc::new(MemoryConnector::new(directory)));
    let engine = Arc::new(crate::run::quiet_engine(policy, connectors, &store));
    println!(
        "orchestrator: {} people × 10 tasks, in-memory connector (zero latency), {} workers, SQLite audit at {}",
        args.people,
        args.concurrency,
        store.path().display()
    );
    let started = Instant::now();
    let (verified, other) = submit_all(&engine, &events).await?;
    let elapsed = started.elapsed();
    let verify_started = Instant::now();
    let (runs, records, broken) = verify_runs(store.as_ref(), None).await?;
    let verify_elapsed = verify_started.elapsed();
    println!("  verified tasks        {verified} ({other} not verified)");
    println!("  wall time             {:.2} s", elapsed.as_secs_f64());
    println!(
        "  throughput            {:.0} verified tasks/s",
        verified as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  peak memory (VmHWM)   {:.1} MiB",
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    println!(
        "  audit verify          {runs} runs, {records} records in {:.2} s ({})",
        verify_elapsed.as_secs_f64(),
        if broken.is_empty() {
            "intact"
        } else {
            "BROKEN"
        }
    );
    let _ = std::fs::remove_dir_all(&dir);
    if other > 0 || !broken.is_empty() {
        return Err(Failure::failed(
            "the benchmark run did not verify every task",
        ));
    }
    Ok(OK)
}

fn tempfile_dir() -> Result<std::path::PathBuf, Failure> {
    let dir = std::env::temp_dir().join(format!(
        "deprov-bench-{}-{}",
        std::process::id(),
        Utc::now().timestamp_micros()
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|err| Failure::failed(format!("cannot create {}: {err}", dir.display())))?;
    Ok(dir)
}

async fn scim(args: ScimArgs) -> Result<u8, Failure> {
    let client = reqwest_client()?;
    let base = args.url.trim_end_matches('/').to_string();
    println!(
        "scim: disable + verify of {} users per level through the engine against {base}",
        args.users
    );
    for &concurrency in &args.concurrency {
        // Fresh users per level, created over SCIM before timing starts.
        let mut events = Vec::with_capacity(args.users);
        for index in 0..args.users {
            let username = format!(
                "bench-c{concurrency}-{index}-{}",
                Utc::now().timestamp_micros()
            );
            let email = format!("{username}@example.com");
            let response = client
                .post(format!("{base}/Users"))
                .bearer_auth(&args.token)
                .header("content-type", "application/scim+json")
                .body(
                    serde_json::json!({
                        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                        "userName": username,
                        "emails": [{"value": email, "primary": true}],
                        "active": true
                    })
                    .to_string(),
                )
                .send()
                .await
                .map_err(|err| Failure::failed(format!("cannot create a user at {base}: {err}")))?;
            if !response.status().is_success() {
                return Err(Failure::failed(format!(
                    "creating a user at {base} answered HTTP {}",
                    response.status()
                )));
            }
            events.push(termination(
                &format!("bench-c{concurrency}"),
                index,
                &username,
                &email,
            ));
        }
        let policy = Policy::parse(&format!(
            r#"
version = "bench-scim-{concurrency}"
[systems.app]
kind = "scim"
secret = "bench/scim"
concurrency = {concurrency}
connection = {{ base_url = "{base}" }}
[scenarios.termination]
stages = ["disable"]
"#
        ))
        .map_err(|invalid| Failure::failed(invalid.to_string()))?;
        let secrets: Arc<dyn SecretSource> =
            Arc::new(LocalSecrets::default().with("bench/scim", "token", &args.token));
        let connectors = setup::connectors(&policy, secrets)?;
        let dir = tempfile_dir()?;
        let store = Arc::new(SqliteStore::open(&dir.join("bench.db"))?);
        let engine = Arc::new(crate::run::quiet_engine(policy, connectors, &store));
        let started = Instant::now();
        let (verified, other) = submit_all(&engine, &events).await?;
        let elapsed = started.elapsed().max(Duration::from_micros(1));
        println!(
            "  concurrency {concurrency:>3}: {verified} verified ({other} not) in {:.2} s = {:.1} revocations/s (discover + disable + read back)",
            elapsed.as_secs_f64(),
            verified as f64 / elapsed.as_secs_f64()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(OK)
}

fn reqwest_client() -> Result<reqwest::Client, Failure> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(Failure::failed)
}

/// A TOML string literal of `text`.
fn toml_string(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

async fn ldap(args: LdapArgs) -> Result<u8, Failure> {
    let policy = format!(
        r#"
version = "bench-ldap"
[systems.app]
kind = "ldap"
secret = "bench/ldap"
concurrency = {concurrency}
connection = {{ url = {url}, base_dn = {base_dn}, group_base_dn = {group_base_dn}, dialect = "openldap" }}
[scenarios.termination]
stages = ["disable"]
"#,
        concurrency = args.accounts.concurrency,
        url = toml_string(&args.url),
        base_dn = toml_string(&args.base_dn),
        group_base_dn = toml_string(args.group_base_dn.as_deref().unwrap_or(&args.base_dn)),
    );
    let secrets = LocalSecrets::default()
        .with("bench/ldap", "bind_dn", &args.bind_dn)
        .with("bench/ldap", "password", &args.password);
    println!(
        "ldap: disable (pwdAccountLockedTime) + verify of {} existing accounts through the engine against {}",
        args.accounts.accounts, args.url
    );
    directory_bench(&policy, secrets, &args.accounts).await
}

async fn postgres(args: PostgresArgs) -> Result<u8, Failure> {
    let policy = format!(
        r#"
version = "bench-postgres"
[systems.app]
kind = "postgres"
secret = "bench/postgres"
concurrency = {concurrency}
connection = {{ host = {host}, port = {port} }}
[scenarios.termination]
stages = ["disable"]
"#,
        concurrency = args.accounts.concurrency,
        host = toml_string(&args.host),
        port = args.port,
    );
    let secrets = LocalSecrets::default()
        .with("bench/postgres", "user", &args.user)
        .with("bench/postgres", "password", &args.password);
    println!(
        "postgres: disable (NOLOGIN + end sessions) + verify of {} existing roles through the engine against {}:{}",
        args.accounts.accounts, args.host, args.port
    );
    directory_bench(&policy, secrets, &args.accounts).await
}

/// One termination per account under `policy` (system `app`, stage disable), timed from the
/// first submission to the last verified task.
async fn directory_bench(
    policy: &str,
    secrets: LocalSecrets,
    args: &AccountsArgs,
) -> Result<u8, Failure> {
    let policy = Policy::parse(policy).map_err(|invalid| Failure::failed(invalid.to_string()))?;
    let connectors = setup::connectors(&policy, Arc::new(secrets))?;
    let events: Vec<LifecycleEvent> = (0..args.accounts)
        .map(|index| {
            let name = format!("{}{index}", args.prefix);
            termination("bench", index, &name, &format!("{name}@example.com"))
        })
        .collect();
    let dir = tempfile_dir()?;
    let store = Arc::new(SqliteStore::open(&dir.join("bench.db"))?);
    let engine = Arc::new(crate::run::quiet_engine(policy, connectors, &store));
    let started = Instant::now();
    let (verified, other) = submit_all(&engine, &events).await?;
    let elapsed = started.elapsed().max(Duration::from_micros(1));
    let (runs, records, broken) = verify_runs(store.as_ref(), None).await?;
    println!(
        "  concurrency {}, all {} runs submitted together: {verified} verified ({other} not) in {:.2} s",
        args.concurrency,
        args.accounts,
        elapsed.as_secs_f64()
    );
    println!(
        "  throughput            {:.1} accounts/s (discover + disable + read back + audit)",
        verified as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  audit verify          {runs} runs, {records} records ({})",
        if broken.is_empty() {
            "intact"
        } else {
            "BROKEN"
        }
    );
    let _ = std::fs::remove_dir_all(&dir);
    if other > 0 || verified != args.accounts || !broken.is_empty() {
        return Err(Failure::failed(format!(
            "the benchmark did not verify every account ({verified} of {})",
            args.accounts
        )));
    }
    Ok(OK)
}
